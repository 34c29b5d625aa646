"""
Integration tests of HTTP mode features: upgrades to tunnels, sticky
sessions, PROXY protocol, the access log, and real clients (curl, wrk).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from io import StringIO
from typing import Any, Callable

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.logger import globalLogPublisher

from lbtwist.config import parseConfig
from lbtwist.connect import BackendConnector
from lbtwist.http import jsonLogger
from lbtwist.http._plan import websocketAccept
from lbtwist.pool import BackendPool
from lbtwist.tcp import TCPProxyFactory

from .httphelpers import HTTPProxyTestCase, httpRequests, rawExchange, waitFor

# A WebSocket handshake's key and version (RFC 6455).
WEBSOCKET_HEADERS = b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"


def upgradeAccepted(request: Any, backend: Any, conn: Any) -> bytes:
    """
    A recording backend's answer that accepts a WebSocket upgrade: the
    connection then echoes what it gets, prefixed with C{echo:}.
    """
    conn.tunnel = True
    accept = websocketAccept(request.header(b"sec-websocket-key") or b"")
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")


def tunnelSession(port: int, beforeClose: Callable[[], Any]) -> Any:
    """
    Upgrade a connection to the balancer on C{port}, send C{ping} and
    C{pong!} through the tunnel waiting for each echo, stay 0.3 s, and
    return what C{beforeClose} says just before closing (run it in a thread).
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\n" + WEBSOCKET_HEADERS + b"\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1000)
        for word in (b"ping", b"pong!"):
            s.sendall(word)
            echo = b""
            while len(echo) < len(word) + len(b"echo:"):
                echo += s.recv(1000)
        time.sleep(0.3)
        return beforeClose()


def accessEvents(case: HTTPProxyTestCase) -> list[dict[str, Any]]:
    """
    The C{lbtwist.access} events emitted from now until the end of the test.
    """
    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == "lbtwist.access":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    case.addCleanup(globalLogPublisher.removeObserver, observe)
    return events


class UpgradeTests(HTTPProxyTestCase):
    """
    An Upgrade request becomes a two-way tunnel after the backend's 101.
    """

    @inlineCallbacks
    def test_websocketTunnel(self) -> Any:
        """
        After a 101 the client's bytes reach the backend and its answers come
        back, raw; the Upgrade and Connection headers were forwarded.
        """
        a = self.startBackend("a", upgradeAccepted)
        proxy = self.startProxy([a])

        def run() -> bytes:
            with socket.create_connection(("127.0.0.1", proxy.testPort), timeout=5) as s:
                s.sendall(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                          b"Connection: Upgrade\r\n" + WEBSOCKET_HEADERS + b"\r\n")
                head = b""
                while b"\r\n\r\n" not in head:
                    head += s.recv(1000)
                s.sendall(b"ping")
                echo = s.recv(1000)
                return head + b"|" + echo

        out = yield deferToThread(run)
        self.assertTrue(out.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), out)
        self.assertTrue(out.endswith(b"|echo:ping"), out)
        request = a.requests[0]
        self.assertEqual(request.header(b"upgrade"), b"websocket")
        self.assertEqual(request.header(b"connection"), b"upgrade")

    @inlineCallbacks
    def test_tunnelLoggedWhenClosed(self) -> Any:
        """
        A tunnel's access-log event is emitted when it closes, not at the
        101: with the bytes it carried each way and its whole lifetime.
        """
        events = accessEvents(self)
        a = self.startBackend("a", upgradeAccepted)
        proxy = self.startProxy([a], http={"access-log": True})
        loggedBeforeClose = yield deferToThread(
            tunnelSession, proxy.testPort, lambda: len(events))
        yield waitFor(lambda: len(events) == 1)
        self.assertEqual(loggedBeforeClose, 0)
        [event] = events
        self.assertEqual(
            (event["path"], event["status"], event["backend"], event["bytesIn"],
             event["bytesOut"]),
            ("/ws", 101, "a", len(b"pingpong!"), len(b"echo:pingecho:pong!")),
        )
        self.assertGreaterEqual(event["duration"], 0.3)

    @inlineCallbacks
    def test_upgradeRefused(self) -> Any:
        """
        A backend that answers an upgrade with a plain response has it
        relayed, and the client connection is then closed.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        out = yield rawExchange(
            proxy.testPort,
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + WEBSOCKET_HEADERS + b"\r\n",
        )
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertIn(b"Connection: close\r\n", out)


class StickyTests(HTTPProxyTestCase):
    """
    Sticky sessions keep a client on one backend.
    """

    @inlineCallbacks
    def test_insertedCookie(self) -> Any:
        """
        The balancer inserts a cookie naming the backend opaquely, and a
        request carrying it goes to that backend.
        """
        a = self.startBackend("a")
        b = self.startBackend("b")
        proxy = self.startProxy([a, b], sticky={"cookie": "LB"})
        first = yield httpRequests(proxy.testPort, [("GET", "/", None, {})])
        cookie = first[0][1]["set-cookie"]
        self.assertTrue(cookie.startswith("LB="), cookie)
        value = cookie.split(";")[0]
        owner = first[0][2].split(b" ")[0]
        # Opaque: a hash, not the backend's name.
        self.assertEqual(
            value.split("=")[1].encode(), proxy.upstream.cookieId(proxy.pool.get(owner.decode()))  # type: ignore[arg-type]
        )
        self.assertRegex(value, "^LB=[0-9a-f]{16}$")
        results = yield httpRequests(
            proxy.testPort, [("GET", f"/{i}", None, {"Cookie": f"x=1; {value}"}) for i in range(6)]
        )
        self.assertEqual({r[2].split(b" ")[0] for r in results}, {owner})
        self.assertTrue(all("set-cookie" not in r[1] for r in results))

    @inlineCallbacks
    def test_headerHash(self) -> Any:
        """
        Requests with the same value of the sticky header go to the same
        backend; different values spread over both.
        """
        a = self.startBackend("a")
        b = self.startBackend("b")
        proxy = self.startProxy([a, b], sticky={"header": "X-User"})
        results = yield httpRequests(
            proxy.testPort,
            [("GET", "/", None, {"X-User": f"user{i % 8}"}) for i in range(32)],
        )
        owners: dict[int, set[bytes]] = {}
        for i, r in enumerate(results):
            owners.setdefault(i % 8, set()).add(r[2].split(b" ")[0])
        self.assertTrue(all(len(v) == 1 for v in owners.values()), owners)
        self.assertEqual(set().union(*owners.values()), {b"a", b"b"})

    @inlineCallbacks
    def test_sourceHash(self) -> Any:
        """
        With C{sticky: source} every request of one client address goes to
        one backend.
        """
        a = self.startBackend("a")
        b = self.startBackend("b")
        proxy = self.startProxy([a, b], sticky="source")
        results = yield httpRequests(proxy.testPort, [("GET", "/", None, {})] * 6)
        self.assertEqual(len({r[2].split(b" ")[0] for r in results}), 1)


class StickyCookieCurlTests(HTTPProxyTestCase):
    """
    curl, a real cookie jar, keeps the sticky cookie as its attributes say.
    """

    @inlineCallbacks
    def test_attributesHonoured(self) -> Any:
        """
        With C{path}, C{domain}, C{max-age} and C{samesite}, curl sends the
        cookie back under the path on a host of the domain (so the client
        stays on its backend), not elsewhere, and keeps it for C{max-age}.
        """
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        a = self.startBackend("a")
        b = self.startBackend("b")
        proxy = self.startProxy([a, b], sticky={
            "cookie": "LB", "path": "/app", "domain": "example.com", "max-age": "1h",
            "samesite": "Lax"})
        jar = self.mktemp()
        port = proxy.testPort  # type: ignore[attr-defined]
        urls = [f"http://www.example.com:{port}{p}" for p in ("/app/1", "/app/2", "/app/3", "/x")]
        started = time.time()
        result = yield deferToThread(
            subprocess.run, ["curl", "-s", "--max-time", "5", "-D", "-", "-c", jar, "-b", jar,
                             "--resolve", f"www.example.com:{port}:127.0.0.1", *urls],
            capture_output=True, timeout=10)
        out = result.stdout.decode()
        cookies = [line for line in out.splitlines() if line.lower().startswith("set-cookie")]
        self.assertEqual(len(cookies), 2, out)
        self.assertRegex(cookies[0], r"^Set-Cookie: LB=[0-9a-f]{16}; Path=/app; "
                                     r"Domain=example.com; Max-Age=3600; HttpOnly; SameSite=Lax$")
        sent = {r.url: r.header(b"cookie") for r in a.requests + b.requests}
        value = cookies[0].split(": ", 1)[1].split(";")[0].encode()
        self.assertEqual(sent, {b"/app/1": None, b"/app/2": value, b"/app/3": value, b"/x": None})
        servedBy = {backend.name for backend in (a, b) for r in backend.requests
                    if r.url.startswith(b"/app/")}
        self.assertEqual(len(servedBy), 1, servedBy)
        with open(jar) as f:
            kept = [line.split("\t") for line in f if "\tLB\t" in line]
        self.assertEqual(len(kept), 1, kept)
        domain, _, path, _, expires, _, _ = kept[0]
        self.assertEqual((domain.removeprefix("#HttpOnly_"), path), (".example.com", "/app"))
        self.assertLess(abs(int(expires) - (started + 3600)), 60, expires)


class WeightZeroTests(HTTPProxyTestCase):
    """
    A backend of weight 0 takes no new clients, but keeps its sticky ones
    (as HAProxy's weight-0 servers keep persistent traffic).
    """

    @inlineCallbacks
    def test_cookieStillSticks(self) -> Any:
        """
        A client whose cookie names a backend set to weight 0 still reaches
        it; clients without the cookie go to the others only.
        """
        a = self.startBackend("a")
        b = self.startBackend("b")
        proxy = self.startProxy([a, b], sticky={"cookie": "LB"})
        first = yield httpRequests(proxy.testPort, [("GET", "/", None, {})])
        value = first[0][1]["set-cookie"].split(";")[0]
        owner = first[0][2].split(b" ")[0].decode()
        other = {"a": "b", "b": "a"}[owner]
        proxy.pool.setWeight(owner, 0)
        sticky = yield httpRequests(
            proxy.testPort, [("GET", "/", None, {"Cookie": value}) for _ in range(4)])
        fresh = yield httpRequests(proxy.testPort, [("GET", "/", None, {})] * 4)
        self.assertEqual({r[2].split(b" ")[0].decode() for r in sticky}, {owner})
        self.assertEqual({r[2].split(b" ")[0].decode() for r in fresh}, {other})

    @inlineCallbacks
    def test_headerHashSkipsIt(self) -> Any:
        """
        Hashing a sticky header balances: no value maps to a weight-0
        backend.
        """
        a = self.startBackend("a")
        b = self.startBackend("b")
        proxy = self.startProxy(
            [a, {"name": "b", "endpoint": b.endpoint, "weight": 0}],
            sticky={"header": "X-User"},
        )
        results = yield httpRequests(
            proxy.testPort, [("GET", "/", None, {"X-User": f"user{i}"}) for i in range(16)])
        self.assertEqual({r[2].split(b" ")[0] for r in results}, {b"a"})

    @inlineCallbacks
    def test_allZeroIs503(self) -> Any:
        """
        When every backend has weight 0 a new request is answered 503.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([{"name": "a", "endpoint": a.endpoint, "weight": 0}])
        out = yield rawExchange(
            proxy.testPort, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 503 "), out)
        self.assertEqual(a.requests, [])


class ProxyProtocolTests(HTTPProxyTestCase):
    """
    PROXY protocol headers are sent to backends when a pool asks for them.
    """

    @inlineCallbacks
    def test_httpV1(self) -> Any:
        """
        In HTTP mode each new backend connection starts with a v1 header
        naming the client.
        """
        a = self.startBackend("a")
        a.proxyHeader = True
        proxy = self.startProxy([a], **{"proxy-protocol": "v1"})
        results = yield httpRequests(proxy.testPort, [("GET", "/", None, {})] * 3)
        self.assertEqual([r[0] for r in results], [200] * 3)
        self.assertEqual(len(a.proxyHeaders), 1)
        header = a.proxyHeaders[0]
        self.assertTrue(header.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 "), header)
        self.assertTrue(header.endswith(b" %d\r\n" % proxy.testPort), header)
        # The connection was this client's alone: it is not kept idle after.
        from .httphelpers import waitFor

        closed = yield waitFor(lambda: len(proxy.upstream.idle) == 0 and a.open == 0)
        self.assertTrue(closed)

    @inlineCallbacks
    def test_httpV2(self) -> Any:
        """
        A v2 header carries the client's address and port in binary.
        """
        a = self.startBackend("a")
        a.proxyHeader = True
        proxy = self.startProxy([a], **{"proxy-protocol": "v2"})
        yield httpRequests(proxy.testPort, [("GET", "/", None, {})])
        header = a.proxyHeaders[0]
        self.assertEqual(header[12:14], b"\x21\x11")
        self.assertEqual(header[16:20], b"\x7f\x00\x00\x01")
        self.assertEqual(int.from_bytes(header[26:28], "big"), proxy.testPort)

    @inlineCallbacks
    def test_tcpMode(self) -> Any:
        """
        In TCP mode the header is written to the backend before any relayed
        byte.
        """
        a = self.startBackend("a")
        a.proxyHeader = True
        config = parseConfig({
            "listeners": [{"listen": "tcp:0"}],
            "pools": {"p": {"backends": [a.endpoint], "proxy-protocol": "v1"}},
        })
        pool = BackendPool(config.pools[0])
        factory = TCPProxyFactory(pool, reactor, BackendConnector(pool, reactor), 60.0)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        out = yield rawExchange(
            port.getHost().port, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK"))
        self.assertTrue(a.raw.startswith(b"PROXY TCP4 127.0.0.1 127.0.0.1 "), a.raw)
        yield waitFor(lambda: factory.activeClients == 0)


class AccessLogTests(HTTPProxyTestCase):
    """
    One structured event per request, when the access log is on.
    """

    @inlineCallbacks
    def test_eventPerRequest(self) -> Any:
        """
        Each request emits one C{lbtwist.access} event with its fields; the
        JSON observer writes it as one JSON line.
        """
        events = accessEvents(self)
        a = self.startBackend("a")
        proxy = self.startProxy([a], http={"access-log": True})
        yield httpRequests(proxy.testPort, [("POST", "/p?q=1", b"12345", {}), ("GET", "/g", None, {})])
        self.assertEqual(len(events), 2)
        first = events[0]
        self.assertEqual(
            (first["method"], first["path"], first["status"], first["backend"], first["bytesIn"]),
            ("POST", "/p?q=1", 200, "a", 5),
        )
        self.assertEqual(first["bytesOut"], len(b"a /p?q=1\n"))
        self.assertEqual(first["retries"], 0)
        self.assertTrue(first["client"].startswith("127.0.0.1:"))
        self.assertGreaterEqual(first["duration"], 0.0)
        stream = StringIO()
        jsonLogger(stream)(first)
        line = json.loads(stream.getvalue())
        self.assertEqual(line["path"], "/p?q=1")

    @inlineCallbacks
    def test_offByDefault(self) -> Any:
        """
        Without C{access-log: true} no access event is emitted.
        """
        events: list[dict[str, Any]] = []
        observer = events.append
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        yield httpRequests(proxy.testPort, [("GET", "/", None, {})])
        self.assertEqual([e for e in events if e.get("log_namespace") == "lbtwist.access"], [])


class RealClientTests(HTTPProxyTestCase):
    """
    Real command-line clients through the balancer.
    """

    @inlineCallbacks
    def test_curlKeepAlive(self) -> Any:
        """
        curl fetches three URLs over one kept-alive connection, each
        balanced on its own.
        """
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        a = self.startBackend("a")
        b = self.startBackend("b")
        proxy = self.startProxy([a, b])
        urls = [self.url(proxy, f"/{i}") for i in range(3)]
        result = yield deferToThread(
            subprocess.run, ["curl", "-s", "--max-time", "5", *urls],
            capture_output=True, timeout=10,
        )
        self.assertEqual(result.stdout, b"a /0\nb /1\na /2\n")
        self.assertEqual(proxy.accepted, 1)

    @inlineCallbacks
    def test_wrkLoad(self) -> Any:
        """
        wrk's keep-alive load over 10 connections is answered without errors
        and with few backend connections, reused many times.
        """
        if shutil.which("wrk") is None:
            self.skipTest("wrk is not installed")
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        result = yield deferToThread(
            subprocess.run, ["wrk", "-t1", "-c10", "-d1s", self.url(proxy)],
            capture_output=True, timeout=15,
        )
        out = result.stdout.decode()
        self.assertIn("requests in", out)
        self.assertNotIn("Non-2xx", out)
        self.assertNotIn("Socket errors", out)
        self.assertGreater(len(a.requests), 100)
        # Connections are reused: a few per client connection at most, and
        # far fewer than requests (a loaded machine may make wrk reconnect).
        self.assertLessEqual(len(a.connections), 2 * proxy.accepted)
        self.assertLess(len(a.connections) * 20, len(a.requests))
