"""
Operations under load: a SIGHUP reload with a changed backend list, a drain
through the admin API and a removal through the admin API, each during a
C{wrk} run (a bounded Python load when C{wrk} is missing): zero failed
requests.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from typing import Any

import yaml
from twisted.internet.defer import inlineCallbacks

from tests.chaos.test_faults import FaultsTestCase
from tests.chaos.tools import BalancerProcess, fetch, inThread, load, report, summary
from tests.support import sleep

RUN_SECONDS = 3


def wrkRun(port: int, seconds: int) -> dict[str, int]:
    """
    Run C{wrk} against the balancer; its request and error counts.
    """
    out = subprocess.run(
        ["wrk", "-t2", "-c16", f"-d{seconds}s", "--timeout", "5s",
         f"http://127.0.0.1:{port}/?bytes=1k"],
        capture_output=True, text=True, timeout=seconds + 30,
    ).stdout
    done = re.search(r"(\d+) requests in", out)
    if done is None:
        raise AssertionError(f"wrk said: {out}")
    figures = {"requests": int(done.group(1)), "non2xx": 0, "socketErrors": 0}
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if bad:
        figures["non2xx"] = int(bad.group(1))
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if errors:
        figures["socketErrors"] = sum(int(g) for g in errors.groups())
    return figures


def pythonRun(port: int, seconds: int) -> dict[str, int]:
    """
    The same figures from a bounded Python load, for machines without wrk.
    """
    from tests.chaos.tools import runLoad

    outcomes = runLoad(port, 8, seconds, 200000, lambda n, i: fetch(port, "/?bytes=1k"))
    s = summary(outcomes)
    return {"requests": len(outcomes), "non2xx": len(outcomes) - s.get("ok:200", 0),
            "socketErrors": sum(v for k, v in s.items() if not k.startswith("ok:"))}


class OperationsUnderLoadTests(FaultsTestCase):
    """
    Reload, drain and remove while a load generator runs.
    """

    timeout = 120

    @inlineCallbacks
    def test_reloadDrainRemove(self) -> Any:
        """
        Three runs under load: SIGHUP swaps backend a for d; the API drains
        b; the API removes c.  No request fails in any run, and traffic
        follows each change.
        """
        backends = yield self.startBackends(("a",), ("b",), ("c",), ("d",))
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        lb = BalancerProcess(self, workdir, grace=20.0)

        def pools(names: list[str]) -> dict[str, Any]:
            return {"web": {
                "health": {"interval": "200ms", "rise": 1, "fall": 2},
                "backends": [{"name": n, "endpoint": backends[n].endpoint} for n in names],
            }}

        lb.writeConfig(pools(["a", "b", "c"]))
        yield lb.start()
        run = wrkRun if shutil.which("wrk") else pythonRun
        yield load(lb.port, 4, 5, 100, lambda n, i: fetch(lb.port))
        results = {}

        def reload() -> Any:
            with open(os.path.join(workdir, "lb.yaml")) as f:
                data = yaml.safe_load(f)
            data["pools"] = pools(["b", "c", "d"])
            with open(os.path.join(workdir, "lb.yaml"), "w") as f:
                yaml.safe_dump(data, f)
            lb.signal(signal.SIGHUP)

        steps = [
            ("sighup", reload),
            ("drain", lambda: lb.api("PATCH", "/api/pools/web/backends/b", {"state": "drain"})),
            ("remove", lambda: lb.api("DELETE", "/api/pools/web/backends/c")),
        ]
        for name, change in steps:
            running = inThread(run, lb.port, RUN_SECONDS)
            yield sleep(1.0)
            answer = change()
            if answer is not None:
                status, body = yield answer
                self.assertIn(status, (200, 204), body)
            counts = {n: len(b.requests()) for n, b in backends.items()}
            yield sleep(0.5)
            later = {n: len(b.requests()) for n, b in backends.items()}
            results[name] = (yield running)
            results[name]["servedAfter"] = {n: later[n] - counts[n] for n in later}
        report(self, "operations under load", tool=run.__name__, **results)
        self.assertIsNotNone(lb.logLine("configuration reloaded"))
        for name, figures in results.items():
            self.assertGreater(figures["requests"], 500, name)
            self.assertEqual((figures["non2xx"], figures["socketErrors"]), (0, 0), name)
        self.assertEqual(results["sighup"]["servedAfter"]["a"], 0)
        self.assertGreater(results["sighup"]["servedAfter"]["d"], 0)
        self.assertEqual(results["drain"]["servedAfter"]["b"], 0)
        self.assertEqual(results["remove"]["servedAfter"]["c"], 0)
        self.assertGreater(results["remove"]["servedAfter"]["d"], 0)
        status, body = yield lb.api("GET", "/api/pools/web/backends")
        self.assertEqual({b["name"]: b["admin"] for b in body}, {"b": "drain", "d": "ready"})
