"""
Worker processes, for real: C{twistd lb --workers N} as a subprocess, its
master and workers serving real backends over loopback (see
L{lbtwist.workers}); and the command line's checks of C{--workers}.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from lbtwist.tap import BadConfiguration, Options

from .support import Backends, freePort, inThread, sleep, spawn

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
TOKEN = "test-token"


def adminGet(port: int, path: str) -> Any:
    """
    The admin API's JSON answer to C{GET path} (blocking: run it in a thread).
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.loads(r.read())


def adminChange(port: int, method: str, path: str, body: dict[str, Any]) -> Any:
    """
    The admin API's JSON answer to a change (blocking: run it in a thread).
    """
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method=method,
        headers={"authorization": f"Bearer {TOKEN}", "content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as r:
        return json.loads(r.read())


def metricsText(port: int) -> str:
    """
    The admin API's C{/metrics} page (blocking).
    """
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return str(r.read().decode())


def series(text: str, name: str) -> dict[str, float]:
    """
    The values of the metric family C{name} in a Prometheus page, by the
    labels part of each line.
    """
    values = {}
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            labels, _, value = line.rpartition(" ")
            values[labels[len(name):]] = float(value)
    return values


def nameLine(port: int, host: str = "127.0.0.1") -> bytes | None:
    """
    Connect through the balancer and read the backend's name line
    (L{tests.support.NameOnConnect}); L{None} if the connection failed.
    """
    try:
        with socket.create_connection((host, port), timeout=5) as s:
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(64)
                if not chunk:
                    return None
                data += chunk
            return data.strip()
    except OSError:
        return None


def connections(port: int, count: int, parallel: int) -> list[bytes | None]:
    """
    C{count} new connections through the balancer, C{parallel} at a time,
    each reading the backend's name (blocking).
    """
    with ThreadPoolExecutor(parallel) as pool:
        return list(pool.map(nameLine, [port] * count))


def named(backends: Backends, *names: str) -> list[tuple[str, str]]:
    """
    The name and endpoint of each of C{names}.
    """
    return [(name, backends.endpoint(name)) for name in names]


class GroupTestCase(TestCase):
    """
    Starts a master and its workers as users start them.
    """

    timeout = 60

    def startGroup(self, workers: int, backends: list[tuple[str, str]],
                   mode: str = "tcp", grace: float = 2.0, **top: Any) -> Any:
        """
        Write a configuration with one listener over C{backends} (name and
        endpoint), start C{twistd lb --workers N} with it, and wait until
        every worker serves; the result has C{port}, C{admin} and
        C{process}.
        """
        group = self.spawnGroup(workers, backends, mode, grace, **top)
        return group.waitServing(self).addCallback(lambda _: group)

    @inlineCallbacks
    def assertEveryWorkerServed(self, group: _Group) -> Any:
        """
        Every worker of C{group} has served requests.
        """
        workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        self.assertTrue(all(w["requests"] > 0 for w in workers), workers)

    def spawnGroup(self, workers: int, backends: list[tuple[str, str]], mode: str = "tcp",
                   grace: float = 2.0, listen: str | None = None, before: Sequence[str] = (),
                   env: dict[str, str] | None = None, inFile: bool = False,
                   prefix: Sequence[str] = (), **top: Any) -> _Group:
        """
        Start C{twistd lb --workers N} as L{startGroup} does (after the
        command C{before}, if given, and listening on C{listen}), without
        waiting.  With C{inFile}, the number of workers is the file's
        C{workers} instead of C{--workers}; C{prefix} runs first (as
        C{prlimit}, which then execs twistd).
        """
        work = FilePath(self.mktemp())
        work.makedirs()
        port, admin = freePort(), freePort()
        config = {
            "admin": f"tcp:{admin}:interface=127.0.0.1", "admin-token": TOKEN,
            "status-interval": 3600,
            "listeners": [{"name": "front", "mode": mode,
                           "listen": listen or f"tcp:{port}:interface=127.0.0.1"}],
            "pools": {"web": {
                "backends": [{"name": n, "endpoint": e} for n, e in backends],
                "health": {"interval": "200ms", "rise": 1, "fall": 1},
            }},
            **top,
        }
        if inFile:
            config["workers"] = workers
        work.child("lb.yaml").setContent(yaml.safe_dump(config).encode())
        before = [*before, f"-l127.0.0.1:{port}"] if before else []
        count = [] if inFile else ["--workers", str(workers)]
        process = spawn(self, [*prefix, *before, TWISTD, "--nodaemon", "--pidfile=", "lb",
                               "--config", "lb.yaml", *count, "--grace", str(grace)],
                        work.path, {**os.environ, **(env or {})})
        return _Group(port, admin, process, workers, work.path)



class WorkerGroupTests(GroupTestCase):
    """
    Workers share the listeners and are supervised.
    """

    @inlineCallbacks
    def test_shareOfConnections(self) -> Any:
        """
        Four workers accept on one shared socket, and each takes a
        reasonable share (at least 10%, a quarter being even) of 2,000 new
        connections made 16 at a time; the per-worker counts add up to the
        total the admin API gives.
        """
        backends = Backends(self)
        backends.start("a")
        group = yield self.startGroup(4, named(backends, "a"))
        answers = yield inThread(connections, group.port, 2000, 16)
        self.assertEqual(answers.count(b"a"), 2000)
        workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        accepted = [w["accepted"] for w in workers]
        self.assertEqual(sum(accepted), 2000, workers)
        self.assertTrue(all(a >= 200 for a in accepted), f"accepted per worker: {accepted}")
        pools = yield inThread(adminGet, group.admin, "/api/pools")
        self.assertEqual(pools["total"]["requests"], 2000)
        yield group.stop(self)

    @inlineCallbacks
    def test_killedWorkerReplaced(self) -> Any:
        """
        A worker killed (C{SIGKILL}) while clients come is started again;
        connections held by the other workers go on, only the killed
        worker's own are cut, and new clients are all served.
        """
        backends = Backends(self)
        backends.start("a")
        group = yield self.startGroup(3, named(backends, "a"))
        held = yield inThread(_hold, group.port, 30)
        for s in held:
            self.addCleanup(s.close)
        before = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        victim = max(before, key=lambda w: w["active"])
        self.assertEqual(sum(w["active"] for w in before), 30)
        load = inThread(connections, group.port, 600, 8)
        yield sleep(0.3)
        os.kill(victim["pid"], signal.SIGKILL)
        answers = yield load
        # Only connections in flight on the killed worker may fail: at most
        # one per client thread.
        self.assertLessEqual(answers.count(None), 8)
        alive = yield inThread(_echoes, held)
        self.assertEqual(alive, 30 - victim["active"])
        # (The master may learn of the death after the load ends, on a busy
        # machine: wait for the replacement, not only for serving workers.)
        deadline = time.monotonic() + 20
        while True:
            after = yield group.waitServing(self)
            replaced = next(w for w in after if w["worker"] == victim["worker"])
            if replaced["pid"] != victim["pid"] or time.monotonic() > deadline:
                break
            yield sleep(0.1)
        self.assertNotEqual(replaced["pid"], victim["pid"])
        self.assertEqual(replaced["restarts"], 1)
        answers = yield inThread(connections, group.port, 200, 8)
        self.assertEqual(answers.count(b"a"), 200)
        for s in held:
            s.close()
        yield group.stop(self)


    @inlineCallbacks
    def test_wedgedWorkerReplaced(self) -> Any:
        """
        A worker alive but not running its reactor (C{SIGSTOP}) is killed
        and replaced within C{worker-watchdog} (2 s here) and the time a
        worker takes to start: the clients it held are closed rather than
        left hanging, the other worker (beating all along) is untouched,
        and new clients are all served.
        """
        backends = Backends(self)
        backends.start("a")
        group = yield self.startGroup(2, named(backends, "a"), **{"worker-watchdog": "2s"})
        held = yield inThread(_hold, group.port, 10)
        for s in held:
            self.addCleanup(s.close)
        before = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        victim = max(before, key=lambda w: w["active"])
        other = next(w for w in before if w is not victim)
        stopped = time.monotonic()
        os.kill(victim["pid"], signal.SIGSTOP)
        replaced = victim
        try:
            while True:
                workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
                replaced = next(w for w in workers if w["worker"] == victim["worker"])
                took = time.monotonic() - stopped
                if (replaced["pid"] != victim["pid"] and replaced["state"] == "serving"
                        or took > 8):
                    break
                yield sleep(0.1)
        finally:
            if replaced["pid"] == victim["pid"]:
                # Not replaced: still the group's worker, never left stopped.
                os.kill(victim["pid"], signal.SIGCONT)
        self.assertNotEqual(replaced["pid"], victim["pid"])
        self.assertEqual(replaced["restarts"], 1)
        self.assertLess(took, 6.0)
        self.assertEqual(
            [(w["pid"], w["restarts"]) for w in workers if w["worker"] == other["worker"]],
            [(other["pid"], 0)])
        alive = yield inThread(_echoes, held)
        self.assertEqual(alive, 10 - victim["active"])
        answers = yield inThread(connections, group.port, 100, 4)
        self.assertEqual(answers.count(b"a"), 100)
        yield group.stop(self)


class ControlPlaneTests(GroupTestCase):
    """
    The master speaks for every worker: changes, health and counters.
    """

    @inlineCallbacks
    def test_changeReachesEveryWorker(self) -> Any:
        """
        A change through the admin API (a backend put in maintenance, one
        added) is answered once every worker applied it: the next clients,
        whichever worker accepts them, see it.
        """
        backends = Backends(self)
        for name in ("a", "b", "c"):
            backends.start(name)
        group = yield self.startGroup(3, named(backends, "a", "b"))
        yield inThread(adminChange, group.admin, "PATCH", "/api/pools/web/backends/b",
                       {"state": "maint"})
        answers = yield inThread(connections, group.port, 150, 6)
        self.assertEqual(set(answers), {b"a"})
        yield inThread(adminChange, group.admin, "POST", "/api/pools/web/backends",
                       {"name": "c", "endpoint": backends.endpoint("c")})
        yield inThread(adminChange, group.admin, "PATCH", "/api/pools/web/backends/a",
                       {"state": "maint"})
        answers = yield inThread(connections, group.port, 150, 6)
        self.assertEqual(set(answers), {b"c"})
        # Every worker served some of those clients, each with the change.
        yield self.assertEveryWorkerServed(group)
        yield group.stop(self)

    @inlineCallbacks
    def test_poolsAndRoutesReachEveryWorker(self) -> Any:
        """
        A pool created and a route list set through the master's API are
        applied by every worker before the answers: the next clients,
        whichever worker accepts them, take the new route to the new pool;
        a pool in use cannot be removed.
        """
        backends = Backends(self)
        for name in ("a", "c"):
            backends.start(name)
        group = yield self.startGroup(3, named(backends, "a"))
        yield inThread(adminChange, group.admin, "POST", "/api/pools",
                       {"name": "other", "backends": [
                           {"name": "c", "endpoint": backends.endpoint("c")}]})
        yield inThread(adminChange, group.admin, "PUT", "/api/listeners/front/routes",
                       [{"name": "local", "match": {"source": "127.0.0.0/8"}, "pool": "other"}])
        answers = yield inThread(connections, group.port, 150, 6)
        self.assertEqual(set(answers), {b"c"})
        yield self.assertEveryWorkerServed(group)
        yield group.stop(self)

    @inlineCallbacks
    def test_filePoolReachesEveryWorker(self) -> Any:
        """
        A pool and a route to it added to the file and reloaded through the
        master: the master checks the new pool's backend, and every worker
        routes the next clients to it.
        """
        backends = Backends(self)
        for name in ("a", "c"):
            backends.start(name)
        group = yield self.startGroup(2, named(backends, "a"))
        path = os.path.join(group.workdir, "lb.yaml")
        with open(path) as f:
            data = yaml.safe_load(f)
        data["pools"]["other"] = {
            "backends": [{"name": "c", "endpoint": backends.endpoint("c")}],
            "health": {"interval": "200ms", "rise": 1, "fall": 1}}
        data["listeners"][0]["routes"] = [
            {"name": "local", "match": {"source": "127.0.0.0/8"}, "pool": "other"}]
        data["listeners"][0]["pool"] = "web"
        with open(path, "w") as f:
            yaml.safe_dump(data, f)
        answer = yield inThread(adminChange, group.admin, "POST", "/api/reload", {})
        self.assertEqual(answer, {"status": "reloaded"})
        answers = yield inThread(connections, group.port, 100, 6)
        self.assertEqual(set(answers), {b"c"})
        for _ in range(50):
            pools = yield inThread(adminGet, group.admin, "/api/pools/other")
            if pools["backends"][0]["health"] == "up":
                break
            yield sleep(0.1)
        self.assertEqual(pools["backends"][0]["health"], "up")
        yield group.stop(self)

    @inlineCallbacks
    def test_clusterRevisionReachesEveryWorker(self) -> Any:
        """
        A master in a cluster applies revisions another balancer wrote (a
        pool and its backend, then a route list sending to it, put straight
        into etcd) and pushes them: every worker's next clients follow.
        """
        from .etcdhelpers import b64, call, startEtcd

        etcd = yield startEtcd(self)
        backends = Backends(self)
        for name in ("a", "c"):
            backends.start(name)
        group = yield self.startGroup(
            2, named(backends, "a"), cluster={"etcd": etcd.urls, "prefix": "/lbt"})
        for key, value in (
            ("/lbt/pools/other", {"health": {"interval": "200ms", "rise": 1, "fall": 1}}),
            ("/lbt/pools/other/backends/c", {"endpoint": backends.endpoint("c")}),
            ("/lbt/routes/front", [{"name": "local", "match": {"source": "127.0.0.0/8"},
                                   "pool": "other"}]),
        ):
            yield inThread(call, etcd.url, "/v3/kv/put",
                           {"key": b64(key), "value": b64(json.dumps(value))})
        for _ in range(50):
            answers = yield inThread(connections, group.port, 60, 6)
            if set(answers) == {b"c"}:
                break
            yield sleep(0.1)
        self.assertEqual(set(answers), {b"c"})
        yield self.assertEveryWorkerServed(group)
        yield group.stop(self)

    @inlineCallbacks
    def test_healthReachesEveryWorker(self) -> Any:
        """
        A backend that stops is found down by the master's one probe, and
        no worker sends it a client after that.
        """
        backends = Backends(self)
        backends.start("a")
        backends.start("b")
        group = yield self.startGroup(3, named(backends, "a", "b"))
        answers = yield inThread(connections, group.port, 60, 6)
        self.assertEqual(set(answers), {b"a", b"b"})
        yield backends.stop("b")
        for _ in range(50):
            pool = yield inThread(adminGet, group.admin, "/api/pools/web")
            b = next(x for x in pool["backends"] if x["name"] == "b")
            if b["health"] == "down":
                break
            yield sleep(0.1)
        self.assertEqual(b["health"], "down")
        # Every worker has it once each applied the master's push.
        for _ in range(50):
            workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
            if {w["registry"] for w in workers} == {"applied"}:
                break
            yield sleep(0.05)
        self.assertEqual({w["registry"] for w in workers}, {"applied"})
        pool = yield inThread(adminGet, group.admin, "/api/pools/web")
        sentBefore = next(x for x in pool["backends"] if x["name"] == "b")["total"]
        answers = yield inThread(connections, group.port, 150, 6)
        self.assertEqual(set(answers), {b"a"})
        pool = yield inThread(adminGet, group.admin, "/api/pools/web")
        b = next(x for x in pool["backends"] if x["name"] == "b")
        self.assertEqual(b["total"], sentBefore)
        yield group.stop(self)

    @inlineCallbacks
    def test_countersAreTotals(self) -> Any:
        """
        The admin API and C{/metrics} give the totals over every worker,
        and C{/metrics} also each worker's own series.
        """
        backends = Backends(self)
        backends.start("a")
        backends.start("b")
        group = yield self.startGroup(3, named(backends, "a", "b"))
        answers = yield inThread(connections, group.port, 300, 6)
        self.assertEqual(len([x for x in answers if x]), 300)
        pools = yield inThread(adminGet, group.admin, "/api/pools")
        self.assertEqual(pools["total"]["requests"], 300)
        page = yield inThread(metricsText, group.admin)
        requests = series(page, "lbtwist_backend_requests_total")
        self.assertEqual(sum(requests.values()), 300)
        self.assertEqual(series(page, "lbtwist_listener_accepted_total"), {'{listener="front"}': 300})
        perWorker = series(page, "lbtwist_worker_accepted_total")
        self.assertEqual(sorted(perWorker), ['{worker="1"}', '{worker="2"}', '{worker="3"}'])
        self.assertEqual(sum(perWorker.values()), 300)
        yield group.stop(self)


# Upgrades per test under wrk (make soak runs 10).
UPGRADES = int(os.environ.get("LBTWIST_UPGRADES", "3"))


def httpBackend(case: TestCase) -> str:
    """
    Start C{python -m lbtwist.testing.backend} (a process of its own, so
    that wrk's load does not run in the test's reactor); its endpoint.
    """
    log = case.mktemp()
    process = spawn(case, [sys.executable, "-m", "lbtwist.testing.backend", "--port", "0",
                           "--name", "a", "--log", log], os.getcwd(), dict(os.environ))
    assert process.stdout is not None
    line = process.stdout.readline().decode()
    if not line.startswith("listening on "):
        raise AssertionError(f"the backend did not start: {line}")
    return f"tcp:host=127.0.0.1:port={int(line.split()[-1])}"


def wrkReport(output: str) -> dict[str, int]:
    """
    The requests, socket errors and non-2xx answers of a wrk report.
    """
    report = {"requests": 0, "errors": 0, "non2xx": 0}
    for line in output.splitlines():
        words = line.split()
        if "requests in" in line:
            report["requests"] = int(words[0])
        elif line.strip().startswith("Socket errors:"):
            report["errors"] = sum(int(w.strip(",")) for w in words if w.strip(",").isdigit())
        elif line.strip().startswith("Non-2xx"):
            report["non2xx"] = int(words[-1])
    return report


def openTunnel(port: int) -> socket.socket:
    """
    A WebSocket upgrade through the balancer, once the backend's 101 came
    (blocking).
    """
    from .test_http_features import WEBSOCKET_HEADERS

    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\n" + WEBSOCKET_HEADERS + b"\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1000)
        if not chunk:
            raise AssertionError(f"no 101: {head!r}")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101 "):
        raise AssertionError(f"no 101: {head!r}")
    return s


def exchange(s: socket.socket, word: bytes) -> bytes:
    """
    Send C{word} through a tunnel and read the backend's echo; C{b""}
    once the tunnel is closed (blocking).
    """
    try:
        s.sendall(word)
        echo = b""
        while len(echo) < len(word) + len(b"echo:"):
            chunk = s.recv(1000)
            if not chunk:
                return b""
            echo += chunk
        return echo
    except OSError:
        return b""


class UpgradeTests(GroupTestCase):
    """
    A new generation of workers takes over the sockets without dropping a
    request, a connection or a tunnel.
    """

    @inlineCallbacks
    def upgradesUnderLoad(self, *wrkOptions: str) -> Any:
        """
        Run wrk through two workers while the group is upgraded
        L{UPGRADES} times; wrk must see no error of any kind.
        """
        if not os.path.exists("/usr/bin/wrk"):
            raise SkipTest("wrk is not installed (make test-deps)")
        group = yield self.startGroup(2, [("a", httpBackend(self))], mode="http")
        seconds = int(2.5 * UPGRADES) + 2
        wrk = spawn(self, ["wrk", "-t2", "-c16", f"-d{seconds}s", *wrkOptions,
                           f"http://127.0.0.1:{group.port}/"], os.getcwd(), dict(os.environ))
        yield sleep(1.0)
        for n in range(UPGRADES):
            answer = yield inThread(adminChange, group.admin, "POST", "/api/upgrade", {})
            self.assertEqual(answer["generation"], n + 2)
        output, _ = yield inThread(wrk.communicate)
        report = wrkReport(output.decode())
        self.assertEqual((report["errors"], report["non2xx"]), (0, 0), output.decode())
        self.assertGreater(report["requests"], 1000, output.decode())
        workers = yield group.waitServing(self)
        self.assertEqual({w["generation"] for w in workers if w["state"] == "serving"},
                         {UPGRADES + 1})
        yield group.stop(self)

    def test_upgradesKeepAlive(self) -> Any:
        """
        Keep-alive clients lose no request over the upgrades: a retiring
        worker answers their next request with C{Connection: close}.
        """
        return self.upgradesUnderLoad()

    def test_upgradesNewConnections(self) -> Any:
        """
        Clients that connect for each request (C{Connection: close}) lose
        none over the upgrades: the accept queue is shared, never closed.
        """
        return self.upgradesUnderLoad("-H", "Connection: close")

    @inlineCallbacks
    def test_websocketOutlivesUpgrade(self) -> Any:
        """
        A WebSocket opened before an upgrade keeps exchanging messages with
        the old worker after the new generation serves, until the client
        closes it; one left open is closed when the grace ends.
        """
        from .httphelpers import RecordingBackend
        from .support import reactor
        from .test_http_features import upgradeAccepted

        backend = RecordingBackend("a", upgradeAccepted)
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(backend.port.stopListening)
        group = yield self.startGroup(2, [("a", backend.endpoint)], mode="http", grace=3.0)
        kept = yield inThread(openTunnel, group.port)
        left = yield inThread(openTunnel, group.port)
        self.addCleanup(kept.close)
        self.addCleanup(left.close)
        self.assertEqual((yield inThread(exchange, kept, b"before")), b"echo:before")
        answer = yield inThread(adminChange, group.admin, "POST", "/api/upgrade", {})
        self.assertEqual(answer["generation"], 2)
        for n in range(5):
            yield sleep(0.2)
            self.assertEqual((yield inThread(exchange, kept, b"after%d" % n)), b"echo:after%d" % n)
        workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        self.assertTrue(any(w["state"] == "retiring" for w in workers), workers)
        kept.close()
        # The grace (3 s from the upgrade) ends the old worker, and the
        # tunnel it still holds: waited for within a bound, not for exactly
        # the grace (a loaded machine runs late).
        for _ in range(150):
            workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
            if {w["generation"] for w in workers} == {2}:
                break
            yield sleep(0.1)
        self.assertEqual({w["generation"] for w in workers}, {2})
        self.assertEqual((yield inThread(exchange, left, b"late")), b"")
        yield group.stop(self)

    @inlineCallbacks
    def test_failedUpgrade(self) -> Any:
        """
        An upgrade whose new workers cannot start (a listener that cannot
        listen) is answered 500 with the reason; the old generation serves on.
        """
        backends = Backends(self)
        backends.start("a")
        group = yield self.startGroup(2, named(backends, "a"))
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        config = FilePath(group.workdir).child("lb.yaml")
        data = yaml.safe_load(config.getContent())
        data["listeners"].append({"name": "extra", "listen":
                                  f"tcp:{taken.getsockname()[1]}:interface=127.0.0.1"})
        config.setContent(yaml.safe_dump(data).encode())
        error = yield inThread(_upgradeError, group.admin)
        self.assertEqual(error[0], 500)
        self.assertIn("listener extra cannot listen on", error[1])
        self.assertIn("address already in use", error[1].lower())
        answers = yield inThread(connections, group.port, 20, 4)
        self.assertEqual(set(answers), {b"a"})
        workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        self.assertEqual({w["generation"] for w in workers}, {1})
        yield group.stop(self)


class ListenerUpgradeTests(GroupTestCase):
    """
    An upgrade applies listener changes a reload cannot.
    """

    def test_listenersReplaced(self) -> Any:
        """
        A listener the file adds is bound and served by the new generation;
        one it removes stops accepting once the old generation is gone.
        """
        return self.replaceListeners(2)

    def test_oneWorkerWithMaster(self) -> Any:
        """
        With C{master: true}, one worker is upgraded as two are: the
        listener change a single process needs a restart for applies.
        """
        return self.replaceListeners(1, inFile=True, master=True)

    @inlineCallbacks
    def test_listenerMoved(self) -> Any:
        """
        A listener moved on its port: a reload names the change and leaves
        it, saying an upgrade applies it; an upgrade that renames it and writes its endpoint another way
        hands its socket on (no client refused meanwhile); one that moves
        it to the wildcard address, and then to another address, which
        overlap the one it leaves, makes it listen there (the old socket
        stops listening first); the other listener serves all along.
        """
        backends = Backends(self)
        backends.start("a")
        port, other = freePort(), freePort()
        listeners = [{"name": "front", "mode": "tcp", "listen": f"tcp:{port}:interface=127.0.0.1"},
                     {"name": "other", "mode": "tcp", "listen": f"tcp:{other}:interface=127.0.0.1"}]
        group = yield self.startGroup(2, named(backends, "a"), listeners=listeners)

        @inlineCallbacks
        def upgrade(name: str, listen: str, loaded: int) -> Any:
            listeners[0] = {"name": name, "mode": "tcp", "listen": listen}
            group.edit(listeners=listeners)
            done = threading.Event()
            load = inThread(_nameLinesUntil, loaded, done)
            try:
                answer = yield inThread(adminChange, group.admin, "POST", "/api/upgrade", {})
            except urllib.error.HTTPError as e:
                self.fail(f"upgrade to {listen} failed: {e.read().decode()}")
            finally:
                done.set()
            answers = yield load
            return answer["generation"], answers

        group.edit(listeners=[{**listeners[0], "listen": f"tcp:{port}:interface=127.0.0.2"},
                              listeners[1]])
        answer = yield inThread(adminChange, group.admin, "POST", "/api/reload", {})
        self.assertEqual(answer["restartNeeded"], ["listeners"])
        self.assertEqual(answer["upgradeApplies"], ["listeners"])
        self.assertEqual((yield inThread(nameLine, port)), b"a")
        generation, answers = yield upgrade("web", f"tcp:port={port}:interface=127.0.0.1", port)
        self.assertEqual(generation, 2)
        self.assertEqual(set(answers), {b"a"})
        generation, answers = yield upgrade("web", f"tcp:{port}", other)
        self.assertEqual(generation, 3)
        self.assertEqual(set(answers), {b"a"})
        self.assertEqual((yield inThread(nameLine, port, "127.0.0.2")), b"a")
        generation, answers = yield upgrade("web", f"tcp:{port}:interface=127.0.0.2", other)
        self.assertEqual(generation, 4)
        self.assertEqual(set(answers), {b"a"})
        self.assertEqual((yield inThread(nameLine, port, "127.0.0.2")), b"a")
        for _ in range(50):
            refused = yield inThread(nameLine, port)
            if refused is None:
                break
            yield sleep(0.1)
        self.assertIsNone(refused)
        listed = yield inThread(adminGet, group.admin, "/api/listeners")
        self.assertEqual([x["name"] for x in listed], ["web", "other"])
        group.port = other
        yield group.stop(self)

    @inlineCallbacks
    def test_listenerMoveRefused(self) -> Any:
        """
        A listener moved to the wildcard address of its port while another
        process listens on an address of that port: the upgrade fails
        saying why, and the socket it was moved from listens again, served
        by the running workers as before.
        """
        backends = Backends(self)
        backends.start("a")
        group = yield self.startGroup(2, named(backends, "a"))
        taken = socket.socket()
        self.addCleanup(taken.close)
        taken.bind(("127.0.0.2", group.port))
        taken.listen(1)
        group.edit(listeners=[{"name": "front", "mode": "tcp", "listen": f"tcp:{group.port}"}])
        with self.assertRaises(urllib.error.HTTPError) as raised:
            yield inThread(adminChange, group.admin, "POST", "/api/upgrade", {})
        self.assertEqual(raised.exception.code, 500)
        self.assertIn(f"listener front cannot listen on tcp:{group.port}: Address already in use",
                      raised.exception.read().decode())
        answers = yield inThread(connections, group.port, 40, 4)
        self.assertEqual(answers.count(b"a"), 40)
        yield self.assertEveryWorkerServed(group)
        workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        self.assertEqual({w["generation"] for w in workers}, {1})
        yield group.stop(self)

    @inlineCallbacks
    def replaceListeners(self, workers: int, **top: Any) -> Any:
        """
        Start C{workers} workers, replace the file's listener and upgrade:
        the new one serves, the old one is closed.
        """
        backends = Backends(self)
        backends.start("a")
        group = yield self.startGroup(workers, named(backends, "a"), **top)
        if "master" in top:
            listed = yield inThread(adminGet, group.admin, "/api/workers")
            self.assertEqual([w["state"] for w in listed["workers"]], ["serving"])
        config = FilePath(group.workdir).child("lb.yaml")
        data = yaml.safe_load(config.getContent())
        other = freePort()
        data["listeners"] = [{"name": "other", "listen": f"tcp:{other}:interface=127.0.0.1"}]
        config.setContent(yaml.safe_dump(data).encode())
        answer = yield inThread(adminChange, group.admin, "POST", "/api/upgrade", {})
        self.assertEqual(answer["generation"], 2)
        answers = yield inThread(connections, other, 20, 4)
        self.assertEqual(set(answers), {b"a"})
        for _ in range(50):
            refused = yield inThread(nameLine, group.port)
            if refused is None:
                break
            yield sleep(0.1)
        self.assertIsNone(refused)
        listeners = yield inThread(adminGet, group.admin, "/api/listeners")
        self.assertEqual([(x["name"], x["accepted"]) for x in listeners], [("other", 20)])
        group.port = other
        yield group.stop(self)


def _nameLinesUntil(port: int, done: threading.Event) -> list[bytes | None]:
    """
    New connections through the balancer, two at a time, each reading the
    backend's name, until C{done} is set (at most 20 s; blocking).
    """
    deadline = time.monotonic() + 20

    def one() -> list[bytes | None]:
        answers = []
        while not done.is_set() and time.monotonic() < deadline:
            answers.append(nameLine(port))
        return answers

    with ThreadPoolExecutor(2) as pool:
        return [answer for part in pool.map(lambda _: one(), range(2)) for answer in part]


def _descriptors(pid: int) -> list[tuple[int, bool]]:
    """
    The file descriptors over 2 that process C{pid} holds, each with
    whether it is inheritable (no close-on-exec flag).
    """
    found = []
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            with open(f"/proc/{pid}/fdinfo/{name}") as f:
                flags = int(f.read().split("flags:")[1].split()[0], 8)
        except (OSError, IndexError):
            continue
        if int(name) > 2:
            found.append((int(name), not flags & os.O_CLOEXEC))
    return sorted(found)


@inlineCallbacks
def _fewestDescriptors(pid: int) -> Any:
    """
    L{_descriptors} of process C{pid} at its fewest over a second (the
    health checks' connections come and go).
    """
    samples = []
    for _ in range(10):
        samples.append(_descriptors(pid))
        yield sleep(0.1)
    return min(samples, key=len)


def _zombies(pid: int) -> list[int]:
    """
    The children of process C{pid} that exited and were not reaped.
    """
    zombies = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == pid:
            zombies.append(int(name))
    return zombies


def alive(pid: int) -> bool:
    """
    Whether process C{pid} exists (a zombie, not reaped, does too).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class ReexecTests(GroupTestCase):
    """
    An upgrade that changes the master itself re-executes it, same PID,
    its workers serving on across the exec (see
    L{lbtwist.workers._handover}).
    """

    @inlineCallbacks
    def reexec(self, group: _Group, generation: int, reasons: list[str],
               hangups: Sequence[float] = (), **changes: Any) -> Any:
        """
        Change the file's top-level keys, upgrade: the master answers it
        re-executes itself for C{reasons}; wait until C{generation} serves
        (on the new admin port, if it changed); the workers' list.  The
        master gets C{SIGHUP} C{hangups} seconds after the answer.
        """
        group.edit(**changes)
        answer = yield inThread(adminChange, group.admin, "POST", "/api/upgrade", {})
        for delay in hangups:
            yield sleep(delay)
            group.process.send_signal(signal.SIGHUP)
        moved = {}
        if "admin" in changes:
            group.admin = int(changes["admin"].split(":")[1])
            moved = {"admin": f"http://127.0.0.1:{group.admin}"}
        self.assertEqual(answer, {"generation": generation, "master": "re-executing",
                                  "reasons": reasons, **moved})
        workers = yield group.waitGeneration(self, generation)
        # The same process, which never exited, serves the new generation.
        self.assertIsNone(group.process.poll())
        return workers

    @inlineCallbacks
    def test_masterSettingsUnderLoad(self) -> Any:
        """
        Under wrk's keep-alive load, an upgrade that changes the admin
        port, C{status-interval} and the number of workers (2 to 3)
        re-executes the master: no socket error, no non-2xx answer; the new
        admin port answers with 3 workers of the new generation; the old
        workers exit by themselves within the grace.
        """
        if not os.path.exists("/usr/bin/wrk"):
            raise SkipTest("wrk is not installed (make test-deps)")
        group = yield self.startGroup(2, [("a", httpBackend(self))], mode="http", inFile=True)
        old = [w["pid"] for w in (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]]
        wrk = spawn(self, ["wrk", "-t2", "-c16", "-d8s", f"http://127.0.0.1:{group.port}/"],
                    os.getcwd(), dict(os.environ))
        yield sleep(1.5)
        oldAdmin, newAdmin = group.admin, freePort()
        group.workers = 3
        workers = yield self.reexec(
            group, 2, ["status-interval", "admin", "workers"], workers=3,
            admin=f"tcp:{newAdmin}:interface=127.0.0.1", **{"status-interval": 1800})
        self.assertEqual(len([w for w in workers if w["generation"] == 2]), 3)
        self.assertFalse(_listening(oldAdmin))
        for _ in range(50):
            if not any(alive(pid) for pid in old):
                break
            yield sleep(0.1)
        self.assertEqual([pid for pid in old if alive(pid)], [])
        output, _ = yield inThread(wrk.communicate)
        report = wrkReport(output.decode())
        self.assertEqual((report["errors"], report["non2xx"]), (0, 0), output.decode())
        self.assertGreater(report["requests"], 1000, output.decode())
        workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        self.assertEqual([(w["generation"], w["state"]) for w in workers],
                         [(2, "serving")] * 3)
        yield group.stop(self)

    @inlineCallbacks
    def test_threeReexecsLeakNothing(self) -> Any:
        """
        Three re-execs in a row leave the master with the file descriptors
        it started with, none inheritable (those handed over are adopted
        and closed, or made close-on-exec again), and no zombie child; the
        old workers, each retired once, are logged as having finished, not
        as killed; clients are served by the last generation.  Reloads
        (C{SIGHUP}) sent while the new image starts wait until it handles
        them, instead of ending the master.
        """
        backends = Backends(self)
        backends.start("a")
        group = yield self.startGroup(2, named(backends, "a"), inFile=True, grace=1.0)
        pid = group.process.pid
        before = yield _fewestDescriptors(pid)
        for generation in (2, 3, 4):
            yield self.reexec(group, generation, ["status-interval"],
                              hangups=(0.3, 0.3) if generation == 2 else (),
                              **{"status-interval": 3600 - generation})
            for _ in range(50):
                workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
                if all(w["generation"] == generation for w in workers):
                    break
                yield sleep(0.1)
            self.assertEqual({w["generation"] for w in workers}, {generation})
        after = yield _fewestDescriptors(pid)
        self.assertEqual((len(after), [fd for fd, inheritable in after if inheritable]),
                         (len(before), []))
        self.assertEqual(_zombies(pid), [])
        answers = yield inThread(connections, group.port, 10, 2)
        self.assertEqual(answers, [b"a"] * 10)
        yield group.stop(self)
        assert group.process.stdout is not None
        output = group.process.stdout.read().decode()
        self.assertEqual(output.count("exited: finished its in-flight work"), 6, output)
        self.assertNotIn("killed by signal", output)

    @inlineCallbacks
    def test_codeChange(self) -> Any:
        """
        With nothing changed on disk, an upgrade starts new workers only;
        once a module of the code the master runs is touched, the next
        upgrade re-executes the master, and clients are served throughout.
        """
        import shutil

        import lbtwist

        code = os.path.abspath(self.mktemp())
        shutil.copytree(os.path.dirname(lbtwist.__file__), os.path.join(code, "lbtwist"),
                        ignore=shutil.ignore_patterns("__pycache__"))
        path = os.pathsep.join(filter(None, [code, os.environ.get("PYTHONPATH")]))
        backends = Backends(self)
        backends.start("a")
        group = yield self.startGroup(2, named(backends, "a"), env={"PYTHONPATH": path})
        answer = yield inThread(adminChange, group.admin, "POST", "/api/upgrade", {})
        self.assertEqual((answer["status"], answer["generation"]), ("upgraded", 2))
        module = os.path.join(code, "lbtwist", "status.py")
        info = os.stat(module)
        os.utime(module, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
        yield self.reexec(group, 3, ["code"])
        answers = yield inThread(connections, group.port, 40, 4)
        self.assertEqual(answers, [b"a"] * 40)
        answer = yield inThread(adminChange, group.admin, "POST", "/api/upgrade", {})
        self.assertEqual((answer["status"], answer["generation"]), ("upgraded", 4))
        yield group.stop(self)

    @inlineCallbacks
    def test_badMasterSetting(self) -> Any:
        """
        A master setting the running code refuses (an admin endpoint that
        is none), and one only the new image's pre-flight refuses (more
        workers than the file-descriptor limit allows): each upgrade is
        answered 500 naming the key; the master and its workers are the
        same and serve on.
        """
        backends = Backends(self)
        backends.start("a")
        group = yield self.startGroup(2, named(backends, "a"), inFile=True,
                                      prefix=["prlimit", "--nofile=512:512", "--"])
        before = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        group.edit(admin="nonsense:1")
        status, error = yield inThread(_upgradeError, group.admin)
        self.assertEqual(status, 500)
        self.assertIn("the configuration on disk is not valid: admin", error)
        group.edit(admin=f"tcp:{group.admin}:interface=127.0.0.1", workers=200)
        status, error = yield inThread(_upgradeError, group.admin)
        self.assertEqual(status, 500)
        self.assertIn("the new master would not start: lbtwist: invalid configuration: "
                      "workers: 200 workers need about", error)
        self.assertIn("over its limit of 512", error)
        after = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        self.assertEqual([(w["pid"], w["generation"], w["state"]) for w in after],
                         [(w["pid"], 1, "serving") for w in before])
        answers = yield inThread(connections, group.port, 20, 4)
        self.assertEqual(answers, [b"a"] * 20)
        self.assertIsNone(group.process.poll())
        yield group.stop(self)

    @inlineCallbacks
    def test_websocketOutlivesReexec(self) -> Any:
        """
        A WebSocket opened before a re-exec upgrade keeps exchanging
        messages with its worker, now the new image's retiring one, until
        the client closes it.
        """
        from .httphelpers import RecordingBackend
        from .support import reactor
        from .test_http_features import upgradeAccepted

        backend = RecordingBackend("a", upgradeAccepted)
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(backend.port.stopListening)
        group = yield self.startGroup(2, [("a", backend.endpoint)], mode="http", grace=10.0)
        kept = yield inThread(openTunnel, group.port)
        self.addCleanup(kept.close)
        self.assertEqual((yield inThread(exchange, kept, b"before")), b"echo:before")
        yield self.reexec(group, 2, ["status-interval"], **{"status-interval": 1800})
        for n in range(5):
            yield sleep(0.2)
            self.assertEqual((yield inThread(exchange, kept, b"after%d" % n)), b"echo:after%d" % n)
        workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        self.assertEqual([w["state"] for w in workers if w["generation"] == 1], ["retiring"])
        kept.close()
        for _ in range(50):
            workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
            if {w["generation"] for w in workers} == {2}:
                break
            yield sleep(0.1)
        self.assertEqual({w["generation"] for w in workers}, {2})
        yield group.stop(self)


class SystemdTests(GroupTestCase):
    """
    Socket activation and readiness, with C{systemd-socket-activate}.
    """

    @inlineCallbacks
    def activated(self, workers: int) -> Any:
        """
        systemd binds the listener and starts twistd on the first client,
        which is served (by workers, if any, through the master); systemd
        hears C{READY=1} once every worker serves.
        """
        if not os.path.exists("/usr/bin/systemd-socket-activate"):
            raise SkipTest("systemd-socket-activate is not installed (Debian's systemd)")
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(notify.close)
        path = os.path.abspath(self.mktemp())
        notify.bind(path)
        notify.settimeout(20)
        backends = Backends(self)
        backends.start("a")
        group = self.spawnGroup(
            workers, named(backends, "a"), listen="systemd:domain=INET:name=front",
            before=["systemd-socket-activate", "--fdname=front", "-E", f"NOTIFY_SOCKET={path}"])
        for _ in range(50):
            if os.path.exists(os.path.join(group.workdir, "lb.yaml")) and _listening(group.port):
                break
            yield sleep(0.1)
        first = yield inThread(nameLine, group.port)
        if first != b"a":
            group.process.kill()
            self.fail(f"not served: {first!r}\n{group.process.communicate()[0].decode()}")
        message = (yield inThread(notify.recv, 1000)).decode()
        self.assertIn("READY=1", message)
        self.assertIn(f"MAINPID={group.process.pid}", message)
        workers_ = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        self.assertEqual([w["state"] for w in workers_], ["serving"] * workers if workers > 1
                         else [])
        answers = yield inThread(connections, group.port, 40, 4)
        self.assertEqual(answers, [b"a"] * 40)
        if workers > 1:
            # The master re-executes itself with systemd's socket (checked
            # by its name first), same PID, telling systemd of a reload: the
            # same socket serves.
            yield ReexecTests.reexec(self, group, 2, ["status-interval"],  # type: ignore[arg-type]
                                     **{"status-interval": 1800})
            message = (yield inThread(notify.recv, 1000)).decode()
            self.assertIn("RELOADING=1\nMONOTONIC_USEC=", message)
            message = (yield inThread(notify.recv, 1000)).decode()
            self.assertEqual(message, f"READY=1\nMAINPID={group.process.pid}")
            answers = yield inThread(connections, group.port, 40, 4)
            self.assertEqual(answers, [b"a"] * 40)
        yield group.stop(self)
        self.assertEqual((yield inThread(notify.recv, 1000)), b"STOPPING=1")

    def test_single(self) -> None:
        """
        One process serves a socket systemd passed.
        """
        return self.activated(1)

    def test_workers(self) -> None:
        """
        Workers serve a socket systemd passed to their master, across an
        upgrade that re-executes the master too.
        """
        return self.activated(2)


def _listening(port: int) -> bool:
    """
    Whether something accepts connections on C{port} (a connection made
    and closed).
    """
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _upgradeError(admin: int) -> tuple[int, str]:
    """
    The status and error of a failed upgrade (blocking).
    """
    try:
        adminChange(admin, "POST", "/api/upgrade", {})
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())["error"]
    raise AssertionError("the upgrade did not fail")


def _hold(port: int, count: int) -> list[socket.socket]:
    """
    C{count} connections through the balancer, each once the backend's
    name came back, kept open (blocking).
    """
    held = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        held.append(s)
        if s.recv(64) != b"a\n":
            raise AssertionError("the backend did not answer")
    return held


def _echoes(sockets: list[socket.socket]) -> int:
    """
    How many of C{sockets} still echo what they are sent (blocking).
    """
    alive = 0
    for index, s in enumerate(sockets):
        try:
            s.sendall(b"ping %d\n" % index)
            s.settimeout(3)
            if s.recv(64) == b"ping %d\n" % index:
                alive += 1
        except OSError:
            pass
    return alive


class _Group:
    """
    A running C{twistd lb --workers N}.
    """

    def __init__(self, port: int, admin: int, process: subprocess.Popen[bytes],
                 workers: int, workdir: str) -> None:
        self.workdir = workdir
        self.port = port
        self.admin = admin
        self.process = process
        self.workers = workers

    def waitServing(self, case: TestCase) -> Any:
        """
        Wait until every worker of the current generation serves; the
        result is the admin API's list of workers.
        """
        return self._waitWorkers(case, None, 20)

    def waitGeneration(self, case: TestCase, generation: int) -> Any:
        """
        Wait until L{workers} workers of C{generation} serve (after the
        master re-executed itself, on its admin port now); the result is
        the admin API's list of workers.
        """
        return self._waitWorkers(case, generation, 30)

    @inlineCallbacks
    def _waitWorkers(self, case: TestCase, generation: int | None, seconds: float) -> Any:
        """
        Wait until L{workers} workers serve (of C{generation}, if given).
        """
        deadline = time.monotonic() + seconds
        last: Any = None
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                last = (yield inThread(adminGet, self.admin, "/api/workers"))["workers"]
            except OSError:
                last = None
            if last and sum(1 for w in last if w["state"] == "serving" and generation
                            in (None, w["generation"])) >= self.workers:
                return last
            yield sleep(0.1)
        self.process.kill()
        assert self.process.stdout is not None
        case.fail(f"workers (generation {generation}) did not all serve ({last}):\n"
                  f"{self.process.stdout.read().decode()}")

    def edit(self, **changes: Any) -> None:
        """
        Change top-level keys of the configuration file.
        """
        config = FilePath(self.workdir).child("lb.yaml")
        data = yaml.safe_load(config.getContent())
        data.update(changes)
        config.setContent(yaml.safe_dump(data).encode())

    @inlineCallbacks
    def stop(self, case: TestCase) -> Any:
        """
        Stop the master with C{SIGTERM}: it and its workers exit 0.
        """
        self.process.send_signal(signal.SIGTERM)
        for _ in range(100):
            if self.process.poll() is not None:
                break
            yield sleep(0.1)
        case.assertEqual(self.process.poll(), 0)


class WorkersOptionTests(SynchronousTestCase):
    """
    C{--workers} and C{workers:} are checked before anything starts.
    """

    def options(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(["--backend", "127.0.0.1:9", "--listen", "tcp:0", *args])
        return options

    def test_default(self) -> None:
        """
        Without C{--workers}, the balancer is one process.
        """
        self.assertEqual(self.options()["lbconfig"].workers, 1)

    def test_number(self) -> None:
        """
        C{--workers 3} asks for three workers.
        """
        self.assertEqual(self.options("--workers", "3")["lbconfig"].workers, 3)

    def test_auto(self) -> None:
        """
        C{--workers auto} gives one worker per CPU this process may use.
        """
        self.assertEqual(self.options("--workers", "auto")["lbconfig"].workers,
                         len(os.sched_getaffinity(0)))

    def test_bad(self) -> None:
        """
        0, a negative number and a word are refused in one line naming
        C{--workers}.
        """
        for value in ("0", "-2", "many", "1.5"):
            e = self.assertRaises(BadConfiguration, self.options, "--workers", value)
            self.assertIn("--workers: expected a number of processes 1-1024 or auto", str(e))
            self.assertNotIn("\n", str(e))

    def test_fileLimit(self) -> None:
        """
        More workers than the file-descriptor limit allows are refused,
        naming C{--workers} and the limit, when twistd is started.
        """
        result = subprocess.run(
            ["sh", "-c", f"ulimit -n 128; exec {TWISTD} --nodaemon --pidfile= lb "
                         "--backend 127.0.0.1:9 --listen tcp:0 --workers 100"],
            capture_output=True, timeout=30)
        output = (result.stdout + result.stderr).decode()
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("--workers: 100 workers need about", output)
        self.assertIn("over its limit of 128 (ulimit -n)", output)

    def test_workerCommand(self) -> None:
        """
        Workers get the master's options without C{--workers}.
        """
        options = self.options("--workers", "2", "--policy", "leastconn")
        self.assertEqual(options.workerCommand(),
                         ["--backend", "127.0.0.1:9", "--listen", "tcp:0",
                          "--policy", "leastconn"])

    def test_demo(self) -> None:
        """
        The demo's backends live in one process: C{--demo} with workers, or
        with a master, is refused.
        """
        e = self.assertRaises(BadConfiguration, Options().parseOptions,
                              ["--demo", "--workers", "2"])
        self.assertIn("--workers: the demo runs in one process", str(e))
        e = self.assertRaises(BadConfiguration, Options().parseOptions, ["--demo", "--master"])
        self.assertIn("--master: the demo runs in one process", str(e))

    def test_master(self) -> None:
        """
        C{--master} runs a master with one worker; without it (or more
        workers) one worker is this process alone.
        """
        for args, workers, master in (((), 1, False), (("--master",), 1, True),
                                      (("--workers", "2"), 2, True),
                                      (("--master", "--workers", "3"), 3, True)):
            config = self.options(*args)["lbconfig"]
            self.assertEqual((config.workers, config.runsMaster), (workers, master), args)

    def test_masterNotForWorkers(self) -> None:
        """
        Workers get the master's options without C{--master} (a worker is
        never a master).
        """
        options = self.options("--master", "--policy", "leastconn")
        self.assertEqual(options.workerCommand(),
                         ["--backend", "127.0.0.1:9", "--listen", "tcp:0",
                          "--policy", "leastconn"])
