"""
The state file: changes made at run time, kept as overrides on top of the
configuration, and saved so that a restart (or a crash) never loses them.

The overrides of a pool are: backends removed, backends added (with their
endpoint and weight), weights changed and admin states set.  Beyond the
pools' backends: pools added (in the configuration's shape) and removed,
and listeners' route lists replaced (in the configuration's shape too, so
that they are checked again as the file's are when they are applied).  The effective
configuration is always I{the file's configuration with the overrides
applied}, so a reload of the file (C{SIGHUP}) keeps the operator's changes;
a backend whose entry the file changes is the file's again (the newest word
wins), see L{Overrides.forget}.

Saving is atomic: the new state is written to a temporary file in the same
directory, flushed and fsynced, renamed over the old one, and the directory
is fsynced.  A crash at any point leaves either the old state or the new one,
never a mix.

Nothing here touches the network.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from .config import (
    BackendConfig,
    Config,
    ConfigError,
    ListenerConfig,
    parseBackend,
    parsePool,
    parseRoutes,
    underPool,
)
from .endpoints import parseEndpoint
from .pool import Admin
from .routeconfig import Route

STATE_VERSION = 2
# Older state files (backend overrides only) still load.
READABLE_VERSIONS = (1, 2)
# The one default name before the state file's name followed the
# configuration's; still read when the new default file is not there yet.
LEGACY_STATE_NAME = "lbtwist-state.json"
DEMO_STATE_NAME = "lbtwist-demo.state.json"
STATE_SUFFIX = ".state.json"


class StateError(ValueError):
    """
    A state file cannot be read or is not valid.
    """


@attrs.define
class PoolOverrides:
    """
    The run-time changes of one pool.

    @ivar removed: names of backends removed (from the file's list).
    @ivar added: backends added, by name.
    @ivar weights: weights set, by backend name.
    @ivar admin: admin states other than C{ready}, by backend name.
    @ivar settings: backup roles and slow-start durations set, by backend
        name (C{backup}, C{slow-start}).
    """

    removed: set[str] = attrs.Factory(set)
    added: dict[str, BackendConfig] = attrs.Factory(dict)
    weights: dict[str, int] = attrs.Factory(dict)
    admin: dict[str, Admin] = attrs.Factory(dict)
    settings: dict[str, dict[str, Any]] = attrs.Factory(dict)

    def empty(self) -> bool:
        """
        Whether this pool has no override at all.
        """
        return not (self.removed or self.added or self.weights or self.admin or self.settings)


class Overrides:
    """
    Every pool's run-time changes, recorded as the operator makes them.
    """

    def __init__(self, pools: Mapping[str, PoolOverrides] | None = None) -> None:
        """
        @ivar routes: listeners' route lists as set at run time, in the
            configuration's shape, by listener name.
        @ivar addedPools: pools added at run time, in the configuration's
            shape, by name.
        @ivar removedPools: names of the configuration's pools removed.
        """
        self.pools: dict[str, PoolOverrides] = dict(pools or {})
        self.routes: dict[str, list[Any]] = {}
        self.addedPools: dict[str, dict[str, Any]] = {}
        self.removedPools: set[str] = set()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Overrides) and {
            k: v for k, v in self.pools.items() if not v.empty()
        } == {k: v for k, v in other.pools.items() if not v.empty()} and (
            self.routes, self.addedPools, self.removedPools) == (
            other.routes, other.addedPools, other.removedPools)

    def __repr__(self) -> str:
        return (f"<Overrides {self.pools!r} routes={self.routes!r} "
                f"addedPools={sorted(self.addedPools)} removedPools={sorted(self.removedPools)}>")

    # -- pools and routes ------------------------------------------------

    def routesSet(self, listener: str, data: list[Any]) -> None:
        """
        The route list of C{listener} was replaced by C{data} (checked, in
        the configuration's shape).
        """
        self.routes[listener] = data

    def poolAdded(self, name: str, data: dict[str, Any]) -> None:
        """
        A pool was added, as C{data} (checked, in the configuration's shape).
        """
        self.addedPools[name] = data
        self.removedPools.discard(name)
        self.pools.pop(name, None)

    def poolRemoved(self, name: str, inFile: bool) -> None:
        """
        A pool was removed; every override of it goes.

        @param inFile: whether the configuration file has it (only then is
            the removal remembered).
        """
        self.addedPools.pop(name, None)
        self.pools.pop(name, None)
        if inFile:
            self.removedPools.add(name)

    def pool(self, name: str) -> PoolOverrides:
        """
        The overrides of pool C{name}, created empty if needed.
        """
        return self.pools.setdefault(name, PoolOverrides())

    # -- recording -------------------------------------------------------

    def added(self, pool: str, backend: BackendConfig) -> None:
        """
        A backend was added to C{pool}.
        """
        p = self.pool(pool)
        p.added[backend.name] = backend
        p.weights.pop(backend.name, None)
        p.admin.pop(backend.name, None)
        p.settings.pop(backend.name, None)

    def removed(self, pool: str, name: str, inFile: bool = True) -> None:
        """
        A backend was removed from C{pool}.

        @param inFile: whether the configuration file has it.  Only then is
            the removal remembered: removing what the API added just forgets
            it, so that the file may add a backend of that name later.
        """
        p = self.pool(pool)
        p.added.pop(name, None)
        p.weights.pop(name, None)
        p.admin.pop(name, None)
        p.settings.pop(name, None)
        if inFile:
            p.removed.add(name)

    def weighted(self, pool: str, name: str, weight: int) -> None:
        """
        The weight of a backend of C{pool} was set.
        """
        p = self.pool(pool)
        if name in p.added:
            p.added[name] = attrs.evolve(p.added[name], weight=weight)
        else:
            p.weights[name] = weight

    def configured(self, pool: str, name: str, backup: bool | None,
                   slowStart: float | None) -> None:
        """
        The backup role and/or the slow-start duration of a backend of
        C{pool} was set.
        """
        p = self.pool(pool)
        changes: dict[str, Any] = {}
        if backup is not None:
            changes["backup"] = backup
        if slowStart is not None:
            changes["slowStart"] = slowStart
        if name in p.added:
            p.added[name] = attrs.evolve(p.added[name], **changes)
        else:
            p.settings.setdefault(name, {}).update(
                {("slow-start" if k == "slowStart" else k): v for k, v in changes.items()})

    def administered(self, pool: str, name: str, admin: Admin) -> None:
        """
        The admin state of a backend of C{pool} was set.
        """
        p = self.pool(pool)
        if admin is Admin.READY:
            p.admin.pop(name, None)
        else:
            p.admin[name] = admin

    def forget(self, pool: str, names: set[str]) -> None:
        """
        Drop every override of these backends of C{pool}: the file now says
        something new about them, and the newest word wins.
        """
        p = self.pools.get(pool)
        if p is None:
            return
        for name in names:
            p.removed.discard(name)
            p.added.pop(name, None)
            p.weights.pop(name, None)
            p.admin.pop(name, None)
            p.settings.pop(name, None)

    # -- applying --------------------------------------------------------

    def apply(self, config: Config) -> Config:
        """
        The configuration C{config} with these overrides applied.

        Overrides of pools the configuration does not have are ignored (and
        kept, in case the pool comes back).
        """
        pools = []
        filePools = [pc for pc in config.pools if pc.name not in self.removedPools]
        known = {pc.name for pc in filePools}
        filePools.extend(
            parsePool(name, body, f"state: pools.{name}")
            for name, body in self.addedPools.items() if name not in known)
        for pc in filePools:
            p = self.pools.get(pc.name)
            if p is None or p.empty():
                pools.append(pc)
                continue
            backends = [
                _configured(attrs.evolve(b, weight=p.weights.get(b.name, b.weight)),
                            p.settings.get(b.name))
                for b in pc.backends
                if b.name not in p.removed and b.name not in p.added
            ]
            # Those added at run time, as the pool makes them (its C{tls}):
            # the effective configuration is what runs, so that a reload
            # compares like with like and gives them a changed C{tls}.
            backends.extend(underPool(pc, b) for b in p.added.values())
            pools.append(attrs.evolve(pc, backends=tuple(backends)))
        names = [pc.name for pc in pools]
        listeners = tuple(
            self._routed(listener, names) if listener.name in self.routes else listener
            for listener in config.listeners)
        return attrs.evolve(config, pools=tuple(pools), listeners=listeners)

    def _routed(self, listener: ListenerConfig, pools: Sequence[str]) -> ListenerConfig:
        """
        C{listener} with the routes set for it.  On a listener the file
        gives no routes, its pool is the default route's pool, as beside
        C{routes:} in the file: a request no route matches still goes there.
        """
        routes = parseRoutes(self.routes[listener.name],
                             f"state: listeners.{listener.name}.routes", listener.mode, pools)
        default = listener.defaultRoute
        if routes and default is None and not listener.routes:
            default = Route(name="default", pool=listener.pool)
        return attrs.evolve(listener, routes=routes, defaultRoute=default)

    def summary(self) -> str:
        """
        What these overrides change, counted, for the log: for example
        C{1 backend added, 2 weights set in 1 pool}; C{nothing} if empty.
        """
        pools = [p for p in self.pools.values() if not p.empty()]
        counts = [
            (sum(len(p.added) for p in pools), "backend added", "backends added"),
            (sum(len(p.removed) for p in pools), "backend removed", "backends removed"),
            (sum(len(p.weights) for p in pools), "weight set", "weights set"),
            (sum(len(p.admin) for p in pools), "admin state set", "admin states set"),
            (sum(len(p.settings) for p in pools), "backend configured", "backends configured"),
        ]
        parts = [f"{n} {one if n == 1 else many}" for n, one, many in counts if n]
        if parts:
            parts = [f"{', '.join(parts)} in {len(pools)} pool{'' if len(pools) == 1 else 's'}"]
        parts.extend(f"{n} {one if n == 1 else many}" for n, one, many in (
            (len(self.addedPools), "pool added", "pools added"),
            (len(self.removedPools), "pool removed", "pools removed"),
            (len(self.routes), "route list set", "route lists set")) if n)
        return "; ".join(parts) or "nothing"

    def adminStates(self, pool: str) -> dict[str, Admin]:
        """
        The admin states set in C{pool}, by backend name.
        """
        p = self.pools.get(pool)
        return dict(p.admin) if p is not None else {}

    # -- serialising -----------------------------------------------------

    def toJSON(self) -> dict[str, Any]:
        """
        These overrides as plain JSON data.
        """
        return {
            "version": STATE_VERSION,
            "pools": {
                name: {
                    "removed": sorted(p.removed),
                    "added": [
                        {"name": b.name, "endpoint": b.endpoint, "weight": b.weight,
                         **({"backup": True} if b.backup else {}),
                         **({"slow-start": b.slowStart} if b.slowStart is not None else {})}
                        for b in p.added.values()
                    ],
                    "weights": dict(sorted(p.weights.items())),
                    "admin": {k: v.value for k, v in sorted(p.admin.items())},
                    "settings": {k: dict(sorted(v.items())) for k, v in sorted(p.settings.items())},
                }
                for name, p in sorted(self.pools.items())
                if not p.empty()
            },
            "routes": dict(sorted(self.routes.items())),
            "added-pools": dict(sorted(self.addedPools.items())),
            "removed-pools": sorted(self.removedPools),
        }

    @classmethod
    def fromJSON(cls, data: object, health: Callable[[str], Any] | None = None) -> Overrides:
        """
        Overrides from plain JSON data, as written by L{toJSON}.

        @param health: gives the health-check settings of an added backend
            from its pool's name (the pool's defaults).
        @raise StateError: the data is not valid.
        """
        if not isinstance(data, dict) or data.get("version") not in READABLE_VERSIONS:
            raise StateError(f"expected a state of version {STATE_VERSION}")
        pools = data.get("pools")
        if not isinstance(pools, dict):
            raise StateError("pools: expected a mapping")
        result = cls()
        for name, body in pools.items():
            where = f"pools.{name}"
            if not isinstance(body, dict):
                raise StateError(f"{where}: expected a mapping")
            p = result.pool(name)
            removed = body.get("removed", [])
            if not isinstance(removed, list) or not all(isinstance(r, str) for r in removed):
                raise StateError(f"{where}.removed: expected a list of names")
            p.removed = set(removed)
            added = body.get("added", [])
            if not isinstance(added, list):
                raise StateError(f"{where}.added: expected a list")
            for i, item in enumerate(added):
                try:
                    b = parseBackend(item, f"{where}.added[{i}]", _healthOf(health, name))
                except ConfigError as e:
                    raise StateError(str(e)) from e
                p.added[b.name] = b
            weights = body.get("weights", {})
            if not isinstance(weights, dict) or not all(
                isinstance(w, int) and not isinstance(w, bool) and 0 <= w <= 256
                for w in weights.values()
            ):
                raise StateError(f"{where}.weights: expected weights 0-256 by name")
            p.weights = dict(weights)
            admin = body.get("admin", {})
            try:
                p.admin = {k: Admin(v) for k, v in dict(admin).items()}
            except (ValueError, TypeError) as e:
                raise StateError(f"{where}.admin: expected ready, drain or maint") from e
            settings = body.get("settings", {})
            if not isinstance(settings, dict):
                raise StateError(f"{where}.settings: expected a mapping")
            for backendName, given in settings.items():
                at = f"{where}.settings.{backendName}"
                if not isinstance(given, dict) or set(given) - {"backup", "slow-start"}:
                    raise StateError(f"{at}: expected backup and/or slow-start")
                if "backup" in given and not isinstance(given["backup"], bool):
                    raise StateError(f"{at}.backup: expected true or false")
                slow = given.get("slow-start", 0)
                if isinstance(slow, bool) or not isinstance(slow, (int, float)) or not (
                    0 <= slow <= 3600
                ):
                    raise StateError(f"{at}.slow-start: expected seconds 0-3600")
                p.settings[backendName] = dict(given)
        routes = data.get("routes", {})
        if not isinstance(routes, dict) or not all(isinstance(r, list) for r in routes.values()):
            raise StateError("routes: expected route lists by listener name")
        result.routes = dict(routes)
        added = data.get("added-pools", {})
        if not isinstance(added, dict) or not all(isinstance(b, dict) for b in added.values()):
            raise StateError("added-pools: expected pools by name")
        result.addedPools = dict(added)
        removed = data.get("removed-pools", [])
        if not isinstance(removed, list) or not all(isinstance(r, str) for r in removed):
            raise StateError("removed-pools: expected a list of names")
        result.removedPools = set(removed)
        return result


def _configured(backend: BackendConfig, settings: dict[str, Any] | None) -> BackendConfig:
    """
    C{backend} with the backup role and slow-start duration set at run time.
    """
    if not settings:
        return backend
    changes: dict[str, Any] = {}
    if "backup" in settings:
        changes["backup"] = settings["backup"]
    if "slow-start" in settings:
        changes["slowStart"] = float(settings["slow-start"])
    return attrs.evolve(backend, **changes)


def _healthOf(health: Callable[[str], Any] | None, pool: str) -> Any:
    from .config import HealthCheck

    return health(pool) if health is not None else HealthCheck()


def defaultStatePath(
    configPath: str | None, cwd: str | None = None, listeners: Sequence[str] = (),
    prefix: str = "lbtwist",
) -> str:
    """
    Where the state file goes when none is given, so that two balancers in
    one directory never share one: next to the configuration file and named
    after it (C{lb.yaml} gives C{lb.state.json}); with no configuration
    file, in the working directory and named C{prefix} and the first
    listener (C{tcp:8080} gives C{lbtwist-tcp-8080.state.json}).
    """
    if configPath:
        configPath = os.path.abspath(configPath)
        stem = os.path.splitext(os.path.basename(configPath))[0] or "lbtwist"
        return os.path.join(os.path.dirname(configPath), stem + STATE_SUFFIX)
    name = prefix
    if listeners:
        name += "-" + parseEndpoint(listeners[0], True).slug
    return os.path.join(cwd if cwd is not None else os.getcwd(), name + STATE_SUFFIX)


def demoStatePath(listeners: Sequence[str], demoListen: str, cwd: str | None = None) -> str:
    """
    The demo's state file, in the working directory: C{lbtwist-demo.state.json}
    when it listens where the demo listens by default (C{demoListen}), else
    named after its first listener as a command-line balancer's is
    (C{tcp:8081} gives C{lbtwist-demo-tcp-8081.state.json}), so that two
    demos in one checkout keep their changes apart.
    """
    if not listeners or listeners[0] == demoListen:
        return os.path.join(cwd if cwd is not None else os.getcwd(), DEMO_STATE_NAME)
    return defaultStatePath(None, cwd, listeners, prefix="lbtwist-demo")


def legacyStatePath(path: str) -> str:
    """
    The file an older lbtwist kept the state in, for a default state file
    at C{path}: C{lbtwist-state.json} in the same directory.
    """
    return os.path.join(os.path.dirname(os.path.abspath(path)), LEGACY_STATE_NAME)


class StateFile:
    """
    The file the overrides are saved in, atomically.

    @ivar path: the file's path.
    @ivar replace: renames a file over another (injected so tests can crash
        a save half-way).
    @ivar legacy: a file read instead of C{path} while C{path} does not
        exist (the old default name), or L{None}.  Saving always writes
        C{path}.
    @ivar loadedFrom: the file the last L{load} read, or L{None} if there
        was none.
    """

    def __init__(self, path: str, replace: Callable[[str, str], None] = os.replace,
                 legacy: str | None = None) -> None:
        self.path = path
        self.replace = replace
        self.legacy = legacy
        self.loadedFrom: str | None = None

    def load(self, health: Callable[[str], Any] | None = None) -> Overrides:
        """
        Read the saved overrides; none if there is no file yet.

        When C{path} does not exist but the legacy file does, the legacy
        file is read; L{loadedFrom} says which file was.

        @raise StateError: the file cannot be read or is not valid.
        """
        self.loadedFrom = None
        for path in (self.path, self.legacy):
            if path is None:
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            except OSError as e:
                raise StateError(f"cannot read state file {path!r}: {e.strerror}") from e
            self.loadedFrom = path
            try:
                data = json.loads(text)
            except ValueError as e:
                raise StateError(f"state file {path!r} is not valid JSON: {e}") from e
            try:
                return Overrides.fromJSON(data, health)
            except StateError as e:
                raise StateError(f"state file {path!r}: {e}") from e
        return Overrides()

    def checkWritable(self) -> None:
        """
        Make sure the state could be saved, so that a bad path is found at
        start, not at the first change made through the API.

        @raise StateError: its directory is missing or not writable.
        """
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StateError(f"cannot save the state in {directory!r}: no such directory")
        if not os.access(directory, os.W_OK | os.X_OK):
            raise StateError(f"cannot save the state in {directory!r}: not writable")

    def save(self, overrides: Overrides) -> None:
        """
        Write C{overrides} atomically: temporary file, fsync, rename, fsync
        of the directory.

        @raise OSError: it could not be saved; the old state is intact.
        """
        data = json.dumps(overrides.toJSON(), indent=2, sort_keys=True).encode() + b"\n"
        writeAtomically(self.path, data, self.replace)


def writeAtomically(path: str, data: bytes,
                    replace: Callable[[str, str], None] = os.replace) -> None:
    """
    Write C{data} to C{path} so that a crash leaves the old content or the
    new, never a mix: temporary file, fsync, rename, fsync of the directory.

    @raise OSError: it could not be written; the old file is intact.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(prefix=".lbtwist-state.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    dirfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dirfd)
    finally:
        os.close(dirfd)
