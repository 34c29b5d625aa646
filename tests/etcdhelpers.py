"""
Real etcd servers for the cluster tests, on free loopback ports with
temporary data directories.

Each test starts its own: L{startEtcd} gives a single member, or three
forming one cluster.  A member can be killed (by its PID) and started again
on the same ports and data, and every member still running is stopped by
PID when the test ends.  Tests that need etcd skip only when its binary is
absent (C{make test-deps} installs Debian's C{etcd-server}).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.trial.unittest import TestCase

from .support import freePort, inThread

ETCD = shutil.which("etcd")
SKIP_WITHOUT_ETCD = None if ETCD else "etcd is not installed (make test-deps installs etcd-server)"
READY_TIMEOUT = 10.0


class EtcdMember:
    """
    One etcd process: its name, client and peer URLs, and data directory.

    @ivar process: the running process, or L{None} while stopped.
    """

    def __init__(self, name: str, directory: str,
                 tls: tuple[str, str] | None = None) -> None:
        self.name = name
        self.tls = tls
        scheme = "https" if tls else "http"
        self.clientURL = f"{scheme}://127.0.0.1:{freePort()}"
        self.peerURL = f"http://127.0.0.1:{freePort()}"
        self.dataDir = os.path.join(directory, name)
        self.logPath = os.path.join(directory, name + ".log")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, initialCluster: str, state: str = "new") -> None:
        """
        Start the process (again, on the same ports and data).
        """
        assert ETCD is not None and self.process is None
        argv = [
            ETCD, "--name", self.name, "--data-dir", self.dataDir,
            "--listen-client-urls", self.clientURL,
            "--advertise-client-urls", self.clientURL,
            "--listen-peer-urls", self.peerURL,
            "--initial-advertise-peer-urls", self.peerURL,
            "--initial-cluster", initialCluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", "lbtwist-test",
            # A short election keeps a killed leader's replacement quick.
            "--heartbeat-interval", "50", "--election-timeout", "500",
        ]
        if self.tls:
            # Clients must show a certificate the same CA signed.
            cert, key = self.tls
            argv += ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", cert,
                     "--client-cert-auth"]
        with open(self.logPath, "ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def kill(self) -> None:
        """
        Kill the process (by its PID) and wait for it.
        """
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
        if process is not None:
            process.wait()


class EtcdCluster:
    """
    One or more etcd members forming a cluster.

    @ivar members: the members, in order.
    """

    def __init__(self, size: int, directory: str, tls: tuple[str, str] | None = None) -> None:
        self.tls = tls
        self.members = [EtcdMember(f"m{i}", directory, tls) for i in range(size)]
        self.initialCluster = ",".join(f"{m.name}={m.peerURL}" for m in self.members)

    @property
    def urls(self) -> list[str]:
        """
        Every member's client URL.
        """
        return [m.clientURL for m in self.members]

    @property
    def url(self) -> str:
        """
        The first member's client URL.
        """
        return self.members[0].clientURL

    def start(self) -> Deferred[None]:
        """
        Start every member; fires once each answers its health check.
        """
        for m in self.members:
            m.start(self.initialCluster)
        return inThread(self.waitReady)

    def restart(self, member: EtcdMember) -> Deferred[None]:
        """
        Start a killed member again; fires once it is healthy.
        """
        member.start(self.initialCluster, "existing")
        return inThread(self.waitReady, [member])

    def waitReady(self, members: list[EtcdMember] | None = None) -> None:
        """
        Block until each member answers C{/health} with health true (at
        most L{READY_TIMEOUT} seconds).
        """
        deadline = time.monotonic() + READY_TIMEOUT
        for m in members or self.members:
            while True:
                try:
                    with urllib.request.urlopen(m.clientURL + "/health", timeout=1,
                                                context=self.sslContext()) as r:
                        if json.load(r).get("health") == "true":
                            break
                except (OSError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd member {m.name} not ready; see {m.logPath}")
                time.sleep(0.05)

    def sslContext(self) -> ssl.SSLContext | None:
        """
        With TLS, a client context trusting the members' certificate and
        showing it as the client certificate.
        """
        if self.tls is None:
            return None
        context = ssl.create_default_context(cafile=self.tls[0])
        context.load_cert_chain(*self.tls)
        return context

    def stopAll(self) -> None:
        """
        Kill every member still running.
        """
        for m in self.members:
            m.kill()

    def leader(self) -> EtcdMember:
        """
        The member that is the leader now.
        """
        for m in self.members:
            if m.process is None:
                continue
            status = call(m.clientURL, "/v3/maintenance/status", {})
            if status.get("leader") == status["header"]["member_id"]:
                return m
        raise RuntimeError("no leader")


def call(url: str, path: str, body: dict[str, Any]) -> Any:
    """
    One blocking call of etcd's JSON gateway (for tests to look behind the
    balancer's back); the answer's JSON, or the error's.
    """
    request = urllib.request.Request(url + path, json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:
        return json.load(e)


def b64(text: str) -> str:
    """
    Text as etcd's JSON gateway wants bytes: base64.
    """
    return base64.b64encode(text.encode()).decode()


def dump(url: str, prefix: str) -> dict[str, Any]:
    """
    Every key under C{prefix} and its JSON value, read straight from etcd.
    """
    end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    answer = call(url, "/v3/kv/range", {"key": b64(prefix), "range_end": b64(end)})
    return {
        base64.b64decode(kv["key"]).decode(): json.loads(base64.b64decode(kv.get("value", "")))
        for kv in answer.get("kvs", [])
    }


@inlineCallbacks
def startEtcd(case: TestCase, size: int = 1, tls: tuple[str, str] | None = None) -> Any:
    """
    Start an etcd cluster of C{size} members for this test; each is killed
    by its PID when the test ends.  Skips the test when etcd is absent.

    @param tls: a certificate and key the members serve TLS with, and
        demand of clients.
    """
    if SKIP_WITHOUT_ETCD:
        case.skipTest(SKIP_WITHOUT_ETCD)
    directory = tempfile.mkdtemp(prefix="lbtwist-etcd-")
    case.addCleanup(shutil.rmtree, directory, True)
    cluster = EtcdCluster(size, directory, tls)
    case.addCleanup(cluster.stopAll)
    yield cluster.start()
    return cluster


class ClusterNode:
    """
    One balancer of a cluster, in this process: its L{Balancer}, its first
    listener's port and its admin API's port.
    """

    def __init__(self, balancer: Any) -> None:
        self.balancer = balancer
        lb = balancer.loadBalancer
        listener = lb.getServiceNamed("listener:" + lb.config.listeners[0].name)
        self.port = int(listener._waitingForPort.result.getHost().port)
        admin = balancer.getServiceNamed("control").getServiceNamed("admin")
        self.adminPort = int(admin.port.getHost().port) if admin.port is not None else 0
        self.sync = balancer.cluster

    def backends(self, pool: str = "web") -> dict[str, tuple[int, str]]:
        """
        The live backends of C{pool}: name to weight and admin state.
        """
        return {b.name: (b.weight, b.admin.value)
                for b in self.balancer.loadBalancer.pools[pool]}


def clusterConfig(urls: list[str], backends: list[tuple[str, str]], prefix: str = "/lbt",
                  **cluster: Any) -> dict[str, Any]:
    """
    Configuration data for a cluster balancer: one TCP listener and an
    admin API on ephemeral loopback ports, pool C{web} of C{backends}, and
    a C{cluster} block on C{urls}.
    """
    return {
        "listeners": [{"listen": "tcp:0:interface=127.0.0.1"}],
        "admin": "tcp:0:interface=127.0.0.1",
        "admin-token": "secret",
        "pools": {"web": {"backends": [{"name": n, "endpoint": e} for n, e in backends],
                          "health": {"interval": 60}}},
        "cluster": {"etcd": urls, "prefix": prefix, **cluster},
    }


def startNode(case: TestCase, data: dict[str, Any], directory: str, name: str,
              fatal: Any = None, sync: dict[str, Any] | None = None,
              **kw: Any) -> ClusterNode:
    """
    Start a cluster balancer (stopped when the test ends) with its state
    and snapshot files in C{directory}.  A fatal error (etcd unreachable at
    the first start) is given to C{fatal}, or fails the test, instead of
    stopping the reactor.  C{sync} sets attributes of the registry sync
    before it starts (C{instanceTTL}, say).
    """
    from lbtwist.app import Balancer
    from lbtwist.config import parseConfig

    from .support import reactor

    balancer = Balancer(parseConfig(data), reactor, signals=False, freezeHeap=False,
                        statePath=os.path.join(directory, name + ".state.json"),
                        instanceName=name, grace=0.1, **kw)
    balancer.cluster.fatal = fatal or (lambda message: case.fail(message))
    for attribute, value in (sync or {}).items():
        setattr(balancer.cluster, attribute, value)
    balancer.startService()
    case.addCleanup(lambda: balancer.stopService() if balancer.running else None)
    return ClusterNode(balancer)


@inlineCallbacks
def eventually(check: Any, timeout: float = 5.0) -> Any:
    """
    Wait (in the reactor) until C{check()} is true; fail after C{timeout}.

    @return: the seconds it took.
    """
    from .support import sleep

    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not true within {timeout}s: {check}")
        yield sleep(0.01)
    return time.monotonic() - start


class ClusterCase(TestCase):
    """
    A test with its own etcd (C{self.etcd}), three backends named a, b and
    c (C{self.servers}), and a directory for the balancers' files
    (C{self.dir}).
    """

    timeout = 30
    members = 1

    @inlineCallbacks
    def setUp(self) -> Any:
        from .support import Backends

        self.etcd = yield startEtcd(self, self.members)
        self.dir = tempfile.mkdtemp(prefix="lbtwist-cluster-", dir=".")
        self.servers = Backends(self)
        for name in ("a", "b", "c"):
            self.servers.start(name)

    def node(self, name: str, backends: list[str], **kw: Any) -> ClusterNode:
        """
        Start cluster balancer C{name} whose file lists C{backends}.
        """
        data = clusterConfig(self.etcd.urls, [(b, self.servers.endpoint(b)) for b in backends])
        return startNode(self, data, self.dir, name, **kw)
