"""
Tests for L{lbtwist.ratelimit}: token buckets per key on a fake clock.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.ratelimit import TokenBuckets, requestKey, retryAfter
from lbtwist.routeconfig import RateLimit


class FakeClock:
    """
    A clock that moves only when told.
    """

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TokenBucketTests(SynchronousTestCase):
    """
    L{TokenBuckets.take}.
    """

    def setUp(self) -> None:
        self.clock = FakeClock()
        self.buckets = TokenBuckets(rate=2.0, burst=3, maxKeys=2, clock=self.clock)

    def test_burstThenRate(self) -> None:
        """
        A key sends C{burst} requests at once, then is told how long to
        wait; after that wait it may send one more, at the configured rate.
        """
        self.assertEqual([self.buckets.take("a") for _ in range(3)], [0.0, 0.0, 0.0])
        self.assertEqual(self.buckets.take("a"), 0.5)
        self.clock.now += 0.25
        self.assertEqual(self.buckets.take("a"), 0.25)
        self.clock.now += 0.25
        self.assertEqual(self.buckets.take("a"), 0.0)
        self.assertEqual(self.buckets.take("a"), 0.5)
        # Over ten seconds at 2/s, 20 pass.
        passed = 0
        for _ in range(100):
            self.clock.now += 0.1
            passed += self.buckets.take("a") == 0.0
        self.assertEqual(passed, 20)

    def test_refillCapped(self) -> None:
        """
        A long quiet spell refills to C{burst}, no more.
        """
        for _ in range(3):
            self.buckets.take("a")
        self.clock.now += 3600
        self.assertEqual([self.buckets.take("a") for _ in range(4)], [0.0, 0.0, 0.0, 0.5])

    def test_keysApart(self) -> None:
        """
        Each key has its own bucket.
        """
        for _ in range(3):
            self.buckets.take("a")
        self.assertEqual(self.buckets.take("b"), 0.0)
        self.assertGreater(self.buckets.take("a"), 0.0)

    def test_eviction(self) -> None:
        """
        Past C{maxKeys} the least recently used key is forgotten (and
        starts over with a full bucket); a key used again is kept.
        """
        for _ in range(3):
            self.buckets.take("a")
            self.buckets.take("b")
        self.buckets.take("a")  # a is now the most recent
        self.buckets.take("c")  # evicts b
        self.assertEqual(list(self.buckets.tracked), ["a", "c"])
        self.assertEqual(self.buckets.take("b"), 0.0)  # b starts over; evicts a
        self.assertEqual(list(self.buckets.tracked), ["c", "b"])
        self.assertEqual(len(self.buckets.tracked), 2)

    def test_invalid(self) -> None:
        """
        A rate, burst or cap below 1 is refused.
        """
        for rate, burst, keys in ((0.0, 1, 1), (1.0, 0, 1), (1.0, 1, 0)):
            self.assertRaises(ValueError, TokenBuckets, rate, burst, keys, FakeClock())

    def test_retryAfter(self) -> None:
        """
        C{Retry-After} is whole seconds, rounded up, at least 1.
        """
        self.assertEqual([retryAfter(w) for w in (0.01, 1.0, 1.2, 59.5)],
                         [b"1", b"1", b"2", b"60"])

    def test_requestKey(self) -> None:
        """
        A request counts under its source, or its header's value; without
        the header, under its source (which no header value can equal).
        """
        bySource = RateLimit(rate=1.0, burst=1)
        byHeader = RateLimit(rate=1.0, burst=1, key="header", header="x-key")
        headers = [(b"host", b"h"), (b"x-key", b"k1")]
        self.assertEqual(requestKey(bySource, "10.0.0.1", headers), "10.0.0.1")
        self.assertEqual(requestKey(byHeader, "10.0.0.1", headers), (b"h", b"k1"))
        self.assertEqual(requestKey(byHeader, "10.0.0.1", headers[:1]), "10.0.0.1")

    def test_longHeaderKeyBounded(self) -> None:
        """
        A long header value is kept as a short digest, so the tracked keys
        hold a bounded number of bytes each (100,000 keys of 16 KiB values
        would be 1.6 GB); distinct values stay distinct keys and one value
        always gives the same key.
        """
        byHeader = RateLimit(rate=1.0, burst=1, key="header", header="x-key")
        keys = [requestKey(byHeader, "10.0.0.1", [(b"x-key", v * 16000)]) for v in (b"a", b"b")]
        again = requestKey(byHeader, "10.0.0.2", [(b"x-key", b"a" * 16000)])
        self.assertEqual(keys[0], again)
        self.assertNotEqual(keys[0], keys[1])
        for key in keys:
            self.assertLessEqual(sum(len(part) for part in key), 80)  # type: ignore[attr-defined]

    def test_fromConfig(self) -> None:
        """
        Buckets made from a route's rate-limit take its rate, burst and cap.
        """
        buckets = TokenBuckets.fromConfig(RateLimit(rate=0.5, burst=2, maxKeys=7), FakeClock())
        self.assertEqual((buckets.rate, buckets.burst, buckets.maxKeys), (0.5, 2.0, 7))
        self.assertEqual([buckets.take("a") for _ in range(3)], [0.0, 0.0, 2.0])
