"""
The backend pool: backends, their health and admin states, their counters,
and the choice of a backend for each new client or request.

This is the sans-IO core the protocols, probes, admin API and metrics all
share.  It takes and returns plain values, and logs through txaio.
"""

from __future__ import annotations

import bisect
import enum
import random
import time
import weakref
from collections import deque
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar, overload

import attrs
import txaio

from .config import MAX_WEIGHT, BackendConfig, HealthCheck, PoolConfig, underPool
from .policies import POLICIES, BalancingPolicy
from .wording import counted

# Upper bounds (seconds) of the response-time histogram buckets.
RESPONSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                    1.0, 2.5, 5.0, 10.0)


class Health(enum.Enum):
    """
    What the health checks (active and passive) say of a backend.
    """

    UNKNOWN = "unknown"
    UP = "up"
    DOWN = "down"


class Admin(enum.Enum):
    """
    What the operator says of a backend.

    C{DRAIN}: no new clients, current ones finish.  C{MAINT}: out of
    rotation, health checks paused.
    """

    READY = "ready"
    DRAIN = "drain"
    MAINT = "maint"


# The answers Envoy's consecutive-gateway-errors counts, besides failed
# connects, timeouts and resets.
GATEWAY_STATUSES = frozenset((502, 503, 504))
# The policies count effective weights, WEIGHT_SCALE times the configured
# weight, so that slow start can ramp even a backend of weight 1 up in
# integer steps (HAProxy scales its weights by 16 for the same reason).
WEIGHT_SCALE = 16

# The share of its weight a backend starts its slow start with: it then
# rises linearly to the full weight.
SLOW_START_FLOOR = 0.1


def rampedWeight(weight: int, progress: float) -> int:
    """
    The effective weight of a backend of C{weight} that has done
    C{progress} (0 to 1) of its slow start: from L{SLOW_START_FLOOR} of its
    full effective weight, linearly up to all of it, never below 1.
    """
    full = weight * WEIGHT_SCALE
    share = SLOW_START_FLOOR + (1.0 - SLOW_START_FLOOR) * min(1.0, max(0.0, progress))
    return max(1, int(full * share))


# Read by every eligibility test: a module global is found faster than an
# enum member (Python 3.11 looks the member up through the enum's metaclass).
_READY = Admin.READY
_DOWN = Health.DOWN


def _unwatched() -> None:
    """
    What a backend that is in no pool tells when its rotation changes.
    """


_T = TypeVar("_T")


class _Rotation(Generic[_T]):
    """
    An attribute of a backend that decides whether it may be picked (its
    admin state, health, weight...): kept in the slot of its name with an
    underscore and read from it; set, it also tells the backend's pool
    (L{Backend.rotationChanged}), which keeps the list its picks choose
    among.
    """

    def __set_name__(self, owner: type, name: str) -> None:
        self._slot = getattr(owner, "_" + name)

    @overload
    def __get__(self, backend: None, owner: type) -> _Rotation[_T]: ...

    @overload
    def __get__(self, backend: Backend, owner: type | None = None) -> _T: ...

    def __get__(self, backend: Backend | None, owner: type | None = None) -> Any:
        if backend is None:
            return self
        return self._slot.__get__(backend, owner)

    def __set__(self, backend: Backend, value: _T) -> None:
        self._slot.__set__(backend, value)
        backend.rotationChanged()


class HTTP2Counters:
    """
    A backend's HTTP/2 connections (a pool of C{protocol: h2}), counted by
    L{lbtwist.http._h2backend} and read by the metrics.

    @ivar connections: connections open (up, not yet closed).
    @ivar streams: streams open on them (requests in flight; those waiting
        for a connection being dialled included).
    @ivar goaways: GOAWAY frames received.
    @ivar lost: connections that closed with streams still open on them.
    """

    __slots__ = ("connections", "goaways", "lost", "streams")

    def __init__(self) -> None:
        self.connections = 0
        self.streams = 0
        self.goaways = 0
        self.lost = 0


class Backend:
    """
    A backend's live state and counters.

    @ivar active: connections (TCP mode) or requests (HTTP mode) in flight.
    @ivar total: connections or requests sent to it.
    @ivar failures: failures counted against it, by kind (C{connect},
        C{timeout}, C{probe}, C{response}...).
    @ivar admin: what the operator says of it (L{Admin}).
    @ivar health: what the health checks say of it (L{Health}).
    @ivar removed: it left its pool (its clients finish).
    @ivar ejected: it is out as an outlier now (until C{ejectedUntil}).
    @ivar weight: its configured weight (0: it takes no new clients).
    @ivar backup: it takes new clients only while no primary backend of its
        pool is eligible.
    @ivar effectiveWeight: what the policies count: L{WEIGHT_SCALE} times
        C{weight}, less while slow start ramps it up.
    @ivar rampStart: when its slow start began.
    @ivar rampEnd: when its slow start ends, or 0 if it is not ramping.
    @ivar http2: its HTTP/2 connections' counters.
    """

    # Slots: a pool reads these on every pick, and with more than 30
    # attributes CPython stops sharing the instance dicts' keys, which
    # makes every read slower.
    #
    # What decides whether it may be picked (admin, health, removed, ejected,
    # weight, backup) is in underscored slots behind L{_Rotation}.
    __slots__ = (
        "_admin", "_backup", "_ejected", "_health", "_removed", "_responseTime", "_weight",
        "active", "bytesIn", "bytesOut", "closers",
        "config", "consecutiveFailures", "consecutiveSuccesses", "effectiveWeight",
        "ejectedUntil", "ejections", "endpoint", "errorStreak", "failures",
        "gatewayStreak", "http2", "lastChange", "maxconn", "name", "probeLatency",
        "rampEnd", "rampStart", "responseBuckets", "responseSum", "rotationChanged",
        "serverErrorStreak", "slots", "total", "__weakref__",
    )

    # What decides whether it may be picked (see L{_Rotation}).
    admin: _Rotation[Admin] = _Rotation()
    health: _Rotation[Health] = _Rotation()
    removed: _Rotation[bool] = _Rotation()
    ejected: _Rotation[bool] = _Rotation()
    weight: _Rotation[int] = _Rotation()
    backup: _Rotation[bool] = _Rotation()

    def __init__(self, config: BackendConfig) -> None:
        # Called whenever one of the attributes above is set (its pool's).
        self.rotationChanged: Callable[[], None] = _unwatched
        self.config = config
        self.name = config.name
        self.endpoint = config.endpoint
        self._weight = config.weight
        self._backup = config.backup
        self.effectiveWeight = config.weight * WEIGHT_SCALE
        self.rampStart = 0.0
        self.rampEnd = 0.0
        self._health = Health.UNKNOWN
        self._admin = Admin.READY
        self.active = 0
        self.total = 0
        self.failures: dict[str, int] = {}
        self.bytesIn = 0
        self.bytesOut = 0
        self.probeLatency: float | None = None
        self._responseTime: float | None = None
        # A cheap histogram of response times, filled where responseTime is
        # set: one counter per bucket of RESPONSE_BUCKETS, plus +Inf.
        self.responseBuckets = [0] * (len(RESPONSE_BUCKETS) + 1)
        self.responseSum = 0.0
        self.http2 = HTTP2Counters()
        # The live connections and requests of this backend, each of which
        # its abortNow() closes at once, registered by the protocols (TCP
        # and HTTP) while live, so a drain can end what outlives its grace
        # period.  (The objects, not their bound methods: one is made for
        # each add and discard, on every request's path.)
        self.closers: set[Any] = set()
        self.lastChange = ""
        self.consecutiveSuccesses = 0
        self.consecutiveFailures = 0
        self._removed = False
        # Connections (TCP) or requests (HTTP) given to this backend and not
        # finished, counted from the moment it is chosen, before it is
        # connected: what maxconn limits.
        self.slots = 0
        # Failed connections, requests and 5xx answers in a row, for the
        # pool's http.error-limit.
        self.errorStreak = 0
        # Outlier ejection (the pool's outlier settings): 5xx answers and
        # failed exchanges in a row; gateway errors (502-504, failed
        # connects and exchanges) in a row; whether it is ejected now, until
        # when (the pool clock's seconds) and how many times it was.
        self.serverErrorStreak = 0
        self.gatewayStreak = 0
        self._ejected = False
        self.ejectedUntil = 0.0
        self.ejections = 0
        # How many clients it may serve at once (0: no limit): its
        # configuration's, kept here since every pick reads it.
        self.maxconn = config.maxconn

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.state}>"

    @property
    def responseTime(self) -> float | None:
        """
        The last response (TCP: connect) time in seconds, if any.
        """
        return self._responseTime

    @responseTime.setter
    def responseTime(self, seconds: float | None) -> None:
        if seconds is None:
            self._responseTime = None
        else:
            self.countResponse(seconds)

    def countResponse(self, seconds: float) -> None:
        """
        A response took C{seconds}: it is the last response time, counted
        in the histogram (as setting L{responseTime} does; a method call
        costs the HTTP path less than a property's setter).
        """
        self._responseTime = seconds
        self.responseBuckets[bisect.bisect_left(RESPONSE_BUCKETS, seconds)] += 1
        self.responseSum += seconds

    def showResponseTime(self, seconds: float) -> None:
        """
        Show C{seconds} as the last response time without counting a
        response (a master shows its workers' recent mean this way: their
        responses are counted through the mirrored histogram).
        """
        self._responseTime = seconds

    def closeAll(self) -> int:
        """
        Close every live connection or request of this backend now.

        @return: how many were closed.
        """
        closers = list(self.closers)
        self.closers.clear()
        for closer in closers:
            closer.abortNow()
        return len(closers)

    @property
    def healthCheck(self) -> HealthCheck:
        """
        The health-check settings of this backend.
        """
        return self.config.health

    @property
    def eligible(self) -> bool:
        """
        Whether new clients may be sent to this backend.
        """
        return (
            self._admin is _READY
            and self._health is not _DOWN
            and not self._removed
            and not self._ejected
        )

    @property
    def full(self) -> bool:
        """
        Whether it serves as many clients as its C{maxconn} allows.
        """
        maxconn = self.maxconn
        return maxconn > 0 and self.slots >= maxconn

    @property
    def state(self) -> str:
        """
        One word for people: the admin state if not ready, else the health.
        """
        if self.admin is not Admin.READY:
            return self.admin.value
        return self.health.value

    @property
    def failureCount(self) -> int:
        """
        All failures counted against this backend.
        """
        return sum(self.failures.values())


@attrs.frozen
class HealthChanged:
    """
    The health checks (active or passive) changed a backend's health.

    @ivar old: the L{Health} value it had.
    @ivar new: the L{Health} value it has.
    """

    pool: str
    backend: Backend
    old: str
    new: str
    reason: str


@attrs.frozen
class AdminChanged:
    """
    The operator (or a reload) changed a backend's admin state.

    @ivar old: the L{Admin} value it had.
    @ivar new: the L{Admin} value it has.
    """

    pool: str
    backend: Backend
    old: str
    new: str


StateChanged = HealthChanged | AdminChanged


@attrs.frozen
class BackendAdded:
    """
    A backend joined a pool.
    """

    pool: str
    backend: Backend


@attrs.frozen
class BackendRemoved:
    """
    A backend left a pool: it gets no new clients; current ones go on.
    """

    pool: str
    backend: Backend


PoolEvent = HealthChanged | AdminChanged | BackendAdded | BackendRemoved


@attrs.frozen
class BackendStats:
    """
    A snapshot of one backend's state and counters.
    """

    name: str
    endpoint: str
    weight: int
    state: str
    health: str
    admin: str
    active: int
    total: int
    failures: int
    failuresByKind: dict[str, int]
    bytesIn: int
    bytesOut: int
    probeLatency: float | None
    responseTime: float | None
    share: float
    backup: bool = False
    # The weight slow start gives it now, while it ramps up; else None.
    effectiveWeight: float | None = None
    # Found by DNS discovery, not configured.
    discovered: bool = False
    # In the pool's rotation now (L{BackendPool.inRotation}): new clients
    # may be given it.  None from a balancer that does not say.
    serving: bool | None = None


def _clause(reason: str) -> str:
    """
    C{reason} ready to be followed by another clause: without the full stop
    an error message may end with.
    """
    return reason.rstrip(". ")


def _forgetsCandidates(pool: BackendPool) -> Callable[[], None]:
    """
    What the backends of C{pool} tell when their rotation changes: its
    kept candidates are stale.  It holds the pool weakly: the pool holds
    its backends, and a cycle would leave a discarded pool to the cyclic
    collector (never, for one frozen at start-up by L{lbtwist.gctuning}),
    and a removed backend still draining would hold its old pool.
    """
    held = weakref.ref(pool)

    def rotationChanged() -> None:
        current = held()
        if current is not None:
            current._candidates = None

    return rotationChanged


class BackendPool:
    """
    The backends of one pool and the policy that chooses among them.

    @ivar observers: callables given every L{PoolEvent}.
    @ivar noBackend: how many clients found no eligible backend.
    @ivar queueFull: how many clients were refused because every eligible
        backend was at its C{maxconn} and the queue was full.
    @ivar queued: how many clients waited in the queue.
    @ivar queueTimeouts: how many clients were refused after waiting the
        queue timeout.
    @ivar clock: the time now in seconds (the reactor's C{seconds}), which
        outlier ejections are measured in.
    """

    def __init__(self, config: PoolConfig, rng: random.Random | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        """
        @param clock: the time now, in seconds (e.g. C{reactor.seconds}),
            which slow start and outlier ejection read.
        """
        self.log = txaio.make_logger()  # type: ignore[attr-defined]
        self.name = config.name
        # What a pick chooses among, with no exclusions and maxconn aside:
        # the backends of weight above 0 in rotation, by role (L{serving}),
        # built at the first pick after any change to one of them (their
        # setters and this pool's configuration say so), so that a pick does
        # not test every backend; and whether any of them has a maxconn.
        self._candidates: list[Backend] | None = None
        self._limited = False
        self._rotationChanged = _forgetsCandidates(self)
        self._config = config
        self._rng = rng or random.Random()
        self.policy: BalancingPolicy = POLICIES[config.policy](self._rng)
        self._backends: dict[str, Backend] = {}
        self.observers: list[Callable[[PoolEvent], None]] = []
        self.noBackend = 0
        self.queueFull = 0
        self.queued = 0
        # Connections (TCP) or requests (HTTP) in flight over all backends,
        # retries among them, and retries the budget refused.
        self.active = 0
        self.retriesActive = 0
        self.retriesRefused = 0
        self.queueTimeouts = 0
        self._waiting: deque[Callable[[], None]] = deque()
        self.clock = clock
        # The backends ejected as outliers: their return is checked lazily,
        # when a client is given a backend, so no timer is needed and a pick
        # pays one test while none is out.
        self._ejected: list[Backend] = []
        for b in config.backends:
            self._backends[b.name] = self._watched(Backend(b))
        # Whether any backend is a backup: without, pick takes no extra step.
        self._hasBackups = any(b.backup for b in config.backends)
        # Until when some backend's slow start ramps it up (0: none does), so
        # that pick only reads the clock while one does.
        self._rampingUntil = 0.0

    @property
    def config(self) -> PoolConfig:
        """
        The pool's configuration (a reload gives it a new one).
        """
        return self._config

    @config.setter
    def config(self, config: PoolConfig) -> None:
        self._config = config
        # (Its all-backups decides which backups serve.)
        self._candidates = None

    def _watched(self, backend: Backend) -> Backend:
        backend.rotationChanged = self._rotationChanged
        return backend

    def __iter__(self) -> Iterator[Backend]:
        return iter(list(self._backends.values()))

    def __len__(self) -> int:
        return len(self._backends)

    def __contains__(self, name: object) -> bool:
        return name in self._backends

    def get(self, name: str) -> Backend | None:
        """
        The backend of that name, if it is in the pool.
        """
        return self._backends.get(name)

    def _notify(self, event: PoolEvent) -> None:
        for observer in list(self.observers):
            observer(event)

    # -- choosing --------------------------------------------------------

    def pick(self, key: bytes | None = None, exclude: Iterable[Backend] = ()) -> Backend | None:
        """
        Choose an eligible backend of weight above 0 for a new client, or
        L{None} if there is none (every backend down, out, full or of
        weight 0).

        While a primary (non-backup) backend is eligible and not in
        C{exclude}, only primaries are chosen; else backups are.

        @param key: identifies the client for hashing policies.
        @param exclude: backends already tried for this client.
        """
        if self._rampingUntil:
            self._ramp(self.clock())
        if self._ejected:
            self.readmit()
        candidates: list[Backend] | None
        if exclude:
            # (A retry's: off the common path.)
            candidates = self._excluding(set(exclude))
        else:
            candidates = self._candidates
            if candidates is None:
                candidates = self.inRotation()
            if self._limited:
                # (Backend.full, written out: this runs for every connection
                # or request of a pool with a maxconn.)
                candidates = [b for b in candidates if not (b.maxconn and b.slots >= b.maxconn)]
        if not candidates:
            return None
        chosen = self.policy.choose(candidates, key)
        assert isinstance(chosen, Backend)
        return chosen

    def inRotation(self) -> list[Backend]:
        """
        The backends new clients may be given now, their maxconn aside:
        eligible, of weight above 0 (a backend of weight 0 takes no new
        clients; sticky ones still reach it), by role (L{serving}).  The
        same list is given until one of them changes; it is not to be
        changed.
        """
        candidates = self._candidates
        if candidates is None:
            candidates = self._candidates = [b for b in self.serving() if b.weight and b.eligible]
            self._limited = any(b.maxconn for b in candidates)
        return candidates

    def _excluding(self, tried: set[Backend]) -> list[Backend]:
        """
        What a pick that must not give C{tried} chooses among: the backends
        with room, of weight above 0, eligible, by role, not in C{tried}.
        """
        return [
            b for b in self.serving(tried)
            if b.weight and b.eligible and b not in tried and not b.full
        ]

    def available(self, exclude: Iterable[Backend] = ()) -> bool:
        """
        Whether a new client could be given a backend not in C{exclude}
        now (an eligible one of weight above 0, with room), without
        choosing one.
        """
        if self._ejected:
            self.readmit()
        tried = set(exclude)
        return any(
            b.weight and b.eligible and not (b.maxconn and b.slots >= b.maxconn)
            and b not in tried
            for b in self._backends.values()
        )

    def saturated(self, exclude: Iterable[Backend] = ()) -> bool:
        """
        Whether a client found no backend only because every eligible one
        of weight above 0 (not in C{exclude}) is at its C{maxconn}: it may
        wait in the queue.
        """
        tried = set(exclude)
        full = False
        for b in self.serving(tried):
            if b.weight and b.eligible and b not in tried:
                if not b.full:
                    return False
                full = True
        return full

    def serving(self, tried: set[Backend] | frozenset[Backend] = frozenset()) -> list[Backend]:
        """
        The backends new clients may be given now, by their role: the
        primaries while one of weight above 0 is eligible and not in
        C{tried}; else the eligible backups, all of them with the pool's
        C{all-backups}, or only the first (in configuration order).
        """
        backends = self._backends.values()
        if not self._hasBackups:
            return list(backends)
        primaries = [b for b in backends if not b.backup]
        if any(b.weight and b.eligible and b not in tried for b in primaries):
            return primaries
        backups = [b for b in backends if b.backup and b.weight and b.eligible and b not in tried]
        return backups if self.config.allBackups else backups[:1]

    # -- slow start --------------------------------------------------------

    def _startRamp(self, backend: Backend) -> None:
        """
        C{backend} came back: ramp its effective weight up over its slow
        start, if it has one.
        """
        duration = backend.config.slowStart
        if duration is None:
            duration = self.config.slowStart
        if not duration:
            return
        now = self.clock()
        backend.rampStart = now
        backend.rampEnd = now + duration
        self._rampingUntil = max(self._rampingUntil, backend.rampEnd)
        self.log.info(
            "backend {backend} of pool {pool}: slow start over {seconds}s",
            pool=self.name,
            backend=backend.name,
            seconds=duration,
        )
        self._ramp(now)

    def _ramp(self, now: float) -> None:
        """
        Set the effective weight of every backend in slow start for the
        time C{now}; a backend whose slow start is over gets its full one.
        """
        done = now >= self._rampingUntil
        if done:
            self._rampingUntil = 0.0
        # (The policies may count on the candidates' weights staying put.)
        self._candidates = None
        for b in self._backends.values():
            if b.rampEnd:
                if done or now >= b.rampEnd:
                    b.rampEnd = 0.0
                    b.effectiveWeight = b.weight * WEIGHT_SCALE
                else:
                    b.effectiveWeight = rampedWeight(
                        b.weight, (now - b.rampStart) / (b.rampEnd - b.rampStart))

    # -- limits and the queue ----------------------------------------------

    def acquire(self, backend: Backend) -> None:
        """
        A client was given C{backend}: it holds one of its C{maxconn}
        slots until L{release}.
        """
        backend.slots += 1

    def release(self, backend: Backend) -> None:
        """
        A client of C{backend} gave its slot back: wake the clients waiting
        in the queue, oldest first, while some backend has room.
        """
        backend.slots -= 1
        if self._waiting:
            self.wake()

    def wake(self) -> None:
        """
        Let queued clients try again, oldest first, while a backend has
        room.  A woken client that still finds none joins the queue again.
        """
        waiting = self._waiting
        for _ in range(len(waiting)):
            # Only a backend clients may be given now counts: not a backup
            # while a primary serves.
            if not waiting or not any(
                b.weight and b.eligible and not b.full for b in self.serving()
            ):
                return
            waiting.popleft()()

    def _outOfRotation(self) -> None:
        """
        A backend stopped taking new clients (down, ejected, removed, at
        weight 0): with backups, they may serve in its place now, with room
        for the clients waiting in the queue, who must not wait on until
        one of its clients leaves (a hung backend holds them up to the
        response timeout, beyond the queue's).
        """
        if self._hasBackups:
            self.wake()

    def enqueue(self, waiter: Callable[[], None]) -> bool:
        """
        Queue a client that found every eligible backend full: C{waiter}
        is called when a slot is free.

        @return: C{False} if the queue is full (the client is refused).
        """
        if len(self._waiting) >= self.config.queue.size:
            self.queueFull += 1
            self.log.warn(
                "pool {pool}: every backend at maxconn and {queued} queued; "
                "refusing a client",
                pool=self.name,
                queued=counted(len(self._waiting), "client"),
                size=len(self._waiting),
            )
            return False
        self.queued += 1
        self._waiting.append(waiter)
        return True

    def dequeue(self, waiter: Callable[[], None]) -> None:
        """
        Take C{waiter} out of the queue (it timed out, or its client left).
        """
        try:
            self._waiting.remove(waiter)
        except ValueError:
            pass

    def queueTimedOut(self, waiter: Callable[[], None]) -> None:
        """
        C{waiter} waited the queue timeout for a slot: take it out of the
        queue and count it; its client is refused.
        """
        self.queueTimeouts += 1
        self.dequeue(waiter)

    @property
    def queueLength(self) -> int:
        """
        How many clients wait in the queue now.
        """
        return len(self._waiting)

    # -- traffic ---------------------------------------------------------

    def retryAllowed(self) -> bool:
        """
        Whether another retry may start now: within the pool's
        C{retry-budget} (at most its share of the requests in flight, or
        its minimum), or always without one.  A refusal is counted.
        """
        budget = self.config.retryBudget
        if budget is None or self.retriesActive < max(
            budget.minConcurrency, budget.percent * self.active / 100
        ):
            return True
        self.retriesRefused += 1
        return False

    def opened(self, backend: Backend) -> None:
        """
        A client was joined to C{backend}.
        """
        backend.active += 1
        self.active += 1
        backend.total += 1

    def closed(self, backend: Backend) -> None:
        """
        A client of C{backend} is finished.
        """
        backend.active -= 1
        self.active -= 1

    def relayJoined(self, backend: Backend) -> None:
        """
        A TCP client was joined to C{backend}: L{opened} and
        L{exchangeSucceeded} in one call (a relayed connection is the whole
        exchange TCP mode sees: its error streaks end here).
        """
        backend.active += 1
        self.active += 1
        backend.total += 1
        backend.consecutiveFailures = backend.errorStreak = 0
        backend.serverErrorStreak = backend.gatewayStreak = 0

    def relayEnded(self, backend: Backend) -> None:
        """
        A TCP client of C{backend} is finished: L{closed} and L{release} of
        its slot in one call.
        """
        backend.active -= 1
        self.active -= 1
        backend.slots -= 1
        if self._waiting:
            self.wake()

    def noBackendFor(self, client: str) -> None:
        """
        A client found no eligible backend.
        """
        self.noBackend += 1
        self.log.warn(
            "pool {pool}: no backend available for client {client}",
            pool=self.name,
            client=client,
        )

    # -- health ----------------------------------------------------------

    def _setHealth(self, backend: Backend, new: Health, reason: str) -> None:
        """
        Record a health transition: a backend going down is a warning, one
        coming up is news.  Its admin state is another matter, logged apart.
        """
        old = backend.health
        backend.health = new
        backend.lastChange = reason
        emit = self.log.warn if new is Health.DOWN else self.log.info
        emit(
            "backend {backend} of pool {pool} is {new} (was {old}): {reason}",
            pool=self.name,
            backend=backend.name,
            old=old.value,
            new=new.value,
            reason=reason,
        )
        if old is Health.DOWN and new is Health.UP:
            self._startRamp(backend)
        self._notify(HealthChanged(self.name, backend, old.value, new.value, reason))
        if new is Health.UP:
            self.wake()
        elif new is Health.DOWN:
            self._outOfRotation()
        if new is Health.DOWN and not any(
            b.eligible for b in self._backends.values()
        ):
            self.log.critical(
                "pool {pool}: ALL BACKENDS ARE DOWN, clients will be refused",
                pool=self.name,
            )

    def succeeded(self, backend: Backend, reason: str = "check passed") -> None:
        """
        A probe (or a connection, for passive health) succeeded.

        After C{rise} consecutive successes a backend that is not up is
        marked up.
        """
        backend.consecutiveFailures = 0
        backend.consecutiveSuccesses += 1
        if (
            backend.health is not Health.UP
            and backend.consecutiveSuccesses >= backend.healthCheck.rise
        ):
            self._setHealth(
                backend,
                Health.UP,
                f"{_clause(reason)}, {backend.consecutiveSuccesses} in a row",
            )

    def failed(self, backend: Backend, kind: str, reason: str) -> None:
        """
        A probe or a connection to C{backend} failed.

        After C{fall} consecutive failures a backend that is not down is
        marked down.

        @param kind: the failure's class, counted separately (e.g. C{connect}).
        """
        backend.failures[kind] = backend.failures.get(kind, 0) + 1
        backend.consecutiveSuccesses = 0
        backend.consecutiveFailures += 1
        if (
            backend.health is not Health.DOWN
            and backend.consecutiveFailures >= backend.healthCheck.fall
        ):
            self._setHealth(
                backend,
                Health.DOWN,
                f"{_clause(reason)}, {counted(backend.consecutiveFailures, 'failure')} in a row",
            )

    def connectSucceeded(self, backend: Backend) -> None:
        """
        A client connection to C{backend} was established: the passive
        failure streak ends, but it takes probes to bring a backend up.
        """
        backend.consecutiveFailures = 0

    def trafficFailed(self, backend: Backend, kind: str, reason: str) -> None:
        """
        A client's connection or request to C{backend} failed: count it as
        L{failed} (passive health) and as an error in a row.
        """
        self.failed(backend, kind, reason)
        self.exchangeError(backend, reason)

    def exchangeError(self, backend: Backend, reason: str, status: int | None = None) -> None:
        """
        An exchange with C{backend} went wrong (a failure, or a 5xx
        answer): with C{http.error-limit} set, that many in a row mark it
        down; with C{outlier} set, enough in a row eject it for a while.

        @param status: the 5xx status it answered, or L{None} if the
            exchange failed (a failed connect, a timeout, a reset, an
            invalid response).
        """
        if self.config.outlier is not None:
            self._countOutlier(backend, reason, status)
        limit = self.config.http.errorLimit
        if not limit:
            return
        backend.errorStreak += 1
        if backend.errorStreak >= limit:
            streak, backend.errorStreak = backend.errorStreak, 0
            self.markDown(backend, "errors", f"{counted(streak, 'error')} in a row, the last {reason}")

    def exchangeSucceeded(self, backend: Backend) -> None:
        """
        C{backend} answered a request well: its error streaks end (it takes
        probes to bring a backend up).
        """
        backend.consecutiveFailures = 0
        backend.errorStreak = 0
        backend.serverErrorStreak = backend.gatewayStreak = 0

    def exchangeFinished(self, backend: Backend) -> None:
        """
        A request to C{backend} was answered well and is over: L{closed},
        L{exchangeSucceeded} and L{release} of its slot, in one call (the
        end of every HTTP request that succeeds).  Its connection, if kept,
        is pooled before this call: a client the release wakes may take it.
        """
        backend.active -= 1
        self.active -= 1
        backend.consecutiveFailures = backend.errorStreak = 0
        backend.serverErrorStreak = backend.gatewayStreak = 0
        backend.slots -= 1
        if self._waiting:
            self.wake()

    # -- outlier ejection --------------------------------------------------

    def _countOutlier(self, backend: Backend, reason: str, status: int | None) -> None:
        """
        Count a failed exchange or 5xx answer of C{backend} against the
        pool's C{outlier} limits, and eject it if one is reached.
        """
        outlier = self.config.outlier
        assert outlier is not None
        if backend.removed:
            # Gone from the pool: it must not take an ejection's place.
            return
        backend.serverErrorStreak += 1
        if status is None or status in GATEWAY_STATUSES:
            backend.gatewayStreak += 1
        if backend.ejected:
            return
        if outlier.consecutive5xx and backend.serverErrorStreak >= outlier.consecutive5xx:
            streak, limit = backend.serverErrorStreak, outlier.consecutive5xx
            what = "5xx answers or failed exchanges"
        elif (outlier.consecutiveGatewayErrors
              and backend.gatewayStreak >= outlier.consecutiveGatewayErrors):
            streak, limit = backend.gatewayStreak, outlier.consecutiveGatewayErrors
            what = "gateway errors"
        else:
            return
        why = f"{streak} {what} in a row, the last {reason}"
        if self._mayEject():
            self._eject(backend, why)
        elif streak == limit:
            # Its streak goes on, so it is ejected at its next error once
            # another backend is back; said once per streak.
            self.log.warn(
                "backend {backend} of pool {pool} is an outlier ({why}) but "
                "stays: {ejected} of {backendCount} ejected already "
                "(max-ejected-percent {percent})",
                backendCount=counted(len(self._backends), "backend"),
                pool=self.name, backend=backend.name, why=why,
                ejected=len(self._ejected), total=len(self._backends),
                percent=outlier.maxEjectedPercent,
            )

    def _mayEject(self) -> bool:
        """
        Whether one more backend may be ejected under C{max-ejected-percent}:
        that share of the pool's backends rounded down, but at least one
        in a pool of two or more (none at 0%).
        """
        outlier = self.config.outlier
        assert outlier is not None
        if self._ejected:
            self.readmit()
        total = len(self._backends)
        percent = outlier.maxEjectedPercent
        allowed = total * percent // 100
        if not allowed and percent and total > 1:
            allowed = 1
        return len(self._ejected) < allowed

    def _eject(self, backend: Backend, why: str) -> None:
        """
        Take C{backend} out of rotation for the base ejection time times its
        ejections so far, at most the maximum.
        """
        outlier = self.config.outlier
        assert outlier is not None
        backend.ejections += 1
        seconds = min(outlier.baseEjection * backend.ejections, outlier.maxEjection)
        backend.ejected = True
        backend.ejectedUntil = self.clock() + seconds
        backend.serverErrorStreak = backend.gatewayStreak = 0
        self._ejected.append(backend)
        self.log.warn(
            "backend {backend} of pool {pool} ejected for {seconds}s "
            "(ejection {count}): {why}",
            pool=self.name, backend=backend.name, seconds=seconds,
            count=backend.ejections, why=why,
        )
        self._outOfRotation()

    def untilReadmission(self) -> float | None:
        """
        Seconds until the first ejection under way ends, if a backend is
        ejected (L{readmit} brings it back then).
        """
        if not self._ejected:
            return None
        return max(0.0, min(b.ejectedUntil for b in self._ejected) - self.clock())

    def readmit(self) -> None:
        """
        Bring back every ejected backend whose ejection is over, and let
        queued clients try them.  Picks call it while any is ejected; so
        do the reports, which then never show a finished ejection.
        """
        now = self.clock()
        back = [b for b in self._ejected if b.ejectedUntil <= now]
        if not back:
            return
        for backend in back:
            self._ejected.remove(backend)
            backend.ejected = False
            self.log.info(
                "backend {backend} of pool {pool} is back after ejection {count}",
                pool=self.name, backend=backend.name, count=backend.ejections,
            )
        self.wake()

    def markDown(self, backend: Backend, kind: str, reason: str) -> None:
        """
        Passive health saw enough errors in a row: count one failure of
        C{kind} and mark C{backend} down now, whatever its C{fall}.
        """
        backend.failures[kind] = backend.failures.get(kind, 0) + 1
        backend.consecutiveSuccesses = 0
        backend.consecutiveFailures += 1
        if backend.health is not Health.DOWN:
            self._setHealth(backend, Health.DOWN, reason)

    def setHealth(self, name: str, health: Health, reason: str) -> None:
        """
        Give backend C{name} the health another process's checks found (a
        worker's master, see L{lbtwist.workers}), if it has another.
        """
        backend = self._backends.get(name)
        if backend is not None and backend.health is not health:
            self._setHealth(backend, health, reason)

    # -- administration --------------------------------------------------

    def add(self, config: BackendConfig) -> Backend:
        """
        Add a backend; it starts in state unknown and gets traffic at once.
        With no C{tls} of its own, it takes the pool's (L{underPool}).

        @raise KeyError: a backend of that name is already in the pool.
        """
        if config.name in self._backends:
            raise KeyError(config.name)
        # One given at run time speaks to its backend as the pool says.
        config = underPool(self.config, config)
        backend = self._watched(Backend(config))
        self._backends[config.name] = backend
        self._candidates = None
        self._hasBackups = self._hasBackups or config.backup
        self.log.info(
            "backend {backend} added to pool {pool} at {endpoint}",
            pool=self.name,
            backend=backend.name,
            endpoint=backend.endpoint,
        )
        self._notify(BackendAdded(self.name, backend))
        self.wake()
        return backend

    def remove(self, name: str) -> Backend:
        """
        Take a backend out of the pool: it gets no new clients, and its
        current ones go on until they finish.

        @raise KeyError: there is no such backend.
        """
        backend = self._backends.pop(name)
        backend.removed = True
        if backend.ejected:
            self._ejected.remove(backend)
        self._hasBackups = any(b.backup for b in self._backends.values())
        self.log.info(
            "backend {backend} removed from pool {pool}, {active} still active",
            pool=self.name,
            backend=name,
            active=backend.active,
        )
        self._notify(BackendRemoved(self.name, backend))
        self._outOfRotation()
        return backend

    def setAdmin(self, name: str, admin: Admin) -> Backend:
        """
        Set the admin state of a backend.

        @raise KeyError: there is no such backend.
        """
        backend = self._backends[name]
        if backend.admin is not admin:
            old = backend.admin
            backend.admin = admin
            if admin is Admin.MAINT:
                # Health is unknown again when the backend comes back.
                backend.health = Health.UNKNOWN
                backend.consecutiveFailures = backend.consecutiveSuccesses = 0
            elif admin is Admin.READY:
                self._startRamp(backend)
            self.log.info(
                "backend {backend} of pool {pool}: admin state {new} (was {old})",
                pool=self.name,
                backend=name,
                old=old.value,
                new=admin.value,
            )
            self._notify(AdminChanged(self.name, backend, old.value, admin.value))
            self.wake()
        return backend

    def configure(self, name: str, backup: bool | None = None,
                  slowStart: float | None = None, clearSlowStart: bool = False) -> Backend:
        """
        Make a backend a backup or a primary, and give it its own slow-start
        duration (or, with C{clearSlowStart}, the pool's again).  Clients
        already joined to it are not moved.

        @raise KeyError: there is no such backend.
        """
        backend = self._backends[name]
        changes: dict[str, Any] = {}
        if backup is not None:
            changes["backup"] = backup
            backend.backup = backup
        if slowStart is not None or clearSlowStart:
            changes["slowStart"] = slowStart
        if changes:
            backend.config = attrs.evolve(backend.config, **changes)
            self._hasBackups = any(b.backup for b in self._backends.values())
            self.log.info(
                "backend {backend} of pool {pool} set to {role}, slow start {slowStart}",
                backend=name, pool=self.name, role="backup" if backend.backup else "primary",
                slowStart=backend.config.slowStart,
            )
            self.wake()
        return backend

    def setWeight(self, name: str, weight: int) -> Backend:
        """
        Change the weight of a backend.  At weight 0 it takes no new
        clients under any policy; clients already sticky to it (by cookie)
        still reach it, as HAProxy does.

        @raise KeyError: there is no such backend.
        @raise ValueError: the weight is out of range.
        """
        if not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be 0-{MAX_WEIGHT}, got {weight}")
        backend = self._backends[name]
        old = backend.weight
        backend.weight = weight
        backend.effectiveWeight = weight * WEIGHT_SCALE
        if backend.rampEnd:
            self._ramp(self.clock())
        backend.config = attrs.evolve(backend.config, weight=weight)
        if old != weight:
            self.log.info(
                "backend {backend} of pool {pool}: weight {new} (was {old}){note}",
                pool=self.name,
                backend=name,
                old=old,
                new=weight,
                note=", it takes no new clients" if weight == 0 else "",
            )
            if not old:
                self.wake()
            elif not weight:
                self._outOfRotation()
        return backend

    # -- reporting -------------------------------------------------------

    def stats(self) -> list[BackendStats]:
        """
        A snapshot of every backend, with its share of the pool's traffic.
        """
        if self._ejected:
            self.readmit()
        if self._rampingUntil:
            self._ramp(self.clock())
        backends = list(self._backends.values())
        grand = sum(b.total for b in backends)
        rotation = set(self.inRotation())
        return [
            BackendStats(
                name=b.name,
                endpoint=b.endpoint,
                weight=b.weight,
                state=b.state,
                health=b.health.value,
                admin=b.admin.value,
                active=b.active,
                total=b.total,
                failures=b.failureCount,
                failuresByKind=dict(b.failures),
                bytesIn=b.bytesIn,
                bytesOut=b.bytesOut,
                probeLatency=b.probeLatency,
                responseTime=b.responseTime,
                share=(100.0 * b.total / grand) if grand else 0.0,
                backup=b.backup,
                effectiveWeight=(
                    round(b.effectiveWeight / WEIGHT_SCALE, 2) if b.rampEnd else None
                ),
                discovered=b.config.discovered,
                serving=b in rotation,
            )
            for b in backends
        ]
