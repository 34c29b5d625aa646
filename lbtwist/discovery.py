"""
DNS discovery: a pool's backends found in DNS and followed as it changes.

A pool with C{discovery: {dns: NAME, port: PORT}} gets one backend per A
and AAAA address of C{NAME}; one with C{discovery: {srv: NAME}} one per
address of each SRV target, on the record's port, its weight the record's
(clamped to 1-256).  SRV targets are resolved through the same resolvers,
not left to the system at connect time, so that the configured DNS servers
are the only word; records of the lowest priority give primary backends,
the others backups (RFC 2782: a higher priority is only tried when the
lower ones fail).

The name is asked again every C{interval}, or sooner when the answer's TTL
is shorter (but not sooner than a second).  New addresses join through the
pool's normal add path, so health monitors probe them; vanished ones are
drained (their connections get the grace period) or, without run-time
control, simply removed.  A failed or empty answer keeps the last good set:
DNS trouble never empties a pool.  It is logged once when it starts and
once when it ends, not at every retry.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Generator, Sequence
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, inlineCallbacks, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.names import client, dns
from twisted.names.error import DNSNameError
from twisted.python.failure import Failure

from .config import MAX_WEIGHT, BackendConfig, BackendTLS, Discovery, HealthCheck
from .endpoints import hostPort
from .pool import Backend, BackendPool
from .wording import counted

# A TTL shorter than this does not make lookups more frequent.
MIN_TTL_DELAY = 1.0
# Per-try timeouts of one lookup, in seconds: short, since the next
# interval asks again anyway.
LOOKUP_TIMEOUT = (1.0, 2.0)
_NAME_LENGTH = 64


@attrs.frozen
class Found:
    """
    One backend address an answer gives.

    @ivar host: an IPv4 or IPv6 address.
    @ivar backup: an SRV record of a higher priority than the lowest.
    """

    host: str
    port: int
    weight: int = 1
    backup: bool = False


@attrs.frozen
class Answer:
    """
    What one resolution found, and the shortest TTL of the records used
    (L{None} when none was found).
    """

    found: tuple[Found, ...]
    ttl: int | None


def srvWeight(weight: int) -> int:
    """
    A backend weight for an SRV weight (0-65535): clamped to 1-256, so a
    record of weight 0 still gets clients.
    """
    return max(1, min(MAX_WEIGHT, weight))


def nextDelay(interval: float, ttl: int | None) -> float:
    """
    Seconds until the next lookup: the interval, or the answer's TTL when
    that is shorter, though not under L{MIN_TTL_DELAY}.
    """
    if ttl is None:
        return interval
    return min(interval, max(MIN_TTL_DELAY, float(ttl)))


def backendName(lookedUp: str, found: Found) -> str:
    """
    The name of a discovered backend, like C{app.internal:10.0.0.5:8080}
    (an IPv6 address in brackets); the looked-up name is cut from the right
    so that the whole stays within the 64 characters a name may have.
    """
    suffix = ":" + hostPort(found.host, found.port)
    return lookedUp[: max(0, _NAME_LENGTH - len(suffix))] + suffix


def discoveredTLS(discovery: Discovery, tls: BackendTLS | None) -> BackendTLS | None:
    """
    The pool's TLS settings C{tls} for the backends C{discovery} finds:
    found by an address lookup, their certificates must name the name
    looked up, unless the pool says C{verify-host}.
    """
    if tls is not None and tls.verifyHost is None and discovery.kind == "dns":
        return attrs.evolve(tls, verifyHost=discovery.name)
    return tls


def backendConfigs(discovery: Discovery, answer: Answer,
                   health: HealthCheck, tls: BackendTLS | None = None) -> dict[str, BackendConfig]:
    """
    The backends an answer makes, by name, marked as discovered, with the
    pool's TLS settings; found by an address lookup, their certificates
    must name the name looked up unless the pool says C{verify-host}.
    """
    tls = discoveredTLS(discovery, tls)
    configs: dict[str, BackendConfig] = {}
    for found in answer.found:
        host = found.host.replace(":", r"\:")
        name = backendName(discovery.name, found)
        configs.setdefault(name, BackendConfig(
            name=name,
            endpoint=f"tcp:host={host}:port={found.port}",
            weight=found.weight,
            health=health,
            backup=found.backup,
            discovered=True,
            tls=tls,
        ))
    return configs


def makeResolver(servers: Sequence[tuple[str, int]], reactor: Any) -> Any:
    """
    A C{twisted.names} resolver asking C{servers}, or the system's (from
    C{/etc/resolv.conf}, with C{/etc/hosts} and a cache) when there are none;
    that one runs on the global reactor, as C{createResolver} builds it.
    """
    if servers:
        return client.Resolver(servers=list(servers), reactor=reactor)
    return client.createResolver()


def _ttl(records: Sequence[dns.RRHeader]) -> int | None:
    return min((r.ttl for r in records), default=None)


@inlineCallbacks
def lookupAddresses(resolver: Any, name: str, timeout: Sequence[float]
                    ) -> Generator[Deferred[Any], Any, tuple[list[str], int | None]]:
    """
    The A and AAAA addresses of C{name} and the shortest TTL among them.
    A name without records of one family is fine; a lookup of either
    family that fails (a time-out, a refusal) fails the whole answer, which
    would otherwise drop the other family's backends.
    """
    results = yield DeferredList(
        [resolver.lookupAddress(name, timeout=timeout),
         resolver.lookupIPV6Address(name, timeout=timeout)],
        consumeErrors=True,
    )
    addresses: list[str] = []
    used: list[dns.RRHeader] = []
    failures = []
    for ok, result in results:
        if not ok:
            # No such name is an empty answer, not a failed lookup.
            if not result.check(DNSNameError):
                failures.append(result)
            continue
        for record in result[0]:
            if record.type == dns.A:
                addresses.append(record.payload.dottedQuad())
            elif record.type == dns.AAAA:
                addresses.append(socket.inet_ntop(socket.AF_INET6, record.payload.address))
            else:
                continue
            used.append(record)
    if failures:
        failures[0].raiseException()
    return sorted(set(addresses)), _ttl(used)


@inlineCallbacks
def resolve(resolver: Any, discovery: Discovery, timeout: Sequence[float] = LOOKUP_TIMEOUT
            ) -> Generator[Deferred[Any], Any, Answer]:
    """
    Resolve C{discovery}'s name into the backends it gives.
    """
    if discovery.kind == "dns":
        addresses, ttl = yield lookupAddresses(resolver, discovery.name, timeout)
        assert discovery.port is not None
        return Answer(tuple(Found(a, discovery.port) for a in addresses), ttl)
    try:
        answers, _, _ = yield resolver.lookupService(discovery.name, timeout=timeout)
    except DNSNameError:
        return Answer((), None)
    records = [r for r in answers if r.type == dns.SRV and str(r.payload.target) not in ("", ".")]
    if not records:
        return Answer((), None)
    ttls = [_ttl(records)]
    lowest = min(r.payload.priority for r in records)
    targets = {str(r.payload.target) for r in records}
    resolved: dict[str, list[str]] = {}
    for target in sorted(targets):
        # A target whose lookup fails fails the answer: its backends must
        # not be drained for a time-out.
        resolved[target], ttl = yield lookupAddresses(resolver, target, timeout)
        ttls.append(ttl)
    found = [
        Found(address, r.payload.port, srvWeight(r.payload.weight),
              r.payload.priority != lowest)
        for r in sorted(records, key=lambda r: (r.payload.priority, -r.payload.weight))
        for address in resolved[str(r.payload.target)]
    ]
    return Answer(tuple(found), min((t for t in ttls if t is not None), default=None))


class PoolDiscovery(Service):
    """
    Keeps one pool's discovered backends as DNS says, asking again on a
    timer of the injected clock.

    @ivar answers: good answers applied so far.
    @ivar state: C{"ok"}, C{"empty"} or C{"failed"}: how the last lookup went.
    """

    log = Logger()

    def __init__(
        self,
        pool: BackendPool,
        discovery: Discovery,
        resolver: Any,
        clock: IReactorTime,
        drain: Callable[[str, Backend], None] | None = None,
        timeout: Sequence[float] = LOOKUP_TIMEOUT,
    ) -> None:
        """
        @param resolver: a C{twisted.names} resolver (L{makeResolver}).
        @param drain: given each vanished backend, once removed from the
            pool, so that its connections get a grace period (e.g.
            L{lbtwist.reload.LiveConfig.drain}); without it they go on
            until they end.
        @param timeout: the per-try timeouts of one lookup.
        """
        self.pool = pool
        self.discovery = discovery
        self.resolver = resolver
        self.clock = clock
        self.drain = drain
        self.timeout = tuple(timeout)
        self.state = "ok"
        self.answers = 0
        # What discovery last set for each backend it added, so that an
        # operator's change to one stays until DNS changes it.
        self._applied: dict[str, BackendConfig] = {}
        self._timer: IDelayedCall | None = None
        self._lookup: Deferred[None] | None = None

    def startService(self) -> None:
        """
        Look the name up now, and then on the timer.
        """
        super().startService()
        self.refresh()

    def stopService(self) -> Deferred[None]:
        """
        Stop asking; fires once a lookup in flight is over (its timeout
        bounds that), so that no query outlives the service.
        """
        super().stopService()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self._lookup is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._lookup.addBoth(lambda _: done.callback(None))
        return done

    def refresh(self) -> Deferred[None]:
        """
        Look the name up once and apply the answer; then schedule the next
        lookup if running.  Fires when done (never fails).
        """
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        delay = [self.discovery.interval]

        def got(answer: Answer) -> None:
            if not self.running:
                # Stopped while the lookup ran: the answer is too late.
                return
            if answer.found:
                self.apply(answer)
                delay[0] = nextDelay(self.discovery.interval, answer.ttl)
            else:
                self._trouble("empty", "no records")

        def failed(failure: Failure) -> None:
            self._trouble("failed", failure.getErrorMessage())

        def schedule(_: object) -> None:
            if self._lookup is not d:
                # A later lookup (a restart) schedules the next one.
                return
            self._lookup = None
            if self.running:
                self._timer = self.clock.callLater(delay[0], self.refresh)

        d: Deferred[Any] = resolve(self.resolver, self.discovery, self.timeout)
        d.addCallbacks(got, failed)
        d.addErrback(lambda f: self.log.failure(
            "pool {pool}: discovery could not apply an answer", f, pool=self.pool.name))
        self._lookup = d
        d.addBoth(schedule)
        return d

    def _trouble(self, state: str, why: str) -> None:
        if self.state != state:
            self.log.warn(  # noqa: G010
                "pool {pool}: DNS discovery of {name} {what} ({why}); keeping the "
                "{kept}",
                kept=counted(len(self._applied), "discovered backend"),
                pool=self.pool.name, name=self.discovery.name,
                what="found nothing" if state == "empty" else "failed", why=why,
                count=len(self._applied),
            )
        self.state = state

    def apply(self, answer: Answer) -> None:
        """
        Make the pool's discovered backends those of C{answer}: new ones are
        added first, then vanished ones removed and drained, so the pool is
        never without the backends both sets share.
        """
        wanted = backendConfigs(self.discovery, answer, self.pool.config.health,
                                self.pool.config.tls)
        if self.state != "ok":
            self.log.info("pool {pool}: DNS discovery of {name} answers again",
                          pool=self.pool.name, name=self.discovery.name)
        self.state = "ok"
        self.answers += 1
        gone = [name for name in self._applied if name not in wanted]
        for name, config in wanted.items():
            before = self._applied.get(name)
            if before == config:
                continue
            if before is not None and before.backup != config.backup:
                self._remove(name)
                before = None
            if before is None:
                if name in self.pool:
                    self.log.warn(  # noqa: G010
                        "pool {pool}: discovered backend {backend} has the name of "
                        "one configured; ignored", pool=self.pool.name, backend=name)
                    continue
                self.pool.add(config)
            elif name in self.pool:
                self.pool.setWeight(name, config.weight)
            self._applied[name] = config
        for name in gone:
            self._remove(name)

    def _remove(self, name: str) -> None:
        del self._applied[name]
        backend = self.pool.get(name)
        if backend is None or not backend.config.discovered:
            return
        self.pool.remove(name)
        if self.drain is not None:
            self.drain(self.pool.name, backend)
