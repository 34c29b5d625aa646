"""
Integration tests of what clients see when requests or backends go wrong
in HTTP mode, of request-smuggling refusal, and of safe retries.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.http._errors import localResponse

from .httphelpers import TIMED_OUT, HTTPProxyTestCase, httpRequests, rawExchange

SMUGGLING = {
    # RFC 9112 3.2: a target has no fragment (a backend may cut it where
    # routing did not).
    "fragmentInTarget": b"GET /public#/../admin HTTP/1.1\r\nHost: a\r\n\r\n",
    "fragmentAfterQuery": b"GET /a?q=1#/../admin HTTP/1.1\r\nHost: a\r\n\r\n",
    "fragmentInAbsoluteForm": b"GET http://a/x#y HTTP/1.1\r\nHost: a\r\n\r\n",
    "contentLengthAndChunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /x HTTP/1.1\r\nHost: a\r\n\r\n"
    ),
    "chunkedAndContentLength": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Length: 5\r\n\r\n0\r\n\r\n"
    ),
    "differingContentLengths": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd"
    ),
    "contentLengthList": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 4\r\n\r\nabcd",
    "contentLengthPlus": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc",
    "contentLengthMinus": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -3\r\n\r\nabc",
    "contentLengthHex": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc",
    "contentLengthSpace": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1 2\r\n\r\nabc",
    "transferEncodingGzip": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\nabc"
    ),
    "transferEncodingChunkedNotLast": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"
    ),
    "transferEncodingGzipChunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"
    ),
    "transferEncodingTwice": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "transferEncodingLookalike": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"
    ),
    "transferEncodingHTTP10": (
        b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ),
    "badChunkSize": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nab\r\n0\r\n\r\n"
    ),
    "negativeChunkSize": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n-2\r\nab\r\n0\r\n\r\n"
    ),
    "bareLFInChunks": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\nab\n0\n\n"
    ),
    "bareLFInHead": b"GET / HTTP/1.1\nHost: a\n\n",
    "bareLFAfterHeader": b"GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n",
    "nulInValue": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n",
    "crInValue": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n",
    "headerWithoutColon": b"GET / HTTP/1.1\r\nHost: a\r\nX-A b\r\n\r\n",
    "spaceBeforeColon": b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length : 3\r\n\r\nabc",
    "obsoleteLineFolding": b"GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n",
    "missingHost": b"GET / HTTP/1.1\r\nX-A: b\r\n\r\n",
    "twoHosts": b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "spaceInTarget": b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
}


class SmugglingTests(HTTPProxyTestCase):
    """
    Each request-smuggling shape gets a 400 and a closed connection, and
    nothing of it reaches a backend.
    """

    @inlineCallbacks
    def assertRefused(self, raw: bytes, status: bytes = b"400") -> Any:
        """
        Send C{raw} over a real socket; expect C{status}, a close, and a
        backend that received nothing.
        """
        backend = self.startBackend("a")
        proxy = self.startProxy([backend])
        out = yield rawExchange(proxy.testPort, raw)
        self.assertTrue(out.startswith(b"HTTP/1.1 " + status + b" "), out)
        self.assertIn(b"Content-Type: text/plain", out)
        self.assertIn(b"Connection: close", out)
        self.assertFalse(out.endswith(TIMED_OUT), "the connection was left open")
        self.assertEqual(out.count(b"HTTP/1.1"), 1)
        self.assertEqual(backend.raw, b"")
        self.assertEqual(backend.connections, [])

    def test_oversizedHeaders(self) -> Any:
        """
        A head larger than C{max-header-size} gets a 431.
        """
        return self.assertRefused(
            b"GET / HTTP/1.1\r\nHost: a\r\n" + b"X-Big: " + b"a" * 20000 + b"\r\n\r\n", b"431"
        )

    def test_oversizedRequestLine(self) -> Any:
        """
        A request line longer than C{max-request-line} gets a 414.
        """
        return self.assertRefused(b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: a\r\n\r\n", b"414")

    def test_http09RequestLine(self) -> Any:
        """
        An HTTP/0.9 request line, with fields after it of which one ends
        in " HTTP/1.1", gets a 505: none of it is relayed as a request
        head of the version it seems to have.
        """
        return self.assertRefused(b"GET /\r\nX:y\r\nb:c HTTP/1.1\r\nHost: a\r\n\r\n", b"505")

    def test_connectRefusedWith501(self) -> Any:
        """
        CONNECT is not supported: 501.
        """
        return self.assertRefused(b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", b"501")


# The whole table runs synchronously against llhttp and the request plan
# (tests.test_http_plan); these shapes, one of each kind, also run end to
# end over loopback.
LOOPBACK_SMUGGLING = (
    "contentLengthAndChunked", "transferEncodingChunkedNotLast", "badChunkSize",
    "bareLFInHead", "missingHost", "fragmentInTarget",
)


def _smugglingTest(raw: bytes, name: str) -> Any:
    def test(self: SmugglingTests) -> Any:
        return self.assertRefused(raw)

    test.__doc__ = f"The {name} smuggling shape is refused with 400, unforwarded: {raw[:60]!r}"
    return test


for _name in LOOPBACK_SMUGGLING:
    setattr(SmugglingTests, f"test_{_name}", _smugglingTest(SMUGGLING[_name], _name))


class ErrorResponseTests(HTTPProxyTestCase):
    """
    Backends that are down, slow, broken or dying give the client the
    right status, or a visibly truncated response.
    """

    @inlineCallbacks
    def test_noBackendUp(self) -> Any:
        """
        With every backend down the client gets a short 503.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        backend = proxy.pool.get("a")
        assert backend is not None
        proxy.pool.markDown(backend, "test", "test")
        results = yield httpRequests(proxy.testPort, [("GET", "/", None, {})])
        status, headers, body = results[0]
        self.assertEqual(status, 503)
        self.assertEqual(headers["content-type"], "text/plain; charset=utf-8")
        self.assertIn(b"no backend", body)
        self.assertEqual(a.raw, b"")

    @inlineCallbacks
    def test_allBackendsRefuse(self) -> Any:
        """
        A backend that refuses connections is tried once, counted as a
        refusal, and with no other backend left the client gets a 503.
        """
        a = self.startBackend("a")
        endpoint = a.endpoint
        yield a.port.stopListening()
        proxy = self.startProxy([{"name": "gone", "endpoint": endpoint}])
        results = yield httpRequests(proxy.testPort, [("GET", "/", None, {})])
        self.assertEqual(results[0][0], 503)
        self.assertEqual(proxy.pool.get("gone").failures.get("refused"), 1)  # type: ignore[union-attr]

    @inlineCallbacks
    def test_malformedResponse(self) -> Any:
        """
        A backend that sends a malformed response head gives a 502.
        """
        a = self.startBackend("a", lambda r, b, c: b"HTTP/1.1 2x0 Weird\r\n\r\n")
        proxy = self.startProxy([a])
        results = yield httpRequests(proxy.testPort, [("POST", "/", b"x", {})])
        self.assertEqual(results[0][0], 502)
        self.assertIn(b"Bad Gateway", results[0][2])

    @inlineCallbacks
    def test_closedBeforeResponse(self) -> Any:
        """
        A backend that closes before a complete response head gives a 502.
        """

        def respond(request: Any, backend: Any, conn: Any) -> None:
            conn.transport.write(b"HTTP/1.1 200 OK\r\nContent-")
            conn.transport.loseConnection()
            return None

        a = self.startBackend("a", respond)
        proxy = self.startProxy([a])
        results = yield httpRequests(proxy.testPort, [("POST", "/", b"x", {})])
        self.assertEqual(results[0][0], 502)

    @inlineCallbacks
    def test_responseTimeout(self) -> Any:
        """
        A backend that does not answer within the response timeout gives a
        504, and the client connection stays usable.
        """
        calls = []

        def respond(request: Any, backend: Any, conn: Any) -> bytes | None:
            calls.append(request.url)
            if request.url == b"/slow":
                return None
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

        a = self.startBackend("a", respond)
        proxy = self.startProxy([a], timeouts={"response": "300ms"})
        results = yield httpRequests(
            proxy.testPort, [("GET", "/slow", None, {}), ("GET", "/fast", None, {})]
        )
        self.assertEqual([r[0] for r in results], [504, 200])
        self.assertIn(b"did not answer in time", results[0][2])

    @inlineCallbacks
    def test_requestHeadTimeout(self) -> Any:
        """
        A client that does not finish its request head within the request
        timeout gets a 408 and is disconnected (slowloris).
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a], timeouts={"request": "300ms"})
        out = yield rawExchange(
            proxy.testPort, b"", chunks=[b"GET / HTTP/1.1\r\n", b"Host: a\r\n"], pause=0.1
        )
        self.assertTrue(out.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), out)
        self.assertFalse(out.endswith(TIMED_OUT))
        self.assertEqual(a.raw, b"")

    @inlineCallbacks
    def test_truncatedContentLength(self) -> Any:
        """
        A backend dying mid-body leaves the client a response shorter than
        its Content-Length, on a closed connection.
        """

        def respond(request: Any, backend: Any, conn: Any) -> None:
            conn.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            reactor.callLater(0.05, conn.transport.loseConnection)
            return None

        a = self.startBackend("a", respond)
        proxy = self.startProxy([a])
        out = yield rawExchange(proxy.testPort, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"))
        self.assertTrue(out.endswith(b"\r\n\r\n0123456789"), out)
        self.assertFalse(out.endswith(TIMED_OUT))

    @inlineCallbacks
    def test_truncatedChunked(self) -> Any:
        """
        A chunked response cut short by the backend never gets its final
        chunk: the client sees the truncation.
        """

        def respond(request: Any, backend: Any, conn: Any) -> None:
            conn.transport.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
            )
            reactor.callLater(0.05, conn.transport.loseConnection)
            return None

        a = self.startBackend("a", respond)
        proxy = self.startProxy([a])
        out = yield rawExchange(proxy.testPort, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertIn(b"5\r\nhello\r\n", out)
        self.assertNotIn(b"0\r\n\r\n", out)
        self.assertFalse(out.endswith(TIMED_OUT))


class RetryTests(HTTPProxyTestCase):
    """
    Requests are retried only when that cannot do harm.
    """

    @inlineCallbacks
    def test_connectFailureRetried(self) -> Any:
        """
        A request whose backend refuses the connection goes to another one,
        transparently, even a POST.
        """
        dead = self.startBackend("dead")
        endpoint = dead.endpoint
        yield dead.port.stopListening()
        b = self.startBackend("b")
        proxy = self.startProxy([{"name": "dead", "endpoint": endpoint}, b])
        results = yield httpRequests(proxy.testPort, [("POST", "/p", b"data", {})] * 2)
        self.assertEqual([r[0] for r in results], [200, 200])
        self.assertEqual([r.body for r in b.requests], [b"data", b"data"])

    @inlineCallbacks
    def test_postAtMostOnce(self) -> Any:
        """
        A POST whose backend resets the connection after receiving it is not
        sent again: the client gets a 502 and the backends saw it once.
        """

        def reset(request: Any, backend: Any, conn: Any) -> None:
            conn.transport.abortConnection()
            return None

        a = self.startBackend("a", reset)
        b = self.startBackend("b", reset)
        proxy = self.startProxy([a, b])
        results = yield httpRequests(proxy.testPort, [("POST", "/once", b"pay", {})])
        self.assertEqual(results[0][0], 502)
        self.assertEqual(len(a.requests) + len(b.requests), 1)

    @inlineCallbacks
    def test_getRetriedAfterReset(self) -> Any:
        """
        A GET whose backend resets before answering is sent to another
        backend, and the client gets that answer.
        """

        def reset(request: Any, backend: Any, conn: Any) -> None:
            conn.transport.abortConnection()
            return None

        a = self.startBackend("a", reset)
        b = self.startBackend("b")
        proxy = self.startProxy([a, b])
        results = yield httpRequests(proxy.testPort, [("GET", "/again", None, {})])
        self.assertEqual(results[0][0], 200)
        self.assertEqual(results[0][2], b"b /again\n")
        self.assertEqual(len(a.requests), 1)

    @inlineCallbacks
    def test_everyBackendFailsTheRequest(self) -> Any:
        """
        When every backend takes a GET and closes without answering, each is
        tried once (the first and the pool's two retries) and the client
        gets a 502: the backends are up but failing, which is not the 503 of
        an outage, and the access log counts two retries.
        """
        from twisted.logger import globalLogPublisher

        def hangUp(request: Any, backend: Any, conn: Any) -> None:
            conn.transport.loseConnection()
            return None

        backends = [self.startBackend(name, hangUp) for name in "abc"]
        proxy = self.startProxy(backends, **{"access-log": True})
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        results = yield httpRequests(proxy.testPort, [("GET", "/close", None, {})])
        self.assertEqual(results[0][0], 502)
        self.assertEqual([len(b.requests) for b in backends], [1, 1, 1])
        self.assertEqual(proxy.pool.noBackend, 0)
        [access] = [e for e in events if e.get("log_namespace") == "lbtwist.access"]
        self.assertEqual((access["status"], access["retries"]), (502, 2))

    @inlineCallbacks
    def test_stalePooledConnection(self) -> Any:
        """
        A pooled connection the backend closes as the next request is sent
        (its keep-alive race) costs the client nothing: the GET is sent on a
        new connection, with no 502.
        """
        served: dict[Any, int] = {}

        def respond(request: Any, backend: Any, conn: Any) -> bytes | None:
            served[conn] = served.get(conn, 0) + 1
            if served[conn] > 1:
                conn.transport.loseConnection()
                return None
            return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

        a = self.startBackend("a", respond)
        proxy = self.startProxy([a])
        results = yield httpRequests(proxy.testPort, [("GET", "/", None, {})] * 4)
        self.assertEqual([r[0] for r in results], [200] * 4)
        self.assertEqual(proxy.pool.get("a").failureCount, 0)  # type: ignore[union-attr]

    @inlineCallbacks
    def test_drainClosesInFlight(self) -> Any:
        """
        A request in flight registers a closer with its backend; closing
        them all (a drain's grace is over) sends a GET to another backend.
        """
        stuck = self.startBackend("stuck", lambda r, b, c: None)
        good = self.startBackend("good")
        proxy = self.startProxy([stuck, good])
        d = httpRequests(proxy.testPort, [("GET", "/d", None, {})])
        backend = proxy.pool.get("stuck")
        assert backend is not None
        from .httphelpers import waitFor

        yield waitFor(lambda: bool(backend.closers))
        self.assertEqual(backend.closeAll(), 1)
        results = yield d
        self.assertEqual(results[0][:1], (200,))
        self.assertEqual(results[0][2], b"good /d\n")
        self.assertEqual(backend.closers, set())


class BackpressureTests(HTTPProxyTestCase):
    """
    Over real sockets, a slow reader on either side stops the other side
    instead of filling the balancer's memory.
    """

    @inlineCallbacks
    def test_slowBackendStopsUpload(self) -> Any:
        """
        While a backend does not read, the balancer stops reading the
        client's upload, holding far less than was sent.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])

        def paused(request: Any, backend: Any, conn: Any) -> None:
            conn.transport.pauseProducing()

        a.onHead = paused
        size = 64 * 1024 * 1024
        d = rawExchange(
            proxy.testPort,
            b"",
            chunks=[b"PUT / HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % size]
            + [b"x" * (1024 * 1024)] * 64,
            timeout=2,
        )
        d.addErrback(lambda f: None)
        from .httphelpers import waitFor

        yield waitFor(lambda: bool(proxy.clients) and not next(iter(proxy.clients))._reading, 5)
        client = next(iter(proxy.clients))
        self.assertFalse(client._reading)
        conn = client.queue[0].conn
        buffered = len(conn.transport.dataBuffer) + sum(map(len, conn.transport._tempDataBuffer))
        self.assertLess(buffered, 8 * 1024 * 1024)
        self.assertLess(len(a.raw), 32 * 1024 * 1024)
        client.transport.abortConnection()
        yield d

    @inlineCallbacks
    def test_slowClientStopsDownload(self) -> Any:
        """
        While a client does not read, the balancer stops reading the
        backend's response.
        """
        size = 64 * 1024 * 1024
        sent = []

        def respond(request: Any, backend: Any, conn: Any) -> None:
            conn.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
            chunk = b"y" * (1024 * 1024)

            class Producer:
                def resumeProducing(self) -> None:
                    if len(sent) < 64:
                        sent.append(1)
                        conn.transport.write(chunk)

                def pauseProducing(self) -> None:
                    pass

                def stopProducing(self) -> None:
                    pass

            conn.transport.registerProducer(Producer(), False)
            return None

        a = self.startBackend("a", respond)
        proxy = self.startProxy([a])
        import socket

        sock = socket.create_connection(("127.0.0.1", proxy.testPort))
        self.addCleanup(sock.close)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n")
        from .httphelpers import waitFor

        def backendPaused() -> bool:
            # The client transport paused its producer, the backend side.
            clients = proxy.clients
            return bool(clients) and bool(next(iter(clients)).transport.producerPaused)

        yield waitFor(backendPaused, 5)
        client = next(iter(proxy.clients))
        self.assertTrue(client.transport.producerPaused)
        buffered = len(client.transport.dataBuffer) + sum(map(len, client.transport._tempDataBuffer))
        self.assertLess(buffered, 8 * 1024 * 1024)
        self.assertLess(len(sent), 40)
        sock.close()
        yield waitFor(lambda: proxy.activeClients == 0)


class LocalResponseTests(SynchronousTestCase):
    """
    L{localResponse} frames the answers the balancer makes itself.
    """

    def test_table(self) -> None:
        """
        The status line takes the standard reason; the length is the body's;
        a HEAD gets the length without the body; closing is announced.
        """
        cases = [
            ((404, [], b"no route\n", False, False),
             b"HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nno route\n"),
            ((308, [(b"Location", b"https://x/")], b"", False, True),
             b"HTTP/1.1 308 Permanent Redirect\r\nLocation: https://x/\r\n"
             b"Content-Length: 0\r\nConnection: close\r\n\r\n"),
            ((403, [(b"Content-Type", b"text/plain")], b"no\n", True, False),
             b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\n"),
            ((599, [], b"", False, False), b"HTTP/1.1 599 Unknown\r\nContent-Length: 0\r\n\r\n"),
        ]
        for args, expected in cases:
            self.assertEqual(localResponse(*args), expected)

    def test_noBodyStatuses(self) -> None:
        """
        A 204 or a 304 (a route's C{respond} may say either, with a body)
        goes out with neither body nor length: a client reads no body after
        them whatever the head says, so body bytes would be taken for the
        next response on the connection.
        """
        for status, reason in ((204, b"No Content"), (304, b"Not Modified")):
            self.assertEqual(
                localResponse(status, [(b"ETag", b'"x"')], b"body\n", False, False),
                b"HTTP/1.1 %d %s\r\nETag: \"x\"\r\n\r\n" % (status, reason))
