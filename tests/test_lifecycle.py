"""
The balancer's life as a real C{twistd -n lb} process: changes made through
the admin API survive C{SIGKILL}; C{SIGHUP} reloads the configuration under
load without a client error and refuses a broken one; C{SIGTERM} lets
in-flight connections finish and exits 0.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any

import yaml
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.support import Backends, inThread, sleep
from tests.test_admin import TOKEN, jcall
from tests.test_reload import exchange

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
# The last number on the line: "...port=8080)" or "...127.0.0.1:8080".
_PORT = re.compile(r"(\d+)\)?\s*$")


class Balancer:
    """
    One C{twistd -n lb} process in a temporary working directory.
    """

    def __init__(self, case: TestCase, workdir: str, grace: float = 10.0) -> None:
        self.case = case
        self.workdir = workdir
        self.grace = grace
        self.process: subprocess.Popen[bytes] | None = None
        self.logPath = os.path.join(workdir, "lb.log")

    def writeConfig(self, backends: dict[str, int], broken: bool = False) -> None:
        """
        Write C{lb.yaml} with these backends (name to port).
        """
        data: dict[str, Any] = {
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1"}],
            "admin": "tcp:0:interface=127.0.0.1",
            "pools": {"web": {
                "health": {"interval": "200ms", "rise": 1, "fall": 2},
                "backends": [{"name": n, "host": "127.0.0.1", "port": p}
                             for n, p in backends.items()]}},
        }
        if broken:
            data["pools"]["web"]["policy"] = "fastest-please"
        with open(os.path.join(self.workdir, "lb.yaml"), "w") as f:
            yaml.safe_dump(data, f)

    @inlineCallbacks
    def start(self) -> Any:
        """
        Start the process and wait (up to 20 s) until it says where it
        listens; sets C{port} and C{admin}.
        """
        if os.path.exists(self.logPath):
            os.unlink(self.logPath)
        env = dict(os.environ, LBTWIST_ADMIN_TOKEN=TOKEN)
        self.process = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", f"--logfile={self.logPath}", "lb",
             "--config", "lb.yaml", "--grace", str(self.grace)],
            cwd=self.workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.case.addCleanup(self.kill)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listener = self.logLine("accepting on")
            admin = self.logLine("admin API listening on")
            if listener and admin:
                self.port = int(_PORT.findall(listener)[-1])
                self.admin = int(_PORT.findall(admin)[-1])
                return
            if self.process.poll() is not None:
                break
            yield sleep(0.1)
        self.kill()
        raise AssertionError(f"twistd did not start: {self.log()}")

    def log(self) -> str:
        """
        The log so far.
        """
        try:
            with open(self.logPath, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def logLine(self, text: str) -> str | None:
        """
        The last log line containing C{text}, if any.
        """
        lines = [line for line in self.log().splitlines() if text in line]
        return lines[-1] if lines else None

    def signal(self, signum: int) -> None:
        """
        Send a signal to the process, by its PID.
        """
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def wait(self, timeout: float = 20.0) -> Any:
        """
        Wait in a thread for the process to exit; its exit code.
        """
        assert self.process is not None
        return inThread(self.process.wait, timeout)

    def kill(self) -> None:
        """
        Make sure the process is gone (SIGKILL by PID) and reaped.
        """
        p = self.process
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
        if p is not None and p.stderr is not None:
            p.stderr.close()

    def api(self, method: str, path: str, body: object = None) -> Any:
        """
        Call the admin API in a thread.
        """
        return inThread(jcall, self.admin, method, path, body)

    @inlineCallbacks
    def backends(self) -> Any:
        """
        The web pool's backends as C{{name: (weight, state)}}.
        """
        status, body = yield self.api("GET", "/api/pools/web/backends")
        assert status == 200, body
        return {b["name"]: (b["weight"], b["admin"]) for b in body}


class LifecycleTests(TestCase):
    """
    Signals and persistence of a real process.
    """

    timeout = 120

    def setUp(self) -> None:
        self.workdir = os.path.abspath(self.mktemp())
        os.makedirs(self.workdir)
        self.servers = Backends(self)
        self.ports = {n: self.servers.start(n) for n in ("a", "b", "c")}

    @inlineCallbacks
    def test_changesSurviveSIGKILL(self) -> Any:
        """
        Changes made through the API are all there after the process is
        killed with SIGKILL right after them and started again.
        """
        lb = Balancer(self, self.workdir)
        lb.writeConfig({"a": self.ports["a"], "b": self.ports["b"]})
        yield lb.start()
        for method, path, body in [
            ("PATCH", "/api/pools/web/backends/b", {"weight": 5}),
            ("POST", "/api/pools/web/backends",
             {"name": "c", "host": "127.0.0.1", "port": self.ports["c"]}),
            ("DELETE", "/api/pools/web/backends/a", None),
            ("PATCH", "/api/pools/web/backends/b", {"state": "drain"}),
        ]:
            status, answer = yield lb.api(method, path, body)
            self.assertIn(status, (200, 201), answer)
        lb.signal(signal.SIGKILL)
        self.assertEqual((yield lb.wait()), -signal.SIGKILL)
        with open(os.path.join(self.workdir, "lbtwist-state.json")) as f:
            self.assertEqual(json.load(f)["pools"]["web"]["removed"], ["a"])
        yield lb.start()
        self.assertEqual((yield lb.backends()), {"b": (5, "drain"), "c": (1, "ready")})
        lb.signal(signal.SIGTERM)
        self.assertEqual((yield lb.wait()), 0)

    @inlineCallbacks
    def test_sighupReloadsUnderLoad(self) -> Any:
        """
        SIGHUP applies the edited file while clients keep connecting, with
        no client error and without dropping an open connection; a broken
        file is refused with a logged message and the running config stays.
        """
        lb = Balancer(self, self.workdir)
        lb.writeConfig({"a": self.ports["a"], "b": self.ports["b"]})
        yield lb.start()
        held = yield inThread(socket.create_connection, ("127.0.0.1", lb.port), 5)
        self.addCleanup(held.close)
        held.settimeout(5)
        heldFile = held.makefile("rb")
        self.assertIn((yield inThread(heldFile.readline)).strip(), (b"a", b"b"))
        errors: list[str] = []
        stop = threading.Event()
        clients = [inThread(exchange, lb.port, stop, errors, time.monotonic() + 30)
                   for _ in range(3)]
        yield sleep(0.3)
        lb.writeConfig({"b": self.ports["b"], "c": self.ports["c"]})
        lb.signal(signal.SIGHUP)
        for _ in range(100):
            if lb.logLine("configuration reloaded"):
                break
            yield sleep(0.1)
        yield sleep(0.3)
        stop.set()
        served = yield gatherResults(clients)
        self.assertEqual(errors, [])
        self.assertGreater(sum(served), 0)
        self.assertEqual(set((yield lb.backends())), {"b", "c"})
        yield inThread(held.sendall, b"still open\n")
        self.assertEqual((yield inThread(heldFile.readline)), b"still open\n")
        lb.writeConfig({"a": self.ports["a"]}, broken=True)
        lb.signal(signal.SIGHUP)
        for _ in range(100):
            if lb.logLine("reload rejected"):
                break
            yield sleep(0.1)
        self.assertIn("fastest-please", lb.logLine("reload rejected") or "")
        self.assertEqual(set((yield lb.backends())), {"b", "c"})
        heldFile.close()
        held.close()
        lb.signal(signal.SIGTERM)
        self.assertEqual((yield lb.wait()), 0)

    @inlineCallbacks
    def test_sigtermLetsInFlightFinish(self) -> Any:
        """
        On SIGTERM the listener stops accepting at once, an open connection
        keeps working until its client is done, and the process exits 0.
        """
        lb = Balancer(self, self.workdir)
        lb.writeConfig({"a": self.ports["a"]})
        yield lb.start()
        held = yield inThread(socket.create_connection, ("127.0.0.1", lb.port), 5)
        self.addCleanup(held.close)
        held.settimeout(5)
        heldFile = held.makefile("rb")
        self.assertEqual((yield inThread(heldFile.readline)), b"a\n")
        lb.signal(signal.SIGTERM)
        for _ in range(50):
            if lb.logLine("get up to"):
                break
            yield sleep(0.1)
        self.assertIsNotNone(lb.logLine("get up to"))
        try:
            s = socket.create_connection(("127.0.0.1", lb.port), 2)
            s.close()
            refused = False
        except OSError:
            refused = True
        self.assertTrue(refused, "the listener still accepts after SIGTERM")
        yield sleep(0.5)
        self.assertIsNone(lb.process.poll())  # type: ignore[union-attr]
        yield inThread(held.sendall, b"finishing\n")
        self.assertEqual((yield inThread(heldFile.readline)), b"finishing\n")
        heldFile.close()
        held.close()
        started = time.monotonic()
        self.assertEqual((yield lb.wait()), 0)
        self.assertLess(time.monotonic() - started, 5)

    @inlineCallbacks
    def test_sigtermGraceOver(self) -> Any:
        """
        A connection still open when the grace period is over is closed,
        and the process exits 0.
        """
        lb = Balancer(self, self.workdir, grace=1.0)
        lb.writeConfig({"a": self.ports["a"]})
        yield lb.start()
        held = yield inThread(socket.create_connection, ("127.0.0.1", lb.port), 5)
        self.addCleanup(held.close)
        held.settimeout(10)
        heldFile = held.makefile("rb")
        self.assertEqual((yield inThread(heldFile.readline)), b"a\n")
        lb.signal(signal.SIGTERM)
        self.assertEqual((yield lb.wait()), 0)
        try:
            end = yield inThread(heldFile.readline)
        except OSError:
            end = b""
        self.assertEqual(end, b"")
        heldFile.close()
