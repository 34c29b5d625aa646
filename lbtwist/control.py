"""
The one way to change a running balancer, for the admin API and for an
application that embeds lbtwist alike: L{BalancerControl}.

It takes plain values in the configuration's shape, checks them (a bad one
raises L{lbtwist.config.ConfigError} naming the field, and nothing
changes), and makes the change where the balancer's run-time state lives:
the cluster store when the balancer shares its registry through etcd (every
balancer then applies it), else its own L{lbtwist.reload.LiveConfig} (saved
to the state file).  L{LiveConfig} stays the local layer underneath: what
it changes alone, a cluster's registry undoes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed

from .checks import checkEndpoint
from .config import (
    MAX_WEIGHT,
    NO_DIRECTORY,
    Config,
    ConfigError,
    ListenerConfig,
    parseBackend,
    parseRoutes,
    parseSlowStart,
)
from .endpoints import parseEndpoint
from .pool import Admin, Backend, BackendPool
from .reload import LiveConfig, UnknownListener

if TYPE_CHECKING:
    from .cluster import RegistrySync

T = TypeVar("T")

#: The keys of a backend added at run time.
BACKEND_KEYS = ("name", "endpoint", "host", "port", "weight")


class Unknown(ConfigError):
    """
    A change names a pool, backend or listener that does not exist.

    @ivar what: C{"pool"}, C{"backend"} or C{"listener"}.
    """

    def __init__(self, what: str, path: str, problem: str) -> None:
        super().__init__(path, problem)
        self.what = what


class Duplicate(ConfigError):
    """
    A pool or backend of that name exists already.
    """


class InUse(ConfigError):
    """
    A pool cannot be removed: listeners or routes send to it.
    """


def shown(value: object) -> str:
    """
    A value as a client gave it, in JSON's spelling (true, null, "x").
    """
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def checkWeight(value: object, path: str) -> int:
    """
    A backend's weight: an integer 0 to L{MAX_WEIGHT}.
    """
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WEIGHT:
        raise ConfigError(path, f"expected an integer 0-{MAX_WEIGHT}, got {shown(value)}")
    return value


def checkState(value: object, path: str) -> Admin:
    """
    An admin state by name: ready, drain or maint.
    """
    try:
        return Admin(value)
    except ValueError:
        raise ConfigError(
            path, f"expected one of ready, drain, maint, got {shown(value)}") from None


def checkBackup(value: object, path: str) -> bool:
    """
    A backend's backup role: true or false.
    """
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {shown(value)}")
    return value


def _refuseSSL(pool: BackendPool, endpoint: object) -> None:
    """
    Refuse an C{ssl:} endpoint for a backend added at run time, saying what
    works there: the configuration's hint (a C{tls} block of the backend's
    own) does not, since a backend added so takes its pool's block.

    @raise ConfigError: C{endpoint} is an C{ssl:} endpoint string.
    """
    if not isinstance(endpoint, str) or endpoint.partition(":")[0] != "ssl":
        return
    try:
        address = parseEndpoint(endpoint, False).authority or "HOST:PORT"
    except ValueError:
        address = "HOST:PORT"
    if pool.config.tls is not None:
        advice = f"has one, so add it as {address}"
    else:
        advice = ("has none; give it one (tls: {ca: FILE}, or ca: system) in the "
                  f"configuration file, or add the backend to a pool that has one, as {address}")
    raise ConfigError("endpoint", "an ssl: backend endpoint does not verify the backend's "
                      "certificate, and a backend added at run time speaks TLS as its "
                      f"pool's tls block says: pool {pool.name!r} {advice}")


def _settled(change: Callable[[], T]) -> Deferred[T]:
    """
    Make a local change now: a L{Deferred} fired with its result, or
    failed with the L{OSError} of a state file that could not be saved.
    """
    try:
        return succeed(change())
    except OSError as e:
        return fail(e)


class BalancerControl:
    """
    Changes to a running balancer: backends, pools, routes and reloads.

    Every method checks what it is given first and raises, synchronously,
    L{ConfigError} when it is wrong (L{Unknown}, L{Duplicate} and L{InUse}
    are kinds of it): nothing changed.  Otherwise it returns a L{Deferred}
    that fires with the result once this balancer has applied the change.
    Alone, that is at once (and saved to the state file first: a save
    that fails fails the L{Deferred} with L{OSError}, nothing changed).  In
    a cluster the change is written to etcd, and the L{Deferred} fires
    once this balancer has applied it from there (every other balancer
    applies it too), or fails with L{lbtwist.cluster.Conflict} (another
    change came first), L{lbtwist.cluster.StoreUnavailable} (etcd cannot
    be reached; nothing written) or L{twisted.internet.error.TimeoutError}
    (written, not yet applied here).

    @ivar live: the local layer under it (see L{lbtwist.reload.LiveConfig}).
    @ivar cluster: the registry sync with etcd, or L{None} alone.
    """

    def __init__(self, live: LiveConfig, cluster: RegistrySync | None = None, *,
                 reloadsFromCode: bool = True) -> None:
        """
        @param reloadsFromCode: whether L{reload} takes a configuration
            built in code: a master's worker processes read the file
            themselves, so a master reloads from its file only.
        """
        self.live = live
        self.cluster = cluster
        self.reloadsFromCode = reloadsFromCode

    # -- names -------------------------------------------------------------

    def pool(self, name: str) -> BackendPool:
        """
        The live pool C{name}.

        @raise Unknown: there is none.
        """
        pool = self.live.pools.get(name)
        if pool is None:
            raise Unknown("pool", "pool",
                          f"unknown pool {name!r} (pools: {', '.join(self.live.pools)})")
        return pool

    def backend(self, pool: str, name: str) -> Backend:
        """
        The live backend C{name} of pool C{pool}.

        @raise Unknown: there is no such pool or backend.
        """
        live = self.pool(pool)
        backend = live.get(name)
        if backend is None:
            raise Unknown("backend", "name", f"pool {live.name!r} has no backend {name!r}")
        return backend

    def listener(self, name: str) -> ListenerConfig:
        """
        The running configuration of listener C{name}, its routes as set.

        @raise Unknown: there is none.
        """
        try:
            return self.live.listener(name)
        except UnknownListener:
            raise Unknown("listener", "listener", f"no listener {name!r} (listeners: "
                          f"{', '.join(x.name for x in self.live.config.listeners)})") from None

    def _applied(self, write: Deferred[None], result: Callable[[], T]) -> Deferred[T]:
        """
        C{result()} once a write to the cluster store is applied here.
        """
        return write.addCallback(lambda _: result())

    # -- backends ----------------------------------------------------------

    def addBackend(self, pool: str, backend: Mapping[str, Any],
                   state: str = "ready") -> Deferred[Backend]:
        """
        Add a backend to C{pool}: C{{"name", "endpoint"}} (an endpoint
        string or C{HOST:PORT}), or C{"host"} and C{"port"}, and
        C{"weight"}; the name defaults to the endpoint's address.  It is
        checked with the pool's health check.

        @param state: its admin state: C{ready}, C{drain} or C{maint}.
        @return: fires with the live backend (see L{BalancerControl}).
        @raise ConfigError: naming the field; L{Unknown}: no such pool;
            L{Duplicate}: alone, the pool has a backend of that name (in a
            cluster the L{Deferred} fails with a conflict).
        """
        live = self.pool(pool)
        if not isinstance(backend, Mapping):
            raise ConfigError("", f"expected a backend's keys, got {shown(backend)}")
        data = dict(backend)
        unknown = sorted(set(data) - set(BACKEND_KEYS))
        if unknown:
            raise ConfigError("", f"unknown field {unknown[0]!r} (expected name, endpoint, "
                                  "host, port, weight, state)")
        for key in ("name", "endpoint", "host"):
            if key in data and not isinstance(data[key], str):
                raise ConfigError(key, f"expected a string, got {shown(data[key])}")
        if "port" in data and (isinstance(data["port"], bool)
                               or not isinstance(data["port"], int)):
            raise ConfigError("port", f"expected an integer, got {shown(data['port'])}")
        if "weight" in data:
            checkWeight(data["weight"], "weight")
        admin = checkState(state, "state")
        _refuseSSL(live, data.get("endpoint"))
        try:
            config = parseBackend(data, "", live.config.health, directory=NO_DIRECTORY)
        except ConfigError as e:
            # Parsed from the root: its key paths begin with a dot.
            raise ConfigError(e.path.lstrip("."), e.problem) from None
        try:
            checkEndpoint(config.endpoint, server=False)
        except Exception as e:
            raise ConfigError("endpoint", f"invalid endpoint {config.endpoint!r}: {e}") from e
        if self.cluster is not None:
            def added() -> Backend:
                from .cluster import Conflict

                found = live.get(config.name)
                if found is None:
                    raise Conflict(f"backend {config.name!r} was removed again by "
                                   "another change")
                return found

            return self._applied(self.cluster.addBackend(pool, config, admin), added)
        if config.name in live:
            raise Duplicate("name", f"pool {pool!r} already has a backend {config.name!r}")
        return _settled(lambda: self.live.addBackend(pool, config, admin))

    def change(self, pool: str, name: str, *, weight: int | None = None,
               state: str | None = None, backup: bool | None = None,
               slowStart: float | str | None = None) -> Deferred[Backend]:
        """
        Change a backend's C{weight} (0-256), admin C{state} (C{ready},
        C{drain}, C{maint}), C{backup} role and C{slowStart} duration
        (seconds, or a duration such as C{"30s"}; C{slow-start} in the
        configuration), all in one change: those given, at least one.

        @return: fires with the backend (see L{BalancerControl}).
        @raise ConfigError: naming the field; L{Unknown}: no such pool or
            backend.
        """
        self.backend(pool, name)
        if weight is None and state is None and backup is None and slowStart is None:
            raise ConfigError("", "nothing to change: give weight, state, backup or slow-start")
        checkedWeight = None if weight is None else checkWeight(weight, "weight")
        admin = None if state is None else checkState(state, "state")
        if backup is not None:
            checkBackup(backup, "backup")
        duration = None if slowStart is None else parseSlowStart(slowStart, "slow-start")
        if self.cluster is not None:
            return self._applied(
                self.cluster.changeBackend(pool, name, checkedWeight, admin, backup, duration),
                lambda: self.backend(pool, name))
        return _settled(lambda: self.live.change(pool, name, checkedWeight, admin, backup,
                                                 duration))

    def removeBackend(self, pool: str, name: str) -> Deferred[Backend]:
        """
        Remove a backend: it gets no new clients, its current ones get the
        grace period to finish.

        @return: fires with the removed backend (see L{BalancerControl}).
        @raise Unknown: no such pool or backend.
        """
        backend = self.backend(pool, name)
        if self.cluster is not None:
            return self._applied(self.cluster.removeBackend(pool, name), lambda: backend)
        return _settled(lambda: self.live.removeBackend(pool, name))

    # -- routes and pools --------------------------------------------------

    def setRoutes(self, listener: str, routes: object) -> Deferred[ListenerConfig]:
        """
        Replace the whole route list of C{listener} with C{routes} (a list
        in the configuration's shape): new clients and requests take it at
        once, those in flight finish as they began.

        @return: fires with the listener's configuration, its routes as set
            (see L{BalancerControl}).
        @raise ConfigError: naming the key path from C{routes};
            L{Unknown}: no such listener.
        """
        running = self.listener(listener)
        if self.cluster is None:
            # Checked before anything is saved: a ConfigError is raised now.
            return _settled(lambda: self.live.setRoutes(listener, routes))
        from .admin._views import routeData

        parsed = parseRoutes(routes, "routes", running.mode, list(self.live.pools),
                             directory=NO_DIRECTORY)
        # Stored in the shape the admin API shows: each balancer parses it again.
        return self._applied(
            self.cluster.setRoutes(listener, [routeData(r) for r in parsed],
                                   {n for r in parsed for n in r.poolNames}),
            lambda: self.listener(listener))

    def addPool(self, name: str, pool: Mapping[str, Any]) -> Deferred[BackendPool]:
        """
        Create pool C{name} from C{pool}, in the configuration's shape
        (C{policy}, C{health}, C{backends}...): its health checks start now
        and routes may send to it at once.

        @return: fires with the live pool (see L{BalancerControl}).
        @raise ConfigError: naming the key; L{Duplicate}: a pool of that
            name exists.
        """
        if not isinstance(name, str):
            raise ConfigError("name", f"expected the pool's name, got {shown(name)}")
        if name in self.live.pools:
            raise Duplicate("name", f"there is a pool {name!r} already")
        data = dict(pool) if isinstance(pool, Mapping) else pool
        if self.cluster is None:
            return _settled(lambda: self.live.addPool(name, data))
        config = self.live.checkPool(name, data)

        def created() -> BackendPool:
            from .cluster import Conflict

            if name not in self.live.pools:
                raise Conflict(f"pool {name!r} was removed again by another change")
            return self.live.pools[name]

        return self._applied(self.cluster.addPool(name, data, config), created)

    def removePool(self, name: str) -> Deferred[BackendPool]:
        """
        Remove a pool nothing sends to: its health checks stop, its
        connections get the grace period to finish.

        @return: fires with the removed pool (see L{BalancerControl}).
        @raise Unknown: no such pool; L{InUse}: a listener or route sends
            to it.
        """
        pool = self.pool(name)
        users = self.live.poolUsers(name)
        if users:
            raise InUse("name", f"pool {name!r} is in use by {', '.join(users)}")
        if self.cluster is not None:
            inFile = any(p.name == name for p in self.live.fileConfig.pools)
            return self._applied(self.cluster.removePool(name, inFile), lambda: pool)
        return _settled(lambda: self.live.removePool(name))

    # -- reloading -----------------------------------------------------------

    def reload(self, config: Config | None = None) -> Deferred[list[str]]:
        """
        Apply a configuration, as C{SIGHUP} does: the file's again, or
        C{config}, built in code (L{lbtwist.parseConfig}), checked as a
        file's is (its endpoints and TLS files).  Changes made at run time
        stay, except those to what the new configuration changes.  A
        reload is this balancer's own, in a cluster too.

        @return: fires at once with the settings that only change with a
            restart (not applied).
        @raise ConfigError: the configuration was rejected (or there is no
            file to read): the running one stays.
        """
        if config is not None and not self.reloadsFromCode:
            raise ConfigError("config", "this balancer's worker processes read its "
                                            "configuration file: reload from the file")
        problem = self.live.reload(config=config)
        if problem is not None:
            raise ConfigError("", problem)
        return succeed(list(self.live.restartNeeded))
