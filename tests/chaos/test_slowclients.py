"""
Slow clients: a thousand slowloris connections (and C{slowhttptest}, when
installed) do not stop normal clients from being served within their usual
latency, and the slow connections are cut after the request timeout.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import subprocess
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest

from tests.chaos.test_faults import FaultsTestCase
from tests.chaos.tools import BalancerProcess, Outcome, fetch, load, procStats, report, summary
from tests.support import inThread, sleep

SLOW_CONNECTIONS = 1000
REQUEST_TIMEOUT = 2.0


def percentile(values: list[float], fraction: float) -> float:
    """
    The value below which C{fraction} of C{values} fall.
    """
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def assertUsualLatency(case: Any, baseline: list[Outcome], under: list[Outcome],
                       note: str = "") -> None:
    """
    Requests under attack were served about as fast as before it: a median
    within 20 ms of the usual, and a 99th percentile within three times the
    usual or 250 ms (a server the attack starves takes seconds, or never).
    """
    before = [o.elapsed for o in baseline]
    during = [o.elapsed for o in under]
    case.assertLess(percentile(during, 0.5), percentile(before, 0.5) + 0.02, note)
    case.assertLess(percentile(during, 0.99), max(3 * percentile(before, 0.99), 0.25), note)


def slowloris(port: int, count: int, duration: float, interval: float = 0.5
              ) -> tuple[int, list[float]]:
    """
    Open C{count} connections that send a request head one header line
    every C{interval} seconds and never finish it, for up to C{duration}
    seconds.

    @return: how many were opened, and for each one the balancer closed,
        how long after it was opened.
    """
    selector = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    closedAfter: list[float] = []
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            s.sendall(b"GET /slow HTTP/1.1\r\nHost: chaos\r\n")
            s.setblocking(False)
            opened[s] = time.monotonic()
            selector.register(s, selectors.EVENT_READ)
        deadline = time.monotonic() + duration
        nextDrip = time.monotonic() + interval
        while opened and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.05):
                s = key.fileobj
                assert isinstance(s, socket.socket)
                try:
                    data = s.recv(4096)
                except (ConnectionResetError, BlockingIOError):
                    data = b""
                if not data:
                    closedAfter.append(time.monotonic() - opened.pop(s))
                    selector.unregister(s)
                    s.close()
            if time.monotonic() >= nextDrip:
                nextDrip += interval
                for s in list(opened):
                    try:
                        s.send(b"X-Slow: 1\r\n")
                    except OSError:
                        pass
        return count, closedAfter
    finally:
        for s in opened:
            s.close()
        selector.close()


class SlowClientTests(FaultsTestCase):
    """
    A real balancer process under slow-client attacks.
    """

    timeout = 120

    @inlineCallbacks
    def startProcess(self) -> Any:
        """
        A backend process and a C{twistd} balancer in HTTP mode with a
        short request timeout.
        """
        backends = yield self.startBackends(("a",), ("b",))
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        lb = BalancerProcess(self, workdir)
        lb.writeConfig({"web": {
            "backends": [{"name": n, "endpoint": b.endpoint} for n, b in backends.items()],
            "timeouts": {"request": f"{REQUEST_TIMEOUT}s", "idle": "10s"},
        }})
        yield lb.start()
        return lb

    def normalLoad(self, port: int, count: int = 400) -> Any:
        """
        C{count} normal requests from 4 clients; fires with their outcomes.
        """
        return load(port, 4, 30, count, lambda n, i: fetch(port, "/?bytes=1k", timeout=5))

    @inlineCallbacks
    def test_slowloris(self) -> Any:
        """
        With 1,000 slowloris connections open, normal clients are served
        within their usual latency, and each slow connection is closed
        about the request timeout after it opened.
        """
        lb = yield self.startProcess()
        yield self.normalLoad(lb.port, 200)
        baseline: list[Outcome] = yield self.normalLoad(lb.port)
        fdsBefore = procStats(lb.pid)[0]
        attack = inThread(slowloris, lb.port, SLOW_CONNECTIONS, REQUEST_TIMEOUT + 4)
        yield sleep(0.5)
        under: list[Outcome] = yield self.normalLoad(lb.port)
        opened, closedAfter = yield attack
        yield sleep(0.3)
        fdsAfter = procStats(lb.pid)[0]
        base99 = percentile([o.elapsed for o in baseline], 0.99)
        under99 = percentile([o.elapsed for o in under], 0.99)
        report(self, "slowloris", slow=opened, cut=len(closedAfter),
               cutAfter=(round(min(closedAfter), 2), round(max(closedAfter), 2)),
               p99ms=(round(base99 * 1000, 1), round(under99 * 1000, 1)),
               fds=(fdsBefore, fdsAfter))
        self.assertEqual(summary(under), {"ok:200": 400})
        assertUsualLatency(self, baseline, under)
        self.assertEqual(len(closedAfter), SLOW_CONNECTIONS)
        self.assertGreater(min(closedAfter), REQUEST_TIMEOUT - 0.5)
        self.assertLess(max(closedAfter), REQUEST_TIMEOUT + 2.5)
        self.assertLessEqual(fdsAfter - fdsBefore, 8)

    @inlineCallbacks
    def test_slowhttptest(self) -> Any:
        """
        Debian's C{slowhttptest} (slow headers, 1,000 connections) does not
        stop normal clients, and the balancer stays up.
        """
        tool = shutil.which("slowhttptest")
        if tool is None:
            raise SkipTest("slowhttptest is not installed")
        lb = yield self.startProcess()
        baseline: list[Outcome] = yield self.normalLoad(lb.port, 200)
        attack = subprocess.Popen(
            [tool, "-c", str(SLOW_CONNECTIONS), "-H", "-i", "1", "-r", "500", "-s", "8192",
             "-t", "GET", "-u", f"http://127.0.0.1:{lb.port}/", "-x", "24", "-p", "3",
             "-l", "6"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        self.addCleanup(lambda: attack.poll() is None and attack.kill())
        yield sleep(2.5)
        under: list[Outcome] = yield self.normalLoad(lb.port, 200)
        # The attack's connections are open on the balancer meanwhile.
        attacked = procStats(lb.pid)[0]
        output, _ = yield inThread(attack.communicate, None, 30)
        text = output.decode("utf-8", "replace")
        base99 = percentile([o.elapsed for o in baseline], 0.99)
        under99 = percentile([o.elapsed for o in under], 0.99)
        report(self, "slowhttptest", p99ms=(round(base99 * 1000, 1), round(under99 * 1000, 1)),
               outcomes=summary(under), fdsUnderAttack=attacked)
        self.assertTrue(lb.alive())
        self.assertGreater(attacked, SLOW_CONNECTIONS // 2)
        self.assertEqual(summary(under), {"ok:200": 200})
        assertUsualLatency(self, baseline, under, text[-2000:])
