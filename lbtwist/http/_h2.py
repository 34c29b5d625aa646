"""
HTTP/2 from clients: each stream of an L{H2Connection} is an L{H2Stream},
a client side (L{IClientSide}) that drives one exchange exactly as an
HTTP/1.1 connection drives one per request; the request goes to the
backend as HTTP/1.1, planned by the same request plan.

The h2 library (python-hyper) reads and writes the frames; this module
decides what they mean:

  - B{the request head} (L{requestHead}, a pure function): the pseudo-header
    fields are mapped to an HTTP/1.1 head (C{:method}, C{:path} the target,
    C{:authority} the Host, cookies joined by C{"; "}) and everything the
    h2-to-h1 downgrade could smuggle is refused first (CR, LF or NUL in a
    name or value, connection-specific fields, C{te} other than
    C{trailers}, uppercase names, a Host that disagrees with
    C{:authority}, a C{:method} that is no token, whitespace, a control or
    a fragment in C{:path}, an authority that is no host and port); a
    Content-Length must match the DATA received, checked before any byte
    past it reaches a backend.
  - B{flow control as backpressure}: request DATA is acknowledged (the
    client's window opened again) only while the backend connection takes
    what it is given, so a stream holds at most its window of request body;
    response bytes go out within the stream's and the connection's
    windows, and the backend connection (the exchange's registered
    producer) is paused while a window is empty or the client's socket is
    full, resumed on WINDOW_UPDATE.  A stream holds at most one read of
    response body beyond its window.
  - B{abuse limits} (L{lbtwist.config.HTTP2Settings}): streams beyond the
    concurrency limit are refused (C{REFUSED_STREAM}); streams reset by the
    client before their response was complete, and SETTINGS, PING,
    PRIORITY, empty DATA and extension frames, WINDOW_UPDATEs beyond those
    the response DATA sent calls for, and frames on streams that are over,
    are counted over a window, and a client
    over either limit gets GOAWAY C{ENHANCE_YOUR_CALM} and is closed
    (rapid reset, CVE-2023-44487; control-frame floods); the header list
    (and so a CONTINUATION flood) is bounded by h2's decoder and its
    64-frame backlog; one timer per connection watches each stream's
    response deadline, request-body stall and idleness, an unfinished header
    block, and the connection's idleness.
  - B{graceful stop}: GOAWAY with the last stream id; open streams finish.
"""

from __future__ import annotations

import re
from collections import deque
from typing import Any, Callable

from h2.config import H2Configuration
from h2.connection import ConnectionState
from h2.connection import H2Connection as H2State
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from ..config import HTTP2Settings
from ..routing import applyHeaderActions
from ._client import ClientPeer
from ._errors import _BODIES, BadRequest
from ._exchange import Exchange, IClientSide
from ._gate import ProducerGate, takeWindow
from ._plan import (
    NEVER_NAMED,
    TOKEN,
    USUAL_CONNECTION,
    BadTrailer,
    RawHead,
    askingTrailers,
    forwarded,
    planResponse,
    splitTokens,
    trailerFields,
)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
# The WINDOW_UPDATE frames one response DATA frame may call for (the
# stream's and the connection's, twice over for clients that acknowledge
# by halves) before they count as control frames.
UPDATES_PER_DATA = 4
# The most bytes of response fields kept in the HPACK table for a client,
# whatever larger table it allows (SETTINGS_HEADER_TABLE_SIZE).
ENCODER_TABLE_SIZE = 4096
# Seconds a closing connection still reads (and drops) what its client sends.
LINGER = 2.0
PROTOCOL = "HTTP/2"

# Fields that describe one HTTP/1.1 connection: malformed in HTTP/2
# (RFC 9113 8.2.2), and what a downgrade would smuggle.
CONNECTION_SPECIFIC = frozenset(
    (b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade"))
_PSEUDO = frozenset((b":method", b":scheme", b":path", b":authority"))
# A field name: a lowercase token (RFC 9113 8.2.1, RFC 9110 5.1).
_NAME = re.compile(rb"[!#$%&'*+.^_`|~0-9a-z-]+\Z")
# What a field value may not hold (RFC 9113 8.2.1).
_BAD_VALUE = re.compile(rb"[\r\n\x00]|\A[ \t]|[ \t]\Z")
# The methods almost every request has, taken without the pattern.
_COMMON_METHODS = frozenset((b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"))
# What C{:path} may not hold: whitespace, controls and DEL (a space or tab
# ends the HTTP/1.1 request target), or "#": a fragment is no part of it
# (RFC 9113 8.3.1), and would pass a path rule it then escapes.
_BAD_PATH = re.compile(rb"[\x00-\x20\x7f#]")
# An authority as a Host may be: RFC 3986 3.2's host (a name, with
# percent-encoding, or an IP literal) and port; no userinfo ("@").
_AUTHORITY = re.compile(rb"[A-Za-z0-9._~%!$&'()*+,;=:\[\]-]+\Z")
# Response fields never sent on HTTP/2 beside the hop-by-hop ones.
_NOT_ON_H2 = frozenset((b"proxy-connection", b"keep-alive"))


class MalformedRequest(Exception):
    """
    A request head HTTP/2 calls malformed (RFC 9113 8.1.1): the stream is
    reset with C{PROTOCOL_ERROR}, and nothing reaches a backend.
    """


class H2Request:
    """
    What an HTTP/2 request head comes to, ready for the request plan.

    @ivar method: C{:method}.
    @ivar target: C{:path}, the HTTP/1.1 request target.
    @ivar authority: C{:authority}, or Host when it is absent.
    @ivar scheme: C{:scheme} (C{http} or C{https}, as the client says it).
    @ivar headers: the HTTP/1.1 header fields: Host first, the cookies
        joined into one, C{transfer-encoding: chunked} for a body of no
        stated length.
    @ivar contentLength: the Content-Length, if stated: the DATA received
        must come to it exactly.
    @ivar trailers: the client sent C{te: trailers}, which the plan (TE
        being hop-by-hop) leaves out: it is asked of the backend again
        (L{askingTrailers}).
    """

    __slots__ = ("authority", "contentLength", "headers", "method", "scheme", "target",
                 "trailers")

    def __init__(self, method: bytes, target: bytes, authority: bytes, scheme: bytes,
                 headers: list[tuple[bytes, bytes]], contentLength: int | None,
                 trailers: bool = False) -> None:
        self.method = method
        self.target = target
        self.authority = authority
        self.scheme = scheme
        self.headers = headers
        self.contentLength = contentLength
        self.trailers = trailers


def requestHead(fields: list[tuple[bytes, bytes]], endStream: bool) -> H2Request:
    """
    Check an HTTP/2 request's header list and map it to an HTTP/1.1 head.

    @param fields: the decoded header list, as the client sent it.
    @param endStream: the HEADERS frame ended the stream (no body).

    @raise MalformedRequest: the stream must be reset (C{PROTOCOL_ERROR}).
    @raise BadRequest: the request must be answered with C{status}.
    """
    pseudo: dict[bytes, bytes] = {}
    regular: list[tuple[bytes, bytes]] = []
    cookies: list[bytes] = []
    host: bytes | None = None
    length: int | None = None
    trailers = False
    seenRegular = False
    for name, value in fields:
        if _BAD_VALUE.search(value):
            raise MalformedRequest(f"forbidden character or whitespace in {name!r}")
        if name[:1] == b":":
            if seenRegular:
                raise MalformedRequest(f"pseudo-header {name!r} after regular fields")
            if name not in _PSEUDO:
                raise MalformedRequest(f"unknown pseudo-header {name!r}")
            if name in pseudo:
                raise MalformedRequest(f"repeated pseudo-header {name!r}")
            pseudo[name] = value
            continue
        seenRegular = True
        if not _NAME.match(name):
            raise MalformedRequest(f"invalid field name {name!r}")
        if name in CONNECTION_SPECIFIC:
            raise MalformedRequest(f"connection-specific field {name!r}")
        if name == b"te":
            if value != b"trailers":
                raise MalformedRequest(f"te other than trailers: {value!r}")
            trailers = True
        elif name == b"cookie":
            cookies.append(value)
            continue
        elif name == b"host":
            if host is not None:
                raise MalformedRequest("repeated host")
            host = value
            continue
        elif name == b"content-length":
            if not value.isdigit():
                raise MalformedRequest(f"invalid content-length {value!r}")
            n = int(value)
            if length is not None:
                if n != length:
                    raise MalformedRequest("conflicting content-length")
                continue
            length = n
        regular.append((name, value))
    method = pseudo.get(b":method")
    if not method:
        raise MalformedRequest("no :method")
    # (A method is a token, RFC 9110 9.1: anything else would rewrite the
    # HTTP/1.1 request line sent on, "GET /x" as a method sending
    # "GET /x / ...".)
    if method not in _COMMON_METHODS and not TOKEN.match(method):
        raise MalformedRequest(f"invalid :method {method[:40]!r}")
    if method == b"CONNECT":
        # (RFC 9113 8.5: :authority only, beside :method.)
        if b":scheme" in pseudo or b":path" in pseudo or b":authority" not in pseudo:
            raise MalformedRequest("CONNECT with :scheme or :path, or without :authority")
        raise BadRequest("CONNECT is not supported", 501)
    scheme = pseudo.get(b":scheme")
    target = pseudo.get(b":path")
    if not scheme or not target:
        raise MalformedRequest("no :scheme or :path")
    if target[0] != 47 and not (target == b"*" and method == b"OPTIONS"):  # 47: "/"
        raise MalformedRequest(f"invalid :path {target!r}")
    if _BAD_PATH.search(target):
        raise MalformedRequest(f"invalid character in :path {target[:80]!r}")
    if scheme not in (b"http", b"https"):
        raise BadRequest(f"unsupported :scheme {scheme!r}")
    authority = pseudo.get(b":authority")
    if authority is not None:
        if not authority or 64 in authority:  # 64: "@"
            raise MalformedRequest(f"invalid :authority {authority!r}")
        if host is not None and host != authority:
            raise BadRequest("host conflicts with :authority")
    elif host is None:
        raise BadRequest("no :authority and no host")
    else:
        authority = host
    if not _AUTHORITY.match(authority):
        raise BadRequest(f"invalid authority {authority[:80]!r}")
    headers = [(b"host", authority), *regular]
    if cookies:
        headers.append((b"cookie", b"; ".join(cookies)))
    if endStream:
        if length:
            raise MalformedRequest("content-length without DATA")
    elif length is None:
        headers.append((b"transfer-encoding", b"chunked"))
    return H2Request(method, target, authority, scheme, headers, length, trailers)


def checkTrailers(fields: list[tuple[bytes, bytes]]) -> None:
    """
    Check a request's trailers as RFC 9113 checks any header block: no
    pseudo-header field (8.1), lowercase token names and values without CR,
    LF, NUL or surrounding whitespace (8.2.1), no connection-specific field
    (8.2.2).

    @raise MalformedRequest: the stream must be reset (C{PROTOCOL_ERROR}).
    """
    for name, value in fields:
        if name[:1] == b":":
            raise MalformedRequest(f"pseudo-header {name!r} in trailers")
        if not _NAME.match(name):
            raise MalformedRequest(f"invalid trailer name {name[:40]!r}")
        if name in CONNECTION_SPECIFIC:
            raise MalformedRequest(f"connection-specific trailer {name!r}")
        if _BAD_VALUE.search(value):
            raise MalformedRequest(f"forbidden character or whitespace in trailer {name!r}")


def responseFields(status: int, headers: list[tuple[bytes, bytes]],
                   cookie: bytes | None = None) -> list[tuple[bytes, bytes]]:
    """
    The HTTP/2 header list of a response: C{:status}, then the backend's
    fields lowercased, without the hop-by-hop ones (the one filter of
    L{forwarded}, and those its Connection names) and the other
    connection-specific ones, and without a 204's length; values without
    surrounding whitespace (RFC 9113 8.2.1); C{cookie}, the sticky
    cookie's C{Set-Cookie} value, last.
    """
    fields = [(b":status", b"%d" % status)]
    append = fields.append
    named: set[bytes] | None = None
    for name, value in headers:
        lname = name.lower()
        if not forwarded(lname) or lname in _NOT_ON_H2:
            if lname == b"connection" and value.lower() not in USUAL_CONNECTION:
                named = (named or set()).union(splitTokens(value))
            continue
        if status == 204 and lname == b"content-length":
            continue
        # (llhttp keeps a value's trailing whitespace, which HTTP/2 forbids.)
        append((lname, value.strip(b" \t")))
    if named:
        # (RFC 9110 7.6.1, as planResponse does for HTTP/1.1 clients.)
        named -= NEVER_NAMED
        fields = [field for field in fields if field[0] not in named]
        append = fields.append
    if cookie is not None:
        append((b"set-cookie", cookie))
    return fields


def localFields(status: int, headers: Any, body: bytes) -> list[tuple[bytes, bytes]]:
    """
    The HTTP/2 header list of a response the balancer makes itself,
    framed by its length (a 204 has none).
    """
    fields = [(b":status", b"%d" % status)]
    fields.extend((n.lower(), v) for n, v in headers)
    if status != 204:
        fields.append((b"content-length", b"%d" % len(body)))
    return fields


@implementer(IPushProducer, IClientSide)
class H2Stream:
    """
    One HTTP/2 stream: the client side of one exchange.

    It is the producer of the request body, registered with the backend
    connection: paused, it stops acknowledging DATA, so the client's window
    closes and the client stops sending.

    @ivar exchange: its exchange, once the head was accepted.
    @ivar closed: the stream is over for the client (reset, or the
        connection gone): nothing more is sent on it.
    @ivar complete: the response was sent whole (or the stream refused).
    """

    protocol = PROTOCOL
    # Response heads come as fields: HTTP/2 sends each field on its own.
    headsAsBytes = False

    def __init__(self, connection: H2Connection, streamId: int, started: float) -> None:
        self.connection = connection
        self.streamId = streamId
        self.started = started
        self.clientHost = connection.clientHost
        self.clientName = connection.clientName
        self.localAuthority = connection.localAuthority
        self.privateKeys = connection.privateKeys
        self.exchange: Exchange | None = None
        self.closed = False
        self.complete = False
        self.requestDone = False
        self.lastActivity = started
        self.lastRead = started
        self._length: int | None = None
        self._received = 0
        self._unacked = 0
        self._held = False
        self._pausedByPeer = False
        self._head: list[tuple[bytes, bytes]] | None = None
        self._out: deque[bytes] = deque()
        self._ending = False
        # Trailers: the response's (sent after its last DATA), and the
        # request's (relayed as it ends).
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._requestTrailers: list[tuple[bytes, bytes]] | None = None
        self._gate = ProducerGate()

    def __repr__(self) -> str:
        return f"<H2Stream {self.streamId} {self.exchange!r}>"

    # -- the request -------------------------------------------------------

    def start(self, fields: list[tuple[bytes, bytes]], endStream: bool) -> None:
        """
        The request head arrived: check it, make its exchange and start it.
        """
        connection = self.connection
        factory = connection.factory
        try:
            request = requestHead(fields, endStream)
            ex = factory.exchangeFor(
                self, request.method, request.target, "1.1", request.headers, True, False,
                self.started)
        except MalformedRequest as e:
            self._refuseMalformed(str(e))
            return
        except BadRequest as e:
            factory.refused += 1
            factory.log.info(
                "refused HTTP/2 request from {client}: {status} ({why})",
                client=self.clientName, status=e.status, why=str(e))
            body = _BODIES.get(e.status, b"")
            self.requestDone = endStream
            self._answer(e.status, [(b"content-type", b"text/plain")], body, False)
            return
        if request.trailers:
            # An HTTP/1.1 backend may send trailers only when asked (an
            # HTTP/2 one is always asked: see requestFields).
            ex.plan.head = askingTrailers(ex.plan.head)
        self.exchange = ex
        self._length = request.contentLength
        if endStream:
            self.requestDone = True
            ex.requestComplete()
        ex.start()

    def _refuseMalformed(self, why: str) -> None:
        factory = self.connection.factory
        factory.refused += 1
        factory.log.info(
            "reset malformed HTTP/2 request from {client}: {why}",
            client=self.clientName, why=why)
        self.reset(ErrorCodes.PROTOCOL_ERROR)

    def dataReceived(self, data: bytes, flowLength: int) -> None:
        """
        DATA arrived (C{flowLength} bytes of the stream's window, padding
        included): relay it, and acknowledge it only if the backend takes
        more.
        """
        self.lastActivity = self.lastRead = self.connection.seconds()
        self._unacked += flowLength
        ex = self.exchange
        if ex is None or ex.over or self.requestDone:
            # Nobody wants it (a refused or answered request): let it go.
            self._acknowledge()
            return
        self._received += len(data)
        length = self._length
        if length is not None and self._received > length:
            self._malformedBody("more DATA than its content-length")
            return
        if data:
            ex.requestBody(data)
        self._acknowledge()

    def streamEnded(self) -> None:
        """
        The client ended the stream: the request body is complete, if it
        is as long as it said.
        """
        if self.requestDone:
            return
        self.requestDone = True
        ex = self.exchange
        if ex is None or ex.over:
            return
        length = self._length
        if length is not None and self._received != length:
            self._malformedBody("less DATA than its content-length")
            return
        ex.requestComplete(self._requestTrailers)

    def requestTrailers(self, ex: Exchange) -> list[tuple[bytes, bytes]] | None:
        """
        The request's trailers, if it had any.
        """
        return self._requestTrailers

    def trailersReceived(self, fields: list[tuple[bytes, bytes]]) -> None:
        """
        The request's trailers arrived (the stream ends with them): relayed
        as the request ends, filtered as headers are; trailers that would
        make a head malformed (L{checkTrailers}) make the request so (the
        backend never sees it complete).
        """
        try:
            checkTrailers(fields)
            self._requestTrailers = trailerFields(fields) or None
        except (MalformedRequest, BadTrailer) as e:
            self._malformedBody(str(e))

    def _malformedBody(self, why: str) -> None:
        # The backend must never see a complete request: the exchange is
        # dropped and its backend connection aborted.
        ex = self.exchange
        if ex is not None:
            ex.abandon()
        self._refuseMalformed(why)

    def _acknowledge(self) -> None:
        n = self._unacked
        if n and not (self._held or self._pausedByPeer or self.closed):
            self._unacked = 0
            self.connection.acknowledge(self.streamId, n)

    def holdRequest(self) -> None:
        """
        Acknowledge no more DATA for now (nowhere to send it yet).
        """
        self._held = True

    def releaseRequest(self) -> None:
        """
        Acknowledge DATA again (unless the backend pushes back).
        """
        self._held = False
        self._acknowledge()

    def pauseProducing(self) -> None:
        """
        The backend cannot take more of the request body for now.
        """
        self._pausedByPeer = True

    def resumeProducing(self) -> None:
        """
        The backend can take more: acknowledge what it was given.
        """
        self._pausedByPeer = False
        self.lastRead = self.connection.seconds()
        self._acknowledge()

    def stopProducing(self) -> None:
        """
        The backend connection is gone; the exchange decides what follows.
        """

    @property
    def reading(self) -> bool:
        """
        Whether more of the request body is awaited and nothing on the
        balancer's side holds it up (so that its stalling is the client's).
        """
        return not (self.requestDone or self._held or self._pausedByPeer)

    def proxyHeaderFor(self, make: Any) -> bytes:
        """
        The PROXY-protocol header of the stream's connection.
        """
        return self.connection.proxyHeaderFor(make)

    # -- the response ------------------------------------------------------

    def sendInterim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """
        Send an interim (1xx) response on as its own HEADERS.
        """
        if not self.closed:
            self.connection.sendHeaders(self.streamId, responseFields(status, headers), False)

    def sendHead(self, ex: Exchange, status: int, reason: bytes,
                 headers: list[tuple[bytes, bytes]] | None, raw: RawHead | None = None) -> Any:
        """
        Plan the final response head (checked and framed as for HTTP/1.1);
        its HEADERS are held to go out with the first DATA.  (Its fields are
        given, never its bytes: C{headsAsBytes} is false.)
        """
        assert headers is not None
        route = ex.route
        if route is not None and route.responseHeaders is not None:
            headers = applyHeaderActions(headers, route.responseHeaders)
        cookie = ex.upstream.cookieFor(ex) if ex.setCookie else None
        response = planResponse(status, reason, headers, ex.method, True, True, cookie)
        self._head = responseFields(status, headers, cookie)
        return response

    def flushHead(self, ex: Exchange) -> None:
        """
        Send the held HEADERS now.
        """
        head, self._head = self._head, None
        if head is not None and not self.closed:
            self.connection.sendHeaders(self.streamId, head, False)

    def dropHeldHead(self, ex: Exchange) -> bool:
        """
        Drop the held HEADERS; say whether there were any.
        """
        head, self._head = self._head, None
        return head is not None

    def sendBody(self, ex: Exchange, data: bytes) -> None:
        """
        Send a piece of the response body within the flow-control windows;
        what does not fit waits, and the backend is paused meanwhile.
        """
        self.lastActivity = self.connection.seconds()
        if self.closed:
            return
        self.flushHead(ex)
        if data:
            size = self.connection.h2.max_outbound_frame_size
            if len(data) > size:
                # Cut once into frames, not again for each frame sent.
                self._out.extend(data[at:at + size] for at in range(0, len(data), size))
            else:
                self._out.append(data)
            length = ex.response.length
            if length is not None and ex.bytesOut >= length and ex.conn.endsWithLastByte:
                # The body is whole and the backend says endResponse comes
                # next, in the same call: its END_STREAM goes on this last
                # DATA frame rather than on an empty one after it.  (An h2
                # backend may end its stream later, or never: the body goes
                # now.)
                return
            self.flushData()

    def endResponse(self, ex: Exchange, trailers: list[tuple[bytes, bytes]] | None) -> None:
        """
        End the response: with its HEADERS if nothing else went, else after
        the DATA still waiting for window; the backend's C{trailers}, if
        any, are a last HEADERS that ends the stream.
        """
        if self.closed:
            return
        self._trailers = trailers
        head, self._head = self._head, None
        if head is not None:
            self.connection.sendHeaders(self.streamId, head, not trailers)
            if trailers:
                self.connection.sendHeaders(self.streamId, trailers, True)
            self._finished()
            return
        self._ending = True
        self.flushData()

    def _answer(self, status: int, headers: Any, body: bytes, head: bool) -> None:
        if self.closed:
            return
        fields = localFields(status, headers, body)
        if head or status == 204 or not body:
            self.connection.sendHeaders(self.streamId, fields, True)
            self._finished()
            return
        self.connection.sendHeaders(self.streamId, fields, False)
        self._out.append(body)
        self._ending = True
        self.flushData()

    def sendError(self, ex: Exchange, status: int) -> None:
        """
        Answer with a short plain-text error.
        """
        self._head = None
        self._answer(status, [(b"content-type", b"text/plain")], _BODIES.get(status, b""),
                     ex.method == b"HEAD")

    def sendLocal(self, ex: Exchange, status: int, headers: Any, body: bytes) -> None:
        """
        Answer with a response the balancer makes itself.
        """
        self._answer(status, headers, body, ex.method == b"HEAD")

    def cutResponse(self, ex: Exchange) -> None:
        """
        The response will never be complete: reset the stream, so that the
        client sees it cut short (counted as a response, as its status
        was).
        """
        self.connection.factory.h2Responses += 1
        self.reset(ErrorCodes.INTERNAL_ERROR)

    def flushData(self) -> None:
        """
        Send the waiting response DATA the windows allow; end the stream
        once it is all sent, if the response is complete.
        """
        if self.closed:
            return
        out = self._out
        connection = self.connection
        ending = self._ending
        if out:
            state = connection.h2
            sid = self.streamId
            try:
                while out:
                    window = min(state.local_flow_control_window(sid),
                                 state.max_outbound_frame_size)
                    if window <= 0:
                        break
                    piece = takeWindow(out, window)
                    # The last DATA of a complete response ends the stream
                    # (or its trailers do).
                    last = ending and not out
                    state.send_data(sid, piece, end_stream=last and not self._trailers)
                    self.lastActivity = connection.seconds()
                    if connection.windowCredit < connection.windowCreditCap:
                        connection.windowCredit += UPDATES_PER_DATA
                    if last:
                        self._ending = False
                        if self._trailers:
                            state.send_headers(sid, self._trailers, end_stream=True)
                        connection.flushSoon()
                        self._finished()
                        return
            except (StreamClosedError, ProtocolError):
                self.reset(ErrorCodes.STREAM_CLOSED)
                return
            if out:
                # Waits for a WINDOW_UPDATE: only such streams are flushed
                # on one for the connection.
                connection.waiting.add(self)
            else:
                connection.waiting.discard(self)
        elif ending:
            self._ending = False
            if self._trailers:
                connection.sendHeaders(self.streamId, self._trailers, True)
            else:
                connection.endStream(self.streamId)
            self._finished()
            return
        connection.flushSoon()
        self.updateProducer()

    def updateProducer(self) -> None:
        """
        Pause the backend while DATA waits for window or the client's
        socket is full; resume it when neither holds.
        """
        self._gate.hold(bool(self._out) or self.connection.writePaused)

    def upgradeSent(self, ex: Exchange, connection: Any) -> None:
        """
        Never: a request with upgrade fields is malformed in HTTP/2.
        """
        raise AssertionError("an HTTP/2 request is never an upgrade")

    def startTunnel(self, ex: Exchange, connection: Any, head: bytes) -> None:
        """
        Never: see L{upgradeSent}.
        """
        raise AssertionError("an HTTP/2 request is never an upgrade")

    def tunnelData(self, data: bytes) -> None:
        """
        Never: see L{upgradeSent}.
        """

    def tunnelClosed(self) -> None:
        """
        Never: see L{upgradeSent}.
        """

    def backendActive(self) -> None:
        """
        The backend moved: the stream is not idle.
        """
        self.lastActivity = self.connection.seconds()

    def dueBy(self, deadline: float) -> None:
        """
        The response head is due by C{deadline}: the connection's timer
        wakes by then.
        """
        self.connection.dueBy(deadline)

    def registerProducer(self, producer: Any) -> None:
        """
        The backend connection relaying the response: paused while the
        client cannot take more.
        """
        self._gate.register(producer)
        self.updateProducer()

    def unregisterProducer(self) -> None:
        """
        The backend connection relays no more to this stream.
        """
        self._gate.unregister()

    def exchangeDone(self, ex: Exchange) -> None:
        """
        C{ex} is answered.  A body the client is still sending is not
        wanted: once the response is out, the stream is reset with
        C{NO_ERROR} (RFC 9113 8.1).  It is counted as an HTTP/2 response.
        """
        self.connection.factory.h2Responses += 1

    # -- the end -----------------------------------------------------------

    def _finished(self) -> None:
        """
        The response went out whole.
        """
        self.complete = True
        if not self.requestDone:
            self.requestDone = True
            self.connection.resetStream(self.streamId, ErrorCodes.NO_ERROR)
        self._closed()

    def _closed(self) -> None:
        """
        The stream is over: DATA it held unacknowledged goes back to the
        connection's window (else a client resetting streams with held
        bodies would shrink it for good), and the connection forgets it.
        """
        self.closed = True
        n, self._unacked = self._unacked, 0
        connection = self.connection
        connection.waiting.discard(self)
        if n:
            connection.acknowledge(self.streamId, n)
        connection.streamClosed(self)

    def reset(self, code: int) -> None:
        """
        Reset the stream from this side with C{code}; its exchange (if not
        over) is dropped.
        """
        if self.closed:
            return
        self.connection.resetStream(self.streamId, code)
        self.gone()

    def gone(self) -> None:
        """
        The stream is over before its response was complete (reset by
        either side, or the connection lost): drop its exchange, and log it
        with status 0 as an HTTP/1.1 client that left is.
        """
        if self.closed:
            return
        self.closed = True
        self._out.clear()
        self._gate.unregister()
        ex = self.exchange
        if ex is not None and not ex.over:
            ex.abandon()
            factory = self.connection.factory
            factory.abandoned += 1
            factory.logAccess(ex)
        self._closed()


# What the connection does with each event h2 gives it, by its type.
_HANDLERS: dict[type, str] = {
    RequestReceived: "_requestReceived",
    DataReceived: "_dataReceived",
    StreamEnded: "_streamEnded",
    TrailersReceived: "_trailersReceived",
    StreamReset: "_streamReset",
    WindowUpdated: "_windowUpdated",
    RemoteSettingsChanged: "_settingsChanged",
    PingReceived: "_controlFrame",
    PriorityUpdated: "_controlFrame",
    UnknownFrameReceived: "_controlFrame",
    ConnectionTerminated: "_terminated",
}


class _CountingState(H2State):
    """
    h2's connection state, counting the frames it handles without an event
    for lbtwist: those on a stream that is over (RST_STREAM, WINDOW_UPDATE,
    DATA answered with a reset), which would otherwise cost a parse each
    and count against no limit; and closing with the error code RFC 9113
    says where h2's differs.

    @ivar silent: such frames since L{H2Connection} last took the count.
    """

    silent = 0

    def _receive_frame(self, frame: Any) -> list[Any]:
        events: list[Any] = super()._receive_frame(frame)
        if not events:
            self.silent += 1
        return events

    def _terminate_connection(self, error_code: ErrorCodes) -> None:
        """
        h2 closes the connection on an error: a SETTINGS acknowledgement
        with a payload is a C{FRAME_SIZE_ERROR} (RFC 9113 6.5), which h2
        calls a C{PROTOCOL_ERROR}.  The frame h2 could not parse is still
        first in its buffer.  (Only on an error: no cost otherwise.)
        """
        data = self.incoming_buffer._data
        if (error_code == ErrorCodes.PROTOCOL_ERROR and len(data) >= 9
                and data[3] == 0x4 and data[4] & 0x1 and data[:3] != b"\0\0\0"):
            error_code = ErrorCodes.FRAME_SIZE_ERROR
        super()._terminate_connection(error_code)


@implementer(IPushProducer)
class H2Connection(ClientPeer, Protocol):
    """
    A client's HTTP/2 connection (over TLS after ALPN chose C{h2}, or h2c
    by prior knowledge): its streams are exchanges.

    It is the producer registered with its own transport: when the client
    does not read, reading stops (no frames to answer) and every stream's
    backend is paused.

    @ivar streams: the streams not yet over, by id.
    @ivar waiting: the streams whose response DATA waits for window.
    @ivar writePaused: the client's socket is full.
    @ivar goingAway: a GOAWAY was sent (a graceful stop, or the client's
        own): new streams are refused, open ones finish.
    """

    transport: Any
    protocol = PROTOCOL

    def __init__(self, factory: Any, settings: HTTP2Settings) -> None:
        self.factory = factory
        self.settings = settings
        self.seconds: Callable[[], float] = factory.seconds
        self.streams: dict[int, H2Stream] = {}
        self.waiting: set[H2Stream] = set()
        self.privateKeys: set[Any] = set()
        self.closed = False
        self.writePaused = False
        self.goingAway = False
        self._reading = False
        self._timer: Any = None
        self._lastActivity = 0.0
        self._partialSince: float | None = None
        # Since when the client's socket is full (it reads nothing).
        self._pausedSince: float | None = None
        self._windowStart = 0.0
        self._resets = 0
        self._controlFrames = 0
        # WINDOW_UPDATEs the response DATA sent so far calls for, at most
        # max-control-frames of them banked.
        self.windowCredit = 0
        self.windowCreditCap = settings.maxControlFrames

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        self.identify()
        transport = self.transport
        settings = self.settings
        # The checks h2 would make on request fields are made by
        # requestHead, which resets only the stream, not the connection;
        # response fields are built checked and normalised (responseFields:
        # lowercase, filtered, values as llhttp read them, stripped), so
        # h2's own passes over them are not made again (its normalising
        # marks only request credentials never-indexed, none of a
        # response's fields).
        state = self.h2 = _CountingState(H2Configuration(
            client_side=False, header_encoding=None, validate_inbound_headers=False,
            normalize_inbound_headers=False, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        advertised = {
            SettingCodes.MAX_CONCURRENT_STREAMS: settings.maxConcurrentStreams,
            SettingCodes.MAX_HEADER_LIST_SIZE: settings.maxHeaderListSize,
            SettingCodes.INITIAL_WINDOW_SIZE: settings.initialWindowSize,
        }
        state.local_settings = Settings(client=False, initial_values=advertised)
        # Bounded from the first frame, not only once the client has
        # acknowledged the settings that say so.
        state.decoder.max_header_list_size = settings.maxHeaderListSize
        state.initiate_connection()
        # The concurrency limit is enforced here, by refusing a stream over
        # it (a stream error, RFC 9113 5.1.2), not by h2, which would close
        # the whole connection.
        state.local_settings = Settings(client=False, initial_values={
            **advertised, SettingCodes.MAX_CONCURRENT_STREAMS: 2**31 - 1})
        extra = settings.connectionWindowSize - 65535
        if extra > 0:
            state.increment_flow_control_window(extra)
        transport.registerProducer(self, True)
        factory = self.factory
        factory.h2Connections += 1
        now = self.seconds()
        self._lastActivity = self._windowStart = now
        self._flush()
        self._timer = factory.reactor.callLater(factory.requestTimeout, self._checkTimer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        for stream in list(self.streams.values()):
            stream.gone()
        self.streams.clear()
        self.leave()

    def dataReceived(self, data: bytes) -> None:
        if self.closed:
            return
        self._lastActivity = self.seconds()
        self._reading = True
        try:
            try:
                events = self.h2.receive_data(data)
            except ProtocolError as e:
                self.factory.log.info(
                    "closing HTTP/2 client {client}: {why}", client=self.clientName, why=str(e))
                self.factory.refused += 1
                if self.h2.state_machine.state is not ConnectionState.CLOSED:
                    # h2 sent no GOAWAY (a bad connection preface, RFC
                    # 9113 3.4): say why before closing (5.4.1).
                    self._goAway(ErrorCodes.PROTOCOL_ERROR)
                self._close()
                return
            for event in events:
                handler = _HANDLERS.get(type(event))
                if handler is not None:
                    getattr(self, handler)(event)
                    if self.closed:
                        return
            state = self.h2
            if state.silent:
                self._controlFrame(None, state.silent)
                state.silent = 0
                if self.closed:
                    return
            partial = getattr(self.h2.incoming_buffer, "_headers_buffer", None)
            if partial:
                # A header block continues in CONTINUATION frames still to
                # come: h2 holds its frames (64 at most), decoded only once
                # it ends.  Its compressed size is bounded too, as the
                # decoded list will be (HPACK makes few fields larger).
                if sum(len(f.data) for f in partial) > 2 * self.settings.maxHeaderListSize:
                    self.factory.refused += 1
                    self.calm("bytes of one header block", self.settings.maxHeaderListSize * 2)
                    return
                if self._partialSince is None:
                    self._partialSince = self._lastActivity
            else:
                self._partialSince = None
        finally:
            self._reading = False
            self._flush()

    # -- events --------------------------------------------------------------

    def _requestReceived(self, event: RequestReceived) -> None:
        sid = event.stream_id
        settings = self.settings
        if self.goingAway or len(self.streams) >= settings.maxConcurrentStreams:
            self.factory.h2Refused += 1
            self.resetStream(sid, ErrorCodes.REFUSED_STREAM)
            self._countReset()
            return
        stream = H2Stream(self, sid, self._lastActivity)
        self.streams[sid] = stream
        self.factory.h2Streams += 1
        stream.start(event.headers, event.stream_ended is not None)

    def _dataReceived(self, event: DataReceived) -> None:
        stream = self.streams.get(event.stream_id)
        length = event.flow_controlled_length
        if not event.data and event.stream_ended is None:
            self._controlFrame(event)
        if stream is None:
            # A stream that is over: its window still counts.
            if length:
                self.acknowledge(event.stream_id, length)
            return
        stream.dataReceived(event.data, length)

    def _streamEnded(self, event: StreamEnded) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.streamEnded()

    def _trailersReceived(self, event: TrailersReceived) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is not None:
            stream.trailersReceived(event.headers)

    def _streamReset(self, event: StreamReset) -> None:
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        stream.gone()
        self._countReset()

    def _windowUpdated(self, event: WindowUpdated) -> None:
        # A client reading response DATA sends WINDOW_UPDATEs for it: those
        # are paid for by the DATA frames sent (windowCredit); any other is
        # a control frame, so a flood of them is one.
        if event.delta and self.windowCredit > 0:
            self.windowCredit -= 1
        else:
            self._controlFrame(event)
        if event.stream_id:
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream.flushData()
        else:
            self._flushStreams()

    def _settingsChanged(self, event: RemoteSettingsChanged) -> None:
        self._controlFrame(event)
        changed = event.changed_settings
        if SettingCodes.HEADER_TABLE_SIZE in changed:
            # h2 sizes its encoder's table as the client allows, up to 2
            # GiB, and every response field sent is kept in it: keep it to
            # the default the protocol starts with (as nghttp2 does).
            encoder = self.h2.encoder
            if encoder.header_table_size > ENCODER_TABLE_SIZE:
                encoder.header_table_size = ENCODER_TABLE_SIZE
        if SettingCodes.INITIAL_WINDOW_SIZE in changed:
            self._flushStreams()

    def _terminated(self, event: ConnectionTerminated) -> None:
        # The client said GOAWAY: it opens no more streams; the open ones
        # are answered, then the connection closes.
        self.goingAway = True
        if not self.streams:
            self._close()

    def _flushStreams(self) -> None:
        for stream in list(self.waiting):
            stream.flushData()

    # -- abuse ---------------------------------------------------------------

    def _window(self) -> None:
        now = self.seconds()
        if now - self._windowStart >= self.settings.abuseWindow:
            self._windowStart = now
            self._resets = 0
            self._controlFrames = 0

    def _countReset(self) -> None:
        self._window()
        self._resets += 1
        if self._resets > self.settings.maxResets:
            self.calm("streams reset or refused", self._resets)

    def _controlFrame(self, event: object, count: int = 1) -> None:
        self._window()
        self._controlFrames += count
        if self._controlFrames > self.settings.maxControlFrames:
            self.calm("control frames", self._controlFrames)

    def calm(self, what: str, count: int) -> None:
        """
        The client abuses the connection: GOAWAY C{ENHANCE_YOUR_CALM} and
        close, dropping its streams.
        """
        if self.closed:
            return
        factory = self.factory
        factory.h2Calmed += 1
        factory.log.warn(  # noqa: G010
            "closing HTTP/2 client {client}: {count} {what} in {window}s "
            "(over the limit): GOAWAY ENHANCE_YOUR_CALM",
            client=self.clientName, count=count, what=what, window=self.settings.abuseWindow)
        self._goAway(ErrorCodes.ENHANCE_YOUR_CALM)
        self._close()

    # -- what streams ask ------------------------------------------------------

    def acknowledge(self, sid: int, n: int) -> None:
        """
        The backend took C{n} bytes of stream C{sid}'s DATA: open the
        client's windows by as much (h2 batches the WINDOW_UPDATEs).
        """
        if self.closed:
            return
        # (A stream closed meanwhile gets the connection's window back
        # only: h2 knows.)
        self.h2.acknowledge_received_data(n, sid)
        self.flushSoon()

    def sendHeaders(self, sid: int, fields: list[tuple[bytes, bytes]], end: bool) -> None:
        """
        Send HEADERS on stream C{sid}.
        """
        try:
            self.h2.send_headers(sid, fields, end_stream=end)
        except (StreamClosedError, ProtocolError) as e:
            self.factory.log.info(
                "HTTP/2 client {client}: cannot send headers on stream {sid}: {why}",
                client=self.clientName, sid=sid, why=str(e))
            stream = self.streams.get(sid)
            if stream is not None:
                stream.reset(ErrorCodes.INTERNAL_ERROR)
            return
        self.flushSoon()

    def endStream(self, sid: int) -> None:
        """
        End stream C{sid} (all its DATA is sent).
        """
        try:
            self.h2.end_stream(sid)
        except (StreamClosedError, ProtocolError):
            return
        self.flushSoon()

    def resetStream(self, sid: int, code: int) -> None:
        """
        Reset stream C{sid} with C{code}.
        """
        try:
            self.h2.reset_stream(sid, code)
        except (StreamClosedError, ProtocolError):
            return
        self.flushSoon()

    def streamClosed(self, stream: H2Stream) -> None:
        """
        C{stream} is over: forget it; after a GOAWAY, close once none is
        left.
        """
        if self.streams.get(stream.streamId) is stream:
            del self.streams[stream.streamId]
        if self.goingAway and not self.streams and not self.closed:
            self._close()

    def dueBy(self, deadline: float) -> None:
        """
        Make sure the timer wakes by C{deadline}.
        """
        timer = self._timer
        if timer is not None and timer.getTime() > deadline:
            timer.reset(max(0.0, deadline - self.seconds()))

    # -- writing ---------------------------------------------------------------

    def flushSoon(self) -> None:
        """
        Write what h2 has to send: now, or at the end of the read being
        handled (one write for all its answers).
        """
        if not self._reading:
            self._flush()

    def _flush(self) -> None:
        if self.closed:
            return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)

    def pauseProducing(self) -> None:
        """
        The client does not read: read no more frames from it, and pause
        every stream's backend.
        """
        self.writePaused = True
        self._pausedSince = self.seconds()
        self.transport.pauseProducing()
        for stream in list(self.streams.values()):
            stream.updateProducer()

    def resumeProducing(self) -> None:
        """
        The client reads again.
        """
        self.writePaused = False
        self._pausedSince = None
        if not self.closed:
            self.transport.resumeProducing()
        for stream in list(self.streams.values()):
            stream.updateProducer()

    def stopProducing(self) -> None:
        """
        The connection is going: L{connectionLost} follows.
        """

    def _goAway(self, code: int) -> None:
        """
        Send GOAWAY with C{code} and the last stream id taken.  Built here,
        not by h2's C{close_connection}, which would refuse to send on the
        open streams after it.
        """
        self._flush()
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.h2.highest_inbound_stream_id
        frame.error_code = code
        if not self.closed:
            self.transport.write(frame.serialize())

    def stopIfIdle(self, idleFor: float = 0.0) -> None:
        """
        A graceful stop began: GOAWAY with the last stream id; the open
        streams finish, then the connection closes (now, if none is open).
        The client opens a new connection for what it sends next, so
        C{idleFor} (how long an HTTP/1.1 client must have been quiet) does
        not apply: no request of its can be cut.
        """
        if self.closed or self.goingAway:
            return
        self.goingAway = True
        self._goAway(ErrorCodes.NO_ERROR)
        if not self.streams:
            self._close()

    def _close(self) -> None:
        """
        Close once what is queued is written (drop every stream), but not
        later than the idle timeout.

        Over TCP only the write side is shut (after the GOAWAY), and what
        the client still sends is read and dropped for L{LINGER} seconds,
        as nginx's lingering close does: closing with its frames unread
        would make the kernel reset the connection, and the client could
        lose the GOAWAY that says why.
        """
        self._flush()
        self.closed = True
        for stream in list(self.streams.values()):
            stream.gone()
        self.streams.clear()
        transport = self.transport
        idleTimeout = self.factory.idleTimeout
        if hasattr(transport, "loseWriteConnection") and not self.writePaused:
            transport.loseWriteConnection()
            wait = min(LINGER, idleTimeout)
        else:
            transport.loseConnection()
            wait = idleTimeout
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._timer = self.factory.reactor.callLater(wait, transport.abortConnection)

    # -- the one timer -----------------------------------------------------------

    def _checkTimer(self) -> None:
        """
        Act on whichever deadline has passed, and wake again by the next
        (never more than the request timeout ahead): each stream's response
        deadline, its request body's stall (request timeout) and its
        idleness (idle timeout); an unfinished header block (request
        timeout); the connection with no stream, or whose client reads
        nothing (idle timeout).
        """
        self._timer = None
        if self.closed:
            return
        factory = self.factory
        now = self.seconds()
        requestTimeout = factory.requestTimeout
        idleTimeout = factory.idleTimeout
        partial = self._partialSince
        if partial is not None and now >= partial + requestTimeout:
            factory.log.info("closing HTTP/2 client {client}: header block not finished in {t}s",
                             client=self.clientName, t=requestTimeout)
            self._close()
            return
        deadline = now + requestTimeout
        paused = self._pausedSince
        if paused is not None:
            # The client has read nothing for the idle timeout: abort (a
            # graceful close would wait on it).
            stalled = paused + idleTimeout
            if now >= stalled:
                factory.log.info(
                    "aborting HTTP/2 client {client}: it read nothing for {idle:.1f}s",
                    client=self.clientName, idle=now - paused)
                self.transport.abortConnection()
                return
            deadline = min(deadline, stalled)
        if not self.streams:
            idle = self._lastActivity + idleTimeout
            if now >= idle:
                self.stopIfIdle()
                return
            deadline = min(deadline, idle)
        for stream in list(self.streams.values()):
            if stream.closed:
                continue
            # Nothing moved either way (a stalled backend, a client that
            # does not open its window) for the idle timeout: reset.
            idle = stream.lastActivity + idleTimeout
            if now >= idle:
                factory.log.info(
                    "HTTP/2 client {client}: stream {sid} idle for {idle:.1f}s: reset",
                    client=self.clientName, sid=stream.streamId, idle=now - stream.lastActivity)
                stream.reset(ErrorCodes.CANCEL)
                continue
            deadline = min(deadline, idle)
            ex = stream.exchange
            if ex is None or ex.over:
                continue
            due = ex.deadline
            if due:
                if now >= due:
                    ex.timedOut()
                    continue
                deadline = min(deadline, due)
            if stream.reading:
                stall = stream.lastRead + requestTimeout
                if now >= stall:
                    ex.requestStalled()
                    continue
                deadline = min(deadline, stall)
        self._flush()
        if not self.closed:
            self._timer = factory.reactor.callLater(max(0.0, deadline - now), self._checkTimer)


@implementer(IHalfCloseableProtocol)
class ProtocolSniffer(Protocol):
    """
    The first protocol of a connection to a listener that speaks HTTP/2 as
    well as HTTP/1.1: it chooses between them by ALPN (C{h2} over TLS) or
    by the first bytes (the HTTP/2 connection preface, for h2c by prior
    knowledge), then hands the transport over to the chosen protocol, so
    that the reactor (or the TLS layer) calls it directly from then on:
    no cost per read after the first.

    Until the choice, a client that sends nothing is closed after the
    request timeout.
    """

    transport: Any

    def __init__(self, factory: Any, settings: HTTP2Settings) -> None:
        self.factory = factory
        self.cleartext = settings.cleartext
        self.chosen: Protocol | None = None
        self._buffer = b""
        self._timer: Any = None

    def connectionMade(self) -> None:
        self._timer = self.factory.reactor.callLater(
            self.factory.requestTimeout, self.transport.abortConnection)

    def _choose(self, data: bytes) -> bool | None:
        """
        HTTP/2 or not, or L{None} while the bytes could still be either.
        """
        negotiated = getattr(self.transport, "negotiatedProtocol", None)
        if negotiated is not None:
            return bool(negotiated == b"h2")
        if not self.cleartext:
            return False
        n = min(len(data), len(PREFACE))
        if data[:n] != PREFACE[:n]:
            return False
        return True if n == len(PREFACE) else None

    def dataReceived(self, data: bytes) -> None:
        chosen = self.chosen
        if chosen is not None:
            chosen.dataReceived(data)
            return
        data = self._buffer + data
        http2 = self._choose(data)
        if http2 is None:
            self._buffer = data
            return
        self._buffer = b""
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        chosen = self.chosen = self.factory.chosen(self, http2)
        transport = self.transport
        # The transport calls its protocol through one of these: point it
        # at the chosen one (if it is neither, this one relays).
        if getattr(transport, "protocol", None) is self:
            transport.protocol = chosen
        elif getattr(transport, "wrappedProtocol", None) is self:
            transport.wrappedProtocol = chosen
        chosen.makeConnection(transport)
        chosen.dataReceived(data)

    def readConnectionLost(self) -> None:
        """
        The client shut its side before choosing: close.
        """
        self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Nothing to do.
        """

    def stopIfIdle(self, idleFor: float = 0.0) -> None:
        """
        A graceful stop began: nothing is in flight yet, close.
        """
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        chosen = self.chosen
        if chosen is not None:
            chosen.connectionLost(reason)
            return
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        self.factory.clients.discard(self)
        self.factory.clientGone()
