"""
The cluster soak: three C{twistd lb} balancers sharing one registry in a
real etcd, changed through random balancers' admin APIs for minutes while
etcd is killed and restarted every minute; at the end every balancer must
hold exactly the registry etcd holds, at the same revision.

    make soak                                       # 10 minutes
    python soak/cluster.py --duration 60 --restart-every 15

It starts its own etcd, backend and balancer processes on 127.0.0.1, stops
them by PID when done, and exits non-zero when a balancer disagrees with
etcd, a change got an answer other than 2xx, 409 (lost a race), 503 (etcd
away) or 404 (another balancer's change removed the backend first), a
request to the balancers failed, or a backend added through one balancer
took more than a second to reach the others (measured for every tenth, while
all are connected: one still in its back-off after an etcd restart catches
up when it reconnects).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

from tests.etcdhelpers import ETCD, EtcdCluster, dump  # noqa: E402
from tests.support import firstLine, freePort  # noqa: E402

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
TOKEN = "soak"


def api(port: int, method: str, path: str, body: object = None) -> tuple[int, Any]:
    """
    One admin API call: status and JSON answer (status 0: no answer).
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    request.add_header("Authorization", f"Bearer {TOKEN}")
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)
    except OSError as e:
        return 0, {"error": str(e)}


class Balancer:
    """
    One C{twistd lb} process of the cluster.
    """

    def __init__(self, workdir: str, name: str, etcd: list[str], backend: int) -> None:
        self.name = name
        self.port, self.admin = freePort(), freePort()
        self.dir = os.path.join(workdir, name)
        os.makedirs(self.dir)
        config = {
            "listeners": [{"listen": f"tcp:{self.port}:interface=127.0.0.1"}],
            "admin": f"tcp:{self.admin}:interface=127.0.0.1", "admin-token": TOKEN,
            "pools": {"web": {"backends": [
                {"name": "seed", "endpoint": f"tcp:host=127.0.0.1:port={backend}"}]}},
            "cluster": {"etcd": etcd, "prefix": "/soak"},
        }
        self.config = os.path.join(self.dir, "lb.yaml")
        with open(self.config, "w") as f:
            yaml.safe_dump(config, f)
        self.log = open(os.path.join(self.dir, "twistd.log"), "wb")  # noqa: SIM115
        self.process = subprocess.Popen(
            [TWISTD, "--nodaemon", "--pidfile=", "lb", "--config", self.config],
            cwd=self.dir, stdout=self.log, stderr=subprocess.STDOUT)

    def waitReady(self, seconds: float = 20.0) -> None:
        deadline = time.monotonic() + seconds
        while api(self.admin, "GET", "/api/health")[0] == 0:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise SystemExit(f"balancer {self.name} did not start; see {self.dir}")
            time.sleep(0.1)

    def connected(self) -> bool:
        """
        Whether it is watching etcd now.
        """
        status, health = api(self.admin, "GET", "/api/health")
        return status == 200 and health.get("cluster", {}).get("store") == "connected"

    def registry(self) -> tuple[int, dict[str, tuple[int, str, str]]]:
        """
        Its revision and its pool's backends: name to weight, admin state
        and endpoint.
        """
        _, health = api(self.admin, "GET", "/api/health")
        _, pool = api(self.admin, "GET", "/api/pools/web")
        return health["cluster"]["revision"], {
            b["name"]: (b["weight"], b["admin"], b["endpoint"]) for b in pool["backends"]}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


def propagation(others: list[Balancer], name: str, limit: float = 5.0) -> float:
    """
    Seconds until every balancer in C{others} has backend C{name} (polled
    every 5 ms, at most C{limit}).
    """
    start = time.monotonic()
    waiting = list(others)
    while waiting and time.monotonic() - start < limit:
        waiting = [b for b in waiting
                   if api(b.admin, "GET", f"/api/pools/web/backends/{name}")[0] != 200]
        if waiting:
            time.sleep(0.005)
    return time.monotonic() - start if not waiting else limit


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds of changes")
    p.add_argument("--restart-every", type=float, default=60.0,
                   help="seconds between etcd restarts")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args()
    if ETCD is None:
        print("cluster soak: etcd is not installed (make test-deps)", file=sys.stderr)
        return 1
    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="lbtwist-cluster-soak-")
    etcd = EtcdCluster(1, workdir)
    member = etcd.members[0]
    backend = subprocess.Popen([sys.executable, "-c", (
        "import socket\n"
        "s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('127.0.0.1', 0)); s.listen(512); print(s.getsockname()[1], flush=True)\n"
        "while True:\n"
        "    c, _ = s.accept(); c.sendall(b'seed\\n'); c.close()\n")],
        stdout=subprocess.PIPE)
    assert backend.stdout is not None
    backendPort = int(backend.stdout.readline())
    balancers: list[Balancer] = []
    answers: dict[int, int] = {}
    spread: list[float] = []
    failedRequests, requests, restarts = 0, 0, 0
    try:
        for m in etcd.members:
            m.start(etcd.initialCluster)
        etcd.waitReady()
        balancers = [Balancer(workdir, f"lb{i}", etcd.urls, backendPort) for i in range(3)]
        for b in balancers:
            b.waitReady()
        start = time.monotonic()
        nextRestart = start + args.restart_every
        counter = 0
        while time.monotonic() - start < args.duration:
            if time.monotonic() >= nextRestart:
                member.kill()
                time.sleep(rng.uniform(0.5, 3.0))
                member.start(etcd.initialCluster, "existing")
                etcd.waitReady()
                restarts += 1
                nextRestart += args.restart_every
            target = rng.choice(balancers)
            _, pool = api(target.admin, "GET", "/api/pools/web")
            names = [b["name"] for b in pool.get("backends", []) if b["name"] != "seed"]
            action = rng.choice(["add", "add", "remove", "weight", "state"] if names else ["add"])
            if action == "add":
                counter += 1
                status, _ = api(target.admin, "POST", "/api/pools/web/backends", {
                    "name": f"b{counter}", "endpoint": f"tcp:host=127.0.0.1:port={backendPort}",
                    "weight": rng.randint(0, 10)})
                others = [b for b in balancers if b is not target]
                # Measured in steady state only: a balancer still in its
                # back-off after an etcd restart catches up when it is over.
                if status == 201 and counter % 10 == 0 and all(
                        b.connected() for b in others):
                    spread.append(propagation(others, f"b{counter}"))
            elif action == "remove":
                status, _ = api(target.admin, "DELETE",
                                f"/api/pools/web/backends/{rng.choice(names)}")
            else:
                change = ({"weight": rng.randint(0, 10)} if action == "weight"
                          else {"state": rng.choice(["drain", "maint", "ready"])})
                status, _ = api(target.admin, "PATCH",
                                f"/api/pools/web/backends/{rng.choice(names)}", change)
            answers[status] = answers.get(status, 0) + 1
            for b in balancers:
                requests += 1
                try:
                    if firstLine(b.port, timeout=5.0) != b"seed":
                        failedRequests += 1
                except OSError:
                    failedRequests += 1
            time.sleep(rng.uniform(0, 0.05))
        # Every balancer must converge to etcd's registry.
        wanted = {}
        for key, value in dump(etcd.url, "/soak/pools/web/backends/").items():
            wanted[key.rsplit("/", 1)[1]] = (value["weight"], value["state"], value["endpoint"])
        deadline = time.monotonic() + 30
        while True:
            views = [b.registry() for b in balancers]
            if all(v[1] == wanted for v in views) and len({v[0] for v in views}) == 1:
                break
            if time.monotonic() > deadline:
                for b, v in zip(balancers, views):
                    missing = set(wanted.items()) ^ set(v[1].items())
                    print(f"{b.name}: revision {v[0]}, differs from etcd in {sorted(missing)}")
                return 1
            time.sleep(0.5)
        bad = {s: n for s, n in answers.items() if not (200 <= s < 300 or s in (404, 409, 503))}
        spread.sort()
        slow = [t for t in spread if t > 1.0]
        print(f"cluster soak: {sum(answers.values())} changes ({answers}), {restarts} etcd "
              f"restarts, {requests} requests ({failedRequests} failed); every balancer holds "
              f"etcd's {len(wanted)} backends at revision {views[0][0]}; an addition reached "
              f"the two other balancers in {spread[len(spread) // 2] * 1000:.0f} ms (median), "
              f"{spread[-1] * 1000:.0f} ms (worst) of {len(spread)} measured, "
              f"{len(slow)} over a second")
        return 1 if bad or failedRequests or slow else 0
    finally:
        for b in balancers:
            b.stop()
        etcd.stopAll()
        backend.kill()
        backend.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
