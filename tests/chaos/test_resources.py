"""
The balancer's own resources and signals: file descriptors run out while
an honest client keeps asking, and a second C{SIGTERM} and a C{SIGHUP}
arrive during the graceful stop, and it is stopped (C{SIGSTOP}) with
requests in flight.  The balancer never spins, never holds
its own shortage against the backends, serves again as soon as
descriptors are back, and finishes its graceful stop whatever it is sent.
"""

from __future__ import annotations

import os
import signal
import socket
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks

from tests.chaos.test_faults import FaultsTestCase
from tests.chaos.tools import (
    BalancerProcess,
    Outcome,
    cpuSeconds,
    fetch,
    inThread,
    procStats,
    report,
    summary,
)
from tests.support import sleep

# The balancer's limit of open files, and how many idle connections
# exhaust it.
MAX_FILES = 64
IDLE_CONNECTIONS = 200


def holdIdle(port: int, count: int) -> list[socket.socket]:
    """
    Open C{count} connections to 127.0.0.1:C{port} that send nothing (the
    kernel completes them whether or not the balancer accepts).
    """
    held = []
    for _ in range(count):
        try:
            held.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        except OSError:
            break
    return held


def honestRequests(port: int, seconds: float, every: float = 0.05) -> list[Outcome]:
    """
    One request every C{every} seconds for C{seconds}, one at a time.
    """
    outcomes = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        outcomes.append(fetch(port, timeout=3))
        time.sleep(every)
    return outcomes


class ResourceTests(FaultsTestCase):
    """
    A real balancer process short of file descriptors, and stopped twice.
    """

    @inlineCallbacks
    def startLimited(self, maxFiles: int | None = None) -> Any:
        """
        A balancer over backends a and b with fast health checks that bring
        a backend up only slowly (a false "down" would show as refused
        requests for a second) and a response timeout of 1 s, limited to
        C{maxFiles} open files.
        """
        backends = yield self.startBackends(("a",), ("b",))
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        lb = BalancerProcess(self, workdir, grace=5.0, maxFiles=maxFiles)
        lb.writeConfig({"web": {
            "health": {"interval": "300ms", "timeout": "300ms", "rise": 3, "fall": 2},
            "timeouts": {"response": "1s"},
            "backends": [{"name": n, "endpoint": b.endpoint} for n, b in backends.items()],
        }})
        yield lb.start()
        return lb

    @inlineCallbacks
    def test_outOfFileDescriptors(self) -> Any:
        """
        With C{ulimit -n 64}, 200 idle connections held for 1.5 s: the
        balancer, out of descriptors, does not spin; it stops accepting
        for a while, again and again, so a request made meanwhile waits in
        the backlog (it is not accepted and closed) and is answered as soon
        as the idle connections close; its failed probes are logged as
        checks not made rather than taking the backends down.  Once the
        idle connections close, every request of an honest client is
        served at once, and the descriptors it held are all given back.
        """
        lb = yield self.startLimited(MAX_FILES)
        # Warm up: the kept-alive backend connections are open before.
        before = yield inThread(honestRequests, lb.port, 0.3)
        self.assertEqual(summary(before), {"ok:200": len(before)})
        fdsBefore, _ = procStats(lb.pid)
        cpuBefore = cpuSeconds(lb.pid)
        held = yield inThread(holdIdle, lb.port, IDLE_CONNECTIONS)
        yield sleep(0.5)
        waiting = inThread(lambda: fetch(lb.port, timeout=5))
        yield sleep(1.0)
        busy = cpuSeconds(lb.pid) - cpuBefore
        fdsAtLimit, _ = procStats(lb.pid)
        closedAt = time.monotonic()
        for s in held:
            s.close()
        waited = yield waiting
        yield sleep(0.1)
        after = yield inThread(honestRequests, lb.port, 1.0)
        yield sleep(0.3)
        fdsAfter, _ = procStats(lb.pid)
        report(self, "out of file descriptors", held=len(held), cpuSeconds=round(busy, 2),
               waited=(waited.kind, round(waited.elapsed, 2)),
               fds=(fdsBefore, fdsAtLimit, fdsAfter), after=summary(after),
               worstMs=round(max(o.elapsed for o in after) * 1000))
        self.assertEqual(len(held), IDLE_CONNECTIONS)
        self.assertEqual(fdsAtLimit, MAX_FILES)
        self.assertLess(busy, 0.5)
        self.assertEqual((waited.kind, waited.status), ("ok", 200))
        self.assertLess(waited.started + waited.elapsed - closedAt, 0.5)
        self.assertIsNotNone(lb.logLine("cannot accept (EMFILE"))
        self.assertIsNotNone(lb.logLine("accepts again"))
        self.assertIsNotNone(lb.logLine("check not made, the balancer is short of resources"))
        self.assertIsNone(lb.logLine("is down"), lb.log())
        self.assertGreater(len(after), 10)
        self.assertEqual(summary(after), {"ok:200": len(after)})
        self.assertLessEqual(fdsAfter, fdsBefore)

    @inlineCallbacks
    def signalsDuringTheStop(self, first: int, then: tuple[int, ...]) -> Any:
        """
        Stop the balancer with C{first} while a request is in flight, send
        C{then} during the graceful stop; the request's outcome and the exit
        status.
        """
        lb = yield self.startLimited()
        inFlight = inThread(lambda: fetch(lb.port, "/?delay=800ms", timeout=5))
        yield sleep(0.3)
        for signum in (first, *then):
            lb.signal(signum)
            yield sleep(0.1)
        outcome = yield inFlight
        assert lb.process is not None
        status = yield inThread(lb.process.wait, 10)
        self.assertEqual((outcome.kind, outcome.status), ("ok", 200))
        self.assertIsNotNone(lb.logLine("SIGHUP received while stopping: no reload"))
        self.assertNotIn("Traceback", lb.log())
        return lb, status

    @inlineCallbacks
    def test_signalsDuringTheStop(self) -> Any:
        """
        A second C{SIGTERM} and a C{SIGHUP} (log rotation) during the
        graceful stop change nothing: the request in flight is answered,
        the log says the stop goes on and no reload is made (no
        traceback), and the exit status is 0, as after one C{SIGTERM}.
        """
        lb, status = yield self.signalsDuringTheStop(
            signal.SIGTERM, (signal.SIGTERM, signal.SIGHUP))
        self.assertIsNotNone(lb.logLine("SIGTERM received again: the graceful stop goes on"))
        self.assertEqual(status, 0)

    @inlineCallbacks
    def test_sighupDuringAStopBySIGINT(self) -> Any:
        """
        A C{SIGHUP} during the graceful stop twistd's own C{SIGINT} handler
        began does not kill the process (the default handler's action):
        the request in flight is answered, no reload is made, and the
        process ends as twistd ends one stopped by C{SIGINT}, by that
        signal.
        """
        _, status = yield self.signalsDuringTheStop(signal.SIGINT, (signal.SIGHUP,))
        self.assertEqual(status, -signal.SIGINT)

    @inlineCallbacks
    def test_stoppedWithRequestsInFlight(self) -> Any:
        """
        The balancer stopped (C{SIGSTOP}) for 2 s, twice its response
        timeout, while four requests wait on their backends, which answer
        meanwhile: once resumed it relays the answers that came in time
        instead of timing them out (a 504 each, and both backends marked
        down for everyone after them).
        """
        lb = yield self.startLimited()
        inFlight = [inThread(lambda: fetch(lb.port, "/?delay=200ms", timeout=8))
                    for _ in range(4)]
        yield sleep(0.1)
        lb.signal(signal.SIGSTOP)
        try:
            yield sleep(2.0)
        finally:
            lb.signal(signal.SIGCONT)
        outcomes = []
        for d in inFlight:
            outcomes.append((yield d))
        yield sleep(0.5)
        after = yield inThread(honestRequests, lb.port, 0.5)
        report(self, "stopped with requests in flight", inFlight=summary(outcomes),
               after=summary(after))
        self.assertEqual(summary(outcomes), {"ok:200": 4})
        self.assertIsNone(lb.logLine("is down"), lb.log())
        self.assertEqual(summary(after), {"ok:200": len(after)})
