"""
TCP mode: each client connection is joined to one backend connection.

The client is paused until its backend is connected, then each transport is
registered as the other's producer once a write to the other queues (the
PROXY header and a routed client's replayed hello included), so a slow peer
slows the fast one and memory per connection stays bounded.  Half-closes pass through.  When the
chosen backend refuses or times out, the next eligible one is tried, up to
the pool's C{retries}; the client never notices.

A listener with routes (L{RoutedClientSide}) first chooses the pool: when a
route matches on the TLS server name, it reads the client's ClientHello
(one record at most, within a bounded wait) without terminating TLS,
matches the route table on it and the client's address, then connects the
route's pool and replays the bytes read to the backend before relaying.
A listener without routes builds the plain L{ClientSide}, which does none
of this.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Mapping, Sequence

from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .config import ListenerConfig
from .connect import BackendConnector, ConnectAttempt, FixedRetries
from .dial import BackendProtocol
from .listener import ListenerFactory
from .pool import Backend, BackendPool
from .proxyprotocol import PROXY_HEADERS
from .routeconfig import Route
from .routing import CompiledRoute, RouteCounters, RouteTable, connectionFacts
from .sni import MAX_HELLO, Hello, NeedMore, readClientHello
from .writethrough import close, halfClose, writeLast, writeThrough


def clientKey(address: IAddress) -> bytes | None:
    """
    The bytes that identify a client for hashing policies: its IP address.
    """
    host = getattr(address, "host", None)
    return host.encode("ascii", "replace") if isinstance(host, str) else None


def describe(address: IAddress) -> str:
    """
    A short printable form of a peer address.
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is not None:
        return f"{host}:{port}"
    return str(getattr(address, "name", address))


def setNoDelay(transport: Any) -> None:
    """
    Turn off Nagle's algorithm where the transport has it: a relay must not
    hold back the last segment of a response (it costs about 40 ms each).
    """
    setter = getattr(transport, "setTcpNoDelay", None)
    if setter is not None:
        try:
            setter(True)
        except OSError:
            pass


@implementer(IHalfCloseableProtocol)
class _Side(Protocol):
    """
    One end of a joined pair: what it reads, its peer writes.
    """

    peer: _Side | None = None
    readDone = False
    closed = False
    feeding = False
    received = 0
    session: TCPSession
    backend: Backend | None = None

    def sendToPeer(self, data: bytes) -> None:
        """
        Write C{data} to the peer; replaced by a write-through to the peer's
        socket once the pair is joined.
        """
        if self.peer is not None:
            self.peer.transport.write(data)  # type: ignore[union-attr]

    def joinTo(self, peer: _Side, backend: Backend) -> None:
        """
        Relay to C{peer} from now on, counting bytes against C{backend}: our
        transport becomes the producer of the peer's once the peer's queues
        (see L{_feed}), so that a peer that cannot keep up pauses our
        reading.
        """
        self.peer = peer
        self.backend = backend
        self.sendToPeer = writeThrough(peer.transport, self._feed)  # type: ignore[method-assign,assignment]

    def _feed(self) -> None:
        """
        The peer's transport is about to queue what we relay (the kernel
        did not take it all): from now on our transport is its streaming
        producer, paused while that queue is full.  Until then it need not
        be: what a relay writes mostly goes straight to the socket.
        """
        peer = self.peer
        if not self.feeding and peer is not None and not (self.closed or self.readDone):
            self.feeding = True
            peer.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]

    def stopFeeding(self) -> None:
        """
        Nothing more will come from this side: stop being the peer's
        producer, so that closing the peer does not wait on us (a TLS
        transport waits for its producer before its close_notify).
        """
        if self.feeding and self.peer is not None:
            self.feeding = False
            self.peer.transport.unregisterProducer()  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        """
        This side sent FIN: pass the half-close on, and close both when both
        directions are finished.
        """
        self.readDone = True
        peer = self.peer
        if peer is None:
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        if self.feeding:
            self.stopFeeding()
        if peer.readDone:
            close(self.transport)
            if not peer.closed:
                # (Closing ours usually closed it: see connectionLost.)
                close(peer.transport)
        else:
            halfClose(peer.transport)

    def writeConnectionLost(self) -> None:
        """
        Our write side was shut down after the peer's FIN; nothing to do.
        """

    # Which of its backend's byte counts what this side reads adds to.
    countedAs = "bytesIn"

    def finalDataReceived(self, data: bytes) -> None:
        """
        The last bytes before this side's FIN, which its transport reports
        next, at once (see L{lbtwist.leantcp._LeanConnection.doReadToEnd}):
        relayed and counted as L{dataReceived} does, but handed to the
        peer's socket with C{MSG_MORE} (L{writeLast}), so that the FIN the
        half-close (or close) sends next leaves in the same segment.
        """
        peer = self.peer
        if peer is None:
            # Not joined yet (a routed client reading its hello).
            self.dataReceived(data)
            return
        session = self.session
        session.lastActivity = session.seconds()
        n = len(data)
        self.received += n
        backend = self.backend
        setattr(backend, self.countedAs, getattr(backend, self.countedAs) + n)
        writeLast(peer.transport, data)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and not peer.closed:
            if self.feeding:
                self.stopFeeding()
            close(peer.transport)


class ClientSide(_Side):
    """
    An accepted client connection, waiting for or joined to a backend.
    """

    factory: TCPProxyFactory
    # The pool this client is sent to, and its connector (the listener's,
    # unless a route chose another).
    pool: BackendPool
    connector: BackendConnector
    _attempt: ConnectAttempt | None = None
    # The client's address as logs show it.
    clientName = "-"
    # connectionLost has run to its end.
    finished = False
    # Backends that failed to connect before the one joined (the access
    # log's "retries").
    failedTries = 0
    # Its reading is paused while its backend connects (not when the
    # backend connected at once, as it usually does over loopback).
    _held = False

    def dataReceived(self, data: bytes) -> None:
        session = self.session
        session.lastActivity = session.seconds()
        n = len(data)
        self.received += n
        self.backend.bytesIn += n  # type: ignore[union-attr]
        self.sendToPeer(data)

    def connectionMade(self) -> None:
        setNoDelay(self.transport)
        self.session = TCPSession(self, self.factory.reactor)
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        self.clientName = describe(peer)
        self._attempt = self.connector.connect(
            self.clientName, clientKey(peer), self._buildBackendSide, self._joined,
            self._noBackend,
        )
        if self._attempt is not None:
            # Still connecting: leave the client's bytes in the kernel until
            # there is somewhere to send them.  (Over loopback the backend
            # is usually connected already, and nothing needs pausing.)
            self._hold()

    def _hold(self) -> None:
        self._held = True
        self.transport.pauseProducing()  # type: ignore[union-attr]

    def _buildBackendSide(self, backend: Backend) -> BackendProtocol:
        return BackendSide(self)

    def _joined(self, backend: Backend, server: BackendSide, failures: int) -> None:
        """
        The connector found C{backend} and connected C{server} to it, after
        C{failures} failed tries; this client now owns its slot.
        """
        self._join(backend, server, failures, self.factory.proxyHeader,
                   self.factory.idleTimeout)

    def _join(self, backend: Backend, server: BackendSide, failures: int,
              proxyHeader: Callable[[Any, Any], bytes] | None, idleTimeout: float) -> None:
        """
        Relay between this client and C{server}, connected to C{backend},
        sending C{proxyHeader}'s header first if there is one, and closing
        both after C{idleTimeout} seconds without traffic.
        """
        self._attempt = None
        self.failedTries = failures
        backend.countResponse(self.session.seconds() - self.session.started)
        self.pool.relayJoined(backend)
        backend.closers.add(self)
        setNoDelay(server.transport)
        if self._held:
            # Resumed before the backend becomes its consumer (nothing is
            # read before the next reactor pass), so that a pause the
            # backend asks for from here on (its buffer full with what is
            # written below) stands.
            self._held = False
            self.transport.resumeProducing()  # type: ignore[union-attr]
        self.joinTo(server, backend)
        server.joinTo(self, backend)
        if proxyHeader is not None:
            # The PROXY header goes first, before any relayed byte, written
            # as they are: should it queue, the backend's transport pauses
            # this one from then on.
            self.sendToPeer(
                proxyHeader(self.transport.getPeer(), self.transport.getHost())  # type: ignore[union-attr]
            )
        self.session.startIdleTimer(idleTimeout, self.factory.idleTimers)

    def abortNow(self) -> None:
        """
        Close both sides now: a drain's grace period is over, or the pair
        went idle.
        """
        self.transport.abortConnection()  # type: ignore[union-attr]
        if self.peer is not None:
            self.peer.transport.abortConnection()  # type: ignore[union-attr]

    def _noBackend(self, reason: Failure) -> None:
        self._attempt = None
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        super().connectionLost(reason)
        if self._attempt is not None:
            self._attempt.cancel()
            self._attempt = None
        self.session.stopIdleTimer()
        backend = self.backend
        if backend is not None:
            backend.closers.discard(self)
            self.pool.relayEnded(backend)
            self.backend = None
        self.factory.clientGone()
        # Last, once every count is settled.
        if self.factory.accessLog is not None or self.factory.accessLogs:
            self.logConnection(backend)
        self.finished = True
        if self.peer is None or self.peer.closed:
            self.unlink()

    def unlink(self) -> None:
        """
        Both sides are closed: drop the references that make the pair a
        cycle, so that reference counting frees it now, not the garbage
        collector later.
        """
        peer = self.peer
        if peer is not None:
            # (Each side's write-through refers back to it, see _feed.)
            peer.__dict__.pop("sendToPeer", None)
            peer.peer = None
            self.peer = None
        self.__dict__.pop("sendToPeer", None)
        self.session.client = None  # type: ignore[assignment]

    def logConnection(self, backend: Backend | None) -> None:
        """
        Write the access-log line of this finished connection to C{backend}
        (a sink that raises loses the line, not the rest of the close: see
        L{ListenerFactory.accessLogFailed}), to the access log of the pool
        its route chose.
        """
        factory = self.factory
        logs = factory.accessLogs
        log = factory.accessLog if logs is None else logs.get(self.pool.name)
        if log is None:
            return
        peer = self.peer
        try:
            log.connection(
                self.clientName, backend.name if backend is not None else None, self.received,
                peer.received if peer is not None else 0,
                self.session.seconds() - self.session.started, self.failedTries,
            )
        except Exception:
            factory.accessLogFailed()


class BackendSide(_Side, BackendProtocol):
    """
    A connection to a backend, made for one client.
    """

    countedAs = "bytesOut"

    def __init__(self, client: ClientSide) -> None:
        self.client = client
        self.session = client.session

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        super().connectionLost(reason)
        # Only once the client side is done with the pair (its access log
        # reads this side's counts): it may be closing us from its own
        # connectionLost.
        if self.client.finished:
            self.client.unlink()

    def dataReceived(self, data: bytes) -> None:
        session = self.session
        session.lastActivity = session.seconds()
        n = len(data)
        self.received += n
        self.backend.bytesOut += n  # type: ignore[union-attr]
        self.sendToPeer(data)


class TCPSession:
    """
    The shared state of a joined pair: when it last moved, and its idle timer.
    """

    # (In slots: one per proxied connection, for as long as it lives.)
    __slots__ = ("_timeout", "_timer", "_timers", "client", "clock", "lastActivity", "seconds",
                 "started")

    def __init__(self, client: ClientSide, clock: IReactorTime) -> None:
        self.client = client
        self.clock = clock
        self.seconds: Callable[[], float] = clock.seconds
        self.started = self.lastActivity = clock.seconds()
        self._timer: Any = None
        self._timeout = 0.0
        self._timers: IdleTimers | None = None

    def startIdleTimer(self, timeout: float, timers: IdleTimers | None = None) -> None:
        """
        Close the pair once neither side has sent anything for C{timeout}:
        its timer is made now, or by C{timers} a little later.
        """
        self._timeout = timeout
        self.lastActivity = self.seconds()
        if timers is not None and timeout > ARM_DELAY:
            self._timers = timers
            timers.add(self)
        else:
            self.armIdleTimer()

    def armIdleTimer(self) -> None:
        """
        Make the idle timer, due C{timeout} after the last activity.
        """
        self._timers = None
        due = self.lastActivity + self._timeout - self.seconds()
        self._timer = self.clock.callLater(max(0.0, due), self._check)

    def _check(self) -> None:
        idle = self.seconds() - self.lastActivity
        if idle >= self._timeout:
            self._timer = None
            client = self.client
            client.factory.log.info(
                "closing idle connection of {client} after {idle:.1f}s",
                client=describe(client.transport.getPeer()),  # type: ignore[union-attr]
                idle=idle,
            )
            # Abort, not close: a peer that stopped reading would keep a
            # graceful close (and the pair's counters) waiting forever.
            client.abortNow()
        else:
            self._timer = self.clock.callLater(self._timeout - idle, self._check)

    def stopIdleTimer(self) -> None:
        """
        The pair is closed: forget the timer.
        """
        timers = self._timers
        if timers is not None:
            self._timers = None
            timers.discard(self)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


# How long a joined pair may wait for its idle timer (see IdleTimers).
ARM_DELAY = 1.0


class IdleTimers:
    """
    Makes the idle timers of a listener's pairs late, and so mostly not at
    all: a proxy's connections (one request each, often) mostly close
    within a second, and a timer made and cancelled for each costs more
    than the rest of a pair's bookkeeping.  A pair joined waits here; every
    L{ARM_DELAY} seconds, while any wait, those still open get their timer,
    due when it would have been had it been made at once (a pair's timer
    counts from its last activity), so a pair still closes after exactly
    its idle timeout.  A timeout not over L{ARM_DELAY} gets its timer at
    once.
    """

    def __init__(self, clock: IReactorTime) -> None:
        self.clock = clock
        self._waiting: dict[TCPSession, None] = {}
        self._call: Any = None

    def add(self, session: TCPSession) -> None:
        """
        Make C{session}'s timer within L{ARM_DELAY} seconds, unless it
        closes first.
        """
        self._waiting[session] = None
        if self._call is None:
            self._call = self.clock.callLater(ARM_DELAY, self._arm)

    def discard(self, session: TCPSession) -> None:
        """
        C{session} closed before its timer was made; with none left
        waiting, no call is left pending either.
        """
        waiting = self._waiting
        waiting.pop(session, None)
        if not waiting and self._call is not None:
            call, self._call = self._call, None
            if call.active():
                call.cancel()

    def _arm(self) -> None:
        self._call = None
        waiting, self._waiting = self._waiting, {}
        for session in waiting:
            session.armIdleTimer()


# The longest a routing listener waits for a client's TLS ClientHello.
HELLO_TIMEOUT = 5.0


class RoutedClientSide(ClientSide):
    """
    A client of a listener with routes: its route is chosen from its address
    and, when a route looks at it, the server name of its TLS ClientHello,
    read without terminating TLS; then it is joined to a backend of the
    route's pool as a plain client is, the bytes read replayed first.

    @ivar hello: the bytes read while waiting for the ClientHello (at most
        one TLS record), or L{None} once the route is chosen.
    @ivar route: the route taken, if one was.
    @ivar counters: its counters.
    @ivar table: the routes this client is matched against.
    @ivar routeCounters: the counters of those routes, by name.
    """

    table: RouteTable | None = None
    routeCounters: Mapping[str, RouteCounters]
    hello: bytes | None = None
    route: Route | None = None
    counters: RouteCounters | None = None
    _helloTimer: Any = None

    def connectionMade(self) -> None:
        setNoDelay(self.transport)
        self.session = TCPSession(self, self.factory.reactor)
        self.clientName = describe(self.transport.getPeer())  # type: ignore[union-attr]
        factory = self.factory
        # The routes as they are now: a replacement while this client sends
        # its hello applies to the next clients.
        self.table = factory.table
        self.routeCounters = factory.counters
        if not factory.readsHello:
            self._route(None)
            return
        self.hello = b""
        self._helloTimer = factory.reactor.callLater(factory.helloTimeout, self._helloTimedOut)

    def dataReceived(self, data: bytes) -> None:
        if self.hello is None:
            super().dataReceived(data)
            return
        self.hello += data
        if self._helloTimer is None:
            # Routed already, and connecting: kept for the replay.
            return
        found = readClientHello(self.hello[:MAX_HELLO])
        if isinstance(found, NeedMore):
            return
        self._stopHelloTimer()
        if isinstance(found, Hello):
            self._route(found.serverName)
            return
        self.factory.log.info("closing {client}: {why} (this listener routes on the TLS "
                              "server name)", client=self.clientName, why=found.why)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _helloTimedOut(self) -> None:
        self._helloTimer = None
        self.factory.log.info("closing {client}: no TLS ClientHello within {timeout}s",
                              client=self.clientName, timeout=self.factory.helloTimeout)
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _stopHelloTimer(self) -> None:
        timer = self._helloTimer
        if timer is not None:
            self._helloTimer = None
            if timer.active():
                timer.cancel()

    def _route(self, serverName: str | None) -> None:
        """
        Choose the route and pool for a client that asked for C{serverName}
        (if it sent a ClientHello), and connect; close it if there is none.
        """
        factory = self.factory
        peer = self.transport.getPeer()  # type: ignore[union-attr]
        key = clientKey(peer)
        table = self.table
        route = None if table is None else table.match(
            connectionFacts(str(getattr(peer, "host", "")), serverName))
        chosen = None if route is None else factory.choosePool(route, key)
        if chosen is None:
            factory.log.info("closing {client}: no route for server name {sni}",
                             client=self.clientName, sni=serverName)
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.route = route.route  # type: ignore[union-attr]
        self.counters = self.routeCounters.get(self.route.name)
        self.pool, self.connector = chosen
        self._attempt = self.connector.connect(
            self.clientName, key, self._buildBackendSide, self._joined, self._noBackend,
        )
        if self._attempt is not None:
            self._hold()

    def _joined(self, backend: Backend, server: BackendSide, failures: int) -> None:
        """
        Joined as a plain client is, with the PROXY header and idle timeout
        of the route's pool (the listener's own idle timeout over it, and
        the route's over both); then the bytes read for routing go to the
        backend first.
        """
        config = self.pool.config
        timeouts = self.route.timeouts if self.route is not None else None
        listenerIdle = self.factory.listenerIdle
        self._join(backend, server, failures, PROXY_HEADERS.get(config.proxyProtocol or ""),
                   (timeouts.idle if timeouts is not None and timeouts.idle is not None
                    else listenerIdle if listenerIdle is not None
                    else config.timeouts.idle))
        replay, self.hello = self.hello, None
        if replay:
            self.received += len(replay)
            backend.bytesIn += len(replay)
            # (Written as relayed bytes are: see _join.)
            self.sendToPeer(replay)

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self._stopHelloTimer()
        super().connectionLost(reason)
        counters = self.counters
        if counters is not None:
            counters.count("tcp", self.session.seconds() - self.session.started)


class TCPProxyFactory(ListenerFactory):
    """
    Accepts clients on a listener and joins each to a backend of one pool,
    or, once it has routes, of the pool its route chooses.

    @ivar pools: the balancer's live pools by name, which routes send to (a
        pool added there is usable at once).
    @ivar table: the routes, compiled, or L{None} without routes.
    @ivar counters: what each route did, by name (the default route's is
        C{"default"}).
    @ivar readsHello: whether a route looks at the TLS server name, so
        clients' ClientHellos must be read before choosing.
    @ivar helloTimeout: how long a client may take to send its ClientHello.
    @ivar idleTimeout: a joined pair of its pool's is closed after this
        long without traffic.
    @ivar listenerIdle: the listener's own C{timeouts.idle}, which a pair
        a route joined to another pool takes over that pool's, or L{None}.
    """

    log = Logger()
    table: RouteTable | None = None
    readsHello = False

    def __init__(
        self,
        pool: BackendPool,
        reactor: Any,
        connector: BackendConnector,
        idleTimeout: float,
        pools: Mapping[str, BackendPool] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(pool, reactor)
        self.connector = connector
        self.idleTimeout = idleTimeout
        self.pools = pools if pools is not None else {pool.name: pool}
        self.rng = rng or random.Random()
        self.helloTimeout = min(pool.config.timeouts.request, HELLO_TIMEOUT)
        self.listenerIdle: float | None = None
        self.idleTimers = IdleTimers(reactor)
        self.clientClass: type[ClientSide] = ClientSide
        self.counters: dict[str, RouteCounters] = {}
        self._routes: tuple[Route, ...] = ()
        self._default: Route | None = None
        # By pool, and the route's own retries and connect timeout if it
        # sets them.
        self._connectors: dict[tuple[str, int | None, float | None], BackendConnector] = {
            (pool.name, None, None): connector}

    def setClientTimeouts(self, listener: ListenerConfig) -> tuple[float, float]:
        """
        Take C{listener}'s client timeouts, over its pool's: the idle
        timeout of the pairs joined from now on, and the wait for a
        ClientHello (the shorter of C{request} and L{HELLO_TIMEOUT}).

        @return: the C{idle} and C{request} timeouts taken.
        """
        self.listenerIdle = listener.timeouts.idle
        self.idleTimeout, request = listener.clientTimeouts(self.pool.config)
        self.helloTimeout = min(request, HELLO_TIMEOUT)
        return self.idleTimeout, request

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        if not self.admit():
            return None
        p = self.clientClass()
        p.factory = self
        p.pool = self.pool
        p.connector = self.connector
        return p

    # -- routes ------------------------------------------------------------

    def setRoutes(self, routes: Sequence[Route], default: Route | None) -> None:
        """
        Route new clients with C{routes} (checked already, see
        L{lbtwist.config.parseRoutes}) and C{default}; clients already
        routed keep their pools.  A route keeping its name keeps its
        counts.  With neither, every client goes to the listener's pool.
        """
        routes = tuple(routes)
        names = [r.name for r in routes] + (["default"] if default is not None else [])
        self.counters = {name: self.counters.get(name) or RouteCounters(name) for name in names}
        self._routes, self._default = routes, default
        if not routes and default is None:
            self.table, self.readsHello, self.clientClass = None, False, ClientSide
            return
        self.table = RouteTable.compile(routes, default)
        self.readsHello = any(r.match.sni for r in routes)
        self.clientClass = RoutedClientSide

    @property
    def routes(self) -> tuple[Route, ...]:
        """
        The routes in use, in order.
        """
        return self._routes

    @property
    def defaultRoute(self) -> Route | None:
        """
        The default route in use, if any.
        """
        return self._default

    def routeCounters(self) -> list[RouteCounters]:
        """
        The routes' counters in order, the default route's last.
        """
        return list(self.counters.values())

    def forgetPool(self, name: str) -> None:
        """
        The pool C{name} was removed: forget its connector.  Its clients
        already joined finish as they began.
        """
        for key in [k for k in self._connectors if k[0] == name and k[0] != self.pool.name]:
            del self._connectors[key]

    def choosePool(self, route: CompiledRoute,
                   key: bytes | None) -> tuple[BackendPool, BackendConnector] | None:
        """
        The pool (and its connector) a client of C{key} taking C{route} goes
        to: of a weighted split, by the source's hash when the pools balance
        by source (so a client keeps its pool), else at random.  L{None} if
        the pool is gone.
        """
        split = route.split
        if split is None:
            return None
        if len(split.names) == 1:
            name = split.names[0]
        elif key is not None and all(
                self.pools[n].config.policy == "source" for n in split.names if n in self.pools):
            name = split.chooseSticky(key)
        else:
            name = split.choose(self.rng.random())
        pool = self.pools.get(name)
        if pool is None:
            return None
        retries = route.route.retries
        timeouts = route.route.timeouts
        connect = timeouts.connect if timeouts is not None else None
        connector = self._connectors.get((name, retries, connect))
        if connector is None:
            connector = self._connectors[name, retries, connect] = BackendConnector(
                pool, self.reactor, self.connector.dialler,
                self.connector.retryPolicy if retries is None else FixedRetries(retries),
                connect)
        return pool, connector
