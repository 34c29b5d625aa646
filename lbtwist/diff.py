"""
What turns one configuration into another, as pure functions: the backends
a pool gains, loses, replaces or re-weights (L{poolChanges}), and what of a
newly read configuration a running balancer can take on without a restart
(L{runnable}).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import attrs

from .config import BackendConfig, Config, ListenerConfig, PoolConfig


@attrs.frozen
class PoolChanges:
    """
    What turns one pool's configuration into another.

    @ivar added: backends new in the pool.
    @ivar removed: names of backends gone from it.
    @ivar replaced: backends whose endpoint or health check changed.
    @ivar reweighted: backends whose weight changed (and nothing else but
        their role and slow start).
    @ivar reconfigured: backends whose backup role or slow start changed
        (and nothing else but their weight): changed in place.
    """

    added: tuple[BackendConfig, ...] = ()
    removed: tuple[str, ...] = ()
    replaced: tuple[BackendConfig, ...] = ()
    reweighted: tuple[BackendConfig, ...] = ()
    reconfigured: tuple[BackendConfig, ...] = ()

    @property
    def names(self) -> set[str]:
        """
        The names of every backend these changes touch.
        """
        return (
            {b.name for b in self.added + self.replaced + self.reweighted + self.reconfigured}
            | set(self.removed)
        )


def poolChanges(old: Iterable[BackendConfig], new: Iterable[BackendConfig]) -> PoolChanges:
    """
    Compare two lists of backends.
    """
    before = {b.name: b for b in old}
    after = {b.name: b for b in new}
    added, replaced, reweighted, reconfigured = [], [], [], []
    for name, b in after.items():
        was = before.get(name)
        if was is None:
            added.append(b)
        elif attrs.evolve(was, weight=b.weight, backup=b.backup, slowStart=b.slowStart) != b:
            replaced.append(b)
        else:
            if was.weight != b.weight:
                reweighted.append(b)
            if (was.backup, was.slowStart) != (b.backup, b.slowStart):
                reconfigured.append(b)
    removed = tuple(name for name in before if name not in after)
    return PoolChanges(
        tuple(added), removed, tuple(replaced), tuple(reweighted), tuple(reconfigured))


# Pool settings the listeners' protocol factories take when they are built:
# a reload cannot change them under running connections.
_BUILT_IN = (
    ("timeouts.idle", lambda p: p.timeouts.idle),
    ("timeouts.request", lambda p: p.timeouts.request),
    ("timeouts.response", lambda p: p.timeouts.response),
    ("http", lambda p: p.http),
    ("sticky", lambda p: p.sticky),
    ("proxy-protocol", lambda p: p.proxyProtocol),
    ("access-log", lambda p: p.accessLog),
    ("discovery", lambda p: p.discovery),
    ("protocol", lambda p: p.protocol),
)


def _keepBuilt(new: PoolConfig, running: PoolConfig, differ: list[str]) -> PoolConfig:
    """
    C{new}, with the running values of the settings that need a restart;
    the names of those that differ are added to C{differ}.
    """
    changed = [key for key, get in _BUILT_IN if get(new) != get(running)]
    differ.extend(f"pools.{new.name}.{key}" for key in changed)
    if not changed:
        return new
    if "protocol" in changed:
        # Its backends' TLS (ALPN) and health checks follow the protocol:
        # they stay as they run too.
        new = attrs.evolve(new, protocol=running.protocol, backends=running.backends)
    return attrs.evolve(
        new,
        timeouts=attrs.evolve(new.timeouts, idle=running.timeouts.idle,
                              request=running.timeouts.request,
                              response=running.timeouts.response),
        http=running.http,
        sticky=running.sticky,
        proxyProtocol=running.proxyProtocol,
        accessLog=running.accessLog,
        discovery=running.discovery,
    )


def routeChanges(new: Config, old: Config) -> list[str]:
    """
    The names of the listeners whose routes (or default route) differ
    between two configurations.
    """
    before = {x.name: (x.routes, x.defaultRoute) for x in old.listeners}
    return [x.name for x in new.listeners
            if x.name in before and before[x.name] != (x.routes, x.defaultRoute)]


def _listenerKey(listener: ListenerConfig) -> tuple[object, ...]:
    """
    What of a listener only changes with a restart: all of it but the
    certificates it serves, which a reload reads again, and its routes and
    client timeouts, which its protocol factory takes live (its HTTP/2
    settings are the factory's, made at start).
    """
    tls = listener.tls
    return (listener.name, listener.endpoint, listener.pool, listener.mode,
            None if tls is None else attrs.evolve(tls, certificates=()),
            tls is not None and bool(tls.certificates), listener.http2)


def _listenersDiffer(new: Sequence[ListenerConfig],
                     running: Sequence[ListenerConfig]) -> list[str]:
    """
    How the listeners differ, for the restart-needed list: C{listeners},
    unless the only change is the pool a listener with routes takes its
    client settings from (its first route's, when it names none), which
    says so: its routes themselves change live.
    """
    pairs = list(zip(new, running))
    if len(new) != len(running) or not all(
        n.routes and _listenerKey(attrs.evolve(n, pool=r.pool)) == _listenerKey(r)
        for n, r in pairs if _listenerKey(n) != _listenerKey(r)
    ):
        return ["listeners"]
    return [f"listeners.{r.name}.pool (its client settings stay pool {r.pool}'s "
            f"until a restart, not {n.pool}'s; its routes are applied)"
            for n, r in pairs if n.pool != r.pool]


def runnable(new: Config, running: Config, poolsLive: bool = False) -> tuple[Config, list[str]]:
    """
    What of a newly read configuration a running balancer can take on:
    C{new}, with the listeners (but for the certificates they serve, and
    the routes and client timeouts of the listeners kept by name and mode,
    which change live),
    the set of pools (unless C{poolsLive}: a balancer that adds and removes
    pools at run time takes the new set) and the settings that only change
    with a restart kept as they run, and the names of those that differ.
    An admin token read from the environment at start stays when the file
    gives none.
    """
    differ = []
    listeners = new.listeners
    if [_listenerKey(x) for x in new.listeners] != [_listenerKey(x) for x in running.listeners]:
        differ.extend(_listenersDiffer(new.listeners, running.listeners))
        newListeners = {x.name: x for x in new.listeners}
        listeners = tuple(
            attrs.evolve(was, routes=newListeners[was.name].routes,
                         defaultRoute=newListeners[was.name].defaultRoute,
                         timeouts=newListeners[was.name].timeouts)
            if was.name in newListeners and newListeners[was.name].mode == was.mode else was
            for was in running.listeners)
    runningPools = {p.name: p for p in running.pools}
    newPools = {p.name: p for p in new.pools}
    if set(newPools) != set(runningPools) and not poolsLive:
        differ.append("the set of pools")
    for key, attribute in (("status-interval", "statusInterval"), ("admin", "admin"),
                           ("state", "state"), ("maxconn", "maxconn"),
                           ("resolvers", "resolvers"), ("workers", "workers"),
                           ("master", "master"), ("worker-watchdog", "workerWatchdog"),
                           ("cluster", "cluster")):
        if getattr(new, attribute) != getattr(running, attribute):
            differ.append(key)
    pools = tuple(
        _keepBuilt(newPools[name], pool, differ) if name in newPools else pool
        for name, pool in runningPools.items()
        if name in newPools or not poolsLive
    ) + (tuple(p for name, p in newPools.items() if name not in runningPools)
         if poolsLive else ())
    kept = attrs.evolve(
        new,
        listeners=listeners,
        pools=pools,
        statusInterval=running.statusInterval,
        admin=running.admin,
        state=running.state,
        maxconn=running.maxconn,
        resolvers=running.resolvers,
        workers=running.workers,
        master=running.master,
        workerWatchdog=running.workerWatchdog,
        cluster=running.cluster,
        adminToken=new.adminToken or running.adminToken,
    )
    return kept, differ
