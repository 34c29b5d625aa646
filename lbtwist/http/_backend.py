"""
A backend connection of HTTP mode: it writes what its exchange gives it
and translates llhttp's response callbacks into calls on the exchange
(L{lbtwist.http._exchange.Exchange}).  Between exchanges it waits in the
idle pool; after a 101 it relays raw bytes for a tunnel.
"""

from __future__ import annotations

import weakref
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from ..dial import BackendProtocol
from ..pool import Backend
from ..tcp import setNoDelay
from ..writethrough import writeNow
from ._plan import (
    AS_IS,
    BadTrailer,
    TrailerSection,
    fieldsSize,
    headBytesHeld,
    rawResponseFields,
    specialLines,
    trailerBlock,
    trailerFields,
)
from ._strict import RESPONSE_HEADS_AS_BYTES, ReadFields


class ResponseHeadTooLarge(Exception):
    """
    A response head is over C{http.max-response-header-size}.
    """


# What a response head takes that its fields and reason do not count
# against the limit: C{HTTP/1.1 200 }, the status line's CRLF and the
# head's last one.
_HEAD_FRAME = 17

# What a backend that answered a plain request in TLS fails with.
ANSWERED_IN_TLS = "answered in TLS: give the pool a tls: block"


class _Unasked(Exception):
    """
    A response began in a read that began before its request went (the
    request took the connection as the response before it ended): the
    backend sent it unasked, and it is no answer to that request.
    """


def looksLikeTLS(data: bytes) -> bool:
    """
    Whether C{data} starts as a TLS record does: an alert (0x15) or a
    handshake (0x16) of version 3.x, which no HTTP response starts with.
    """
    return len(data) >= 2 and data[0] in (0x15, 0x16) and data[1] == 0x03


@implementer(IPushProducer)
class BackendConnection(BackendProtocol):
    """
    A connection to a backend, serving one exchange at a time and kept
    alive between them.

    @ivar exchange: the exchange it serves now, if any.
    @ivar key: its key in the idle pool.
    @ivar requests: requests sent on it.
    @ivar reusable: it may serve another request once this one is done.
    @ivar lost: it is closed.
    @ivar tunnel: the exchange whose tunnel it carries, after a 101.
    """

    parser: HttpResponseParser
    _fieldsParser: HttpResponseParser
    transport: Any
    log = Logger()
    # Its attributes in slots, as L{lbtwist.http._client.ClientConnection}'s.
    __slots__ = (
        "_asBytes", "_awaiting", "_bytesParser", "_feeding", "_fieldsParser",
        "_finishAfterFeed", "_forward", "_headEnd",
        "_headers", "_headsAsBytes", "_inHead", "_rawHead", "_read", "_reason", "_skipBody",
        "backend", "connected", "exchange", "factory", "idleSince", "key", "lost", "parser",
        "paused", "proxyHeader", "requests", "reusable", "transport", "tunnel",
    )
    # The read that brings a Content-Length body's last byte ends the
    # response too, in the same call (see L{H2Stream.sendBody}).
    endsWithLastByte = True
    # The backends said to answer in TLS, each logged once.
    _toldTLS: weakref.WeakSet[Backend] = weakref.WeakSet()

    def __init__(self, factory: Any, backend: Backend, key: Any,
                 proxyHeader: bytes | None) -> None:
        self.factory = factory
        self.backend = backend
        self.key = key
        self.proxyHeader = proxyHeader
        self.exchange: Any = None
        self.lost = False
        self.idleSince = 0.0
        self.requests = 0
        self.reusable = True
        self.tunnel: Any = None
        self.paused = False
        self._skipBody = False
        self._finishAfterFeed = False
        # The response head being parsed: its reason and headers, the bytes
        # read while it was unfinished (-1 while it is in the read it began
        # in), and the size of the read being fed.
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._rawHead = -1
        self._feeding = 0
        # llhttp may hold part of a head, or of a chunked body's trailer
        # section (when C{_headers} is a L{TrailerSection}): what it holds
        # is bounded.
        self._inHead = False
        # Bytes of a Content-Length body still to relay as they come,
        # without the parser (see L{_fastForward}).
        self._forward = 0
        # A response head read whole in one read is relayed as its bytes
        # (see L{_chooseParser}): its parser is then C{_bytesParser}, whose
        # callbacks are C{_asBytes}'s (both made at the first such head),
        # and llhttp calls none per field; another is read by
        # C{_fieldsParser}.  Until a head needs its fields after all: from
        # then on they all do.
        self._asBytes: _HeadAsBytes | None = None
        self._bytesParser: HttpResponseParser | None = None
        self._headsAsBytes = RESPONSE_HEADS_AS_BYTES
        # A request went, and no byte of its response was read yet.
        self._awaiting = False
        # The read a head read as its bytes is in, and the head's end there.
        self._read: bytes | None = None
        self._headEnd = 0

    def connectionMade(self) -> None:
        # Made here, not in __init__: a protocol built for a connection
        # that fails is never connected, and the parser (which refers back
        # to it) would make it a cycle.
        self.parser = self._fieldsParser = HttpResponseParser(self)
        setNoDelay(self.transport)
        if self.proxyHeader is not None:
            self.transport.write(self.proxyHeader)

    # -- what the exchange asks ----------------------------------------------

    def sendHead(self, head: bytes) -> None:
        """
        Send a request head.
        """
        writeNow(self.transport, head)
        self.backend.bytesIn += len(head)
        self._awaiting = True

    def sendBody(self, chunked: bool, body: bytes) -> None:
        """
        Send a piece of the request body, as a chunk if the request is
        chunked.
        """
        if chunked:
            self.transport.writeSequence((b"%x\r\n" % len(body), body, b"\r\n"))
        else:
            writeNow(self.transport, body)
        self.backend.bytesIn += len(body)

    def endBody(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """
        End a chunked request body, with its C{trailers} (already filtered)
        if any.
        """
        if trailers:
            self.transport.write(b"0\r\n" + trailerBlock(trailers))
        else:
            self.transport.write(b"0\r\n\r\n")

    def sendTunnel(self, data: bytes) -> None:
        """
        Relay bytes of a tunnel from the client.
        """
        writeNow(self.transport, data)
        self.backend.bytesIn += len(data)

    def abortNow(self) -> None:
        """
        Close this connection at once (a drain's grace period is over): the
        request in flight is retried if that is safe, else cut short.
        """
        self.reusable = False
        self.transport.abortConnection()

    def pauseProducing(self) -> None:
        """
        The client cannot take more of the response for now.
        """
        self.paused = True
        self.transport.pauseProducing()

    def resumeProducing(self) -> None:
        """
        The client can take more.
        """
        self.paused = False
        self.transport.resumeProducing()

    def stopProducing(self) -> None:
        """
        The client is gone.
        """
        self.transport.loseConnection()

    # -- reading -----------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            n = len(data)
            tunnel.bytesOut += n
            self.backend.bytesOut += n
            tunnel.client.tunnelData(data)
            return
        ex = self.exchange
        if ex is None:
            # Nothing was asked: a backend that talks now cannot be trusted
            # with the next request.
            self.reusable = False
            self.transport.loseConnection()
            return
        ex.client.backendActive()
        if self._forward:
            self._fastForward(ex, data)
            return
        if self._awaiting:
            self._awaiting = False
            if self._headsAsBytes and ex.headsAsBytes and ex.client.headsAsBytes:
                self._chooseParser(data)
            else:
                # (An HTTP/2 client's, or one a route changes the fields of.)
                self.parser = self._fieldsParser
        self._feeding = len(data)
        again = False
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as e:
            rest = data[e.args[0]:] if e.args else b""
            if self.tunnel is not None and rest:
                self.dataReceived(rest)
            return
        except HttpParserError as e:
            if isinstance(e.__context__, _Unasked):
                # The request goes again on a new connection, as for a
                # pooled one found closed (see Exchange.backendLost).
                self.reusable = False
                self.transport.loseConnection()
                return
            again = isinstance(e.__context__, ReadFields)
            if not again:
                self.reusable = False
                if not self._finishAfterFeed:
                    self._malformed(e, data)
                    return
            # (Bytes after a reply to HEAD in its read: the reply is whole
            # and goes on; they are dropped with the parser, and the
            # connection closes.)
        if again:
            # Nothing of the head went to the exchange: read it again, with
            # its fields, as every head on this connection now.  (Out of the
            # handler: an error of the second reading is not this one's.)
            self._headsAsBytes = False
            self._read = self._asBytes = self._bytesParser = None
            self.parser = self._fieldsParser = HttpResponseParser(self)
            self.dataReceived(data)
            return
        if self._inHead:
            # llhttp (and httptools) keep an unfinished head until it ends:
            # bound what a backend can make us hold, to the limit and a read.
            section = self._headers
            ex = self.exchange
            if self._finishAfterFeed:
                # A message began after a reply to HEAD in its read: it is
                # dropped with the parser, and the connection closes.
                self.reusable = False
            elif not isinstance(section, TrailerSection):
                raw = self._rawHead = headBytesHeld(self._rawHead, self._reason, section, len(data))
                if raw > self.factory.maxResponseHeaderSize + _HEAD_FRAME:
                    if ex is not None:
                        self._headTooLarge(ex)
                    return
            elif ex is not None and section.overAfter(
                    len(data), ex.bytesOut, self.factory.maxResponseHeaderSize):
                # (A trailer line; the body's data is not counted.)
                self._headTooLarge(ex, "trailers")
                return
        ex = self.exchange
        if ex is not None:
            response = ex.response
            if response is not None:
                ex.client.flushHead(ex)
                if response.framing is AS_IS and not self._skipBody:
                    # The rest of a Content-Length body goes on as it comes,
                    # as HAProxy fast-forwards it: no parsing, no copy.
                    self._forward = response.length - ex.bytesOut
        if self._finishAfterFeed:
            self._finishAfterFeed = False
            self._skipBody = False
            self._newParser()
            ex = self.exchange
            if ex is not None:
                ex.responseComplete()
        if self.exchange is None and not self.reusable and not self.lost:
            # Bytes came after the response it was pooled on: it cannot be
            # trusted with another request.
            self.factory.idle.discard(self.key, self)
            self.transport.loseConnection()

    def _chooseParser(self, data: bytes) -> None:
        """
        The first read of a response: a head that ends in it is read as its
        bytes (the parser calls no callback per field, and the head goes on
        as it came: L{_headBytesComplete}); another is read as fields.
        """
        end = data.find(b"\r\n\r\n")
        # (Only a read that begins with an HTTP status line: llhttp skips
        # empty lines before one, so that the read's first empty line may
        # be one of them, and it takes RTSP/ and ICE/ status lines, whose
        # reason is not where an HTTP one's is.  From an "H", llhttp takes
        # "HTTP/" only.)
        if end >= 0 and data[0] == 72:  # 72: "H"
            self._read = data
            self._headEnd = end
            parser = self._bytesParser
            if parser is None:
                asBytes = self._asBytes = _HeadAsBytes(self)
                parser = self._bytesParser = HttpResponseParser(asBytes)
            self.parser = parser
        else:
            # (Both parsers are kept, each between two messages: a backend
            # whose heads come whole and in pieces in turn makes none.)
            self.parser = self._fieldsParser

    def _newParser(self) -> None:
        """
        A parser for the next response, of the kind the last one was (this
        one saw only part of its response).
        """
        if self.parser is self._bytesParser:
            self.parser = self._bytesParser = HttpResponseParser(self._asBytes)
        else:
            self.parser = self._fieldsParser = HttpResponseParser(self)

    def _malformed(self, e: HttpParserError, data: bytes) -> None:
        """
        llhttp refused the response in C{data} (or its head is over the
        limit): fail its exchange, and close.
        """
        ex = self.exchange
        if ex is not None:
            if isinstance(e.__context__, ResponseHeadTooLarge):
                self._headTooLarge(ex)
                return
            if ex.response is None and looksLikeTLS(data):
                self._answeredInTLS()
                ex.backendFailed("response", ANSWERED_IN_TLS)
            else:
                ex.backendFailed("response", f"malformed response: {e}")
        self.transport.loseConnection()

    def _fastForward(self, ex: Any, data: bytes) -> None:
        """
        Relay C{data}, the next bytes of a Content-Length body, and end the
        response once it is all there.
        """
        forward = self._forward
        rest = b""
        if len(data) > forward:
            data, rest = data[:forward], data[forward:]
        self._forward = forward - len(data)
        ex.responseBody(data)
        if self._forward:
            return
        # The parser saw the head and part of the body only: the next
        # response gets a new one.  Bytes after the body in its read were
        # sent unasked: the connection is not pooled (a request that took it
        # as the response ends would read them as its answer).
        if rest or not self.parser.should_keep_alive():
            self.reusable = False
        self._newParser()
        ex.responseComplete()
        if rest:
            self.dataReceived(rest)

    def _answeredInTLS(self) -> None:
        """
        Say, once per backend, that it answered a plain request in TLS: a
        pool with no C{tls} block in front of a TLS backend.
        """
        backend = self.backend
        if backend not in self._toldTLS:
            self._toldTLS.add(backend)
            self.log.warn("backend {backend} answered in TLS: give the pool a tls: block",
                          backend=backend.name)

    def _headTooLarge(self, ex: Any, what: str = "head") -> None:
        self.reusable = False
        ex.backendFailed(
            "response",
            f"response {what} over {self.factory.maxResponseHeaderSize} bytes",
        )
        if not self.lost:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.reusable = False
        # The parser refers back to this protocol (and so does _asBytes):
        # let it go, so that reference counting frees the connection now.
        del self.parser, self._fieldsParser
        self._asBytes = self._read = self._bytesParser = None
        self.backend.closers.discard(self)
        tunnel = self.tunnel
        if tunnel is not None:
            self.tunnel = None
            tunnel.client.tunnelClosed()
            tunnel.tunnelClosed()
            return
        ex = self.exchange
        if ex is not None:
            response = ex.response
            if response is not None and response.untilClose and reason.check(ConnectionDone):
                # A body delimited by the close ends cleanly only on a
                # clean close; a reset leaves it visibly truncated.
                ex.responseComplete()
            else:
                ex.backendLost(self)
        else:
            self.factory.idle.discard(self.key, self)

    # -- llhttp callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        if self.exchange is None:
            # A message after the response, in its read: a connection
            # pooled with its beginning would read the next response as
            # its continuation.
            self.reusable = False
        elif self._awaiting:
            # A message after the response, in its read, and a request
            # took the connection as that response ended (a client waiting
            # at the backend's maxconn, a pipelined one): not its answer.
            raise _Unasked()
        self._reason = b""
        self._headers = []
        self._rawHead = -1
        self._inHead = True

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        # (After a reply to HEAD, fields of what follows in its read are
        # collected too, and dropped: see on_headers_complete.)
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._inHead = False
        if self._skipBody:
            # What follows a reply to HEAD in its read: dropped unmeasured
            # (its fields were collected, and count for nothing), and the
            # connection, which sent more than it was asked for, closes.
            self.reusable = False
            return
        factory = self.factory
        if ((self._rawHead >= 0 or self._feeding > factory.measuredAbove)
                and fieldsSize(self._headers) + len(self._reason)
                > factory.maxResponseHeaderSize):
            # (Only a head read in pieces, or in a read over measuredAbove,
            # may be over the limit: only such a head is measured.)
            raise ResponseHeadTooLarge()
        ex = self.exchange
        if ex is None:
            return
        if ex.responseHead(self.parser.get_status_code(), self._reason, self._headers):
            self.skipBody()

    def _headBytesComplete(self) -> None:
        """
        llhttp read a response head whole, in the read it began in (see
        L{_chooseParser}): hand it to the exchange as its bytes, with the
        fields the plan does not relay as they are; or read it again as
        fields if it needs them.
        """
        self._inHead = False
        data = self._read
        if self._skipBody or data is None:
            # What follows a reply to HEAD, or a response, in their read.
            self.reusable = False
            return
        self._read = None
        status = self.parser.get_status_code()
        if status < 200:
            raise ReadFields()
        head = data[:self._headEnd + 2]
        special = specialLines(head)
        for name, _ in special:
            if name == b"transfer-encoding":
                raise ReadFields()
        factory = self.factory
        if len(head) > factory.measuredAbove:
            reason, fields = rawResponseFields(head)
            if fieldsSize(fields) + len(reason) > factory.maxResponseHeaderSize:
                raise ResponseHeadTooLarge()
        ex = self.exchange
        if ex is None:
            return
        if ex.responseHead(status, b"", None, (head, special)):
            self.skipBody()

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is None or self._skipBody:
            self.reusable = False
            return
        ex.responseBody(body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is None or self._skipBody:
            return
        if ex.response is None:
            # An interim response: the final one follows on the same parser.
            return
        if not self.parser.should_keep_alive():
            self.reusable = False
        ex.responseComplete()

    def _trailers(self, ex: Any, fields: list[tuple[bytes, bytes]]) -> Any:
        """
        The response's trailers as they may be relayed: none if one is
        invalid or they are over the response head's size limit (the body
        went out already; the client sees no trailers rather than bad ones).
        """
        limit = self.factory.maxResponseHeaderSize
        try:
            if fieldsSize(fields) > limit:
                raise BadTrailer(f"over {limit} bytes")
            return trailerFields(fields) or None
        except BadTrailer as e:
            self.log.warn(  # noqa: G010
                "backend {backend} sent bad trailers to {client}: {why}; dropped",
                backend=self.backend.name, client=ex.client.clientName, why=str(e))
            return None

    def on_chunk_header(self) -> None:
        ex = self.exchange
        section = self._headers
        if not isinstance(section, TrailerSection):
            # The body's first chunk: the head's fields went to the
            # exchange; llhttp's next ones are trailers.
            section = self._headers = TrailerSection()
            self._inHead = True
        section.chunkHeader(ex.bytesOut if ex is not None else 0)

    def on_chunk_complete(self) -> None:
        ex = self.exchange
        section = self._headers
        if not (isinstance(section, TrailerSection)
                and section.chunkEnded(ex.bytesOut if ex is not None else 0)):
            return
        # The last chunk: with trailers, the response ends here (before
        # on_message_complete, which finds nothing left to do).
        self._inHead = False
        if section and ex is not None and not self._skipBody and ex.response is not None:
            if not self.parser.should_keep_alive():
                self.reusable = False
            ex.responseComplete(self._trailers(ex, section))

    def skipBody(self) -> None:
        """
        The response has no body whatever its head says (a reply to HEAD):
        finish once this read is parsed, with a fresh parser for the next.
        """
        self._skipBody = True
        self._finishAfterFeed = True
        self._inHead = False
        if not self.parser.should_keep_alive():
            self.reusable = False


class _HeadAsBytes:
    """
    The llhttp callbacks of a backend connection that reads a response
    head as its bytes: none for its status line or fields (see
    L{BackendConnection._chooseParser}).
    """

    __slots__ = ("on_body", "on_headers_complete", "on_message_begin", "on_message_complete")

    def __init__(self, conn: BackendConnection) -> None:
        self.on_message_begin = conn.on_message_begin
        self.on_headers_complete = conn._headBytesComplete
        self.on_body = conn.on_body
        self.on_message_complete = conn.on_message_complete
