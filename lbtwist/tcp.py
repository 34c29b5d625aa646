"""
TCP mode: each client connection is joined to one backend connection.

The client is paused until its backend is connected, then each transport is
registered as the other's producer, so a slow peer slows the fast one and
memory per connection stays bounded.  Half-closes pass through.  When the
chosen backend refuses or times out, the next eligible one is tried, up to
the pool's C{retries}; the client never notices.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.interfaces import IAddress, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .connect import BackendConnector, ConnectAttempt
from .dial import BackendProtocol
from .listener import ListenerFactory
from .pool import Backend, BackendPool
from .writethrough import close, halfClose, writeThrough


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
        transport becomes the producer of the peer's, so that a peer that
        cannot keep up pauses our reading.
        """
        self.peer = peer
        self.backend = backend
        self.sendToPeer = writeThrough(peer.transport)  # type: ignore[method-assign,assignment]
        peer.transport.registerProducer(self.transport, True)  # type: ignore[union-attr]
        self.feeding = True

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
        self.stopFeeding()
        if peer.readDone:
            close(self.transport)
            close(peer.transport)
        else:
            halfClose(peer.transport)

    def writeConnectionLost(self) -> None:
        """
        Our write side was shut down after the peer's FIN; nothing to do.
        """

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.closed = True
        peer = self.peer
        if peer is not None and not peer.closed:
            self.stopFeeding()
            close(peer.transport)


class ClientSide(_Side):
    """
    An accepted client connection, waiting for or joined to a backend.
    """

    factory: TCPProxyFactory
    _attempt: ConnectAttempt | None = None
    # The client's address as logs show it.
    clientName = "-"
    # connectionLost has run to its end.
    finished = False
    # Backends that failed to connect before the one joined (the access
    # log's "retries").
    failedTries = 0

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
        self._attempt = self.factory.connector.connect(
            self.clientName, clientKey(peer), self._buildBackendSide, self._joined,
            self._noBackend,
        )
        if self._attempt is not None:
            # Still connecting: leave the client's bytes in the kernel until
            # there is somewhere to send them.  (Over loopback the backend
            # is usually connected already, and nothing needs pausing.)
            self.transport.pauseProducing()  # type: ignore[union-attr]

    def _buildBackendSide(self, backend: Backend) -> BackendProtocol:
        return BackendSide(self)

    def _joined(self, backend: Backend, server: BackendSide, failures: int) -> None:
        """
        The connector found C{backend} and connected C{server} to it, after
        C{failures} failed tries; this client now owns its slot.
        """
        self._attempt = None
        self.failedTries = failures
        backend.responseTime = self.session.seconds() - self.session.started
        self.factory.pool.opened(backend)
        # A relayed connection is the whole exchange TCP mode sees: its
        # error streaks (outlier ejection) end here.
        self.factory.pool.exchangeSucceeded(backend)
        backend.closers.add(self.abortPair)
        setNoDelay(server.transport)
        self.joinTo(server, backend)
        server.joinTo(self, backend)
        proxyHeader = self.factory.proxyHeader
        if proxyHeader is not None:
            # The PROXY header goes first, before any relayed byte.
            server.transport.write(  # type: ignore[union-attr]
                proxyHeader(self.transport.getPeer(), self.transport.getHost())  # type: ignore[union-attr]
            )
        self.transport.resumeProducing()  # type: ignore[union-attr]
        self.session.startIdleTimer(self.factory.idleTimeout)

    def abortPair(self) -> None:
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
            backend.closers.discard(self.abortPair)
            self.factory.pool.closed(backend)
            self.factory.pool.release(backend)
            self.backend = None
        self.factory.clientGone()
        # Last, once every count is settled.
        if self.factory.accessLog is not None:
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
        if self.peer is not None:
            self.peer.peer = None
            self.peer = None
        self.session.client = None  # type: ignore[assignment]

    def logConnection(self, backend: Backend | None) -> None:
        """
        Write the access-log line of this finished connection to C{backend}.
        """
        peer = self.peer
        self.factory.accessLog.connection(  # type: ignore[union-attr]
            self.clientName, backend.name if backend is not None else None, self.received,
            peer.received if peer is not None else 0,
            self.session.seconds() - self.session.started, self.failedTries,
        )


class BackendSide(_Side, BackendProtocol):
    """
    A connection to a backend, made for one client.
    """

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

    def __init__(self, client: ClientSide, clock: IReactorTime) -> None:
        self.client = client
        self.clock = clock
        self.seconds: Callable[[], float] = clock.seconds
        self.started = self.lastActivity = clock.seconds()
        self._timer: Any = None
        self._timeout = 0.0

    def startIdleTimer(self, timeout: float) -> None:
        """
        Close the pair once neither side has sent anything for C{timeout}.
        """
        self._timeout = timeout
        self.lastActivity = self.seconds()
        self._timer = self.clock.callLater(timeout, self._check)

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
            client.abortPair()
        else:
            self._timer = self.clock.callLater(self._timeout - idle, self._check)

    def stopIdleTimer(self) -> None:
        """
        The pair is closed: forget the timer.
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None


class TCPProxyFactory(ListenerFactory):
    """
    Accepts clients on a listener and joins each to a backend of one pool.
    """

    log = Logger()

    def __init__(
        self,
        pool: BackendPool,
        reactor: Any,
        connector: BackendConnector,
        idleTimeout: float,
    ) -> None:
        super().__init__(pool, reactor)
        self.connector = connector
        self.idleTimeout = idleTimeout

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        if not self.admit():
            return None
        p = ClientSide()
        p.factory = self
        return p
