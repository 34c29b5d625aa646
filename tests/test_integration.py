"""
Integration tests of TCP mode: the real balancer, real backends and real
clients over loopback sockets.
"""

from __future__ import annotations

import gc
import os
import socket
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.unittest import TestCase

from lbtwist.connect import ConnectAttempt
from lbtwist.leantcp import LeanDial, LeanTransport
from lbtwist.pool import Health
from lbtwist.tcp import BackendSide, ClientSide, TCPProxyFactory, TCPSession

from .httphelpers import waitFor
from .support import (
    Backends,
    firstLine,
    inThread,
    poolConfig,
    reactor,
    sleep,
    startBalancer,
    stuckListener,
)

FAST_CHECKS = {"interval": 0.1, "timeout": 0.5, "rise": 2, "fall": 3}


class BalancingTests(TestCase):
    """
    Connections spread over real backends as the policy says.
    """

    timeout = 30

    @inlineCallbacks
    def test_roundRobin(self) -> Any:
        """
        Nine connections to three backends: each serves three, in turn.
        """
        backends = Backends(self)
        for name in ("a", "b", "c"):
            backends.start(name)
        lb, port = startBalancer(
            self, poolConfig([(n, backends.endpoint(n)) for n in "abc"])
        )
        names = []
        for _ in range(9):
            names.append((yield inThread(firstLine, port)))
        self.assertEqual(names, [b"a", b"b", b"c"] * 3)
        stats = {s.name: s for s in lb.pools["web"].stats()}
        self.assertEqual({s.total for s in stats.values()}, {3})

    @inlineCallbacks
    def test_sourceSticks(self) -> Any:
        """
        With the source policy every connection from one address reaches
        the same backend.
        """
        backends = Backends(self)
        for name in ("a", "b", "c"):
            backends.start(name)
        lb, port = startBalancer(
            self, poolConfig([(n, backends.endpoint(n)) for n in "abc"], policy="source")
        )
        names = set()
        for _ in range(6):
            names.add((yield inThread(firstLine, port)))
        self.assertEqual(len(names), 1)

    @inlineCallbacks
    def test_leastconn(self) -> Any:
        """
        With leastconn, a backend holding open connections gets no new ones
        while another is idle.
        """
        backends = Backends(self)
        for name in ("a", "b"):
            backends.start(name)
        lb, port = startBalancer(
            self, poolConfig([(n, backends.endpoint(n)) for n in "ab"], policy="leastconn")
        )
        held = []
        first = socket.create_connection(("127.0.0.1", port), timeout=5)
        held.append(first)
        self.addCleanup(first.close)
        firstName = yield inThread(first.recv, 10)
        other = b"b" if firstName.strip() == b"a" else b"a"
        idle = lb.pools["web"].get(other.decode())
        assert idle is not None
        names = []
        for _ in range(4):
            names.append((yield inThread(firstLine, port)))
            # The balancer sees the client's close a moment later; until
            # then the two backends are tied at one connection each.
            self.assertTrue((yield waitFor(lambda: idle.active == 0)), "connection not released")
        self.assertEqual(names, [other] * 4)


class UnixSocketTests(TestCase):
    """
    Listeners and backends are endpoint strings, so UNIX sockets work too.
    """

    timeout = 30

    @inlineCallbacks
    def test_unixBoth(self) -> Any:
        """
        A client on a UNIX listener reaches a backend on a UNIX socket.
        """
        from .support import NamedFactory

        tmp = self.mktemp()
        os.makedirs(tmp)
        backendPath = os.path.join(tmp, "backend.sock")
        listenPath = os.path.join(tmp, "lb.sock")
        port = reactor.listenUNIX(backendPath, NamedFactory("u"))
        self.addCleanup(port.stopListening)
        lb, _ = startBalancer(self, {
            "listeners": [{"name": "main", "listen": f"unix:{listenPath}"}],
            "pools": {"web": {"backends": [{"name": "u", "endpoint": f"unix:{backendPath}"}]}},
        })

        def ask() -> bytes:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(listenPath)
                return s.recv(10)

        line = yield inThread(ask)
        self.assertEqual(line, b"u\n")
        self.assertEqual(lb.pools["web"].get("u").total, 1)  # type: ignore[union-attr]


class FailoverTests(TestCase):
    """
    Dead backends are skipped without clients noticing, and come back.
    """

    timeout = 30

    @inlineCallbacks
    def test_killedBackend(self) -> Any:
        """
        A backend that stops listening mid-run costs no client an error: its
        connects fail over to the others, and it is marked down.
        """
        backends = Backends(self)
        for name in ("a", "b", "c"):
            backends.start(name)
        lb, port = startBalancer(
            self, poolConfig([(n, backends.endpoint(n)) for n in "abc"],
                             health={"interval": 60, "fall": 3})
        )
        first = []
        for _ in range(3):
            first.append((yield inThread(firstLine, port)))
        yield backends.stop("b")
        after = []
        for _ in range(12):
            after.append((yield inThread(firstLine, port)))
        self.assertEqual(sorted(set(first)), [b"a", b"b", b"c"])
        self.assertNotIn(b"", after)
        self.assertEqual(set(after), {b"a", b"c"})
        b = lb.pools["web"].get("b")
        assert b is not None
        self.assertEqual(b.health, Health.DOWN)
        self.assertEqual(b.failures, {"refused": 3})

    @inlineCallbacks
    def test_comesBack(self) -> Any:
        """
        Health checks take a dead backend out and bring it back after
        C{rise} good probes.
        """
        backends = Backends(self)
        for name in ("a", "b"):
            backends.start(name)
        lb, port = startBalancer(
            self, poolConfig([(n, backends.endpoint(n)) for n in "ab"], health=FAST_CHECKS)
        )
        b = lb.pools["web"].get("b")
        assert b is not None
        yield backends.stop("b")
        for _ in range(50):
            if b.health is Health.DOWN:
                break
            yield sleep(0.05)
        self.assertEqual(b.health, Health.DOWN)
        names = set()
        for _ in range(4):
            names.add((yield inThread(firstLine, port)))
        self.assertEqual(names, {b"a"})
        backends.start("b")
        for _ in range(50):
            if b.health is Health.UP:
                break
            yield sleep(0.05)
        self.assertEqual(b.health, Health.UP)
        names = set()
        for _ in range(4):
            names.add((yield inThread(firstLine, port)))
        self.assertEqual(names, {b"a", b"b"})

    @inlineCallbacks
    def test_connectTimeout(self) -> Any:
        """
        A backend that does not complete the handshake (its accept queue is
        full) is abandoned after the connect timeout, counted as a timeout,
        and the client is served by another backend.
        """
        stuckPort = stuckListener(self)
        backends = Backends(self)
        backends.start("a")
        lb, port = startBalancer(
            self,
            poolConfig(
                [("stuck", f"tcp:host=127.0.0.1:port={stuckPort}"), ("a", backends.endpoint("a"))],
                timeouts={"connect": "200ms"},
                health={"interval": 60},
            ),
        )
        lines = []
        for _ in range(3):
            lines.append((yield inThread(firstLine, port)))
        # Round-robin offers the stuck backend to every other client (the
        # failover to a counts as a's turn, as in nginx): clients 1 and 3;
        # each connect times out and fails over.
        self.assertEqual(lines, [b"a", b"a", b"a"])
        self.assertEqual(lb.pools["web"].get("stuck").failures, {"timeout": 2})  # type: ignore[union-attr]

    @inlineCallbacks
    def test_noneReachable(self) -> Any:
        """
        When no backend can be reached the client is closed at once.
        """
        backends = Backends(self)
        backends.start("a")
        lb, port = startBalancer(self, poolConfig([("a", backends.endpoint("a"))]))
        yield backends.stop("a")
        line = yield inThread(firstLine, port)
        self.assertEqual(line, b"")

    @inlineCallbacks
    def test_pairFreedAtOnce(self) -> Any:
        """
        A finished pair leaves no reference cycle: with the cyclic garbage
        collector off, reference counting frees both sides and their
        session when the connection closes.
        """
        backends = Backends(self)
        backends.start("a")
        lb, port = startBalancer(self, poolConfig([("a", backends.endpoint("a"))]))
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        for _ in range(5):
            self.assertEqual((yield inThread(firstLine, port)), b"a")
        factory = lb.factories[lb.config.listeners[0].name]
        for _ in range(100):
            if not factory.activeClients and not backends.factories["a"].live:
                break
            yield sleep(0.02)
        gc.set_debug(gc.DEBUG_SAVEALL)
        self.addCleanup(gc.garbage.clear)
        self.addCleanup(gc.set_debug, 0)
        gc.collect()
        left = [
            o for o in gc.garbage
            if isinstance(o, (ClientSide, BackendSide, TCPSession, ConnectAttempt, LeanDial, LeanTransport))
        ]
        self.assertEqual(left, [])


class AfterEOF(Protocol):
    """
    Reads a request until the client half-closes, then sends a large
    response derived from it and closes.
    """

    def connectionMade(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def readConnectionLost(self) -> None:
        self.transport.write(self.received.upper() * 20000)  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


from twisted.internet.interfaces import IHalfCloseableProtocol  # noqa: E402
from zope.interface import classImplements  # noqa: E402

classImplements(AfterEOF, IHalfCloseableProtocol)


class Firehose(Protocol):
    """
    Sends C{factory.size} bytes as fast as the connection takes them.
    """

    factory: Any

    def connectionMade(self) -> None:
        self.sent = 0
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.sent < self.factory.size:
            chunk = b"x" * 65536
            self.sent += len(chunk)
            self.transport.write(chunk)  # type: ignore[union-attr]
        if self.sent >= self.factory.size:
            self.transport.unregisterProducer()  # type: ignore[union-attr]
            self.transport.loseConnection()  # type: ignore[union-attr]

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.paused = True


def halfCloseRequest(port: int, request: bytes) -> bytes:
    """
    Send C{request}, shut down the write side, and read until EOF.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def buffered(transport: Any) -> int:
    """
    Bytes waiting in a Twisted transport's write buffer.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


class FlowTests(TestCase):
    """
    Half-closes pass through, and slow peers do not grow memory.
    """

    timeout = 60

    @inlineCallbacks
    def test_halfClose(self) -> Any:
        """
        A client that shuts down its write side still gets the whole response.
        """
        backends = Backends(self, lambda name: Factory.forProtocol(AfterEOF))
        backends.start("a")
        lb, port = startBalancer(self, poolConfig([("a", backends.endpoint("a"))]))
        response = yield inThread(halfCloseRequest, port, b"ping")
        self.assertEqual(len(response), 4 * 20000)
        self.assertEqual(response, b"PING" * 20000)

    @inlineCallbacks
    def test_slowReader(self) -> Any:
        """
        While a client reads nothing, a backend sending 64 MiB is paused: the
        balancer holds a bounded amount, and then every byte arrives.
        """
        size = 64 * 1024 * 1024

        def firehose(name: str) -> Factory:
            f = Factory.forProtocol(Firehose)
            f.size = size  # type: ignore[attr-defined]
            return f

        backends = Backends(self, firehose)
        backends.start("a")
        lb, port = startBalancer(self, poolConfig([("a", backends.endpoint("a"))]))
        client = socket.create_connection(("127.0.0.1", port), timeout=30)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        self.addCleanup(client.close)
        factory = lb.factories["main" if "main" in lb.factories else "listener0"]
        assert isinstance(factory, TCPProxyFactory)
        peak = 0
        for _ in range(20):
            yield sleep(0.05)
            sides = [p for p in _openClientSides(factory)]
            for side in sides:
                peak = max(peak, buffered(side.transport))
                if side.peer is not None:
                    peak = max(peak, buffered(side.peer.transport))
        self.assertTrue(sides, "no proxied connection found")
        # Twisted pauses the producer once 64 KiB are buffered; one read of
        # up to 64 KiB may land on top of that.
        self.assertLess(peak, 256 * 1024)
        total = yield inThread(_drain, client)
        self.assertEqual(total, size)


def _openClientSides(factory: TCPProxyFactory) -> list[Any]:
    import gc

    from lbtwist.tcp import ClientSide

    return [o for o in gc.get_objects() if isinstance(o, ClientSide) and o.factory is factory
            and not o.closed]


def _drain(s: socket.socket) -> int:
    total = 0
    while True:
        chunk = s.recv(1 << 20)
        if not chunk:
            return total
        total += len(chunk)


def _garbage(port: int, rounds: int) -> int:
    """
    Send random bytes, disconnect abruptly, and open many short connections.
    """
    done = 0
    for i in range(rounds):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 3 == 0:
            s.sendall(os.urandom(512))
        if i % 3 == 1:
            # RST instead of FIN.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        s.close()
        done += 1
    return done


class AbuseTests(TestCase):
    """
    Garbage, instant disconnects and many short connections neither crash
    nor stall the balancer.
    """

    timeout = 120

    @inlineCallbacks
    def test_garbage(self) -> Any:
        """
        After 3,000 abusive connections the balancer still serves, and every
        proxied pair has been cleaned up.
        """
        backends = Backends(self)
        backends.start("a")
        lb, port = startBalancer(self, poolConfig([("a", backends.endpoint("a"))]))
        factory = next(iter(lb.factories.values()))
        assert isinstance(factory, TCPProxyFactory)
        # In batches the accept queue can hold: a client thread connects far
        # faster than the balancer accepts and dials, and a connection the
        # kernel drops from a full queue (then reset by the client) is never
        # accepted at all, which is the kernel's doing, not the balancer's.
        done = 0
        for _ in range(12):
            done += yield inThread(_garbage, port, 250)
            self.assertTrue((yield waitFor(lambda n=done: factory.accepted >= n, 10.0)),
                            f"{factory.accepted} of {done} connections accepted")
        self.assertEqual(done, 3000)
        line = yield inThread(firstLine, port)
        self.assertEqual(line, b"a")
        backend = backends.factories["a"]
        for _ in range(100):
            if (factory.activeClients == 0 and lb.pools["web"].get("a").active == 0  # type: ignore[union-attr]
                    and backend.live == 0):  # type: ignore[attr-defined]
                break
            yield sleep(0.05)
        self.assertEqual(factory.activeClients, 0)
        self.assertEqual(lb.pools["web"].get("a").active, 0)  # type: ignore[union-attr]
        self.assertEqual(factory.accepted, 3001)
        self.assertEqual(backend.live, 0)  # type: ignore[attr-defined]


class BackupTests(TestCase):
    """
    A backup backend serves only while the primaries cannot, over real
    sockets.
    """

    timeout = 30

    @inlineCallbacks
    def test_backupServesWhilePrimariesDown(self) -> Any:
        """
        While the primaries serve, the backup gets nothing; when both stop
        the backup serves every client with no failed connection, first by
        failover and then once they are marked down; when a primary comes
        back (slow start or not) the clients return to it.
        """
        backends = Backends(self)
        for name in ("a", "b", "c"):
            backends.start(name)
        data = poolConfig([(n, backends.endpoint(n)) for n in "abc"],
                          health=FAST_CHECKS, **{"slow-start": "5s"})
        data["pools"]["web"]["backends"][2]["backup"] = True
        lb, port = startBalancer(self, data)
        pool = lb.pools["web"]
        a, b = pool.get("a"), pool.get("b")
        assert a is not None and b is not None

        def serve(n: int) -> Any:
            return inThread(lambda: [firstLine(port) for _ in range(n)])

        before = yield serve(10)
        self.assertEqual(set(before), {b"a", b"b"})
        yield backends.stop("a")
        yield backends.stop("b")
        during = yield serve(20)
        yield waitFor(lambda: a.health is Health.DOWN and b.health is Health.DOWN)
        self.assertEqual((a.health, b.health), (Health.DOWN, Health.DOWN))
        down = yield serve(20)
        self.assertEqual((set(during), set(down)), ({b"c"}, {b"c"}))
        backends.start("a")
        yield waitFor(lambda: a.health is Health.UP)
        self.assertEqual(a.health, Health.UP)
        self.assertTrue(a.rampEnd, "a came back from down: it ramps up")
        after = yield serve(20)
        self.assertEqual(set(after), {b"a"})
        self.assertEqual(pool.noBackend, 0)
