"""
Tests for L{lbtwist.pool}.
"""

from __future__ import annotations

import random

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import BackendConfig, HealthCheck, PoolConfig
from lbtwist.pool import (
    Admin,
    BackendAdded,
    BackendPool,
    BackendRemoved,
    Health,
    PoolEvent,
    StateChanged,
)


def makePool(n: int = 3, policy: str = "roundrobin", rise: int = 2, fall: int = 3) -> BackendPool:
    """
    A pool of C{n} backends named a, b, c...
    """
    hc = HealthCheck(rise=rise, fall=fall)
    return BackendPool(
        PoolConfig(
            name="web",
            policy=policy,
            backends=tuple(
                BackendConfig(chr(ord("a") + i), f"tcp:host=127.0.0.1:port={8000 + i}",
                              health=hc)
                for i in range(n)
            ),
        ),
        random.Random(0),
    )


class PickTests(SynchronousTestCase):
    """
    Tests for L{BackendPool.pick}.
    """

    def test_unknownGetsTraffic(self) -> None:
        """
        Backends start unknown and are eligible: the pool serves at once.
        """
        pool = makePool()
        self.assertEqual({b.health for b in pool}, {Health.UNKNOWN})
        self.assertEqual([pool.pick().name for _ in range(3)], ["a", "b", "c"])

    def test_skipsDown(self) -> None:
        """
        A down backend gets no clients.
        """
        pool = makePool()
        b = pool.get("b")
        assert b is not None
        for _ in range(3):
            pool.failed(b, "probe", "refused")
        self.assertEqual({pool.pick().name for _ in range(6)}, {"a", "c"})

    def test_exclude(self) -> None:
        """
        Backends already tried are not picked again.
        """
        pool = makePool()
        a, b = pool.get("a"), pool.get("b")
        assert a is not None and b is not None
        self.assertEqual(pool.pick(exclude=[a, b]).name, "c")

    def test_noneEligible(self) -> None:
        """
        When every backend is down or out, there is no pick.
        """
        pool = makePool(2)
        pool.setAdmin("a", Admin.MAINT)
        pool.setAdmin("b", Admin.DRAIN)
        self.assertIsNone(pool.pick())


class HealthStateTests(SynchronousTestCase):
    """
    Tests for the rise/fall state machine.
    """

    def setUp(self) -> None:
        self.pool = makePool(rise=2, fall=3)
        self.events: list[PoolEvent] = []
        self.pool.observers.append(self.events.append)
        backend = self.pool.get("a")
        assert backend is not None
        self.backend = backend

    def test_fall(self) -> None:
        """
        C{fall} consecutive failures mark a backend down, not fewer.
        """
        self.pool.failed(self.backend, "probe", "refused")
        self.pool.failed(self.backend, "probe", "refused")
        self.assertEqual(self.backend.health, Health.UNKNOWN)
        self.pool.failed(self.backend, "probe", "refused")
        self.assertEqual(self.backend.health, Health.DOWN)
        self.assertEqual(self.backend.failures, {"probe": 3})
        [event] = self.events
        assert isinstance(event, StateChanged)
        self.assertEqual((event.old, event.new), ("unknown", "down"))
        self.assertIn("3 failures in a row", event.reason)

    def test_successResetsFall(self) -> None:
        """
        A success between failures restarts the count.
        """
        for _ in range(2):
            self.pool.failed(self.backend, "probe", "refused")
        self.pool.succeeded(self.backend)
        for _ in range(2):
            self.pool.failed(self.backend, "probe", "refused")
        self.assertNotEqual(self.backend.health, Health.DOWN)

    def test_rise(self) -> None:
        """
        A down backend needs C{rise} consecutive successes to come back.
        """
        for _ in range(3):
            self.pool.failed(self.backend, "probe", "refused")
        self.pool.succeeded(self.backend)
        self.assertEqual(self.backend.health, Health.DOWN)
        self.pool.succeeded(self.backend)
        self.assertEqual(self.backend.health, Health.UP)
        self.assertEqual([e.new for e in self.events if isinstance(e, StateChanged)],
                         ["down", "up"])

    def test_passiveFailures(self) -> None:
        """
        Failed client connections count towards C{fall}; a good connection
        ends the streak but does not by itself bring a backend up.
        """
        self.pool.failed(self.backend, "refused", "connect refused")
        self.pool.failed(self.backend, "refused", "connect refused")
        self.pool.connectSucceeded(self.backend)
        self.pool.failed(self.backend, "refused", "connect refused")
        self.assertEqual(self.backend.health, Health.UNKNOWN)

    def test_allDownLogged(self) -> None:
        """
        When the last eligible backend goes down, a critical event says so.
        """
        logged: list[dict[str, object]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        for b in self.pool:
            for _ in range(3):
                self.pool.failed(b, "probe", "refused")
        critical = [e for e in logged if "ALL BACKENDS" in str(e.get("log_format"))]
        self.assertEqual(len(critical), 1)


class AdminTests(SynchronousTestCase):
    """
    Tests for adding, removing and administering backends.
    """

    def test_addRemove(self) -> None:
        """
        Added backends are eligible at once; removed ones get no more clients
        and observers hear of both.
        """
        pool = makePool(1)
        events: list[PoolEvent] = []
        pool.observers.append(events.append)
        added = pool.add(BackendConfig("z", "tcp:host=127.0.0.1:port=9"))
        self.assertEqual({pool.pick().name for _ in range(4)}, {"a", "z"})
        removed = pool.remove("a")
        self.assertTrue(removed.removed)
        self.assertEqual({pool.pick().name for _ in range(4)}, {"z"})
        self.assertEqual([type(e) for e in events], [BackendAdded, BackendRemoved])
        self.assertIs(events[0].backend, added)

    def test_duplicateAdd(self) -> None:
        """
        Adding a name already present is refused and changes nothing.
        """
        pool = makePool(1)
        self.assertRaises(KeyError, pool.add, BackendConfig("a", "tcp:host=x:port=1"))
        self.assertEqual(len(pool), 1)

    def test_maintResetsHealth(self) -> None:
        """
        Maintenance takes a backend out; on return its health is unknown.
        """
        pool = makePool(1)
        a = pool.get("a")
        assert a is not None
        pool.succeeded(a)
        pool.succeeded(a)
        pool.setAdmin("a", Admin.MAINT)
        self.assertEqual(a.state, "maint")
        self.assertIsNone(pool.pick())
        pool.setAdmin("a", Admin.READY)
        self.assertEqual(a.state, "unknown")
        self.assertIs(pool.pick(), a)

    def test_weight(self) -> None:
        """
        Weights can change at run time within 0-256.
        """
        pool = makePool(1)
        self.assertEqual(pool.setWeight("a", 7).weight, 7)
        self.assertRaises(ValueError, pool.setWeight, "a", 300)
        self.assertRaises(KeyError, pool.setWeight, "nope", 1)


class StatsTests(SynchronousTestCase):
    """
    Tests for L{BackendPool.stats}.
    """

    def test_share(self) -> None:
        """
        Each backend's share is its percentage of the pool's traffic, and the
        active count follows opened and closed.
        """
        pool = makePool(2)
        a, b = pool.get("a"), pool.get("b")
        assert a is not None and b is not None
        for _ in range(3):
            pool.opened(a)
        pool.opened(b)
        pool.closed(a)
        stats = {s.name: s for s in pool.stats()}
        self.assertEqual((stats["a"].active, stats["a"].total), (2, 3))
        self.assertEqual(stats["a"].share, 75.0)
        self.assertEqual(stats["b"].share, 25.0)
