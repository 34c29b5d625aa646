"""
Tests for L{lbtwist.policies}.
"""

from __future__ import annotations

import random
from collections import Counter

import attrs
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.policies import (
    POLICIES,
    LeastConnections,
    PowerOfTwoChoices,
    SmoothWeighted,
    SourceHash,
    WeightedRandom,
    _smoothTurn,
)


@attrs.define(eq=False)
class FakeBackend:
    """
    What a policy reads of a backend.
    """

    name: str
    weight: int = 1
    active: int = 0

    @property
    def effectiveWeight(self) -> int:
        """
        The weight the policies count: here, the weight itself.
        """
        return self.weight


def backends(*weights: int) -> list[FakeBackend]:
    """
    Backends named b0, b1... with the given weights.
    """
    return [FakeBackend(f"b{i}", w) for i, w in enumerate(weights)]


def assertNear(case: SynchronousTestCase, value: float, target: float, delta: float) -> None:
    """
    Fail unless C{value} is within C{delta} of C{target}.
    """
    case.assertTrue(abs(value - target) <= delta, f"{value} is not {target} +/- {delta}")


def names(chosen: list[FakeBackend]) -> list[str]:
    return [b.name for b in chosen]


class SmoothWeightedTests(SynchronousTestCase):
    """
    Tests for L{SmoothWeighted}, the C{roundrobin} (and C{weighted}) policy.
    """

    def test_takesTurns(self) -> None:
        """
        With equal weights each backend is chosen in turn, in order.
        """
        pool = backends(1, 1, 1)
        policy = SmoothWeighted(random.Random(0))
        self.assertEqual(
            names([policy.choose(pool, None) for _ in range(6)]),
            ["b0", "b1", "b2", "b0", "b1", "b2"],
        )

    def test_candidatesShrink(self) -> None:
        """
        When a backend drops out of the candidates the others still alternate.
        """
        pool = backends(1, 1, 1)
        policy = SmoothWeighted(random.Random(0))
        chosen = [policy.choose([pool[0], pool[2]], None) for _ in range(4)]
        self.assertEqual(Counter(names(chosen)), {"b0": 2, "b2": 2})

    def test_sameListTakesOneStep(self) -> None:
        """
        Given the same list again (the pool's, while nothing changed), equal
        weights go round in the order smooth weighted round-robin gives
        them, for any number of backends.
        """
        for n in range(1, 6):
            pool = backends(*(1,) * n)
            policy = SmoothWeighted(random.Random(0))
            current: dict[str, int] = {}
            self.assertEqual(
                names([policy.choose(pool, None) for _ in range(3 * n)]),
                names([_smoothTurn(current, pool) for _ in range(3 * n)]),
            )

    def test_turnKeptAcrossRetries(self) -> None:
        """
        A list given once between picks from a kept one (a retry's, without
        the backends it tried) is chosen from in smooth weighted turn, as in
        nginx: the failover counts as its backend's turn.  The choices are
        the same as when every choice walks the backends.
        """
        b0, b1, b2 = pool = backends(1, 1, 1)
        policy = SmoothWeighted(random.Random(0))
        walking = SmoothWeighted(random.Random(0))
        # (list, picks): a kept list, then retries' lists mid-round.
        script = [
            (pool, 3), ([b1, b2], 1), (pool, 4), ([b0, b1], 1), ([b0, b2], 1),
            (pool, 5), ([b2], 1), (pool, 2), ([b1, b2], 2), (pool, 7),
        ]
        chosen, walked = [], []
        for candidates, picks in script:
            chosen += [policy.choose(candidates, None) for _ in range(picks)]
            # (A new list each time: it never takes the plain turn.)
            walked += [walking.choose(list(candidates), None) for _ in range(picks)]
        self.assertEqual(names(chosen), names(walked))
        self.assertEqual(names(chosen[:3]), ["b0", "b1", "b2"])
        self.assertEqual(Counter(names(chosen[-7:-1])), {"b0": 2, "b1": 2, "b2": 2})

    def test_sameChoicesAsTheWalk(self) -> None:
        """
        Whatever the weights and however kept lists and retries' lists
        follow each other, the choices are exactly those of a walk over
        every backend each time (600 random scripts).
        """
        for seed in range(600):
            rng = random.Random(seed)
            pool = backends(*[rng.choice((1, 1, 2, 3)) for _ in range(rng.randint(1, 6))])
            policy, walking = SmoothWeighted(rng), SmoothWeighted(rng)
            chosen, walked = [], []
            for _ in range(rng.randint(1, 12)):
                if rng.random() < 0.7:
                    candidates, picks = pool, rng.randint(1, 12)
                else:
                    candidates = [b for b in pool if rng.random() < 0.6] or pool[:1]
                    picks = rng.randint(1, 3)
                chosen += [policy.choose(candidates, None) for _ in range(picks)]
                walked += [walking.choose(list(candidates), None) for _ in range(picks)]
            self.assertEqual(names(chosen), names(walked), seed)

    def test_weightsChangeBetweenLists(self) -> None:
        """
        When a backend's weight changes, the pool gives a new list (the same
        backends): the choices stay those of a walk over every backend each
        time, whatever the weights and however far into a replayed round the
        change comes (300 random scripts).
        """
        for seed in range(300):
            rng = random.Random(seed)
            pool = backends(*[rng.choice((1, 1, 2, 3)) for _ in range(rng.randint(1, 6))])
            policy, walking = SmoothWeighted(rng), SmoothWeighted(rng)
            chosen, walked = [], []
            kept = list(pool)
            for _ in range(rng.randint(1, 8)):
                picks = rng.randint(1, 3 * len(pool) + 3)
                chosen += [policy.choose(kept, None) for _ in range(picks)]
                walked += [walking.choose(list(kept), None) for _ in range(picks)]
                rng.choice(pool).weight = rng.choice((1, 2, 3, 7))
                kept = list(pool)
            self.assertEqual(names(chosen), names(walked), seed)

    def test_nginxSequence(self) -> None:
        """
        Weights 5, 1, 1 give nginx's interleaved sequence a a b a c a a.
        """
        pool = backends(5, 1, 1)
        policy = SmoothWeighted(random.Random(0))
        self.assertEqual(
            names([policy.choose(pool, None) for _ in range(7)]),
            ["b0", "b0", "b1", "b0", "b2", "b0", "b0"],
        )

    def test_proportions(self) -> None:
        """
        Over many picks each backend gets exactly its share of the weight.
        """
        pool = backends(3, 2, 1)
        policy = SmoothWeighted(random.Random(0))
        counts = Counter(names([policy.choose(pool, None) for _ in range(600)]))
        self.assertEqual(counts, {"b0": 300, "b1": 200, "b2": 100})

    def test_zeroWeight(self) -> None:
        """
        A backend of weight 0 is never chosen while others have weight.
        """
        pool = backends(0, 1)
        policy = SmoothWeighted(random.Random(0))
        self.assertEqual(
            set(names([policy.choose(pool, None) for _ in range(10)])), {"b1"}
        )


class LeastConnectionsTests(SynchronousTestCase):
    """
    Tests for L{LeastConnections}.
    """

    def test_fewestActive(self) -> None:
        """
        The backend with the fewest active connections is chosen.
        """
        pool = backends(1, 1, 1)
        pool[0].active, pool[1].active, pool[2].active = 5, 1, 3
        policy = LeastConnections(random.Random(0))
        self.assertIs(policy.choose(pool, None), pool[1])

    def test_tiesRoundRobin(self) -> None:
        """
        Ties are broken in turn, not always in favour of the first backend.
        """
        pool = backends(1, 1, 1)
        policy = LeastConnections(random.Random(0))
        self.assertEqual(
            names([policy.choose(pool, None) for _ in range(6)]),
            ["b0", "b1", "b2", "b0", "b1", "b2"],
        )

    def test_weighted(self) -> None:
        """
        Load is active connections per unit of weight.
        """
        pool = backends(4, 1)
        pool[0].active, pool[1].active = 3, 1
        policy = LeastConnections(random.Random(0))
        self.assertIs(policy.choose(pool, None), pool[0])
        pool[0].active = 5
        self.assertIs(policy.choose(pool, None), pool[1])

    def test_tiesByWeight(self) -> None:
        """
        Tied backends (an idle pool, or equal load per weight) take turns in
        proportion to their weights, interleaved.
        """
        pool = backends(3, 1)
        policy = LeastConnections(random.Random(0))
        self.assertEqual(
            names([policy.choose(pool, None) for _ in range(8)]),
            ["b0", "b0", "b1", "b0"] * 2,
        )
        pool[0].active, pool[1].active = 3, 1
        counts = Counter(names([policy.choose(pool, None) for _ in range(400)]))
        self.assertEqual(counts, {"b0": 300, "b1": 100})


class RandomTests(SynchronousTestCase):
    """
    Tests for L{WeightedRandom} and L{PowerOfTwoChoices}.
    """

    def test_deterministic(self) -> None:
        """
        The same seed gives the same choices.
        """
        pool = backends(1, 1, 1, 1)
        first = names([WeightedRandom(random.Random(7)).choose(pool, None) for _ in range(1)])
        a = WeightedRandom(random.Random(7))
        b = WeightedRandom(random.Random(7))
        self.assertEqual(
            names([a.choose(pool, None) for _ in range(50)]),
            names([b.choose(pool, None) for _ in range(50)]),
        )
        self.assertEqual(len(first), 1)

    def test_randomWeights(self) -> None:
        """
        Random choices follow the weights.
        """
        pool = backends(3, 1)
        policy = WeightedRandom(random.Random(1))
        counts = Counter(names([policy.choose(pool, None) for _ in range(4000)]))
        assertNear(self, counts["b0"] / 4000, 0.75, 0.03)

    def test_p2cAvoidsLoaded(self) -> None:
        """
        Power of two choices never picks the single most loaded backend when
        two others are idle, since it always has a lighter one to compare.
        """
        pool = backends(1, 1, 1)
        pool[2].active = 100
        policy = PowerOfTwoChoices(random.Random(3))
        chosen = names([policy.choose(pool, None) for _ in range(300)])
        self.assertNotIn("b2", chosen)
        self.assertEqual(set(chosen), {"b0", "b1"})

    def test_p2cWeighted(self) -> None:
        """
        Power of two choices draws by weight: in an idle pool of weights
        3, 1 it picks the heavier backend about three times in four.
        """
        pool = backends(3, 1)
        policy = PowerOfTwoChoices(random.Random(5))
        counts = Counter(names([policy.choose(pool, None) for _ in range(4000)]))
        assertNear(self, counts["b0"] / 4000, 0.75, 0.03)

    def test_p2cLoadPerWeight(self) -> None:
        """
        Of the two drawn, the one with fewer active connections per unit of
        weight wins: weight 4 with 3 active beats weight 1 with 1 active.
        """
        pool = backends(4, 1)
        pool[0].active, pool[1].active = 3, 1
        policy = PowerOfTwoChoices(random.Random(0))
        self.assertEqual(set(names([policy.choose(pool, None) for _ in range(50)])), {"b0"})

    def test_p2cSingle(self) -> None:
        """
        With one candidate it is chosen.
        """
        pool = backends(1)
        self.assertIs(PowerOfTwoChoices(random.Random(0)).choose(pool, None), pool[0])


class SourceHashTests(SynchronousTestCase):
    """
    Tests for L{SourceHash}.
    """

    keys = [f"10.0.{i // 250}.{i % 250}".encode() for i in range(2000)]

    def assign(self, pool: list[FakeBackend]) -> dict[bytes, str]:
        policy = SourceHash(random.Random(0))
        return {k: policy.choose(pool, k).name for k in self.keys}

    def test_sticky(self) -> None:
        """
        A client key always maps to the same backend.
        """
        pool = backends(1, 1, 1)
        self.assertEqual(self.assign(pool), self.assign(pool))

    def test_spread(self) -> None:
        """
        Keys spread about evenly.
        """
        counts = Counter(self.assign(backends(1, 1, 1, 1)).values())
        for n in counts.values():
            assertNear(self, n / len(self.keys), 0.25, 0.04)

    def test_weighted(self) -> None:
        """
        A backend of weight 3 beside one of weight 1 gets about three in
        four keys.
        """
        counts = Counter(self.assign(backends(3, 1)).values())
        assertNear(self, counts["b0"] / len(self.keys), 0.75, 0.04)

    def test_minimalMovement(self) -> None:
        """
        When one of four backends leaves, only its own clients move (about a
        quarter), and every other client keeps its backend.
        """
        pool = backends(1, 1, 1, 1)
        before = self.assign(pool)
        after = self.assign(pool[:2] + pool[3:])
        moved = [k for k in self.keys if before[k] != after[k]]
        self.assertTrue(all(before[k] == "b2" for k in moved))
        assertNear(self, len(moved) / len(self.keys), 0.25, 0.04)

    def test_noKey(self) -> None:
        """
        Without a key the policy falls back to weighted round-robin.
        """
        pool = backends(1, 1)
        policy = SourceHash(random.Random(0))
        self.assertEqual(names([policy.choose(pool, None) for _ in range(4)]),
                         ["b0", "b1", "b0", "b1"])
        pool = backends(2, 1)
        self.assertEqual(names([policy.choose(pool, None) for _ in range(3)]),
                         ["b0", "b1", "b0"])


class RegistryTests(SynchronousTestCase):
    """
    Tests for L{POLICIES}.
    """

    def test_names(self) -> None:
        """
        Every documented policy name is registered and builds a policy.
        """
        self.assertEqual(
            sorted(POLICIES),
            ["leastconn", "p2c", "random", "roundrobin", "source", "weighted"],
        )
        for build in POLICIES.values():
            policy = build(random.Random(0))
            pool = backends(1, 2)
            self.assertIn(policy.choose(pool, b"k"), pool)

    def test_weightedIsRoundRobin(self) -> None:
        """
        C{weighted} is another name for C{roundrobin}: both are smooth
        weighted round-robin.
        """
        self.assertIs(POLICIES["roundrobin"], SmoothWeighted)
        self.assertIs(POLICIES["weighted"], SmoothWeighted)

    def test_everyPolicyCountsWeights(self) -> None:
        """
        Under every policy, in an idle pool, backends of weights 3, 1 and 4
        get about 3/8, 1/8 and 4/8 of 4000 clients (distinct client keys).
        """
        picks = 4000
        for name, build in sorted(POLICIES.items()):
            pool = backends(3, 1, 4)
            policy = build(random.Random(11))
            counts = Counter(
                policy.choose(pool, b"client %d" % i).name for i in range(picks)
            )
            for backend, share in (("b0", 3 / 8), ("b1", 1 / 8), ("b2", 4 / 8)):
                with self.subTest(policy=name, backend=backend):
                    assertNear(self, counts[backend] / picks, share, 0.03)
