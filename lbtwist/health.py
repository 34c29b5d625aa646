"""
Active health checks.

A L{HealthMonitor} runs one L{LoopingCall} per backend.  Each call probes the
backend and waits for the probe to finish (a L{LoopingCall} does not call
again until the L{Deferred} it was given has fired), so probes of one backend
never overlap.  Results go to the pool, which applies rise and fall.

How a backend is probed is its health check's kind (C{health.type}): a
L{Probe} the balancer builds once from the factory registered under that
name in L{lbtwist.extend.CHECKS} (C{tcp} and C{http} are registered there
as a kind of one's own is, with L{lbtwist.extend.registerCheck}).
"""

from __future__ import annotations

import typing
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .dial import Dialler, localShortage
from .extend import CHECKS
from .pool import Admin, Backend, BackendAdded, BackendPool, BackendRemoved, PoolEvent


class Probe(typing.Protocol):
    """
    One kind of health check: what the built-in C{tcp} and C{http} checks
    implement, and what the factory given to
    L{lbtwist.extend.registerCheck} returns (from the balancer's
    L{Dialler}).  One probe checks every backend of that kind, each on its
    own interval, never twice at once.
    """

    def __call__(self, backend: Backend) -> Deferred[Any]:
        """
        Check C{backend} once.

        Read C{backend.endpoint} (its endpoint string), C{backend.config.tls}
        (to reach it as traffic does: C{dialler.endpoint(backend.endpoint,
        backend.config.tls)}) and C{backend.healthCheck} (the pool's
        C{health} settings: C{path}, C{host}, C{expect-status}... are there
        for any kind that wants them); change nothing of it.

        @return: a L{Deferred} that fires (with anything) if the backend
            passed, or fails if it did not (with L{ProbeFailed} for an
            answer it did not like: its message is logged as
            C{KIND check failed: MESSAGE}, and counts towards C{fall}).
            On C{health.timeout} the monitor cancels it: its canceller
            should close what it opened.
        """


class ProbeFailed(Exception):
    """
    A probe reached the backend but did not like the answer.
    """


class Probes(dict[str, Probe]):
    """
    The probes of a balancer by health-check kind, each built from the
    factory registered in L{lbtwist.extend.CHECKS} the first time a backend
    of that kind is checked.  A probe set here (by an embedding
    application) is used instead.
    """

    def __init__(self, dialler: Dialler) -> None:
        super().__init__()
        self.dialler = dialler

    def __missing__(self, kind: str) -> Probe:
        """
        Build the probe of C{kind} from its registered factory, and keep it.

        @raise KeyError: no kind of that name is registered.
        """
        probe = self[kind] = CHECKS[kind](self.dialler)
        return probe


class _Hangup(Protocol):
    """
    Closes the connection as soon as it is made: a TCP check needs no more.
    """

    def connectionMade(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


class _HangupFactory(Factory):
    noisy = False

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _Hangup()


class TCPProbe:
    """
    A backend is healthy if it accepts a TCP connection.
    """

    def __init__(self, dialler: Dialler) -> None:
        self._dialler = dialler
        self._factory = _HangupFactory()

    def __call__(self, backend: Backend) -> Deferred[Any]:
        """
        Connect to C{backend}; fires on connection (for a TLS backend, once
        the handshake verified it), fails on refusal.
        """
        return self._dialler.endpoint(backend.endpoint, backend.config.tls).connect(self._factory)


class HealthMonitor(Service):
    """
    Probes every backend of a pool on its interval, and follows the pool as
    backends are added and removed.

    @ivar probes: how to probe, by health-check kind (C{tcp}, C{http}, or
        a kind registered with L{lbtwist.extend.registerCheck}).
    """

    log = Logger()

    def __init__(
        self,
        pool: BackendPool,
        probes: dict[str, Probe],
        clock: IReactorTime,
    ) -> None:
        self.pool = pool
        self.probes = probes
        self.clock = clock
        self._loops: dict[Backend, LoopingCall] = {}
        self._inFlight: dict[Backend, Deferred[object]] = {}

    def startService(self) -> None:
        super().startService()
        self.pool.observers.append(self._poolChanged)
        for backend in self.pool:
            self._watch(backend)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._poolChanged in self.pool.observers:
            self.pool.observers.remove(self._poolChanged)
        for backend in list(self._loops):
            self._unwatch(backend)
        return succeed(None)

    def _poolChanged(self, event: PoolEvent) -> None:
        if isinstance(event, BackendAdded):
            self._watch(event.backend)
        elif isinstance(event, BackendRemoved):
            self._unwatch(event.backend)

    def _watch(self, backend: Backend) -> None:
        loop = LoopingCall(self.check, backend)
        loop.clock = self.clock
        self._loops[backend] = loop
        loop.start(backend.healthCheck.interval, now=True).addErrback(
            lambda f: self.log.failure("health loop of {backend} died", f,
                                       backend=backend.name)
        )

    def _unwatch(self, backend: Backend) -> None:
        loop = self._loops.pop(backend, None)
        if loop is not None and loop.running:
            loop.stop()
        probe = self._inFlight.pop(backend, None)
        if probe is not None:
            probe.cancel()

    def _probe(self, kind: str, backend: Backend) -> Deferred[Any]:
        """
        Probe C{backend} with the probe of its check's C{kind}.
        """
        return self.probes[kind](backend)

    def check(self, backend: Backend) -> Deferred[None] | None:
        """
        Probe C{backend} once, unless it is in maintenance, and tell the pool.

        @return: fires when the probe is over (never fails).
        """
        if backend.admin is Admin.MAINT or backend.removed:
            return None
        hc = backend.healthCheck
        started = self.clock.seconds()
        # The probe is built here on first use (see Probes): a factory that
        # raises fails this check, as a probe that raises does, and is tried
        # again on the next interval, rather than ending the loop and leaving
        # the backend unchecked, and taking clients, for good.
        d = maybeDeferred(self._probe, hc.kind, backend)
        self._inFlight[backend] = d
        timedOut: list[bool] = []

        def timeOut() -> None:
            timedOut.append(True)
            d.cancel()

        timer = self.clock.callLater(hc.timeout, timeOut)

        def done(result: object) -> None:
            if not timedOut:
                timer.cancel()
            self._inFlight.pop(backend, None)
            if not self.running or backend.removed or backend.admin is Admin.MAINT:
                return
            if isinstance(result, Failure):
                shortage = None if timedOut else localShortage(result)
                if shortage is not None:
                    # The balancer, not the backend, is out of descriptors
                    # or buffers: a failure or a streak would take healthy
                    # backends away for longer than the shortage lasts.
                    self.log.warn(  # noqa: G010
                        "backend {backend} of pool {pool}: {kind} check not made, "
                        "the balancer is short of resources ({error}: {why}); "
                        "its health stays {health}",
                        backend=backend.name, pool=self.pool.name, kind=hc.kind,
                        error=shortage, why=result.getErrorMessage(),
                        health=backend.health.value,
                    )
                    return
                why = "timed out" if timedOut else result.getErrorMessage()
                self.pool.failed(backend, "probe", f"{hc.kind} check failed: {why}")
                backend.probeLatency = None
            else:
                backend.probeLatency = self.clock.seconds() - started
                self.pool.succeeded(backend, f"{hc.kind} check passed")

        return d.addBoth(done)
