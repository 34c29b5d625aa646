"""
A client connection of HTTP mode (HTTP/1.1): it translates llhttp's request
callbacks into exchanges (L{lbtwist.http._exchange.Exchange}), serves them
in order, and writes their responses as HTTP/1.1.

Pipelined requests queue behind the first; the client is not read while a
request waits for its turn, so a client cannot make the proxy queue
without bound.  One timer per connection watches every deadline of it: the
request head and each stall of a request body (C{timeouts.request}), the
response head (C{timeouts.response}), and silence either way while a
request is in flight or the connection waits for the next
(C{timeouts.idle}).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from ..endpoints import hostPort
from ..routing import applyHeaderActions
from ..tcp import describe, setNoDelay
from ..writethrough import writeNow
from ._errors import ERRORS_CLOSE, ERRORS_KEEP, BadRequest, localResponse, parserRefusal
from ._exchange import WAITING, Exchange, IClientSide
from ._plan import (
    CHUNKED,
    IDEMPOTENT,
    BadTrailer,
    RawHead,
    TrailerSection,
    declaredLength,
    fieldsSize,
    headBytesHeld,
    interimHead,
    planRawResponse,
    planResponse,
    rawResponseFields,
    trailerBlock,
    trailerFields,
)
from ._strict import REQUEST_HEADS_WHOLE, ReadFields, requestParser

# What follows the target of an HTTP/1.1 request line.  Found there in the
# read whose first byte began the request (a head read whole, in a read in
# which no request ended before it), it is the request's version, read
# without llhttp's get_http_version(), which formats "1.1" from two
# integers (about 2,000 instructions, 1.5% of a request): the method and
# target are llhttp's, and a target has no space or CR, so no other part
# of the read can be found there, provided the line begins where it is
# counted from.  llhttp skips blank lines before the method and spaces
# before the target, and an HTTP/0.9 line so moved (CONNECT HTTP/1.1, its
# target "HTTP/1.1") has " HTTP/1.1\r\n" there; so the read must also
# have one space, and one only, right after the method's length (after a
# blank line, a letter of the method or a CR or LF is there).
_HTTP11 = b" HTTP/1.1\r\n"

# How a request head ends.
_HEAD_END = b"\r\n\r\n"


def authorityOf(address: Any) -> bytes:
    """
    The authority (C{host:port}) of a local address, for the Host of an
    HTTP/1.0 request that names none.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if not isinstance(host, str):
        return b"localhost"
    return hostPort(host, port).encode("ascii", "replace")


class ClientPeer:
    """
    What a client connection of either protocol (HTTP/1.1, HTTP/2) tells
    its exchanges about the client: its address, the authority it reached,
    its PROXY-protocol header.
    """

    transport: Any
    factory: Any
    privateKeys: set[Any]
    # Made at the first use (most pools send no PROXY header): one attribute
    # fewer on every connection (see L{ClientConnection._requestTrailers}).
    _proxyHeaders: dict[Any, bytes] | None = None
    _timer: Any

    def identify(self) -> None:
        """
        Read the client's address and the local one off the transport (and
        turn Nagle off: responses go out as they come).
        """
        transport = self.transport
        setNoDelay(transport)
        peer = transport.getPeer()
        host = getattr(peer, "host", None)
        self.clientHost: bytes = host.encode("ascii", "replace") if isinstance(host, str) else b""
        self.clientName = describe(peer)
        self.localAuthority = authorityOf(transport.getHost())

    def proxyHeaderFor(self, make: Any) -> bytes:
        """
        The PROXY-protocol header C{make} gives for this client, made once.
        """
        headers = self._proxyHeaders
        if headers is None:
            headers = self._proxyHeaders = {}
        header = headers.get(make)
        if header is None:
            transport = self.transport
            header = headers[make] = make(transport.getPeer(), transport.getHost())
        return header

    def leave(self) -> None:
        """
        The connection closed: stop its timer, count it out, and close the
        idle backend connections private to it.
        """
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        factory = self.factory
        factory.clientGone()
        factory.clients.discard(self)
        if self.privateKeys:
            factory.closePrivate(self.privateKeys)


@implementer(IPushProducer, IHalfCloseableProtocol, IClientSide)
class ClientConnection(ClientPeer, Protocol):
    """
    A client's HTTP/1.1 connection: parses its requests and serves them in
    order.

    It is the producer registered with the backend connection of the
    current exchange; reading stops when either that backend cannot take
    more, or the proxy itself must wait (a backend is being connected, or a
    request is complete and its response is not).

    @ivar queue: the exchanges read and not yet answered, oldest first.
    @ivar closed: the connection is closed (or closing after a cut).
    """

    factory: Any
    parser: HttpRequestParser | None
    transport: Any
    protocol = "HTTP/1.1"
    # A usual response head goes on as its bytes (see sendHead).
    headsAsBytes = True
    # Every attribute a connection sets, in slots: the hot path reads and
    # writes them on each request, and a slot is faster than a dictionary
    # entry (and CPython stops sharing a class's dictionary keys past 30
    # attributes, which this class had).  One set elsewhere still works, in
    # the instance dictionary, slower: tests.test_http_unit.SlotsTests
    # fails until it is added here.
    __slots__ = (
        "_fatal", "_fatalAnswer", "_feeding", "_fresh", "_headStarted", "_headers", "_held",
        "_inHead", "_lastActivity", "_lastRead", "_parsing", "_pausedByPeer", "_producer",
        "_producerOn", "_rawHead", "_readClosed", "_reading", "_serving", "_timer", "_tunnel",
        "_tunnelExchange", "_upgradeData", "_url", "_whole", "_wholeHeads", "_wholeParser",
        "clientHost", "clientName", "closed", "connected", "factory", "localAuthority", "parser",
        "privateKeys", "queue", "transport",
    )
    # The trailers of its requests that had any, until they are over: a
    # class default, set on a connection only when a request has trailers.
    _requestTrailers: dict[Exchange, list[tuple[bytes, bytes]]] | None = None
    # The bytes of an upgrade request's declared body still to relay before
    # the 101: a class default, set on a connection only for such a body.
    _upgradeBody: int | None = None

    def __init__(self, factory: Any) -> None:
        self.factory = factory
        self.queue: deque[Exchange] = deque()
        self.closed = False
        self.privateKeys: set[Any] = set()
        # The exchange whose body is being read.
        self._parsing: Exchange | None = None
        # The head being read: its target and headers, the bytes read while
        # it was unfinished (-1 while it is in the read it began in), and
        # the size of the read being fed.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._rawHead = -1
        self._feeding = 0
        # The read being fed, until a request ends in it: a head that began
        # in it before that began at its first byte (see _HTTP11).
        self._fresh: bytes | None = None
        # llhttp may hold part of a head, or of a chunked body's trailer
        # section (when C{_headers} is a L{TrailerSection}): what it holds
        # is bounded.
        self._inHead = False
        self._headStarted: float | None = None
        self._pausedByPeer = False
        self._held = False
        self._reading = True
        self._fatal: int | None = None
        self._fatalAnswer = b""
        self._tunnel: Any = None
        self._tunnelExchange: Exchange | None = None
        self._upgradeData = b""
        self._readClosed = False
        self._timer: Any = None
        self._serving = False
        self._lastActivity = 0.0
        self._lastRead = 0.0
        # The backend connection relaying the current response, and whether
        # it is registered with the transport (only once a write queued:
        # a response that goes straight to the socket needs no pausing).
        self._producer: Any = None
        self._producerOn = False
        # A read that is one request head, whole, may be read without a
        # callback per field, by a parser of its own (made at the first
        # such read), with the exchange planned from its bytes before
        # (_whole, until that parser's callback takes it): see _wholeHead.
        self._wholeHeads = False
        self._wholeParser: HttpRequestParser | None = None
        self._whole: Exchange | None = None

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        self.identify()
        factory = self.factory
        # The fields' parser is made at the first read it is given: a
        # connection whose one request comes whole (a connection each)
        # makes only the other.
        self.parser = None
        self._wholeHeads = REQUEST_HEADS_WHOLE
        now = factory.seconds()
        self._lastActivity = now
        self._headStarted = now
        self._timer = factory.reactor.callLater(
            min(factory.requestTimeout, factory.idleTimeout), self._checkTimer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closed = True
        # The parser holds bound methods of this protocol: let it go, so
        # that reference counting frees the connection now rather than the
        # garbage collector on one of its passes.
        del self.parser
        self._wholeParser = None
        self._whole = None
        self._parsing = None
        if self._requestTrailers is not None:
            # (It refers to exchanges, which refer back to this connection.)
            self._requestTrailers = None
        self.leave()
        tunnel = self._tunnel
        self._tunnelExchange = None
        if tunnel is not None:
            self._tunnel = None
            tunnel.transport.loseConnection()
        queue = self.queue
        while queue:
            self._abandon(queue.popleft())

    def _abandon(self, ex: Exchange) -> None:
        """
        The client left before C{ex} was answered: drop it, and write its
        access-log line with status 0 (HAProxy logs such a request with
        its termination state, C{CD}).
        """
        if ex.over:
            return
        ex.abandon()
        self.factory.abandoned += 1
        self.factory.logAccess(ex)

    def readConnectionLost(self) -> None:
        """
        The client sent FIN.  A request it had not finished never will be:
        it is dropped and its backend connection aborted at once.  An
        idempotent request nothing was answered to yet is dropped too
        (C{http.abort-on-close}, on by default), as HAProxy's
        C{abortonclose} does: a client that closes is usually gone, and a
        backend should not work on for nobody.  Other requests (a POST, an
        answer under way) are answered; then the connection closes.
        """
        self._readClosed = True
        queue = self.queue
        ex = self._parsing
        self._parsing = None
        abort = self.factory.settings.abortOnClose
        dropped = [e for e in queue if e is ex or (
            abort and not e.responded and e.method in IDEMPOTENT and e.requestDone)]
        for e in dropped:
            responded = e.responded and not e.over
            queue.remove(e)
            self._abandon(e)
            self.factory.log.info(
                "client {client} closed its side before {what} was answered: aborted",
                client=self.clientName,
                what="its request" if e is not ex else "it finished its request",
            )
            if responded:
                # The client may be reading an answer it will not get whole.
                self.transport.loseConnection()
                return
        if not queue:
            self.transport.loseConnection()
        else:
            self._serve()

    def writeConnectionLost(self) -> None:
        """
        Our write side is shut: nothing to do.
        """

    def stopIfIdle(self, idleFor: float = 0.0) -> None:
        """
        A graceful stop began: close now if nothing is in flight (and the
        client sent nothing for C{idleFor} seconds: one that just did may
        have its next request on the way, which a close would cut).
        """
        if (not self.queue and self._tunnel is None and not self._inHead
                and self.factory.seconds() - self._lastActivity >= idleFor):
            self.transport.loseConnection()

    # -- the one timer -------------------------------------------------------

    def _checkTimer(self) -> None:
        """
        Act on whichever deadline of this connection has passed, and wake
        again by the next one (never more than the request or the idle
        timeout ahead, whichever is shorter, so a deadline set later is
        still met on time: the idle one of a connection whose response
        ends before then, too).
        """
        self._timer = None
        if self.closed:
            return
        factory = self.factory
        now = factory.seconds()
        queue = self.queue
        ex = queue[0] if queue else None
        if self._tunnel is not None or (ex is not None and ex.phase is not WAITING):
            # A request in flight or a tunnel: neither side may fall silent
            # for longer than the idle timeout (a stalled backend body, a
            # client that stopped reading), as HAProxy's timeout server and
            # timeout client say.  Abort: a graceful close would wait on
            # the stalled peer.
            deadline = self._lastActivity + factory.idleTimeout
            if now >= deadline:
                factory.log.info(
                    "aborting HTTP client {client}: nothing moved for {idle:.1f}s",
                    client=self.clientName, idle=now - self._lastActivity,
                )
                tunnel = self._tunnel
                self.transport.abortConnection()
                if tunnel is not None:
                    tunnel.transport.abortConnection()
                return
            if ex is not None:
                due = ex.deadline
                if due:
                    if now >= due:
                        ex.timedOut()
                        self._rearm()
                        return
                    deadline = min(deadline, due)
                if ex is self._parsing and self._reading:
                    stall = self._lastRead + factory.requestTimeout
                    if now >= stall:
                        ex.requestStalled()
                        self._rearm()
                        return
                    deadline = min(deadline, stall)
        elif self._headStarted is not None and not queue:
            deadline = self._headStarted + factory.requestTimeout
            if now >= deadline:
                if self._inHead:
                    self._refuse(408, "request head timed out")
                else:
                    self.transport.loseConnection()
                return
        else:
            deadline = self._lastActivity + factory.idleTimeout
            if now >= deadline:
                if queue:
                    factory.log.info(
                        "closing HTTP client {client}: idle for {idle:.1f}s",
                        client=self.clientName, idle=now - self._lastActivity,
                    )
                self.transport.loseConnection()
                return
        self._timer = factory.reactor.callLater(
            min(deadline - now, factory.requestTimeout, factory.idleTimeout), self._checkTimer
        )

    def _rearm(self) -> None:
        if self._timer is None and not self.closed:
            self._timer = self.factory.reactor.callLater(0, self._checkTimer)

    def dueBy(self, deadline: float) -> None:
        """
        Something is due by C{deadline}: make sure the timer wakes by then.
        """
        timer = self._timer
        # (DelayedCall.time: its getTime(), without the call.)
        if timer is not None and timer.time > deadline:
            timer.reset(max(0.0, deadline - self.factory.seconds()))

    # -- reading -----------------------------------------------------------

    def _updateReading(self) -> None:
        want = not (self._pausedByPeer or self._held)
        if want != self._reading and not self.closed:
            self._reading = want
            if want:
                # A stall of the request body counts from here.
                self._lastRead = self.factory.seconds()
                self.transport.resumeProducing()
            else:
                self.transport.pauseProducing()

    def pauseProducing(self) -> None:
        """
        The backend cannot take more of the request body for now.
        """
        self._pausedByPeer = True
        self._updateReading()

    def resumeProducing(self) -> None:
        """
        The backend can take more.
        """
        self._pausedByPeer = False
        self._updateReading()

    def stopProducing(self) -> None:
        """
        The backend connection is gone; the exchange decides what follows.
        """

    def holdRequest(self) -> None:
        """
        Stop reading until L{releaseRequest}: the proxy must not buffer more.
        """
        if not self._held:
            self._held = True
            self._updateReading()

    def releaseRequest(self) -> None:
        """
        Read again (unless the backend still pushes back).
        """
        if self._held:
            self._held = False
            self._updateReading()

    def dataReceived(self, data: bytes) -> None:
        tunnel = self._tunnel
        if tunnel is not None:
            self._lastActivity = self.factory.seconds()
            if self._upgradeBody is not None:
                data = self._upgradeBodyPart(data)
            self._tunnelExchange.bytesIn += len(data)  # type: ignore[union-attr]
            tunnel.sendTunnel(data)
            return
        if self._fatal is not None or self.closed:
            return
        factory = self.factory
        self._lastActivity = self._lastRead = factory.seconds()
        self._feeding = len(data)
        self._fresh = data
        parser = self.parser
        whole = None
        if (self._wholeHeads and not self._inHead and self._parsing is None
                and data.endswith(_HEAD_END) and len(data) <= factory.measuredAbove):
            # A read that may be one request head, whole, and no more: one
            # within the limits on a head, read between two requests.  It
            # is planned from its bytes first, and that plan is taken only
            # if llhttp reads the read as one head (see _wholeHead).  A read
            # that is not a usual head goes to the fields' parser alone,
            # read once, for a third of what a second parse and its
            # exception cost; and so do the connection's later heads, which
            # are seldom usual either (a proxy's X-Forwarded-For, HTTP/1.0,
            # pipelining), without being planned first.
            whole = self._whole = factory.wholeExchange(self, data, self._lastActivity)
            if whole is not None:
                parser = self._wholeParser or self._newWholeParser()
            else:
                self._wholeHeads = False
        if parser is None:
            parser = self.parser = requestParser(self)
        again = False
        try:
            parser.feed_data(data)
        except HttpParserUpgrade as e:
            # llhttp stops at the head: what follows (a declared body, then
            # the new protocol or more requests) is not parsed.
            self._fresh = None
            self._upgradeData = data[e.args[0]:] if e.args else b""
            length = declaredLength(self._headers)
            if length:
                self._upgradeBody = length
            self.holdRequest()
        except HttpParserError as e:
            if whole is not None and whole in self.queue:
                # llhttp read on past the head planned whole (never, if the
                # plan is right: see planWholeRequest): its exchange goes
                # nowhere, lest a backend get a head of what llhttp refused
                # or reads again as fields.
                self.queue.remove(whole)
            again = isinstance(e.__context__, ReadFields)
            if not again:
                refusal = parserRefusal(e, data)
                status, why, answer = refusal.status, str(refusal), refusal.answer
                # The cause's traceback holds this frame: kept in a local, it
                # would make the frame, the exception and this connection a
                # cycle.
                del refusal
                self._refuse(status, why, answer)
                return
        if again:
            # llhttp ended a head where none was planned (never, for a read
            # planned whole: see _wholeHead): nothing of it went anywhere.
            # Read it again, with its fields, as every head of this
            # connection from now on.  (Out of the handler: an error of the
            # second reading is not this one's.)
            self._wholeHeads = False
            self._wholeParser = None
            self.dataReceived(data)
            return
        if self._inHead:
            # llhttp buffers a header until it ends: bound what it may hold.
            section = self._headers
            if not isinstance(section, TrailerSection):
                raw = self._rawHead = headBytesHeld(self._rawHead, self._url, section, len(data))
                if raw > factory.maxHeaderSize + factory.maxRequestLine:
                    self._refuse(414 if not section else 431, "head too large")
                    return
            else:
                # A trailer line of a chunked body (its data is not counted).
                ex = self._parsing
                if ex is not None and section.overAfter(
                        len(data), ex.bytesIn, factory.maxHeaderSize):
                    self._refuse(431, "request trailers too large")
                    return
        queue = self.queue
        if queue and queue[0].phase is WAITING:
            self._serve()

    def _serve(self) -> None:
        """
        Start the first request of the queue, and the ones after it that
        are answered at once (a 503 with no backend): in a loop, not by
        recursion, however many a client pipelined.
        """
        if self._serving:
            return
        self._serving = True
        try:
            queue = self.queue
            while queue and not self.closed and queue[0].phase is WAITING:
                queue[0].start()
        finally:
            self._serving = False

    def _refuse(self, status: int, why: str, answer: bytes | None = None) -> None:
        """
        Answer an unacceptable request with C{status} (or C{answer}) and
        close, after the responses to the requests before it.
        """
        self._fatal = status
        self._fatalAnswer = ERRORS_CLOSE[status] if answer is None else answer
        self._inHead = False
        self.holdRequest()
        factory = self.factory
        factory.refused += 1
        factory.log.info(
            "refused request from {client}: {status} ({why})",
            client=self.clientName, status=status, why=why,
        )
        parsing, self._parsing = self._parsing, None
        queue = self.queue
        if parsing is not None and parsing in queue:
            queue.remove(parsing)
            responded = parsing.responded and not parsing.over
            # Its head may have gone to a backend already: cut that
            # connection so the backend never sees a complete request.
            parsing.abandon()
            if responded:
                self.transport.loseConnection()
                return
        if not queue:
            self._sendFatal()
            return
        if queue[0].phase is WAITING:
            # A complete request came before the bad one in the same read:
            # serve it (dataReceived returns before starting it); the error
            # follows its response.
            self._serve()

    def _sendFatal(self) -> None:
        assert self._fatal is not None
        self.transport.write(self._fatalAnswer)
        self._close()

    # -- llhttp callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        if self._headStarted is None:
            self._headStarted = self._lastActivity
        self._url = b""
        self._headers = []
        self._rawHead = -1
        self._inHead = True

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        factory = self.factory
        headers = self._headers
        url = self._url
        # The head's target and fields are held to their limits here, not
        # as they come (what llhttp holds meanwhile is bounded by
        # dataReceived), and measured only if it came in more than one
        # read, or in a read of more than factory.measuredAbove bytes: a
        # head of fewer bytes is within both limits (see measuredAbove).
        if self._rawHead >= 0 or self._feeding > factory.measuredAbove:
            if len(url) > factory.maxRequestLine:
                raise BadRequest("request line too long", 414)
            if fieldsSize(headers) > factory.maxHeaderSize:
                raise BadRequest("request head too large", 431)
        parser: Any = self.parser
        method = parser.get_method()
        line = self._fresh
        end = len(method)
        if (line is not None and self._rawHead < 0
                and line.startswith(_HTTP11, end + 1 + len(url))
                and line[end] == 32 and line[end + 1] != 32):  # 32: " "
            version = "1.1"
        else:
            version = parser.get_http_version()
        ex = factory.exchangeFor(
            self, method, url, version, headers, parser.should_keep_alive(),
            parser.should_upgrade(), self._lastActivity,
        )
        self._inHead = False
        self._headStarted = None
        self._parsing = ex
        queue = self.queue
        if queue and not queue[-1].over:
            # A pipelined request: read no further until those before it
            # are answered, so a client cannot make us queue without bound.
            self.holdRequest()
        queue.append(ex)

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        if ex is not None:
            ex.requestBody(body)

    def on_chunk_header(self) -> None:
        ex = self._parsing
        section = self._headers
        if not isinstance(section, TrailerSection):
            # The body's first chunk: the head's fields went to its
            # exchange; llhttp's next ones are trailers.
            head = section
            section = self._headers = TrailerSection()
            section.head = head
            self._inHead = True
        section.chunkHeader(ex.bytesIn if ex is not None else 0)

    def on_chunk_complete(self) -> None:
        ex = self._parsing
        fields = self._headers
        if not (isinstance(fields, TrailerSection)
                and fields.chunkEnded(ex.bytesIn if ex is not None else 0)):
            return
        # The last chunk: its trailers end the request here (before
        # on_message_complete, which finds nothing left to do).
        self._inHead = False
        if fields and ex is not None:
            # Checked as the head's fields are, and counted with them
            # against max-header-size; a bad one refuses the request while
            # it is still being parsed, so that its backend never sees it
            # complete.
            if fieldsSize(fields.head) + fieldsSize(fields) > self.factory.maxHeaderSize:
                raise BadRequest("request head too large", 431)
            try:
                trailers = trailerFields(fields)
            except BadTrailer as e:
                raise BadRequest(str(e)) from None
            if trailers:
                kept = self._requestTrailers or {}
                # (Those of exchanges over are no longer needed.)
                self._requestTrailers = {e: t for e, t in kept.items() if not e.over}
                self._requestTrailers[ex] = trailers
            self._parsing = None
            ex.requestComplete(trailers or None)

    def on_message_complete(self) -> None:
        # (What follows in this read did not begin at its first byte.)
        self._fresh = None
        ex = self._parsing
        if ex is not None:
            self._parsing = None
            ex.requestComplete()

    def _newWholeParser(self) -> HttpRequestParser:
        parser = self._wholeParser = requestParser(_WholeHead(self._wholeHead))
        return parser

    def _wholeHead(self) -> None:
        """
        llhttp read a request head whole, as all of a read (see
        L{dataReceived}): its one callback, with no field, target or end
        of message given (a request with neither Content-Length nor
        Transfer-Encoding ends with its head).  The exchange was planned
        from the read's bytes before llhttp read it
        (L{lbtwist.http._plan.planWholeRequest}), and is taken now that
        llhttp accepted them as that head.
        """
        ex = self._whole
        if ex is None:
            # (Not the head that was planned: read the read as fields.)
            raise ReadFields()
        self._whole = None
        # (Nothing of the read is needed once its head is planned: an idle
        # connection keeps none of it.)
        self._fresh = None
        self._headStarted = None
        queue = self.queue
        if queue and not queue[-1].over:
            # A pipelined request (see on_headers_complete).
            self.holdRequest()
        queue.append(ex)
        ex.requestComplete()
        if not ex.plan.keepAlive:
            # After a request that closes the connection, llhttp refuses
            # any other (what the fields' parser would have done with it):
            # all that follows goes to this parser, which read that one.
            self._wholeHeads = False
            self.parser = self._wholeParser

    def requestTrailers(self, ex: Exchange) -> list[tuple[bytes, bytes]] | None:
        """
        The trailers of C{ex}'s request, if it had any.
        """
        kept = self._requestTrailers
        return None if kept is None else kept.get(ex)

    # -- responses -----------------------------------------------------------

    def sendInterim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """
        Send an interim (1xx) response on.
        """
        self.transport.write(interimHead(status, reason, headers))

    def sendHead(self, ex: Exchange, status: int, reason: bytes,
                 headers: list[tuple[bytes, bytes]] | None, raw: RawHead | None = None) -> Any:
        """
        Plan the final response head; it is held to go out with the first
        body bytes.  A head given as its bytes goes on as it came if it is
        a usual one (L{planRawResponse}).
        """
        plan = ex.plan
        route = ex.route
        keepAlive = (plan.keepAlive and ex.requestDone and not ex.closeAfter
                     and not plan.upgrade and not self.factory.stopping)
        cookie = ex.upstream.cookieFor(ex) if ex.setCookie else None
        response = None
        if raw is not None:
            # (Given only if no route changes the fields: Exchange.headsAsBytes.)
            response = planRawResponse(
                status, raw[0], raw[1], ex.method, ex.version != "1.0", keepAlive, cookie)
            if response is None:
                reason, headers = rawResponseFields(raw[0])
        if response is None:
            assert headers is not None
            if route is not None and route.responseHeaders is not None:
                headers = applyHeaderActions(headers, route.responseHeaders)
            response = planResponse(
                status, reason, headers, ex.method, ex.version != "1.0", keepAlive, cookie)
        if response.closeAfter:
            ex.closeAfter = True
        return response

    def flushHead(self, ex: Exchange) -> None:
        """
        Send a held response head now.
        """
        response = ex.response
        head = response.head
        if head is not None:
            response.head = None
            self._send(head)

    def dropHeldHead(self, ex: Exchange) -> bool:
        """
        Drop a held response head; say whether there was one.
        """
        response = ex.response
        if response is not None and response.head is not None:
            response.head = None
            return True
        return False

    def sendBody(self, ex: Exchange, data: bytes) -> None:
        """
        Send a piece of the response body (as a chunk if the response is
        chunked), with the held head if it has not gone yet.
        """
        response = ex.response
        head = response.head
        if head is not None:
            response.head = None
            if response.framing is CHUNKED:
                self._send(b"".join((head, b"%x\r\n" % len(data), data, b"\r\n")))
            else:
                # (self._send, written out: every response's path.)
                writeNow(self.transport, head + data, 0, self._queued)
        elif response.framing is CHUNKED:
            self.transport.writeSequence((b"%x\r\n" % len(data), data, b"\r\n"))
            self._queued()
        else:
            self._send(data)

    def _send(self, data: bytes) -> None:
        """
        Write C{data} straight to the socket if nothing is queued; what
        queues makes the backend pausable.
        """
        writeNow(self.transport, data, 0, self._queued)

    def _queued(self) -> None:
        """
        Something waits in the transport's buffer: register the backend
        connection relaying the response, so that Twisted pauses it while
        the client does not read (from the next write on, as the buffer
        fills).
        """
        producer = self._producer
        if producer is not None and not self._producerOn:
            self._producerOn = True
            self.transport.registerProducer(producer, True)

    def endResponse(self, ex: Exchange, trailers: list[tuple[bytes, bytes]] | None) -> None:
        """
        End the response: the held head (if still held) and the last chunk,
        with the backend's trailers if the client asked for them
        (C{TE: trailers}); otherwise they are dropped, as RFC 9110 6.5.1
        allows.
        """
        response = ex.response
        head = response.head
        if response.framing is CHUNKED:
            last = (
                b"0\r\n" + trailerBlock(trailers) if trailers and ex.plan.trailers
                else b"0\r\n\r\n"
            )
            if head is not None:
                response.head = None
                self._send(head + last)
            else:
                self.transport.write(last)
                self._queued()
        elif head is not None:
            response.head = None
            self._send(head)

    def sendError(self, ex: Exchange, status: int) -> None:
        """
        Answer with a canned error.
        """
        self.transport.write((ERRORS_CLOSE if ex.closeAfter else ERRORS_KEEP)[status])

    def sendLocal(self, ex: Exchange, status: int, headers: Any, body: bytes) -> None:
        """
        Answer with a response the balancer makes itself.
        """
        self.transport.write(
            localResponse(status, headers, body, ex.method == b"HEAD", ex.closeAfter))

    def cutResponse(self, ex: Exchange) -> None:
        """
        Close so that the client sees the response cut short.
        """
        self._close()

    def _close(self) -> None:
        """
        Close once what is queued is written, but not later than the idle
        timeout: a client that stops reading holds nothing for longer.
        """
        self.closed = True
        self.transport.loseConnection()
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        self._timer = self.factory.reactor.callLater(
            self.factory.idleTimeout, self.transport.abortConnection)

    def upgradeSent(self, ex: Exchange, conn: Any) -> None:
        """
        The upgrade request went to the backend: its declared body follows
        it raw; what the client sends after that is held, unread, until the
        backend switches protocols (L{startTunnel}).  Until then it is HTTP
        that nothing has parsed: relayed at once, a backend that declines
        the upgrade would read it as requests of its own, smuggled past
        the balancer's checks.
        """
        if self._upgradeBody is None:
            return
        self._tunnel = conn
        self._tunnelExchange = ex
        data, self._upgradeData = self._upgradeData, b""
        data = self._upgradeBodyPart(data)
        if data:
            ex.bytesIn += len(data)
            conn.sendTunnel(data)
        if self._upgradeBody is not None:
            self.releaseRequest()

    def _upgradeBodyPart(self, data: bytes) -> bytes:
        """
        What of C{data} belongs to an upgrade request's declared body, to
        relay now; the rest is held, and reading stops, once the body is
        whole.
        """
        left = self._upgradeBody
        assert left is not None
        if len(data) < left:
            self._upgradeBody = left - len(data)
            return data
        del self._upgradeBody
        self._upgradeData = data[left:]
        self._tunnel = None
        self.holdRequest()
        return data[:left]

    def startTunnel(self, ex: Exchange, conn: Any, head: bytes) -> None:
        """
        The backend accepted an upgrade: send its 101 on and relay raw bytes
        both ways.
        """
        self.transport.write(head)
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        self._tunnel = conn
        self._tunnelExchange = ex
        conn.tunnel = ex
        if self._upgradeBody is not None:
            # Switched before the declared body was whole: the rest of it
            # is the new protocol's as much as what follows.
            del self._upgradeBody
        data, self._upgradeData = self._upgradeData, b""
        if data:
            ex.bytesIn += len(data)
            conn.sendTunnel(data)
        self.releaseRequest()
        timer = self._timer
        if timer is not None and timer.active():
            timer.cancel()
        factory = self.factory
        self._lastActivity = factory.seconds()
        self._timer = factory.reactor.callLater(factory.idleTimeout, self._checkTimer)

    def tunnelData(self, data: bytes) -> None:
        """
        Relay bytes of the tunnel from the backend.
        """
        self._lastActivity = self.factory.seconds()
        self._send(data)

    def tunnelClosed(self) -> None:
        """
        The tunnel's backend side closed: close this side too.
        """
        self._tunnel = None
        # The exchange refers back to this connection.
        self._tunnelExchange = None
        if not self.closed:
            self.transport.loseConnection()

    def backendActive(self) -> None:
        """
        The backend moved: the exchange is not idle (as of the reactor's
        pass).
        """
        self._lastActivity = self.factory.passClock.polledAt

    def registerProducer(self, producer: Any) -> None:
        """
        Let the backend connection relaying the response be paused while
        this client cannot take more (it is registered with the transport
        once a write has to queue: see L{_queued}).
        """
        if self._producerOn:
            self._producerOn = False
            self.transport.unregisterProducer()
        self._producer = producer

    def unregisterProducer(self) -> None:
        """
        The backend connection relays no more to this client.
        """
        self._producer = None
        if self._producerOn:
            self._producerOn = False
            self.transport.unregisterProducer()

    def exchangeDone(self, ex: Exchange) -> None:
        """
        C{ex} is over: serve the next request, or wait for one.
        """
        if self.closed:
            return
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        if ex.closeAfter or not ex.plan.keepAlive or not ex.requestDone or (
            self._readClosed and not queue
        ):
            self._close()
            return
        self._lastActivity = self.factory.passClock.polledAt
        if queue:
            self._serve()
            return
        if self._fatal is not None:
            self._sendFatal()
            return
        if self._held:
            self.releaseRequest()


class _WholeHead:
    """
    The llhttp callbacks of a client connection's parser of whole heads:
    one, at the end of the head (see L{ClientConnection._wholeHead}).
    """

    __slots__ = ("on_headers_complete",)

    def __init__(self, headComplete: Any) -> None:
        self.on_headers_complete = headComplete
