"""
The live dashboard in a real headless Chromium: the page loads with no
internet, shows every backend, and its numbers follow the traffic.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from tests.support import firstLine, inThread, reactor
from tests.test_admin import AdminHarness

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
_ROW = re.compile(r'<tr data-backend="([^"]+)">(.*?)</tr>', re.DOTALL)
_CELL = re.compile(r'<td class="num (\w+)"[^>]*>([^<]*)')


def rows(dom: str) -> dict[str, dict[str, str]]:
    """
    The dashboard's backend rows: name to column to text.
    """
    return {name: dict(_CELL.findall(body)) for name, body in _ROW.findall(dom)}


class DashboardTests(TestCase):
    """
    The page in Chromium.
    """

    timeout = 120

    def setUp(self) -> None:
        if CHROMIUM is None:
            self.skipTest("chromium is not installed (apt-get install chromium, "
                          "or make test-deps as root)")

    def dump(self, url: str) -> Any:
        """
        Load C{url} in headless Chromium, let its scripts run for a few
        (virtual) seconds, and fire with the DOM.
        """
        profile = tempfile.mkdtemp(prefix="lbtwist-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        args = ["30", CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                "--virtual-time-budget=3000", "--dump-dom", url]
        d = getProcessOutputAndValue("/usr/bin/timeout", args, env=dict(os.environ),
                                     reactor=reactor)

        def check(result: tuple[bytes, bytes, int]) -> str:
            out, err, code = result
            self.assertEqual(code, 0, err[-2000:])
            return out.decode("utf-8", "replace")

        return d.addCallback(check)

    @inlineCallbacks
    def test_liveNumbers(self) -> Any:
        """
        Every backend has a row with its state and counters; after more
        traffic the totals shown are higher; the chart's legend shows rates.
        """
        h = AdminHarness(self, names=("a", "b", "c"))
        for _ in range(3):
            yield inThread(firstLine, h.port)
        url = f"http://127.0.0.1:{h.admin}/"
        dom = yield self.dump(url)
        before = rows(dom)
        self.assertEqual(set(before), {"a", "b", "c"}, dom[-3000:])
        self.assertEqual(sum(int(r["total"]) for r in before.values()), 3)
        for key in ("weight", "active", "failures", "resp", "share"):
            self.assertIn(key, before["a"])
        self.assertIn('class="state state-', dom)
        self.assertIn("/s</span>", dom)
        self.assertNotIn("admin API unreachable", dom)
        for _ in range(6):
            yield inThread(firstLine, h.port)
        after = rows((yield self.dump(url)))
        self.assertEqual(sum(int(r["total"]) for r in after.values()), 9)
        for name in ("a", "b", "c"):
            self.assertGreater(int(after[name]["total"]), int(before[name]["total"]))
        self.assertLess(abs(sum(float(r["share"]) for r in after.values()) - 100.0), 0.5)
