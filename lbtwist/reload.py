"""
Changing a running balancer: the operator's changes (through the admin API)
and configuration reloads, applied to the live pools without dropping a
connection, and saved to the state file.  (What changed is worked out by
L{lbtwist.diff}; signals and the graceful stop are L{lbtwist.lifecycle}'s.)

L{LiveConfig} is the one place that changes the pools at run time.  Every
change is first saved (atomically) to the state file and only then applied,
so an answer of success means the change survives a crash; a save that
fails changes nothing.

Reload and state file: the state file records the API's changes as
overrides on top of the configuration file.  On C{SIGHUP} the file is read
again; backends whose entry the file changed (or added, or removed) lose
their overrides, since the file is the newer word; every other override
stays.  The result is applied to the pools: new backends are added, removed
ones drained (their connections get C{grace} seconds, then are closed),
changed ones updated in place (weight) or replaced (endpoint, health).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.logger import Logger

from .config import (
    MAX_WEIGHT,
    NO_DIRECTORY,
    BackendConfig,
    Config,
    ConfigError,
    ListenerConfig,
    PoolConfig,
    _name,
    parsePool,
    parseRoutes,
)
from .diff import poolChanges, routeChanges, runnable
from .policies import POLICIES
from .pool import Admin, Backend, BackendPool
from .state import Overrides, StateError, StateFile
from .wording import counted

DEFAULT_GRACE = 30.0

#: Why a single process cannot upgrade, and how to start one that can.
UPGRADES_NEED_WORKERS = (
    "upgrades need worker processes: start with --workers 2 or more (workers: in the "
    "file), or --master (master: true) for one worker with a master"
)


class UnknownPool(KeyError):
    """
    There is no pool of that name.
    """


class UnknownBackend(KeyError):
    """
    There is no backend of that name in the pool.
    """


class DuplicateBackend(KeyError):
    """
    A backend of that name is already in the pool.
    """


class UnknownListener(KeyError):
    """
    There is no listener of that name.
    """


class DuplicatePool(KeyError):
    """
    A pool of that name exists already.
    """


class PoolInUse(ValueError):
    """
    A pool cannot be removed: listeners or routes send to it.

    @ivar users: what uses it, e.g. C{listener front} or C{route front/api}.
    """

    def __init__(self, pool: str, users: list[str]) -> None:
        super().__init__(f"pool {pool!r} is in use by {', '.join(users)}")
        self.users = users


def _ofListeners(names: Sequence[str]) -> str:
    """
    C{"listener front"}, C{"listeners front, back"}.
    """
    return f"{'listener' if len(names) == 1 else 'listeners'} {', '.join(names)}"


def reloadOutcome(changed: int, notApplied: Sequence[str], upgrade: bool,
                  routes: Sequence[str] = (), timeouts: Sequence[str] = (),
                  upgradable: Sequence[str] = ()) -> str:
    """
    The end of a reload's summary line: how many pools changed, the
    listeners whose routes or client timeouts it applied, and what the
    file changed that this reload did not apply (the admin API's
    C{restartNeeded}), so that neither a warning about a setting needing a
    restart nor a line saying what a listener now has is followed by a
    bare "no change".

    @param changed: the pools the reload changed.
    @param notApplied: the settings that need a restart (or, in an
        upgrade, the new workers).
    @param upgrade: an upgrade's reload, whose new workers apply them.
    @param routes: the listeners given new routes.
    @param timeouts: the listeners given new client timeouts.
    @param upgradable: those of C{notApplied} an upgrade (with worker
        processes) would apply; the others need a restart.
    """
    applied = [f"{counted(changed, 'pool')} changed"] if changed else []
    if routes:
        applied.append(f"routes of {_ofListeners(routes)} applied")
    if timeouts:
        applied.append(f"client timeouts of {_ofListeners(timeouts)} applied")
    outcome = ", ".join(applied) or "no change"
    if not notApplied:
        return outcome
    if not applied:
        outcome += " applied"
    if upgrade:
        return f"{outcome}; the upgrade applies: {', '.join(notApplied)}"
    held = [s for s in notApplied if s not in upgradable]
    if upgradable:
        outcome += f"; an upgrade applies: {', '.join(upgradable)}"
    return f"{outcome}; needs a restart: {', '.join(held)}" if held else outcome


class LiveConfig:
    """
    The running configuration: the file's, with the operator's overrides.

    @ivar pools: the live pools, by name.
    @ivar fileConfig: the configuration as the file (or command line) says.
    @ivar overrides: the operator's changes on top of it.
    @ivar grace: seconds a removed backend's connections get to finish.
    @ivar draining: removed backends whose connections are finishing, with
        the timer that closes what is left.
    @ivar reloaded: called with the configuration a reload applied, once
        the pools have it: the TLS listeners read their certificates again.
    """

    log = Logger()

    def __init__(
        self,
        pools: dict[str, BackendPool],
        fileConfig: Config,
        clock: Any,
        stateFile: StateFile | None = None,
        overrides: Overrides | None = None,
        loadConfig: Callable[[], Config] | None = None,
        grace: float = DEFAULT_GRACE,
        balancer: Any = None,
        reloaded: Sequence[Callable[[Config], None]] = (),
    ) -> None:
        """
        @param balancer: the L{lbtwist.service.LoadBalancer} whose pools
            these are: pools are added to and removed from it, and its
            listeners' factories are given their routes.  Without it, only
            backends change.
        """
        self.balancer = balancer
        self.pools = pools
        self.reloaded = reloaded
        self.fileConfig = fileConfig
        self.clock = clock
        self.stateFile = stateFile
        self.overrides = overrides or Overrides()
        self.loadConfig = loadConfig
        self.grace = grace
        self.draining: dict[Backend, Any] = {}
        self.reloads = 0
        # What the last reload read but could not apply without a restart.
        self.restartNeeded: list[str] = []
        # With worker processes: of what a reload cannot apply, what an
        # upgrade cannot apply either (an embedded master's own settings);
        # None: there are no upgrades, a restart applies it all.
        self.upgradeLeaves: Callable[[Sequence[str]], list[str]] | None = None
        # Those of restartNeeded an upgrade applies, no restart needed.
        self.upgradeApplies: list[str] = []
        # Called after each reconcile (any change applied to the pools or
        # routes, from any source): a master pushes to its workers.
        self.reconciled: list[Callable[[], None]] = []
        # The routes each listener's factory was given, as built.
        self.appliedRoutes = {x.name: (x.routes, x.defaultRoute) for x in fileConfig.listeners}
        # The client timeouts each listener's factory was given, as built.
        self.appliedTimeouts = {x.name: x.timeouts for x in fileConfig.listeners}
        # Called after each reload applied (the cluster registry, which
        # owns the backends, applies itself again).
        self.afterReload: list[Callable[[], None]] = []

    @property
    def config(self) -> Config:
        """
        The effective configuration: the file's with the overrides applied.
        """
        return self.overrides.apply(self.fileConfig)

    def pool(self, name: str) -> BackendPool:
        """
        The live pool of that name.

        @raise UnknownPool: there is none.
        """
        try:
            return self.pools[name]
        except KeyError:
            raise UnknownPool(name) from None

    def backend(self, pool: str, name: str) -> Backend:
        """
        The live backend C{name} of C{pool}.

        @raise UnknownPool: no such pool.
        @raise UnknownBackend: no such backend.
        """
        backend = self.pool(pool).get(name)
        if backend is None:
            raise UnknownBackend(name)
        return backend

    # -- the operator's changes ------------------------------------------

    def _commit(self, change: Callable[[Overrides], None]) -> None:
        """
        Save the overrides with C{change} made, then adopt them.

        @raise OSError: they could not be saved; nothing changed.
        """
        proposed = copy.deepcopy(self.overrides)
        change(proposed)
        if self.stateFile is not None:
            self.stateFile.save(proposed)
        self.overrides = proposed

    def addBackend(self, pool: str, config: BackendConfig, admin: Admin = Admin.READY) -> Backend:
        """
        Add a backend to a pool in admin state C{admin}, and remember it
        (one save: all of it or nothing).

        @raise UnknownPool: no such pool.
        @raise DuplicateBackend: the pool already has one of that name.
        """
        live = self.pool(pool)
        if config.name in live:
            raise DuplicateBackend(config.name)

        def change(o: Overrides) -> None:
            o.added(pool, config)
            if admin is not Admin.READY:
                o.administered(pool, config.name, admin)

        self._commit(change)
        backend = live.add(config)
        if admin is not Admin.READY:
            live.setAdmin(config.name, admin)
        return backend

    def removeBackend(self, pool: str, name: str) -> Backend:
        """
        Remove a backend: it gets no new clients, its current ones get
        C{grace} seconds to finish and are then closed.

        @raise UnknownPool: no such pool.
        @raise UnknownBackend: no such backend.
        """
        self.backend(pool, name)
        try:
            inFile = self.fileConfig.pool(pool).backend(name) is not None
        except KeyError:
            inFile = False
        self._commit(lambda o: o.removed(pool, name, inFile))
        backend = self.pools[pool].remove(name)
        self._drain(pool, backend)
        return backend

    def change(self, pool: str, name: str, weight: int | None = None,
               admin: Admin | None = None, backup: bool | None = None,
               slowStart: float | None = None) -> Backend:
        """
        Change a backend's weight, admin state, backup role and slow-start
        duration in one save: all of them or none.

        @raise UnknownPool: no such pool.
        @raise UnknownBackend: no such backend.
        @raise ValueError: the weight is out of range.
        """
        self.backend(pool, name)
        if weight is not None and not 0 <= weight <= MAX_WEIGHT:
            raise ValueError(f"weight must be 0-{MAX_WEIGHT}, got {weight}")

        def change(o: Overrides) -> None:
            if weight is not None:
                o.weighted(pool, name, weight)
            if admin is not None:
                o.administered(pool, name, admin)
            if backup is not None or slowStart is not None:
                o.configured(pool, name, backup, slowStart)

        self._commit(change)
        live = self.pools[pool]
        # The role and slow start first: a return to ready ramps with them.
        if backup is not None or slowStart is not None:
            live.configure(name, backup, slowStart)
        if weight is not None:
            live.setWeight(name, weight)
        if admin is not None:
            live.setAdmin(name, admin)
        return live.get(name)  # type: ignore[return-value]

    # -- routes and pools --------------------------------------------------

    def listener(self, name: str) -> ListenerConfig:
        """
        The effective configuration of listener C{name}, its routes as set.

        @raise UnknownListener: there is none.
        """
        for listener in self.config.listeners:
            if listener.name == name:
                return listener
        raise UnknownListener(name)

    def setRoutes(self, listener: str, data: object) -> ListenerConfig:
        """
        Replace the whole route list of C{listener} with C{data} (in the
        configuration's shape), checked first: new clients and requests
        take the new routes at once, those in flight finish as they began.

        @raise UnknownListener: no such listener.
        @raise ConfigError: the list is not valid (naming the key path, from
            C{routes}); nothing changed.
        @raise OSError: the state could not be saved; nothing changed.
        """
        running = self.listener(listener)
        parseRoutes(data, "routes", running.mode, list(self.pools), directory=NO_DIRECTORY)
        saved = copy.deepcopy(data)
        self._commit(lambda o: o.routesSet(listener, saved))  # type: ignore[arg-type]
        self._applyRoutes()
        return self.listener(listener)

    def _applyRoutes(self) -> None:
        """
        Give every listener whose effective routes differ from its
        factory's the effective ones.
        """
        factories = getattr(self.balancer, "factories", {})
        for listener in self.config.listeners:
            wanted = (listener.routes, listener.defaultRoute)
            factory = factories.get(listener.name)
            if self.appliedRoutes.get(listener.name) == wanted or factory is None:
                continue
            factory.setRoutes(*wanted)
            self.appliedRoutes[listener.name] = wanted
            self.log.info("listener {listener}: {routeCount} in use", listener=listener.name,
                          routeCount=counted(len(listener.routes), "route"),
                          count=len(listener.routes), routes=[r.name for r in listener.routes])

    def _applyClientTimeouts(self) -> None:
        """
        Give every listener whose client timeouts differ from its
        factory's the new ones, for the connections it accepts from now on.
        """
        factories = getattr(self.balancer, "factories", {})
        for listener in self.config.listeners:
            factory = factories.get(listener.name)
            if self.appliedTimeouts.get(listener.name) == listener.timeouts or factory is None:
                continue
            applied = factory.setClientTimeouts(listener)
            self.appliedTimeouts[listener.name] = listener.timeouts
            if applied is None:
                # (A master's stand-in for a listener only its workers serve.)
                continue
            idle, request = applied
            self.log.info(
                "listener {listener}: client timeouts idle {idle:g}s, request {request:g}s, "
                "for new connections", listener=listener.name, idle=idle, request=request)

    def poolUsers(self, name: str, config: Config | None = None) -> list[str]:
        """
        What sends clients to pool C{name}: listeners (as their pool) and
        routes (C{LISTENER/ROUTE}).
        """
        users = []
        for listener in (config or self.config).listeners:
            if listener.pool == name and not (listener.routes or listener.defaultRoute):
                users.append(f"listener {listener.name}")
            for route in (*listener.routes, *filter(None, [listener.defaultRoute])):
                if name in route.poolNames:
                    users.append(f"route {listener.name}/{route.name}")
        return users

    def addPool(self, name: str, data: object) -> BackendPool:
        """
        Add a pool, given in the configuration's shape; its health checks
        start now and routes may send to it at once.

        @raise DuplicatePool: there is one of that name.
        @raise ConfigError: C{data} is not a valid pool (naming the key).
        @raise OSError: the state could not be saved; nothing changed.
        """
        config = self.checkPool(name, data)
        saved = copy.deepcopy(data)
        self._commit(lambda o: o.poolAdded(name, saved))  # type: ignore[arg-type]
        return self.balancer.addPool(config)  # type: ignore[no-any-return]

    def checkPool(self, name: str, data: object) -> PoolConfig:
        """
        Check a pool L{addPool} would add, changing nothing: its name,
        settings, endpoints, TLS files and access log, as at start.

        @raise DuplicatePool: there is one of that name.
        @raise ConfigError: C{data} is not a valid pool (naming the key).
        """
        if name in self.pools:
            raise DuplicatePool(name)
        from .checks import checkEndpoints, checkFiles

        config = parsePool(_name(name, "name"), data, f"pools.{name}", NO_DIRECTORY)
        alone = attrs.evolve(self.fileConfig, listeners=(), admin=None, pools=(config,))
        checkEndpoints(alone)
        checkFiles(alone)
        return config

    def removePool(self, name: str) -> BackendPool:
        """
        Remove a pool nothing sends to: its health checks stop, its
        connections get C{grace} seconds to finish.

        @raise UnknownPool: no such pool.
        @raise PoolInUse: a listener or route sends to it.
        @raise OSError: the state could not be saved; nothing changed.
        """
        self.pool(name)
        users = self.poolUsers(name)
        if users:
            raise PoolInUse(name, users)
        inFile = any(p.name == name for p in self.fileConfig.pools)
        self._commit(lambda o: o.poolRemoved(name, inFile))
        pool = self.balancer.removePool(name)
        for backend in pool:
            self._drain(name, backend)
        return pool  # type: ignore[no-any-return]

    # -- draining --------------------------------------------------------

    def drain(self, pool: str, backend: Backend) -> None:
        """
        Give the connections of C{backend}, already removed from C{pool}
        (by DNS discovery, say), C{grace} seconds to finish, then close
        what is left.  Nothing is saved to the state file.
        """
        self._drain(pool, backend)

    def _drain(self, pool: str, backend: Backend) -> None:
        if not backend.closers:
            return
        self.log.info(
            "backend {backend} of pool {pool} draining: {grace}s for {activeCount} "
            "to finish",
            backend=backend.name, pool=pool, active=backend.active, grace=self.grace,
            activeCount=counted(backend.active, "connection"),
        )

        def graceOver() -> None:
            del self.draining[backend]
            closed = backend.closeAll()
            if closed:
                self.log.warn(  # noqa: G010
                    "backend {backend} of pool {pool}: closed {closedCount} "
                    "still open after the {grace}s grace period",
                    backend=backend.name, pool=pool, closed=closed, grace=self.grace,
                    closedCount=counted(closed, "connection"),
                )

        self.draining[backend] = self.clock.callLater(self.grace, graceOver)

    def inFlight(self) -> int:
        """
        Connections or requests in flight on every backend, removed or not.
        """
        return sum(b.active for p in self.pools.values() for b in p) + sum(
            b.active for b in self.draining
        )

    def closeEverything(self) -> int:
        """
        Close every live connection of every backend now, and forget the
        drain timers.

        @return: how many were closed.
        """
        for timer in self.draining.values():
            if timer.active():
                timer.cancel()
        backends = [b for p in self.pools.values() for b in p] + list(self.draining)
        self.draining.clear()
        return sum(b.closeAll() for b in backends)

    # -- reconciling and reloading ---------------------------------------

    def reconcile(self) -> int:
        """
        Make the live pools match the effective configuration, logging what
        changed in each pool.

        @return: how many pools changed.
        """
        effective = self.config
        changed = 0
        wanted = {pc.name for pc in effective.pools}
        for pc in effective.pools:
            live = self.pools.get(pc.name)
            if live is None:
                if self.balancer is None:
                    continue
                self.balancer.addPool(pc)
                changed += 1
                continue
            changed += self._reconcilePool(live, pc)
        self._applyRoutes()
        self._applyClientTimeouts()
        if self.balancer is not None:
            for name in [n for n in self.pools if n not in wanted]:
                for backend in self.balancer.removePool(name):
                    self._drain(name, backend)
                changed += 1
        for hook in self.reconciled:
            hook()
        return changed

    def _reconcilePool(self, live: BackendPool, pc: PoolConfig) -> bool:
        """
        Make C{live} match C{pc} and log, in one event, every change made:
        backends added, removed, replaced and reweighted, the policy and
        other pool settings, and admin states.

        @return: whether anything changed.
        """
        weights = {b.name: b.weight for b in live}
        # Discovered backends are DNS's, not the file's: a reload leaves them.
        changes = poolChanges((b.config for b in live if not b.config.discovered),
                              pc.backends)
        for name in changes.removed:
            self._drain(live.name, live.remove(name))
        for b in changes.replaced:
            self._drain(live.name, live.remove(b.name))
            live.add(b)
        for b in changes.reconfigured:
            live.configure(b.name, b.backup, b.slowStart, clearSlowStart=b.slowStart is None)
        for b in changes.reweighted:
            live.setWeight(b.name, b.weight)
        for b in changes.added:
            live.add(b)
        oldPolicy = live.config.policy
        if oldPolicy != pc.policy:
            live.policy = POLICIES[pc.policy](getattr(live, "_rng", None) or random.Random())
        settings = [
            field.name for field in attrs.fields(PoolConfig)
            if field.name not in ("name", "backends", "policy")
            and getattr(live.config, field.name) != getattr(pc, field.name)
        ]
        live.config = pc
        admin = self.overrides.adminStates(live.name)
        administered = []
        for backend in live:
            wanted = admin.get(backend.name, Admin.READY)
            if backend.admin is not wanted:
                administered.append(f"{backend.name} {backend.admin.value}->{wanted.value}")
                live.setAdmin(backend.name, wanted)
        summary = [
            f"{what} {', '.join(names)}" for what, names in (
                ("added", [b.name for b in changes.added]),
                ("removed", list(changes.removed)),
                ("replaced (endpoint or health check changed)",
                 [b.name for b in changes.replaced]),
                ("reweighted", [f"{b.name} {weights[b.name]}->{b.weight}"
                                for b in changes.reweighted]),
                ("reconfigured", [b.name for b in changes.reconfigured]),
                ("policy", [f"{oldPolicy}->{pc.policy}"] if oldPolicy != pc.policy else []),
                ("settings", settings),
                ("admin", administered),
            ) if names
        ]
        if summary:
            self.log.info(
                "pool {pool}: {changes}",
                pool=live.name,
                changes="; ".join(summary),
                added=[b.name for b in changes.added],
                removed=list(changes.removed),
                replaced=[b.name for b in changes.replaced],
                reweighted={b.name: b.weight for b in changes.reweighted},
                policy=pc.policy,
                settings=settings,
                admin=administered,
            )
        return bool(summary)

    def _runnableRoutes(self, new: Config) -> Config:
        """
        C{new}, with the running routes kept for each listener whose new
        routes name a pool that will not be running (without a balancer to
        add pools to, a pool new in the file needs a restart, or C{POST
        /api/pools}); noted in C{restartNeeded}.
        """
        running = {x.name: x for x in self.fileConfig.listeners}
        available = set(self.pools)
        if self.balancer is not None:
            available.update(p.name for p in new.pools)
        listeners = []
        for listener in new.listeners:
            missing = sorted({n for r in (*listener.routes, *filter(None, [listener.defaultRoute]))
                              for n in r.poolNames} - available)
            if missing and listener.name in running:
                self.restartNeeded.append(
                    f"listeners.{listener.name}.routes (pool {', '.join(missing)} not running)")
                was = running[listener.name]
                listener = attrs.evolve(listener, routes=was.routes,
                                        defaultRoute=was.defaultRoute)
            listeners.append(listener)
        return attrs.evolve(new, listeners=tuple(listeners))

    def reload(self, upgrade: bool = False, config: Config | None = None) -> str | None:
        """
        Read the configuration file again and apply it.

        @param upgrade: this is an upgrade's reload: what a reload cannot
            apply, the upgrade's new workers (or its re-executed master)
            will, so it is said at info level, not named as needing a
            restart.
        @param config: apply this configuration (built in code, and
            checked against the world as a file's is) instead of reading
            the file.

        @return: L{None} when applied, else why it was rejected (the running
            configuration stays).
        """
        if config is None and self.loadConfig is None:
            self.log.warn(  # noqa: G010
                "reload asked, but there is no configuration file to read")
            return "there is no configuration file to reload"
        try:
            if config is None:
                new = self.loadConfig()  # type: ignore[misc]
            else:
                from .checks import checkEndpoints, checkTLS

                checkEndpoints(config)
                checkTLS(config)
                new = config
        except ConfigError as e:
            self.log.error(
                "configuration reload rejected, the running configuration stays: "
                "{error}", error=str(e),
            )
            return str(e)
        old = self.fileConfig
        new, self.restartNeeded = runnable(new, old, poolsLive=self.balancer is not None)
        new = self._runnableRoutes(new)
        held = (self.restartNeeded if self.upgradeLeaves is None
                else self.upgradeLeaves(self.restartNeeded))
        self.upgradeApplies = [s for s in self.restartNeeded if s not in held]
        if self.restartNeeded and upgrade:
            self.log.info(
                "upgrade: {settings} change with the new workers (the master's own "
                "settings by re-executing it); applying everything else now",
                settings=", ".join(self.restartNeeded),
            )
        elif self.restartNeeded:
            waiting = [f"{', '.join(self.upgradeApplies)} only change with an upgrade "
                       "(SIGUSR2, lbtwist ctl upgrade or POST /api/upgrade), no restart "
                       "needed"] if self.upgradeApplies else []
            if held:
                waiting.append(f"{', '.join(held)} only change with a restart")
            self.log.warn(  # noqa: G010
                "configuration reload: {waiting}; applying everything else",
                waiting="; ".join(waiting),
                settings=", ".join(self.restartNeeded),
                upgradeApplies=list(self.upgradeApplies),
            )
        oldPools = {p.name: p for p in old.pools}
        proposed = copy.deepcopy(self.overrides)
        for listener in routeChanges(new, old):
            # The file says something new about these routes: it wins.
            proposed.routes.pop(listener, None)
        for pc in new.pools:
            before = oldPools.get(pc.name)
            if before is not None:
                proposed.forget(pc.name, poolChanges(before.backends, pc.backends).names)
        try:
            proposed.apply(new)
        except ConfigError as e:
            self.log.error("configuration reload rejected: with the changes made at run "
                           "time, {error}", error=str(e))
            return f"with the changes made at run time, {e}"
        if proposed != self.overrides and self.stateFile is not None:
            try:
                self.stateFile.save(proposed)
            except OSError as e:
                self.log.error(
                    "configuration reload rejected: cannot save the state file: {error}",
                    error=str(e),
                )
                return f"cannot save the state file: {e}"
        self.overrides = proposed
        self.fileConfig = new
        routesBefore, timeoutsBefore = dict(self.appliedRoutes), dict(self.appliedTimeouts)
        changed = self.reconcile()
        for reloaded in self.reloaded:
            reloaded(new)
        for hook in self.afterReload:
            hook()
        self.reloads += 1
        backends = sum(len(p) for p in self.pools.values())
        self.log.info(
            "configuration reloaded: {backendCount} in {poolCount}, {outcome}",
            backendCount=counted(backends, "backend"),
            poolCount=counted(len(self.pools), "pool"),
            outcome=reloadOutcome(
                changed, self.restartNeeded, upgrade,
                routes=[n for n, r in self.appliedRoutes.items() if routesBefore.get(n) != r],
                timeouts=[n for n, t in self.appliedTimeouts.items()
                          if timeoutsBefore.get(n) != t],
                upgradable=self.upgradeApplies),
            backends=backends,
            pools=len(self.pools),
            changed=changed,
            restartNeeded=list(self.restartNeeded),
        )
        return None



def configLoader(path: str) -> Callable[[], Config]:
    """
    Reads and checks the configuration file at C{path}, for reloads.
    """

    def load() -> Config:
        from .checks import checkEndpoints, checkTLS
        from .config import loadConfigFile

        config = loadConfigFile(path)
        checkEndpoints(config)
        checkTLS(config)
        return config

    return load


def loadState(live: LiveConfig) -> None:
    """
    Load the saved overrides into C{live} and apply them to its pools.

    @raise StateError: the state file is not valid.
    """
    if live.stateFile is None:
        return
    health = {p.name: p.health for p in live.fileConfig.pools}
    stateFile = live.stateFile
    live.overrides = stateFile.load(
        lambda pool: health.get(pool) or next(iter(health.values()))
    )
    try:
        # Pools and routes are kept in the configuration's shape: check them
        # against this configuration before anything is applied.
        live.config  # noqa: B018
    except ConfigError as e:
        raise StateError(f"state file {stateFile.loadedFrom!r}: {e}") from e
    if stateFile.loadedFrom is None:
        live.log.info("state file {path}: none yet; changes made at run time are saved there",
                      path=stateFile.path)
    elif stateFile.loadedFrom == stateFile.path:
        live.log.info("state restored from {path}: {summary}",
                      path=stateFile.path, summary=live.overrides.summary())
    else:
        live.log.warn(
            "state restored from {legacy} (the old default name): {summary}; changes are "
            "saved to {path} from now on, which is read instead once it exists",
            legacy=stateFile.loadedFrom, path=stateFile.path,
            summary=live.overrides.summary())
    live.reconcile()
