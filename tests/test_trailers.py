"""
Trailers through the exchange: a backend's HTTP/1.1 chunked trailers reach
an HTTP/1.1 client that asked for them (C{TE: trailers}) and an HTTP/2
client (a HEADERS frame ending the stream); a client's request trailers
(HTTP/2, or an HTTP/1.1 chunked body's) reach an HTTP/1.1 backend as
chunked trailers and an HTTP/2 backend as a HEADERS frame ending the
stream.  Trailers are checked as headers are, and bounded by the same
size limits.
"""

from __future__ import annotations

import socket
import time
from typing import Any

import h2.errors
import h2.events
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.http._plan import BadTrailer, TrailerSection, trailerBlock, trailerFields

from .httphelpers import (
    TIMED_OUT,
    BackendRequest,
    HTTPProxyTestCase,
    RecordingBackend,
    rawExchange,
    waitFor,
)
from .support import inThread
from .test_h2 import H2Client, H2TestCase
from .test_h2_backend import H2ServerCase, echo

TRAILED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n"
    b"5\r\nhello\r\n0\r\ngrpc-status: 5\r\nGrpc-Message: not found\r\n"
    b"Connection: close\r\nContent-Type: text/plain\r\n\r\n"
)


def trailedResponse(request: BackendRequest, backend: RecordingBackend, protocol: Any) -> bytes:
    """
    A chunked answer with trailers (and two fields no trailer may carry).
    """
    return TRAILED


class TrailerFieldsTests(SynchronousTestCase):
    """
    L{trailerFields} keeps what a trailer section may relay.
    """

    def test_filtered(self) -> None:
        """
        Names are lowercased; pseudo-fields, hop-by-hop and framing fields
        are dropped.
        """
        self.assertEqual(
            trailerFields([(b"Grpc-Status", b"0"), (b":status", b"200"), (b"connection", b"x"),
                           (b"content-length", b"3"), (b"te", b"trailers"), (b"x-sum", b"1")]),
            [(b"grpc-status", b"0"), (b"x-sum", b"1")])

    def test_headOnlyFields(self) -> None:
        """
        Fields RFC 9110 6.5.1 keeps out of trailers (framing, routing,
        request modifiers, authentication, content and response control)
        are dropped, whatever their case.
        """
        fields = [(name, b"1") for name in (
            b"Content-Length", b"Transfer-Encoding", b"Host", b"Content-Type",
            b"Content-Encoding", b"Content-Range", b"Trailer", b"Expect", b"Range",
            b"If-Match", b"Authorization", b"Set-Cookie", b"Cache-Control", b"Location",
            b"Proxy-Authorization", b"Upgrade")]
        self.assertEqual(trailerFields([*fields, (b"X-Sum", b"7")]), [(b"x-sum", b"7")])

    def test_badValue(self) -> None:
        """
        A value holding CR, LF or NUL is refused, as in a head: written into
        an HTTP/1.1 trailer section it would end it early.
        """
        for value in (b"a\r\nContent-Length: 0", b"a\nb", b"a\rb", b"a\x00b"):
            self.assertRaises(BadTrailer, trailerFields, [(b"x-sum", value)])

    def test_badName(self) -> None:
        """
        A name that is not a token is refused.
        """
        for name in (b"x sum", b"x:sum", b"x\r\nsum", b"", b"x\x00"):
            self.assertRaises(BadTrailer, trailerFields, [(name, b"1")])

    def test_block(self) -> None:
        """
        The HTTP/1.1 trailer section ends with its empty line.
        """
        self.assertEqual(trailerBlock([(b"a", b"1"), (b"b", b"2")]), b"a: 1\r\nb: 2\r\n\r\n")
        self.assertEqual(trailerBlock([]), b"\r\n")


class TrailerSectionTests(SynchronousTestCase):
    """
    L{TrailerSection} counts the bytes read after the last chunk header, as
    long as no body bytes came after it, and tells the last chunk.
    """

    def test_trailersCounted(self) -> None:
        """
        The read that parsed the last chunk header is not counted; the
        reads after it are, until the limit is passed.
        """
        section = TrailerSection()
        section.chunkHeader(10)
        self.assertFalse(section.overAfter(60000, 10, 100))
        self.assertFalse(section.overAfter(60, 10, 100))
        self.assertFalse(section.overAfter(40, 10, 100))
        self.assertTrue(section.overAfter(1, 10, 100))

    def test_bodyNotCounted(self) -> None:
        """
        Reads that carried body bytes after the chunk header are a chunk's
        data, not trailers, however large.
        """
        section = TrailerSection()
        section.chunkHeader(0)
        self.assertFalse(section.overAfter(5, 0, 100))
        for relayed in (65536, 131072, 196608):
            self.assertFalse(section.overAfter(65536, relayed, 100))

    def test_chunkEnded(self) -> None:
        """
        A chunk that relayed body bytes is not the last; the one that did
        not is, and the section is the list of the trailer fields.
        """
        section = TrailerSection()
        section.chunkHeader(0)
        self.assertFalse(section.chunkEnded(5))
        section.chunkHeader(5)
        section.append((b"t", b"3"))
        self.assertTrue(section.chunkEnded(5))
        self.assertEqual(section, [(b"t", b"3")])


def chunkedRequest(trailers: bytes) -> bytes:
    """
    A chunked POST of C{hello} whose trailer section is C{trailers}.
    """
    return (b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            b"Connection: close\r\n\r\n5\r\nhello\r\n0\r\n" + trailers + b"\r\n")


def sendUntilClosed(port: int, pieces: list[bytes]) -> bytes:
    """
    Send C{pieces} to 127.0.0.1:C{port} (a few milliseconds apart, so that
    each is a read of its own) until the peer stops taking them; return
    what it answered.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            for piece in pieces:
                s.sendall(piece)
                time.sleep(0.002)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        try:
            while got := s.recv(65536):
                out += got
        except ConnectionResetError:
            pass
        return out


class RequestTrailerTests(HTTPProxyTestCase):
    """
    An HTTP/1.1 client's chunked request trailers reach an HTTP/1.1
    backend as the chunked trailer section, checked and bounded.
    """

    @inlineCallbacks
    def test_forwarded(self) -> Any:
        """
        The trailers follow the last chunk, filtered, and the section ends
        with exactly one empty line (nothing after it that the backend
        could read as the start of another request).
        """
        backend = self.startBackend("b")
        factory = self.startProxy([backend])
        out = yield rawExchange(factory.testPort, chunkedRequest(
            b"X-Checksum: abc\r\nHost: evil\r\nAuthorization: x\r\nTE: trailers\r\n"))
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out)
        self.assertTrue(backend.raw.endswith(b"5\r\nhello\r\n0\r\nx-checksum: abc\r\n\r\n"),
                        backend.raw)
        request = backend.requests[0]
        self.assertEqual(request.body, b"hello")
        self.assertEqual(request.header(b"x-checksum"), b"abc")
        self.assertEqual(request.header(b"host"), b"x")

    @inlineCallbacks
    def test_tooLarge(self) -> Any:
        """
        Trailers over C{max-header-size} (counted with the head) are
        refused with 431, and the backend never sees the request complete.
        """
        backend = self.startBackend("b")
        factory = self.startProxy([backend])
        factory.maxHeaderSize = 2048
        big = b"".join(b"X-T%d: %s\r\n" % (i, b"v" * 100) for i in range(30))
        out = yield rawExchange(factory.testPort, chunkedRequest(big))
        self.assertTrue(out.startswith(b"HTTP/1.1 431"), out)
        self.assertEqual(backend.requests, [])

    @inlineCallbacks
    def test_endlessLine(self) -> Any:
        """
        One trailer line that never ends (llhttp would keep it whole) is
        cut off at the limit and a read: 431, not memory without bound.
        """
        backend = self.startBackend("b")
        factory = self.startProxy([backend])
        factory.maxHeaderSize = 4096
        head = chunkedRequest(b"")[:-2] + b"X-Endless: "
        out = yield inThread(lambda: sendUntilClosed(factory.testPort, [head] + [b"v" * 8192] * 200))
        self.assertTrue(out.startswith(b"HTTP/1.1 431"), out)
        self.assertEqual(backend.requests, [])

    @inlineCallbacks
    def test_largeChunksNotTrailers(self) -> Any:
        """
        A chunked body far larger than the header limit, sent in many
        reads, is a body, not trailers: it passes whole.
        """
        backend = self.startBackend("b")
        factory = self.startProxy([backend])
        factory.maxHeaderSize = 1024
        size = 256 * 1024
        chunks = [b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                  b"Connection: close\r\n\r\n%x\r\n" % size]
        chunks += [b"y" * 16384] * (size // 16384)
        chunks += [b"\r\n0\r\nx-sum: 1\r\n\r\n"]
        out = yield rawExchange(factory.testPort, b"", chunks=chunks, pause=0.001)
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out[:200])
        self.assertEqual(len(backend.requests[0].body), size)
        self.assertEqual(backend.requests[0].header(b"x-sum"), b"1")


def endlessTrailers(request: BackendRequest, backend: RecordingBackend, protocol: Any) -> None:
    """
    A chunked answer whose one trailer line never ends.
    """
    protocol.transport.write(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-e: ")
    for _ in range(64):
        protocol.transport.write(b"v" * 4096)


def oversizedTrailers(request: BackendRequest, backend: RecordingBackend, protocol: Any) -> bytes:
    """
    A chunked answer whose trailers come whole but over the response head
    limit, and a small valid one.
    """
    return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n"
            + b"".join(b"x-t%d: %s\r\n" % (i, b"v" * 100) for i in range(20)) + b"\r\n")


class ResponseTrailerBoundTests(HTTPProxyTestCase):
    """
    A backend's response trailers are bounded by the response head limit.
    """

    @inlineCallbacks
    def test_endlessLine(self) -> Any:
        """
        A trailer line that never ends cuts the response (the client sees
        it truncated: no last chunk) rather than filling memory.
        """
        backend = self.startBackend("b", endlessTrailers)
        factory = self.startProxy([backend])
        factory.upstream.maxResponseHeaderSize = 8192
        out = yield rawExchange(factory.testPort, (
            b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n"))
        self.assertIn(b"hello", out)
        self.assertNotIn(b"0\r\n", out.partition(b"hello")[2])
        self.assertNotIn(TIMED_OUT, out)

    @inlineCallbacks
    def test_oversizedDropped(self) -> Any:
        """
        Trailers read whole but over the limit are dropped; the body ends
        cleanly.
        """
        backend = self.startBackend("b", oversizedTrailers)
        factory = self.startProxy([backend])
        factory.upstream.maxResponseHeaderSize = 1024
        out = yield rawExchange(factory.testPort, (
            b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n"))
        self.assertTrue(out.endswith(b"5\r\nhello\r\n0\r\n\r\n"), out)


class TrailerTests(HTTPProxyTestCase):
    """
    Trailers cross the balancer both ways, filtered.
    """

    @inlineCallbacks
    def test_http11WithTE(self) -> Any:
        """
        An HTTP/1.1 client that sent C{TE: trailers} gets the backend's
        trailers after the last chunk, without the ones no trailer may
        carry.
        """
        factory = self.startProxy([self.startBackend("b", trailedResponse)])
        out = yield rawExchange(factory.testPort, (
            b"GET / HTTP/1.1\r\nHost: x\r\nTE: trailers\r\nConnection: close\r\n\r\n"))
        self.assertTrue(
            out.endswith(b"\r\n5\r\nhello\r\n0\r\ngrpc-status: 5\r\ngrpc-message: not found\r\n\r\n"),
            out)

    @inlineCallbacks
    def test_http11WithoutTE(self) -> Any:
        """
        A client that did not ask for trailers gets the body ended by the
        last chunk alone.
        """
        factory = self.startProxy([self.startBackend("b", trailedResponse)])
        out = yield rawExchange(factory.testPort, (
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        self.assertTrue(out.endswith(b"\r\n5\r\nhello\r\n0\r\n\r\n"), out)
        self.assertNotIn(b"grpc-status", out)


class H2TrailerTests(H2TestCase):
    """
    Trailers cross between an HTTP/2 client and an HTTP/1.1 backend.
    """

    @inlineCallbacks
    def test_h2Response(self) -> Any:
        """
        An HTTP/2 client gets the trailers as a HEADERS frame that ends the
        stream, after the DATA.
        """
        _, port = self.balancer(self.backend(trailedResponse))

        def run() -> list[Any]:
            client = H2Client(port)
            try:
                client.request(1, "/t", extra=[(b"te", b"trailers")])
                return client.read(lambda es: any(
                    isinstance(e, h2.events.StreamEnded) for e in es))
            finally:
                client.close()

        events = yield inThread(run)
        trailers = [e for e in events if isinstance(e, h2.events.TrailersReceived)]
        self.assertEqual(len(trailers), 1, events)
        self.assertEqual(trailers[0].headers,
                         [(b"grpc-status", b"5"), (b"grpc-message", b"not found")])
        self.assertIsNotNone(trailers[0].stream_ended)
        data = b"".join(e.data for e in events if isinstance(e, h2.events.DataReceived))
        self.assertEqual(data, b"hello")

    @inlineCallbacks
    def test_h2AsksForTrailers(self) -> Any:
        """
        An HTTP/2 client's C{te: trailers} reaches an HTTP/1.1 backend as
        C{TE: trailers} (with C{Connection: TE}, RFC 9110 10.1.4), so that
        a backend that sends trailers only when asked sends them, and they
        reach the client; a client that does not ask asks nothing of the
        backend.
        """
        def askedOnly(request: BackendRequest, backend: RecordingBackend,
                      protocol: Any) -> bytes:
            if request.header(b"te") == b"trailers":
                return TRAILED
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"

        backend = self.backend(askedOnly)
        _, port = self.balancer(backend)

        def run(extra: list[tuple[bytes, bytes]]) -> list[Any]:
            client = H2Client(port)
            try:
                client.request(1, "/t", extra=extra)
                return client.read(lambda es: any(
                    isinstance(e, h2.events.StreamEnded) for e in es))
            finally:
                client.close()

        events = yield inThread(run, [(b"te", b"trailers")])
        [asked] = backend.requests
        self.assertEqual(asked.header(b"te"), b"trailers")
        self.assertEqual(asked.header(b"connection"), b"TE")
        trailers = [e.headers for e in events if isinstance(e, h2.events.TrailersReceived)]
        self.assertEqual(trailers, [[(b"grpc-status", b"5"), (b"grpc-message", b"not found")]])
        events = yield inThread(run, [])
        self.assertEqual([(r.header(b"te"), r.header(b"connection")) for r in backend.requests],
                         [(b"trailers", b"TE"), (None, None)])
        self.assertFalse([e for e in events if isinstance(e, h2.events.TrailersReceived)])

    @inlineCallbacks
    def test_h2Request(self) -> Any:
        """
        An HTTP/2 client's request trailers reach an HTTP/1.1 backend as the
        chunked body's trailer section (filtered: a content field is no
        trailer; a connection-specific one would make the request
        malformed, see C{test_h2_conformance}).
        """
        backend = self.backend()
        _, port = self.balancer(backend)

        def run() -> None:
            client = H2Client(port)
            try:
                client.request(1, "/up", method="POST", end=False)
                client.conn.send_data(1, b"body")
                client.conn.send_headers(1, [(b"x-checksum", b"abc"), (b"content-type", b"x")],
                                         end_stream=True)
                client.flush()
                client.read(lambda es: any(isinstance(e, h2.events.StreamEnded) for e in es))
            finally:
                client.close()

        yield inThread(run)
        yield waitFor(lambda: b"0\r\n" in backend.raw)
        self.assertIn(b"4\r\nbody\r\n0\r\nx-checksum: abc\r\n\r\n", backend.raw)


class H2BadTrailerTests(H2TestCase):
    """
    An HTTP/2 client's trailers are checked as its headers are.
    """

    @inlineCallbacks
    def test_crlfInTrailer(self) -> Any:
        """
        A trailer value with CR LF (what would smuggle a field, or a
        request, into the HTTP/1.1 trailer section) makes the request
        malformed: its stream is reset, and the backend never sees the
        request complete.
        """
        backend = self.backend()
        _, port = self.balancer(backend)

        def run() -> list[Any]:
            client = H2Client(port)
            try:
                client.request(1, "/up", method="POST", end=False)
                client.conn.send_data(1, b"body")
                client.conn.send_headers(
                    1, [(b"x-checksum", b"abc\r\n\r\nGET /admin HTTP/1.1")], end_stream=True)
                client.flush()
                return client.read(lambda es: any(
                    isinstance(e, (h2.events.StreamReset, h2.events.StreamEnded)) for e in es))
            finally:
                client.close()

        events = yield inThread(run)
        resets = [e for e in events if isinstance(e, h2.events.StreamReset)]
        self.assertEqual([e.error_code for e in resets], [h2.errors.ErrorCodes.PROTOCOL_ERROR])
        self.assertNotIn(b"/admin", backend.raw)
        self.assertEqual(backend.requests, [])


class H2BackendTrailerTests(H2ServerCase):
    """
    Request trailers of an HTTP/1.1 client reach an HTTP/2 backend.
    """

    @inlineCallbacks
    def test_http11ToH2(self) -> Any:
        """
        A chunked HTTP/1.1 request's trailers end the backend stream as a
        HEADERS frame (filtered); the body is the DATA before it.
        """
        from .support import startBalancer

        server = self.server(echo)
        _, port = startBalancer(self, {
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1", "mode": "http"}],
            "pools": {"web": {"protocol": "h2", "health": {"fall": 100},
                              "backends": [{"name": "s", "endpoint": server.endpoint}]}},
        })
        out = yield rawExchange(port, chunkedRequest(b"X-Checksum: abc\r\nContent-Type: x\r\n"))
        self.assertTrue(out.startswith(b"HTTP/1.1 200"), out)
        self.assertIn(b"/up hello", out)
        self.assertEqual(server.trailers, [[(b"x-checksum", b"abc")]])
