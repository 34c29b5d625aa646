"""
Changes through the admin API of balancers that share a registry in a real
etcd: written to the store conditioned on the key's revision, answered once
the writer has applied them, refused fast while the store is gone; the
store's state in health and metrics; the registered instances.
"""

from __future__ import annotations

import io
import json
import time
import urllib.error
import urllib.request
from typing import Any

from twisted.internet.defer import gatherResults, inlineCallbacks

from lbtwist.cluster import Conflict, modRevisionIs, putOperation
from lbtwist.ctl import run

from .etcdhelpers import ClusterCase, dump, eventually
from .support import firstLine, inThread


def api(port: int, method: str, path: str, body: object = None) -> tuple[int, Any, float]:
    """
    One admin API call (blocking): status, JSON answer, seconds taken.
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Authorization", "Bearer secret")
    start = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.load(r), time.monotonic() - start
    except urllib.error.HTTPError as e:
        return e.code, json.load(e), time.monotonic() - start


class ClusterWriteTests(ClusterCase):
    """
    Three balancers on one etcd, changed through their admin APIs.
    """

    @inlineCallbacks
    def setUp(self) -> Any:
        yield super().setUp()
        self.nodes = [self.node(f"n{i}", ["a"]) for i in range(3)]
        yield eventually(lambda: all(n.sync.connected for n in self.nodes))

    def call(self, node: Any, method: str, path: str, body: object = None) -> Any:
        return inThread(api, node.adminPort, method, path, body)

    @inlineCallbacks
    def test_addedThroughOneServedByAll(self) -> Any:
        """
        A backend added through A is in A's pool when A answers, and is
        served by B and C within a second.
        """
        a, b, c = self.nodes
        status, body, _ = yield self.call(
            a, "POST", "/api/pools/web/backends",
            {"name": "b", "endpoint": self.servers.endpoint("b"), "weight": 3})
        self.assertEqual((status, body["name"], body["weight"]), (201, "b", 3))
        self.assertIn("b", a.backends())
        took = yield eventually(lambda: all("b" in n.backends() for n in (b, c)), 1.0)
        self.assertLess(took, 1.0)
        yield self.call(c, "PATCH", "/api/pools/web/backends/a", {"state": "maint"})
        yield eventually(lambda: b.backends()["a"] == (1, "maint"), 1.0)
        line = yield inThread(firstLine, b.port)
        self.assertEqual(line, b"b")
        self.assertEqual(dump(self.etcd.url, "/lbt/pools/web/backends/b"),
                         {"/lbt/pools/web/backends/b": {
                             "endpoint": self.servers.endpoint("b"), "weight": 3,
                             "state": "ready"}})
        status, body, _ = yield self.call(b, "DELETE", "/api/pools/web/backends/b")
        self.assertEqual((status, body["status"]), (200, "removed"))
        self.assertNotIn("b", b.backends())
        yield eventually(lambda: all("b" not in n.backends() for n in self.nodes), 1.0)

    @inlineCallbacks
    def test_conflictingWritesOneWins(self) -> Any:
        """
        Writes of one backend made at once through three balancers, each
        conditioned on the revision it knows: exactly one wins, the others
        are conflicts (409 through the API).
        """
        a, b, c = self.nodes
        results = yield gatherResults([
            a.sync.changeBackend("web", "a", weight=10).addCallbacks(
                lambda _: "won", lambda f: f.trap(Conflict) and "lost"),
            b.sync.changeBackend("web", "a", weight=20).addCallbacks(
                lambda _: "won", lambda f: f.trap(Conflict) and "lost"),
            c.sync.removeBackend("web", "a").addCallbacks(
                lambda _: "won", lambda f: f.trap(Conflict) and "lost"),
        ])
        self.assertEqual(sorted(results), ["lost", "lost", "won"])
        yield eventually(lambda: len({tuple(sorted(n.backends().items()))
                                      for n in self.nodes}) == 1)

    @inlineCallbacks
    def test_staleWriteThroughAPIIs409(self) -> Any:
        """
        A change through B, made before B has seen A's change to the same
        backend, is refused with 409 and a JSON error; once B has applied
        A's change, the same request succeeds.
        """
        a, b, _ = self.nodes
        stream = b.sync._watch
        deliver = stream.onRevision
        held: list[Any] = []
        stream.onRevision = lambda rev, events: held.append((rev, events))
        status, _, _ = yield self.call(a, "PATCH", "/api/pools/web/backends/a", {"weight": 5})
        self.assertEqual(status, 200)
        status, body, _ = yield self.call(b, "PATCH", "/api/pools/web/backends/a", {"weight": 6})
        self.assertEqual(status, 409)
        self.assertIn("changed since revision", body["error"])
        yield eventually(lambda: bool(held))
        stream.onRevision = deliver
        for rev, events in held:
            deliver(rev, events)
        status, body, _ = yield self.call(b, "PATCH", "/api/pools/web/backends/a", {"weight": 6})
        self.assertEqual((status, body["weight"]), (200, 6))
        yield eventually(lambda: all(n.backends()["a"] == (6, "ready") for n in self.nodes), 1.0)

    @inlineCallbacks
    def test_writeMadeTwiceIsOneSuccess(self) -> Any:
        """
        A write whose comparison fails because the same value was already
        written (a first attempt made, its answer lost, then sent to
        another member) is a success; a different value is a conflict.
        """
        a = self.nodes[0]
        stream = a.sync._watch
        deliver = stream.onRevision
        held: list[Any] = []
        stream.onRevision = lambda rev, events: held.append((rev, events))
        entry = a.sync.entry("web", "a")
        key = a.sync.registry.key("web", "a")
        value = json.dumps({"endpoint": entry.config.endpoint, "weight": 4,
                            "state": "ready"}).encode()
        first = yield a.sync.client.txn([modRevisionIs(key, entry.modRevision)],
                                        [putOperation(key, value)])
        self.assertTrue(first.succeeded)
        again = a.sync.changeBackend("web", "a", weight=4)
        other = a.sync.changeBackend("web", "a", weight=5)
        yield eventually(lambda: bool(held))
        stream.onRevision = deliver
        for rev, events in held:
            deliver(rev, events)
        yield again
        with self.assertRaises(Conflict):
            yield other
        self.assertEqual(a.backends()["a"], (4, "ready"))

    @inlineCallbacks
    def test_storeGoneWritesFailFast(self) -> Any:
        """
        With etcd killed, a change answers 503 with a clear message at
        once; health stays 200 and says since when the store is
        unreachable; metrics say disconnected.  When etcd returns, a change
        works again and every balancer converges to one revision.
        """
        a, b, c = self.nodes
        member = self.etcd.members[0]
        member.kill()
        yield eventually(lambda: not any(n.sync.connected for n in self.nodes), 3.0)
        status, body, took = yield self.call(
            a, "POST", "/api/pools/web/backends",
            {"name": "b", "endpoint": self.servers.endpoint("b")})
        self.assertEqual(status, 503)
        self.assertIn("unreachable", body["error"])
        self.assertLess(took, 0.5)
        status, health, _ = yield self.call(b, "GET", "/api/health")
        self.assertEqual((status, health["cluster"]["store"]), (200, "unreachable"), health)
        self.assertLessEqual(health["cluster"]["since"], time.time())
        metrics = yield inThread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{c.adminPort}/metrics").read())
        self.assertIn(b"lbtwist_cluster_connected 0.0", metrics)
        yield self.etcd.restart(member)
        yield eventually(lambda: all(n.sync.connected for n in self.nodes), 10.0)
        status, _, _ = yield self.call(
            a, "POST", "/api/pools/web/backends",
            {"name": "b", "endpoint": self.servers.endpoint("b")})
        self.assertEqual(status, 201)
        yield eventually(lambda: len({n.sync.registry.revision for n in self.nodes}) == 1
                         and all("b" in n.backends() for n in self.nodes), 2.0)
        metrics = yield inThread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{c.adminPort}/metrics").read())
        self.assertIn(b"lbtwist_cluster_connected 1.0", metrics)
        self.assertIn(f"lbtwist_cluster_revision {float(c.sync.registry.revision)}".encode(),
                      metrics)

    @inlineCallbacks
    def test_instances(self) -> Any:
        """
        Each balancer registers itself with a lease: the API and
        C{lbtwist ctl instances} list all three; a stopped one's
        registration goes with it.
        """
        a = self.nodes[0]
        yield eventually(lambda: len(dump(self.etcd.url, "/lbt/instances/")) == 3, 5.0)
        status, body, _ = yield self.call(a, "GET", "/api/instances")
        self.assertEqual(status, 200)
        self.assertEqual(sorted(i["name"] for i in body["instances"]), ["n0", "n1", "n2"])
        self.assertTrue(all(i["version"] and i["address"] for i in body["instances"]))
        out = io.StringIO()
        yield inThread(run, ["ctl", "--admin", f"127.0.0.1:{a.adminPort}", "instances"],
                       {}, out)
        self.assertEqual(sorted(line.split()[0] for line in out.getvalue().splitlines()),
                         ["n0", "n1", "n2"])
        yield self.nodes[2].balancer.stopService()
        self.assertEqual(sorted(dump(self.etcd.url, "/lbt/instances/")),
                         ["/lbt/instances/n0", "/lbt/instances/n1"])
