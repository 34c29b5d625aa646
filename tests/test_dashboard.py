"""
The live dashboard in a real headless Chromium: the page loads with no
internet, shows every backend, its numbers follow the traffic, errors and
response times show per pool and in total, the charts' legend and the share
bars agree on colours, the axis ticks are nice, and the page dims when the
admin API stops answering.
"""

from __future__ import annotations

import html
import http.client
import json
import os
import re
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase
from twisted.web.server import NOT_DONE_YET, Request

import lbtwist
from lbtwist.pool import Admin, Health
from tests.httphelpers import httpRequests, waitFor
from tests.support import firstLine, freePort, inThread, reactor
from tests.test_admin import AdminHarness, statusSite

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
STATIC = Path(lbtwist.__file__).parent / "static"
SCREENS = Path("/work/briefs/screens")
_ROW = re.compile(r'<tr data-backend="([^"]+)">(.*?)</tr>', re.DOTALL)
_SUMMARY = re.compile(r'<tr data-summary="([^"]+)"[^>]*>(.*?)</tr>', re.DOTALL)
_LISTENER = re.compile(r'<tr data-listener="([^"]+)">(.*?)</tr>', re.DOTALL)
_CELL = re.compile(r'<td class="num (\w+)[^"]*"[^>]*>([^<]*)')
_LEGEND = re.compile(r'<span data-series="([^"]+)" data-color="([^"]+)"')
_TAG = re.compile(r'<span class="tag tag-(\w+)"[^>]*>([^<]*)</span>')
_BAR = re.compile(r'<tr data-backend="([^"]+)">.*?<span class="bar" data-color="([^"]+)"',
                  re.DOTALL)


def rows(dom: str, pattern: re.Pattern[str] = _ROW) -> dict[str, dict[str, str]]:
    """
    The dashboard's backend rows (or with C{_SUMMARY} or C{_LISTENER}, the
    overview's or listeners' rows): name to column to text.
    """
    return {name: dict(_CELL.findall(body)) for name, body in pattern.findall(dom)}


def tagsOf(dom: str) -> dict[str, list[tuple[str, str]]]:
    """
    The markers on each backend row of C{dom}: name to (kind, text) pairs.
    """
    return {name: _TAG.findall(body) for name, body in _ROW.findall(dom)}


def tableOf(dom: str, pool: str) -> str:
    """
    The backend table of C{pool} in the DOM.
    """
    start = dom.index(f'data-pool="{pool}"')
    return dom[start:dom.index("</table>", start)]


class AdminGate:
    """
    Wraps the admin resource: after C{serve} polls of C{/api/pools}, the
    admin API stops (the listener stops, and requests on connections the
    browser kept alive are cut); with C{outage}, it answers again after that
    many polls were cut.
    """

    def __init__(self, harness: AdminHarness, serve: int, outage: int | None = None) -> None:
        self.harness = harness
        self.serve = serve
        self.outage = outage
        self.polls = 0
        self.cut = 0
        self.resource = harness.service.resource
        self.render = self.resource.render
        self.resource.render = self.gated  # type: ignore[method-assign]

    def gated(self, request: Request) -> Any:
        """
        Serve, or cut the connection while the API is stopped.
        """
        if request.path == b"/api/pools":
            self.polls += 1
        if self.polls <= self.serve or (self.outage is not None and self.cut >= self.outage):
            return self.render(request)
        if self.outage is None and self.harness.service.port is not None:
            self.harness.service.stopService()
        if request.path == b"/api/pools":
            self.cut += 1
        request.channel.transport.abortConnection()  # type: ignore[union-attr]
        return NOT_DONE_YET

    def restore(self) -> None:
        """
        Put the resource back as it was.
        """
        self.resource.render = self.render  # type: ignore[method-assign]


class DashboardTests(TestCase):
    """
    The page in Chromium.
    """

    timeout = 180

    def setUp(self) -> None:
        if CHROMIUM is None:
            self.skipTest("chromium is not installed (apt-get install chromium, "
                          "or make test-deps as root)")

    def chromium(self, url: str, *flags: str, budget: int = 3000) -> Any:
        """
        Load C{url} in headless Chromium with C{flags}, let its scripts run
        for C{budget} (virtual) milliseconds, and fire with its output.
        """
        profile = tempfile.mkdtemp(prefix="lbtwist-chromium-")
        self.addCleanup(shutil.rmtree, profile, True)
        args = ["60", str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu",
                "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
                "--allow-file-access-from-files",
                f"--virtual-time-budget={budget}", *flags, url]
        d = getProcessOutputAndValue("/usr/bin/timeout", args, env=dict(os.environ),
                                     reactor=reactor)

        def check(result: tuple[bytes, bytes, int]) -> str:
            out, err, code = result
            self.assertEqual(code, 0, err[-2000:])
            return out.decode("utf-8", "replace")

        return d.addCallback(check)

    def dump(self, url: str, budget: int = 3000) -> Any:
        """
        The DOM of C{url} after C{budget} virtual milliseconds.
        """
        return self.chromium(url, "--dump-dom", budget=budget)

    @inlineCallbacks
    def screenshot(self, url: str, name: str, budget: int = 3000) -> Any:
        """
        A 1280x900 screenshot of C{url} in the test's directory, copied to
        the shared screens directory for people to look at; fire with its
        path.
        """
        path = os.path.abspath(self.mktemp()) + f"-{name}.png"
        yield self.chromium(url, f"--screenshot={path}", "--window-size=1280,900",
                            "--hide-scrollbars", budget=budget)
        data = Path(path).read_bytes()
        self.assertEqual(data[:8], b"\x89PNG\r\n\x1a\n")
        self.assertGreater(len(data), 10_000)
        try:
            SCREENS.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, SCREENS / f"{name}.png")
        except OSError:
            pass  # Only a copy for people; the test's own file is checked.
        return path

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
        for key in ("weight", "active", "failures", "resp", "share", "p50", "p99"):
            self.assertIn(key, before["a"])
        self.assertIn('class="state state-', dom)
        self.assertIn("/s</span>", dom)
        self.assertNotIn("admin API unreachable", dom)
        self.assertNotIn('class="stale"', dom)
        for _ in range(6):
            yield inThread(firstLine, h.port)
        after = rows((yield self.dump(url)))
        self.assertEqual(sum(int(r["total"]) for r in after.values()), 9)
        for name in ("a", "b", "c"):
            self.assertGreater(int(after[name]["total"]), int(before[name]["total"]))
        self.assertLess(abs(sum(float(r["share"]) for r in after.values()) - 100.0), 0.5)

    def errorHarness(self) -> AdminHarness:
        """
        An HTTP-mode balancer over backends that answer any status asked,
        and a second listener and pool C{spare} whose one backend is never
        there, so its clients are refused for lack of a backend; a third
        listener C{routed} has routes only.
        """

        def configure(data: dict[str, Any]) -> None:
            data["listeners"][0].update(name="front", pool="web")
            data["listeners"].append({"name": "spare", "listen": "tcp:0:interface=127.0.0.1",
                                      "mode": "http", "pool": "spare"})
            data["listeners"].append({"name": "routed", "listen": "tcp:0:interface=127.0.0.1",
                                      "mode": "http", "routes": [
                                          {"name": "s", "match": {"path-prefix": "/s/"},
                                           "pool": "spare"}]})
            data["pools"]["spare"] = {
                "backends": [{"name": "gone",
                              "endpoint": f"tcp:host=127.0.0.1:port={freePort()}"}],
                "health": {"interval": 0.2, "rise": 1, "fall": 1},
            }

        return AdminHarness(self, names=("a", "b", "c"), mode="http", factory=statusSite,
                            configure=configure)

    @inlineCallbacks
    def test_errorsAndPercentiles(self) -> Any:
        """
        After traffic with 5xx and 4xx answers and a client refused for lack
        of a backend, the overview shows non-zero error rates (per pool and
        in total) and response-time percentiles; the listeners show status
        classes; each backend's share bar has its legend colour; the charts
        draw a total and label their axes with nice ticks; a listener of
        routes only shows no pool.
        """
        h = self.errorHarness()
        spare = h.lb.pools["spare"]
        gone = spare.get("gone")
        assert gone is not None
        self.assertTrue((yield waitFor(lambda: gone.health is Health.DOWN)))
        sparePort = h.lb.getServiceNamed(
            "listener:spare")._waitingForPort.result.getHost().port  # type: ignore[attr-defined]
        paths = ["/"] * 12 + ["/status/500"] * 4 + ["/status/404"] * 2
        answers = yield httpRequests(h.port, [("GET", p, None, {}) for p in paths])
        self.assertEqual([a[0] for a in answers].count(500), 4)
        [refused] = yield httpRequests(sparePort, [("GET", "/", None, {})])
        self.assertEqual(refused[0], 503)
        self.assertEqual(spare.noBackend, 1)
        url = f"http://127.0.0.1:{h.admin}/"
        dom = yield self.dump(url)
        summary = rows(dom, _SUMMARY)
        self.assertEqual(set(summary), {"web", "spare", "total"}, dom[-3000:])
        web, total = summary["web"], summary["total"]
        for column in ("reqRate", "errRate", "r5xx", "r4xx", "p50", "p90", "p99"):
            self.assertGreater(float(web[column]), 0, (column, web))
            self.assertGreater(float(total[column]), 0, (column, total))
        self.assertGreater(float(summary["spare"]["noBackendRate"]), 0, summary["spare"])
        self.assertGreater(float(summary["spare"]["errRate"]), 0, summary["spare"])
        self.assertEqual(summary["web"]["noBackendRate"], "0.00")
        self.assertLessEqual(float(total["p50"]), float(total["p99"]))
        # Each rate is shown to three significant digits.
        parts = float(web["errRate"]) + float(summary["spare"]["errRate"])
        self.assertLessEqual(abs(float(total["errRate"]) - parts), max(0.025, parts / 100),
                             (total, parts))
        backends = rows(tableOf(dom, "web"))
        for name in ("a", "b", "c"):
            self.assertNotEqual(backends[name]["p50"], "-")
        front = rows(dom, _LISTENER)["front"]
        self.assertEqual((front["s5xx"], front["s4xx"], front["s2xx"]), ("4", "2", "12"))
        # A listener of routes only has no pool to show.
        listenerRows = dict(_LISTENER.findall(dom))
        self.assertIn("<td>front</td><td>http</td><td>web</td>", listenerRows["front"])
        self.assertIn("<td>routed</td><td>http</td><td>routes only</td>",
                      listenerRows["routed"])
        # One colour per backend, the same in the legend and the share bar.
        legend = dict(_LEGEND.findall(dom))
        bars = dict(_BAR.findall(tableOf(dom, "web")))
        self.assertEqual(set(bars), {"a", "b", "c"})
        for name, color in bars.items():
            self.assertEqual(legend[f"web/{name}"], color)
        self.assertEqual(len(set(bars.values())), 3)
        self.assertIn("total", legend)
        self.assertNotIn(legend["total"], bars.values())
        # No traffic while the page watched: the axes run 0-1 in quarters.
        ticks = re.findall(r'<canvas id="(\w+)"[^>]*data-ticks="([^"]*)"', dom)
        self.assertEqual(dict(ticks), {"chart": "0.00,0.25,0.50,0.75,1.00",
                                       "errors": "0.00,0.25,0.50,0.75,1.00"})
        yield self.liveScreenshot(h, url)

    @inlineCallbacks
    def liveScreenshot(self, h: AdminHarness, url: str) -> Any:
        """
        A screenshot while a client thread sends requests (some failing),
        bounded in count and time, so the charts have lines to show.
        """
        done = threading.Event()

        def load() -> int:
            sent = 0
            deadline = time.monotonic() + 20
            while not done.is_set() and sent < 400 and time.monotonic() < deadline:
                paths = ["/", "/", "/", "/status/503"]
                conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=5)
                try:
                    for p in paths:
                        conn.request("GET", p)
                        conn.getresponse().read()
                        sent += 1
                finally:
                    conn.close()
                time.sleep(0.005)
            return sent

        loading = inThread(load)
        try:
            yield self.screenshot(url, "dashboard-errors", budget=6000)
        finally:
            done.set()
            sent = yield loading
        self.assertGreater(sent, 0)

    @inlineCallbacks
    def test_backendMarkers(self) -> Any:
        """
        A backup backend is tagged C{backup}, one found through DNS C{DNS};
        an ejected one C{ejected} with the time left by the server's clock
        (just C{ejected} when its end is not on that clock); one in slow
        start shows its effective over its full weight, C{ramping}; a plain
        backend has no marker and its bare weight.
        """

        def configure(data: dict[str, Any]) -> None:
            backends = data["pools"]["web"]["backends"]
            backends[0].update(weight=2, **{"slow-start": 60})
            backends[1]["backup"] = True

        names = ("a", "b", "c", "d", "e")
        h = AdminHarness(self, names=names, configure=configure)
        pool = h.pool
        a, b, c, d, e = (pool.get(n) for n in names)
        assert a is not None and b is not None and c is not None
        assert d is not None and e is not None
        self.assertTrue((yield waitFor(lambda: all(x.health is Health.UP for x in pool))))
        # Back from a drain, a ramps up over its minute of slow start.
        pool.setAdmin("a", Admin.DRAIN)
        pool.setAdmin("a", Admin.READY)
        c.ejected, c.ejectedUntil, c.ejections = True, pool.clock() + 45, 2
        d.config = attrs.evolve(d.config, discovered=True)
        # An end at 1.0 is not on the server's (wall) clock: no time shown.
        d.ejected, d.ejectedUntil, d.ejections = True, 1.0, 1
        url = f"http://127.0.0.1:{h.admin}/"
        dom = yield self.dump(url)
        tags = tagsOf(dom)
        self.assertEqual(set(tags), set(names), dom[-3000:])
        self.assertEqual([k for k, _ in tags["a"]], ["ramping"])
        self.assertEqual(tags["b"], [("backup", "backup")])
        [(kind, text)] = tags["c"]
        self.assertEqual(kind, "ejected")
        left = re.fullmatch(r"ejected (\d+)s", text)
        assert left is not None, text
        self.assertTrue(30 <= int(left.group(1)) <= 45, text)
        self.assertEqual(tags["d"], [("dns", "DNS"), ("ejected", "ejected")])
        self.assertEqual(tags["e"], [])
        weights = {n: r["weight"].strip() for n, r in rows(dom).items()}
        ramp = re.fullmatch(r"(\d+\.\d+)/2", weights["a"])
        assert ramp is not None, weights
        self.assertTrue(0 < float(ramp.group(1)) < 2, weights)
        self.assertEqual({n: weights[n] for n in "bcde"},
                         {"b": "1", "c": "1", "d": "1", "e": "1"})
        self.assertIn('class="state state-up"', dom)
        yield self.screenshot(url, "dashboard-markers")

    @inlineCallbacks
    def test_adminStops(self) -> Any:
        """
        When the admin API stops answering the page is dimmed and says since
        when; when it answers again, the page is bright again.
        """
        h = AdminHarness(self, names=("a", "b"))
        yield inThread(firstLine, h.port)
        url = f"http://127.0.0.1:{h.admin}/"
        gate = AdminGate(h, serve=2)
        dom = yield self.dump(url, budget=5000)
        self.assertGreater(gate.cut, 0)
        self.assertIsNone(h.service.port)
        self.assertRegex(dom, r'<body class="stale">')
        note = re.search(r'<span id="stale" class="stale-note">([^<]*)</span>', dom)
        assert note is not None, dom[:3000]
        self.assertRegex(note.group(1), r"^admin API not answering since \d\d:\d\d:\d\d$")
        self.assertEqual(set(rows(dom)), {"a", "b"})  # the last numbers stay, dimmed
        # The screenshot, by a new gate on a new admin listener.
        gate.restore()
        h.service.startService()
        h.admin = int(h.service.port.getHost().port)
        url = f"http://127.0.0.1:{h.admin}/"
        AdminGate(h, serve=2)
        yield self.screenshot(url, "dashboard-stale", budget=5000)

    @inlineCallbacks
    def test_adminComesBack(self) -> Any:
        """
        After an outage of two polls the page is bright again, with no note.
        """
        h = AdminHarness(self, names=("a",))
        gate = AdminGate(h, serve=2, outage=2)
        dom = yield self.dump(f"http://127.0.0.1:{h.admin}/", budget=7000)
        self.assertEqual(gate.cut, 2)
        self.assertGreater(gate.polls, 4)
        self.assertIn("<body>", dom.replace('<body class="">', "<body>"))
        self.assertRegex(dom, r'<span id="stale" class="stale-note" hidden="">')

    @inlineCallbacks
    def test_ticks(self) -> Any:
        """
        The tick function gives steps of 1, 2, 2.5 or 5 times a power of ten
        that cover the peak in at most four steps, with enough decimals.
        """
        cases = [1, 0.9, 0.3, 7, 12, 1000, 0, 0.004, 37]
        page = Path(self.mktemp() + ".html")
        page.write_text(
            "<!DOCTYPE html><html><body><pre id=out></pre>"
            f'<script src="{(STATIC / "ticks.js").as_uri()}"></script><script>'
            f"document.getElementById('out').textContent = JSON.stringify("
            f"{json.dumps(cases)}.map(function (p) {{"
            "return LbtwistTicks.niceTicks(p, 4).labels.join(','); }));"
            "</script></body></html>")
        dom = yield self.dump(page.resolve().as_uri(), budget=500)
        found = re.search(r'<pre id="out">(.*?)</pre>', dom)
        assert found is not None, dom
        labels = dict(zip(cases, json.loads(html.unescape(found.group(1)))))
        self.assertEqual(labels, {
            1: "0.00,0.25,0.50,0.75,1.00",
            0.9: "0.00,0.25,0.50,0.75,1.00",
            0.3: "0.0,0.1,0.2,0.3",
            7: "0,2,4,6,8",
            12: "0,5,10,15",
            1000: "0,250,500,750,1000",
            0: "0.00,0.25,0.50,0.75,1.00",
            0.004: "0.000,0.001,0.002,0.003,0.004",
            37: "0,10,20,30,40",
        })
