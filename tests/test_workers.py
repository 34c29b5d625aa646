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
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

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


def nameLine(port: int) -> bytes | None:
    """
    Connect through the balancer and read the backend's name line
    (L{tests.support.NameOnConnect}); L{None} if the connection failed.
    """
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
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


class GroupTestCase(TestCase):
    """
    Starts a master and its workers as users start them.
    """

    timeout = 60

    def startGroup(self, workers: int, backends: Backends, names: list[str],
                   mode: str = "tcp", **top: Any) -> Any:
        """
        Write a configuration with one listener over C{names}, start
        C{twistd lb --workers N} with it, and wait until every worker
        serves; the result has C{port}, C{admin} and C{process}.
        """
        work = FilePath(self.mktemp())
        work.makedirs()
        port, admin = freePort(), freePort()
        config = {
            "admin": f"tcp:{admin}:interface=127.0.0.1", "admin-token": TOKEN,
            "status-interval": 3600,
            "listeners": [{"name": "front", "listen": f"tcp:{port}:interface=127.0.0.1",
                           "mode": mode}],
            "pools": {"web": {
                "backends": [{"name": n, "endpoint": backends.endpoint(n)} for n in names],
                "health": {"interval": "200ms", "rise": 1, "fall": 1},
            }},
            **top,
        }
        work.child("lb.yaml").setContent(yaml.safe_dump(config).encode())
        process = spawn(self, [TWISTD, "--nodaemon", "--pidfile=", "lb", "--config", "lb.yaml",
                               "--workers", str(workers), "--grace", "2"],
                        work.path, dict(os.environ))
        group = _Group(port, admin, process, workers)
        return group.waitServing(self).addCallback(lambda _: group)



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
        group = yield self.startGroup(4, backends, ["a"])
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
        group = yield self.startGroup(3, backends, ["a"])
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
        after = yield group.waitServing(self)
        replaced = next(w for w in after if w["worker"] == victim["worker"])
        self.assertNotEqual(replaced["pid"], victim["pid"])
        self.assertEqual(replaced["restarts"], 1)
        answers = yield inThread(connections, group.port, 200, 8)
        self.assertEqual(answers.count(b"a"), 200)
        for s in held:
            s.close()
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
        group = yield self.startGroup(3, backends, ["a", "b"])
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
        workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        # Every worker served some of those clients, each with the change.
        self.assertTrue(all(w["requests"] > 0 for w in workers), workers)
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
        group = yield self.startGroup(3, backends, ["a", "b"])
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
        sentBefore = b["total"]
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
        group = yield self.startGroup(3, backends, ["a", "b"])
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
                 workers: int) -> None:
        self.port = port
        self.admin = admin
        self.process = process
        self.workers = workers

    @inlineCallbacks
    def waitServing(self, case: TestCase) -> Any:
        """
        Wait until every worker of the current generation serves; the
        result is the admin API's list of workers.
        """
        deadline = time.monotonic() + 20
        last: Any = None
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                last = (yield inThread(adminGet, self.admin, "/api/workers"))["workers"]
            except OSError:
                last = None
            if last and sum(1 for w in last if w["state"] == "serving") >= self.workers:
                return last
            yield sleep(0.1)
        self.process.kill()
        assert self.process.stdout is not None
        case.fail(f"workers did not all serve ({last}):\n{self.process.stdout.read().decode()}")

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
        The demo's backends live in one process: C{--demo} with workers is
        refused.
        """
        e = self.assertRaises(BadConfiguration, Options().parseOptions,
                              ["--demo", "--workers", "2"])
        self.assertIn("--workers: the demo runs in one process", str(e))
