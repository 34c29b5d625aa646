"""
HTTP mode's listener factory: each request is balanced on its own, over
kept-alive client connections and pooled backend connections.

L{HTTPProxyFactory} holds what the client connections of one listener
share: the client-side settings, counters and the access log; each pool
its requests go to is an L{Upstream} (the connect engine, the idle pool,
sticky sessions, the backend-side settings).  The work is done by the exchange
core (L{lbtwist.http._exchange}), the client connection
(L{lbtwist.http._client}) and the backend connection
(L{lbtwist.http._backend}); what goes on the wire is planned by the pure
functions of L{lbtwist.http._plan}.

The hot path avoids per-request allocations it can: one exchange and one
plan per request, the head built by one C{join}, no timer per request (the
client connection's one timer watches the response deadline), no log
formatting unless the access log is on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from ..config import ListenerConfig
from ..dial import Dialler
from ..listener import ListenerFactory
from ..passtime import passClock
from ..pool import BackendPool
from ..routeconfig import Route
from ..routing import RouteCounters
from ._client import ClientConnection
from ._exchange import Exchange
from ._h2 import H2Connection, ProtocolSniffer
from ._plan import measuredAbove, planRequest, planWholeRequest
from ._router import Router
from ._upstream import Upstream

# Status classes by the status's hundreds: made once, not per request.
_CLASSES = tuple(f"{n}xx" for n in range(10))


class HTTPProxyFactory(ListenerFactory):
    """
    Accepts HTTP clients on a listener and balances their requests over a
    pool.

    @ivar upstream: its pool, as its requests reach it.
    @ivar upstreams: the pools its requests reach, by name.
    @ivar refused: requests refused as malformed or too large.
    @ivar statuses: responses sent, by status class (C{"2xx"}...).
    @ivar http2: its HTTP/2 settings if its clients may speak HTTP/2, else
        L{None} (its connections are HTTP/1.1 from the first byte).
    @ivar h2Connections: HTTP/2 client connections accepted.
    @ivar h2Streams: HTTP/2 streams (requests) accepted.
    @ivar h2Refused: HTTP/2 streams refused (over the concurrency limit,
        or after GOAWAY).
    @ivar h2Calmed: HTTP/2 clients closed for abuse (ENHANCE_YOUR_CALM).
    @ivar h2Responses: responses sent over HTTP/2.
    """

    log = Logger()
    # Its attributes (and its base's) in slots, as its connections'
    # (L{lbtwist.http._client.ClientConnection}): the hot path reads them on
    # every request.  (C{limit} and C{alpn}, class defaults the balancer
    # may set, stay in the instance dictionary.)
    __slots__ = (
        "_dialler", "abandoned", "accepted", "accessLog", "accessLogs", "activeClients", "clients",
        "forwardedProto", "h2Calmed", "h2Connections", "h2Refused", "h2Responses", "h2Streams",
        "http2", "idleTimeout", "maxHeaderSize", "maxRequestLine", "measuredAbove", "passClock",
        "pool", "pools", "proxyHeader", "reactor", "refused", "requestTimeout", "router", "seconds",
        "settings", "statuses", "stopping", "upstream", "upstreams",
    )

    def __init__(
        self,
        pool: BackendPool,
        reactor: Any,
        dialler: Dialler,
        listener: ListenerConfig,
        pools: Mapping[str, BackendPool] | None = None,
    ) -> None:
        """
        @param pool: the listener's pool: its client-side settings are the
            listener's, and it takes the requests when there are no routes.
        @param pools: every pool, by name, as the balancer keeps them (read
            live: a pool added there can be routed to at once).
        """
        super().__init__(pool, reactor)
        self.seconds: Callable[[], float] = reactor.seconds
        # The time of the reactor's pass (its polledAt), for the stamps a
        # pass's time is exact enough for: last activity, a response's
        # deadline.  (What users see, the response and request times,
        # reads the clock.)
        self.passClock = passClock(reactor)
        self._dialler = dialler
        config = pool.config
        http = config.http
        self.settings = http
        self.maxHeaderSize = http.maxHeaderSize
        self.maxRequestLine = http.maxRequestLine
        # A request head read in fewer bytes is within both limits, and only
        # a larger one is measured (see ClientConnection.on_headers_complete).
        self.measuredAbove = min(self.maxRequestLine, measuredAbove(self.maxHeaderSize))
        self.idleTimeout, self.requestTimeout = listener.clientTimeouts(config)
        self.forwardedProto = b"https" if listener.terminatesTLS else b"http"
        self.upstream = Upstream(pool, reactor, dialler, self.forwardedProto)
        self.upstreams: dict[str, Upstream] = {pool.name: self.upstream}
        self.pools: Mapping[str, BackendPool] = pools if pools is not None else {pool.name: pool}
        self.router: Router | None = None
        self.setRoutes(listener.routes, listener.defaultRoute)
        self.refused = 0
        # Requests dropped because their client left before the answer.
        self.abandoned = 0
        self.statuses: dict[str, int] = {}
        self.clients: set[Any] = set()
        self.http2 = listener.http2 if listener.speaksHTTP2 else None
        self.h2Connections = 0
        self.h2Streams = 0
        self.h2Refused = 0
        self.h2Calmed = 0
        # Responses sent over HTTP/2 (the HTTP/1.1 ones are the rest of
        # statuses: nothing more is counted on the HTTP/1.1 path).
        self.h2Responses = 0
        # Set by a graceful stop: no more keep-alive.
        self.stopping = False

    def setClientTimeouts(self, listener: ListenerConfig) -> tuple[float, float]:
        """
        Take C{listener}'s client timeouts (a reload changed them): the
        connections it accepts from now on have them, and those already
        open meet them from their next timeout check.

        @return: the C{idle} and C{request} timeouts taken.
        """
        self.idleTimeout, self.requestTimeout = listener.clientTimeouts(self.pool.config)
        return self.idleTimeout, self.requestTimeout

    # -- routes --------------------------------------------------------------

    def setRoutes(self, routes: Sequence[Route], default: Route | None) -> None:
        """
        Route new requests by C{routes} (validated already) and C{default}
        from now on; requests under way finish as they began.  No routes and
        no default route: every request goes to the listener's pool, with
        no routing at all.
        """
        if not routes and default is None:
            self.router = None
            return
        self.router = Router(
            self, routes, default, self.router, self.seconds, self._runInThread)

    def routeCounters(self) -> list[RouteCounters]:
        """
        What each route did, in order, the default route's (or the 404's,
        named C{default}) last; none for a listener without routes.
        """
        router = self.router
        if router is None:
            return []
        return [rt.counters for rt in router.runtimes()]

    def exchangeFor(
        self, side: Any, method: bytes, url: bytes, version: str,
        headers: list[tuple[bytes, bytes]], keepAlive: bool, upgrade: bool, started: float,
    ) -> Exchange:
        """
        The exchange of a request head read by C{side} (an L{IClientSide}:
        an HTTP/1.1 connection, an HTTP/2 stream): routed if the listener
        has routes, planned for its pool.

        @raise lbtwist.http._errors.BadRequest: the head must be refused.
        """
        router = self.router
        if router is not None:
            return router.exchange(side, method, url, version, headers, keepAlive, upgrade,
                                   started)
        upstream = self.upstream
        plan = planRequest(
            method, url, version, headers, keepAlive, upgrade, side.clientHost,
            side.localAuthority, upstream.rules,
        )
        return Exchange(side, self, upstream, plan, method, url, version, started)

    def wholeExchange(self, side: Any, data: bytes, started: float) -> Exchange | None:
        """
        The exchange of a request read whole by C{side} (a read that may be
        its head and nothing more: C{side} takes it only if llhttp reads
        the read as that head), planned from its bytes
        (L{planWholeRequest}); or L{None} if it is not a usual request, or
        if the listener has routes (which may read and change any field),
        or its pool's rules read a field such a plan relays as it came.
        """
        if self.router is not None:
            return None
        upstream = self.upstream
        rules = upstream.rules
        if not rules.wholeHeads:
            return None
        whole = planWholeRequest(data, side.clientHost, rules)
        if whole is None:
            return None
        method, target, plan = whole
        return Exchange(side, self, upstream, plan, method, target, "1.1", started)

    def upstreamFor(self, name: str) -> Upstream | None:
        """
        Pool C{name} as this listener's requests reach it, or L{None} if
        there is no such pool.
        """
        upstream = self.upstreams.get(name)
        if upstream is None:
            pool = self.pools.get(name)
            if pool is None:
                return None
            upstream = self.upstreams[name] = Upstream(
                pool, self.reactor, self._dialler, self.forwardedProto)
        return upstream

    def forgetPool(self, name: str) -> None:
        """
        Pool C{name} was removed: close its idle connections here.
        """
        upstream = self.upstreams.pop(name, None)
        if upstream is not None:
            upstream.close()
        if self.router is not None:
            self.router.forget(name)

    def _runInThread(self, f: Callable[[], bool]) -> Any:
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), f)

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        if not self.admit():
            return None
        client: Protocol
        if self.http2 is None:
            client = ClientConnection(self)
        else:
            # HTTP/1.1 or HTTP/2, chosen by ALPN or the first bytes.
            client = ProtocolSniffer(self, self.http2)
        self.clients.add(client)
        return client

    def chosen(self, sniffer: Protocol, http2: bool) -> Protocol:
        """
        The protocol a connection turned out to speak, in place of its
        L{ProtocolSniffer}.
        """
        self.clients.discard(sniffer)
        client: Protocol
        if http2:
            assert self.http2 is not None
            client = H2Connection(self, self.http2)
        else:
            client = ClientConnection(self)
        self.clients.add(client)
        return client

    def softStop(self, idleFor: float = 0.0) -> None:
        """
        A graceful stop began, as HAProxy's soft-stop: close the clients
        waiting between requests now (those that sent nothing for
        C{idleFor} seconds), and answer every request still to come with
        C{Connection: close}, so that keep-alive clients leave once served
        instead of holding the stop up until its grace ends.
        """
        self.stopping = True
        for client in list(self.clients):
            client.stopIfIdle(idleFor)

    def stopFactory(self) -> None:
        """
        The listener stopped: close the idle backend connections.
        """
        for upstream in self.upstreams.values():
            upstream.close()

    def closePrivate(self, keys: set[Any]) -> None:
        """
        Close the idle backend connections private to a client that left
        (those that began with its PROXY header).
        """
        for upstream in self.upstreams.values():
            upstream.idle.closeKeys(keys)

    def exchangeLogged(self, ex: Exchange, log: bool = True) -> None:
        """
        C{ex} is answered: count the status class of its response and
        write its access-log line (unless C{log} is false: an upgrade's is
        written when its tunnel closes).
        """
        cls = _CLASSES[ex.status // 100]
        statuses = self.statuses
        statuses[cls] = statuses.get(cls, 0) + 1
        route = ex.route
        if route is not None:
            route.counters.count(cls, self.seconds() - ex.started)
        if log and (self.accessLog is not None or self.accessLogs):
            self.logAccess(ex)

    def responsesByProtocol(self) -> dict[str, int]:
        """
        The responses sent (as L{statuses} counts them), by the protocol
        the client spoke: C{HTTP/2} only on a listener that speaks it.
        """
        total = sum(self.statuses.values())
        if self.http2 is None:
            return {"HTTP/1.1": total}
        return {"HTTP/1.1": total - self.h2Responses, "HTTP/2": self.h2Responses}

    def logAccess(self, ex: Exchange) -> None:
        """
        Write the access-log line of C{ex}, if the access log is on: its
        duration runs from the request to now (for an upgrade, to the
        tunnel's close, with the tunnel's bytes each way), to the access
        log of the pool that served it (see L{accessLogs}).  A sink that
        raises loses its line, not the exchange (see L{accessLogFailed}).
        """
        logs = self.accessLogs
        log = self.accessLog if logs is None else logs.get(ex.upstream.pool.name)
        if log is not None:
            backend = ex.backend
            fields = (
                ex.client.clientName, ex.method.decode("latin-1"), ex.url.decode("latin-1"),
                ex.status, backend.name if backend is not None else None,
                ex.bytesIn, ex.bytesOut, self.seconds() - ex.started, ex.retries,
                ex.client.protocol,
            )
            try:
                if ex.upstream.rules.captureHeaders:
                    # The pool's sink asked for them (its own, which takes
                    # them: see lbtwist.accesslog.capturesHeaders).
                    plan = ex.plan
                    log.request(*fields, referer=_text(plan.referer),  # type: ignore[call-arg]
                                userAgent=_text(plan.userAgent))
                else:
                    log.request(*fields)
            except Exception:
                self.accessLogFailed()


def _text(value: bytes | None) -> str | None:
    """
    A header's value as the access log takes it (bytes as Latin-1, as the
    path is given), if there is one.
    """
    return None if value is None else value.decode("latin-1")

