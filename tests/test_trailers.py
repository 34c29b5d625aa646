"""
Trailers through the exchange: a backend's HTTP/1.1 chunked trailers reach
an HTTP/1.1 client that asked for them (C{TE: trailers}) and an HTTP/2
client (a HEADERS frame ending the stream); an HTTP/2 client's request
trailers reach an HTTP/1.1 backend as chunked trailers.
"""

from __future__ import annotations

from typing import Any

import h2.events
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.http._plan import trailerBlock, trailerFields

from .httphelpers import BackendRequest, HTTPProxyTestCase, RecordingBackend, rawExchange, waitFor
from .support import inThread
from .test_h2 import H2Client, H2TestCase

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

    def test_block(self) -> None:
        """
        The HTTP/1.1 trailer section ends with its empty line.
        """
        self.assertEqual(trailerBlock([(b"a", b"1"), (b"b", b"2")]), b"a: 1\r\nb: 2\r\n\r\n")
        self.assertEqual(trailerBlock([]), b"\r\n")


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
    def test_h2Request(self) -> Any:
        """
        An HTTP/2 client's request trailers reach an HTTP/1.1 backend as the
        chunked body's trailer section (filtered).
        """
        backend = self.backend()
        _, port = self.balancer(backend)

        def run() -> None:
            client = H2Client(port)
            try:
                client.request(1, "/up", method="POST", end=False)
                client.conn.send_data(1, b"body")
                client.conn.send_headers(1, [(b"x-checksum", b"abc"), (b"connection", b"x")],
                                         end_stream=True)
                client.flush()
                client.read(lambda es: any(isinstance(e, h2.events.StreamEnded) for e in es))
            finally:
                client.close()

        yield inThread(run)
        yield waitFor(lambda: b"0\r\n" in backend.raw)
        self.assertIn(b"4\r\nbody\r\n0\r\nx-checksum: abc\r\n\r\n", backend.raw)
