"""
HTTP/2 conformance of the client side (L{lbtwist.http._h2}) case by case
against RFC 9113, where the h2 library leaves the rule to lbtwist: what
the HTTP/1.1 request line and Host built from the pseudo-header fields may
hold, the fields a request's trailers may carry, and the error codes of
frames h2 refuses.  Each case was also run against HAProxy 2.6 (its answer
is in the docstrings).
"""

from __future__ import annotations

from typing import Any

import h2.events
from h2.errors import ErrorCodes
from hpack import Encoder
from hyperframe.frame import GoAwayFrame, RstStreamFrame
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.http._errors import BadRequest
from lbtwist.http._h2 import MalformedRequest, requestHead, responseFields

from .httphelpers import waitFor
from .support import inThread
from .test_h2 import H2Client, resets
from .test_h2 import H2TestCase as LoopbackTestCase
from .test_h2_unit import GET, Client, H2TestCase, ProtocolTransport, frames, h2Factory
from .test_http_unit import CLIENT


def frame(kind: int, flags: int, sid: int, payload: bytes) -> bytes:
    """
    A frame as bytes, whatever its fields say (hyperframe would refuse to
    build some of them).
    """
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + sid.to_bytes(4, "big") + payload


def answer(client: Client, data: bytes) -> tuple[str, int] | None:
    """
    Send C{data} after the client's preface and SETTINGS: C{("GOAWAY",
    code)} or C{("RST_STREAM", code)}, whichever the server answers with
    first, if either.
    """
    client.transport.clear()
    client.server.dataReceived(data)
    for f in frames(client.transport.value()):
        if isinstance(f, GoAwayFrame):
            return ("GOAWAY", int(f.error_code))
        if isinstance(f, RstStreamFrame):
            return ("RST_STREAM", int(f.error_code))
    return None


def request(sid: int, end: bool = True, flags: int = 0x4, prefix: bytes = b"") -> bytes:
    """
    A HEADERS frame of a GET on C{sid} (a fresh HPACK context: the first
    header block the connection reads).
    """
    block = Encoder().encode([(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                              (b":authority", b"a.example")])
    return frame(0x1, flags | (0x1 if end else 0), sid, prefix + block)


# The frame-layer cases of RFC 9113 the h2 library enforces, with the
# answer HAProxy 2.6 gives too (where it differs, in the comment).
H2_ENFORCED: list[tuple[str, bytes, tuple[str, int]]] = [
    ("6.5.2 INITIAL_WINDOW_SIZE over 2^31-1", frame(0x4, 0, 0, b"\x00\x04\x80\x00\x00\x00"),
     ("GOAWAY", ErrorCodes.FLOW_CONTROL_ERROR)),
    ("6.5.2 MAX_FRAME_SIZE under 2^14", frame(0x4, 0, 0, b"\x00\x05\x00\x00\x3f\xff"),
     ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("6.5.2 MAX_FRAME_SIZE over 2^24-1", frame(0x4, 0, 0, b"\x00\x05\x01\x00\x00\x00"),
     ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("6.5.2 ENABLE_PUSH 2", frame(0x4, 0, 0, b"\x00\x02\x00\x00\x00\x02"),
     ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("6.5 SETTINGS on a stream", frame(0x4, 0, 1, b""), ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("6.5 SETTINGS length not a multiple of 6", frame(0x4, 0, 0, b"\x00\x01\x00"),
     ("GOAWAY", ErrorCodes.FRAME_SIZE_ERROR)),
    ("6.2 HEADERS on stream 0", request(0), ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("6.1 DATA on stream 0", frame(0x0, 1, 0, b"x"), ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("6.4 RST_STREAM on stream 0", frame(0x3, 0, 0, b"\x00\x00\x00\x08"),
     ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("6.7 PING on a stream", frame(0x6, 0, 1, b"\x00" * 8), ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("6.8 GOAWAY on a stream", frame(0x7, 0, 1, b"\x00" * 8), ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("5.1.1 even stream id from a client", request(2), ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    # (HAProxy: STREAM_CLOSED.)
    ("5.1.1 stream id lower than one used", request(5) + request(3),
     ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("5.1 DATA on an idle stream", frame(0x0, 1, 1, b"x"), ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("5.1 RST_STREAM on an idle stream", frame(0x3, 0, 1, b"\x00\x00\x00\x08"),
     ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("5.1 WINDOW_UPDATE on an idle stream", frame(0x8, 0, 1, b"\x00\x00\x00\x01"),
     ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("6.10 CONTINUATION without HEADERS", frame(0x9, 0x4, 1, b"\x82"),
     ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("6.10 another frame inside a header block",
     request(1, flags=0) + frame(0x0, 1, 1, b"x"), ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("4.2 DATA over SETTINGS_MAX_FRAME_SIZE",
     request(1, end=False) + frame(0x0, 0, 1, b"x" * 16385), ("GOAWAY", ErrorCodes.FRAME_SIZE_ERROR)),
    ("6.1 padding longer than the payload",
     request(1, end=False) + frame(0x0, 0x9, 1, b"\x05abc"), ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("5.3.1 PRIORITY depending on itself", frame(0x2, 0, 1, b"\x00\x00\x00\x01\x10"),
     ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("6.3 PRIORITY of length 4", frame(0x2, 0, 1, b"\x00\x00\x00\x03"),
     ("GOAWAY", ErrorCodes.FRAME_SIZE_ERROR)),
    ("6.9 WINDOW_UPDATE of 0 on the connection", frame(0x8, 0, 0, b"\x00\x00\x00\x00"),
     ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    # (A stream error by the RFC; h2 makes it a connection error, as 5.4
    # allows.  HAProxy: RST_STREAM PROTOCOL_ERROR.)
    ("6.9 WINDOW_UPDATE of 0 on a stream",
     request(1, end=False) + frame(0x8, 0, 1, b"\x00\x00\x00\x00"),
     ("GOAWAY", ErrorCodes.PROTOCOL_ERROR)),
    ("6.9.1 connection window over 2^31-1", frame(0x8, 0, 0, b"\x7f\xff\xff\xff"),
     ("GOAWAY", ErrorCodes.FLOW_CONTROL_ERROR)),
    ("6.9.1 stream window over 2^31-1",
     request(1, end=False) + frame(0x8, 0, 1, b"\x7f\xff\xff\xff"),
     ("RST_STREAM", ErrorCodes.FLOW_CONTROL_ERROR)),
    ("6.9 WINDOW_UPDATE of length 3", frame(0x8, 0, 0, b"\x00\x00\x01"),
     ("GOAWAY", ErrorCodes.FRAME_SIZE_ERROR)),
    ("6.7 PING of length 6", frame(0x6, 0, 0, b"\x00" * 6), ("GOAWAY", ErrorCodes.FRAME_SIZE_ERROR)),
    # (HAProxy: GOAWAY then RST_STREAM PROTOCOL_ERROR.)
    ("5.1 HEADERS on a half-closed (remote) stream", request(1) + request(1),
     ("RST_STREAM", ErrorCodes.STREAM_CLOSED)),
    ("5.1 DATA on a half-closed (remote) stream", request(1) + frame(0x0, 1, 1, b"x"),
     ("RST_STREAM", ErrorCodes.STREAM_CLOSED)),
]

BASE = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
        (b":authority", b"a.example")]


def head(method: bytes = b"GET", path: bytes = b"/", authority: bytes | None = b"a.example",
         *extra: tuple[bytes, bytes]) -> Any:
    """
    L{requestHead} of a request with these pseudo-header values (and
    C{extra} fields), or the exception it raised.
    """
    fields = [(b":method", method), (b":scheme", b"http"), (b":path", path)]
    if authority is not None:
        fields.append((b":authority", authority))
    try:
        return requestHead([*fields, *extra], True)
    except (MalformedRequest, BadRequest) as e:
        return e


class RequestLineTests(SynchronousTestCase):
    """
    C{:method}, C{:path} and C{:authority} become the HTTP/1.1 request line
    and Host: what they may hold is what those may, so that no request
    reaches a backend as another one.
    """

    def test_methodToken(self) -> None:
        """
        A C{:method} that is not a token (RFC 9110 9.1) is malformed: one
        with a space would rewrite the request line (C{"GET /x"} as a
        method sends C{GET /x / HTTP/1.1}), a control or C{"{"} is no
        method.  HAProxy answers 400.  Tokens pass, lowercase and unknown
        ones included (methods are case-sensitive).
        """
        for method in (b"GET /x", b"GE\x01T", b"G{T", b"GET\t", b"G\x7fT", b"G\xe9T"):
            self.assertIsInstance(head(method), MalformedRequest, repr(method))
        for method in (b"GET", b"get", b"PROPFIND", b"M-SEARCH", b"X~!#$%&'*+.^_`|"):
            self.assertEqual(head(method).method, method)

    def test_pathCharacters(self) -> None:
        """
        A C{:path} with whitespace, a control, DEL or C{"#"} is malformed
        (RFC 9113 8.3.1: the path and query of the target, no fragment; in
        an HTTP/1.1 request line a space or tab would end the target, and a
        fragment would pass a path rule it then escapes).  HAProxy resets
        (400 for DEL).  Bytes past ASCII pass, as HAProxy lets them.
        """
        for path in (b"/a b", b"/a\tb", b"/a\x01b", b"/a\x7fb", b"/a#f", b"/a?q#f"):
            self.assertIsInstance(head(b"GET", path), MalformedRequest, repr(path))
        for path in (b"/", b"/a/b?c=d&e=%20", b"/a\xc3\xa9b", b"/@:!$&'()*+,;=-._~"):
            self.assertEqual(head(b"GET", path).target, path)

    def test_authorityCharacters(self) -> None:
        """
        A C{:authority} (or, without one, a Host) outside RFC 3986's
        authority (host and port: a space, a control, C{"/"}, a quote...)
        gets a 400, as an invalid Host does in HTTP/1.1 (RFC 9112 3.2):
        it would be the backend's Host, and routing's and
        C{X-Forwarded-Host}'s.  HAProxy answers 400 to a space or a
        control.  Names, ports, IP literals and percent-encoding pass.
        """
        for authority in (b"a b", b"a\x01b", b"a/b", b'a"b', b"a\\b", b"a<b>", b"a\x7f"):
            e = head(b"GET", b"/", authority)
            self.assertIsInstance(e, BadRequest, repr(authority))
            self.assertEqual(e.status, 400)
            e = head(b"GET", b"/", None, (b"host", authority))
            self.assertIsInstance(e, BadRequest, repr(authority))
        for authority in (b"a.example", b"a.example:8080", b"[::1]:8080", b"10.0.0.1",
                          b"a_b.example", b"a%41b.example", b"x!$&'()*+,;=~.example"):
            self.assertEqual(head(b"GET", b"/", authority).authority, authority)
            self.assertEqual(head(b"GET", b"/", None, (b"host", authority)).authority, authority)


    def test_connect(self) -> None:
        """
        CONNECT (which lbtwist does not tunnel) gets a 501 when it is well
        formed: C{:method} and C{:authority} only.  With C{:scheme} or
        C{:path}, or without C{:authority}, it is malformed (RFC 9113 8.5),
        a C{PROTOCOL_ERROR} reset as HAProxy answers.
        """
        connect = (b":method", b"CONNECT")
        authority = (b":authority", b"a.example:443")
        e = self.assertRaises(BadRequest, requestHead, [connect, authority], False)
        self.assertEqual(e.status, 501)
        for fields in ([connect, (b":scheme", b"https"), authority],
                       [connect, (b":path", b"/"), authority], [connect]):
            self.assertRaises(MalformedRequest, requestHead, fields, False)


class RequestTrailerTests(H2TestCase):
    """
    A request's trailers are a header block too (RFC 9113 8.1): what makes
    a head malformed makes them so, and the backend never sees such a
    request complete.
    """

    def trailers(self, fields: list[tuple[bytes, bytes]]) -> tuple[Client, Any]:
        """
        Send a POST with a body of no stated length, then C{fields} as its
        trailers; the client and the backend connection's transport.
        """
        client = Client(self.factory)
        client.get(1, [(b":method", b"POST"), *GET[1:]], end=False)
        _, transport = self.backend()
        client.send(1, b"a")
        client.conn.send_headers(1, fields, end_stream=True)
        client.pump()
        return client, transport

    def test_malformed(self) -> None:
        """
        A pseudo-header field (8.1: trailers MUST NOT hold one), an
        uppercase name (8.2.1) or a connection-specific field (8.2.2) in a
        request's trailers resets the stream with C{PROTOCOL_ERROR}, and
        the backend's connection is aborted before the body's last chunk
        (which would end the request there).  HAProxy resets the stream
        (C{INTERNAL_ERROR}) and cuts the backend's request the same way.
        """
        for fields in ([(b":method", b"GET")], [(b"X-T", b"1")],
                       [(b"transfer-encoding", b"chunked")], [(b"connection", b"close")],
                       [(b"x-t", b" 1")]):
            client, transport = self.trailers(fields)
            self.assertEqual([e.error_code for e in client.of(h2.events.StreamReset, 1)],
                             [ErrorCodes.PROTOCOL_ERROR], fields)
            self.assertTrue(transport.disconnecting, fields)
            self.assertNotIn(b"0\r\n", transport.value(), fields)
            self.assertEqual(client.of(h2.events.ConnectionTerminated), [])

    def test_wellFormed(self) -> None:
        """
        Well-formed trailers end the backend's chunked request.
        """
        client, transport = self.trailers([(b"x-t", b"1")])
        self.assertTrue(transport.value().endswith(b"1\r\na\r\n0\r\nx-t: 1\r\n\r\n"))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(client.of(h2.events.StreamReset, 1), [])


class FrameErrorTests(H2TestCase):
    """
    The error code a frame h2 refuses closes the connection with.
    """

    def test_settingsAckWithPayload(self) -> None:
        """
        A SETTINGS acknowledgement with a payload is a connection error of
        type C{FRAME_SIZE_ERROR} (RFC 9113 6.5; h2 says C{PROTOCOL_ERROR}),
        as HAProxy answers.
        """
        client = Client(self.factory)
        self.assertEqual(answer(client, frame(4, 1, 0, b"\x00\x01\x00\x00\x00\x01")),
                         ("GOAWAY", ErrorCodes.FRAME_SIZE_ERROR))
        self.assertTrue(client.transport.disconnecting)

    def test_badPreface(self) -> None:
        """
        A client that chose C{h2} by ALPN and then sends no connection
        preface (RFC 9113 3.4: a connection error of type
        C{PROTOCOL_ERROR}) gets a GOAWAY saying so before the close, as
        5.4.1 asks (h2 raises without one; HAProxy closes silently).
        """
        transport = ProtocolTransport(peerAddress=CLIENT)
        transport.negotiatedProtocol = b"h2"  # type: ignore[attr-defined]
        sniffer = self.factory.buildProtocol(CLIENT)
        assert sniffer is not None
        transport.protocol = sniffer
        sniffer.makeConnection(transport)
        transport.clear()
        transport.protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        codes = [f.error_code for f in frames(transport.value()) if isinstance(f, GoAwayFrame)]
        self.assertEqual(codes, [ErrorCodes.PROTOCOL_ERROR])
        self.assertTrue(transport.disconnecting)

    def test_enforcedByH2(self) -> None:
        """
        The frame-layer rules h2 enforces hold as lbtwist configures it
        (its checks of fields turned off, its frame checks kept): each
        case gets the connection or stream error RFC 9113 asks for.
        """
        got = []
        for case, data, expected in H2_ENFORCED:
            result = answer(Client(h2Factory(self.reactor)), data)
            if result != expected:
                got.append((case, result, expected))
        self.assertEqual(got, [])

    def test_otherInvalidData(self) -> None:
        """
        Other frames h2 finds invalid keep their code: a PRIORITY frame on
        stream 0 is a C{PROTOCOL_ERROR}.
        """
        client = Client(self.factory)
        self.assertEqual(answer(client, frame(2, 0, 0, b"\x00\x00\x00\x01\x10")),
                         ("GOAWAY", ErrorCodes.PROTOCOL_ERROR))


class ResponseFieldTests(SynchronousTestCase):
    """
    The header list of a response relayed from an HTTP/1.1 backend.
    """

    def test_connectionNamed(self) -> None:
        """
        The fields a backend's Connection names are hop-by-hop, and go
        (RFC 9110 7.6.1, as an HTTP/1.1 client's response does); the
        framing, and the sticky cookie added here, stay whatever it names.
        """
        fields = responseFields(200, [
            (b"Connection", b"keep-alive, X-Hop, Content-Length, set-cookie"),
            (b"X-Hop", b"1"), (b"Content-Length", b"2"), (b"x-kept", b"k")], b"lb=a")
        self.assertEqual(fields, [(b":status", b"200"), (b"content-length", b"2"),
                                  (b"x-kept", b"k"), (b"set-cookie", b"lb=a")])

    def test_valueWhitespace(self) -> None:
        """
        A field value HTTP/2 sends neither starts nor ends with a space or
        tab (RFC 9113 8.2.1: a client may reset the stream otherwise):
        what llhttp left of a backend's value (trailing whitespace) is
        stripped, as HAProxy does; inner whitespace stays.
        """
        fields = responseFields(200, [(b"X-Sp", b"b \t"), (b"x-in", b"a  b"), (b"x-e", b"")])
        self.assertEqual(fields, [(b":status", b"200"), (b"x-sp", b"b"), (b"x-in", b"a  b"),
                                  (b"x-e", b"")])


class SmugglingTests(LoopbackTestCase):
    """
    The real balancer over 127.0.0.1, an h2 client sending what the
    HTTP/1.1 request to the backend must not carry.
    """

    @inlineCallbacks
    def test_nothingReachesTheBackend(self) -> Any:
        """
        A method with a space, a path with one, a bad authority, and
        trailers with a pseudo-header field: none reaches the backend as
        a request (the first three are refused at once, the last never
        ends there); a well-formed request on the same connection does.
        """
        backend = self.backend()
        _, port = self.balancer(backend)

        def run() -> list[Any]:
            client = H2Client(port)
            try:
                client.request(1, method="GET /admin")
                client.request(3, path="/a b")
                fields = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                          (b":authority", b"a b")]
                client.conn.send_headers(5, fields, end_stream=True)
                client.request(7, method="POST", end=False)
                client.conn.send_data(7, b"x")
                client.conn.send_headers(7, [(b":path", b"/admin")], end_stream=True)
                client.flush()
                client.read(lambda es: len(resets(es, ErrorCodes.PROTOCOL_ERROR)) >= 3)
                client.request(9, path="/ok")
                client.read(lambda es: 9 in client.responses())
                return client.events
            finally:
                client.close()

        events = yield inThread(run)
        self.assertEqual(sorted(resets(events, ErrorCodes.PROTOCOL_ERROR)), [1, 3, 7])
        statuses = {e.stream_id: dict(e.headers)[b":status"] for e in events
                    if isinstance(e, h2.events.ResponseReceived)}
        self.assertEqual(statuses, {5: b"400", 9: b"200"})
        yield waitFor(lambda: b"GET /ok " in backend.raw)
        self.assertNotIn(b"admin", backend.raw)
        self.assertNotIn(b"a b", backend.raw)
        self.assertNotIn(b"0\r\n\r\n", backend.raw)
