"""
Resource limits: per-backend C{maxconn} with a bounded queue and queue
timeout, the global C{maxconn}, a fast 503 past them, and no file
descriptor or memory leaked after thousands of connections.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import LoopingCall

from tests.chaos.test_faults import FaultsTestCase
from tests.chaos.tools import (
    BalancerProcess,
    Outcome,
    fetch,
    load,
    procStats,
    report,
    summary,
)
from tests.support import reactor, sleep

# Connections sent through the balancer by the leak test in `make test`;
# the soak run (soak/soak.py) sends 100,000.
LEAK_CONNECTIONS = int(os.environ.get("LBTWIST_CHAOS_CONNECTIONS", "10000"))


class QueueTests(FaultsTestCase):
    """
    Per-backend maxconn and the pool's queue, in both modes.
    """

    def watchActive(self, lb: Any) -> list[int]:
        """
        Sample the highest number of requests in flight per backend every
        5 ms until the test ends; the returned list holds the maximum.
        """
        highest = [0]
        pool = lb.pools["web"]

        def sample() -> None:
            highest[0] = max([highest[0], *(b.slots for b in pool)])

        loop = LoopingCall(sample)
        loop.clock = reactor
        loop.start(0.005)
        self.addCleanup(loop.stop)
        return highest

    @inlineCallbacks
    def test_httpQueueTimeoutAndFull(self) -> Any:
        """
        With maxconn 2 and a queue of 4 (300 ms): of 10 simultaneous slow
        requests, 2 are served, 4 wait and get a 503 at the queue timeout,
        and 4 get a 503 at once; the backend never has more than 2.
        """
        backends = yield self.startBackends(("a",))
        lb, port = self.balancer(
            backends, maxconn=2, queue={"size": 4, "timeout": "300ms"},
            timeouts={"response": "5s"},
        )
        highest = self.watchActive(lb)
        outcomes: list[Outcome] = yield load(port, 10, 10, 10, lambda n, i: fetch(
            port, "/?delay=700ms", timeout=5))
        s = summary(outcomes)
        fast = sorted(o.elapsed for o in outcomes if o.status == 503)[:4]
        queued = sorted(o.elapsed for o in outcomes if o.status == 503)[4:]
        report(self, "http queue", outcomes=s, fast503=max(fast), queued503=queued,
               highest=highest[0])
        self.assertEqual(s, {"ok:200": 2, "ok:503": 8})
        self.assertLess(max(fast), 0.2)
        self.assertTrue(all(0.25 < t < 0.6 for t in queued), queued)
        self.assertEqual(highest[0], 2)
        self.assertEqual(len(backends["a"].requests()), 2)
        self.assertEqual(lb.pools["web"].queueLength, 0)

    @inlineCallbacks
    def test_httpQueueDrains(self) -> Any:
        """
        Requests queued behind a busy backend are served in turn once slots
        free up, and the backend never holds more than its maxconn.
        """
        backends = yield self.startBackends(("a",), ("b",))
        lb, port = self.balancer(
            backends, maxconn=2, queue={"size": 50, "timeout": "5s"},
        )
        highest = self.watchActive(lb)
        outcomes = yield load(port, 16, 20, 48, lambda n, i: fetch(
            port, "/?delay=100ms", timeout=10))
        s = summary(outcomes)
        report(self, "http queue drains", outcomes=s, highest=highest[0],
               slowest=round(max(o.elapsed for o in outcomes), 2),
               queued=lb.pools["web"].queued)
        self.assertEqual(s, {"ok:200": 48})
        self.assertEqual(highest[0], 2)
        self.assertGreater(lb.pools["web"].queued, 0)

    @inlineCallbacks
    def test_tcpQueue(self) -> Any:
        """
        TCP mode: past maxconn a connection waits in the queue, is joined
        when a slot frees, and is closed at the queue timeout or at once
        when the queue is full.
        """
        backends = yield self.startBackends(("a",))
        lb, port = self.balancer(
            backends, mode="tcp", maxconn=1, queue={"size": 2, "timeout": "400ms"},
        )
        outcomes: list[Outcome] = yield load(port, 4, 10, 4, lambda n, i: fetch(
            port, "/?delay=1s", timeout=5))
        s = summary(outcomes)
        closed = sorted(o.elapsed for o in outcomes if o.kind == "closed")
        report(self, "tcp queue", outcomes=s, closedAfter=[round(t, 2) for t in closed])
        self.assertEqual(s, {"ok:200": 1, "closed": 3})
        self.assertLess(closed[0], 0.2)
        self.assertTrue(all(0.35 < t < 0.9 for t in closed[1:]), closed)
        yield sleep(0.2)
        served = yield load(port, 3, 10, 3, lambda n, i: fetch(port, "/?delay=100ms"))
        self.assertEqual(summary(served), {"ok:200": 3})

    @inlineCallbacks
    def test_globalMaxconn(self) -> Any:
        """
        At the global maxconn the listener stops accepting: a client past
        it waits (in the kernel's queue) until a connection closes, then is
        served; none is refused.
        """
        backends = yield self.startBackends(("a",))
        from tests.support import poolConfig, startBalancer

        data = poolConfig([("a", backends["a"].endpoint)], "tcp")
        data["maxconn"] = 3
        lb, port = startBalancer(self, data)
        outcomes: list[Outcome] = yield load(port, 4, 10, 4, lambda n, i: fetch(
            port, "/?delay=800ms", timeout=5))
        s = summary(outcomes)
        times = sorted(o.elapsed for o in outcomes)
        report(self, "global maxconn", outcomes=s, times=[round(t, 2) for t in times],
               paused=lb.limit.paused)
        self.assertEqual(s, {"ok:200": 4})
        self.assertGreater(times[-1], 1.4)
        self.assertLess(times[-2], 1.2)
        self.assertGreaterEqual(lb.limit.paused, 1)
        yield sleep(0.2)
        self.assertEqual(lb.limit.active, 0)


class LeakTests(FaultsTestCase):
    """
    A real balancer process under overload and many connections.
    """

    timeout = 180

    @inlineCallbacks
    def startProcess(self, mode: str = "http", **pool: Any) -> Any:
        """
        Two backend processes and a C{twistd} balancer over them.
        """
        backends = yield self.startBackends(("a",), ("b",))
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        lb = BalancerProcess(self, workdir)
        extra = pool.pop("backend", {})
        body = {"backends": [{"name": n, "endpoint": b.endpoint, **extra}
                             for n, b in backends.items()], **pool}
        lb.writeConfig({"web": body}, mode=mode)
        yield lb.start()
        return lb, backends

    @inlineCallbacks
    def test_overloadFast503(self) -> Any:
        """
        Far past maxconn and the queue, clients get a fast 503 and the
        balancer's file descriptors and memory stay flat.
        """
        lb, backends = yield self.startProcess(
            backend={"maxconn": 4}, queue={"size": 8, "timeout": "200ms"})
        warm = yield load(lb.port, 40, 10, 800, lambda n, i: fetch(lb.port, "/?delay=50ms"))
        self.assertEqual(summary(warm).get("ok:200", 0) + summary(warm).get("ok:503", 0), 800)
        yield sleep(0.3)
        before = procStats(lb.pid)
        outcomes: list[Outcome] = yield load(lb.port, 40, 4, 100000, lambda n, i: fetch(
            lb.port, "/?delay=50ms", timeout=5))
        yield sleep(0.5)
        after = procStats(lb.pid)
        s = summary(outcomes)
        rejected = sorted(o.elapsed for o in outcomes if o.status == 503)
        p99 = rejected[int(len(rejected) * 0.99)] if rejected else 0
        report(self, "overload", outcomes=s, p99of503=round(p99, 3),
               fds=(before[0], after[0]), rssKiB=(before[1], after[1]))
        self.assertEqual(set(s) - {"ok:200", "ok:503"}, set(), s)
        self.assertGreater(s.get("ok:503", 0), 100)
        self.assertGreater(s.get("ok:200", 0), 100)
        self.assertLess(p99, 0.4)
        self.assertLessEqual(after[0] - before[0], 10)
        self.assertLess(after[1] - before[1], 8192)

    @inlineCallbacks
    def test_noLeakAfterManyConnections(self) -> Any:
        """
        After thousands of connections (10,000 in C{make test}, 100,000 in
        the soak run), the balancer holds as many file descriptors as
        before, and its memory has not grown with the count.
        """
        lb, backends = yield self.startProcess()
        warm = yield load(lb.port, 8, 60, 2000, lambda n, i: fetch(lb.port, "/?bytes=1k"))
        self.assertEqual(summary(warm), {"ok:200": 2000})
        yield sleep(0.3)
        before = procStats(lb.pid)
        started = time.monotonic()
        outcomes = yield load(lb.port, 8, 120, LEAK_CONNECTIONS, lambda n, i: fetch(
            lb.port, "/?bytes=1k"))
        rate = len(outcomes) / (time.monotonic() - started)
        yield sleep(0.3)
        after = procStats(lb.pid)
        s = summary(outcomes)
        report(self, "no leak", connections=len(outcomes), rate=round(rate),
               fds=(before[0], after[0]), rssKiB=(before[1], after[1]))
        self.assertEqual(s, {"ok:200": LEAK_CONNECTIONS})
        # Idle pooled backend connections come and go; a leak of even one
        # in a thousand connections would show as ten or more.
        self.assertLessEqual(after[0] - before[0], 8)
        self.assertLess(after[1] - before[1], 4096)
