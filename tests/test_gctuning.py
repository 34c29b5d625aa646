"""
Tests for L{lbtwist.gctuning}.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.gctuning import YOUNG_THRESHOLD, FrozenStartupHeap


class FakeCollector:
    """
    Records what is asked of the C{gc} module.
    """

    def __init__(self, threshold: tuple[int, int, int]) -> None:
        self.calls: list[str] = []
        self.threshold = threshold

    def collect(self) -> int:
        self.calls.append("collect")
        return 0

    def freeze(self) -> None:
        self.calls.append("freeze")

    def get_freeze_count(self) -> int:
        return 1234

    def get_threshold(self) -> tuple[int, int, int]:
        return self.threshold

    def set_threshold(self, *threshold: int) -> None:
        self.calls.append("set_threshold")
        self.threshold = threshold  # type: ignore[assignment]


class FrozenStartupHeapTests(SynchronousTestCase):
    """
    The start-up heap is frozen once the reactor runs.
    """

    def test_freezesWhenRunning(self) -> None:
        """
        Nothing happens until the reactor runs; then what start-up left is
        collected, the rest frozen, and young collections made rarer with
        the older generations' thresholds kept.
        """
        reactor = MemoryReactorClock()
        collector = FakeCollector((700, 10, 10))
        FrozenStartupHeap(reactor, collector).startService()
        self.assertEqual(collector.calls, [])
        reactor.run()
        self.assertEqual(collector.calls, ["collect", "freeze", "set_threshold"])
        self.assertEqual(collector.threshold, (YOUNG_THRESHOLD, 10, 10))

    def test_keepsHigherThreshold(self) -> None:
        """
        A youngest-generation threshold already above ours is left alone.
        """
        reactor = MemoryReactorClock()
        collector = FakeCollector((50_000, 5, 5))
        FrozenStartupHeap(reactor, collector).startService()
        reactor.run()
        self.assertEqual(collector.threshold, (50_000, 5, 5))
