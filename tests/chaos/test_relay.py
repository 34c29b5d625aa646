"""
Network faults between the balancer and a backend, made by a
L{ChaosRelay}: connections cut, reset, delayed and stalled on command while
clients keep sending requests.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import inlineCallbacks

from lbtwist.pool import Health
from lbtwist.testing.relay import ChaosRelay
from tests.chaos.test_faults import CLIENT_TIMEOUT, FaultsTestCase
from tests.chaos.tools import BackendProcess, Outcome, fetch, load, report, summary
from tests.support import poolConfig, reactor, sleep, startBalancer


class RelayFaultTests(FaultsTestCase):
    """
    Backend b sits behind a chaos relay; backend a does not.
    """

    @inlineCallbacks
    def startRelayed(self, **settings: Any) -> Any:
        """
        Backends a and b, a relay in front of b, and a balancer over a and
        the relay.
        """
        backends = yield self.startBackends(("a",), ("b",))
        relay = ChaosRelay(reactor, "127.0.0.1", backends["b"].port)
        port = reactor.listenTCP(0, relay, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(relay.resetAll)
        settings.setdefault("retries", 3)
        settings.setdefault("timeouts", {"connect": "1s", "response": "1s"})
        data = poolConfig([("a", backends["a"].endpoint),
                           ("b", f"tcp:host=127.0.0.1:port={port.getHost().port}")],
                          "http", **settings)
        lb, lbPort = startBalancer(self, data)
        return backends, relay, lb, lbPort

    @inlineCallbacks
    def test_cutResetDelay(self) -> Any:
        """
        The relay cuts, then resets, then delays every connection to b,
        then resets those open: GETs are retried on a, so clients see no
        error and no hang.
        """
        backends, relay, lb, port = yield self.startRelayed(
            health={"interval": "5s", "fall": 100})
        loaded = load(port, 6, 5, 100000, lambda n, i: fetch(
            port, "/?bytes=2k", timeout=CLIENT_TIMEOUT))
        phases = {}
        for mode in ("cut", "reset", "delay", "pass"):
            yield sleep(1.0)
            phases[mode] = relay.accepted
            relay.setMode(mode, delay=0.1)
        yield sleep(0.5)
        relay.resetAll()
        outcomes: list[Outcome] = yield loaded
        s = summary(outcomes)
        faulted = phases["delay"] - phases["cut"]
        report(self, "relay cut/reset/delay", outcomes=s, relayed=relay.accepted,
               cutOrReset=faulted, servedByB=sum(1 for o in outcomes if o.backend == "b"))
        self.assertEqual(set(s), {"ok:200"}, s)
        self.assertGreater(s["ok:200"], 200)
        # Connections to b were tried, and failed, while it was cut off.
        self.assertGreater(faulted, 5)

    @inlineCallbacks
    def test_stall(self) -> Any:
        """
        The relay stalls b (accepts, forwards nothing): requests sent there
        get a 504 at the response timeout, never a hang; the HTTP health
        check marks b down, and from then on every request is served.
        """
        backends, relay, lb, port = yield self.startRelayed(
            health={"type": "http", "interval": "200ms", "timeout": "300ms",
                    "rise": 1, "fall": 2})
        pool = lb.pools["web"]
        loaded = load(port, 6, 4, 100000, lambda n, i: fetch(
            port, "/?bytes=1k", timeout=CLIENT_TIMEOUT))
        yield sleep(1.0)
        relay.setMode("stall")
        downAt = None
        for _ in range(60):
            if pool.get("b").health is Health.DOWN:  # type: ignore[union-attr]
                downAt = time.monotonic()
                break
            yield sleep(0.05)
        outcomes: list[Outcome] = yield loaded
        s = summary(outcomes)
        report(self, "relay stall", outcomes=s)
        self.assertIsNotNone(downAt)
        assert downAt is not None
        errors = [o for o in outcomes if (o.kind, o.status) != ("ok", 200)]
        self.assertEqual({(o.kind, o.status) for o in errors} - {("ok", 504)}, set(), s)
        self.assertTrue(all(o.elapsed < 2.0 for o in outcomes))
        self.assertEqual([o for o in errors if o.started > downAt + 0.05], [])


class ToolTests(FaultsTestCase):
    """
    The scripted backend does what its requests ask.
    """

    @inlineCallbacks
    def test_scripts(self) -> Any:
        """
        Status, size, delay and a close in mid-body are honoured, and every
        request is logged with its id.
        """
        workdir = self.mktemp()
        import os

        os.makedirs(workdir)
        b = BackendProcess(self, os.path.abspath(workdir), "t")
        yield b.start()
        from tests.support import inThread

        ok = yield inThread(fetch, b.port, "/?status=503&bytes=10k", "GET", None, 5, "one")
        slow = yield inThread(fetch, b.port, "/?delay=300ms")
        cut = yield inThread(fetch, b.port, "/?bytes=10k&close=mid-body")
        reset = yield inThread(fetch, b.port, "/?reset=before")
        self.assertEqual((ok.kind, ok.status, ok.bodyLength), ("ok", 503, 10240))
        self.assertGreater(slow.elapsed, 0.29)
        self.assertEqual(cut.kind, "truncated")
        self.assertEqual(reset.kind, "closed")
        self.assertEqual([r.id for r in b.requests()][0], "one")
        self.assertEqual(len(b.requests()), 4)
