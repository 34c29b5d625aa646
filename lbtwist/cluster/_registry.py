"""
The registry several balancers share, kept in etcd, and each balancer's
copy of it kept in step.

Layout under the prefix (say C{/lbtwist/prod}):

    /lbtwist/prod/pools/POOL/backends/NAME   one backend, JSON:
        {"endpoint", "weight", "state", "backup"?, "slow-start"?, "maxconn"?,
         "health"? (only what differs from its pool's)}
    /lbtwist/prod/pools/POOL                 a pool created at run time: its
        settings in the configuration's shape, without "backends" (each
        backend is a key of its own under it)
    /lbtwist/prod/removed-pools/POOL         a pool of the file removed at
        run time: {}
    /lbtwist/prod/routes/LISTENER            a listener's route list set at
        run time, in the configuration's shape (what GET
        /api/listeners/LISTENER/routes gives)
    /lbtwist/prod/instances/NAME             one live balancer (on a lease):
        {"name", "address", "version", "revision", "since"}

One key per backend, because a backend is what the admin API changes most
at run time: a write is one key's transaction, conditioned on that key's
C{mod_revision}, so two writers of one backend conflict and two writers of
different backends never do.  A file pool's own settings (policy, health
check, timeouts) and its listeners stay in the YAML file.  A file pool
removed at run time gets a key of its own under C{removed-pools/}: every
balancer's file still lists it, so deleting its backends' keys alone would
leave an empty pool on each, and a key under C{pools/} would make the store
the source of a file pool's settings.  A route list is conditioned on its
key and on each pool it sends to (a run-time pool's key unchanged, a file
pool's removal absent); a pool's removal on every route list of the
balancer's listeners: a route and a removal made at once conflict, so the
store never holds a route to a pool that is gone.  The YAML's backends seed
the store once, when C{pools/} under the prefix is empty (one transaction
that compares the whole range, so two balancers starting together seed
once).

Each balancer lists the keys from C{pools/} through C{routes/} (not
C{instances/}, which heartbeats change) at revision R, applies it, watches
from R+1, and applies each revision's events as one unit, in order, through
L{lbtwist.reload.LiveConfig.reconcile}: the same path a reload and the
state file take to add, remove, re-weight and set the admin state of
backends, start and drain pools, and give listeners their routes.  The
registry and its revision are saved to a snapshot file (atomically) after
each revision; a balancer that starts while etcd is
unreachable starts from it, and one that loses etcd keeps what it has,
reconnecting with back-off and jitter and resuming from its revision (a
compacted revision means a new listing).

Health, connection counts, queues and rate counters stay local: each
balancer probes its backends itself, and none of it is written to etcd.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import time
from collections.abc import Callable, Collection, Iterable
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger

from ..config import (
    BackendConfig,
    Config,
    ConfigError,
    HealthCheck,
    PoolConfig,
    parseBackend,
    parsePool,
    parseRoutes,
)
from ..pool import Admin
from ..reload import LiveConfig
from ..state import Overrides, writeAtomically
from ..wording import counted
from ._etcd import (
    Compacted,
    EtcdClient,
    EtcdError,
    Event,
    KeyValue,
    WatchStream,
    deleteOperation,
    encode,
    modRevisionIs,
    prefixEnd,
    putOperation,
)

SNAPSHOT_VERSION = 1
# The registry's keys other than backends, by their first path segment.
KINDS = {"pools": "pool", "removed-pools": "removed", "routes": "routes"}
INSTANCE_TTL = 10
WRITE_TIMEOUT = 5.0


class Conflict(Exception):
    """
    A write lost: the key changed (or appeared) since this balancer read it.
    """


class StoreUnavailable(Exception):
    """
    etcd cannot be reached now: nothing was written.
    """


@attrs.frozen
class BackendEntry:
    """
    One backend as the registry holds it.

    @ivar modRevision: the store revision that last changed its key.
    """

    pool: str
    config: BackendConfig
    admin: Admin
    modRevision: int


def healthValue(check: HealthCheck, base: HealthCheck) -> dict[str, Any]:
    """
    The settings of C{check} that differ from C{base} (its pool's), in the
    configuration's words, so that L{parseHealth} on C{base} gives C{check}
    back.
    """
    value: dict[str, Any] = {}
    for field, key in (("interval", "interval"), ("timeout", "timeout"), ("rise", "rise"),
                       ("fall", "fall"), ("kind", "type"), ("method", "method"),
                       ("path", "path"), ("host", "host"), ("expectBody", "expect-body")):
        if getattr(check, field) != getattr(base, field):
            value[key] = getattr(check, field)
    if check.expectBodyRegex != base.expectBodyRegex and check.expectBodyRegex is not None:
        value["expect-body-regex"] = check.expectBodyRegex.pattern.decode("utf-8")
    if check.expectHeaders != base.expectHeaders:
        value["expect-header"] = dict(check.expectHeaders)
    if check.expectStatus != base.expectStatus:
        value["expect-status"] = ",".join(
            str(low) if low == high else f"{low}-{high}" for low, high in check.expectStatus)
    return value


def backendValue(config: BackendConfig, admin: Admin,
                 poolHealth: HealthCheck | None = None) -> dict[str, Any]:
    """
    A backend's JSON value in the store (its health check only where it
    differs from C{poolHealth}, its pool's).
    """
    value: dict[str, Any] = {"endpoint": config.endpoint, "weight": config.weight,
                             "state": admin.value}
    health = healthValue(config.health, poolHealth or config.health)
    if health:
        value["health"] = health
    if config.backup:
        value["backup"] = True
    if config.slowStart is not None:
        value["slow-start"] = config.slowStart
    if config.maxconn:
        value["maxconn"] = config.maxconn
    return value


@attrs.frozen
class PoolEntry:
    """
    A pool created at run time, as the registry holds it.

    @ivar data: its settings in the configuration's shape, without its
        backends (they are keys of their own).
    """

    config: PoolConfig
    data: dict[str, Any]
    modRevision: int


class Registry:
    """
    The backends of every pool, the pools created and removed at run time
    and the route lists set at run time, as the store holds them at
    C{revision}.

    Pure: it parses keys and values and yields the overrides to apply; it
    does no I/O.  A malformed key or value is logged with its key and
    skipped (the entry it would have replaced stays).

    @ivar backends: by C{(pool, name)}.
    @ivar pools: the pools created at run time, by name.
    @ivar removedPools: the file's pools removed at run time, by name, with
        their key's mod revision.
    @ivar routes: route lists (in the configuration's shape), by listener.
    @ivar values: every key's raw JSON value and mod revision (for the
        snapshot and for the revision a write is conditioned on).
    """

    log = Logger()

    def __init__(self, prefix: str, health: Callable[[str], HealthCheck]) -> None:
        self.prefix = prefix
        self.fileHealth = health
        self.revision = 0
        self.backends: dict[tuple[str, str], BackendEntry] = {}
        self.pools: dict[str, PoolEntry] = {}
        self.removedPools: dict[str, int] = {}
        self.routes: dict[str, list[Any]] = {}
        self.values: dict[str, tuple[Any, int]] = {}
        self._warned: set[tuple[str, int]] = set()

    def health(self, pool: str) -> HealthCheck:
        """
        The health check of pool C{pool}'s backends: a run-time pool's, or
        the file's.
        """
        entry = self.pools.get(pool)
        return entry.config.health if entry is not None else self.fileHealth(pool)

    def key(self, pool: str, name: str) -> str:
        """
        The key of backend C{name} of C{pool}.
        """
        return f"{self.prefix}/pools/{pool}/backends/{name}"

    def poolKey(self, pool: str) -> str:
        """
        The key of a pool created at run time.
        """
        return f"{self.prefix}/pools/{pool}"

    def removedKey(self, pool: str) -> str:
        """
        The key saying a pool of the file was removed at run time.
        """
        return f"{self.prefix}/removed-pools/{pool}"

    def routesKey(self, listener: str) -> str:
        """
        The key of a listener's route list.
        """
        return f"{self.prefix}/routes/{listener}"

    def modRevision(self, key: str) -> int:
        """
        The revision that last changed C{key}, as this registry knows it (0:
        it does not exist).
        """
        found = self.values.get(key)
        return found[1] if found is not None else 0

    def load(self, revision: int, kvs: Iterable[KeyValue]) -> None:
        """
        Replace everything with a listing made at C{revision}.
        """
        self._clear()
        for kv in kvs:
            self._put(kv.key, kv.value, kv.modRevision)
        self.revision = revision

    def _clear(self) -> None:
        self.backends.clear()
        self.pools.clear()
        self.removedPools.clear()
        self.routes.clear()
        self.values.clear()

    def apply(self, revision: int, events: Iterable[Event]) -> None:
        """
        Apply one revision's events.
        """
        for e in events:
            if e.type == "DELETE":
                self._delete(e.kv.key)
            else:
                self._put(e.kv.key, e.kv.value, e.kv.modRevision)
        self.revision = max(self.revision, revision)

    def _delete(self, key: str) -> None:
        self.values.pop(key, None)
        where = self._parseKey(key)
        if where is None:
            return
        kind, name, backend = where
        if kind == "backend":
            self.backends.pop((name, backend), None)
        elif kind == "pool":
            self.pools.pop(name, None)
            self._reparseBackends(name)
        elif kind == "removed":
            self.removedPools.pop(name, None)
        else:
            self.routes.pop(name, None)

    def _parseKey(self, key: str) -> tuple[str, str, str] | None:
        """
        What a key is: C{("backend", pool, name)}, C{("pool", name, "")},
        C{("removed", pool, "")} or C{("routes", listener, "")}; L{None}
        if none.
        """
        if not key.startswith(self.prefix + "/"):
            return None
        rest = key[len(self.prefix) + 1:].split("/")
        if not all(rest):
            return None
        if len(rest) == 4 and rest[0] == "pools" and rest[2] == "backends":
            return "backend", rest[1], rest[3]
        if len(rest) == 2 and rest[0] in KINDS:
            return KINDS[rest[0]], rest[1], ""
        return None

    def _put(self, key: str, raw: bytes, modRevision: int) -> None:
        if self._parseKey(key) is None:
            self.log.warn("cluster registry: ignoring key {key}: not pools/POOL, "
                          "pools/POOL/backends/NAME, removed-pools/POOL or routes/LISTENER",
                          key=key)
            return
        try:
            value = json.loads(raw)
        except ValueError:
            self.log.warn("cluster registry: skipping {key}: its value is not JSON", key=key)
            return
        self._set(key, value, modRevision)

    def _set(self, key: str, value: Any, modRevision: int) -> None:
        where = self._parseKey(key)
        if where is None:
            return
        kind, name, backend = where
        try:
            if kind == "backend":
                self.backends[name, backend] = self._backend(key, name, backend, value,
                                                             modRevision)
            elif kind == "routes":
                if not isinstance(value, list):
                    raise ConfigError(key, "expected a JSON list of routes")
                self.routes[name] = value
            elif kind == "removed":
                if not isinstance(value, dict):
                    raise ConfigError(key, "expected a JSON object")
                self.removedPools[name] = modRevision
            else:
                if isinstance(value, dict) and "backends" in value:
                    raise ConfigError(f"{key}.backends", "the backends of a pool are keys "
                                      "of their own (pools/POOL/backends/NAME)")
                config = parsePool(name, value, key)
                self.pools[name] = PoolEntry(config, value, modRevision)
        except ConfigError as e:
            self.log.warn("cluster registry: skipping {key}: {error}", key=key, error=str(e))
            return
        self.values[key] = (value, modRevision)
        if kind == "pool":
            self._reparseBackends(name)

    def _backend(self, key: str, pool: str, name: str, value: Any,
                 modRevision: int) -> BackendEntry:
        if not isinstance(value, dict):
            raise ConfigError(key, "expected a JSON object")
        fields = dict(value)
        try:
            admin = Admin(fields.pop("state", "ready"))
        except ValueError:
            raise ConfigError(f"{key}.state", "expected ready, drain or maint") from None
        config = parseBackend({**fields, "name": name}, key, self.health(pool))
        return BackendEntry(pool, config, admin, modRevision)

    def _reparseBackends(self, pool: str) -> None:
        """
        Parse the backends of C{pool} again: their health check follows
        their pool's, which was just created or removed.
        """
        for (p, name), entry in list(self.backends.items()):
            if p == pool:
                key = self.key(p, name)
                self._set(key, self.values[key][0], entry.modRevision)

    def warnOnce(self, key: str, error: str) -> None:
        """
        Log a value that cannot be applied once per revision of its key,
        not at each revision of the registry.
        """
        seen = (key, self.modRevision(key))
        if seen not in self._warned:
            self._warned.add(seen)
            self.log.warn("cluster registry: skipping {key}: {error}", key=key, error=error)

    def overrides(self, config: Config, keep: Collection[str] = ()) -> Overrides:
        """
        The registry as overrides on top of the file's configuration
        C{config}: every file backend not in the registry removed, every
        registry backend added with its admin state; the pools created and
        removed at run time; the route lists set.  Backends of a pool that
        is neither the file's nor created are ignored; a route list that
        is not valid for its listener (it names a pool that is not there,
        say) is logged with its key and skipped.

        @param keep: pools of the file whose removal is not applied.
        """
        result = Overrides()
        filePools = {p.name: p for p in config.pools}
        for name, entry in self.pools.items():
            if name not in filePools or name in self.removedPools:
                result.addedPools[name] = entry.data
        result.removedPools = {n for n in self.removedPools
                               if n in filePools and n not in keep}
        available = [n for n in filePools if n not in result.removedPools]
        available.extend(result.addedPools)
        for pool in available:
            o = result.pool(pool)
            mine = {name: e for (p, name), e in self.backends.items() if p == pool}
            fileBackends = filePools[pool].backends if pool not in result.addedPools else ()
            o.removed = {b.name for b in fileBackends if b.name not in mine}
            for name in sorted(mine):
                o.added[name] = mine[name].config
                if mine[name].admin is not Admin.READY:
                    o.admin[name] = mine[name].admin
        for listener in config.listeners:
            data = self.routes.get(listener.name)
            if data is None:
                continue
            key = self.routesKey(listener.name)
            try:
                parseRoutes(data, key, listener.mode, available)
            except ConfigError as e:
                self.warnOnce(key, str(e))
                continue
            result.routes[listener.name] = data
        return result

    def toJSON(self) -> dict[str, Any]:
        """
        The snapshot's content: the prefix, the revision, every key.
        """
        return {"version": SNAPSHOT_VERSION, "prefix": self.prefix, "revision": self.revision,
                "keys": {k: {"value": v, "mod": m} for k, (v, m) in sorted(self.values.items())}}

    def loadJSON(self, data: Any) -> None:
        """
        Load a snapshot written by L{toJSON}.

        @raise ValueError: it is not one, or is another prefix's.
        """
        if not isinstance(data, dict) or data.get("version") != SNAPSHOT_VERSION:
            raise ValueError(f"expected a snapshot of version {SNAPSHOT_VERSION}")
        if data.get("prefix") != self.prefix:
            raise ValueError(f"it is the snapshot of prefix {data.get('prefix')!r}, "
                             f"not {self.prefix!r}")
        self._clear()
        # Sorted, so that a pool comes before its backends.
        for key, item in sorted(dict(data.get("keys", {})).items()):
            if isinstance(item, dict):
                self._set(key, item.get("value"), int(item.get("mod", 0)))
        self.revision = int(data.get("revision", 0))


def applyRegistry(live: LiveConfig, registry: Registry) -> int:
    """
    Make the live pools and routes what the registry says, through the
    reload path.  A removal of a file pool that something still sends to
    (a listener of the file, say: the store was changed by hand) is logged
    and not applied.

    @return: how many pools changed.
    """
    overrides = registry.overrides(live.fileConfig)
    effective = overrides.apply(live.fileConfig)
    inUse = []
    for name in sorted(overrides.removedPools):
        users = live.poolUsers(name, effective)
        if users:
            registry.warnOnce(registry.removedKey(name),
                              f"pool {name!r} is in use ({', '.join(users)})")
            inUse.append(name)
    if inUse:
        overrides = registry.overrides(live.fileConfig, keep=inUse)
    live.overrides = overrides
    return live.reconcile()


def seedValues(live: LiveConfig, prefix: str) -> dict[str, dict[str, Any]]:
    """
    The keys that seed an empty store: the balancer's effective backends
    now (the file's, with what its state file changed), with their admin
    states.
    """
    values = {}
    for pc in live.config.pools:
        admin = live.overrides.adminStates(pc.name)
        for b in pc.backends:
            if not b.discovered:
                values[f"{prefix}/pools/{pc.name}/backends/{b.name}"] = backendValue(
                    b, admin.get(b.name, Admin.READY), pc.health)
    return values


class SnapshotFile:
    """
    The local copy of the registry and its revision, saved atomically.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def load(self, registry: Registry) -> bool:
        """
        Load the snapshot into C{registry}.

        @return: whether there was one.
        @raise ValueError: there is one, but it cannot be used.
        """
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return False
        except (OSError, ValueError) as e:
            raise ValueError(f"cluster snapshot {self.path!r} cannot be read: {e}") from e
        registry.loadJSON(data)
        return True

    def save(self, registry: Registry) -> None:
        """
        Save C{registry} (atomically).
        """
        writeAtomically(self.path, json.dumps(registry.toJSON(), sort_keys=True).encode())


@attrs.frozen
class Identity:
    """
    What this balancer says of itself under C{instances/}.
    """

    name: str
    address: str
    version: str


def defaultName() -> str:
    """
    An instance name unique on this host: the host name and process ID.
    """
    return f"{socket.gethostname()}-{os.getpid()}"


def fullJitter(rng: random.Random, attempt: int, base: float = 0.2,
               cap: float = 5.0) -> float:
    """
    Seconds to wait before reconnect C{attempt} (from 0): exponential,
    capped, with full jitter so that many balancers do not reconnect in
    step.
    """
    return float(rng.uniform(0, min(cap, base * 2 ** attempt)))


class RegistrySync(Service):
    """
    Keeps this balancer's pools in step with the registry in etcd, writes
    the admin API's changes there, and registers this balancer.

    @ivar connected: whether the watch is running now.
    @ivar since: when C{connected} last changed (the clock's seconds).
    @ivar lastError: why the store is unreachable, when it is.
    """

    log = Logger()

    def __init__(self, client: EtcdClient, prefix: str, live: LiveConfig, clock: Any,
                 snapshot: SnapshotFile, identity: Identity, *,
                 rng: random.Random | None = None,
                 fatal: Callable[[str], None] | None = None,
                 instanceTTL: int = INSTANCE_TTL) -> None:
        self.client = client
        self.prefix = prefix
        self.live = live
        self.clock = clock
        self.snapshot = snapshot
        self.identity = identity
        self.rng = rng or random.Random()
        self.fatal = fatal
        self.instanceTTL = instanceTTL
        health = {p.name: p.health for p in live.fileConfig.pools}
        self.registry = Registry(prefix, lambda pool: health.get(pool, HealthCheck()))
        self.connected = False
        self.since = clock.seconds()
        self.lastError: str | None = None
        self.haveRegistry = False
        self.relists = 0
        self._waiters: list[tuple[int, Deferred[None]]] = []
        self._watch: WatchStream | None = None
        self._pause: Deferred[None] | None = None
        self._loop: Deferred[None] | None = None
        self._lease = 0
        self._registering: Deferred[None] | None = None
        self._watchLost = "the watch ended"
        self._saving: Any = None
        self._heartbeat = LoopingCall(self._beat)
        self._heartbeat.clock = clock
        self.setName("cluster")

    # -- lifecycle ---------------------------------------------------------

    def startService(self) -> None:
        """
        Apply the snapshot, if there is one, then connect in the background.
        """
        super().startService()
        try:
            self.haveRegistry = self.snapshot.load(self.registry)
        except ValueError as e:
            self.log.error("{error}; it is ignored", error=str(e))
        if self.haveRegistry:
            applyRegistry(self.live, self.registry)
            self.log.info("cluster: started from the snapshot {path} at revision {revision}",
                          path=self.snapshot.path, revision=self.registry.revision)
        # A reload reads the file's pools; the backends stay the registry's.
        self.live.afterReload.append(self._reapply)
        self._loop = Deferred.fromCoroutine(self._run())
        self._loop.addErrback(lambda f: self.log.failure("cluster sync stopped", f))
        self._heartbeat.start(max(1.0, self.instanceTTL / 3), now=False)

    def _reapply(self) -> None:
        if self.haveRegistry:
            applyRegistry(self.live, self.registry)

    def stopService(self) -> Deferred[None]:
        """
        Stop watching, drop the registration, close the connections.
        """
        super().stopService()
        if self._reapply in self.live.afterReload:
            self.live.afterReload.remove(self._reapply)
        if self._heartbeat.running:
            self._heartbeat.stop()
        if self._watch is not None:
            self._watch.cancel()
        if self._pause is not None:
            self._pause.cancel()
        for _, d in self._waiters:
            d.cancel()

        async def stop() -> None:
            for pending in (self._loop, self._registering):
                if pending is not None and not pending.called:
                    pending.addTimeout(2.0, self.clock)
                    try:
                        await pending
                    except Exception:
                        pass
            if self._lease and self.connected:
                revoked = self.client.revokeLease(self._lease)
                revoked.addTimeout(1.0, self.clock)
                try:
                    await revoked
                except Exception:
                    pass
            self.connected = False
            if self._saving is not None:
                self._saving.cancel()
                self._save()
            await self.client.close()

        return Deferred.fromCoroutine(stop())

    # -- the sync loop -----------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        relist = not self.haveRegistry
        while self.running:
            try:
                if relist:
                    await self._list()
                    relist = False
                await self._follow()
                attempt = 0
            except Compacted as e:
                self.relists += 1
                self.log.warn(
                    "cluster: revision {revision} was compacted (the store keeps {compact} "
                    "and later); listing the registry again",
                    revision=self.registry.revision + 1, compact=e.compactRevision)
                relist = True
            except (EtcdError, CancelledError) as e:
                if not self.running:
                    return
                if not self.haveRegistry and self.fatal is not None:
                    self.fatal(f"lbtwist: cannot reach etcd at {', '.join(self.client.urls)} "
                               f"and there is no snapshot ({self.snapshot.path}) to start from: "
                               f"{e}")
                    return
                self._setConnected(False, str(e))
                delay = fullJitter(self.rng, attempt)
                attempt += 1
                self._pause = deferLater(self.clock, delay, lambda: None)
                try:
                    await self._pause
                except CancelledError:
                    return
                finally:
                    self._pause = None

    async def _list(self) -> None:
        """
        List the registry (seeding it first if it is empty) and apply it.
        """
        root = self.prefix + "/pools/"
        listing = await self.client.range(root, through=self.prefix + "/routes/")
        if not any(kv.key.startswith(root) for kv in listing.kvs):
            # Seeded by this balancer or, if it lost the race, by another:
            # either way the store has the registry now.
            await self._seed(root)
            listing = await self.client.range(root, through=self.prefix + "/routes/")
        self.registry.load(listing.revision, listing.kvs)
        self.haveRegistry = True
        self._applied()
        self.log.info("cluster: registry listed at revision {revision}: {backendCount}, "
                      "{poolCount} created, {removed} removed, {routeCount}",
                      backendCount=counted(len(self.registry.backends), "backend"),
                      poolCount=counted(len(self.registry.pools), "pool"),
                      routeCount=counted(len(self.registry.routes), "route list"),
                      revision=listing.revision, count=len(self.registry.backends),
                      pools=len(self.registry.pools), removed=len(self.registry.removedPools),
                      routes=len(self.registry.routes))

    async def _seed(self, root: str) -> bool:
        values = seedValues(self.live, self.prefix)
        # Compared over the whole range: true only while no key exists in
        # it, so of two balancers starting together one seeds.
        compare = {"key": encode(root), "range_end": prefixEnd(root), "target": "CREATE",
                   "result": "EQUAL", "create_revision": "0"}
        result = await self.client.txn(
            [compare], [putOperation(k, json.dumps(v).encode()) for k, v in values.items()])
        if result.succeeded:
            self.log.info("cluster: seeded the empty registry under {prefix} with {count} "
                          "backends from the configuration", prefix=self.prefix,
                          count=len(values))
        return result.succeeded

    async def _follow(self) -> None:
        """
        Watch from the revision after the registry's until the watch ends.
        """
        # From pools/ through routes/: the registry, but not instances/,
        # which every balancer's heartbeat changes every few seconds.
        stream = await self.client.watch(self.prefix + "/pools/", self.registry.revision + 1,
                                         self._revision, through=self.prefix + "/routes/")
        self._watch = stream
        self._setConnected(True)
        try:
            await stream.done
        finally:
            self._watch = None
        if self.running:
            why, self._watchLost = self._watchLost, "the watch ended"
            raise EtcdError(why)

    def _revision(self, revision: int, events: list[Event]) -> None:
        if revision <= self.registry.revision:
            return
        self.registry.apply(revision, events)
        self._applied()

    def _applied(self) -> None:
        """
        Apply the registry to the live pools, save the snapshot, and answer
        the writers waiting for this revision.
        """
        applyRegistry(self.live, self.registry)
        # Saved once per reactor turn: the revisions of one watch response
        # cost one write (and fsync), not one each.
        if self._saving is None:
            self._saving = self.clock.callLater(0, self._save)
        waiting, self._waiters = self._waiters, []
        for revision, d in waiting:
            if revision <= self.registry.revision:
                d.callback(None)
            else:
                self._waiters.append((revision, d))

    def _save(self) -> None:
        """
        Save the registry and its revision to the snapshot file.
        """
        self._saving = None
        try:
            self.snapshot.save(self.registry)
        except OSError as e:
            self.log.error("cluster: cannot save the snapshot {path}: {error}",
                           path=self.snapshot.path, error=str(e))

    def _setConnected(self, connected: bool, why: str | None = None) -> None:
        self.lastError = None if connected else why
        if connected == self.connected:
            return
        self.connected = connected
        self.since = self.clock.seconds()
        if connected:
            self.log.info("cluster: watching the registry from revision {revision}",
                          revision=self.registry.revision + 1)
            self._beat()
        else:
            self.log.warn("cluster: etcd unreachable ({error}); serving the registry of "
                          "revision {revision} and reconnecting", error=why,
                          revision=self.registry.revision)

    # -- writes ------------------------------------------------------------

    def waitFor(self, revision: int) -> Deferred[None]:
        """
        Fires once this balancer has applied C{revision}.
        """
        d: Deferred[None] = Deferred()
        if revision <= self.registry.revision:
            d.callback(None)
        else:
            self._waiters.append((revision, d))
        return d

    def _checkConnected(self) -> None:
        if not self.connected:
            since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.since))
            raise StoreUnavailable(
                f"the cluster store (etcd at {', '.join(self.client.urls)}) is unreachable "
                f"since {since} ({self.lastError}); nothing was changed")

    async def _write(self, key: str, modRevision: int, operation: dict[str, Any],
                     also: Iterable[tuple[str, int]] = (),
                     more: Iterable[dict[str, Any]] = ()) -> None:
        """
        Write C{operation} (and C{more}) in one transaction conditioned on
        C{key} (and each key of C{also}) last changed at the revision given
        (0: it does not exist); fires once this balancer has applied it.
        """
        self._checkConnected()
        also = list(also)
        compares = [modRevisionIs(k, r) for k, r in [(key, modRevision), *also]]
        try:
            result = await self.client.txn(compares, [operation, *more])
        except EtcdError as e:
            raise StoreUnavailable(f"the cluster store refused or missed the write: {e}; it "
                                   "may or may not have been made") from e
        revision = result.revision
        if not result.succeeded:
            made = await self._alreadyMade(key, modRevision, operation, also)
            if made is None:
                raise Conflict(
                    f"{key} was added by another change meanwhile" if modRevision == 0 else
                    f"{key} changed since revision {modRevision} (another change came "
                    "first); read it again" + (
                        "" if not also else
                        f"; or one of {', '.join(k for k, _ in also)} changed"))
            revision = made
        applied = self.waitFor(revision)
        applied.addTimeout(WRITE_TIMEOUT, self.clock)
        await applied

    async def _alreadyMade(self, key: str, modRevision: int, operation: dict[str, Any],
                           also: list[tuple[str, int]]) -> int | None:
        """
        Whether a put whose comparison failed finds the key already holding
        its value since C{modRevision}: the client may have sent it to a
        member that made it but whose answer was lost, then again to
        another.  The state asked for holds, so the write is a success.

        @return: the revision that made it, or L{None}.
        """
        put = operation.get("request_put")
        if put is None or also:
            return None
        try:
            found = await self.client.range(key)
        except EtcdError:
            return None
        if found.kvs and found.kvs[0].modRevision > modRevision and (
                found.kvs[0].value == base64.b64decode(put["value"])):
            return found.kvs[0].modRevision
        return None

    def entry(self, pool: str, name: str) -> BackendEntry | None:
        """
        The registry's entry of a backend, or L{None}.
        """
        return self.registry.backends.get((pool, name))

    def addBackend(self, pool: str, config: BackendConfig, admin: Admin) -> Deferred[None]:
        """
        Add a backend to the store (it must not exist); fires once applied
        here.

        @raise Conflict: it exists.
        @raise StoreUnavailable: etcd cannot be reached.
        """
        if self.entry(pool, config.name) is not None:
            return Deferred.fromCoroutine(self._refuse(
                f"pool {pool!r} already has a backend {config.name!r}"))
        key = self.registry.key(pool, config.name)
        value = json.dumps(backendValue(config, admin, self.registry.health(pool))).encode()
        return Deferred.fromCoroutine(self._write(key, 0, putOperation(key, value)))

    def changeBackend(self, pool: str, name: str, weight: int | None = None,
                      admin: Admin | None = None, backup: bool | None = None,
                      slowStart: float | None = None) -> Deferred[None]:
        """
        Change a backend's weight, admin state, backup role and slow start
        in one write conditioned on the revision this balancer knows.
        """
        entry = self.entry(pool, name)
        if entry is None:
            return Deferred.fromCoroutine(self._missing(pool, name))
        changes: dict[str, Any] = {}
        if weight is not None:
            changes["weight"] = weight
        if backup is not None:
            changes["backup"] = backup
        if slowStart is not None:
            changes["slowStart"] = slowStart
        config = attrs.evolve(entry.config, **changes)
        key = self.registry.key(pool, name)
        value = json.dumps(backendValue(config, admin or entry.admin,
                                        self.registry.health(pool))).encode()
        return Deferred.fromCoroutine(self._write(key, entry.modRevision,
                                                  putOperation(key, value)))

    def removeBackend(self, pool: str, name: str) -> Deferred[None]:
        """
        Remove a backend from the store, conditioned on the revision this
        balancer knows.
        """
        entry = self.entry(pool, name)
        if entry is None:
            return Deferred.fromCoroutine(self._missing(pool, name))
        key = self.registry.key(pool, name)
        return Deferred.fromCoroutine(self._write(key, entry.modRevision,
                                                  deleteOperation(key)))

    def _poolStands(self, pool: str) -> list[tuple[str, int]]:
        """
        The comparisons that hold while C{pool} stays as this balancer
        knows it: a run-time pool's key unchanged, a file pool's removal
        still absent.
        """
        if pool in self.registry.pools:
            key = self.registry.poolKey(pool)
            return [(key, self.registry.modRevision(key))]
        return [(self.registry.removedKey(pool), 0)]

    def setRoutes(self, listener: str, data: list[Any], pools: Iterable[str]) -> Deferred[None]:
        """
        Replace the route list of C{listener} (checked, in the
        configuration's shape) in one write conditioned on the revision
        this balancer knows of it and of each of C{pools} (those the routes
        send to), so that a pool removed meanwhile is a conflict, not a
        route to nowhere.
        """
        key = self.registry.routesKey(listener)
        also = [c for pool in sorted(set(pools)) for c in self._poolStands(pool)]
        return Deferred.fromCoroutine(self._write(
            key, self.registry.modRevision(key),
            putOperation(key, json.dumps(data).encode()), also))

    def addPool(self, name: str, data: dict[str, Any], config: PoolConfig) -> Deferred[None]:
        """
        Create pool C{name} (checked: C{config} is C{data} parsed): its
        settings under C{pools/NAME}, each of its backends a key of its
        own, in one write conditioned on the key not existing (a file
        pool removed before comes back: its removal is deleted).
        """
        key = self.registry.poolKey(name)
        settings = {k: v for k, v in data.items() if k != "backends"}
        more = [putOperation(self.registry.key(name, b.name),
                             json.dumps(backendValue(b, Admin.READY, config.health)).encode())
                for b in config.backends]
        removed = self.registry.removedKey(name)
        also = [(removed, self.registry.modRevision(removed))]
        if removed in self.registry.values:
            more.append(deleteOperation(removed))
        return Deferred.fromCoroutine(self._write(
            key, 0, putOperation(key, json.dumps(settings).encode()), also, more))

    def removePool(self, name: str, fileHasIt: bool) -> Deferred[None]:
        """
        Remove pool C{name} (nothing sends to it) and every backend key of
        it, in one write conditioned on the pool and on every route list
        of this balancer's listeners being as this balancer knows them, so
        that a route set meanwhile to the pool is a conflict.  A run-time
        pool's key is deleted; a file pool gets a C{removed-pools/NAME}
        key, or every balancer would have it again from its file.
        """
        poolKey = self.registry.poolKey(name)
        removed = self.registry.removedKey(name)
        routes = [self.registry.routesKey(x.name) for x in self.live.fileConfig.listeners]
        also = [(k, self.registry.modRevision(k)) for k in routes]
        more = [deleteOperation(self.registry.key(name, ""), prefix=True)]
        if name in self.registry.pools:
            key, operation = poolKey, deleteOperation(poolKey)
            if fileHasIt and removed not in self.registry.values:
                more.append(putOperation(removed, b"{}"))
                also.append((removed, 0))
        else:
            key, operation = removed, putOperation(removed, b"{}")
        return Deferred.fromCoroutine(self._write(
            key, self.registry.modRevision(key), operation, also, more))

    async def _missing(self, pool: str, name: str) -> None:
        await self._refuse(f"the registry has no backend {name!r} in pool {pool!r}")

    async def _refuse(self, message: str) -> None:
        self._checkConnected()
        raise Conflict(message)

    # -- instances ---------------------------------------------------------

    def instanceKey(self, name: str) -> str:
        """
        The key a balancer registers itself under.
        """
        return f"{self.prefix}/instances/{name}"

    def _beat(self) -> None:
        """
        Keep this balancer's registration alive (a new lease if it
        expired), with the revision it has applied.
        """
        if not self.connected or (self._registering is not None
                                  and not self._registering.called):
            return
        self._registering = Deferred.fromCoroutine(self._register())
        self._registering.addErrback(self._registrationFailed)

    def _registrationFailed(self, failure: Any) -> None:
        """
        The registration's call failed: etcd may be hung or cut off while
        the watch's connection still looks open (no data is also what an
        idle registry sends), so the watch is ended and the sync loop
        reconnects, to another member if this one does not answer.
        """
        self.log.warn("cluster: keeping the registration alive failed: {error}",
                      error=failure.getErrorMessage())
        if failure.check(EtcdError) and self._watch is not None:
            self._watchLost = f"etcd did not answer: {failure.getErrorMessage()}"
            self._watch.cancel()

    async def _register(self) -> None:
        if self._lease:
            ttl = await self.client.keepAlive(self._lease)
            if not ttl:
                self._lease = 0
        if not self._lease:
            lease = await self.client.grantLease(self.instanceTTL)
            self._lease = lease.id
        value = {"name": self.identity.name, "address": self.identity.address,
                 "version": self.identity.version, "revision": self.registry.revision,
                 "connectedSince": self.since}
        await self.client.put(self.instanceKey(self.identity.name),
                              json.dumps(value).encode(), lease=self._lease)

    async def _instances(self) -> list[dict[str, Any]]:
        self._checkConnected()
        try:
            listing = await self.client.range(self.prefix + "/instances/", prefix=True)
        except EtcdError as e:
            raise StoreUnavailable(f"the cluster store cannot be read: {e}") from e
        found = []
        for kv in listing.kvs:
            try:
                found.append(json.loads(kv.value))
            except ValueError:
                self.log.warn("cluster: skipping {key}: its value is not JSON", key=kv.key)
        return found

    def instances(self) -> Deferred[list[dict[str, Any]]]:
        """
        The live balancers registered under the prefix.

        @raise StoreUnavailable: etcd cannot be reached.
        """
        return Deferred.fromCoroutine(self._instances())

    def status(self) -> dict[str, Any]:
        """
        The store's state for C{/api/health}.
        """
        return {"store": "connected" if self.connected else "unreachable",
                "since": self.since, "revision": self.registry.revision,
                "instance": self.identity.name,
                **({"error": self.lastError} if self.lastError else {})}
