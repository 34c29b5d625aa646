"""
Routes and pools changed at run time through the admin API of balancers
that share a registry in a real etcd: written to the store conditioned on
the keys' revisions, applied by every balancer, refused fast while the
store is gone, and kept in each balancer's snapshot.
"""

from __future__ import annotations

import io
import time
from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks

from lbtwist.cluster import Conflict
from lbtwist.ctl import run

from .etcdhelpers import ClusterCase, clusterConfig, dump, eventually, holdWatch, startNode
from .support import firstLine, inThread
from .test_cluster_writes import api

ROUTE = {"name": "local", "match": {"source": ["127.0.0.0/8"]}}


class ClusterRouteTests(ClusterCase):
    """
    Three balancers on one etcd, each with a tcp listener sending to file
    pool C{web} (backend a) and a file pool C{spare} (backend b) nothing
    sends to; routes and pools changed through their admin APIs.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.nodes = [self.start(f"n{i}") for i in range(3)]
        yield eventually(lambda: all(n.sync.connected for n in self.nodes))
        self.listener = self.nodes[0].balancer.loadBalancer.config.listeners[0].name

    def start(self, name: str) -> Any:
        """
        Start balancer C{name} (its snapshot in this test's directory).
        """
        data = clusterConfig(self.etcd.urls, [("a", self.servers.endpoint("a"))])
        data["listeners"][0]["pool"] = "web"
        data["pools"]["spare"] = {"backends": [{"name": "b",
                                                "endpoint": self.servers.endpoint("b")}],
                                  "health": {"interval": 60}}
        return startNode(self, data, self.dir, name)

    def call(self, node: Any, method: str, path: str, body: object = None) -> Any:
        return inThread(api, node.adminPort, method, path, body)

    def routes(self, node: Any) -> Any:
        """
        The routes C{node}'s listener uses now, as the file would say them.
        """
        return [(r.name, r.pool) for r in node.balancer.live.listener(self.listener).routes]

    @inlineCallbacks
    def createExtra(self, node: Any) -> Any:
        """
        Create pool C{extra} (backend c) through C{node}; fires once every
        balancer has it.
        """
        status, body, _ = yield self.call(node, "POST", "/api/pools", {
            "name": "extra", "policy": "leastconn", "health": {"interval": 60},
            "backends": [{"name": "c", "endpoint": self.servers.endpoint("c")}]})
        self.assertEqual((status, body["name"], [b["name"] for b in body["backends"]]),
                         (201, "extra", ["c"]), body)
        yield eventually(lambda: all("extra" in n.balancer.loadBalancer.pools
                                     for n in self.nodes), 1.0)

    @inlineCallbacks
    def test_poolAndRoutesThroughAServedByAll(self) -> Any:
        """
        A pool created through A (with a backend) is in every balancer
        within a second; routes to it PUT through A answer with A's new
        routes and take B's and C's next request within a second.  The
        store holds the pool's settings and its backend as keys of their
        own, and the route list in the configuration's shape.
        """
        a, b, c = self.nodes
        yield self.createExtra(a)
        self.assertEqual(b.balancer.loadBalancer.pools["extra"].config.policy, "leastconn")
        path = f"/api/listeners/{self.listener}/routes"
        given = {"name": "local", "match": {"source": "127.0.0.0/8"}, "pool": "extra"}
        status, body, _ = yield self.call(a, "PUT", path, [given])
        self.assertEqual((status, body), (200, [{**ROUTE, "pool": "extra"}]))
        self.assertEqual(self.routes(a), [("local", "extra")])
        start = time.monotonic()
        yield eventually(lambda: all(self.routes(n) == [("local", "extra")] for n in (b, c)),
                         1.0)
        for node in (b, c):
            line = yield inThread(firstLine, node.port)
            self.assertEqual(line, b"c")
        self.assertLess(time.monotonic() - start, 1.0)
        status, body, _ = yield self.call(c, "GET", path)
        self.assertEqual(body, [{**ROUTE, "pool": "extra"}])
        self.assertEqual(dump(self.etcd.url, "/lbt/routes/"),
                         {f"/lbt/routes/{self.listener}": [{**ROUTE, "pool": "extra"}]})
        self.assertEqual(dump(self.etcd.url, "/lbt/pools/extra"), {
            "/lbt/pools/extra": {"policy": "leastconn", "health": {"interval": 60}},
            "/lbt/pools/extra/backends/c": {"endpoint": self.servers.endpoint("c"),
                                            "weight": 1, "state": "ready"}})

    @inlineCallbacks
    def test_removePools(self) -> Any:
        """
        A pool a route sends to cannot be removed (409, nothing written);
        once the route is gone, removing it through B deletes its key and
        its backends' keys in one write and every balancer drops it.  A
        file pool removed (by C{lbtwist ctl pool-remove}) gets a C{removed-pools/} key (the balancers'
        files still list it) and its backends' keys go.
        """
        a, b, c = self.nodes
        yield self.createExtra(a)
        path = f"/api/listeners/{self.listener}/routes"
        yield self.call(a, "PUT", path, [{**ROUTE, "pool": "extra"}])
        yield eventually(lambda: self.routes(b) == [("local", "extra")], 1.0)
        revision = b.sync.registry.revision
        status, body, _ = yield self.call(b, "DELETE", "/api/pools/extra")
        self.assertEqual(status, 409)
        self.assertIn("in use", body["error"])
        self.assertEqual(b.sync.registry.revision, revision)
        status, _, _ = yield self.call(b, "PUT", path, [])
        self.assertEqual(status, 200)
        status, body, _ = yield self.call(b, "DELETE", "/api/pools/extra")
        self.assertEqual((status, body["status"]), (200, "removed"))
        self.assertNotIn("extra", b.balancer.loadBalancer.pools)
        yield eventually(lambda: not any("extra" in n.balancer.loadBalancer.pools
                                         for n in self.nodes), 1.0)
        self.assertEqual(dump(self.etcd.url, "/lbt/pools/extra"), {})
        self.assertIn("/lbt/pools/spare/backends/b", dump(self.etcd.url, "/lbt/pools/"))
        out = io.StringIO()
        yield inThread(run, ["ctl", "--admin", f"127.0.0.1:{c.adminPort}", "--token",
                             "secret", "pool-remove", "spare"], {}, out)
        self.assertIn("removed pool spare", out.getvalue())
        yield eventually(lambda: not any("spare" in n.balancer.loadBalancer.pools
                                         for n in self.nodes), 1.0)
        self.assertEqual(dump(self.etcd.url, "/lbt/removed-pools/"),
                         {"/lbt/removed-pools/spare": {}})
        self.assertNotIn("/lbt/pools/spare/backends/b", dump(self.etcd.url, "/lbt/pools/"))
        status, _, _ = yield self.call(a, "DELETE", "/api/pools/web")
        self.assertEqual(status, 409)

    @inlineCallbacks
    def test_conflictingRoutesOneWins(self) -> Any:
        """
        Route lists PUT at once through three balancers, each conditioned
        on the revision it knows: exactly one wins, the others are
        conflicts; every balancer ends with the winner's routes.  A stale
        PUT through the API is a 409.
        """
        a, b, c = self.nodes
        yield self.createExtra(a)
        lists = {n.sync.identity.name: [{**ROUTE, "name": n.sync.identity.name, "pool": pool}]
                 for n, pool in zip(self.nodes, ["web", "extra", "spare"])}
        results = yield gatherResults([
            n.sync.setRoutes(self.listener, lists[n.sync.identity.name],
                             [lists[n.sync.identity.name][0]["pool"]]).addCallbacks(
                lambda _, name=n.sync.identity.name: name,
                lambda f: f.trap(Conflict) and "lost")
            for n in self.nodes])
        winners = [r for r in results if r != "lost"]
        self.assertEqual(len(winners), 1, results)
        won = [(winners[0], lists[winners[0]][0]["pool"])]
        yield eventually(lambda: all(self.routes(n) == won for n in self.nodes), 1.0)
        release = holdWatch(b)
        path = f"/api/listeners/{self.listener}/routes"
        status, _, _ = yield self.call(a, "PUT", path, [])
        self.assertEqual(status, 200)
        status, body, _ = yield self.call(b, "PUT", path, [{**ROUTE, "pool": "web"}])
        self.assertEqual(status, 409)
        self.assertIn("changed since revision", body["error"])
        yield release()
        self.assertEqual(self.routes(b), [])

    @inlineCallbacks
    def test_routeToPoolRemovedMeanwhileIsConflict(self) -> Any:
        """
        A route list naming a pool that another balancer removed, written
        before this balancer saw the removal, is a conflict: the store
        never holds a route to a pool that is gone.
        """
        a, b, _ = self.nodes
        yield self.createExtra(a)
        release = holdWatch(b)
        status, _, _ = yield self.call(a, "DELETE", "/api/pools/extra")
        self.assertEqual(status, 200)
        with self.assertRaises(Conflict):
            yield b.sync.setRoutes(self.listener, [{**ROUTE, "pool": "extra"}], ["extra"])
        self.assertEqual(dump(self.etcd.url, "/lbt/routes/"), {})
        yield release()

    @inlineCallbacks
    def test_badInputWritesNothing(self) -> Any:
        """
        A route list naming an unknown pool and a pool with a bad setting
        are 400s naming the key; nothing is written to the store.
        """
        a = self.nodes[0]
        before = dump(self.etcd.url, "/lbt/")
        before = {k: v for k, v in before.items() if not k.startswith("/lbt/instances/")}
        status, body, _ = yield self.call(a, "PUT", f"/api/listeners/{self.listener}/routes",
                                          [{**ROUTE, "pool": "nowhere"}])
        self.assertEqual(status, 400)
        self.assertIn("routes[0].pool", body["error"])
        status, body, _ = yield self.call(a, "POST", "/api/pools",
                                          {"name": "x", "policy": "nope"})
        self.assertEqual(status, 400)
        self.assertIn("policy", body["error"])
        status, body, _ = yield self.call(a, "POST", "/api/pools", {"name": "spare"})
        self.assertEqual(status, 409)
        after = dump(self.etcd.url, "/lbt/")
        self.assertEqual({k: v for k, v in after.items() if not k.startswith("/lbt/instances/")},
                         before)

    @inlineCallbacks
    def test_storeGoneRouteAndPoolWritesFailFast(self) -> Any:
        """
        With etcd killed, a route PUT, a pool creation and a pool removal
        answer 503 at once and change nothing on any balancer.
        """
        a, b, c = self.nodes
        self.etcd.members[0].kill()
        yield eventually(lambda: not any(n.sync.connected for n in self.nodes), 3.0)
        for method, path, body in [
                ("PUT", f"/api/listeners/{self.listener}/routes", [{**ROUTE, "pool": "spare"}]),
                ("POST", "/api/pools", {"name": "extra"}),
                ("DELETE", "/api/pools/spare", None)]:
            status, answer, took = yield self.call(a, method, path, body)
            self.assertEqual(status, 503, (method, path, answer))
            self.assertIn("unreachable", answer["error"])
            self.assertLess(took, 0.5)
        for node in self.nodes:
            self.assertEqual(self.routes(node), [])
            self.assertEqual(sorted(node.balancer.loadBalancer.pools), ["spare", "web"])
        line = yield inThread(firstLine, b.port)
        self.assertEqual(line, b"a")

    @inlineCallbacks
    def test_restartFromSnapshotKeepsRoutesAndPools(self) -> Any:
        """
        A balancer restarted while etcd is down starts from its snapshot
        with the pools created and removed and the routes set through
        another balancer, and serves by those routes.
        """
        a, _, c = self.nodes
        yield self.createExtra(a)
        yield self.call(a, "DELETE", "/api/pools/spare")
        status, _, _ = yield self.call(a, "PUT", f"/api/listeners/{self.listener}/routes",
                                       [{**ROUTE, "pool": "extra"}])
        self.assertEqual(status, 200)
        yield eventually(lambda: c.sync.registry.revision == a.sync.registry.revision
                         and self.routes(c) == [("local", "extra")], 1.0)
        yield c.balancer.stopService()
        self.etcd.members[0].kill()
        again = self.start("n2")
        self.assertFalse(again.sync.connected)
        self.assertEqual(self.routes(again), [("local", "extra")])
        self.assertEqual(sorted(again.balancer.loadBalancer.pools), ["extra", "web"])
        line = yield inThread(firstLine, again.port)
        self.assertEqual(line, b"c")
