"""
HTTP/1.1 conformance where HAProxy's regression cases and hostile backends
found lbtwist weaker: each gap over loopback, with a raw-socket client and a
recording backend that keeps the exact bytes it receives.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread

from lbtwist.http._plan import websocketAccept

from .httphelpers import TIMED_OUT, HTTPProxyTestCase, rawExchange, waitFor

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def never(request: Any, backend: Any, conn: Any) -> None:
    """
    A backend that never answers.
    """


class AuthorityTests(HTTPProxyTestCase):
    """
    One authority for the client, the routes and the backend.
    """

    @inlineCallbacks
    def test_absoluteFormWins(self) -> Any:
        """
        An absolute-form target whose host disagrees with Host: the backend
        sees the target's authority as Host and as X-Forwarded-Host.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        out = yield rawExchange(
            proxy.testPort,
            b"GET http://hostname1/x HTTP/1.1\r\nHost: hostname2\r\nConnection: close\r\n\r\n",
        )
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out)
        [request] = a.requests
        self.assertEqual(request.header(b"host"), b"hostname1")
        self.assertEqual(request.header(b"x-forwarded-host"), b"hostname1")
        self.assertNotIn(b"hostname2", a.raw)

    @inlineCallbacks
    def test_http10WithoutHost(self) -> Any:
        """
        An HTTP/1.0 request without Host goes upstream as HTTP/1.1 with the
        Host of the address the client reached.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        out = yield rawExchange(proxy.testPort, b"GET /x HTTP/1.0\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out)
        self.assertTrue(a.raw.startswith(
            b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n" % proxy.testPort), a.raw)

    @inlineCallbacks
    def test_unknownMinorVersion(self) -> Any:
        """
        HTTP/1.2 is served as HTTP/1.1 (RFC 9110 2.5); HTTP/2.0 in an
        HTTP/1 request line gets a 505.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        out = yield rawExchange(
            proxy.testPort, b"GET / HTTP/1.2\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out)
        self.assertTrue(a.raw.startswith(b"GET / HTTP/1.1\r\n"), a.raw)
        out = yield rawExchange(proxy.testPort, b"GET / HTTP/2.0\r\nHost: a\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 505 "), out)
        self.assertEqual(len(a.requests), 1)


class MethodTests(HTTPProxyTestCase):
    """
    Methods llhttp does not know.
    """

    @inlineCallbacks
    def test_unknownMethod(self) -> Any:
        """
        A well-formed method llhttp does not know (an extension, or one in
        lower case: methods are case-sensitive) is a 501, not a malformed
        request; a request line that starts with no method at all is a
        400. Neither reaches a backend. Garbage after a complete request in
        the same read is a 400 too.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        cases = {b"FOO": b"501", b"get": b"501", b"GETX": b"501", b"G(T": b"400",
                 b" GET": b"400"}
        got = {}
        for method in cases:
            out = yield rawExchange(proxy.testPort, method + b" / HTTP/1.1\r\nHost: a\r\n\r\n")
            got[method] = out[9:12]
        self.assertEqual(got, cases)
        self.assertEqual(a.raw, b"")
        out = yield rawExchange(
            proxy.testPort, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out)
        self.assertIn(b"HTTP/1.1 400 ", out)


class ClientGoneTests(HTTPProxyTestCase):
    """
    A client that leaves holds no backend connection.
    """

    @inlineCallbacks
    def test_closedMidBody(self) -> Any:
        """
        A client that shuts its side in the middle of a request body: the
        backend connection is aborted at once, not after the idle timeout.
        """
        a = self.startBackend("a", never)
        proxy = self.startProxy([a])

        def run() -> None:
            with socket.create_connection(("127.0.0.1", proxy.testPort), timeout=5) as s:
                s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\nhalf")
                time.sleep(0.2)
                s.shutdown(socket.SHUT_WR)
                s.settimeout(2)
                s.recv(100)

        yield deferToThread(run)
        self.assertTrue((yield waitFor(lambda: a.open == 0, 1.0)), "backend connection held")
        self.assertEqual(a.raw.count(b"half"), 1)
        self.assertEqual(proxy.pool.get("a").slots, 0)  # type: ignore[union-attr]

    @inlineCallbacks
    def test_leftBeforeTheAnswer(self) -> Any:
        """
        A client that leaves before its (idempotent) request is answered:
        the backend connection is aborted at once, not after the response
        timeout.
        """
        a = self.startBackend("a", never)
        proxy = self.startProxy([a])

        def run() -> None:
            with socket.create_connection(("127.0.0.1", proxy.testPort), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                time.sleep(0.2)

        yield deferToThread(run)
        self.assertTrue((yield waitFor(lambda: a.open == 0, 1.0)), "backend connection held")
        self.assertEqual(proxy.pool.get("a").active, 0)  # type: ignore[union-attr]
        self.assertEqual(a.raw.count(b"GET / HTTP/1.1"), 1)

    @inlineCallbacks
    def test_abortOnCloseOff(self) -> Any:
        """
        With C{http.abort-on-close} off, an idempotent request whose client
        shut its side waits for its answer (and the backend connection is
        kept until then).
        """
        a = self.startBackend("a", never)
        proxy = self.startProxy([a], http={"abort-on-close": False})

        def run() -> None:
            with socket.create_connection(("127.0.0.1", proxy.testPort), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                s.shutdown(socket.SHUT_WR)
                time.sleep(0.3)

        yield deferToThread(run)
        self.assertEqual(a.open, 1)
        self.assertEqual(proxy.pool.get("a").active, 1)  # type: ignore[union-attr]

    @inlineCallbacks
    def test_halfClosedWholeRequest(self) -> Any:
        """
        A client that sends a whole POST and then shuts its side still gets
        the answer.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])

        def run() -> bytes:
            with socket.create_connection(("127.0.0.1", proxy.testPort), timeout=5) as s:
                s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx")
                s.shutdown(socket.SHUT_WR)
                out = b""
                while chunk := s.recv(1000):
                    out += chunk
                return out

        out = yield deferToThread(run)
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out)


class StalledBodyTests(HTTPProxyTestCase):
    """
    C{timeouts.request} bounds each stall of a request body.
    """

    @inlineCallbacks
    def test_stalledBody(self) -> Any:
        """
        A body that stops moving for the request timeout gets a 408, and its
        backend connection and slot are freed.
        """
        a = self.startBackend("a", never)
        proxy = self.startProxy([a], timeouts={"request": 0.5})
        started = time.monotonic()
        out = yield rawExchange(
            proxy.testPort,
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\nabc",
        )
        elapsed = time.monotonic() - started
        self.assertTrue(out.startswith(b"HTTP/1.1 408 "), out)
        self.assertFalse(out.endswith(TIMED_OUT))
        self.assertLess(elapsed, 3.0)
        self.assertTrue((yield waitFor(lambda: a.open == 0, 1.0)), "backend connection held")
        self.assertEqual(proxy.pool.get("a").slots, 0)  # type: ignore[union-attr]

    @inlineCallbacks
    def test_slowBodyIsFine(self) -> Any:
        """
        A body that keeps moving, however slowly, is not cut: the timeout
        bounds each stall, not the whole body.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a], timeouts={"request": 0.5})
        out = yield rawExchange(
            proxy.testPort, b"",
            chunks=[b"POST / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n"
                    b"Content-Length: 4\r\n\r\n", b"a", b"b", b"c", b"d"],
            pause=0.3,
        )
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out)
        self.assertEqual(a.requests[0].body, b"abcd")


class ResponseTests(HTTPProxyTestCase):
    """
    What a backend may not send on.
    """

    @inlineCallbacks
    def respondWith(self, raw: bytes, request: bytes = b"GET / HTTP/1.1\r\nHost: a\r\n"
                    b"Connection: close\r\n\r\n", **pool: Any) -> Any:
        """
        One request through a backend that answers C{raw}: what the client
        got.
        """
        a = self.startBackend("a", lambda r, b, c: raw)
        proxy = self.startProxy([a], **pool)
        out = yield rawExchange(proxy.testPort, request)
        return out

    @inlineCallbacks
    def test_transferEncodings(self) -> Any:
        """
        A response whose Transfer-Encoding is anything but one C{chunked}
        is a 502.
        """
        for te in (b"chunked, chunked", b"chunked, gzip, chunked", b"chunked, gzip", b"gzip"):
            out = yield self.respondWith(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: " + te + b"\r\n\r\n0\r\n\r\n")
            self.assertTrue(out.startswith(b"HTTP/1.1 502 "), (te, out))

    @inlineCallbacks
    def test_headTooLarge(self) -> Any:
        """
        A response head over C{http.max-response-header-size} is a 502, and
        an endless one is not read on.
        """
        big = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70000 + b"\r\nContent-Length: 0\r\n\r\n"
        out = yield self.respondWith(big)
        self.assertTrue(out.startswith(b"HTTP/1.1 502 "), out)
        out = yield self.respondWith(
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 3000 + b"\r\nContent-Length: 0\r\n\r\n",
            http={"max-response-header-size": 1024})
        self.assertTrue(out.startswith(b"HTTP/1.1 502 "), out)
        out = yield self.respondWith(
            b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 3000 + b"\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out)

    @inlineCallbacks
    def test_endlessHead(self) -> Any:
        """
        A backend that sends an unterminated head for ever is cut off near
        the limit: the client gets a 502, the backend's connection is
        closed, and little of it was read.
        """
        sent = []

        def flood(request: Any, backend: Any, conn: Any) -> None:
            conn.transport.write(b"HTTP/1.1 200 OK\r\nX-Flood: ")
            for _ in range(64):
                conn.transport.write(b"a" * 65536)
            sent.append(True)

        a = self.startBackend("a", flood)
        proxy = self.startProxy([a])
        out = yield rawExchange(proxy.testPort, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 502 "), out)
        self.assertTrue((yield waitFor(lambda: a.open == 0, 2.0)))
        self.assertEqual(proxy.pool.get("a").failures.get("response"), 1)  # type: ignore[union-attr]

    @inlineCallbacks
    def test_204WithoutLength(self) -> Any:
        """
        A 204 goes to the client without its Content-Length.
        """
        out = yield self.respondWith(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        self.assertTrue(out.startswith(b"HTTP/1.1 204 "), out)
        self.assertNotIn(b"Content-Length", out)


class WebSocketTests(HTTPProxyTestCase):
    """
    WebSocket handshakes are checked both ways.
    """

    @inlineCallbacks
    def test_requestWithoutKey(self) -> Any:
        """
        An upgrade to WebSocket without its key or version 13 is a 400 and
        reaches no backend.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        for headers in (b"Sec-WebSocket-Version: 13\r\n",
                        b"Sec-WebSocket-Key: " + KEY + b"\r\n",
                        b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 8\r\n"):
            out = yield rawExchange(
                proxy.testPort,
                b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                + headers + b"\r\n")
            self.assertTrue(out.startswith(b"HTTP/1.1 400 "), (headers, out))
        self.assertEqual(a.raw, b"")

    @inlineCallbacks
    def test_switchWithoutAccept(self) -> Any:
        """
        A backend's 101 without the right Sec-WebSocket-Accept is a 502,
        not a tunnel; with it, the tunnel works.
        """
        def respond(accept: bytes | None) -> Any:
            def answer(request: Any, backend: Any, conn: Any) -> bytes:
                conn.tunnel = True
                line = b"Sec-WebSocket-Accept: " + accept + b"\r\n" if accept else b""
                return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                        b"Connection: Upgrade\r\n" + line + b"\r\n")
            return answer

        request = (b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
                   b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
        for accept, status in ((None, b"502"), (b"wrong", b"502"), (websocketAccept(KEY), b"101")):
            a = self.startBackend("a", respond(accept))
            proxy = self.startProxy([a])
            out = yield rawExchange(proxy.testPort, request, timeout=1.0)
            self.assertTrue(out.startswith(b"HTTP/1.1 " + status + b" "), (accept, out))


class DeclinedUpgradeTests(HTTPProxyTestCase):
    """
    What a client sends after an upgrade request's head reaches the backend
    only once the backend has switched protocols: until then it is HTTP,
    which the balancer has not parsed, so a backend that declines the
    upgrade must never read it as requests of its own.
    """

    SMUGGLED = (b"GET /admin HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n")

    @inlineCallbacks
    def test_pipelinedAfterDeclinedUpgrade(self) -> Any:
        """
        A request pipelined behind an upgrade request the backend declines
        (it answers 200) never reaches the backend unparsed: no request
        smuggled past the balancer's checks, X-Forwarded-For and routes.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        out = yield rawExchange(
            proxy.testPort,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\n"
            + self.SMUGGLED, timeout=2.0)
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out)
        self.assertNotIn(b"/admin", a.raw)

    @inlineCallbacks
    def test_upgradeBodyOnly(self) -> Any:
        """
        An upgrade request with a Content-Length body: the body reaches the
        backend, and what follows it does not while the upgrade is
        declined.
        """
        a = self.startBackend("a")
        proxy = self.startProxy([a])
        out = yield rawExchange(
            proxy.testPort,
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n"
            b"Content-Length: 5\r\n\r\nhello" + self.SMUGGLED, timeout=2.0)
        self.assertTrue(out.startswith(b"HTTP/1.1 200 "), out)
        self.assertTrue(a.raw.endswith(b"\r\n\r\nhello"), a.raw)

    @inlineCallbacks
    def test_earlyBytesAfterSwitch(self) -> Any:
        """
        Bytes a client sends with the upgrade request's head are relayed
        once the backend has switched protocols.
        """
        def switch(request: Any, backend: Any, conn: Any) -> bytes:
            conn.tunnel = True
            return b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n"

        a = self.startBackend("a", switch)
        proxy = self.startProxy([a])
        out = yield rawExchange(
            proxy.testPort,
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: foo\r\n\r\nearly",
            timeout=1.0)
        self.assertTrue(out.startswith(b"HTTP/1.1 101 "), out)
        self.assertIn(b"echo:early", out)


class WholeHeadTests(HTTPProxyTestCase):
    """
    Over loopback: a usual request head that is all of a read goes to the
    backend as the client sent it; one with a body, as fields.
    """

    @inlineCallbacks
    def test_asSent(self) -> Any:
        """
        A raw client's usual head reaches the backend as sent (spacing and
        spelling, without its Connection), with the X-Forwarded fields
        after it; curl's too.
        """
        a = self.startBackend("a", lambda r, b, c: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        proxy = self.startProxy([a])
        head = b"GET /1?x=%20 HTTP/1.1\r\nhost:a:81\r\nConnection: keep-alive\r\nX-B:  b \r\n"
        out = yield rawExchange(proxy.testPort, head + b"\r\n", timeout=0.5)
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        forwarded = (b"X-Forwarded-For: 127.0.0.1\r\nX-Forwarded-Proto: http\r\n"
                     b"X-Forwarded-Host: a:81\r\n\r\n")
        self.assertEqual(a.raw, head.replace(b"Connection: keep-alive\r\n", b"") + forwarded)
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        a.raw = b""
        yield deferToThread(
            subprocess.run, ["curl", "-s", "--max-time", "5", "-o", "/dev/null", "-H",
                             "X-C:  c ", f"http://127.0.0.1:{proxy.testPort}/2"],
            capture_output=True)
        self.assertIn(b"\r\nX-C:  c \r\nX-Forwarded-For: 127.0.0.1\r\n", a.raw)

    @inlineCallbacks
    def test_withBody(self) -> Any:
        """
        A head with a body, in one read, goes to the backend as fields, the
        body after it.
        """
        a = self.startBackend("a", lambda r, b, c: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        proxy = self.startProxy([a])
        out = yield rawExchange(
            proxy.testPort,
            b"POST / HTTP/1.1\r\nhost:a\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        self.assertTrue(out.startswith(b"HTTP/1.1 200 OK\r\n"), out)
        self.assertTrue(a.raw.startswith(b"POST / HTTP/1.1\r\nhost: a\r\nContent-Length: 2\r\n"),
                        a.raw)
        self.assertTrue(a.raw.endswith(b"\r\n\r\nhi"), a.raw)


class HeadAsBytesTests(HTTPProxyTestCase):
    """
    Over loopback: a usual response head read whole goes on to the client
    as the backend sent it; a chunked one goes on from its fields, with its
    trailers.
    """

    head = b"HTTP/1.1 200 OK\r\nx-a:1\r\nContent-Length: 2\r\nX-B:  b \r\n"

    @inlineCallbacks
    def test_asSent(self) -> Any:
        """
        A raw client's two requests on one connection get the backend's
        heads as sent (spacing and spelling), the last with the client's
        own Connection added; curl reads the same fields.
        """
        a = self.startBackend("a", lambda r, b, c: self.head + b"\r\nok")
        proxy = self.startProxy([a])
        out = yield rawExchange(
            proxy.testPort, b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\n"
            b"GET /2 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.assertEqual(out, self.head + b"\r\nok" + self.head + b"Connection: close\r\n\r\nok")
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        done = yield deferToThread(
            subprocess.run, ["curl", "-s", "--max-time", "5", "-D", "-", "-o", "/dev/null",
                             f"http://127.0.0.1:{proxy.testPort}/3"],
            capture_output=True)
        self.assertEqual(done.stdout, self.head + b"\r\n")

    @inlineCallbacks
    def test_chunkedWithTrailers(self) -> Any:
        """
        A chunked response head goes on from its fields, and its trailers
        reach a client that asked for them.
        """
        a = self.startBackend("a", lambda r, b, c: (
            b"HTTP/1.1 200 OK\r\nx-a:1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Sum: 9\r\n\r\n"))
        proxy = self.startProxy([a])
        out = yield rawExchange(
            proxy.testPort,
            b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\nConnection: close\r\n\r\n")
        self.assertEqual(out, b"HTTP/1.1 200 OK\r\nx-a: 1\r\nTransfer-Encoding: chunked\r\n"
                              b"Connection: close\r\n\r\n2\r\nok\r\n0\r\nx-sum: 9\r\n\r\n")
