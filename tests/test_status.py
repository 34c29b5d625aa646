"""
Tests for L{lbtwist.status}.
"""

from __future__ import annotations

import random

import attrs
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import BackendConfig, PoolConfig
from lbtwist.pool import Admin, BackendPool, BackendStats
from lbtwist.status import formatTable


class FormatTableTests(SynchronousTestCase):
    """
    Tests for L{formatTable}.
    """

    def test_table(self) -> None:
        """
        One row per backend with its state and counters, and a totals row
        counting the backends that serve (up or not yet checked).
        """
        pool = BackendPool(PoolConfig(name="web", backends=(
            BackendConfig("a", "tcp:host=h:port=1"), BackendConfig("b", "tcp:host=h:port=2"),
            BackendConfig("c", "tcp:host=h:port=3"))), random.Random(0))
        a, b, c = (pool.get(n) for n in "abc")
        assert a is not None and b is not None and c is not None
        for _ in range(2):
            pool.succeeded(a)
        for _ in range(3):
            pool.failed(c, "probe", "refused")
        pool.opened(a)
        pool.opened(a)
        pool.opened(b)
        pool.closed(b)
        lines = formatTable("web", pool.stats()).splitlines()
        self.assertEqual(lines[0], "pool web")
        self.assertEqual(lines[1].split(), ["backend", "state", "weight", "active", "total",
                                            "failures", "probe", "ms", "resp", "ms", "share", "%"])
        self.assertEqual(lines[2].split(), ["a", "up", "1", "2", "2", "0", "-", "-", "66.7"])
        self.assertEqual(lines[3].split(), ["b", "unknown", "1", "0", "1", "0", "-", "-", "33.3"])
        self.assertEqual(lines[4].split(), ["c", "down", "1", "0", "0", "3", "-", "-", "0.0"])
        self.assertEqual(lines[5].split(), ["TOTAL", "(2/3", "serving)", "2", "3", "3", "100.0"])

    def test_servingAsThePoolServes(self) -> None:
        """
        The totals count the backends in the pool's rotation: an idle backup
        behind an up primary is not, nor a primary of weight 0; with the
        primaries down only the first backup is (C{all-backups} off); from
        a balancer that does not say, the up and unknown ones are.
        """
        pool = BackendPool(PoolConfig(name="web", backends=(
            BackendConfig("a", "tcp:host=h:port=1"), BackendConfig("b", "tcp:host=h:port=2"),
            BackendConfig("y", "tcp:host=h:port=3", backup=True),
            BackendConfig("z", "tcp:host=h:port=4", backup=True))), random.Random(0))
        a, b = pool.get("a"), pool.get("b")
        assert a is not None and b is not None

        def total(stats: list[BackendStats] | None = None) -> str:
            table = formatTable("web", pool.stats() if stats is None else stats)
            return table.splitlines()[6].split()[1]

        self.assertEqual(total(), "(2/4")
        pool.setWeight("b", 0)
        self.assertEqual(total(), "(1/4")
        for _ in range(3):
            pool.failed(a, "probe", "refused")
        # No primary left to take clients: the first backup does.
        self.assertEqual(total(), "(1/4")
        self.assertEqual([s.name for s in pool.stats() if s.serving], ["y"])
        unsaid = [attrs.evolve(s, serving=None) for s in pool.stats()]
        self.assertEqual(total(unsaid), "(3/4")

    def test_backupAndSlowStart(self) -> None:
        """
        A backup's state is marked C{b}; a backend in slow start shows its
        weight now over its full weight, and its plain weight once ramped.
        """
        now = [0.0]
        pool = BackendPool(PoolConfig(name="web", slowStart=10.0, backends=(
            BackendConfig("a", "tcp:host=h:port=1", weight=2),
            BackendConfig("b", "tcp:host=h:port=2", backup=True))),
            random.Random(0), lambda: now[0])
        pool.setAdmin("a", Admin.MAINT)
        pool.setAdmin("a", Admin.READY)
        now[0] = 5.0
        lines = formatTable("web", pool.stats()).splitlines()
        self.assertEqual(lines[2].split()[:3], ["a", "unknown", "1.06/2"])
        self.assertEqual(lines[3].split()[:4], ["b", "unknown", "b", "1"])
        now[0] = 10.0
        lines = formatTable("web", pool.stats()).splitlines()
        self.assertEqual(lines[2].split()[:3], ["a", "unknown", "2"])
