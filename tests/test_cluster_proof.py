"""
The cluster's promises, shown with a real etcd: balancers keep serving with
no failed request while etcd is gone and converge when it returns; no write
acknowledged to a client is lost when the etcd leader is killed; and a
C{twistd lb} process restarted while etcd is down serves from its snapshot.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from .etcdhelpers import ClusterCase, clusterConfig, dump, eventually
from .support import firstLine, freePort, inThread, sleep, spawn
from .test_cluster_writes import api

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")


def load(ports: list[int], stop: threading.Event, limit: int = 20000,
         seconds: float = 20.0) -> tuple[int, list[str]]:
    """
    Connect to each port in turn, reading the backend's name, until
    C{stop} is set (at most C{limit} connections and C{seconds}).

    @return: how many succeeded, and what went wrong with the others.
    """
    ok, failed = 0, []
    deadline = time.monotonic() + seconds
    for i in range(limit):
        if stop.is_set() or time.monotonic() > deadline:
            break
        try:
            if firstLine(ports[i % len(ports)], timeout=2.0) in (b"a", b"b"):
                ok += 1
            else:
                failed.append("no name")
        except OSError as e:
            failed.append(str(e))
    return ok, failed


class StoreLossTests(ClusterCase):
    """
    Three balancers on one etcd, which is killed and restarted.
    """

    @inlineCallbacks
    def test_keepServingThenConverge(self) -> Any:
        """
        While etcd is killed and restarted, three balancers under load fail
        no request; changes get 503 meanwhile; afterwards a change through
        one reaches all, and all hold the same revision and registry.
        """
        nodes = [self.node(f"n{i}", ["a", "b"]) for i in range(3)]
        yield eventually(lambda: all(n.sync.connected for n in nodes))
        stop = threading.Event()
        running = inThread(load, [n.port for n in nodes], stop)
        yield sleep(0.3)
        member = self.etcd.members[0]
        member.kill()
        yield eventually(lambda: not any(n.sync.connected for n in nodes), 3.0)
        for n in nodes:
            status, body, took = yield inThread(api, n.adminPort, "PATCH",
                                                "/api/pools/web/backends/a", {"weight": 3})
            self.assertEqual(status, 503, body)
            self.assertLess(took, 0.5)
        yield sleep(0.5)
        yield self.etcd.restart(member)
        yield eventually(lambda: all(n.sync.connected for n in nodes), 10.0)
        status, _, _ = yield inThread(api, nodes[1].adminPort, "PATCH",
                                      "/api/pools/web/backends/b", {"weight": 4})
        self.assertEqual(status, 200)
        yield sleep(0.3)
        stop.set()
        ok, failed = yield running
        self.assertEqual(failed, [])
        self.assertGreater(ok, 50)
        yield eventually(lambda: len({n.sync.registry.revision for n in nodes}) == 1, 2.0)
        self.assertEqual({tuple(sorted(n.backends().items())) for n in nodes},
                         {(("a", (1, "ready")), ("b", (4, "ready")))})


class LeaderLossTests(ClusterCase):
    """
    Three balancers on a three-member etcd cluster whose leader is killed.
    """

    members = 3

    @inlineCallbacks
    def test_noAcknowledgedWriteLost(self) -> Any:
        """
        A stream of additions through the three balancers, with the etcd
        leader killed a third of the way: every addition acknowledged (201)
        is in etcd and in every balancer's pool afterwards.
        """
        nodes = [self.node(f"n{i}", ["a"]) for i in range(3)]
        yield eventually(lambda: all(n.sync.connected for n in nodes))
        acknowledged, refused = [], []
        leader = None
        for i in range(45):
            if i == 15:
                leader = yield inThread(self.etcd.leader)
                leader.kill()
            name = f"w{i}"
            status, body, _ = yield inThread(
                api, nodes[i % 3].adminPort, "POST", "/api/pools/web/backends",
                {"name": name, "endpoint": self.servers.endpoint("b")})
            if status == 201:
                acknowledged.append(name)
                self.assertIn(name, nodes[i % 3].backends())
            else:
                self.assertIn(status, (409, 503), body)
                refused.append(name)
                yield sleep(0.05)
        self.assertGreater(len(acknowledged), 30)
        alive = next(m for m in self.etcd.members if m is not leader)
        stored = {k.rsplit("/", 1)[1] for k in dump(alive.clientURL, "/lbt/pools/web/backends/")}
        self.assertEqual(set(acknowledged) - stored, set())
        yield eventually(lambda: all(set(acknowledged) <= set(n.backends()) for n in nodes), 10.0)
        yield eventually(lambda: len({n.sync.registry.revision for n in nodes}) == 1, 10.0)


class TwistdClusterTests(ClusterCase):
    """
    C{twistd lb} processes in a cluster.
    """

    timeout = 60

    def twistd(self, config: dict[str, Any]) -> Any:
        path = os.path.abspath(os.path.join(self.dir, "lb.yaml"))
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        return spawn(self, [TWISTD, "--nodaemon", "--pidfile=", "lb", "--config", path],
                     self.dir, dict(os.environ))

    @inlineCallbacks
    def waitForAdmin(self, port: int, process: Any) -> Any:
        """
        Wait until the admin API answers, or fail with the output.
        """
        for _ in range(150):
            if process.poll() is not None:
                break
            try:
                yield inThread(api, port, "GET", "/api/health")
                return
            except OSError:
                yield sleep(0.1)
        process.kill()
        self.fail(f"twistd did not start:\n{process.stdout.read().decode()}")

    @inlineCallbacks
    def test_restartWhileStoreDown(self) -> Any:
        """
        A twistd balancer gets a backend through its API; stopped, with
        etcd then killed, and started again, it serves that backend from
        its snapshot and reports the store unreachable.
        """
        port, admin = freePort(), freePort()
        config = clusterConfig(self.etcd.urls, [("a", self.servers.endpoint("a"))])
        config["listeners"] = [{"listen": f"tcp:{port}:interface=127.0.0.1"}]
        config["admin"] = f"tcp:{admin}:interface=127.0.0.1"
        process = self.twistd(config)
        yield self.waitForAdmin(admin, process)
        yield eventually(lambda: dump(self.etcd.url, "/lbt/instances/") != {}, 5.0)
        status, _, _ = yield inThread(api, admin, "POST", "/api/pools/web/backends",
                                      {"name": "b", "endpoint": self.servers.endpoint("b")})
        self.assertEqual(status, 201)
        status, _, _ = yield inThread(api, admin, "PATCH", "/api/pools/web/backends/a",
                                      {"state": "maint"})
        self.assertEqual(status, 200)
        process.send_signal(signal.SIGTERM)
        yield eventually(lambda: process.poll() is not None, 15.0)
        self.etcd.members[0].kill()
        again = self.twistd(config)
        yield self.waitForAdmin(admin, again)
        line = yield inThread(firstLine, port)
        self.assertEqual(line, b"b")
        _, health, _ = yield inThread(api, admin, "GET", "/api/health")
        self.assertEqual(health["cluster"]["store"], "unreachable")
        status, _, _ = yield inThread(api, admin, "DELETE", "/api/pools/web/backends/b")
        self.assertEqual(status, 503)


class FirstStartTests(TestCase):
    """
    C{twistd lb} with an unreachable etcd and no snapshot.
    """

    @inlineCallbacks
    def test_unreachableFirstStart(self) -> Any:
        """
        It stops with status 1 and one line naming the etcd URLs.
        """
        work = os.path.abspath(self.mktemp())
        os.makedirs(work)
        url = f"http://127.0.0.1:{freePort()}"
        config = clusterConfig([url], [("a", "tcp:host=127.0.0.1:port=1")])
        config["admin"] = f"tcp:{freePort()}:interface=127.0.0.1"
        path = os.path.join(work, "lb.yaml")
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        process = spawn(self, [TWISTD, "--nodaemon", "--pidfile=", "lb", "--config", path],
                        work, dict(os.environ))
        yield eventually(lambda: process.poll() is not None, 15.0)
        output = process.stdout.read().decode()  # type: ignore[union-attr]
        lines = [line for line in output.splitlines() if "cannot reach etcd" in line]
        self.assertEqual(len(lines), 1, output)
        self.assertIn(url, lines[0])
        self.assertIn("no snapshot", lines[0])
        self.assertEqual(process.returncode, 1)
