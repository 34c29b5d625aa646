"""
Connecting to a backend with transparent failover.

L{BackendConnector} asks the pool for a backend, connects to it with a
timeout, and when that fails counts the failure against the backend (passive
health) and tries the next eligible one, up to the pool's C{retries}.  The
caller sees either a connected protocol or L{NoBackendAvailable}.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionRefusedError,
    TimeoutError,
)
from twisted.internet.interfaces import IProtocolNegotiationFactory, IStreamClientEndpoint
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .accesslog import AccessLogFile
from .dial import BackendProtocol, Cancellable, Dialler
from .pool import Backend, BackendPool
from .proxyprotocol import PROXY_HEADERS


class NoBackendAvailable(Exception):
    """
    No eligible backend could be reached.
    """


class QueueFull(NoBackendAvailable):
    """
    Every eligible backend was at its C{maxconn}, and the client could not
    wait: the queue was full, or the client waited for the queue timeout.
    """


def failureKind(reason: Failure) -> str:
    """
    Classify a failed connection attempt for the failure counters.
    """
    if reason.check(TimeoutError, DeferredTimeoutError):
        return "timeout"
    if reason.check(ConnectionRefusedError):
        return "refused"
    return "connect"


class EndpointCache(Dialler):
    """
    Client endpoints built from backends' endpoint strings, kept for reuse:
    parsing a string for every connection would cost more than connecting.
    """

    def get(self, backend: Backend) -> IStreamClientEndpoint:
        """
        The endpoint for C{backend}.
        """
        return self.endpoint(backend.endpoint)


class BackendConnector:
    """
    Connects clients' backend sides, failing over between backends.
    """

    log = Logger()

    def __init__(
        self,
        pool: BackendPool,
        reactor: Any,
        endpoints: EndpointCache | None = None,
    ) -> None:
        self.pool = pool
        self.reactor = reactor
        self.endpoints = endpoints or EndpointCache(reactor)

    def connect(
        self,
        key: bytes | None,
        build: Callable[[], BackendProtocol],
        client: str,
        exclude: tuple[Backend, ...],
        joined: Callable[[Backend, Any], None],
        failed: Callable[[Failure], None],
    ) -> ConnectAttempt:
        """
        Connect a new protocol from C{build} to a backend chosen for C{key}:
        call C{joined(backend, protocol)} once connected, or C{failed(reason)}
        with L{NoBackendAvailable}.  Either may be called before this
        returns (see L{ConnectAttempt.over}).

        The client holds one of the backend's C{maxconn} slots from then on:
        give it back with C{pool.release(backend)} when done.

        @param client: the client's address, for the log.
        @param exclude: backends not to try.
        @return: the attempt, whose C{cancel()} abandons it without calling
            either.
        """
        attempt = ConnectAttempt(self, key, build, client, list(exclude), joined, failed)
        attempt._next()
        return attempt


class ConnectAttempt:
    """
    One client's search for a backend.
    """

    def __init__(
        self,
        connector: BackendConnector,
        key: bytes | None,
        build: Callable[[], BackendProtocol],
        client: str,
        tried: list[Backend],
        joined: Callable[[Backend, Any], None],
        failed: Callable[[Failure], None],
    ) -> None:
        self.connector = connector
        self.key = key
        self.build = build
        self.client = client
        self.tried = tried
        self.failures = 0
        self.current: Cancellable | None = None
        # The backend being dialled.
        self.backend: Backend | None = None
        self.queueTimer: Any = None
        self._onJoined: Callable[[Backend, Any], None] | None = joined
        self._onFailed: Callable[[Failure], None] | None = failed

    @property
    def over(self) -> bool:
        """
        Whether the outcome has been reported (or the attempt cancelled).
        """
        return self._onJoined is None

    def _report(self) -> tuple[Callable[[Backend, Any], None] | None, Callable[[Failure], None] | None]:
        # Once, and then let go of the callbacks: they are the client's.
        callbacks = self._onJoined, self._onFailed
        self._onJoined = self._onFailed = None
        return callbacks

    def _fail(self, reason: NoBackendAvailable) -> None:
        _, failed = self._report()
        if failed is not None:
            failed(Failure(reason))

    def cancel(self) -> None:
        """
        Abandon the attempt; neither callback will be called.
        """
        self._report()
        if self.queueTimer is not None:
            self._leaveQueue()
        current, backend = self.current, self.backend
        self.current = self.backend = None
        if current is not None:
            current.cancel()
        if backend is not None:
            self.connector.pool.release(backend)

    def _wait(self) -> None:
        """
        Every eligible backend is at its maxconn: wait in the pool's queue,
        or be refused if it is full.
        """
        pool = self.connector.pool
        if not pool.enqueue(self._woken):
            self._fail(QueueFull("every backend is full and the queue is full"))
            return
        self.queueTimer = self.connector.reactor.callLater(
            pool.config.queue.timeout, self._queueTimeOut
        )

    def _leaveQueue(self) -> None:
        self.connector.pool.dequeue(self._woken)
        if self.queueTimer is not None and self.queueTimer.active():
            self.queueTimer.cancel()
        self.queueTimer = None

    def _woken(self) -> None:
        if self.queueTimer is not None and self.queueTimer.active():
            self.queueTimer.cancel()
        self.queueTimer = None
        self._next()

    def _queueTimeOut(self) -> None:
        self.queueTimer = None
        pool = self.connector.pool
        pool.queueTimedOut(self._woken)
        self.connector.log.warn(
            "pool {pool}: client {client} waited {timeout}s in the queue; refused",
            pool=pool.name,
            client=self.client,
            timeout=pool.config.queue.timeout,
        )
        self._fail(QueueFull("timed out in the queue"))

    def _next(self) -> None:
        connector = self.connector
        pool = connector.pool
        backend = pool.pick(self.key, self.tried)
        if (
            backend is None
            and self.failures <= pool.config.retries
            and pool.saturated(self.tried)
        ):
            self._wait()
            return
        if backend is None or self.failures > pool.config.retries:
            if self.failures == 0:
                pool.noBackendFor(self.client)
                why = "no backend is available"
            else:
                connector.log.error(
                    "pool {pool}: no backend reachable for client {client} "
                    "after {attempts} attempts",
                    pool=pool.name,
                    client=self.client,
                    attempts=self.failures,
                )
                why = f"no backend reachable after {self.failures} attempts"
            self._fail(NoBackendAvailable(why))
            return
        self.tried.append(backend)
        pool.acquire(backend)
        self.backend = backend
        current = connector.endpoints.dial(
            backend.endpoint, self.build, pool.config.timeouts.connect,
            self._connected, self._failed,
        )
        if self.backend is backend:
            # Still connecting (a dial may be over before it returns).
            self.current = current

    def _connected(self, protocol: Any) -> None:
        backend, self.backend, self.current = self.backend, None, None
        assert backend is not None
        protocol.retries = self.failures
        self.connector.pool.connectSucceeded(backend)
        joined, _ = self._report()
        if joined is not None:
            joined(backend, protocol)

    def _failed(self, reason: Failure) -> None:
        backend, self.backend, self.current = self.backend, None, None
        if backend is None:
            # Cancelled: the slot went back then.
            return
        if self.over or reason.check(CancelledError, ConnectingCancelledError):
            self.connector.pool.release(backend)
            return
        kind = failureKind(reason)
        self.failures += 1
        # Counted before the slot goes back: releasing it wakes queued
        # clients, who should not pick a backend just seen failing.
        self.connector.pool.failed(backend, kind, f"connect {kind}")
        self.connector.pool.release(backend)
        self.connector.log.warn(
            "backend {backend} of pool {pool} failed to connect for {client} "
            "({kind}: {why}); trying another",
            backend=backend.name,
            pool=self.connector.pool.name,
            client=self.client,
            kind=kind,
            why="timed out" if kind == "timeout" else reason.getErrorMessage(),
        )
        self._next()


class ConnectionLimit:
    """
    The global C{maxconn}: client connections open at once over every
    listener.

    At the limit the listening ports stop accepting (new clients wait in the
    kernel's accept queue, as with HAProxy) until a connection closes.  A
    Twisted port accepts a batch of connections in one pass: each pass is
    capped at the free slots, so no connection is accepted past the limit
    only to be closed.

    @ivar refused: connections closed because they came past the limit.
    @ivar paused: how many times the listeners were paused.
    """

    log = Logger()

    def __init__(self, maxconn: int) -> None:
        self.maxconn = maxconn
        self.active = 0
        self.refused = 0
        self.paused = 0
        self._ports: list[Any] = []
        self._reading = True

    def addPort(self, port: Any) -> None:
        """
        Pause and resume C{port} (a listening port) with the others.
        """
        self._ports.append(port)
        if not self._reading:
            port.stopReading()
        doRead = getattr(port, "doRead", None)
        if doRead is not None and hasattr(port, "numberAccepts"):

            def cappedRead() -> Any:
                free = self.maxconn - self.active
                if port.numberAccepts > free:
                    port.numberAccepts = max(1, free)
                return doRead()

            port.doRead = cappedRead

    def removePort(self, port: Any) -> None:
        """
        Forget C{port}: it stopped listening.
        """
        if port in self._ports:
            self._ports.remove(port)

    def admit(self) -> bool:
        """
        A client connected: count it, or say it must be refused.

        @return: C{False} if the limit is reached (close the connection).
        """
        if self.active >= self.maxconn:
            self.refused += 1
            self._pause()
            return False
        self.active += 1
        if self.active >= self.maxconn:
            self._pause()
        return True

    def release(self) -> None:
        """
        An admitted client's connection closed.
        """
        self.active -= 1
        if not self._reading and self.active < self.maxconn:
            self._reading = True
            for port in self._ports:
                if getattr(port, "connected", True):
                    port.startReading()

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self.paused += 1
            self.log.warn(
                "{active} client connections open, the global maxconn: "
                "listeners paused until one closes",
                active=self.active,
            )
            for port in self._ports:
                port.stopReading()


@implementer(IProtocolNegotiationFactory)
class ListenerFactory(ServerFactory):
    """
    What the protocol factories of every listener share, whatever their
    mode: the pool, the counts of clients, the global C{maxconn}, the
    PROXY-protocol header, the access-log file and the protocols a TLS
    listener offers over ALPN.

    @ivar activeClients: client connections currently open.
    @ivar accepted: client connections accepted in all.
    @ivar limit: the global maxconn shared by every listener, if set.
    @ivar accessFile: the file the access log goes straight to, if any (set
        by the balancer, which owns it).
    @ivar alpn: the protocols offered over ALPN, most preferred first (set
        by the balancer from the listener's configuration).
    """

    noisy = False
    limit: ConnectionLimit | None = None
    alpn: tuple[bytes, ...] = ()

    def __init__(self, pool: BackendPool, reactor: Any) -> None:
        self.pool = pool
        self.reactor = reactor
        self.activeClients = 0
        self.accepted = 0
        self.proxyHeader = PROXY_HEADERS.get(pool.config.proxyProtocol or "")
        self.accessFile: AccessLogFile | None = None

    def acceptableProtocols(self) -> list[bytes]:
        """
        The protocols a TLS listener offers over ALPN, most preferred first.
        """
        return list(self.alpn)

    def admit(self) -> bool:
        """
        Count a new client in, unless the global maxconn says no.
        """
        limit = self.limit
        if limit is not None and not limit.admit():
            return False
        self.accepted += 1
        self.activeClients += 1
        return True

    def clientGone(self) -> None:
        """
        Count a client out.
        """
        self.activeClients -= 1
        if self.limit is not None:
            self.limit.release()
