"""
Tests for L{lbtwist.health}, on a fake clock.
"""

from __future__ import annotations

import errno
import random
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectBindError, ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import BackendConfig, HealthCheck, PoolConfig
from lbtwist.health import HealthMonitor
from lbtwist.pool import Admin, Backend, BackendPool, Health


class ScriptedProbe:
    """
    A probe whose outcome per backend is set by the test: C{"ok"}, C{"fail"},
    C{"emfile"} (no socket: the balancer is out of file descriptors, as the
    dialler reports it) or C{"hang"} (a Deferred that never fires by itself).
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.outcome: dict[str, str] = {}
        self.calls: list[tuple[float, str]] = []
        self.pending: list[Deferred[object]] = []

    def __call__(self, backend: Backend) -> Deferred[object]:
        self.calls.append((self.clock.seconds(), backend.name))
        outcome = self.outcome.get(backend.name, "ok")
        if outcome == "ok":
            return succeed(None)
        if outcome == "fail":
            return fail(ConnectionRefusedError("refused"))
        if outcome == "emfile":
            return fail(ConnectBindError(errno.EMFILE, "Too many open files"))
        d: Deferred[object] = Deferred()
        self.pending.append(d)
        return d


def makeMonitor(
    n: int = 2, interval: float = 2.0, timeout: float = 1.0
) -> tuple[Clock, BackendPool, ScriptedProbe, HealthMonitor]:
    clock = Clock()
    hc = HealthCheck(interval=interval, timeout=timeout, rise=2, fall=3)
    pool = BackendPool(
        PoolConfig(
            name="web",
            health=hc,
            backends=tuple(
                BackendConfig(f"b{i}", f"tcp:host=127.0.0.1:port={8001 + i}", health=hc)
                for i in range(n)
            ),
        ),
        random.Random(0),
    )
    probe = ScriptedProbe(clock)
    monitor = HealthMonitor(pool, {"tcp": probe}, clock)
    return clock, pool, probe, monitor


class MonitorTests(SynchronousTestCase):
    """
    Tests for L{HealthMonitor}.
    """

    def test_interval(self) -> None:
        """
        Every backend is probed at once, then every C{interval} seconds.
        """
        clock, pool, probe, monitor = makeMonitor()
        monitor.startService()
        self.addCleanup(monitor.stopService)
        clock.advance(2)
        clock.advance(2)
        self.assertEqual(
            probe.calls,
            [(0, "b0"), (0, "b1"), (2, "b0"), (2, "b1"), (4, "b0"), (4, "b1")],
        )

    def test_riseAndFall(self) -> None:
        """
        A backend goes up after 2 good probes, down after 3 bad ones, and up
        again after 2 good ones.
        """
        clock, pool, probe, monitor = makeMonitor(n=1)
        b0 = pool.get("b0")
        assert b0 is not None
        monitor.startService()
        self.addCleanup(monitor.stopService)
        self.assertEqual(b0.health, Health.UNKNOWN)
        clock.advance(2)
        self.assertEqual(b0.health, Health.UP)
        self.assertIsNotNone(b0.probeLatency)
        probe.outcome["b0"] = "fail"
        clock.advance(2)
        clock.advance(2)
        self.assertEqual(b0.health, Health.UP)
        clock.advance(2)
        self.assertEqual(b0.health, Health.DOWN)
        self.assertIsNone(pool.pick())
        probe.outcome["b0"] = "ok"
        clock.advance(2)
        self.assertEqual(b0.health, Health.DOWN)
        clock.advance(2)
        self.assertEqual(b0.health, Health.UP)

    def test_transitionsLogged(self) -> None:
        """
        A refused probe streak is logged as a warning that reads as one
        sentence (the error message's full stop does not run into the
        count: no "., "), and the recovery as info.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock, pool, probe, monitor = makeMonitor(n=1)
        probe.outcome["b0"] = "fail"
        monitor.startService()
        self.addCleanup(monitor.stopService)
        clock.advance(2)
        clock.advance(2)
        probe.outcome["b0"] = "ok"
        clock.advance(2)
        clock.advance(2)
        lines = [(e["log_level"].name, formatEvent(e)) for e in events
                 if e.get("backend") == "b0"]
        self.assertEqual(lines, [
            ("warn", "backend b0 of pool web is down (was unknown): tcp check failed: "
                     "Connection was refused by other side: refused, 3 failures in a row"),
            ("info", "backend b0 of pool web is up (was down): tcp check passed, "
                     "2 in a row"),
        ])

    def test_balancerOutOfDescriptors(self) -> None:
        """
        A probe that fails because the balancer itself has no file
        descriptor left (C{EMFILE}) says nothing of the backend: however
        many in a row, the backend stays up and its failures uncounted,
        each is logged as a check not made, and once descriptors are back
        the next probe counts as usual.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        clock, pool, probe, monitor = makeMonitor(n=1)
        b0 = pool.get("b0")
        assert b0 is not None
        monitor.startService()
        self.addCleanup(monitor.stopService)
        clock.advance(2)
        self.assertEqual(b0.health, Health.UP)
        probe.outcome["b0"] = "emfile"
        for _ in range(5):
            clock.advance(2)
        self.assertEqual(b0.health, Health.UP)
        self.assertEqual((b0.failures, b0.consecutiveFailures), ({}, 0))
        self.assertIs(pool.pick(), b0)
        notMade = [formatEvent(e) for e in events if "not made" in formatEvent(e)]
        self.assertEqual(len(notMade), 5)
        self.assertEqual(notMade[0], (
            "backend b0 of pool web: tcp check not made, the balancer is short of "
            "resources (EMFILE: Couldn't bind: 24: Too many open files.); its health "
            "stays up"))
        probe.outcome["b0"] = "fail"
        for _ in range(3):
            clock.advance(2)
        self.assertEqual(b0.health, Health.DOWN)

    def test_timeoutNoOverlap(self) -> None:
        """
        A probe that hangs is cancelled after the timeout and counted as a
        failure; no second probe of that backend starts meanwhile.
        """
        clock, pool, probe, monitor = makeMonitor(n=1, interval=1.0, timeout=3.0)
        probe.outcome["b0"] = "hang"
        monitor.startService()
        self.addCleanup(monitor.stopService)
        clock.advance(1)
        clock.advance(1)
        self.assertEqual(len(probe.calls), 1)
        clock.advance(1)
        b0 = pool.get("b0")
        assert b0 is not None
        self.assertEqual(b0.failures, {"probe": 1})
        self.assertEqual(b0.lastChange, "")
        clock.advance(1)
        self.assertEqual(len(probe.calls), 2)

    def test_maintPausesChecks(self) -> None:
        """
        A backend in maintenance is not probed.
        """
        clock, pool, probe, monitor = makeMonitor(n=1)
        monitor.startService()
        self.addCleanup(monitor.stopService)
        pool.setAdmin("b0", Admin.MAINT)
        clock.advance(2)
        clock.advance(2)
        self.assertEqual(len(probe.calls), 1)

    def test_followsPool(self) -> None:
        """
        Added backends are probed; removed ones no longer are.
        """
        clock, pool, probe, monitor = makeMonitor(n=1)
        monitor.startService()
        self.addCleanup(monitor.stopService)
        pool.add(BackendConfig("new", "tcp:host=127.0.0.1:port=9"))
        self.assertEqual(probe.calls[-1], (0, "new"))
        pool.remove("b0")
        clock.advance(2)
        self.assertEqual([name for t, name in probe.calls if t == 2], ["new"])

    def test_stop(self) -> None:
        """
        Stopping the monitor cancels probes in flight, counts no failure and
        leaves no timer.
        """
        clock, pool, probe, monitor = makeMonitor(n=1)
        probe.outcome["b0"] = "hang"
        monitor.startService()
        monitor.stopService()
        self.assertEqual(pool.get("b0").failures, {})  # type: ignore[union-attr]
        self.assertEqual(clock.getDelayedCalls(), [])


class BrokenCheckKindTests(SynchronousTestCase):
    """
    A registered kind of check whose factory raises (see
    L{lbtwist.extend.registerCheck}) fails the checks of that kind, as a
    probe that cannot connect does, and is tried again on the next interval.
    """

    def test_factoryRaises(self) -> None:
        """
        Each backend of a pool whose check cannot be built is marked down
        after C{fall} failed checks, rather than left unchecked, taking
        clients, for ever; once the factory works, the checks pass and the
        backends come up.
        """
        from lbtwist.extend import CHECKS
        from lbtwist.health import Probes

        broken = [True]

        def factory(dialler: object) -> Any:
            if broken[0]:
                raise RuntimeError("no banner library")
            return lambda backend: succeed(None)

        CHECKS.register("broken", factory)
        self.addCleanup(CHECKS.unregister, "broken")
        clock, pool, _, _ = makeMonitor()
        hc = HealthCheck(kind="broken", interval=2.0, timeout=1.0, rise=2, fall=3)
        pool = BackendPool(PoolConfig(name="web", health=hc, backends=tuple(
            BackendConfig(f"b{i}", f"tcp:host=127.0.0.1:port={8001 + i}", health=hc)
            for i in range(2))), random.Random(0))
        monitor = HealthMonitor(pool, Probes(dialler=None), clock)  # type: ignore[arg-type]
        monitor.startService()
        self.addCleanup(monitor.stopService)
        for _ in range(3):
            clock.advance(2.0)
        self.assertEqual([b.health for b in pool], [Health.DOWN, Health.DOWN])
        self.assertFalse(any(b.eligible for b in pool))
        # One check at the start, one per interval.
        self.assertEqual([b.failures for b in pool], [{"probe": 4}, {"probe": 4}])
        broken[0] = False
        for _ in range(2):
            clock.advance(2.0)
        self.assertEqual([b.health for b in pool], [Health.UP, Health.UP])
