"""
Tests for L{lbtwist.cluster._registry}: the registry model (no I/O), and
balancers kept in step with a real etcd: seeding, watching, losing and
regaining the store, compaction, and the snapshot.
"""

from __future__ import annotations

import json
import random
import re
import signal
from typing import Any

import attrs
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import LogLevel, capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.cluster import EtcdClient, Registry
from lbtwist.cluster._etcd import Event, KeyValue
from lbtwist.cluster._registry import backendValue, fullJitter, healthValue
from lbtwist.config import BackendConfig, Config, HealthCheck, parseConfig, parseHealth
from lbtwist.pool import Admin

from .etcdhelpers import ClusterCase, b64, call, clusterConfig, dump, eventually, startNode
from .support import firstLine, inThread, reactor


def kv(key: str, value: object, rev: int) -> KeyValue:
    """
    A key-value with a JSON value (or raw bytes).
    """
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return KeyValue(key, raw, rev)


def fileConfig(backends: list[str], pools: tuple[str, ...] = ()) -> Config:
    """
    A file's configuration: pool C{web} of C{backends}, empty pools
    C{pools}, and a tcp listener C{front} sending to C{web}.
    """
    return parseConfig({
        "listeners": [{"name": "front", "listen": "tcp:0", "pool": "web"}],
        "pools": {"web": {"backends": [{"name": n, "endpoint": f"tcp:host=h:port={i + 1}"}
                                       for i, n in enumerate(backends)]},
                  **{p: {"backends": []} for p in pools}},
    })


ROUTES = [{"name": "local", "match": {"source": "127.0.0.0/8"}, "pool": "extra"}]


class RegistryTests(SynchronousTestCase):
    """
    L{Registry} parses the store's keys into backends and overrides.
    """

    def setUp(self) -> None:
        self.registry = Registry("/p", lambda pool: HealthCheck(interval=7.0))

    def test_loadAndOverrides(self) -> None:
        """
        A listing gives backends with their admin state; as overrides on
        the file's pool, file backends missing from the store are removed
        and the store's are added.
        """
        self.registry.load(9, [
            kv("/p/pools/web/backends/a", {"endpoint": "tcp:host=h:port=1", "weight": 3,
                                           "state": "drain"}, 4),
            kv("/p/pools/web/backends/b", {"endpoint": "tcp:host=h:port=2"}, 5),
        ])
        self.assertEqual(self.registry.revision, 9)
        a = self.registry.backends[("web", "a")]
        self.assertEqual((a.config.weight, a.admin, a.modRevision, a.config.health.interval),
                         (3, Admin.DRAIN, 4, 7.0))
        o = self.registry.overrides(fileConfig(["old", "a"])).pool("web")
        self.assertEqual(o.removed, {"old"})
        self.assertEqual(sorted(o.added), ["a", "b"])
        self.assertEqual(o.admin, {"a": Admin.DRAIN})

    def test_malformedSkippedAndLogged(self) -> None:
        """
        A value that is not JSON, not an object, or not a valid backend is
        logged with its key and skipped; the entry it would replace stays.
        """
        self.registry.load(1, [kv("/p/pools/web/backends/a", {"endpoint": "tcp:host=h:port=1"}, 1)])
        with capturedLogs() as events:
            self.registry.apply(2, [Event("PUT", kv("/p/pools/web/backends/a", b"{nope", 2))])
            self.registry.apply(3, [Event("PUT", kv("/p/pools/web/backends/c", [1], 3))])
            self.registry.apply(4, [Event("PUT", kv("/p/pools/web/backends/d",
                                                    {"endpoint": "tcp:host=h:port=1",
                                                     "weight": 999}, 4))])
            self.registry.apply(5, [Event("PUT", kv("/p/pools/web/x", {}, 5))])
        warned = [e for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual([e["key"] for e in warned], [
            "/p/pools/web/backends/a", "/p/pools/web/backends/c",
            "/p/pools/web/backends/d", "/p/pools/web/x"])
        self.assertIn("weight", warned[2]["error"])
        self.assertEqual(list(self.registry.backends), [("web", "a")])
        self.assertEqual(self.registry.backends[("web", "a")].modRevision, 1)
        self.assertEqual(self.registry.revision, 5)

    def test_deleteAndSnapshotRoundTrip(self) -> None:
        """
        A delete removes the backend; the snapshot's JSON loads back into
        the same registry, and another prefix's snapshot is refused.
        """
        self.registry.load(3, [kv("/p/pools/web/backends/a", {"endpoint": "tcp:host=h:port=1"}, 2),
                               kv("/p/pools/web/backends/b", {"endpoint": "tcp:host=h:port=2",
                                                              "state": "maint"}, 3)])
        self.registry.apply(4, [Event("DELETE", KeyValue("/p/pools/web/backends/a", b"", 4))])
        copy = Registry("/p", lambda pool: HealthCheck(interval=7.0))
        copy.loadJSON(json.loads(json.dumps(self.registry.toJSON())))
        self.assertEqual(copy.backends, self.registry.backends)
        self.assertEqual(copy.revision, 4)
        with self.assertRaises(ValueError):
            Registry("/q", lambda pool: HealthCheck()).loadJSON(self.registry.toJSON())

    def test_healthRoundTrip(self) -> None:
        """
        A backend's own health check is stored as what differs from its
        pool's, and parsed back on the pool's to the same check.
        """
        base = HealthCheck(interval=7.0)
        check = HealthCheck(interval=3.0, timeout=0.5, rise=4, fall=5, kind="http",
                            method="OPTIONS", path="/up", host="h", expectBody="ok",
                            expectStatus=((200, 204), (301, 301)),
                            expectBodyRegex=re.compile(rb"ready: \d+"),
                            expectHeaders=(("X-Ready", "yes"),))
        stored = healthValue(check, base)
        self.assertEqual(stored["expect-status"], "200-204,301")
        self.assertEqual(parseHealth(json.loads(json.dumps(stored)), "", base), check)
        self.assertEqual(healthValue(base, base), {})
        value = backendValue(BackendConfig("a", "tcp:host=h:port=1", health=check),
                             Admin.READY, base)
        self.registry.load(1, [kv("/p/pools/web/backends/a", value, 1)])
        self.assertEqual(self.registry.backends[("web", "a")].config.health, check)

    def routedRegistry(self) -> None:
        """
        Load a registry with a pool created at run time (and a backend of
        it), a file pool removed and a route list to the created pool.
        """
        self.registry.load(9, [
            kv("/p/pools/extra", {"policy": "leastconn",
                                  "health": {"interval": 3}}, 5),
            kv("/p/pools/extra/backends/c", {"endpoint": "tcp:host=h:port=3"}, 5),
            kv("/p/pools/web/backends/a", {"endpoint": "tcp:host=h:port=1"}, 4),
            kv("/p/removed-pools/spare", {}, 6),
            kv("/p/routes/front", ROUTES, 7),
        ])

    def test_poolsAndRoutes(self) -> None:
        """
        A run-time pool (settings without backends, each backend a key of
        its own, health checked as its pool says), a file pool's removal
        and a listener's route list become the overrides' added pools,
        removed pools and routes; applied to the file's configuration they
        give the pools and routes the store says.
        """
        self.routedRegistry()
        self.assertEqual(self.registry.backends[("extra", "c")].config.health.interval, 3.0)
        config = fileConfig(["a"], ("spare",))
        o = self.registry.overrides(config)
        self.assertEqual(o.addedPools, {"extra": {"policy": "leastconn",
                                                  "health": {"interval": 3}}})
        self.assertEqual(o.removedPools, {"spare"})
        self.assertEqual(o.routes, {"front": ROUTES})
        self.assertEqual(sorted(o.pool("extra").added), ["c"])
        effective = o.apply(config)
        self.assertEqual([(p.name, [b.name for b in p.backends]) for p in effective.pools],
                         [("web", ["a"]), ("extra", ["c"])])
        self.assertEqual([r.pool for r in effective.listeners[0].routes], ["extra"])
        self.assertEqual(self.registry.modRevision("/p/routes/front"), 7)
        self.assertEqual(self.registry.modRevision("/p/routes/other"), 0)

    def test_poolDeletedDropsItsBackendsAndRoutes(self) -> None:
        """
        Once a run-time pool's key is deleted its backends' keys are
        ignored, and a route list naming it is logged with its key and
        skipped (once, not at every revision): the listener keeps the
        file's routes.
        """
        self.routedRegistry()
        with capturedLogs() as events:
            self.registry.apply(10, [Event("DELETE", KeyValue("/p/pools/extra", b"", 10))])
            o = self.registry.overrides(fileConfig(["a"], ("spare",)))
            self.registry.overrides(fileConfig(["a"], ("spare",)))
        self.assertEqual((o.addedPools, o.routes), ({}, {}))
        self.assertNotIn("extra", o.pools)
        warned = [e for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual([e["key"] for e in warned], ["/p/routes/front"])
        self.assertIn("extra", warned[0]["error"])

    def test_malformedPoolsAndRoutesSkipped(self) -> None:
        """
        A pool value holding its backends or a bad setting, a route list
        that is not a list and a removal that is not an object are each
        logged with their key and skipped.
        """
        with capturedLogs() as events:
            self.registry.load(4, [
                kv("/p/pools/x", {"backends": [{"name": "a", "endpoint": "tcp:host=h:port=1"}]},
                   1),
                kv("/p/pools/y", {"policy": "nope"}, 2),
                kv("/p/removed-pools/web", [], 3),
                kv("/p/routes/front", {"name": "r"}, 4),
            ])
        warned = [e for e in events if e["log_level"] is LogLevel.warn]
        self.assertEqual([e["key"] for e in warned], [
            "/p/pools/x", "/p/pools/y", "/p/removed-pools/web", "/p/routes/front"])
        self.assertIn("policy", warned[1]["error"])
        self.assertEqual((self.registry.pools, self.registry.removedPools, self.registry.routes),
                         ({}, {}, {}))
        self.assertEqual(self.registry.values, {})

    def test_poolsAndRoutesSnapshotRoundTrip(self) -> None:
        """
        The snapshot keeps the run-time pools, removals and routes.
        """
        self.routedRegistry()
        copy = Registry("/p", lambda pool: HealthCheck(interval=7.0))
        copy.loadJSON(json.loads(json.dumps(self.registry.toJSON())))
        config = fileConfig(["a"], ("spare",))
        self.assertEqual(copy.overrides(config), self.registry.overrides(config))
        self.assertEqual(copy.backends, self.registry.backends)
        self.assertEqual(copy.pools, self.registry.pools)

    def test_jitter(self) -> None:
        """
        The back-off grows exponentially up to its cap, each delay drawn
        between 0 and that bound.
        """
        rng = random.Random(1)
        delays = [fullJitter(rng, attempt) for attempt in range(12) for _ in range(50)]
        self.assertTrue(all(0 <= d <= 5.0 for d in delays))
        self.assertLessEqual(max(delays[:50]), 0.2)
        self.assertGreater(max(delays[-50:]), 2.0)


class RegistrySyncTests(ClusterCase):
    """
    Balancers sharing a registry through a real etcd.
    """

    def put(self, name: str, value: dict[str, Any]) -> Any:
        return inThread(call, self.etcd.url, "/v3/kv/put", {
            "key": b64(f"/lbt/pools/web/backends/{name}"), "value": b64(json.dumps(value))})

    @inlineCallbacks
    def test_seedOnceThenShare(self) -> Any:
        """
        The first balancer seeds the empty store from its file; a second
        one with another file does not, and serves the store's backends.
        """
        first = self.node("n1", ["a"])
        yield eventually(lambda: first.sync.connected)
        self.assertEqual(dump(self.etcd.url, "/lbt/pools/"), {
            "/lbt/pools/web/backends/a": {"endpoint": self.servers.endpoint("a"), "weight": 1,
                                          "state": "ready"}})
        second = self.node("n2", ["b", "c"])
        yield eventually(lambda: second.sync.connected)
        self.assertEqual(second.backends(), {"a": (1, "ready")})
        line = yield inThread(firstLine, second.port)
        self.assertEqual(line, b"a")

    @inlineCallbacks
    def test_changesAppliedInOrder(self) -> Any:
        """
        Backends added, re-weighted, drained and removed in the store reach
        the live pool, each within a second, and traffic follows.
        """
        node = self.node("n1", ["a"])
        yield eventually(lambda: node.sync.connected)
        yield self.put("b", {"endpoint": self.servers.endpoint("b"), "weight": 5})
        took = yield eventually(lambda: "b" in node.backends(), 1.0)
        self.assertLess(took, 1.0)
        self.assertEqual(node.backends()["b"], (5, "ready"))
        yield self.put("a", {"endpoint": self.servers.endpoint("a"), "state": "maint"})
        yield eventually(lambda: node.backends()["a"] == (1, "maint"), 1.0)
        lines = set()
        for _ in range(4):
            lines.add((yield inThread(firstLine, node.port)))
        self.assertEqual(lines, {b"b"})
        yield inThread(call, self.etcd.url, "/v3/kv/deleterange",
                       {"key": b64("/lbt/pools/web/backends/b")})
        yield eventually(lambda: "b" not in node.backends(), 1.0)
        latest = call(self.etcd.url, "/v3/kv/range", {"key": b64("/lbt/x")})
        self.assertEqual(node.sync.registry.revision, int(latest["header"]["revision"]))

    @inlineCallbacks
    def test_storeGoneKeepsServing(self) -> Any:
        """
        With etcd killed the balancer keeps every backend and serves, says
        the store is unreachable; when etcd returns it reconnects, resumes
        from its revision and applies what changed.
        """
        node = self.node("n1", ["a", "b"])
        yield eventually(lambda: node.sync.connected)
        revision = node.sync.registry.revision
        member = self.etcd.members[0]
        member.kill()
        yield eventually(lambda: not node.sync.connected, 3.0)
        self.assertEqual(set(node.backends()), {"a", "b"})
        for _ in range(4):
            line = yield inThread(firstLine, node.port)
            self.assertIn(line, (b"a", b"b"))
        self.assertEqual(node.sync.status()["store"], "unreachable")
        yield self.etcd.restart(member)
        yield eventually(lambda: node.sync.connected, 10.0)
        self.assertEqual(node.sync.relists, 0)
        self.assertEqual(node.sync.registry.revision, revision)
        yield self.put("c", {"endpoint": self.servers.endpoint("c")})
        yield eventually(lambda: "c" in node.backends(), 1.0)

    @inlineCallbacks
    def test_compactedPastRevisionRelists(self) -> Any:
        """
        A balancer whose next revision was compacted while it was away
        lists the registry again and converges.
        """
        node = self.node("n1", ["a"])
        yield eventually(lambda: node.sync.connected)
        # Away: its watch ends, and its next watch waits until the store
        # has moved on and compacted.
        sync = node.sync
        gate: Deferred[None] = Deferred()
        watch = sync.client.watch

        async def later(*args: Any, **kw: Any) -> Any:
            await gate
            return await watch(*args, **kw)

        sync.client.watch = lambda *args, **kw: Deferred.fromCoroutine(later(*args, **kw))
        client = EtcdClient(reactor, [self.etcd.url])
        self.addCleanup(client.close)
        sync._watch.cancel()
        yield client.put("/lbt/pools/web/backends/b",
                         json.dumps({"endpoint": self.servers.endpoint("b")}).encode())
        latest = yield client.put("/lbt/pools/web/backends/c",
                                  json.dumps({"endpoint": self.servers.endpoint("c")}).encode())
        yield client.compact(latest)
        sync.client.watch = watch
        gate.callback(None)
        yield eventually(lambda: sync.relists == 1 and set(node.backends()) == {"a", "b", "c"})
        yield eventually(lambda: sync.connected)
        self.assertGreaterEqual(sync.registry.revision, latest)

    @inlineCallbacks
    def test_restartWhileStoreDownUsesSnapshot(self) -> Any:
        """
        A balancer restarted while etcd is down starts from its snapshot
        (with a backend only the store had) and serves it.
        """
        node = self.node("n1", ["a"])
        yield eventually(lambda: node.sync.connected)
        yield self.put("b", {"endpoint": self.servers.endpoint("b")})
        yield self.put("a", {"endpoint": self.servers.endpoint("a"), "state": "maint"})
        yield eventually(lambda: node.backends().get("a") == (1, "maint"))
        revision = node.sync.registry.revision
        yield node.balancer.stopService()
        self.etcd.members[0].kill()
        again = self.node("n1", ["a"])
        self.assertEqual(again.backends(), {"a": (1, "maint"), "b": (1, "ready")})
        self.assertEqual(again.sync.registry.revision, revision)
        line = yield inThread(firstLine, again.port)
        self.assertEqual(line, b"b")

    @inlineCallbacks
    def test_unreachableWithoutSnapshotIsFatal(self) -> Any:
        """
        An etcd that cannot be reached at the first start, with no
        snapshot, is one error naming the URLs.
        """
        self.etcd.members[0].kill()
        said: list[str] = []
        node = self.node("n1", ["a"], fatal=said.append)
        yield eventually(lambda: bool(said), 10.0)
        self.assertFalse(node.sync.haveRegistry)
        self.assertIn(self.etcd.url, said[0])
        self.assertIn("no snapshot", said[0])
        self.assertNotIn("\n", said[0])

    @inlineCallbacks
    def test_reloadKeepsRegistryBackends(self) -> Any:
        """
        A reload of a file that changes a backend's weight applies the
        file's pool settings but leaves the backends as the registry says.
        """
        node = self.node("n1", ["a"])
        yield eventually(lambda: node.sync.connected)
        yield self.put("b", {"endpoint": self.servers.endpoint("b"), "weight": 7})
        yield eventually(lambda: "b" in node.backends())
        live = node.balancer.live
        changed = attrs.evolve(live.fileConfig.pools[0], backends=(
            attrs.evolve(live.fileConfig.pools[0].backends[0], weight=9),), policy="leastconn")
        live.loadConfig = lambda: attrs.evolve(live.fileConfig, pools=(changed,))
        self.assertIsNone(live.reload())
        self.assertEqual(node.backends(), {"a": (1, "ready"), "b": (7, "ready")})
        self.assertEqual(node.balancer.loadBalancer.pools["web"].config.policy, "leastconn")

    @inlineCallbacks
    def test_hungStoreDetected(self) -> Any:
        """
        An etcd that stops answering (SIGSTOP: its connections stay open)
        is seen as unreachable once the registration's keep-alive fails;
        the balancer keeps serving, and reconnects when etcd runs again.
        """
        node = self.node("n1", ["a"], sync={"instanceTTL": 3})
        node.sync.client.timeout = 0.5
        yield eventually(lambda: node.sync.connected)
        process = self.etcd.members[0].process
        process.send_signal(signal.SIGSTOP)
        self.addCleanup(lambda: process.poll() is None and process.send_signal(signal.SIGCONT))
        yield eventually(lambda: not node.sync.connected, 5.0)
        self.assertIn("did not answer", node.sync.status()["error"])
        line = yield inThread(firstLine, node.port)
        self.assertEqual(line, b"a")
        process.send_signal(signal.SIGCONT)
        yield eventually(lambda: node.sync.connected, 10.0)
        yield self.put("b", {"endpoint": self.servers.endpoint("b")})
        yield eventually(lambda: "b" in node.backends(), 1.0)

    @inlineCallbacks
    def test_ownHealthCheckKept(self) -> Any:
        """
        A file backend with a health check of its own is seeded with it,
        so that applying the registry keeps the live backend (its health
        state with it) rather than replacing it.
        """
        data = clusterConfig(self.etcd.urls, [("a", self.servers.endpoint("a"))])
        data["pools"]["web"]["backends"][0]["health"] = {"interval": 30, "rise": 1}
        node = startNode(self, data, self.dir, "n1")
        backend = node.balancer.loadBalancer.pools["web"].get("a")
        yield eventually(lambda: node.sync.connected)
        self.assertIs(node.balancer.loadBalancer.pools["web"].get("a"), backend)
        self.assertEqual(dump(self.etcd.url, "/lbt/pools/")["/lbt/pools/web/backends/a"]["health"],
                         {"interval": 30.0, "rise": 1})
