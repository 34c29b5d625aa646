"""
The HTTP exchange core: one request and its response, from a complete
request head to the end of the response, with a named phase.

An L{Exchange} is protocol-neutral.  It chooses and connects a backend
(through L{lbtwist.connect.BackendConnector}), sends the request, relays the
response, retries when that is safe, times out, counts passive health and
answers errors.  It talks to the client's side through L{IClientSide} (an
HTTP/1.1 connection today, an HTTP/2 stream later) and to the backend
through a L{lbtwist.http._backend.BackendConnection}; both only translate
bytes and parser callbacks into the calls below.  The backend connection
reaches the client side only through the same interface (its activity,
a response head held back, a tunnel's bytes), and neither touches the
other's private state.

The phases and their transitions (L{Exchange.phase}; anything else is a
bug, and raises L{IllegalTransition}):

    WAITING     head read, waiting for its turn on the client connection
      -> CONNECTING   its turn came
      -> CHECKING     its turn came, and its credentials are still being checked
      -> DONE         its turn came, and the balancer answers it itself (a
                      route's redirect or fixed answer, 404 for no route)
      -> FAILED       the client left, or sent garbage first
    CHECKING    its route's credential check (bcrypt, in a thread) runs
      -> CONNECTING   the credentials passed
      -> DONE         they did not: 401
      -> FAILED       the client left, or sent garbage first
    CONNECTING  a backend is being chosen (queue included) and connected
      -> SENDING      a connection is attached (new or pooled)
      -> FAILED       no backend (503 or 502), the client left
    SENDING     the request goes to the backend; no final response yet
      -> SENDING      an interim (1xx) response went on
      -> CONNECTING   the connection was lost and a retry is safe
      -> STREAMING    the final response head arrived
      -> TUNNEL       a 101 to an upgrade request
      -> FAILED       502, 504, 408, or the client left
    STREAMING   the response body is relayed to the client
      -> DONE         the response is complete
      -> FAILED       cut short (by either side)
    TUNNEL      bytes relayed both ways after a 101
      -> DONE         the tunnel closed
    DONE, FAILED      over: the slot is back, the connection pooled or closed

The request body is a stream of its own beside the phase: it may still be
arriving when the final response starts (a backend may answer early);
C{requestDone} says whether it is complete.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute  # type: ignore[import-untyped]

from ..config import RETRY_STATUSES
from ..connect import ConnectAttempt, NoBackendAvailable
from ..pool import Backend
from ..wording import counted
from ._backend import BackendConnection
from ._plan import (
    GIVE_UP,
    RETRY_FRESH,
    BadResponse,
    RawHead,
    RequestPlan,
    retryAfterLoss,
    switchingHead,
)

WAITING = "waiting"
CHECKING = "checking"
CONNECTING = "connecting"
SENDING = "sending"
STREAMING = "streaming"
TUNNEL = "tunnel"
DONE = "done"
FAILED = "failed"

TRANSITIONS: dict[str, frozenset[str]] = {
    WAITING: frozenset((CONNECTING, CHECKING, DONE, FAILED)),
    CHECKING: frozenset((CONNECTING, DONE, FAILED)),
    CONNECTING: frozenset((SENDING, FAILED)),
    SENDING: frozenset((SENDING, CONNECTING, STREAMING, TUNNEL, FAILED)),
    STREAMING: frozenset((DONE, FAILED)),
    TUNNEL: frozenset((DONE,)),
    DONE: frozenset(),
    FAILED: frozenset(),
}

# The phases each phase of the common path is entered from (the table's,
# for the transitions written out there).
_INTO_CONNECTING = frozenset(p for p, to in TRANSITIONS.items() if CONNECTING in to)
_INTO_SENDING = frozenset(p for p, to in TRANSITIONS.items() if SENDING in to)
_INTO_STREAMING = frozenset(p for p, to in TRANSITIONS.items() if STREAMING in to)

# The answers that may be retried (when the pool's retry-on names them).
_RETRY_STATUSES = frozenset(RETRY_STATUSES)

# A request that may not be replayed is sent on a pooled connection only if
# that connection was in use this recently: far below any backend's
# keep-alive timeout, so it cannot be closed under us by one.
SAFE_REUSE_AGE = 1.0


class IllegalTransition(Exception):
    """
    An exchange was asked to move between phases the table does not allow.
    """


class IClientSide(IPushProducer):
    """
    What an exchange needs of the side its request came from: an HTTP/1.1
    client connection, or (later) an HTTP/2 stream.  It is also the
    producer of the request body, registered with the backend connection
    (paused while the backend cannot take more, resumed when it can).
    """

    clientHost = Attribute("The client's address as bytes, for hashing and X-Forwarded-For.")
    clientName = Attribute("The client's address as logs show it.")
    localAuthority = Attribute("The address the client reached, the Host of a request naming none.")
    privateKeys = Attribute("Idle-pool keys of backend connections private to this client.")
    closed = Attribute("Whether the client is gone.")
    protocol = Attribute('What the client speaks, "HTTP/1.1" or "HTTP/2", as logs and metrics say.')
    headsAsBytes = Attribute(
        "Whether a usual response head may come to sendHead as its bytes (raw), not as fields.")

    def proxyHeaderFor(make: Any) -> bytes:
        """
        The PROXY-protocol header for this client made by C{make} (a pool's
        version of the protocol), the same bytes each time.
        """

    def holdRequest() -> None:
        """
        Read no more of the request for now (nowhere to send it yet).
        """

    def releaseRequest() -> None:
        """
        Read the request again (unless the backend pushes back).
        """

    def requestTrailers(exchange: Exchange) -> list[tuple[bytes, bytes]] | None:
        """
        The trailers (filtered) of C{exchange}'s request, once it is
        complete, if it had any: each backend connection it is sent on gets
        them after the body.  (Kept by the client side, not the exchange:
        most requests have none, and every exchange would pay for a slot.)
        """

    def sendInterim(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        """
        Send an interim (1xx) response on.
        """

    def sendHead(exchange: Exchange, status: int, reason: bytes,
                 headers: list[tuple[bytes, bytes]] | None, raw: RawHead | None) -> Any:
        """
        Plan and send (or hold, to go with the first body bytes) the final
        response head, given as its C{reason} and C{headers}, or as its
        bytes (C{raw}: see L{Exchange.responseHead}); return the plan (with
        C{untilClose}, C{closeAfter} and C{skipBody}).

        @raise BadResponse: the head must not be relayed.
        """

    def sendBody(exchange: Exchange, data: bytes) -> None:
        """
        Send a piece of the response body.
        """

    def endResponse(exchange: Exchange, trailers: list[tuple[bytes, bytes]] | None) -> None:
        """
        The response is complete: end it for the client, with the
        backend's C{trailers} if any (and if the client takes them).
        """

    def sendError(exchange: Exchange, status: int) -> None:
        """
        Answer with a canned error response.
        """

    def sendLocal(exchange: Exchange, status: int, headers: Any, body: bytes) -> None:
        """
        Answer with a response the balancer makes itself (C{headers}: a
        sequence of name and value pairs), framed by its length.
        """

    def dropHeldHead(exchange: Exchange) -> bool:
        """
        Drop a final response head held back to go with the first body
        bytes; return whether one was (the client can still get a clean
        error response).
        """

    def cutResponse(exchange: Exchange) -> None:
        """
        Part of the response went out and the rest never will: end it so
        that the client sees it truncated.
        """

    def upgradeSent(exchange: Exchange, connection: Any) -> None:
        """
        An upgrade request went to the backend on C{connection}: relay what
        the client sends from now on to it as it comes.
        """

    def startTunnel(exchange: Exchange, connection: Any, head: bytes) -> None:
        """
        Send the 101 head on and relay raw bytes both ways from now on.
        """

    def exchangeDone(exchange: Exchange) -> None:
        """
        C{exchange} is over: serve the next request, or close.
        """

    def flushHead(exchange: Exchange) -> None:
        """
        Send a response head held back for body bytes that did not come in
        the same read.
        """

    def backendActive() -> None:
        """
        The backend sent something: the exchange is not idle.
        """

    def tunnelData(data: bytes) -> None:
        """
        Relay bytes of a tunnel from the backend.
        """

    def tunnelClosed() -> None:
        """
        The tunnel's backend side closed.
        """

    def dueBy(deadline: float) -> None:
        """
        Something of the exchange is due by C{deadline} (the response
        head): call L{Exchange.timedOut} if it has not come by then.
        """

    def registerProducer(producer: Any) -> None:
        """
        Register the backend connection relaying the response, to be paused
        while the client cannot take more.
        """

    def unregisterProducer() -> None:
        """
        The backend connection relays no more to this client.
        """


class Exchange:
    """
    One request and its response (see the module docstring for the phases).

    A plain class with slots: it is mutable and there is one per request,
    on the hot path.

    @ivar phase: where the exchange is (the module's table).
    @ivar plan: what the request head came to.
    @ivar requestDone: the request body (if any) is complete.
    @ivar pending: request body pieces read before a backend connection.
    @ivar conn: the backend connection the request is on.
    @ivar backend: the backend chosen last.
    @ivar slot: the backend whose C{maxconn} slot this exchange owns (the
        connector's invariant 1).
    @ivar tried: backends tried for this request.
    @ivar failures: tries that failed (connects and lost responses): what
        the retry policy counts.
    @ivar sends: how often the request was sent to a backend.
    @ivar retries: tries after the first, as the access log counts them:
        failed connects, and sends after the first.
    @ivar staleResent: the request was sent again on a new connection after
        a pooled connection of its own was found closed (its one such resend,
        outside the retries): from then on it uses new connections only.
    @ivar attempt: the pending connect attempt, in C{CONNECTING}.
    @ivar deadline: when the response head is due, once the request is
        sent whole (checked by the client side's one timer).
    @ivar response: the response's plan, from L{IClientSide.sendHead}.
    @ivar responded: bytes of a response left for the client.
    @ivar closeAfter: the client connection closes after this exchange.
    """

    __slots__ = (
        "attempt", "backend", "bytesIn", "bytesOut", "client", "closeAfter", "conn",
        "deadline", "factory", "failures", "gated", "local", "method", "pending", "phase",
        "plan", "requestDone", "responded", "response", "retries", "retrying", "route", "sends",
        "headsAsBytes", "setCookie", "staleResent",
        "slot", "started", "status", "tried", "upstream", "url", "version",
    )

    log = Logger()

    def __init__(
        self, client: Any, factory: Any, upstream: Any, plan: RequestPlan, method: bytes,
        url: bytes, version: str, started: float,
    ) -> None:
        self.client = client
        self.factory = factory
        self.upstream = upstream
        # The answer the balancer gives itself instead of a backend's, if
        # any: (status, headers, body).
        self.local: tuple[int, Any, bytes] | None = None
        # Its route at run time (a routed listener's), for its counters and
        # response header changes.
        self.route: Any = None
        # Its credentials are being checked.
        self.gated = False
        self.plan = plan
        self.method = method
        self.url = url
        self.version = version
        self.started = started
        self.phase = WAITING
        self.requestDone = False
        self.pending: list[bytes] | None = None
        self.conn: Any = None
        self.backend: Backend | None = None
        self.slot: Backend | None = None
        self.tried: list[Backend] = []
        self.failures = 0
        self.sends = 0
        self.retries = 0
        self.retrying = False
        self.staleResent = False
        self.attempt: ConnectAttempt | None = None
        self.deadline = 0.0
        self.response: Any = None
        self.responded = False
        self.closeAfter = False
        self.setCookie = False
        # A usual response head may come as its bytes, if the client side
        # takes them: no route changes its fields (see the router).
        self.headsAsBytes = True
        self.status = 0
        self.bytesIn = 0
        self.bytesOut = 0

    def __repr__(self) -> str:
        return f"<Exchange {self.method!r} {self.url!r} {self.phase}>"

    def _to(self, phase: str) -> None:
        if phase not in TRANSITIONS[self.phase]:
            raise IllegalTransition(f"{self.phase} -> {phase}")
        self.phase = phase

    @property
    def over(self) -> bool:
        """
        Whether the exchange is done or failed.
        """
        return self.phase is DONE or self.phase is FAILED

    # -- the request side ------------------------------------------------

    def start(self, again: bool = False) -> None:
        """
        Its turn came (or a retry is due): find a backend and connect (on
        new connections only, no pooled one, once C{staleResent}).

        @param again: prefer the backend chosen last (its pooled connection
            was stale).
        """
        if self.gated:
            # (Before its own answer too: a route's respond or redirect is
            # for those its credentials let through.)
            self._to(CHECKING)
            return
        if self.local is not None:
            self._answer(*self.local)
            return
        # (self._to(CONNECTING), written out on the common path, as below.)
        if self.phase not in _INTO_CONNECTING:
            raise IllegalTransition(f"{self.phase} -> {CONNECTING}")
        self.phase = CONNECTING
        upstream = self.upstream
        client = self.client
        prefer = (
            self.backend if again
            else upstream.stickyBackend(self) if upstream.sticky else None
        )
        slot, self.slot = self.slot, None
        attempt = upstream.connector.connect(
            client.clientName, client.clientHost, self._build, self._joined,
            self._noBackend, self.tried, prefer, None if self.staleResent else self._reuse,
            slot, self.failures, self.retrying,
        )
        if attempt is not None and self.phase is CONNECTING:
            self.attempt = attempt
            if not self.requestDone:
                # Read no more of the body until there is somewhere to send it.
                client.holdRequest()

    def gateOn(self, check: Any, refusal: tuple[int, Any, bytes]) -> None:
        """
        Send the request on only once C{check} (a Deferred of the route's
        credential check) passes; else answer with C{refusal} (a 401).
        """
        self.gated = True

        def checked(passed: object) -> None:
            self.gated = False
            if passed is not True:
                self.local = refusal
            if self.phase is CHECKING:
                self.start()

        check.addCallback(checked)

    def _answer(self, status: int, headers: Any, body: bytes) -> None:
        """
        Answer the request without a backend; a request body still to come
        is not read: the connection closes after the answer.
        """
        self._to(DONE)
        client = self.client
        plan = self.plan
        self.status = status
        self.bytesOut = len(body)
        self.closeAfter = (
            self.closeAfter or not self.requestDone or not plan.keepAlive or plan.upgrade
            or self.factory.stopping
        )
        client.sendLocal(self, status, headers, body)
        self.factory.exchangeLogged(self)
        client.exchangeDone(self)

    def _key(self, backend: Backend) -> Any:
        make = self.upstream.proxyHeader
        if make is None:
            return backend
        proxyHeader = self.client.proxyHeaderFor(make)
        # Connections that began with this client's PROXY header are its
        # own: reused by its next requests, closed when it leaves.
        key = (backend, proxyHeader)
        self.client.privateKeys.add(key)
        return key

    def _reuse(self, backend: Backend) -> Any:
        # (For an h2 pool, C{idle} hands out streams of its connections.)
        upstream = self.upstream
        return upstream.idle.take(
            backend if upstream.proxyHeader is None else self._key(backend),
            None if self.plan.replayable else SAFE_REUSE_AGE,
        )

    def _build(self, backend: Backend) -> Any:
        key = self._key(backend)
        h2 = self.upstream.h2
        if h2 is not None:
            return h2.build(backend, key, None if key is backend else key[1])
        return BackendConnection(
            self.upstream, backend, key, None if key is backend else key[1])

    def _counted(self, failures: int) -> None:
        # The connect attempt's failures, for the retry policy and the log.
        self.retries += failures - self.failures
        self.failures = failures

    def _joined(self, backend: Backend, conn: Any, failures: int) -> None:
        self.attempt = None
        if failures != self.failures:
            self._counted(failures)
        if self.sends:
            self.retries += 1
        self.backend = self.slot = backend
        if self.phase not in _INTO_SENDING:
            raise IllegalTransition(f"{self.phase} -> {SENDING}")
        self.phase = SENDING
        # Send the request on C{conn}, a connected backend connection (in
        # line: every request's path; C{backend} is C{conn}'s).
        self.conn = conn
        conn.exchange = self
        conn.requests += 1
        self.sends += 1
        self.upstream.pool.opened(backend)
        backend.closers.add(conn)
        client = self.client
        plan = self.plan
        if plan.hasBody or plan.upgrade:
            # Only a body can fill the backend's buffer: spare the others.
            conn.transport.registerProducer(client, True)
        client.registerProducer(conn)
        conn.sendHead(plan.head)
        pending = self.pending
        if pending:
            self.pending = None
            for body in pending:
                conn.sendBody(plan.chunked, body)
        if plan.upgrade:
            # What the client sends after an upgrade request's head is the
            # backend's, whatever it answers: a body it declared, or the
            # new protocol's bytes after a 101.
            client.upgradeSent(self, conn)
        if self.requestDone:
            if plan.chunked:
                conn.endBody(client.requestTrailers(self))
            # (self._due(), written out: every request's path.)
            self.deadline = deadline = (
                self.factory.passClock.polledAt + self.upstream.responseTimeout)
            client.dueBy(deadline)
        else:
            client.releaseRequest()

    def _noBackend(self, reason: Failure) -> None:
        self.attempt = None
        self._counted(getattr(reason.value, "failures", self.failures))
        if self.sends and self.failures:
            # Backends took the request and failed it: a bad gateway, not an
            # outage (as HAProxy answers).
            self.log.warn(  # noqa: G010
                "pool {pool}: {backendCount} took the request of {client} "
                "and none answered",
                pool=self.upstream.pool.name, attempts=len(self.tried),
                backendCount=counted(len(self.tried), "backend"),
                client=self.client.clientName,
            )
            self.fail(502)
            return
        self.fail(503)

    def _due(self) -> None:
        # The request is sent whole: the response head is due within the
        # response timeout (watched by the client side's one timer), from
        # the reactor's pass: a timeout is exact to a pass.
        self.deadline = deadline = (
            self.factory.passClock.polledAt + self.upstream.responseTimeout)
        self.client.dueBy(deadline)

    def requestBody(self, data: bytes) -> None:
        """
        A piece of the request body arrived from the client.
        """
        self.bytesIn += len(data)
        conn = self.conn
        if conn is not None:
            conn.sendBody(self.plan.chunked, data)
        elif not self.over:
            if self.pending is None:
                self.pending = []
            self.pending.append(data)
            self.client.holdRequest()

    def requestComplete(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """
        The request is read whole (with its C{trailers}, if any): the
        response head is due within the response timeout from now.
        """
        self.requestDone = True
        conn = self.conn
        if conn is not None:
            if self.plan.chunked:
                conn.endBody(trailers)
            if self.phase is SENDING:
                self._due()

    # -- the response side -----------------------------------------------

    def responseHead(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]] | None,
        raw: RawHead | None = None,
    ) -> bool:
        """
        The backend sent a response head: its C{reason} and C{headers}, or
        for a final response of an exchange whose C{headsAsBytes} is true
        and whose client side's is too, its bytes (C{raw}, with its L{specialLines}; C{reason} and
        C{headers} are then not given).

        @return: whether the backend's body must be read and dropped (a
            reply to HEAD).
        """
        conn = self.conn
        if status < 200:
            # (An interim response's head comes as fields.)
            assert headers is not None
            if status == 101:
                if self.plan.upgrade:
                    self._upgrade(reason, headers)
                else:
                    conn.reusable = False
                    self.backendFailed("response", "101 to a request without Upgrade")
                return False
            if status == 100 and not self.plan.expectContinue:
                return False
            self.responded = True
            self.client.sendInterim(status, reason, headers)
            return False
        self.deadline = 0.0
        backend = conn.backend
        if status in _RETRY_STATUSES and self._mayRetry(status):
            # Nothing of this answer went out: another backend may do better.
            self._retry(backend, "response", f"status {status}")
            return False
        self.status = status
        backend.countResponse(self.factory.seconds() - self.started)
        try:
            response = self.client.sendHead(self, status, reason, headers, raw)
        except BadResponse as e:
            conn.reusable = False
            self.backendFailed("response", f"malformed response: {e}")
            return False
        if self.phase not in _INTO_STREAMING:
            raise IllegalTransition(f"{self.phase} -> {STREAMING}")
        self.phase = STREAMING
        self.response = response
        self.responded = True
        return bool(response.skipBody)

    def _upgrade(self, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        conn = self.conn
        try:
            head = switchingHead(reason, headers, self.plan.websocketKey)
        except BadResponse as e:
            conn.reusable = False
            self.backendFailed("response", str(e))
            return
        self._to(TUNNEL)
        self.deadline = 0.0
        self.status = 101
        self.responded = True
        self.closeAfter = True
        conn.reusable = False
        conn.exchange = None
        # The tunnel keeps its closer (a drain or a stop ends it), which its
        # connection's connectionLost discards.
        self.upstream.pool.closed(conn.backend)
        self._releaseSlot()
        # Counted now; its access-log line is written when the tunnel closes.
        self.factory.exchangeLogged(self, False)
        self.client.startTunnel(self, conn, head)

    def tunnelClosed(self) -> None:
        """
        The tunnel closed (either side): log it, with its bytes and
        lifetime.
        """
        if self.phase is TUNNEL:
            self._to(DONE)
            self.conn = None
            self.factory.logAccess(self)

    def responseBody(self, data: bytes) -> None:
        """
        A piece of the response body arrived from the backend.
        """
        n = len(data)
        self.bytesOut += n
        self.conn.backend.bytesOut += n
        self.client.sendBody(self, data)

    def responseComplete(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """
        The backend finished its response (with its C{trailers}, if any):
        end it for the client, pool the connection if it may be reused, and
        let the client go on.
        """
        if self.phase is not STREAMING:
            return
        # (STREAMING -> DONE, in the table.)
        self.phase = DONE
        client = self.client
        if not client.closed:
            client.endResponse(self, trailers)
        # (The pool counts it closed below.)
        conn = self._detach(False)
        backend = self.backend
        assert backend is not None and conn is not None
        upstream = self.upstream
        pool = upstream.pool
        status = self.status
        if status >= 500:
            pool.closed(backend)
            pool.exchangeError(backend, f"status {status}", status)
        if not (
            conn.reusable and self.requestDone and not conn.lost
            and conn.requests < upstream.maxRequests
            and upstream.idle.put(conn.key, conn)
        ) and not conn.lost:
            conn.transport.loseConnection()
        if status < 500 and self.slot is backend and not self.retrying:
            # The common end: closed, succeeded and its slot back, in one
            # call (after the connection is pooled, for a client it wakes).
            self.slot = None
            pool.exchangeFinished(backend)
        else:
            if status < 500:
                pool.closed(backend)
                pool.exchangeSucceeded(backend)
            self._releaseSlot()
        self.factory.exchangeLogged(self)
        client.exchangeDone(self)

    # -- ending ------------------------------------------------------------

    def _detach(self, count: bool = True) -> Any:
        # (Unless C{count} is false, the pool counts its connection closed.)
        conn = self.conn
        if conn is None:
            return None
        self.conn = None
        conn.exchange = None
        backend = conn.backend
        if count:
            self.upstream.pool.closed(backend)
        backend.closers.discard(conn)
        plan = self.plan
        # (Only a body can have filled the backend's buffer: see _joined.)
        pushed = plan.hasBody or plan.upgrade
        if not conn.lost:
            if pushed:
                conn.transport.unregisterProducer()
            if conn.paused:
                conn.resumeProducing()
        client = self.client
        if not client.closed:
            client.unregisterProducer()
            if pushed:
                # The backend that paused the client's reading (it could
                # only while the client's request body went to it) is gone
                # from it: read again (unless held for another reason).
                client.resumeProducing()
        return conn

    def _releaseSlot(self) -> None:
        # The exchange is over (or a tunnel now): its slot goes back, and it
        # is no longer a retry in flight.
        pool = self.upstream.pool
        if self.retrying:
            self.retrying = False
            pool.retriesActive -= 1
        slot, self.slot = self.slot, None
        if slot is not None:
            pool.release(slot)

    def _mayRetry(self, cause: str | int, unprocessed: bool = False, unsent: bool = False) -> bool:
        """
        Whether this exchange may go to another backend after C{cause} (a
        lost connection, a timeout, a status): the request is safe to send
        again and nothing reached the client, the pool's C{retry-on} names
        the cause, its C{retries} are not spent, and its C{retry-budget}
        allows one more retry in flight.

        @param unprocessed: the backend said it did not process the request
            (an HTTP/2 stream it refused): any request without a body may
            be sent again, idempotent or not.
        @param unsent: nothing of the request left (its connection never
            came up), and its body is in hand: any request may be sent.
        """
        upstream = self.upstream
        pool = upstream.pool
        plan = self.plan
        if (
            self.responded
            or not (plan.replayable or unsent or unprocessed and not plan.hasBody)
            or cause not in pool.config.retryOn
            or not upstream.connector.retryPolicy.mayTryAnother(pool, self.failures + 1)
        ):
            return False
        if isinstance(cause, int) and not pool.available(self.tried):
            # With no other backend to try, the client gets this answer
            # rather than a 502 for the retry that could not happen.
            return False
        if self.retrying:
            return True
        if not pool.retryAllowed():
            self.log.warn(  # noqa: G010
                "pool {pool}: retry budget spent; {client} gets no other try",
                pool=pool.name, client=self.client.clientName,
            )
            return False
        self.retrying = True
        pool.retriesActive += 1
        return True

    def _retry(self, backend: Backend, kind: str, why: str) -> None:
        """
        Count a failed try against C{backend}, let go of its connection,
        and send the request to another backend.
        """
        self.failures += 1
        self.upstream.pool.trafficFailed(backend, kind, why)
        self.deadline = 0.0
        conn = self._detach()
        if conn is not None and not conn.lost:
            conn.reusable = False
            conn.transport.abortConnection()
        self.log.info(
            "backend {backend} failed {client} ({why}); retrying on another",
            backend=backend.name, client=self.client.clientName, why=why,
        )
        self.start()

    def _stop(self) -> None:
        """
        Let go of the backend side: the connect attempt, the connection
        (closed, never pooled) and the slot.
        """
        self.deadline = 0.0
        attempt, self.attempt = self.attempt, None
        if attempt is not None:
            attempt.cancel()
        conn = self._detach()
        if conn is not None and not conn.lost:
            conn.reusable = False
            conn.transport.abortConnection()
        self._releaseSlot()

    def fail(self, status: int) -> None:
        """
        End the exchange with the canned error C{status}; a response already
        under way is cut short instead, so the client sees it truncated.
        """
        if self.over or self.phase is TUNNEL:
            return
        self._to(FAILED)
        self._stop()
        client = self.client
        if client.closed:
            return
        factory = self.factory
        if self.responded and not client.dropHeldHead(self):
            client.cutResponse(self)
            factory.exchangeLogged(self)
            return
        self.responded = False
        self.status = status
        self.closeAfter = (
            self.closeAfter or not self.requestDone or not self.plan.keepAlive
            or self.plan.upgrade or factory.stopping
        )
        client.sendError(self, status)
        factory.exchangeLogged(self)
        client.exchangeDone(self)

    def abandon(self) -> None:
        """
        The client left, or sent garbage after this request's head: drop the
        exchange and abort its backend connection at once (a half-sent or
        unread request can never complete, and must hold nothing).
        """
        if self.over or self.phase is TUNNEL:
            return
        self._to(FAILED)
        self._stop()

    # -- backend failures ----------------------------------------------------

    def timedOut(self) -> None:
        """
        The response head did not come within the response timeout: 504.
        """
        backend = self.backend
        if backend is not None and self.phase is SENDING and self._mayRetry("timeout"):
            self._retry(backend, "timeout", "no response in time")
            return
        if backend is not None:
            self.upstream.pool.trafficFailed(backend, "timeout", "no response in time")
        self.log.warn(  # noqa: G010
            "backend {backend} did not answer {client} in {timeout}s",
            backend=backend.name if backend else None,
            client=self.client.clientName, timeout=self.upstream.responseTimeout,
        )
        self.fail(504)

    def requestStalled(self) -> None:
        """
        The request body stopped arriving for the request timeout: 408,
        and the backend connection is freed.
        """
        self.log.info(
            "request body of {client} stalled for {timeout}s: 408",
            client=self.client.clientName, timeout=self.factory.requestTimeout,
        )
        self.fail(408)

    def backendFailed(self, kind: str, why: str) -> None:
        """
        The backend sent something that is not a valid response: 502.
        """
        backend = self.backend
        if backend is not None:
            self.upstream.pool.trafficFailed(backend, kind, why)
            self.log.warn(  # noqa: G010
                "backend {backend} failed {client}: {why}",
                backend=backend.name, client=self.client.clientName, why=why,
            )
        self.fail(502)

    def backendRefused(self, conn: Any) -> None:
        """
        The backend refused the request unprocessed (an HTTP/2 stream reset
        with C{REFUSED_STREAM}, or beyond a GOAWAY's last stream): another
        try under C{retry-on: refused-stream}, else as a lost connection.
        """
        if self.over:
            return
        if self._mayRetry("refused-stream", True):
            self._retry(conn.backend, "response", "stream refused")
            return
        self.backendLost(conn)

    def backendUnreached(self, conn: Any, unsent: list[bytes]) -> None:
        """
        The connection C{conn} stands for never came up (an HTTP/2
        connection this request joined while it was being dialled): nothing
        of the request reached the backend, and C{unsent} is the body it was
        given.  It goes on as a request whose own connect failed: to another
        backend under C{retry-on: connect-failure}, within the retries and
        the retry budget (the failure was counted against the backend by
        the dial's own attempt); else 503, or 502 if backends took the
        request and failed it.
        """
        if self.over:
            return
        self.deadline = 0.0
        self._detach()
        if unsent:
            self.pending = unsent + (self.pending or [])
        retry = self._mayRetry("connect-failure", unsent=True)
        # It was not sent: it counts as a failed connect.  (Joining, a
        # send after the first counted itself among the retries already:
        # that count stands for the failed connect now.)
        self.sends -= 1
        self.failures += 1
        if not self.sends:
            self.retries += 1
        if retry:
            self.log.info(
                "backend {backend} never connected for {client}; trying another",
                backend=conn.backend.name, client=self.client.clientName,
            )
            self.start()
            return
        reason = NoBackendAvailable("the connection it joined never came up")
        reason.failures = self.failures
        self._noBackend(Failure(reason))

    def backendLost(self, conn: Any) -> None:
        """
        The backend connection closed before the response was complete:
        retry if that is safe, else 502 (or a truncated response).
        """
        if self.over:
            return
        backend = conn.backend
        upstream = self.upstream
        pool = upstream.pool
        decision = retryAfterLoss(
            self.responded, self.plan.replayable, conn.requests > 1, self.staleResent,
            upstream.connector.retryPolicy.mayTryAnother(pool, self.failures + 1),
        )
        if decision is RETRY_FRESH:
            # A stale pooled connection: a new one to the same backend,
            # which is no fault of the backend's (nor a try of it).  Once
            # per request: its later tries take new connections only, so
            # that each loss after this one is the backend's, counted
            # within the retries.
            self.deadline = 0.0
            self._detach()
            self.tried.remove(backend)
            self.staleResent = True
            self.start(again=True)
            return
        if decision is not GIVE_UP and self._mayRetry("reset"):
            self._retry(backend, "response", "connection lost before the response")
            return
        if not self.responded:
            pool.trafficFailed(backend, "response", "connection lost before the response")
        self.log.warn(  # noqa: G010
            "backend {backend} closed the connection of {client} before "
            "completing the response",
            backend=backend.name, client=self.client.clientName,
        )
        self.fail(502)
