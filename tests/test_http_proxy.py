"""
Integration tests of L{lbtwist.http}: a real balancer on a real port,
real clients and real backends on 127.0.0.1.
"""

from __future__ import annotations

import gc
import http.client
import socket
import struct
from typing import Any

from twisted.internet.defer import inlineCallbacks

from lbtwist.http._backend import BackendConnection
from lbtwist.http._client import ClientConnection
from lbtwist.http._exchange import Exchange
from lbtwist.http._plan import websocketAccept
from lbtwist.leantcp import LeanDial, LeanTransport

from .httphelpers import HTTPProxyTestCase, httpRequests, okResponse, rawExchange, waitFor
from .support import inThread, poolConfig, startBalancer


class ProxyingTests(HTTPProxyTestCase):
    """
    Requests are balanced one by one over kept-alive connections.
    """

    @inlineCallbacks
    def test_perRequestBalancing(self) -> Any:
        """
        Four requests on one client connection go round-robin to two
        backends.
        """
        a = self.startBackend("a")
        b = self.startBackend("b")
        proxy = self.startProxy([a, b])
        results = yield httpRequests(proxy.testPort, [("GET", f"/{i}", None, {}) for i in range(4)])
        self.assertEqual([r[0] for r in results], [200] * 4)
        self.assertEqual([r[2] for r in results], [b"a /0\n", b"b /1\n", b"a /2\n", b"b /3\n"])
        self.assertEqual(proxy.accepted, 1)

    @inlineCallbacks
    def test_backendReuse(self) -> Any:
        """
        Twenty sequential requests over one client connection to one backend
        open a single backend connection.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        results = yield httpRequests(proxy.testPort, [("GET", "/", None, {})] * 20)
        self.assertEqual([r[0] for r in results], [200] * 20)
        self.assertEqual(len(a.connections), 1)
        self.assertEqual(len(a.requests), 20)
        self.assertEqual(proxy.upstream.idle.reused, 19)

    @inlineCallbacks
    def test_largeUploadAndDownloadStream(self) -> Any:
        """
        A 5 MB Content-Length upload reaches the backend whole and a 5 MB
        chunked download reaches the client whole, in several pieces each
        way (nothing is buffered into one piece).
        """
        payload = bytes(range(256)) * (5 * 4096)
        pieces: list[int] = []

        def respond(request: Any, backend: Any, conn: Any) -> bytes:
            conn.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            for i in range(0, len(payload), 65536):
                piece = payload[i:i + 65536]
                conn.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            return b"0\r\n\r\n"

        a = self.startBackend("a", respond)
        original = a.buildProtocol

        def build(addr: Any) -> Any:
            p = original(addr)
            received = p.dataReceived

            def dataReceived(data: bytes) -> None:
                pieces.append(len(data))
                received(data)

            p.dataReceived = dataReceived  # type: ignore[method-assign]
            return p

        a.buildProtocol = build  # type: ignore[method-assign]
        proxy = self.startProxy([a])
        results = yield httpRequests(proxy.testPort, [("PUT", "/up", payload, {})], timeout=15)
        status, headers, body = results[0]
        self.assertEqual(status, 200)
        self.assertEqual(headers.get("transfer-encoding"), "chunked")
        self.assertEqual(len(body), len(payload))
        self.assertEqual(body, payload)
        self.assertEqual(a.requests[0].body, payload)
        self.assertGreater(len(pieces), 2)
        self.assertEqual(a.requests[0].header(b"content-length"), b"%d" % len(payload))

    @inlineCallbacks
    def test_chunkedRequest(self) -> Any:
        """
        A chunked request body reaches the backend chunked and decoded whole.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        raw = (
            b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        out = yield rawExchange(proxy.testPort, raw)
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertEqual(a.requests[0].body, b"hello world")
        self.assertEqual(a.requests[0].header(b"transfer-encoding"), b"chunked")
        self.assertIn(b"5\r\nhello\r\n", a.raw)

    @inlineCallbacks
    def test_noBodyResponses(self) -> Any:
        """
        Replies to HEAD, and 204 and 304 replies, carry no body, and the
        connection goes on serving requests after them.
        """

        def respond(request: Any, backend: Any, conn: Any) -> bytes:
            if request.url == b"/204":
                return b"HTTP/1.1 204 No Content\r\n\r\n"
            if request.url == b"/304":
                return b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"
            if request.method == b"HEAD":
                return b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n"
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

        a = self.startBackend("a", respond)
        proxy = self.startProxy([a])
        raw = b"".join(
            b"%s %s HTTP/1.1\r\nHost: x\r\n\r\n" % (m, p)
            for m, p in [(b"HEAD", b"/h"), (b"GET", b"/204"), (b"GET", b"/304"), (b"HEAD", b"/h2")]
        ) + b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        out = yield rawExchange(proxy.testPort, raw)
        parts = out.split(b"HTTP/1.1 ")[1:]
        self.assertEqual([p.split(b" ", 1)[0] for p in parts], [b"200", b"204", b"304", b"200", b"200"])
        self.assertIn(b"Content-Length: 1000\r\n\r\n", parts[0])
        self.assertTrue(parts[0].endswith(b"\r\n\r\n"))
        self.assertTrue(parts[1].endswith(b"\r\n\r\n"))
        self.assertTrue(out.endswith(b"\r\n\r\nok"))
        self.assertEqual(len(a.connections), 1)

    @inlineCallbacks
    def test_pipelinedInOrder(self) -> Any:
        """
        Pipelined requests to backends of different speeds are answered in
        the order they were sent.
        """
        from twisted.internet import reactor

        def slow(request: Any, backend: Any, conn: Any) -> None:
            reactor.callLater(0.2, conn.transport.write,
                              b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nslow")
            return None

        a = self.startBackend("a", slow)
        b = self.startBackend("b")
        proxy = self.startProxy([a, b])
        raw = (b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n" b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n"
               b"GET /3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = yield rawExchange(proxy.testPort, raw)
        self.assertEqual(out.count(b"HTTP/1.1 200 OK"), 3)
        first = out.index(b"slow")
        self.assertLess(first, out.index(b"b /2"))
        self.assertLess(out.index(b"b /2"), out.rindex(b"slow"))

    @inlineCallbacks
    def test_expectContinue(self) -> Any:
        """
        A client sending C{Expect: 100-continue} gets the backend's 100
        Continue, then sends its body, which reaches the backend.
        """

        def onHead(request: Any, backend: Any, conn: Any) -> None:
            if request.header(b"expect") == b"100-continue":
                conn.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

        a = self.startBackend("a")
        a.onHead = onHead
        proxy = self.startProxy([a])
        head = (b"POST /e HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                b"Expect: 100-continue\r\nConnection: close\r\n\r\n")

        def run() -> bytes:
            import socket

            with socket.create_connection(("127.0.0.1", proxy.testPort), timeout=5) as s:
                s.sendall(head)
                interim = s.recv(100)
                s.sendall(b"body")
                rest = b""
                while True:
                    got = s.recv(65536)
                    if not got:
                        break
                    rest += got
            return interim + b"|" + rest

        from twisted.internet.threads import deferToThread

        out = yield deferToThread(run)
        self.assertTrue(out.startswith(b"HTTP/1.1 100 Continue\r\n\r\n|HTTP/1.1 200 OK"), out)
        self.assertEqual(a.requests[0].body, b"body")


class HeaderTests(HTTPProxyTestCase):
    """
    Hop-by-hop headers are removed and forwarding headers are set.
    """

    @inlineCallbacks
    def test_requestHeaders(self) -> Any:
        """
        Connection and what it names, Keep-Alive, TE, Trailer and Proxy-*
        do not reach the backend; X-Forwarded-For is appended to,
        X-Forwarded-Proto and -Host are set, Host is kept.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        raw = (
            b"GET /h HTTP/1.1\r\nHost: example.com\r\nConnection: close, X-Secret\r\n"
            b"X-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nTrailer: X\r\n"
            b"Proxy-Authorization: basic x\r\nX-Forwarded-For: 10.1.2.3\r\n"
            b"X-Forwarded-Proto: https\r\nX-Other: kept\r\n\r\n"
        )
        yield rawExchange(proxy.testPort, raw)
        request = a.requests[0]
        names = {n.lower() for n, v in request.headers}
        for gone in (b"connection", b"x-secret", b"keep-alive", b"te", b"trailer",
                     b"proxy-authorization"):
            self.assertNotIn(gone, names)
        self.assertEqual(request.header(b"host"), b"example.com")
        self.assertEqual(request.header(b"x-forwarded-for"), b"10.1.2.3, 127.0.0.1")
        self.assertEqual(request.header(b"x-forwarded-proto"), b"http")
        self.assertEqual(request.header(b"x-forwarded-host"), b"example.com")
        self.assertEqual(request.header(b"x-other"), b"kept")

    @inlineCallbacks
    def test_connectionCannotStripFraming(self) -> Any:
        """
        A client that names Content-Length (or Host) in its Connection header
        does not get them removed: the body stays a body, and no second
        request is smuggled to the backend.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        body = b"GET /admin HTTP/1.1\r\nHost: x\r\n\r\n"
        raw = (
            b"POST / HTTP/1.1\r\nHost: x\r\nConnection: content-length, host\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        answer = yield rawExchange(proxy.testPort, raw)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer)
        [request] = a.requests
        self.assertEqual(request.body, body)
        self.assertEqual(request.header(b"content-length"), b"%d" % len(body))
        self.assertEqual(request.header(b"host"), b"x")

    @inlineCallbacks
    def test_hostHeaderReplaced(self) -> Any:
        """
        With C{host-header} set, the backend sees that Host.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a], http={"host-header": "internal.local"})
        yield httpRequests(proxy.testPort, [("GET", "/", None, {"Host": "public.example"})])
        self.assertEqual(a.requests[0].header(b"host"), b"internal.local")
        self.assertEqual(a.requests[0].header(b"x-forwarded-host"), b"public.example")

    @inlineCallbacks
    def test_responseHeaders(self) -> Any:
        """
        Hop-by-hop headers of the response do not reach the client.
        """

        def respond(request: Any, backend: Any, conn: Any) -> bytes:
            return (b"HTTP/1.1 200 OK\r\nConnection: X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=4\r\n"
                    b"Proxy-Authenticate: x\r\nX-End: 1\r\nContent-Length: 0\r\n\r\n")

        a = self.startBackend("a", respond)
        proxy = self.startProxy([a])
        results = yield httpRequests(proxy.testPort, [("GET", "/", None, {})])
        headers = results[0][1]
        self.assertEqual(headers.get("x-end"), "1")
        for gone in ("keep-alive", "proxy-authenticate", "connection"):
            self.assertNotIn(gone, headers)

    @inlineCallbacks
    def test_clientHalfClose(self) -> Any:
        """
        A client that sends its request then shuts down its write side
        still gets the response, then the connection is closed, with
        C{http.abort-on-close} off.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a], http={"abort-on-close": False})

        out = yield inThread(_sendThenHalfClose, proxy.testPort,
                             b"GET /half HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertTrue(out.endswith(b"a /half\n"), out)


    @inlineCallbacks
    def test_pipelinedThenHalfClose(self) -> Any:
        """
        A client that pipelines two requests and shuts down its write side
        in the same breath gets both responses (C{http.abort-on-close} on,
        as by default): reading is held while they are answered, so the
        end is read after them, even though it came with them.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])

        # Held for the FIN (MSG_MORE): both arrive in one segment.
        out = yield inThread(_sendThenHalfClose, proxy.testPort,
                             b"GET /1 HTTP/1.1\r\nHost: x\r\n\r\n"
                             b"GET /2 HTTP/1.1\r\nHost: x\r\n\r\n", socket.MSG_MORE)
        self.assertEqual(out.count(b"HTTP/1.1 200 OK"), 2, out)
        self.assertTrue(out.endswith(b"a /2\n"), out)


def _sendThenHalfClose(port: int, data: bytes, flags: int = 0) -> bytes:
    """
    Send C{data} (with C{flags}) to C{port}, shut down the write side, and
    read everything until the connection is closed.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data, flags)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            got = s.recv(65536)
            if not got:
                return out
            out += got


def _varietyOfClients(port: int) -> list[int]:
    """
    Over C{port}, requests that end in every common way: on a kept-alive
    connection and on closed ones, GET and POST, a response after which the
    backend closes, a malformed request, a client gone in the middle of a
    head and of a body, and an upgrade to a tunnel.

    @return: the statuses of the well-formed requests answered.
    """
    statuses = []
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    for i in range(5):
        conn.request("GET", f"/get{i}")
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
        conn.request("POST", f"/post{i}", body=b"x" * 100)
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
    conn.request("GET", "/close")
    response = conn.getresponse()
    response.read()
    statuses.append(response.status)
    conn.close()
    for method, body in [("GET", None), ("POST", b"y" * 1000)] * 3:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request(method, "/once", body=body, headers={"Connection": "close"})
        response = conn.getresponse()
        response.read()
        statuses.append(response.status)
        conn.close()

    def send(data: bytes, reset: bool) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(data)
            if reset:
                # A reset, not a FIN: after a FIN (a half-close) the
                # balancer would still wait for the rest of the request.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            while s.recv(65536):
                pass

    send(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", reset=False)
    send(b"GET / HTTP/1.1\r\nHost:", reset=True)
    send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nabc", reset=True)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
                  b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  b"Sec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(1000)
        statuses.append(int(head.split(b" ")[1]) - 101 + 200)
        s.sendall(b"ping")
        s.recv(1000)
    return statuses


class ReferenceCycleTests(HTTPProxyTestCase):
    """
    What HTTP mode makes per connection and per request is freed by
    reference counting, not left for the cyclic garbage collector.
    """

    @inlineCallbacks
    def test_freedAtOnce(self) -> Any:
        """
        With the cyclic garbage collector off, every client connection,
        backend connection and exchange is freed by reference counting
        once it is over, however it ended.
        """

        def respond(request: Any, backend: Any, conn: Any) -> bytes | None:
            if request.url == b"/close":
                conn.transport.write(okResponse(request, backend))
                conn.transport.loseConnection()
                return None
            if request.url == b"/ws":
                conn.tunnel = True
                accept = websocketAccept(request.header(b"sec-websocket-key") or b"")
                return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\nSec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            return okResponse(request, backend)

        a = self.startBackend("a", respond)
        lb, port = startBalancer(self, poolConfig([("a", a.endpoint)], mode="http"))
        factory = lb.factories[lb.config.listeners[0].name]
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        statuses = yield inThread(_varietyOfClients, port)
        self.assertEqual(statuses, [200] * len(statuses))
        self.assertTrue((yield waitFor(lambda: not factory.activeClients)))
        # Pooled backend connections closed by their backend are discarded.
        for conn in a.connections:
            if conn.transport.connected:
                conn.transport.abortConnection()
        self.assertTrue((yield waitFor(lambda: a.open == 0 and not len(factory.upstream.idle))))
        gc.set_debug(gc.DEBUG_SAVEALL)
        self.addCleanup(gc.garbage.clear)
        self.addCleanup(gc.set_debug, 0)
        gc.collect()
        left = [
            o for o in gc.garbage
            if isinstance(o, (ClientConnection, BackendConnection, Exchange, LeanDial, LeanTransport))
        ]
        self.assertEqual(left, [])
