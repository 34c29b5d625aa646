"""
Tests for TCP routing (L{lbtwist.tcp.RoutedClientSide}): TLS clients sent
to pools by the server name of their ClientHello, without the balancer
terminating TLS; real balancer, real TLS backends with their own
certificates (made with C{openssl}), real clients (C{openssl s_client} and
Python's C{ssl}).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.endpoints import serverFromString
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.config import PoolConfig
from lbtwist.connect import BackendConnector
from lbtwist.pool import BackendPool
from lbtwist.routeconfig import Match, Route, TimeoutOverrides
from lbtwist.routing import connectionFacts
from lbtwist.tcp import ClientSide, RoutedClientSide, TCPProxyFactory

from .httphelpers import waitFor
from .support import Backends, NamedFactory, inThread, reactor, startBalancer
from .test_sni import clientHello

NAMES = ("a", "b", "c")


def makeCertificate(directory: str, name: str) -> tuple[str, str]:
    """
    A self-signed certificate for C{name}.example and its key, made with
    the C{openssl} command; returns their paths.
    """
    key = os.path.join(directory, f"{name}.key")
    cert = os.path.join(directory, f"{name}.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-subj", f"/CN={name}.example", "-days", "1", "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=30,
    )
    return key, cert


def tlsClient(port: int, serverName: str | None) -> tuple[bytes, bytes]:
    """
    Connect with Python's C{ssl} asking for C{serverName}; return the
    server's certificate (DER) and the first line it sends.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=serverName) as s:
            line = b""
            while not line.endswith(b"\n"):
                chunk = s.recv(100)
                if not chunk:
                    break
                line += chunk
            return s.getpeercert(binary_form=True) or b"", line.strip()


def closedAfter(port: int, send: bytes) -> tuple[float, bytes]:
    """
    Connect, send C{send}, and wait (up to 10 s) for the balancer to close;
    return how long that took and what was read.
    """
    started = time.monotonic()
    read = b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        if send:
            s.sendall(send)
        try:
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                read += chunk
        except ConnectionResetError:
            pass
    return time.monotonic() - started, read


class SNIRoutingTests(TestCase):
    """
    A tcp listener with routes on C{sni}, in front of three TLS backends.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        directory = self.mktemp()
        os.makedirs(directory)
        self.certs: dict[str, bytes] = {}
        ports = {}
        for name in NAMES:
            key, cert = makeCertificate(directory, name)
            with open(cert) as f:
                self.certs[name] = ssl.PEM_cert_to_DER_cert(f.read())
            endpoint = serverFromString(
                reactor, f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}")
            port = yield endpoint.listen(NamedFactory(name))
            self.addCleanup(port.stopListening)
            ports[name] = port.getHost().port
        self.lb, self.port = startBalancer(self, {
            "listeners": [{
                "name": "front", "listen": "tcp:0:interface=127.0.0.1", "mode": "tcp",
                "routes": [{"name": "a", "match": {"sni": "a.example"}, "pool": "a"},
                           {"name": "b", "match": {"sni": "*.b.example"}, "pool": "b"},
                           {"name": "b-exact", "match": {"sni": "b.example"}, "pool": "b"}],
                "default-route": {"pool": "c"},
            }],
            "pools": {name: {"backends": [{"name": name, "endpoint":
                                           f"tcp:host=127.0.0.1:port={ports[name]}"}],
                             "timeouts": {"request": "1s"}}
                      for name in NAMES},
        })
        self.factory = self.lb.factories["front"]

    @inlineCallbacks
    def test_opensslClients(self) -> Any:
        """
        C{openssl s_client -servername} reaches the pool of the route for
        its name, and sees that backend's certificate: the balancer did not
        terminate TLS.
        """
        for serverName, expected in (("a.example", "a"), ("b.example", "b"),
                                     ("x.b.example", "b")):
            result = yield inThread(lambda name=serverName: subprocess.run(
                ["openssl", "s_client", "-connect", f"127.0.0.1:{self.port}",
                 "-servername", name],
                input=b"", capture_output=True, timeout=20))
            output = (result.stdout + result.stderr).decode("utf-8", "replace")
            self.assertIn(f"CN = {expected}.example", output.replace("CN=", "CN = "))
            for other in set(NAMES) - {expected}:
                self.assertNotIn(f"CN = {other}.example", output.replace("CN=", "CN = "))

    @inlineCallbacks
    def test_pythonClients(self) -> Any:
        """
        Python's C{ssl} clients asking for two names reach two pools (their
        certificates and first lines); one sending no name takes the
        default route; each route counts its connections once closed.
        """
        for serverName, expected in (("a.example", "a"), ("B.Example", "b"), (None, "c"),
                                     ("other.example", "c")):
            cert, line = yield inThread(tlsClient, self.port, serverName)
            self.assertEqual((cert, line), (self.certs[expected], expected.encode()))
        # Routes count a connection once it is closed.
        self.assertTrue((yield waitFor(lambda: not self.factory.activeClients)),
                        f"{self.factory.activeClients} clients still open")
        self.assertEqual(
            [(c.name, c.responses) for c in self.factory.routeCounters()],
            [("a", {"tcp": 1}), ("b", {}), ("b-exact", {"tcp": 1}), ("default", {"tcp": 2})])

    @inlineCallbacks
    def test_notTLS(self) -> Any:
        """
        A plain-text client is closed at once, without reaching a backend.
        """
        elapsed, read = yield inThread(closedAfter, self.port, b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(read, b"")
        self.assertLess(elapsed, 0.9)

    @inlineCallbacks
    def test_silentClient(self) -> Any:
        """
        A client that sends nothing (or half a hello) is closed once the
        bound (the pool's request timeout, 1 s here) is over.
        """
        for send in (b"", clientHello("a.example")[:40]):
            elapsed, read = yield inThread(closedAfter, self.port, send)
            self.assertEqual(read, b"")
            self.assertGreater(elapsed, 0.9)
            self.assertLess(elapsed, 3.0)

    @inlineCallbacks
    def test_garbageHello(self) -> Any:
        """
        A 16 KiB record of garbage that looks like a handshake is closed as
        soon as it is whole, and the listener goes on serving.
        """
        garbage = b"\x16\x03\x01\x40\x00" + os.urandom(16384)
        elapsed, read = yield inThread(closedAfter, self.port, garbage)
        self.assertEqual(read, b"")
        self.assertLess(elapsed, 0.9)
        elapsed, read = yield inThread(closedAfter, self.port, garbage + garbage)
        self.assertEqual(read, b"")
        cert, line = yield inThread(tlsClient, self.port, "a.example")
        self.assertEqual(line, b"a")

    @inlineCallbacks
    def test_setRoutes(self) -> Any:
        """
        Routes replaced at run time apply to the next clients; a route
        keeping its name keeps its counts; with no default route, a client
        no route matches is closed.
        """
        cert, line = yield inThread(tlsClient, self.port, "a.example")
        self.assertEqual(line, b"a")
        self.factory.setRoutes((Route("a", Match(sni=("a.example",)), pools=(("b", 1),)),), None)
        cert, line = yield inThread(tlsClient, self.port, "a.example")
        self.assertEqual((cert, line), (self.certs["b"], b"b"))
        elapsed, read = yield inThread(closedAfter, self.port, clientHello("c.example"))
        self.assertEqual(read, b"")
        # Routes count a connection once it is closed.
        self.assertTrue((yield waitFor(lambda: not self.factory.activeClients)),
                        f"{self.factory.activeClients} clients still open")
        self.assertEqual([(c.name, c.requests) for c in self.factory.routeCounters()],
                         [("a", 2)])


class RoutedClientUnitTests(SynchronousTestCase):
    """
    L{RoutedClientSide} and L{TCPProxyFactory}'s routes, on a memory
    reactor.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pools = {name: BackendPool(PoolConfig(name=name, backends=()))
                      for name in ("web", "db")}
        self.factory = TCPProxyFactory(
            self.pools["web"], self.reactor,
            BackendConnector(self.pools["web"], self.reactor), 60.0, pools=self.pools)

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(None)
        transport = StringTransport()
        protocol.makeConnection(transport)  # type: ignore[union-attr]
        return protocol, transport

    def test_noRoutes(self) -> None:
        """
        Without routes the listener builds plain clients, and again once
        its routes are removed.
        """
        self.assertIs(type(self.factory.buildProtocol(None)), ClientSide)
        self.factory.setRoutes((Route("db", Match(sni=("db.example",)), pool="db"),), None)
        self.assertIs(type(self.factory.buildProtocol(None)), RoutedClientSide)
        self.factory.setRoutes((), None)
        self.assertIs(type(self.factory.buildProtocol(None)), ClientSide)

    def test_helloInPieces(self) -> None:
        """
        A hello arriving a byte at a time is routed once whole: the client
        asking for db.example is sent to pool db (here empty: closed), and
        no timer is left behind.
        """
        self.factory.setRoutes((Route("db", Match(sni=("db.example",)), pool="db"),),
                               Route("default", pool="web"))
        protocol, transport = self.connect()
        hello = clientHello("db.example")
        for i in range(len(hello) - 1):
            protocol.dataReceived(hello[i:i + 1])
        self.assertIs(protocol.pool, self.pools["web"])
        self.assertFalse(transport.disconnecting)
        protocol.dataReceived(hello[-1:])
        self.assertIs(protocol.pool, self.pools["db"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_helloBeforeFin(self) -> None:
        """
        A hello that comes with the client's FIN (C{finalDataReceived}) is
        read as a hello, and routes the client.
        """
        self.factory.setRoutes((Route("db", Match(sni=("db.example",)), pool="db"),),
                               Route("default", pool="web"))
        protocol, transport = self.connect()
        protocol.finalDataReceived(clientHello("db.example"))
        self.assertIs(protocol.pool, self.pools["db"])

    def test_helloTimeout(self) -> None:
        """
        The bound on the wait for a hello is the listener pool's request
        timeout, at most 5 s: a client silent that long is aborted.
        """
        self.assertEqual(self.factory.helloTimeout, 5.0)
        self.factory.setRoutes((Route("db", Match(sni=("db.example",)), pool="db"),), None)
        protocol, transport = self.connect()
        self.reactor.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.2)
        self.assertTrue(transport.disconnecting)

    def test_sourceOnly(self) -> None:
        """
        Routes that look at no server name choose at once, reading nothing:
        a server-speaks-first protocol routes by source too.
        """
        self.factory.setRoutes((Route("local", Match(sources=("192.168.0.0/16",)), pool="db"),),
                               Route("default", pool="web"))
        protocol, transport = self.connect()
        self.assertIs(protocol.pool, self.pools["db"])
        self.assertEqual(self.reactor.getDelayedCalls(), [])


class RouteSettingsTests(TestCase):
    """
    A route's pool brings its own settings: its PROXY header, its idle
    timeout, unless the route sets one, and the route's own retries.
    """

    @inlineCallbacks
    def test_poolSettings(self) -> Any:
        """
        A client routed to a pool with C{proxy-protocol: v1} has the header
        sent first (the listener's own pool sends none), and its pair is
        closed after the route's idle timeout.
        """
        backends = Backends(self)
        backends.start("plain")
        backends.start("proxied")
        lb, port = startBalancer(self, {
            "listeners": [{
                "name": "front", "listen": "tcp:0:interface=127.0.0.1", "mode": "tcp",
                "routes": [{"name": "local", "match": {"source": "127.0.0.0/8"},
                            "pool": "proxied", "timeouts": {"idle": 0.5}}],
                "default-route": {"pool": "plain"},
            }],
            "pools": {
                "plain": {"backends": [{"name": "plain",
                                        "endpoint": backends.endpoint("plain")}]},
                "proxied": {"proxy-protocol": "v1",
                            "backends": [{"name": "proxied",
                                          "endpoint": backends.endpoint("proxied")}]},
            },
        })

        elapsed, read = yield inThread(closedAfter, port, b"")
        name, proxyLine = read.split(b"\n", 1)
        self.assertEqual(name, b"proxied")
        self.assertTrue(proxyLine.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 "), read)
        self.assertGreater(elapsed, 0.4)
        self.assertLess(elapsed, 3.0)

    @inlineCallbacks
    def test_listenerIdle(self) -> Any:
        """
        A listener's own C{timeouts.idle} closes its silent pairs, over the
        pool's, whether it has routes (a route's pool's idle) or not; a
        route's own idle still wins over it.
        """
        backends = Backends(self)
        backends.start("a")
        pool = {"timeouts": {"idle": "300s"},
                "backends": [{"name": "a", "endpoint": backends.endpoint("a")}]}
        for listener, expected in [
            ({}, (0.4, 3.0)),
            ({"routes": [{"name": "all", "pool": "web"}]}, (0.4, 3.0)),
            ({"routes": [{"name": "all", "pool": "web", "timeouts": {"idle": 1.5}}]},
             (1.4, 4.0)),
        ]:
            lb, port = startBalancer(self, {
                "listeners": [{"name": "front", "listen": "tcp:0:interface=127.0.0.1",
                               "timeouts": {"idle": 0.5}, **listener}],
                "pools": {"web": pool}})
            elapsed, read = yield inThread(closedAfter, port, b"")
            self.assertEqual(read, b"a\n", listener)
            self.assertGreater(elapsed, expected[0], listener)
            self.assertLess(elapsed, expected[1], listener)

    def test_routeRetries(self) -> None:
        """
        A route with its own C{retries} gets a connector that follows them;
        one without shares the pool's.
        """
        reactor = MemoryReactorClock()
        pools = {name: BackendPool(PoolConfig(name=name, backends=())) for name in ("a", "b")}
        factory = TCPProxyFactory(pools["a"], reactor, BackendConnector(pools["a"], reactor),
                                  60.0, pools=pools)
        factory.setRoutes((Route("r", pool="b", retries=0),), None)
        route = factory.table.match(connectionFacts("127.0.0.1", None))  # type: ignore[union-attr]
        pool, connector = factory.choosePool(route, b"127.0.0.1")  # type: ignore[arg-type,misc]
        self.assertIs(pool, pools["b"])
        self.assertFalse(connector.retryPolicy.mayTryAnother(pool, 1))
        self.assertIsNone(connector.connectTimeout)
        factory.setRoutes((Route("r", pool="b", timeouts=TimeoutOverrides(connect=0.5)),), None)
        route = factory.table.match(connectionFacts("127.0.0.1", None))  # type: ignore[union-attr]
        _, connector = factory.choosePool(route, b"127.0.0.1")  # type: ignore[arg-type,misc]
        self.assertEqual(connector.connectTimeout, 0.5)
        self.assertTrue(connector.retryPolicy.mayTryAnother(pool, 1))
        factory.setRoutes((Route("r", pool="a"),), None)
        route = factory.table.match(connectionFacts("127.0.0.1", None))  # type: ignore[union-attr]
        self.assertIs(factory.choosePool(route, None)[1], factory.connector)  # type: ignore[arg-type,index]
        factory.forgetPool("b")
        self.assertEqual(set(factory._connectors), {("a", None, None)})
