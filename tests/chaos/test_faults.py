"""
Backends that die, freeze, reset and flap under steady load: clients see
only the errors that could not be avoided (a response already partly sent,
or a request a frozen backend swallowed), never a hang, and every request
that had not reached a backend is served by another.  A POST is never seen
twice by the backends.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from lbtwist.pool import Health
from tests.chaos.tools import (
    BackendProcess,
    Outcome,
    duplicates,
    fetch,
    load,
    report,
    summary,
)
from tests.httphelpers import waitFor
from tests.support import poolConfig, sleep, startBalancer

# How long a client waits before it calls a request a hang.
CLIENT_TIMEOUT = 6.0


class FaultsTestCase(TestCase):
    """
    Backend processes and an in-process balancer over them.
    """

    timeout = 60

    @inlineCallbacks
    def startBackends(self, *specs: tuple[str, ...]) -> Any:
        """
        Start one backend process per C{(name, *args)}; fires with them by name.
        """
        workdir = os.path.abspath(self.mktemp())
        os.makedirs(workdir)
        backends = {}
        for name, *args in specs:
            b = BackendProcess(self, workdir, name, *args)
            yield b.start()
            backends[name] = b
        return backends

    def balancer(self, backends: dict[str, BackendProcess], mode: str = "http",
                 maxconn: int = 0, **settings: Any) -> tuple[Any, int]:
        """
        Start a balancer in this reactor over C{backends}: fast health
        checks, short timeouts, three retries, and C{maxconn} per backend.
        """
        settings.setdefault("retries", 3)
        settings.setdefault("health", {"interval": "200ms", "timeout": "300ms",
                                       "rise": 1, "fall": 2})
        settings.setdefault("timeouts", {"connect": "1s", "response": "1s"})
        data = poolConfig([(n, b.endpoint) for n, b in backends.items()], mode, **settings)
        for b in data["pools"]["web"]["backends"]:
            b["maxconn"] = maxconn
        return startBalancer(self, data)


class DyingBackendTests(FaultsTestCase):
    """
    Killed, frozen, resetting and flapping backends under load.
    """

    @inlineCallbacks
    def test_killedMidResponse(self) -> Any:
        """
        SIGKILL of a backend while it streams responses: only the responses
        it had begun are cut short; every other request, including those it
        had accepted but not answered, is served by another backend.
        """
        backends = yield self.startBackends(("a",), ("b",), ("c",))
        lb, port = self.balancer(backends)
        long = load(port, 6, 10, 6, lambda n, i: fetch(
            port, "/?bytes=256k&trickle=40ms", timeout=CLIENT_TIMEOUT + 6))
        # The long responses first, so round robin gives each backend two:
        # the short ones start once all six are at their backends.
        pool = lb.pools["web"]
        self.assertTrue((yield waitFor(lambda: pool.active == 6)), f"{pool.active} in flight")
        short = load(port, 6, 4, 100000, lambda n, i: fetch(
            port, "/?bytes=2k&delay=30ms", timeout=CLIENT_TIMEOUT))
        yield sleep(0.7)
        backends["a"].kill()
        killedAt = time.monotonic()
        longOutcomes, shortOutcomes = (yield long), (yield short)
        s = summary(shortOutcomes)
        report(self, "killed mid-response", short=s, long=summary(longOutcomes))
        self.assertEqual(set(s), {"ok:200"}, s)
        self.assertGreater(s["ok:200"], 50)
        cut = [o for o in longOutcomes if o.kind != "ok"]
        self.assertEqual({o.kind for o in cut} - {"truncated"}, set())
        self.assertTrue(all(o.backend == "a" for o in cut), cut)
        self.assertEqual(len(cut), sum(1 for o in longOutcomes if o.backend == "a"))
        self.assertGreaterEqual(len(cut), 1, longOutcomes)
        self.assertTrue(all(o.kind == "ok" and o.status == 200 for o in longOutcomes
                            if o.backend != "a"))
        after = [o for o in shortOutcomes if o.started > killedAt]
        self.assertTrue(after and all(o.backend != "a" for o in after))

    @inlineCallbacks
    def test_frozenBackend(self) -> Any:
        """
        A backend frozen with SIGSTOP still accepts connections: requests it
        swallowed get a 504 within the response timeout (never a hang), it
        is marked down by its HTTP health check, and from then on every
        request is served.
        """
        backends = yield self.startBackends(("a",), ("b",), ("c",))
        lb, port = self.balancer(
            backends,
            health={"type": "http", "interval": "200ms", "timeout": "300ms",
                    "rise": 1, "fall": 2},
        )
        pool = lb.pools["web"]
        loaded = load(port, 6, 5, 100000, lambda n, i: fetch(
            port, "/?delay=20ms", timeout=CLIENT_TIMEOUT))
        yield sleep(1.0)
        backends["a"].freeze()
        frozenAt = time.monotonic()
        downAt = None
        for _ in range(60):
            if pool.get("a").health is Health.DOWN:  # type: ignore[union-attr]
                downAt = time.monotonic()
                break
            yield sleep(0.05)
        outcomes: list[Outcome] = yield loaded
        backends["a"].thaw()
        s = summary(outcomes)
        errors = [o for o in outcomes if (o.kind, o.status) != ("ok", 200)]
        report(self, "frozen backend", outcomes=s,
               markedDownAfter=round((downAt or 0) - frozenAt, 2))
        self.assertIsNotNone(downAt, "the frozen backend was never marked down")
        assert downAt is not None
        self.assertEqual({(o.kind, o.status) for o in errors} - {("ok", 504)}, set(), s)
        self.assertTrue(all(o.elapsed < 2.0 for o in outcomes), "a request hung")
        # Only requests sent before the backend was marked down could fail.
        self.assertEqual([o for o in errors if o.started > downAt + 0.05], [])
        self.assertGreater(s["ok:200"], 50)

    @inlineCallbacks
    def test_resetEveryThird(self) -> Any:
        """
        A backend that resets every third request after reading it: every
        GET is retried on a fresh connection and served; clients see no
        error.
        """
        backends = yield self.startBackends(("a", "--reset-every", "3"), ("b",))
        lb, port = self.balancer(backends)
        outcomes = yield load(port, 6, 3, 100000, lambda n, i: fetch(
            port, "/?bytes=1k", timeout=CLIENT_TIMEOUT))
        s = summary(outcomes)
        resets = len(backends["a"].requests()) // 3
        report(self, "reset every third", outcomes=s, resets=resets)
        self.assertEqual(set(s), {"ok:200"}, s)
        self.assertGreater(resets, 10)

    @inlineCallbacks
    def test_flapping(self) -> Any:
        """
        A backend killed and restarted every second under steady load:
        clients see no error and no hang; the other backends take its
        share while it is down.
        """
        backends = yield self.startBackends(("a",), ("b",), ("c",))
        lb, port = self.balancer(backends)
        loaded = load(port, 6, 6.5, 100000, lambda n, i: fetch(
            port, "/?bytes=4k&delay=10ms", timeout=CLIENT_TIMEOUT))
        flaps = 0
        for _ in range(5):
            yield sleep(0.5)
            backends["c"].kill()
            yield sleep(0.5)
            yield backends["c"].start()
            flaps += 1
        outcomes = yield loaded
        s = summary(outcomes)
        served = {o.backend for o in outcomes}
        report(self, "flapping", outcomes=s, flaps=flaps,
               servedByFlapper=sum(1 for o in outcomes if o.backend == "c"))
        self.assertEqual(set(s), {"ok:200"}, s)
        self.assertEqual(served, {"a", "b", "c"})
        self.assertGreater(s["ok:200"], 100)

    @inlineCallbacks
    def test_tcpModeKilled(self) -> Any:
        """
        TCP mode: when a backend is killed, the connections it held end
        (they had reached it: unavoidable), never hang, and every new
        connection is sent to the others.
        """
        backends = yield self.startBackends(("a",), ("b",))
        lb, port = self.balancer(backends, mode="tcp")
        loaded = load(port, 6, 4, 100000, lambda n, i: fetch(
            port, "/?bytes=2k&delay=50ms", timeout=CLIENT_TIMEOUT))
        yield sleep(1.0)
        backends["a"].kill()
        killedAt = time.monotonic()
        outcomes = yield loaded
        s = summary(outcomes)
        report(self, "tcp mode killed", outcomes=s)
        failed = [o for o in outcomes if (o.kind, o.status) != ("ok", 200)]
        self.assertEqual({o.kind for o in failed} - {"closed", "truncated"}, set(), s)
        # Only connections open when the backend died may fail.
        self.assertLessEqual(len(failed), 6)
        self.assertEqual([o for o in failed if o.started > killedAt + 0.05], [])
        self.assertGreater(s["ok:200"], 30)


class AtMostOnceTests(FaultsTestCase):
    """
    Requests that are not idempotent are never sent twice.
    """

    @inlineCallbacks
    def test_postAtMostOnce(self) -> Any:
        """
        Under a backend that resets every third request after reading it,
        no POST is recorded twice by the backends: each reset POST gets a
        502, every other POST a 200, and each was seen exactly once.
        """
        backends = yield self.startBackends(("a", "--reset-every", "3"), ("b",))
        lb, port = self.balancer(backends)
        outcomes = yield load(port, 4, 10, 300, lambda n, i: fetch(
            port, "/post", method="POST", body=b"payload %d %d" % (n, i),
            timeout=CLIENT_TIMEOUT))
        seen = backends["a"].requests() + backends["b"].requests()
        posts = [r for r in seen if r.method == "POST"]
        s = summary(outcomes)
        reset = {r.id for r in backends["a"].requests() if r.seq % 3 == 0}
        report(self, "POST at most once", posts=len(outcomes), outcomes=s,
               duplicated=len(duplicates(posts)), resetByBackend=len(reset))
        self.assertEqual(len(outcomes), 300)
        self.assertEqual(duplicates(posts), {})
        self.assertEqual(set(s) - {"ok:200", "ok:502"}, set(), s)
        self.assertEqual({o.requestId for o in outcomes if o.status == 502}, reset)
        self.assertEqual({o.requestId for o in outcomes}, {r.id for r in posts})
        self.assertGreater(len(reset), 10)
