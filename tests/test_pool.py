"""
Tests for L{lbtwist.pool}.
"""

from __future__ import annotations

import gc
import random
import weakref
from collections import Counter
from typing import Any, Sequence

import attrs
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import POLICY_NAMES, BackendConfig, HealthCheck, Outlier, PoolConfig
from lbtwist.policies import _smoothTurn
from lbtwist.pool import (
    Admin,
    AdminChanged,
    BackendAdded,
    BackendPool,
    BackendRemoved,
    Health,
    HealthChanged,
    PoolEvent,
)


def makePool(n: int = 3, policy: str = "roundrobin", rise: int = 2, fall: int = 3,
             weights: Sequence[int] = ()) -> BackendPool:
    """
    A pool of C{n} backends named a, b, c... (of C{weights}, if given).
    """
    hc = HealthCheck(rise=rise, fall=fall)
    weights = weights or (1,) * n
    return BackendPool(
        PoolConfig(
            name="web",
            policy=policy,
            backends=tuple(
                BackendConfig(chr(ord("a") + i), f"tcp:host=127.0.0.1:port={8000 + i}",
                              weight=w, health=hc)
                for i, w in enumerate(weights)
            ),
        ),
        random.Random(0),
    )


def logged(case: SynchronousTestCase) -> list[dict[str, Any]]:
    """
    The log events emitted from now until the end of the test.
    """
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    case.addCleanup(globalLogPublisher.removeObserver, events.append)
    return events


def about(events: list[dict[str, Any]], backend: str) -> list[tuple[str, str]]:
    """
    The level and text of the events that name C{backend}.
    """
    return [(e["log_level"].name, formatEvent(e)) for e in events
            if e.get("backend") == backend]


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


    def test_picksEligibleOnly(self) -> None:
        """
        L{BackendPool.pick}, which writes L{Backend.eligible} out, picks a
        backend exactly when it is eligible, in every state of what makes it
        so (its admin state, health, removal and ejection), with and
        without backends to exclude.
        """
        pool = makePool(2)
        a, b = pool.get("a"), pool.get("b")
        assert a is not None and b is not None
        rows = []
        for admin in Admin:
            for health in Health:
                for removed in (False, True):
                    for ejected in (False, True):
                        b.admin, b.health, b.removed, b.ejected = admin, health, removed, ejected
                        picked = {pool.pick().name for _ in range(2)}
                        pickedExcluding = pool.pick(exclude=[a])
                        rows.append((b.eligible, "b" in picked,
                                     pickedExcluding is not None and pickedExcluding.name == "b"))
        self.assertEqual(len(rows), len(Admin) * len(Health) * 4)
        self.assertEqual([(e, e, e) for e, _, _ in rows], rows)
        self.assertIn(True, [e for e, _, _ in rows])
        self.assertIn(False, [e for e, _, _ in rows])

    def test_candidatesFollowEveryChange(self) -> None:
        """
        A pick keeps the list it chooses among until a backend changes:
        after each change (through the pool, or set on the backend itself)
        the very next picks see it.  The backups c and d of primaries a and
        b serve once both are out, c alone unless C{all-backups}.
        """

        def backend(pool: BackendPool, name: str) -> Any:
            b = pool.get(name)
            assert b is not None
            return b

        changes: list[tuple[str, Any, set[str]]] = [
            ("admin drain", lambda p: p.setAdmin("b", Admin.DRAIN), {"a"}),
            ("admin maint", lambda p: p.setAdmin("b", Admin.MAINT), {"a"}),
            ("marked down", lambda p: p.markDown(backend(p, "b"), "probe", "x"), {"a"}),
            ("health set", lambda p: setattr(backend(p, "b"), "health", Health.DOWN), {"a"}),
            ("ejected", lambda p: setattr(backend(p, "b"), "ejected", True), {"a"}),
            ("removed", lambda p: p.remove("b"), {"a"}),
            ("weight 0", lambda p: p.setWeight("b", 0), {"a"}),
            ("made a backup", lambda p: p.configure("b", backup=True), {"a"}),
            ("added", lambda p: p.add(BackendConfig("e", "tcp:host=127.0.0.1:port=9")),
             {"a", "b", "e"}),
            ("primaries out", lambda p: [p.setAdmin(n, Admin.MAINT) for n in "ab"], {"c"}),
            ("all backups", lambda p: [p.setAdmin(n, Admin.MAINT) for n in "ab"]
             and setattr(p, "config", attrs.evolve(p.config, allBackups=True)), {"c", "d"}),
        ]
        for what, change, expected in changes:
            with self.subTest(what):
                pool = tieredPool("ppbb")
                self.assertEqual({pool.pick().name for _ in range(4)}, {"a", "b"})
                change(pool)
                self.assertEqual({pool.pick().name for _ in range(6)}, expected)

    def test_weightChangedMidRound(self) -> None:
        """
        Round-robin gives the same choices as a walk over the eligible
        backends at every pick (nginx's smooth weighted turn) when a weight
        changes (L{BackendPool.setWeight}) while a round is being replayed:
        a backend raised from 1 to 100 after 9 picks of a 10-backend round
        takes its new share smoothly, not a burst of every pick.
        """
        for before, name, weight in [(19, "a", 100), (5, "a", 3), (14, "c", 2),
                                     (7, "b", 0), (23, "d", 5)]:
            with self.subTest(before=before, backend=name, weight=weight):
                pool = makePool(10)
                current: dict[str, int] = {}
                chosen, walked = [], []
                for i in range(before + 40):
                    if i == before:
                        pool.setWeight(name, weight)
                    picked = pool.pick()
                    assert picked is not None
                    chosen.append(picked.name)
                    walked.append(_smoothTurn(current, [b for b in pool if b.weight]).name)
                self.assertEqual(chosen, walked)

    def test_discardedPoolFreedAtOnce(self) -> None:
        """
        A pool nobody holds any more (a reload removed it) is freed by
        reference counting, without the cyclic collector (which never frees
        what L{lbtwist.gctuning} froze at start-up): its backends, which
        tell it when they change, do not hold it; nor does one removed from
        it that is still draining.
        """
        if gc.isenabled():
            gc.disable()
            self.addCleanup(gc.enable)
        pool = makePool(3)
        for _ in range(4):
            pool.pick()
        draining = pool.remove("c")
        held = weakref.ref(pool)
        del pool
        self.assertIsNone(held())
        draining.health = Health.DOWN

    def test_candidatesAtMaxconn(self) -> None:
        """
        A backend at its maxconn is left out of the picks while it is, and
        taken again once a slot is back, though nothing else changed.
        """
        pool = BackendPool(PoolConfig(name="web", backends=(
            BackendConfig("a", "tcp:host=127.0.0.1:port=1", maxconn=1),
            BackendConfig("b", "tcp:host=127.0.0.1:port=2"),
        )), random.Random(0))
        a = pool.get("a")
        assert a is not None
        pool.acquire(a)
        self.assertEqual({pool.pick().name for _ in range(4)}, {"b"})
        pool.release(a)
        self.assertEqual({pool.pick().name for _ in range(4)}, {"a", "b"})


class WeightTests(SynchronousTestCase):
    """
    Weights count under every policy, and weight 0 takes no new clients.
    """

    # weights of a, b, c -> expected share of each, under every policy.
    table = [
        ((1, 1, 1), (1 / 3, 1 / 3, 1 / 3)),
        ((3, 1, 0), (3 / 4, 1 / 4, 0.0)),
        ((0, 5, 0), (0.0, 1.0, 0.0)),
        ((256, 0, 256), (0.5, 0.0, 0.5)),
        ((6, 3, 1), (0.6, 0.3, 0.1)),
    ]

    def test_distribution(self) -> None:
        """
        Under each policy, 4000 clients (with distinct keys, for source
        hashing) are spread in proportion to the weights; a backend of
        weight 0 gets none at all.
        """
        picks = 4000
        for policy in POLICY_NAMES:
            for weights, shares in self.table:
                pool = makePool(3, policy, weights=weights)
                counts = Counter(
                    pool.pick(b"10.1.%d.%d" % divmod(i, 256)).name  # type: ignore[union-attr]
                    for i in range(picks)
                )
                for name, share in zip("abc", shares):
                    with self.subTest(policy=policy, weights=weights, backend=name):
                        if share == 0.0:
                            self.assertEqual(counts[name], 0)
                        else:
                            self.assertTrue(abs(counts[name] / picks - share) <= 0.03,
                                            f"{counts[name] / picks} is not {share}")

    def test_allZero(self) -> None:
        """
        When every backend has weight 0 there is no backend for a new client
        (the client gets a 503, or its connection is closed), under every
        policy, and it does not wait in the queue.
        """
        for policy in POLICY_NAMES:
            pool = makePool(3, policy, weights=(0, 0, 0))
            with self.subTest(policy=policy):
                self.assertIsNone(pool.pick(b"10.0.0.1"))
                self.assertIsNone(pool.pick())
                self.assertFalse(pool.saturated())

    def test_setWeightZero(self) -> None:
        """
        Setting a weight to 0 at run time stops new clients at once, without
        touching its health or admin state; setting it back brings them back.
        """
        pool = makePool(2)
        pool.setWeight("a", 0)
        self.assertEqual({pool.pick().name for _ in range(6)}, {"b"})  # type: ignore[union-attr]
        self.assertEqual(pool.get("a").state, "unknown")  # type: ignore[union-attr]
        pool.setWeight("a", 2)
        self.assertEqual(Counter(pool.pick().name for _ in range(6)),  # type: ignore[union-attr]
                         {"a": 4, "b": 2})

    def test_zeroWeightDoesNotStopQueueing(self) -> None:
        """
        A weight-0 backend with room does not count as room: when the
        weighted backends are full, clients wait in the queue, and are woken
        when a weight is raised above 0.
        """
        pool = BackendPool(PoolConfig(name="web", backends=(
            BackendConfig("a", "tcp:host=127.0.0.1:port=1", maxconn=1),
            BackendConfig("z", "tcp:host=127.0.0.1:port=2", weight=0),
        )), random.Random(0))
        a = pool.get("a")
        assert a is not None
        pool.acquire(a)
        self.assertIsNone(pool.pick())
        self.assertTrue(pool.saturated())
        woken: list[bool] = []
        self.assertTrue(pool.enqueue(lambda: woken.append(True)))
        pool.setWeight("z", 1)
        self.assertEqual(woken, [True])

    def afterCalls(self, *calls: str) -> tuple[Any, ...]:
        """
        What a backend with one slot taken, a client joined to it, error
        streaks and a client waiting in the queue look like after the pool
        methods named in C{calls} are called for it.
        """
        pool = BackendPool(PoolConfig(name="web", backends=(
            BackendConfig("a", "tcp:host=127.0.0.1:port=1", maxconn=1),
        )), random.Random(0))
        a = pool.get("a")
        assert a is not None
        pool.acquire(a)
        pool.opened(a)
        a.consecutiveFailures = a.errorStreak = 2
        a.serverErrorStreak = a.gatewayStreak = 1
        woken: list[bool] = []
        self.assertTrue(pool.enqueue(lambda: woken.append(True)))
        for call in calls:
            getattr(pool, call)(a)
        return (a.active, pool.active, a.total, a.slots, a.consecutiveFailures,
                a.errorStreak, a.serverErrorStreak, a.gatewayStreak, woken)

    def test_exchangeFinished(self) -> None:
        """
        L{BackendPool.exchangeFinished} ends a request that succeeded as
        L{BackendPool.closed}, L{BackendPool.exchangeSucceeded} and
        L{BackendPool.release} do together: the backend is no longer
        active, its error streaks end, its slot is back and a client
        waiting in the queue is woken.
        """
        merged = self.afterCalls("exchangeFinished")
        self.assertEqual(merged, (0, 0, 1, 0, 0, 0, 0, 0, [True]))
        self.assertEqual(merged, self.afterCalls("closed", "exchangeSucceeded", "release"))

    def test_relayJoinedAndEnded(self) -> None:
        """
        L{BackendPool.relayJoined} counts a TCP client joined as
        L{BackendPool.opened} and L{BackendPool.exchangeSucceeded} do
        together (one more active, its error streaks over), and
        L{BackendPool.relayEnded} ends it as L{BackendPool.closed} and
        L{BackendPool.release} do (its slot back, the queue woken).
        """
        joined = self.afterCalls("relayJoined")
        self.assertEqual(joined, (2, 2, 2, 1, 0, 0, 0, 0, []))
        self.assertEqual(joined, self.afterCalls("opened", "exchangeSucceeded"))
        ended = self.afterCalls("relayEnded")
        self.assertEqual(ended, (0, 0, 1, 0, 2, 2, 1, 1, [True]))
        self.assertEqual(ended, self.afterCalls("closed", "release"))

    def test_weightChangeLogged(self) -> None:
        """
        A weight change is logged with the old and new weights; weight 0
        says that the backend takes no new clients.
        """
        pool = makePool(1)
        events = logged(self)
        pool.setWeight("a", 0)
        pool.setWeight("a", 0)
        pool.setWeight("a", 3)
        self.assertEqual(about(events, "a"), [
            ("info", "backend a of pool web: weight 0 (was 1), it takes no new clients"),
            ("info", "backend a of pool web: weight 3 (was 0)"),
        ])


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
        assert isinstance(event, HealthChanged)
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
        self.assertEqual([e.new for e in self.events if isinstance(e, HealthChanged)],
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
        events = logged(self)
        for b in self.pool:
            for _ in range(3):
                self.pool.failed(b, "probe", "refused")
        critical = [e for e in events if "ALL BACKENDS" in str(e.get("log_format"))]
        self.assertEqual(len(critical), 1)
        self.assertEqual(critical[0]["log_level"].name, "critical")

    def test_downIsWarningUpIsInfo(self) -> None:
        """
        One backend going down is a warning (not an info line, and not
        critical while others serve); coming back up is info.  The words
        say its health, old and new, and why, with no stray full stop from
        an error message before the count.
        """
        events = logged(self)
        for _ in range(3):
            self.pool.failed(self.backend, "probe",
                             "tcp check failed: Connection refused.")
        for _ in range(2):
            self.pool.succeeded(self.backend, "tcp check passed")
        self.assertEqual(about(events, "a"), [
            ("warn", "backend a of pool web is down (was unknown): tcp check failed: "
                     "Connection refused, 3 failures in a row"),
            ("info", "backend a of pool web is up (was down): tcp check passed, "
                     "2 in a row"),
        ])

    def test_healthApartFromAdmin(self) -> None:
        """
        A health transition of a drained backend says its health, not its
        admin state ("up (was down)", never "up (was drain)"); admin
        transitions are their own events with their own words.
        """
        events = logged(self)
        for _ in range(3):
            self.pool.failed(self.backend, "probe", "refused")
        self.pool.setAdmin("a", Admin.DRAIN)
        for _ in range(2):
            self.pool.succeeded(self.backend)
        self.pool.setAdmin("a", Admin.READY)
        self.assertEqual(about(events, "a"), [
            ("warn", "backend a of pool web is down (was unknown): refused, "
                     "3 failures in a row"),
            ("info", "backend a of pool web: admin state drain (was ready)"),
            ("info", "backend a of pool web is up (was down): check passed, 2 in a row"),
            ("info", "backend a of pool web: admin state ready (was drain)"),
        ])
        self.assertEqual(
            [(type(e), e.old, e.new) for e in self.events],
            [(HealthChanged, "unknown", "down"), (AdminChanged, "ready", "drain"),
             (HealthChanged, "down", "up"), (AdminChanged, "drain", "ready")],
        )


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

    def test_countResponse(self) -> None:
        """
        L{Backend.countResponse} shows a response's time as the last and
        counts it in the histogram, as setting C{responseTime} does;
        setting L{None} shows none and counts nothing.
        """
        pool = makePool(2)
        a, b = pool.get("a"), pool.get("b")
        assert a is not None and b is not None
        for t in (0.0005, 0.003, 20.0):
            a.countResponse(t)
            b.responseTime = t
        self.assertEqual(a.responseTime, 20.0)
        self.assertEqual(a.responseBuckets[0], 1)
        self.assertEqual(a.responseBuckets[-1], 1)
        self.assertEqual((a.responseBuckets, a.responseSum),
                         (b.responseBuckets, b.responseSum))
        a.responseTime = None
        self.assertIsNone(a.responseTime)
        self.assertEqual(sum(a.responseBuckets), 3)

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


def ejectingPool(n: int, clock: Clock, **outlier: Any) -> BackendPool:
    """
    A pool of C{n} backends named a, b, c... with outlier ejection (the
    defaults, changed by C{outlier}) timed by C{clock}.
    """
    pool = makePool(n)
    pool.config = attrs.evolve(pool.config, outlier=Outlier(**outlier))
    pool.clock = clock.seconds
    return pool


class OutlierTests(SynchronousTestCase):
    """
    Outlier ejection: errors in a row take a backend out of rotation for a
    growing time; it comes back by itself.
    """

    def answer503(self, pool: BackendPool, name: str, times: int) -> None:
        """
        Backend C{name} answers C{times} requests with 503.
        """
        backend = pool.get(name)
        assert backend is not None
        for _ in range(times):
            pool.exchangeError(backend, "status 503", 503)

    def picked(self, pool: BackendPool, times: int = 6) -> set[str]:
        """
        The backends C{times} picks choose.
        """
        chosen = set()
        for _ in range(times):
            backend = pool.pick()
            assert backend is not None
            chosen.add(backend.name)
        return chosen

    def test_ejectedAfterFive503ThenBackThenLonger(self) -> None:
        """
        With only the 5xx rule, five 503s in a row eject a backend for the
        base time; it comes back when that is over, and a second ejection
        lasts twice as long.  Each is logged, and the admin state and
        health are untouched.
        """
        clock = Clock()
        pool = ejectingPool(2, clock, consecutiveGatewayErrors=0,
                            baseEjection=30.0, maxEjection=300.0)
        events = logged(self)
        a = pool.get("a")
        assert a is not None
        self.answer503(pool, "a", 4)
        self.assertFalse(a.ejected)
        self.answer503(pool, "a", 1)
        self.assertTrue(a.ejected)
        self.assertEqual((a.ejectedUntil, a.ejections), (30.0, 1))
        self.assertEqual((a.health, a.admin), (Health.UNKNOWN, Admin.READY))
        self.assertEqual(self.picked(pool), {"b"})
        clock.advance(29.9)
        self.assertEqual(self.picked(pool), {"b"})
        clock.advance(0.1)
        self.assertEqual(self.picked(pool), {"a", "b"})
        self.assertFalse(a.ejected)
        self.answer503(pool, "a", 5)
        self.assertEqual((a.ejectedUntil, a.ejections), (30.0 + 60.0, 2))
        clock.advance(59.9)
        self.assertEqual(self.picked(pool), {"b"})
        clock.advance(0.1)
        self.assertEqual(self.picked(pool), {"a", "b"})
        self.assertEqual(about(events, "a"), [
            ("warn", "backend a of pool web ejected for 30.0s (ejection 1): "
                     "5 5xx answers or failed exchanges in a row, the last status 503"),
            ("info", "backend a of pool web is back after ejection 1"),
            ("warn", "backend a of pool web ejected for 60.0s (ejection 2): "
                     "5 5xx answers or failed exchanges in a row, the last status 503"),
            ("info", "backend a of pool web is back after ejection 2"),
        ])

    def test_maxEjection(self) -> None:
        """
        The ejection time grows with each ejection up to C{max-ejection}.
        """
        clock = Clock()
        pool = ejectingPool(2, clock, baseEjection=30.0, maxEjection=70.0)
        a = pool.get("a")
        assert a is not None
        lengths = []
        for _ in range(4):
            self.answer503(pool, "a", 3)
            lengths.append(a.ejectedUntil - clock.seconds())
            clock.advance(lengths[-1])
            pool.pick()
        self.assertEqual(lengths, [30.0, 60.0, 70.0, 70.0])

    def test_gatewayErrors(self) -> None:
        """
        Three gateway errors in a row (a 502, a failed connect, a 504)
        eject a backend; 500s count only towards the 5xx rule.
        """
        clock = Clock()
        pool = ejectingPool(3, clock, maxEjectedPercent=100)
        a, b = pool.get("a"), pool.get("b")
        assert a is not None and b is not None
        pool.exchangeError(a, "status 502", 502)
        pool.trafficFailed(a, "refused", "connect refused")
        self.assertFalse(a.ejected)
        pool.exchangeError(a, "status 504", 504)
        self.assertTrue(a.ejected)
        for _ in range(4):
            pool.exchangeError(b, "status 500", 500)
        self.assertFalse(b.ejected)
        pool.exchangeError(b, "status 500", 500)
        self.assertTrue(b.ejected)

    def test_successEndsStreaks(self) -> None:
        """
        A good answer between errors ends both streaks: alternating 503
        and 200 never ejects.
        """
        pool = ejectingPool(2, Clock())
        a = pool.get("a")
        assert a is not None
        for _ in range(10):
            pool.exchangeError(a, "status 503", 503)
            pool.exchangeError(a, "status 503", 503)
            pool.exchangeSucceeded(a)
        self.assertFalse(a.ejected)
        self.assertEqual(a.ejections, 0)

    def test_maxEjectedPercent(self) -> None:
        """
        With two of three backends failing and C{max-ejected-percent: 50}
        only one is ejected (3 * 50% rounds down to 1); the other is
        ejected at its next error once the first is back.
        """
        clock = Clock()
        pool = ejectingPool(3, clock, baseEjection=10.0, maxEjectedPercent=50)
        events = logged(self)
        a, b = pool.get("a"), pool.get("b")
        assert a is not None and b is not None
        self.answer503(pool, "a", 3)
        self.answer503(pool, "b", 3)
        self.assertEqual((a.ejected, b.ejected), (True, False))
        self.assertEqual(self.picked(pool), {"b", "c"})
        self.assertEqual(
            [text for level, text in about(events, "b")],
            ["backend b of pool web is an outlier (3 gateway errors in a row, the last "
             "status 503) but stays: 1 of 3 backends ejected already "
             "(max-ejected-percent 50)"],
        )
        clock.advance(10.0)
        self.answer503(pool, "b", 1)
        self.assertEqual((a.ejected, b.ejected), (False, True))

    def test_atLeastOne(self) -> None:
        """
        A pool of two may have one backend ejected even at 10%; a pool of
        one never has its only backend ejected under 100%, nor any pool at 0%.
        """
        for n, percent, ejected in [(2, 10, True), (1, 50, False), (1, 100, True),
                                    (2, 0, False)]:
            pool = ejectingPool(n, Clock(), maxEjectedPercent=percent)
            self.answer503(pool, "a", 5)
            a = pool.get("a")
            assert a is not None
            self.assertEqual(a.ejected, ejected, (n, percent))

    def test_noOutlierBlock(self) -> None:
        """
        Without the C{outlier} block errors eject nothing.
        """
        pool = makePool(2)
        self.answer503(pool, "a", 50)
        self.assertEqual(self.picked(pool), {"a", "b"})

    def test_removedWhileEjected(self) -> None:
        """
        A backend removed while ejected no longer counts towards the limit.
        """
        pool = ejectingPool(3, Clock())
        self.answer503(pool, "a", 3)
        pool.remove("a")
        self.answer503(pool, "b", 3)
        b = pool.get("b")
        assert b is not None
        self.assertTrue(b.ejected)


def tieredPool(roles: str, policy: str = "roundrobin", allBackups: bool = False,
               slowStart: float = 0.0, clock: Any = None) -> BackendPool:
    """
    A pool of backends named a, b, c..., one per letter of C{roles}: C{p}
    a primary, C{b} a backup.
    """
    return BackendPool(
        PoolConfig(
            name="web",
            policy=policy,
            allBackups=allBackups,
            slowStart=slowStart,
            backends=tuple(
                BackendConfig(chr(ord("a") + i), f"tcp:host=127.0.0.1:port={8000 + i}",
                              health=HealthCheck(rise=1, fall=1), backup=role == "b")
                for i, role in enumerate(roles)
            ),
        ),
        random.Random(0),
        clock or (lambda: 0.0),
    )


def down(pool: BackendPool, *names: str) -> None:
    """
    Mark the backends C{names} of C{pool} (of fall 1) down.
    """
    for name in names:
        backend = pool.get(name)
        assert backend is not None
        pool.failed(backend, "probe", "refused")


class BackupTests(SynchronousTestCase):
    """
    Backup backends get clients only while no primary is eligible.
    """

    def served(self, pool: BackendPool, picks: int = 60) -> set[str]:
        """
        The names of the backends C{picks} picks reach.
        """
        chosen = set()
        for _ in range(picks):
            backend = pool.pick(b"client")
            chosen.add(backend.name if backend is not None else "-")
        return chosen

    def test_table(self) -> None:
        """
        Under every policy: primaries serve while one is eligible; then the
        first eligible backup, or with all-backups every eligible backup;
        with none left there is no pick.
        """
        # roles, all-backups, down, expected backends served
        table = [
            ("ppbb", False, (), {"a", "b"}),
            ("ppbb", False, ("a",), {"b"}),
            ("ppbb", False, ("a", "b"), {"c"}),
            ("ppbb", True, ("a", "b"), {"c", "d"}),
            ("ppbb", False, ("a", "b", "c"), {"d"}),
            ("ppbb", True, ("a", "b", "c"), {"d"}),
            ("ppbb", False, ("a", "b", "c", "d"), {"-"}),
            ("bpb", False, ("b",), {"a"}),
            ("bbb", False, (), {"a"}),
            ("bbb", True, (), {"a", "b", "c"}),
        ]
        for policy in POLICY_NAMES:
            for roles, allBackups, downs, expected in table:
                pool = tieredPool(roles, policy, allBackups)
                down(pool, *downs)
                if policy == "source":
                    # One client key keeps one backend: ask with many keys.
                    got = {pool.pick(str(i).encode()).name  # type: ignore[union-attr]
                           for i in range(60)} if expected != {"-"} else {"-"}
                    self.assertEqual(pool.pick(b"k") is None, expected == {"-"})
                else:
                    got = self.served(pool)
                self.assertEqual(got, expected, (policy, roles, allBackups, downs))

    def test_primaryBack(self) -> None:
        """
        When a primary comes back up, the backup gets no new clients.
        """
        pool = tieredPool("pb")
        down(pool, "a")
        self.assertEqual(self.served(pool), {"b"})
        a = pool.get("a")
        assert a is not None
        pool.succeeded(a)
        self.assertEqual(self.served(pool), {"a"})

    def test_maintPrimary(self) -> None:
        """
        A primary in maintenance or draining is not eligible: backups serve.
        """
        pool = tieredPool("ppb")
        pool.setAdmin("a", Admin.MAINT)
        pool.setAdmin("b", Admin.DRAIN)
        self.assertEqual(self.served(pool), {"c"})

    def test_excludedPrimaries(self) -> None:
        """
        A client that already tried every primary (a failover) goes to a
        backup, even before health checks mark the primaries down.
        """
        pool = tieredPool("ppb")
        a, b = pool.get("a"), pool.get("b")
        assert a is not None and b is not None
        self.assertEqual(pool.pick(exclude=[a]).name, "b")  # type: ignore[union-attr]
        self.assertEqual(pool.pick(exclude=[a, b]).name, "c")  # type: ignore[union-attr]

    def test_fullPrimaryQueues(self) -> None:
        """
        A primary at its maxconn makes clients wait in the queue; it does
        not send them to the backups.
        """
        pool = BackendPool(PoolConfig("web", (
            BackendConfig("a", "tcp:host=127.0.0.1:port=8000", maxconn=1),
            BackendConfig("b", "tcp:host=127.0.0.1:port=8001", backup=True),
        )))
        a = pool.pick()
        assert a is not None
        pool.acquire(a)
        self.assertIsNone(pool.pick())
        self.assertTrue(pool.saturated())

    def test_added(self) -> None:
        """
        A backup added at run time is a backup; once the last backup is
        removed the pool works as one without.
        """
        pool = tieredPool("p")
        pool.add(BackendConfig("z", "tcp:host=127.0.0.1:port=9000", backup=True))
        self.assertEqual(self.served(pool), {"a"})
        down(pool, "a")
        self.assertEqual(self.served(pool), {"z"})
        pool.remove("z")
        self.assertEqual(self.served(pool), {"-"})

    def test_stats(self) -> None:
        """
        The stats say which backends are backups.
        """
        pool = tieredPool("pb")
        self.assertEqual([(s.name, s.backup) for s in pool.stats()],
                         [("a", False), ("b", True)])


    def test_queueNotWokenByBackup(self) -> None:
        """
        A queued client is not woken for a backup's room while the full
        primary serves; it is when the primary gives a slot back.
        """
        pool = BackendPool(PoolConfig("web", (
            BackendConfig("a", "tcp:host=127.0.0.1:port=8000", maxconn=1),
            BackendConfig("b", "tcp:host=127.0.0.1:port=8001", backup=True),
        )))
        a = pool.get("a")
        assert a is not None
        pool.acquire(a)
        woken: list[str] = []
        pool.enqueue(lambda: woken.append("client"))
        pool.wake()
        self.assertEqual(woken, [])
        pool.release(a)
        self.assertEqual(woken, ["client"])

    def test_queueWokenWhenBackupTakesOver(self) -> None:
        """
        A client queued for the full primary is woken as soon as the backup
        serves in its place, with room to spare: when the primary goes
        down, is ejected, is removed or is given weight 0 (not only when
        one of the primary's clients leaves, which a hung primary may make
        them wait for beyond the queue timeout).
        """
        actions = {
            "down": lambda pool, a: pool.failed(a, "probe", "refused"),
            "ejected": lambda pool, a: pool.exchangeError(a, "status 503", 503),
            "removed": lambda pool, a: pool.remove("a"),
            "weight 0": lambda pool, a: pool.setWeight("a", 0),
        }
        outcomes = {}
        for how, act in actions.items():
            pool = BackendPool(PoolConfig("web", (
                BackendConfig("a", "tcp:host=127.0.0.1:port=8000", maxconn=1,
                              health=HealthCheck(rise=1, fall=1)),
                BackendConfig("b", "tcp:host=127.0.0.1:port=8001", backup=True),
            ), outlier=Outlier(consecutive5xx=1)))
            a = pool.get("a")
            assert a is not None
            pool.acquire(a)
            woken: list[str | None] = []

            def waiter(pool: BackendPool = pool, woken: list[str | None] = woken) -> None:
                chosen = pool.pick()
                woken.append(chosen.name if chosen is not None else None)

            pool.enqueue(waiter)
            act(pool, a)
            outcomes[how] = (woken, pool.queueLength)
        self.assertEqual(outcomes, {how: (["b"], 0) for how in actions})


class SlowStartTests(SynchronousTestCase):
    """
    A backend that comes back ramps its weight up over its slow start.
    """

    def setUp(self) -> None:
        self.now = 0.0
        self.pool = tieredPool("ppp", slowStart=10.0, clock=lambda: self.now)

    def shares(self, backend: str, policy: str = "roundrobin") -> list[float]:
        """
        Bring C{backend} back from down at time 0 and return its share of
        300 picks in each of 10 successive simulated seconds.
        """
        self.now = 0.0
        self.pool = tieredPool("ppp", policy, slowStart=10.0, clock=lambda: self.now)
        down(self.pool, backend)
        b = self.pool.get(backend)
        assert b is not None
        self.pool.succeeded(b)
        result = []
        for second in range(10):
            counts: Counter[str] = Counter()
            for i in range(300):
                self.now = second + i / 300
                chosen = self.pool.pick(str(i).encode())
                assert chosen is not None
                counts[chosen.name] += 1
            result.append(counts[backend] / 300)
        return result

    def test_rampEveryPolicy(self) -> None:
        """
        Under every policy that weighs, the returning backend's share of
        picks rises second by second from under 10% to about a third.
        """
        for policy in ("roundrobin", "weighted", "leastconn", "random", "p2c"):
            shares = self.shares("a", policy)
            self.assertLess(shares[0], 0.10, (policy, shares))
            self.assertGreater(shares[-1], 0.28, (policy, shares))
            self.assertLess(shares[-1], 0.39, (policy, shares))
            if policy in ("roundrobin", "weighted", "leastconn"):
                # Deterministic policies rise strictly every second.
                self.assertEqual(shares, sorted(shares), (policy, shares))
                self.assertEqual(len(set(shares)), 10, (policy, shares))
            else:
                # Random ones may wobble: compare the halves.
                self.assertLess(sum(shares[:5]), sum(shares[5:]), (policy, shares))

    def test_sourceHash(self) -> None:
        """
        Source hashing weighs too: the returning backend wins more keys as
        its weight rises.
        """
        shares = self.shares("b", "source")
        self.assertLess(shares[0], 0.10, shares)
        self.assertGreater(shares[-1], 0.25, shares)
        self.assertEqual(shares, sorted(shares))

    def test_effectiveWeight(self) -> None:
        """
        The effective weight rises from a tenth to all of the weight
        (scaled by 16) and the ramp ends after the slow start; the stats
        show it only while it ramps.
        """
        down(self.pool, "a")
        a = self.pool.get("a")
        assert a is not None
        self.pool.succeeded(a)
        seen = []
        for t in (0.0, 5.0, 9.9, 10.0, 20.0):
            self.now = t
            stats = {s.name: s.effectiveWeight for s in self.pool.stats()}
            seen.append((a.effectiveWeight, stats["a"], stats["b"]))
        self.assertEqual(seen, [
            (1, 0.06, None), (8, 0.5, None), (15, 0.94, None),
            (16, None, None), (16, None, None),
        ])

    def test_firstStartAndUnknown(self) -> None:
        """
        The first start is not slowed (an unknown backend that comes up
        serves at once at full weight), nor is one that was never down.
        """
        a = self.pool.get("a")
        assert a is not None
        self.pool.succeeded(a)
        self.assertEqual((a.health, a.effectiveWeight, a.rampEnd), (Health.UP, 16, 0.0))

    def test_adminReady(self) -> None:
        """
        A backend back from maintenance or draining ramps up; one put in
        maintenance and back does not restart the ramp when it then comes
        up (unknown to up).
        """
        for admin in (Admin.MAINT, Admin.DRAIN):
            self.now = 100.0
            self.pool.setAdmin("b", admin)
            self.pool.setAdmin("b", Admin.READY)
            b = self.pool.get("b")
            assert b is not None
            self.assertEqual((b.effectiveWeight, b.rampEnd), (1, 110.0))
            self.now = 105.0
            self.pool.succeeded(b)
            self.assertEqual(b.rampEnd, 110.0)
            self.now = 110.0
            self.pool.pick()
            self.assertEqual((b.effectiveWeight, b.rampEnd), (16, 0.0))

    def test_backendOverrides(self) -> None:
        """
        A backend's own slow start overrides the pool's; 0 turns it off.
        """
        pool = BackendPool(PoolConfig("web", (
            BackendConfig("a", "tcp:host=127.0.0.1:port=8000", slowStart=0.0),
            BackendConfig("b", "tcp:host=127.0.0.1:port=8001", slowStart=4.0),
        ), slowStart=10.0), clock=lambda: self.now)
        self.now = 0.0
        for name in "ab":
            pool.setAdmin(name, Admin.MAINT)
            pool.setAdmin(name, Admin.READY)
        self.assertEqual([(b.name, b.rampEnd) for b in pool], [("a", 0.0), ("b", 4.0)])

    def test_setWeightWhileRamping(self) -> None:
        """
        A weight changed during the ramp takes effect at the ramp's point.
        """
        self.pool.setAdmin("a", Admin.DRAIN)
        self.pool.setAdmin("a", Admin.READY)
        self.now = 5.0
        a = self.pool.setWeight("a", 10)
        self.assertEqual(a.effectiveWeight, 88)

    def test_noClockWhenSteady(self) -> None:
        """
        While no backend ramps, a pick never reads the clock.
        """
        reads = []

        def clock() -> float:
            reads.append(1)
            return 0.0

        pool = tieredPool("ppp", slowStart=10.0, clock=clock)
        for _ in range(10):
            pool.pick()
        self.assertEqual(reads, [])
