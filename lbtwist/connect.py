"""
Finding a backend for a client and connecting to it: the one connect,
failover and queue engine of both modes.

A TCP client asks for a connection once; an HTTP request asks for one per
try, and may be given an idle pooled connection instead of a new one.
Either way the pool's policy (or a preferred backend) chooses, the chosen
backend's C{maxconn} slot is taken, and a connection is reused or dialled;
when the dial fails the failure is counted against the backend (passive
health) and, if the L{RetryPolicy} allows, another backend is tried.  When
every eligible backend is at its C{maxconn}, the client waits in the
pool's FIFO queue.

The invariants, which every change here must keep (as HAProxy's
C{src/queue.c} writes its own down):

 1. Each slot has exactly one owner.  A backend's slot (C{Backend.slots})
    is taken by the L{ConnectAttempt} that chose it, and belongs to it
    until the attempt reports C{joined(backend, protocol, failures)}; from
    then on it is the caller's, who gives it back with
    C{pool.release(backend)} when its connection (TCP) or request (HTTP) is
    done.  A caller may hand a slot it holds to a new attempt
    (C{holding}): the attempt keeps it if it chooses that backend again,
    and gives it back otherwise.
 2. An attempt that fails, is cancelled, or moves on to another backend
    gives its slot back before it reports or tries again.
 3. A failure is counted against its backend before the slot goes back:
    giving a slot back wakes queued clients, who must not pick a backend
    just seen failing.
 4. A client waits in the queue only when no eligible backend it may
    still try has room (C{pool.saturated}), and holds no slot while it
    waits.  It leaves the queue exactly once: woken, timed out, or
    cancelled.
 5. An attempt reports at most once, C{joined} or C{failed}, and then lets
    go of both callbacks (they refer back to the client: kept, they would
    make cycles).  Either may be called before L{BackendConnector.connect}
    returns.  C{cancel()} reports nothing.
 6. A backend removed while it was being connected to does not get the
    client: its drain began without this connection, which is closed; the
    client goes elsewhere, and that is no failure of the backend's.
 7. A connection is dialled only once C{reuse} (if the caller gave one)
    found none to the chosen backend, and each choice of a backend asks it
    once, the first choice of a kept-alive request's fast path included:
    after a failed dial, the next choice asks again, so that it joins the
    HTTP/2 connection dialled meanwhile by the requests that had joined
    the failed one, rather than dial another.
"""

from __future__ import annotations

import typing
from typing import Any, Callable

from twisted.internet.defer import CancelledError
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.error import (
    ConnectingCancelledError,
    ConnectionRefusedError,
    TimeoutError,
)
from twisted.logger import Logger
from twisted.python.failure import Failure

from .dial import BackendProtocol, Cancellable, Dialler, localShortage
from .pool import Backend, BackendPool
from .wording import counted


class NoBackendAvailable(Exception):
    """
    No eligible backend could be reached.

    @ivar failures: the client's failed tries, when it gave up.
    """

    failures = 0


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


# The words a failed connect is counted with, by its kind (any other kind
# says what went wrong).
_FAILURE_REASONS = {"refused": "connection refused", "timeout": "connect timed out"}


def failureReason(kind: str, reason: Failure) -> str:
    """
    The reason a failed connection attempt of C{kind} (L{failureKind}) is
    counted against its backend with: C{connection refused}, C{connect
    timed out}, or C{connect failed:} and the error's message (a TLS
    backend's refused certificate, say).
    """
    return _FAILURE_REASONS.get(kind) or f"connect failed: {reason.getErrorMessage()}"


class RetryPolicy(typing.Protocol):
    """
    Whether a client whose tries failed may try another backend.
    """

    def mayTryAnother(self, pool: BackendPool, failures: int) -> bool:
        """
        @param failures: how many of the client's tries failed so far.
        """


class FixedRetries:
    """
    A fixed number of retries (a route's C{retries}, overriding its pool's).
    """

    def __init__(self, retries: int) -> None:
        self.retries = retries

    def mayTryAnother(self, pool: BackendPool, failures: int) -> bool:
        """
        Another try while C{failures} is within the fixed C{retries}.
        """
        return failures <= self.retries


class PoolRetries:
    """
    The pool's C{retries} setting: after each of up to that many failures,
    another backend is tried (read at each decision, so a reload applies).
    """

    def mayTryAnother(self, pool: BackendPool, failures: int) -> bool:
        """
        Another try while C{failures} is within the pool's C{retries}.
        """
        return failures <= pool.config.retries


Joined = Callable[[Backend, Any, int], None]
Failed = Callable[[Failure], None]


class BackendConnector:
    """
    Finds and connects backends for the clients of one pool.
    """

    log = Logger()

    def __init__(
        self,
        pool: BackendPool,
        reactor: Any,
        dialler: Dialler | None = None,
        retryPolicy: RetryPolicy | None = None,
        connectTimeout: float | None = None,
    ) -> None:
        """
        @param connectTimeout: overrides the pool's connect timeout (a
            route's), if given.
        """
        self.pool = pool
        self.reactor = reactor
        self.dialler = dialler or Dialler(reactor)
        self.retryPolicy: RetryPolicy = retryPolicy or PoolRetries()
        self.connectTimeout = connectTimeout

    def connect(
        self,
        client: str,
        key: bytes | None,
        build: Callable[[Backend], BackendProtocol],
        joined: Joined,
        failed: Failed,
        tried: list[Backend] | None = None,
        prefer: Backend | None = None,
        reuse: Callable[[Backend], Any] | None = None,
        holding: Backend | None = None,
        failures: int = 0,
        retrying: bool = False,
    ) -> ConnectAttempt | None:
        """
        Find a backend for a client and connect a protocol to it: call
        C{joined(backend, protocol, failures)} once connected (the caller
        then owns the backend's slot), or C{failed(reason)} with
        L{NoBackendAvailable} (or L{QueueFull}).

        @param client: the client's address, for the log.
        @param key: identifies the client for hashing policies.
        @param build: makes the protocol for a new connection to a backend.
        @param tried: backends not to choose; every backend tried is
            appended to it (the caller's list, kept across its attempts).
        @param prefer: a backend to choose when it is eligible, not tried,
            and has room (a sticky session, or a retry on the same backend).
        @param reuse: a connection to the chosen backend to use instead of
            dialling one, if it returns one (HTTP's idle connections).
        @param holding: a slot the caller owns and hands over (invariant 1).
        @param failures: the client's failed tries before this attempt.
        @param retrying: the client is a retry in flight already (it holds
            a unit of the pool's retry budget, so its failovers take none).

        @return: the attempt, whose C{cancel()} abandons it, or L{None} if
            it was over before this returned.
        """
        if tried is None:
            tried = []
        if reuse is not None and holding is None and not failures:
            # The common case of a kept-alive request: its first choice has
            # an idle connection, and no attempt object is needed.
            pool = self.pool
            # (choose(), written out when nothing is preferred: the pool's
            # pick is all it does then.)
            backend = (
                pool.pick(key, tried) if prefer is None
                else choose(pool, key, tried, prefer, None)
            )
            if backend is not None:
                protocol = reuse(backend)
                if protocol is not None:
                    tried.append(backend)
                    pool.acquire(backend)
                    joined(backend, protocol, 0)
                    return None
                # (Its retries look their backends up as any attempt does:
                # invariant 7.)
                attempt = ConnectAttempt(
                    self, client, key, build, tried, prefer, reuse, None, 0, joined, failed)
                attempt.dial(backend)
                return None if attempt.over else attempt
        attempt = ConnectAttempt(
            self, client, key, build, tried, prefer, reuse, holding, failures, joined, failed,
        )
        attempt.covered = retrying
        attempt.next()
        # (C{attempt.over}, written out: every TCP client comes this way.)
        return None if attempt._onJoined is None else attempt


def choose(pool: BackendPool, key: bytes | None, tried: list[Backend],
           prefer: Backend | None, holding: Backend | None) -> Backend | None:
    """
    The backend a client gets next: C{prefer} when it is eligible, not
    tried, and has room (or its slot is the client's already), else the
    pool's policy's choice among the backends not tried.
    """
    if prefer is not None:
        # (The pool's pick readmits ejected backends itself.)
        if pool._ejected:
            pool.readmit()
        if prefer.eligible and prefer not in tried and (holding is prefer or not prefer.full):
            return prefer
    return pool.pick(key, tried)


class ConnectAttempt:
    """
    One client's search for a backend (see the module's invariants).

    @ivar failures: the client's failed tries, this attempt's included.
    @ivar backend: the backend being dialled, whose slot this attempt owns.
    """

    def __init__(
        self,
        connector: BackendConnector,
        client: str,
        key: bytes | None,
        build: Callable[[Backend], BackendProtocol],
        tried: list[Backend],
        prefer: Backend | None,
        reuse: Callable[[Backend], Any] | None,
        holding: Backend | None,
        failures: int,
        joined: Joined,
        failed: Failed,
    ) -> None:
        self.connector = connector
        self.pool = connector.pool
        self.client = client
        self.key = key
        self.build = build
        self.tried = tried
        self.prefer = prefer
        self.reuse = reuse
        self.holding = holding
        self.failures = failures
        # Failures of this attempt's own dials, for the log.
        self.connectFailures = 0
        self.triedBefore = bool(tried)
        self.current: Cancellable | None = None
        self.backend: Backend | None = None
        self.queueTimer: Any = None
        # While queued with a backend ejected: wakes the queue when its
        # ejection ends.
        self.readmitTimer: Any = None
        self._onJoined: Joined | None = joined
        # The protocol of the dial under way, once built: told when that
        # dial fails or is abandoned (an HTTP/2 connection hands out streams
        # while it connects).
        self.built: Any = None
        self._onFailed: Failed | None = failed
        # This attempt counts as a retry in flight (the pool's retry budget),
        # or its client does already.
        self.retrying = False
        self.covered = False

    @property
    def over(self) -> bool:
        """
        Whether the outcome has been reported (or the attempt cancelled).
        """
        return self._onJoined is None

    def _report(self) -> tuple[Joined | None, Failed | None]:
        callbacks = self._onJoined, self._onFailed
        self._onJoined = self._onFailed = None
        self.build = self.reuse = None  # type: ignore[assignment]
        if self.retrying:
            # Its retry is over, whatever came of it.
            self.retrying = False
            self.pool.retriesActive -= 1
        return callbacks

    def _giveBack(self) -> None:
        # The slot handed over by the caller, when this attempt will not
        # use it (invariant 1).
        holding, self.holding = self.holding, None
        if holding is not None:
            self.pool.release(holding)

    def _fail(self, reason: NoBackendAvailable) -> None:
        reason.failures = self.failures
        self._giveBack()
        _, failed = self._report()
        if failed is not None:
            failed(Failure(reason))

    def cancel(self) -> None:
        """
        Abandon the attempt: neither callback will be called, and the slot
        it owns goes back.
        """
        self._report()
        if self.queueTimer is not None:
            self._leaveQueue()
        self._abandoned()
        current, backend = self.current, self.backend
        self.current = self.backend = None
        if current is not None:
            current.cancel()
        if backend is not None:
            self.pool.release(backend)
        self._giveBack()

    # -- the queue ---------------------------------------------------------

    def _wait(self) -> None:
        # Invariant 4: no slot is held while waiting.
        self._giveBack()
        pool = self.pool
        if not pool.enqueue(self._woken):
            self._fail(QueueFull("every backend is full and the queue is full"))
            return
        reactor = self.connector.reactor
        self.queueTimer = reactor.callLater(pool.config.queue.timeout, self._queueTimedOut)
        back = pool.untilReadmission()
        if back is not None:
            # A backend whose ejection ends has room, but only a pick
            # readmits it (and wakes the queue), and none may come while
            # this client waits.
            self.readmitTimer = reactor.callLater(back, pool.readmit)

    def _stopWaiting(self) -> None:
        # Out of the queue: its timers go.
        for timer in (self.queueTimer, self.readmitTimer):
            if timer is not None and timer.active():
                timer.cancel()
        self.queueTimer = self.readmitTimer = None

    def _leaveQueue(self) -> None:
        self.pool.dequeue(self._woken)
        self._stopWaiting()

    def _woken(self) -> None:
        self._stopWaiting()
        self.next()

    def _queueTimedOut(self) -> None:
        self._stopWaiting()
        pool = self.pool
        pool.queueTimedOut(self._woken)
        self.connector.log.warn(
            "pool {pool}: client {client} waited {timeout}s in the queue; refused",
            pool=pool.name, client=self.client, timeout=pool.config.queue.timeout,
        )
        self._fail(QueueFull("timed out in the queue"))

    # -- choosing and connecting -------------------------------------------

    def next(self) -> None:
        """
        Choose a backend and connect to it, wait in the queue, or give up;
        a backend chosen, take its slot, and reuse or dial a connection to
        it.
        """
        pool = self.pool
        mayTry = self.connector.retryPolicy.mayTryAnother(pool, self.failures)
        if not mayTry:
            backend = None
        elif self.prefer is None:
            # (L{choose} without a preferred backend: a TCP client's.)
            backend = pool.pick(self.key, self.tried)
        else:
            backend = choose(pool, self.key, self.tried, self.prefer, self.holding)
        if backend is None:
            if mayTry and pool.saturated(self.tried):
                self._wait()
                return
            self._giveUp()
            return
        self._take(backend)
        reuse = self.reuse
        if reuse is not None:
            protocol = reuse(backend)
            if protocol is not None:
                joined, _ = self._report()
                if joined is not None:
                    joined(backend, protocol, self.failures)
                return
        self._dial(backend)

    def dial(self, backend: Backend) -> None:
        """
        Take C{backend}'s slot and dial a connection to it: the caller
        looked it up with C{reuse} already, and found none (invariant 7).
        """
        self._take(backend)
        self._dial(backend)

    def _take(self, backend: Backend) -> None:
        # Its slot: the one handed over, or a new one (invariant 1).
        self.tried.append(backend)
        if self.holding is backend:
            self.holding = None
        else:
            self.pool.acquire(backend)
            if self.holding is not None:
                self._giveBack()

    def _dial(self, backend: Backend) -> None:
        pool = self.pool
        self.backend = backend
        connector = self.connector
        current = connector.dialler.dial(
            backend.endpoint, self._build, connector.connectTimeout or pool.config.timeouts.connect,
            self._connected, self._dialFailed, backend.config.tls,
        )
        if self.backend is backend:
            # Still connecting (a dial may be over before it returns).
            self.current = current

    def _build(self) -> BackendProtocol:
        backend = self.backend
        assert backend is not None
        self.built = protocol = self.build(backend)
        return protocol

    def _abandoned(self) -> None:
        # The dial under way will never connect its protocol.
        built, self.built = self.built, None
        dialFailed = getattr(built, "dialFailed", None)
        if dialFailed is not None:
            dialFailed()

    def _giveUp(self) -> None:
        pool = self.pool
        if self.connectFailures:
            self.connector.log.error(
                "pool {pool}: no backend reachable for client {client} "
                "after {attemptCount}",
                pool=pool.name, client=self.client, attempts=self.connectFailures,
                attemptCount=counted(self.connectFailures, "attempt"),
            )
            why = f"no backend reachable after {counted(self.connectFailures, 'attempt')}"
        elif not self.triedBefore:
            pool.noBackendFor(self.client)
            why = "no backend is available"
        else:
            # A retry found nothing more to try: the caller says why.
            why = "no other backend to try"
        self._fail(NoBackendAvailable(why))

    def _connected(self, protocol: Any) -> None:
        self.built = None
        backend, self.backend, self.current = self.backend, None, None
        assert backend is not None
        pool = self.pool
        pool.connectSucceeded(backend)
        if backend.removed:
            # Invariant 6.
            protocol.transport.loseConnection()
            pool.release(backend)
            self.next()
            return
        joined, _ = self._report()
        if joined is not None:
            # A multiplexed (HTTP/2) connection joins the client as one of
            # its streams.
            joinedAs = getattr(protocol, "joinedAs", None)
            joined(backend, protocol if joinedAs is None else joinedAs(), self.failures)
        else:
            protocol.transport.loseConnection()
            pool.release(backend)

    def _dialFailed(self, reason: Failure) -> None:
        self._abandoned()
        backend, self.backend, self.current = self.backend, None, None
        if backend is None:
            # Cancelled: the slot went back then.
            return
        pool = self.pool
        if self.over or reason.check(CancelledError, ConnectingCancelledError):
            pool.release(backend)
            return
        kind = failureKind(reason)
        self.failures += 1
        self.connectFailures += 1
        # Invariant 3 (a dial the balancer could not make for want of
        # descriptors or buffers says nothing of the backend).
        if localShortage(reason) is None:
            pool.trafficFailed(backend, kind, failureReason(kind, reason))
        pool.release(backend)
        why = "timed out" if kind == "timeout" else reason.getErrorMessage()
        if "connect-failure" not in pool.config.retryOn:
            self.connector.log.warn(
                "backend {backend} of pool {pool} failed to connect for {client} "
                "({kind}: {why}); connect failures are not retried (retry-on)",
                backend=backend.name, pool=pool.name, client=self.client, kind=kind, why=why,
            )
            self._giveUp()
            return
        if not (self.retrying or self.covered) and self.failures <= pool.config.retries:
            if not pool.retryAllowed():
                self.connector.log.warn(
                    "pool {pool}: retry budget spent; {client} gets no other try",
                    pool=pool.name, client=self.client,
                )
                self._giveUp()
                return
            self.retrying = True
            pool.retriesActive += 1
        self.connector.log.warn(
            "backend {backend} of pool {pool} failed to connect for {client} "
            "({kind}: {why}); trying another",
            backend=backend.name, pool=pool.name, client=self.client, kind=kind, why=why,
        )
        self.next()
