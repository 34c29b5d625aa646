"""
HTTP mode: each request is balanced on its own, over kept-alive client
connections and pooled backend connections.

A L{ClientConnection} parses requests with llhttp and queues one
L{Exchange} per request; the first in the queue is served, the others
(pipelined) wait, and the client is not read meanwhile.  An exchange picks a
backend, takes an idle connection to it from the pool or opens one, writes
the rewritten head and streams the body, then streams the response back.
Each side is registered as the other's producer for the exchange, so a slow
peer slows the fast one and nothing is buffered whole.

The hot path avoids per-request allocations it can: one exchange object,
the head built by one C{join}, no timers but the response timeout, no log
formatting unless the access log is on.
"""

from __future__ import annotations

import hashlib
import random
from collections import deque
from collections.abc import Callable
from typing import Any

from httptools import (
    HttpParserError,
    HttpParserUpgrade,
    HttpRequestParser,
    HttpResponseParser,
)
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectingCancelledError, ConnectionDone
from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from ..accesslog import httpLine
from ..config import ListenerConfig
from ..connect import EndpointCache, ListenerFactory, failureKind
from ..dial import BackendProtocol, Cancellable
from ..policies import SourceHash
from ..pool import Backend, BackendPool
from ..tcp import describe, setNoDelay
from ..writethrough import writeNow
from ._accesslog import logRequest
from ._parser import (
    ERRORS_CLOSE,
    ERRORS_KEEP,
    HOP_BY_HOP,
    IDEMPOTENT,
    BadRequest,
    checkTransferEncoding,
    cookieValue,
    splitTokens,
)
from ._pool import IdleConnections

# A request that may not be replayed is sent on a pooled connection only if
# that connection was in use this recently: far below any backend's
# keep-alive timeout, so it cannot be closed under us by one.
SAFE_REUSE_AGE = 1.0

_NO_BODY_STATUSES = frozenset((204, 304))

class Exchange:
    """
    One request and its response.

    A plain class with slots rather than an attrs value: it is mutable and
    there is one per request, on the hot path.
    """

    __slots__ = (
        "attempts",
        "backend",
        "bodyStarted",
        "bytesIn",
        "bytesOut",
        "chunked",
        "client",
        "closeAfter",
        "conn",
        "connecting",
        "expectContinue",
        "finished",
        "gatewayFailed",
        "hasBody",
        "head",
        "headers",
        "keepAlive",
        "method",
        "pending",
        "reason",
        "requestDone",
        "respChunked",
        "respHeaders",
        "respHead",
        "respLength",
        "respNoBody",
        "respUntilClose",
        "responded",
        "retries",
        "sent",
        "setCookie",
        "slot",
        "started",
        "status",
        "stickyBackend",
        "timer",
        "tried",
        "upgrade",
        "url",
        "version",
        "waiter",
    )

    def __init__(self, client: ClientConnection, started: float) -> None:
        self.client = client
        self.started = started
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.method = b""
        self.version = "1.1"
        self.keepAlive = True
        self.chunked = False
        self.hasBody = False
        self.upgrade = False
        self.expectContinue = False
        self.requestDone = False
        self.head = b""
        self.pending: list[bytes] | None = None
        self.conn: BackendConnection | None = None
        self.backend: Backend | None = None
        self.tried: list[Backend] = []
        self.attempts = 0
        self.retries = 0
        self.sent = False
        # A backend took this request and failed to answer it.
        self.gatewayFailed = False
        self.responded = False
        self.bodyStarted = False
        self.status = 0
        self.bytesIn = 0
        self.bytesOut = 0
        self.timer: Any = None
        self.connecting: Cancellable | None = None
        self.respChunked = False
        self.respNoBody = False
        self.respUntilClose = False
        self.respLength: int | None = None
        self.respHead: bytes | None = None
        self.closeAfter = False
        self.finished = False
        self.respHeaders: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.stickyBackend: Backend | None = None
        self.setCookie = False
        # The backend whose maxconn slot this request holds, and while it
        # waits in the pool's queue, its waker and timer.
        self.slot: Backend | None = None
        self.waiter: tuple[Callable[[], None], Any] | None = None

    @property
    def replayable(self) -> bool:
        """
        Whether the request may be sent again: idempotent, with no body we
        could not send again, and nothing of a response given to the client.
        """
        return (
            self.method in IDEMPOTENT
            and not self.hasBody
            and not self.responded
            and not self.upgrade
        )


@implementer(IPushProducer, IHalfCloseableProtocol)
class ClientConnection(Protocol):
    """
    A client's connection: parses its requests and serves them in order.

    It is the producer registered with the backend connection of the
    current exchange; reading stops when either that backend cannot take
    more, or the proxy itself must wait (a backend is being connected, or
    a request is complete and its response is not).
    """

    factory: HTTPProxyFactory
    parser: HttpRequestParser
    transport: Any

    def __init__(self, factory: HTTPProxyFactory) -> None:
        self.factory = factory
        self.queue: deque[Exchange] = deque()
        self._parsing: Exchange | None = None
        self._pausedByPeer = False
        self._held = False
        self._reading = True
        self._closed = False
        self._fatal: int | None = None
        self._tunnel: BackendConnection | None = None
        self._upgradeData = b""
        self._headSize = 0
        self._rawHead = 0
        self._headStarted: float | None = None
        self._timer: Any = None
        self._served = 0
        self._readClosed = False
        # Idle-pool keys of backend connections private to this client.
        self.privateKeys: set[Any] = set()

    # -- connection --------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        setNoDelay(transport)
        peer = transport.getPeer()
        self.peer = peer
        host = getattr(peer, "host", None)
        self.clientHost: bytes = host.encode("ascii", "replace") if isinstance(host, str) else b""
        self.clientName = describe(peer)
        self.parser = HttpRequestParser(self)
        factory = self.factory
        now = factory.seconds()
        self._lastActivity = now
        self._headStarted = now
        self._timer = factory.reactor.callLater(factory.requestTimeout, self._checkTimer)

    def _checkTimer(self) -> None:
        """
        Close a client that is too slow to send a request head (408), or
        idle between requests for longer than the idle timeout.

        One timer per connection, never more than the request timeout
        ahead, so a request head that starts later is still caught on time
        without touching a timer for each request.
        """
        self._timer = None
        if self._closed:
            return
        factory = self.factory
        now = factory.seconds()
        queue = self.queue
        if self._tunnel is not None or (queue and queue[0].requestDone):
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
        elif self._headStarted is not None and not queue:
            deadline = self._headStarted + factory.requestTimeout
            if now >= deadline:
                if self._parsing is not None:
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
            min(deadline - now, factory.requestTimeout), self._checkTimer
        )

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        # The parser holds bound methods of this protocol, and a request
        # still being parsed refers back to it: let both go, so that
        # reference counting frees the connection now rather than the
        # garbage collector on one of its passes.
        del self.parser
        self._parsing = None
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.factory.clientGone()
        self.factory.clients.discard(self)
        if self.privateKeys:
            self.factory.idle.closeKeys(self.privateKeys)
        tunnel = self._tunnel
        if tunnel is not None:
            self._tunnel = None
            tunnel.transport.loseConnection()
        self._abortQueue()

    def readConnectionLost(self) -> None:
        """
        The client sent FIN: answer what it asked, then close.
        """
        self._readClosed = True
        if not self.queue:
            self.transport.loseConnection()

    def writeConnectionLost(self) -> None:
        """
        Our write side is shut: nothing to do.
        """

    def _abortQueue(self) -> None:
        queue = self.queue
        while queue:
            ex = queue.popleft()
            if not ex.finished:
                self.factory.abandon(ex, "client gone")

    # -- reading -----------------------------------------------------------

    def _updateReading(self) -> None:
        want = not (self._pausedByPeer or self._held)
        if want != self._reading and not self._closed:
            self._reading = want
            if want:
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

    def hold(self) -> None:
        """
        Stop reading until L{release}: the proxy must not buffer more.
        """
        if not self._held:
            self._held = True
            self._updateReading()

    def release(self) -> None:
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
            tunnel.transport.write(data)
            tunnel.backend.bytesIn += len(data)
            tunnel.tunnelExchange.bytesIn += len(data)  # type: ignore[union-attr]
            return
        if self._fatal is not None or self._closed:
            return
        self._lastActivity = self.factory.seconds()
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as e:
            self._upgradeData = data[e.args[0]:] if e.args else b""
            self.hold()
        except HttpParserError as e:
            cause = e.__context__
            if isinstance(cause, BadRequest):
                status, why = cause.status, str(cause)
            else:
                status, why = 400, str(e)
            # The cause's traceback holds this frame: kept in a local, it
            # would make the frame, the exception and this connection a
            # cycle.
            del cause
            self._refuse(status, why)
            return
        if self._parsing is not None and self._headStarted is not None:
            # llhttp buffers a header until it ends: bound what it may hold.
            self._rawHead += len(data)
            factory = self.factory
            if self._rawHead > factory.maxHeaderSize + factory.maxRequestLine:
                self._refuse(414 if not self._parsing.headers else 431, "head too large")
                return
        queue = self.queue
        if queue:
            ex = queue[0]
            if ex.backend is None and ex.connecting is None and not ex.finished:
                self.factory.dispatch(ex)

    def _refuse(self, status: int, why: str) -> None:
        """
        Answer an unacceptable request with C{status} and close, after the
        responses to the requests before it.
        """
        self._fatal = status
        self.hold()
        factory = self.factory
        factory.refused += 1
        factory.log.info(
            "refused request from {client}: {status} ({why})",
            client=self.clientName, status=status, why=why,
        )
        parsing = self._parsing
        self._parsing = None
        queue = self.queue
        if parsing is not None and parsing in queue:
            if parsing is queue[0] and (parsing.conn is not None or parsing.connecting):
                # Its head went to a backend already: cut that connection
                # so the backend never sees a complete request.
                queue.popleft()
                if parsing.responded:
                    factory.abandon(parsing, "malformed request")
                    self.transport.loseConnection()
                    return
                factory.abandon(parsing, "malformed request")
            else:
                queue.remove(parsing)
        if not queue:
            self._sendFatal()
            return
        first = queue[0]
        if first.backend is None and first.connecting is None and not first.finished:
            # A complete request came before the bad one in the same read:
            # serve it (dataReceived returns before dispatching); the error
            # follows its response.
            factory.dispatch(first)

    def _sendFatal(self) -> None:
        status = self._fatal
        assert status is not None
        transport = self.transport
        transport.write(ERRORS_CLOSE[status])
        transport.loseConnection()

    # -- llhttp callbacks --------------------------------------------------

    def on_message_begin(self) -> None:
        if self._headStarted is None:
            self._headStarted = self._lastActivity
        self._headSize = 0
        self._rawHead = 0
        self._parsing = Exchange(self, self._lastActivity)

    def on_url(self, url: bytes) -> None:
        ex = self._parsing
        assert ex is not None
        ex.url += url
        if len(ex.url) > self.factory.maxRequestLine:
            raise BadRequest("request line too long", 414)

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self._parsing
        assert ex is not None
        ex.headers.append((name, value))
        self._headSize += len(name) + len(value) + 4
        if self._headSize > self.factory.maxHeaderSize:
            raise BadRequest("request head too large", 431)

    def on_headers_complete(self) -> None:
        ex = self._parsing
        assert ex is not None
        parser = self.parser
        ex.method = parser.get_method()
        ex.version = parser.get_http_version()
        ex.keepAlive = parser.should_keep_alive()
        ex.upgrade = parser.should_upgrade()
        if ex.method == b"CONNECT":
            raise BadRequest("CONNECT is not supported", 501)
        self.factory.rewriteRequest(ex)
        self._headStarted = None
        queue = self.queue
        if queue and not queue[-1].finished:
            # A pipelined request: read no further until those before it
            # are answered, so a client cannot make us queue without bound.
            self.hold()
        queue.append(ex)

    def on_body(self, body: bytes) -> None:
        ex = self._parsing
        assert ex is not None
        ex.bytesIn += len(body)
        conn = ex.conn
        if conn is not None and ex.sent:
            conn.sendBody(ex, body)
        else:
            if ex.pending is None:
                ex.pending = []
            ex.pending.append(body)
            self.hold()

    def on_message_complete(self) -> None:
        ex = self._parsing
        assert ex is not None
        self._parsing = None
        ex.requestDone = True
        conn = ex.conn
        if conn is not None and ex.sent:
            if ex.chunked:
                conn.transport.write(b"0\r\n\r\n")
            if ex.timer is None and not ex.finished and ex.status < 200:
                self.factory.armResponseTimer(ex)

    # -- serving -----------------------------------------------------------

    def exchangeDone(self, ex: Exchange) -> None:
        """
        C{ex} is answered: serve the next request, or wait for one.
        """
        if self._closed:
            return
        queue = self.queue
        if queue and queue[0] is ex:
            queue.popleft()
        self._served += 1
        if ex.closeAfter or not ex.keepAlive or not ex.requestDone or (
            self._readClosed and not queue
        ):
            self.transport.loseConnection()
            self._closed = True
            return
        self._lastActivity = self.factory.seconds()
        if queue:
            nxt = queue[0]
            if nxt.backend is None and nxt.connecting is None:
                self.factory.dispatch(nxt)
            return
        if self._fatal is not None:
            self._sendFatal()
            return
        self.release()

    def startTunnel(self, conn: BackendConnection) -> None:
        """
        The backend accepted an upgrade: relay raw bytes both ways.
        """
        self._tunnel = conn
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        factory = self.factory
        self._lastActivity = factory.seconds()
        self._timer = factory.reactor.callLater(factory.idleTimeout, self._checkTimer)
        data, self._upgradeData = self._upgradeData, b""
        if data:
            conn.transport.write(data)
            conn.tunnelExchange.bytesIn += len(data)  # type: ignore[union-attr]
        self.release()


@implementer(IPushProducer)
class BackendConnection(BackendProtocol):
    """
    A connection to a backend, serving one exchange at a time and kept
    alive between them.
    """

    parser: HttpResponseParser
    transport: Any

    def __init__(self, factory: HTTPProxyFactory, backend: Backend, key: Any,
                 proxyHeader: bytes | None) -> None:
        self.factory = factory
        self.backend = backend
        self.key = key
        self.proxyHeader = proxyHeader
        self.exchange: Exchange | None = None
        self.lost = False
        self.idleSince = 0.0
        self.requests = 0
        self.reusable = True
        self.tunnel: ClientConnection | None = None
        # The upgrade's exchange while this connection is a tunnel: it
        # counts the tunnel's bytes and is logged when the tunnel closes.
        self.tunnelExchange: Exchange | None = None
        self.paused = False
        self._skipBody = False
        self._finishAfterFeed = False

    def connectionMade(self) -> None:
        # Made here, not in __init__: a protocol built for a connection
        # that fails is never connected, and the parser (which refers back
        # to it) would make it a cycle.
        self.parser = HttpResponseParser(self)
        setNoDelay(self.transport)
        if self.proxyHeader is not None:
            self.transport.write(self.proxyHeader)

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

    def sendBody(self, ex: Exchange, body: bytes) -> None:
        """
        Forward a piece of the request body, chunked if the request was.
        """
        ex.bodyStarted = True
        transport = self.transport
        if ex.chunked:
            transport.writeSequence((b"%x\r\n" % len(body), body, b"\r\n"))
        else:
            transport.write(body)
        self.backend.bytesIn += len(body)

    def dataReceived(self, data: bytes) -> None:
        tunnel = self.tunnel
        if tunnel is not None:
            tunnel._lastActivity = self.factory.seconds()
            tunnel.transport.write(data)
            self.backend.bytesOut += len(data)
            self.tunnelExchange.bytesOut += len(data)  # type: ignore[union-attr]
            return
        ex = self.exchange
        if ex is not None:
            # The backend moved: the client's exchange is not idle.
            ex.client._lastActivity = self.factory.seconds()
        if ex is None:
            # Nothing was asked: a backend that talks now cannot be trusted
            # with the next request.
            self.reusable = False
            self.transport.loseConnection()
            return
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade as e:
            rest = data[e.args[0]:] if e.args else b""
            if self.tunnel is not None and rest:
                self.tunnel.transport.write(rest)
                self.tunnelExchange.bytesOut += len(rest)  # type: ignore[union-attr]
            return
        except HttpParserError as e:
            if self.exchange is not None:
                self.factory.backendFailed(self.exchange, "response", f"malformed response: {e}")
            self.reusable = False
            self.transport.loseConnection()
            return
        ex = self.exchange
        if ex is not None and ex.respHead is not None:
            head, ex.respHead = ex.respHead, None
            writeNow(ex.client.transport, head)
        if self._finishAfterFeed:
            self._finishAfterFeed = False
            self._skipBody = False
            self.parser = HttpResponseParser(self)
            ex = self.exchange
            if ex is not None:
                self.factory.responseComplete(ex)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self.reusable = False
        # As for the client: the parser refers back to this protocol.
        del self.parser
        self.backend.closers.discard(self.abortNow)
        tunnel = self.tunnel
        if tunnel is not None:
            # Reached once per tunnel, whichever side closed first.
            self.tunnel = None
            tunnel.transport.loseConnection()
            ex, self.tunnelExchange = self.tunnelExchange, None
            if ex is not None:
                self.factory.logAccess(ex)
            return
        ex = self.exchange
        if ex is not None:
            if ex.respUntilClose and ex.responded and reason.check(ConnectionDone):
                # A body delimited by the close ends cleanly only on a
                # clean close; a reset leaves it visibly truncated.
                self.factory.responseComplete(ex)
            else:
                self.factory.backendLost(ex, self, reason)
        else:
            self.factory.idle.discard(self.key, self)

    # -- llhttp callbacks --------------------------------------------------

    def on_status(self, reason: bytes) -> None:
        ex = self.exchange
        if ex is not None:
            ex.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        ex = self.exchange
        if ex is not None and not self._skipBody:
            ex.respHeaders.append((name, value))

    def on_headers_complete(self) -> None:
        ex = self.exchange
        if ex is None or self._skipBody:
            return
        self.factory.responseHead(ex, self, self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        ex = self.exchange
        if ex is None or self._skipBody:
            self.reusable = False
            return
        ex.bytesOut += len(body)
        self.backend.bytesOut += len(body)
        transport = ex.client.transport
        head = ex.respHead
        if head is not None:
            ex.respHead = None
            if ex.respChunked:
                writeNow(transport, b"".join((head, b"%x\r\n" % len(body), body, b"\r\n")))
            else:
                writeNow(transport, head + body)
        elif ex.respChunked:
            transport.writeSequence((b"%x\r\n" % len(body), body, b"\r\n"))
        else:
            transport.write(body)

    def on_message_complete(self) -> None:
        ex = self.exchange
        if ex is None or self._skipBody:
            return
        if 100 <= ex.status < 200:
            # An interim response: the final one follows on the same parser.
            ex.status = 0
            ex.reason = b""
            ex.respHeaders = []
            return
        if not self.parser.should_keep_alive():
            self.reusable = False
        self.factory.responseComplete(ex)

    def skipBody(self) -> None:
        """
        The response has no body whatever its head says (a reply to HEAD):
        finish once this read is parsed, with a fresh parser for the next.
        """
        self._skipBody = True
        self._finishAfterFeed = True
        if not self.parser.should_keep_alive():
            self.reusable = False


class HTTPProxyFactory(ListenerFactory):
    """
    Accepts HTTP clients on a listener and balances their requests over a
    pool.

    @ivar idle: the pool of idle backend connections.
    @ivar requests: requests answered, by any status.
    @ivar refused: requests refused as malformed or too large.
    @ivar statuses: responses sent, by status class (C{"2xx"}...).
    """

    log = Logger()

    def __init__(
        self,
        pool: BackendPool,
        reactor: Any,
        endpoints: EndpointCache,
        listener: ListenerConfig,
    ) -> None:
        super().__init__(pool, reactor)
        # An instance attribute, not a descriptor, to keep its namespace.
        self.accessLog = Logger(namespace="lbtwist.access", source=self)
        self.seconds: Callable[[], float] = reactor.seconds
        self.endpoints = endpoints
        self.listener = listener
        config = pool.config
        http = config.http
        self.settings = http
        self.maxHeaderSize = http.maxHeaderSize
        self.maxRequestLine = http.maxRequestLine
        self.hostHeader = http.hostHeader.encode("ascii") if http.hostHeader else None
        self.requestTimeout = config.timeouts.request
        self.responseTimeout = config.timeouts.response
        self.idleTimeout = config.timeouts.idle
        self.connectTimeout = config.timeouts.connect
        self.idle = IdleConnections(reactor, http.keepAlive)
        self.maxRequests = http.keepAlive.maxRequests
        self.forwardedProto = (
            b"https" if listener.endpoint.split(":", 1)[0] in ("ssl", "tls") else b"http"
        )
        sticky = config.sticky
        self.sticky = sticky
        self._hash = SourceHash(random.Random())
        self._stickyName = (sticky.name or "").encode() if sticky else b""
        self._stickyHeader = (
            self._stickyName.lower() if sticky and sticky.kind == "header" else None
        )
        self._cookieIds: dict[str, bytes] = {}
        self._errorStreak: dict[Backend, int] = {}
        self.requests = 0
        self.refused = 0
        self.statuses: dict[str, int] = {}
        self.clients: set[ClientConnection] = set()
        # Set by a graceful stop: no more keep-alive.
        self.stopping = False

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        if not self.admit():
            return None
        client = ClientConnection(self)
        self.clients.add(client)
        return client

    def softStop(self) -> None:
        """
        A graceful stop began, as HAProxy's soft-stop: close the clients
        waiting between requests now, and answer every request still to
        come with C{Connection: close}, so that keep-alive clients leave
        once served instead of holding the stop up until its grace ends.
        """
        self.stopping = True
        for client in list(self.clients):
            if not client.queue and client._tunnel is None and client._parsing is None:
                client.transport.loseConnection()

    def stopFactory(self) -> None:
        """
        The listener stopped: close the idle backend connections.
        """
        self.idle.close()

    # -- requests ----------------------------------------------------------

    def rewriteRequest(self, ex: Exchange) -> None:
        """
        Check the head of C{ex} and build the head sent to backends: hop-by-hop
        headers removed, C{X-Forwarded-*} set.

        @raise BadRequest: the head must be refused.
        """
        parts = [b"%s %s HTTP/1.1\r\n" % (ex.method, ex.url)]
        append = parts.append
        host = None
        te = None
        connection: list[bytes] | None = None
        xff = None
        upgradeValue = None
        stickyKey = None
        stickyName = self._stickyName
        stickyHeader = self._stickyHeader
        stickyKind = self.sticky.kind if self.sticky is not None else None
        hasLength = False
        for name, value in ex.headers:
            lname = name.lower()
            if lname in HOP_BY_HOP or lname.startswith(b"proxy-"):
                if lname == b"transfer-encoding":
                    if te is not None:
                        raise BadRequest("repeated Transfer-Encoding")
                    te = value
                elif lname == b"connection":
                    connection = (connection or []) + splitTokens(value)
                elif lname == b"upgrade":
                    upgradeValue = value
                continue
            if lname == b"host":
                if host is not None:
                    raise BadRequest("repeated Host header")
                host = value
                if self.hostHeader is not None:
                    continue
            elif lname == b"x-forwarded-for":
                xff = value if xff is None else xff + b", " + value
                continue
            elif lname == b"x-forwarded-proto" or lname == b"x-forwarded-host":
                continue
            elif lname == b"content-length":
                hasLength = value.strip() != b"0"
            elif lname == b"expect" and value.lower() == b"100-continue":
                ex.expectContinue = True
            if lname == stickyHeader:
                stickyKey = value
            elif stickyKind == "cookie" and lname == b"cookie":
                found = cookieValue(value, stickyName)
                if found is not None:
                    stickyKey = found
            append(name + b": " + value + b"\r\n")
        if ex.version == "1.1" and host is None:
            raise BadRequest("HTTP/1.1 request without Host")
        ex.chunked = checkTransferEncoding(te, ex.version)
        ex.hasBody = ex.chunked or hasLength
        if connection:
            # Headers the client's Connection header names are hop-by-hop too.
            # Never the framing or the Host: a client naming Content-Length
            # here must not get its body read as a second request.
            named = set(connection) - {
                b"close", b"keep-alive", b"upgrade", b"content-length",
                b"transfer-encoding", b"host",
            }
            if named:
                parts = [parts[0]] + [
                    p for p in parts[1:]
                    if p.split(b":", 1)[0].lower() not in named
                ]
                append = parts.append
        if self.hostHeader is not None:
            append(b"Host: " + self.hostHeader + b"\r\n")
        client = ex.client
        append(
            b"X-Forwarded-For: "
            + (xff + b", " + client.clientHost if xff is not None else client.clientHost)
            + b"\r\nX-Forwarded-Proto: " + self.forwardedProto + b"\r\n"
        )
        if host is not None:
            append(b"X-Forwarded-Host: " + host + b"\r\n")
        if ex.chunked:
            append(b"Transfer-Encoding: chunked\r\n")
        if ex.upgrade:
            if upgradeValue is None:
                raise BadRequest("Connection: upgrade without Upgrade")
            append(b"Connection: upgrade\r\nUpgrade: " + upgradeValue + b"\r\n")
        append(b"\r\n")
        ex.head = b"".join(parts)
        if stickyKind == "cookie":
            if stickyKey is not None:
                ex.stickyBackend = self._cookieBackend(stickyKey)
            ex.setCookie = ex.stickyBackend is None
        elif stickyKind == "header":
            ex.stickyBackend = self._hashed(stickyKey or client.clientHost)
        elif stickyKind == "source":
            ex.stickyBackend = self._hashed(client.clientHost)

    # -- sticky sessions ---------------------------------------------------

    def cookieId(self, backend: Backend) -> bytes:
        """
        The opaque cookie value that names C{backend}.
        """
        cookie = self._cookieIds.get(backend.name)
        if cookie is None:
            cookie = hashlib.blake2b(
                f"{self.pool.name}\0{backend.name}".encode(), digest_size=8
            ).hexdigest().encode()
            self._cookieIds[backend.name] = cookie
        return cookie

    def _cookieBackend(self, value: bytes) -> Backend | None:
        for backend in self.pool:
            if backend.eligible and self.cookieId(backend) == value:
                return backend
        return None

    def _hashed(self, key: bytes) -> Backend | None:
        # Hashing balances: a weight-0 backend takes none of it (a sticky
        # cookie, which persists, still reaches one).
        candidates = [b for b in self.pool if b.weight and b.eligible]
        if not candidates:
            return None
        chosen = self._hash.choose(candidates, key)
        assert isinstance(chosen, Backend)
        return chosen

    # -- choosing and connecting -------------------------------------------

    def dispatch(self, ex: Exchange, fresh: bool = False) -> None:
        """
        Send C{ex} to a backend: a pooled connection if there is a safe one,
        else a new connection; when connecting fails, another backend.

        @param fresh: do not use a pooled connection (a retry after one
            was found closed).
        """
        if ex.waiter is not None:
            return
        client = ex.client
        pool = self.pool
        backend = None
        sticky = ex.stickyBackend
        if (
            sticky is not None and sticky not in ex.tried and sticky.eligible
            and (ex.slot is sticky or not sticky.full)
        ):
            backend = sticky
        elif (
            fresh and ex.backend is not None and ex.backend.eligible
            and (ex.slot is ex.backend or not ex.backend.full)
        ):
            backend = ex.backend
        else:
            backend = pool.pick(client.clientHost, ex.tried)
        if (
            backend is None
            and ex.attempts <= pool.config.retries
            and pool.saturated(ex.tried)
        ):
            self._wait(ex)
            return
        if backend is None or ex.attempts > pool.config.retries:
            if ex.tried:
                # The retry that led here found no backend to try: it did
                # not happen.
                ex.retries = max(ex.retries - 1, 0)
            if ex.gatewayFailed:
                # Backends were up but failed this request: a bad gateway,
                # not an outage (as HAProxy answers).
                self.log.warn(  # noqa: G010
                    "pool {pool}: {attempts} backends took the request of {client} "
                    "and none answered",
                    pool=pool.name, attempts=len(ex.tried), client=client.clientName,
                )
                self.respondError(ex, 502)
                return
            if ex.attempts == 0 and not ex.tried:
                pool.noBackendFor(client.clientName)
            else:
                self.log.warn(  # noqa: G010
                    "pool {pool}: no backend reachable for {client} after {attempts} attempts",
                    pool=pool.name, client=client.clientName, attempts=len(ex.tried),
                )
            self.respondError(ex, 503)
            return
        if ex.slot is not backend:
            old, ex.slot = ex.slot, backend
            pool.acquire(backend)
            if old is not None:
                pool.release(old)
        if backend not in ex.tried:
            ex.tried.append(backend)
        ex.backend = backend
        proxyHeader = None
        key: Any = backend
        if self.proxyHeader is not None:
            transport = client.transport
            proxyHeader = self.proxyHeader(
                transport.getPeer(), transport.getHost()
            )
            # Connections that began with this client's PROXY header are
            # its own: reused by its next requests, closed when it leaves.
            key = (backend, proxyHeader)
            client.privateKeys.add(key)
        if not fresh:
            conn = self.idle.take(key, None if ex.replayable else SAFE_REUSE_AGE)
            if conn is not None:
                assert isinstance(conn, BackendConnection)
                self.attach(ex, conn)
                return

        if not ex.requestDone:
            # Read no more of the body until there is somewhere to send it.
            client.hold()

        def build() -> BackendConnection:
            return BackendConnection(self, backend, key, proxyHeader)

        # Either callback may run before dial() returns.
        settled: list[bool] = []

        def connected(conn: BackendConnection) -> None:
            settled.append(True)
            ex.connecting = None
            pool.connectSucceeded(backend)
            if backend.removed:
                # Removed while we connected: its drain has begun without
                # this connection, so send the request elsewhere.
                conn.transport.loseConnection()
                if not ex.finished:
                    self.dispatch(ex)
                return
            if ex.finished:
                if not self.idle.put(key, conn):
                    conn.transport.loseConnection()
                return
            self.attach(ex, conn)

        def failed(reason: Failure) -> None:
            settled.append(True)
            ex.connecting = None
            if ex.finished or reason.check(CancelledError, ConnectingCancelledError):
                return
            kind = failureKind(reason)
            ex.attempts += 1
            ex.retries += 1
            pool.failed(backend, kind, f"connect {kind}")
            self._countError(backend, f"connect {kind}")
            self.log.warn(  # noqa: G010
                "backend {backend} of pool {pool} failed to connect for {client} "
                "({kind}); trying another",
                backend=backend.name, pool=pool.name, client=client.clientName,
                kind=kind,
            )
            self.dispatch(ex)

        attempt = self.endpoints.dial(
            backend.endpoint, build, self.connectTimeout, connected, failed
        )
        if not settled:
            ex.connecting = attempt

    def _wait(self, ex: Exchange) -> None:
        """
        Every eligible backend is at its maxconn: queue C{ex} until a slot is
        free, for up to the queue timeout; 503 if the queue is full.
        """
        self._releaseSlot(ex)
        pool = self.pool

        def woken() -> None:
            waiter, ex.waiter = ex.waiter, None
            if waiter is not None and waiter[1].active():
                waiter[1].cancel()
            if not ex.finished:
                self.dispatch(ex)

        if not pool.enqueue(woken):
            self.respondError(ex, 503)
            return
        if not ex.requestDone:
            ex.client.hold()
        timer = self.reactor.callLater(pool.config.queue.timeout, self._queueTimedOut, ex)
        ex.waiter = (woken, timer)

    def _queueTimedOut(self, ex: Exchange) -> None:
        waiter, ex.waiter = ex.waiter, None
        if waiter is not None:
            self.pool.queueTimedOut(waiter[0])
        self.log.warn(  # noqa: G010
            "pool {pool}: request of {client} waited {timeout}s in the queue; 503",
            pool=self.pool.name, client=ex.client.clientName,
            timeout=self.pool.config.queue.timeout,
        )
        self.respondError(ex, 503)

    def _releaseSlot(self, ex: Exchange) -> None:
        """
        C{ex} is finished (or waits again): leave the queue, give back its
        backend's maxconn slot, and so wake the next waiting request.
        """
        waiter, ex.waiter = ex.waiter, None
        if waiter is not None:
            self.pool.dequeue(waiter[0])
            if waiter[1].active():
                waiter[1].cancel()
        slot, ex.slot = ex.slot, None
        if slot is not None:
            self.pool.release(slot)

    def attach(self, ex: Exchange, conn: BackendConnection) -> None:
        """
        Send C{ex} on C{conn}, a connected backend connection.
        """
        backend = conn.backend
        ex.conn = conn
        conn.exchange = ex
        conn.requests += 1
        client = ex.client
        self.pool.opened(backend)
        # A bound method made for each add and discard (they compare equal),
        # not one kept on the connection, which would refer back to it.
        backend.closers.add(conn.abortNow)
        if ex.hasBody or ex.upgrade:
            # Only a body can fill the backend's buffer: spare the others.
            conn.transport.registerProducer(client, True)
        client.transport.registerProducer(conn, True)
        ex.sent = True
        writeNow(conn.transport, ex.head)
        backend.bytesIn += len(ex.head)
        pending = ex.pending
        if pending:
            ex.pending = None
            for body in pending:
                conn.sendBody(ex, body)
        if ex.requestDone and ex.chunked:
            conn.transport.write(b"0\r\n\r\n")
        if ex.requestDone or ex.upgrade:
            self.armResponseTimer(ex)
        else:
            client.release()

    def armResponseTimer(self, ex: Exchange) -> None:
        """
        The request is sent whole: its response head is due within the
        response timeout.
        """
        ex.timer = self.reactor.callLater(self.responseTimeout, self._timedOut, ex)

    def _detach(self, ex: Exchange) -> BackendConnection | None:
        conn = ex.conn
        if conn is None:
            return None
        ex.conn = None
        conn.exchange = None
        self.pool.closed(conn.backend)
        conn.backend.closers.discard(conn.abortNow)
        if not conn.lost:
            if ex.hasBody or ex.upgrade:
                conn.transport.unregisterProducer()
            if conn.paused:
                conn.resumeProducing()
        client = ex.client
        if not client._closed:
            client.transport.unregisterProducer()
            # The backend that paused the client's reading is gone from it:
            # read again (unless held for another reason).
            client.resumeProducing()
        return conn

    def _cancelTimer(self, ex: Exchange) -> None:
        timer = ex.timer
        if timer is not None:
            ex.timer = None
            if timer.active():
                timer.cancel()

    # -- responses ---------------------------------------------------------

    def responseHead(self, ex: Exchange, conn: BackendConnection, status: int) -> None:
        """
        The backend sent a response head: rewrite it and send it on.
        """
        client = ex.client
        transport = client.transport
        if status < 200:
            ex.status = status
            if status == 101:
                if ex.upgrade:
                    self._upgrade(ex, conn, status)
                else:
                    conn.reusable = False
                    self.backendFailed(ex, "response", "101 to a request without Upgrade")
                return
            if status == 100 and not ex.expectContinue:
                return
            ex.responded = True
            parts = [b"HTTP/1.1 %d %s\r\n" % (status, ex.reason)]
            parts.extend(
                n + b": " + v + b"\r\n" for n, v in ex.respHeaders
                if n.lower() not in HOP_BY_HOP
            )
            parts.append(b"\r\n")
            transport.write(b"".join(parts))
            return
        self._cancelTimer(ex)
        ex.status = status
        backend = conn.backend
        backend.responseTime = self.seconds() - ex.started
        noBody = ex.method == b"HEAD" or status in _NO_BODY_STATUSES
        ex.respNoBody = noBody
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, ex.reason)]
        append = parts.append
        length = None
        chunkedIn = False
        for name, value in ex.respHeaders:
            lname = name.lower()
            if lname in HOP_BY_HOP or lname.startswith(b"proxy-"):
                if lname == b"transfer-encoding":
                    chunkedIn = True
                continue
            if lname == b"content-length":
                length = value
            append(name + b": " + value + b"\r\n")
        if ex.upgrade:
            # The backend refused the upgrade: this connection cannot go on.
            ex.closeAfter = True
        keep = ex.keepAlive and not ex.closeAfter and not self.stopping
        if not noBody and length is None:
            if ex.version == "1.1":
                ex.respChunked = True
                append(b"Transfer-Encoding: chunked\r\n")
            else:
                keep = False
            ex.respUntilClose = not chunkedIn
        if ex.setCookie and self.sticky is not None:
            append(
                b"Set-Cookie: " + self._stickyName + b"=" + self.cookieId(backend)
                + b"; Path=/; HttpOnly\r\n"
            )
        if not keep:
            ex.closeAfter = True
            append(b"Connection: close\r\n")
        elif ex.version != "1.1":
            append(b"Connection: keep-alive\r\n")
        append(b"\r\n")
        ex.responded = True
        # Sent with the first piece of body read with it, or after the read.
        ex.respHead = b"".join(parts)
        if noBody and ex.method == b"HEAD" and status not in _NO_BODY_STATUSES:
            conn.skipBody()

    def _upgrade(self, ex: Exchange, conn: BackendConnection, status: int) -> None:
        self._cancelTimer(ex)
        ex.status = status
        ex.responded = True
        parts = [b"HTTP/1.1 101 %s\r\n" % ex.reason]
        parts.extend(n + b": " + v + b"\r\n" for n, v in ex.respHeaders)
        parts.append(b"\r\n")
        client = ex.client
        client.transport.write(b"".join(parts))
        conn.reusable = False
        conn.tunnel = client
        conn.tunnelExchange = ex
        conn.exchange = None
        ex.finished = True
        ex.closeAfter = True
        self.pool.closed(conn.backend)
        self._releaseSlot(ex)
        # Counted now; its access-log line is written when the tunnel closes.
        self._finishLog(ex, logged=False)
        if client.queue and client.queue[0] is ex:
            client.queue.popleft()
        client.startTunnel(conn)

    def responseComplete(self, ex: Exchange) -> None:
        """
        The backend finished its response: end it for the client, pool the
        connection if it may be reused, and serve the next request.
        """
        if ex.finished:
            return
        ex.finished = True
        self._cancelTimer(ex)
        client = ex.client
        head = ex.respHead
        if not client._closed:
            if head is not None:
                ex.respHead = None
                writeNow(client.transport, head + b"0\r\n\r\n" if ex.respChunked else head)
            elif ex.respChunked:
                client.transport.write(b"0\r\n\r\n")
        conn = self._detach(ex)
        backend = ex.backend
        assert backend is not None and conn is not None
        if ex.status >= 500:
            self._countError(backend, f"status {ex.status}")
        else:
            self._errorStreak.pop(backend, None)
            self.pool.connectSucceeded(backend)
        if (
            conn.reusable
            and ex.requestDone
            and not conn.lost
            and conn.requests < self.maxRequests
            and not ex.upgrade
            and self.idle.put(conn.key, conn)
        ):
            pass
        elif not conn.lost:
            conn.transport.loseConnection()
        self._releaseSlot(ex)
        self._finishLog(ex)
        client.exchangeDone(ex)

    def _finishLog(self, ex: Exchange, logged: bool = True) -> None:
        self.requests += 1
        status = ex.status
        cls = f"{status // 100}xx"
        self.statuses[cls] = self.statuses.get(cls, 0) + 1
        if logged:
            self.logAccess(ex)

    def logAccess(self, ex: Exchange) -> None:
        """
        Write the access-log line of C{ex}, if the access log is on: its
        duration runs from the request to now (for an upgrade, to the
        tunnel's close, with the tunnel's bytes each way).
        """
        if self.accessFile is not None:
            backend = ex.backend
            self.accessFile.write(httpLine(
                ex.client.clientName, ex.method.decode("latin-1"), ex.url.decode("latin-1"),
                ex.status, backend.name if backend is not None else None,
                ex.bytesIn, ex.bytesOut, self.seconds() - ex.started, ex.retries,
            ))
        elif self.settings.accessLog is True:
            logRequest(self.accessLog, ex, self.seconds() - ex.started)

    def respondError(self, ex: Exchange, status: int) -> None:
        """
        Answer C{ex} with a canned error, unless part of a response was sent
        already, in which case the client's response ends truncated.
        """
        if ex.finished:
            return
        ex.finished = True
        self._cancelTimer(ex)
        client = ex.client
        conn = self._detach(ex)
        if conn is not None and not conn.lost:
            conn.reusable = False
            conn.transport.loseConnection()
        if ex.connecting is not None:
            d, ex.connecting = ex.connecting, None
            d.cancel()
        self._releaseSlot(ex)
        if client._closed:
            return
        if ex.respHead is not None:
            # The head never left: the client may still get a clean error.
            ex.respHead = None
            ex.responded = False
        if ex.responded:
            # Part of the response went out: the client must see it cut short.
            client.transport.loseConnection()
            client._closed = True
            self._finishLog(ex)
            return
        ex.status = status
        close = not ex.requestDone or not ex.keepAlive or ex.upgrade
        ex.closeAfter = close
        client.transport.write((ERRORS_CLOSE if close else ERRORS_KEEP)[status])
        self._finishLog(ex)
        client.exchangeDone(ex)

    def abandon(self, ex: Exchange, why: str) -> None:
        """
        The client went away or sent garbage: drop C{ex} and its backend
        connection, if the response was not complete.
        """
        if ex.finished:
            return
        ex.finished = True
        self._cancelTimer(ex)
        if ex.connecting is not None:
            d, ex.connecting = ex.connecting, None
            d.cancel()
        conn = self._detach(ex)
        if conn is not None and not conn.lost:
            conn.reusable = False
            conn.transport.loseConnection()
        self._releaseSlot(ex)

    # -- failures ----------------------------------------------------------

    def _countError(self, backend: Backend, why: str) -> None:
        limit = self.settings.errorLimit
        if not limit:
            return
        streak = self._errorStreak.get(backend, 0) + 1
        self._errorStreak[backend] = streak
        if streak >= limit:
            self._errorStreak.pop(backend, None)
            self.pool.markDown(
                backend, "errors", f"{streak} errors in a row, the last {why}"
            )

    def _timedOut(self, ex: Exchange) -> None:
        ex.timer = None
        backend = ex.backend
        if backend is not None:
            self.pool.failed(backend, "timeout", "no response in time")
            self._countError(backend, "response timeout")
        self.log.warn(  # noqa: G010
            "backend {backend} did not answer {client} in {timeout}s",
            backend=backend.name if backend else None,
            client=ex.client.clientName, timeout=self.responseTimeout,
        )
        self.respondError(ex, 504)

    def backendFailed(self, ex: Exchange, kind: str, why: str) -> None:
        """
        The backend sent something that is not a valid response.
        """
        backend = ex.backend
        if backend is not None:
            self.pool.failed(backend, kind, why)
            self._countError(backend, why)
            self.log.warn(  # noqa: G010
                "backend {backend} failed {client}: {why}",
                backend=backend.name, client=ex.client.clientName, why=why,
            )
        self.respondError(ex, 502)

    def backendLost(self, ex: Exchange, conn: BackendConnection, reason: Failure) -> None:
        """
        The backend connection of C{ex} closed before the response was
        complete: retry if that is safe, else 502 (or a truncated response).
        """
        if ex.finished:
            return
        backend = conn.backend
        reused = conn.requests > 1
        if not ex.responded and ex.replayable and ex.attempts <= self.pool.config.retries:
            self._cancelTimer(ex)
            self._detach(ex)
            ex.retries += 1
            if reused:
                # A stale pooled connection: try a new one to the same
                # backend; that is no fault of the backend's.
                self.dispatch(ex, fresh=True)
                return
            ex.attempts += 1
            ex.gatewayFailed = True
            self.pool.failed(backend, "response", "connection lost before the response")
            self._countError(backend, "connection lost")
            self.dispatch(ex)
            return
        if not ex.responded:
            self.pool.failed(backend, "response", "connection lost before the response")
            self._countError(backend, "connection lost")
        self.log.warn(  # noqa: G010
            "backend {backend} closed the connection of {client} before "
            "completing the response",
            backend=backend.name, client=ex.client.clientName,
        )
        self.respondError(ex, 502)
