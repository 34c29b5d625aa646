"""
Tests for L{lbtwist.metrics}: the collector reads the pools' counters at
scrape time, in its own registry, and C{/metrics} serves them.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectError, ConnectionRefusedError, TimeoutError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

import lbtwist
from lbtwist.config import parseConfig
from lbtwist.connect import failureKind
from lbtwist.metrics import (
    FAILURE_KINDS,
    NO_COUNTERS,
    CounterHistory,
    Counters,
    Sample,
    balancerRegistry,
    exposition,
    quantile,
    recentView,
    responsePercentiles,
)
from lbtwist.pool import Admin, BackendPool
from lbtwist.routing import RouteCounters
from tests.support import firstLine, inThread, poolConfig
from tests.test_admin import AdminHarness, call
from tests.test_pool import ejectingPool


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """
    Every sample of an exposition, by name and sorted labels.
    """
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


class FakeBalancer:
    """
    Just the pools and listener factories the collector reads.
    """

    def __init__(self) -> None:
        config = parseConfig(poolConfig([("a", "tcp:host=h:port=1"),
                                         ("b", "tcp:host=h:port=2")]))
        self.pools = {"web": BackendPool(config.pool("web"))}

        class Factory:
            accepted = 7
            activeClients = 2

        self.factories: dict[str, Any] = {"main": Factory()}


class CollectorTests(SynchronousTestCase):
    """
    The metric families built from the counters.
    """

    def test_counters(self) -> None:
        """
        Requests, failures by kind, bytes, active, state, probe latency,
        listener and pool numbers all come from the live counters.
        """
        lb = FakeBalancer()
        pool = lb.pools["web"]
        a = pool.get("a")
        assert a is not None
        pool.opened(a)
        pool.opened(a)
        pool.closed(a)
        pool.failed(a, "refused", "x")
        pool.failed(a, "timeout", "x")
        a.bytesIn, a.bytesOut, a.probeLatency = 10, 20, 0.004
        pool.setAdmin("b", Admin.MAINT)
        pool.noBackend = 3
        registry = balancerRegistry(lb)
        s = samples(exposition(registry)[0].decode())
        A = (("backend", "a"), ("pool", "web"))
        self.assertEqual(s[("lbtwist_backend_requests_total", A)], 2)
        self.assertEqual(s[("lbtwist_backend_active", A)], 1)
        self.assertEqual(s[("lbtwist_backend_failures_total",
                            (("backend", "a"), ("kind", "refused"), ("pool", "web")))], 1)
        self.assertEqual(s[("lbtwist_backend_bytes_in_total", A)], 10)
        self.assertEqual(s[("lbtwist_backend_bytes_out_total", A)], 20)
        self.assertEqual(s[("lbtwist_backend_probe_latency_seconds", A)], 0.004)
        B = (("backend", "b"), ("pool", "web"))
        self.assertEqual(s[("lbtwist_backend_state",
                            (("backend", "b"), ("pool", "web"), ("state", "maint")))], 1)
        self.assertEqual(s[("lbtwist_backend_state",
                            (("backend", "b"), ("pool", "web"), ("state", "ready")))], 0)
        self.assertEqual(s[("lbtwist_backend_up", B)], 0)
        self.assertEqual(s[("lbtwist_pool_no_backend_total", (("pool", "web"),))], 3)
        self.assertEqual(s[("lbtwist_listener_accepted_total", (("listener", "main"),))], 7)
        self.assertEqual(s[("lbtwist_listener_active", (("listener", "main"),))], 2)
        # Read at scrape time: a new count shows at the next scrape.
        pool.opened(a)
        s = samples(exposition(registry)[0].decode())
        self.assertEqual(s[("lbtwist_backend_requests_total", A)], 3)

    def test_queueAndResponses(self) -> None:
        """
        The pool's queue and an HTTP listener's responses by status class
        are exported too.
        """
        lb = FakeBalancer()
        pool = lb.pools["web"]
        pool.enqueue(lambda: None)
        pool.queueFull = 4

        class HTTPFactory:
            accepted = 1
            activeClients = 0
            statuses = {"2xx": 5, "5xx": 2}
            refused = 3

        lb.factories["front"] = HTTPFactory()
        s = samples(exposition(balancerRegistry(lb))[0].decode())
        P = (("pool", "web"),)
        self.assertEqual(s[("lbtwist_pool_queue_length", P)], 1)
        self.assertEqual(s[("lbtwist_pool_queued_total", P)], 1)
        self.assertEqual(s[("lbtwist_pool_queue_full_total", P)], 4)
        self.assertEqual(s[("lbtwist_listener_responses_total",
                            (("listener", "front"), ("status", "5xx")))], 2)
        self.assertEqual(s[("lbtwist_listener_refused_total", (("listener", "front"),))], 3)
        self.assertNotIn(("lbtwist_listener_refused_total", (("listener", "main"),)), s)

    def test_histogram(self) -> None:
        """
        Setting a backend's response time fills the histogram's buckets.
        """
        lb = FakeBalancer()
        a = lb.pools["web"].get("a")
        assert a is not None
        for t in (0.0005, 0.003, 0.003, 20.0):
            a.responseTime = t
        self.assertEqual(a.responseTime, 20.0)
        s = samples(exposition(balancerRegistry(lb))[0].decode())

        def bucket(le: str) -> float:
            return s[("lbtwist_backend_response_seconds_bucket",
                      (("backend", "a"), ("le", le), ("pool", "web")))]

        self.assertEqual(bucket("0.001"), 1)
        self.assertEqual(bucket("0.005"), 3)
        self.assertEqual(bucket("10"), 3)
        self.assertEqual(bucket("+Inf"), 4)
        A = (("backend", "a"), ("pool", "web"))
        self.assertEqual(s[("lbtwist_backend_response_seconds_count", A)], 4)
        self.assertAlmostEqual(s[("lbtwist_backend_response_seconds_sum", A)], 20.0065)

    def test_failuresStartAtZero(self) -> None:
        """
        Every backend has a failures series at zero for every known kind
        before any failure, so C{increase()} sees the first one; a kind
        outside the list still shows when it is counted.
        """
        lb = FakeBalancer()
        pool = lb.pools["web"]
        a = pool.get("a")
        assert a is not None
        pool.failed(a, "refused", "x")
        a.failures["novel"] = 2
        s = samples(exposition(balancerRegistry(lb))[0].decode())

        def failures(backend: str, kind: str) -> float:
            return s[("lbtwist_backend_failures_total",
                      (("backend", backend), ("kind", kind), ("pool", "web")))]

        for kind in FAILURE_KINDS:
            self.assertEqual(failures("b", kind), 0, kind)
        self.assertEqual(failures("a", "refused"), 1)
        self.assertEqual(failures("a", "timeout"), 0)
        self.assertEqual(failures("a", "novel"), 2)

    def test_failureKindsComplete(self) -> None:
        """
        The kinds listed are every kind the code counts: the connect
        classifier's and every literal kind given to the pool.
        """
        for reason in (TimeoutError(), ConnectionRefusedError(), ConnectError()):
            self.assertIn(failureKind(Failure(reason)), FAILURE_KINDS)
        counted = re.compile(
            r"\.(?:failed|trafficFailed|markDown|backendFailed)\(\s*[\w.]+,\s*\"(\w+)\"")
        source = Path(lbtwist.__file__).parent
        used = {kind for path in source.rglob("*.py")
                for kind in counted.findall(path.read_text())}
        self.assertTrue({"probe", "response", "errors", "timeout"} <= used, used)
        self.assertEqual(used - set(FAILURE_KINDS), set())

    def test_queueTimeouts(self) -> None:
        """
        A client that waited the queue timeout leaves the queue and is
        counted in C{lbtwist_pool_queue_timeouts_total}.
        """
        lb = FakeBalancer()
        pool = lb.pools["web"]

        def waiter() -> None:
            raise AssertionError("a timed-out client is not woken")

        pool.enqueue(waiter)
        pool.queueTimedOut(waiter)
        self.assertEqual(pool.queueLength, 0)
        s = samples(exposition(balancerRegistry(lb))[0].decode())
        self.assertEqual(s[("lbtwist_pool_queue_timeouts_total", (("pool", "web"),))], 1)

    def test_role(self) -> None:
        """
        Every backend has a role series saying whether it is a backup and
        whether DNS discovery found it.
        """
        lb = FakeBalancer()
        pool = lb.pools["web"]
        [first, *_] = list(pool)
        pool.configure(first.name, backup=True)
        s = samples(exposition(balancerRegistry(lb))[0].decode())
        roles = {labels: value for (name, labels), value in s.items()
                 if name == "lbtwist_backend_role"}
        self.assertEqual(
            roles[(("backend", first.name), ("backup", "true"), ("discovered", "false"),
                   ("pool", "web"))], 1)

    def test_retries(self) -> None:
        """
        Retries in flight and those the budget refused are exported per pool.
        """
        lb = FakeBalancer()
        pool = lb.pools["web"]
        pool.retriesActive = 2
        pool.retriesRefused = 5
        s = samples(exposition(balancerRegistry(lb))[0].decode())
        self.assertEqual(s[("lbtwist_pool_retries_active", (("pool", "web"),))], 2)
        self.assertEqual(s[("lbtwist_pool_retries_refused_total", (("pool", "web"),))], 5)

    def test_ownRegistry(self) -> None:
        """
        The global registry is left alone.
        """
        before = set(REGISTRY._names_to_collectors)
        balancerRegistry(FakeBalancer())
        self.assertEqual(set(REGISTRY._names_to_collectors), before)


def buckets(**counts: int) -> list[int]:
    """
    A histogram with C{counts} in the buckets named by their upper bound
    (C{b0_001=3} for C{le="0.001"}, C{inf=1} for +Inf).
    """
    from lbtwist.pool import RESPONSE_BUCKETS

    names = [f"b{bound:g}".replace(".", "_") for bound in RESPONSE_BUCKETS] + ["inf"]
    unknown = set(counts) - set(names)
    assert not unknown, unknown
    return [counts.get(n, 0) for n in names]


class QuantileTests(SynchronousTestCase):
    """
    Percentiles estimated from the response-time histogram.
    """

    def test_interpolated(self) -> None:
        """
        A quantile falls linearly within its bucket, as Prometheus'
        C{histogram_quantile} has it.
        """
        h = buckets(b0_001=5, b0_01=5)
        # Half of them are at most 1 ms; the 90th is 4/5 of the way through
        # (0.005, 0.01].
        self.assertAlmostEqual(quantile(h, 0.5), 0.001)
        self.assertAlmostEqual(quantile(h, 0.9), 0.009)
        self.assertAlmostEqual(quantile(h, 0.1), 0.0002)
        self.assertAlmostEqual(quantile(buckets(b0_25=4), 0.5), 0.175)

    def test_edges(self) -> None:
        """
        No responses: no percentile.  Beyond the last bound: the last bound.
        """
        self.assertIsNone(quantile(buckets(), 0.5))
        self.assertEqual(quantile(buckets(b0_001=1, inf=99), 0.99), 10.0)
        view = responsePercentiles(buckets(b0_001=99, b10=1))
        self.assertEqual(view["count"], 100)
        self.assertAlmostEqual(view["p50"], 0.0005050505)  # type: ignore[arg-type]
        self.assertAlmostEqual(view["p99"], 0.001)  # type: ignore[arg-type]

    def test_fromBackend(self) -> None:
        """
        The backend's own histogram gives its percentiles.
        """
        a = FakeBalancer().pools["web"].get("a")
        assert a is not None
        for t in (0.002, 0.002, 0.002, 0.3):
            a.responseTime = t
        view = responsePercentiles(a.responseBuckets)
        self.assertEqual(view["count"], 4)
        self.assertTrue(0.001 < view["p50"] <= 0.0025, view)  # type: ignore[operator]
        self.assertTrue(0.25 < view["p99"] <= 0.5, view)  # type: ignore[operator]


class RecentTests(SynchronousTestCase):
    """
    Rates and percentiles of the last window, from samples of the counters.
    """

    def counters(self, requests: int, errors: int, **kw: Any) -> Counters:
        """
        Counters with C{requests} and C{errors} and other fields in C{kw}.
        """
        return Counters(requests=requests, errors=errors, noBackend=kw.get("noBackend", 0),
                        queueFull=0, queueTimeouts=kw.get("queueTimeouts", 0),
                        responses=kw.get("responses", {}),
                        buckets=tuple(kw.get("buckets", NO_COUNTERS.buckets)))

    def test_rates(self) -> None:
        """
        Each counter's increase divided by the seconds between the samples;
        the percentiles of the responses in between only; a counter that
        went down gives zero.
        """
        then = self.counters(10, 1, responses={"2xx": 9, "5xx": 1},
                             buckets=buckets(b10=50))
        now = self.counters(30, 5, noBackend=2, responses={"2xx": 25, "5xx": 5},
                            buckets=buckets(b10=50, b0_001=20))
        view = recentView(now, then, 4.0)
        self.assertEqual(view["requestRate"], 5.0)
        self.assertEqual(view["errorRate"], 1.0)
        self.assertEqual(view["noBackendRate"], 0.5)
        self.assertEqual(view["responseRates"], {"2xx": 4.0, "5xx": 1.0})
        self.assertEqual(view["responsePercentiles"]["count"], 20)
        self.assertLessEqual(view["responsePercentiles"]["p99"], 0.001)
        self.assertEqual(recentView(then, now, 1.0)["requestRate"], 0.0)

    def test_sum(self) -> None:
        """
        Counters add up field by field, status classes merged.
        """
        total = (NO_COUNTERS + self.counters(1, 2, responses={"2xx": 1})
                 + self.counters(3, 4, responses={"2xx": 2, "4xx": 1},
                                 buckets=buckets(inf=2)))
        self.assertEqual((total.requests, total.errors), (4, 6))
        self.assertEqual(total.responses, {"2xx": 3, "4xx": 1})
        self.assertEqual(total.buckets[-1], 2)

    def test_baseline(self) -> None:
        """
        The baseline is the oldest sample within the window, and never one
        taken now; samples older than the window are not used.
        """
        history = CounterHistory(window=10.0)
        self.assertEqual(history.interval, 1.0)
        self.assertIsNone(history.baseline(5.0))
        for t in range(0, 30):
            history.add(Sample(float(t), {}, NO_COUNTERS))
        base = history.baseline(29.5)
        assert base is not None
        self.assertEqual(base.when, 20.0)
        history = CounterHistory(window=10.0)
        history.add(Sample(3.0, {}, NO_COUNTERS))
        self.assertIsNone(history.baseline(3.0))
        self.assertIsNone(history.baseline(13.5))


class EndpointTests(TestCase):
    """
    C{GET /metrics} over a real socket.
    """

    @inlineCallbacks
    def test_scrape(self) -> Any:
        """
        Traffic through the balancer shows in the scraped metrics.
        """
        h = AdminHarness(self)
        for _ in range(4):
            yield inThread(firstLine, h.port)
        status, headers, body = yield inThread(call, h.admin, "GET", "/metrics")
        self.assertEqual(status, 200)
        self.assertIn("text/plain", headers["content-type"])
        s = samples(body.decode())
        total = sum(v for (name, _), v in s.items()
                    if name == "lbtwist_backend_requests_total")
        self.assertEqual(total, 4)
        self.assertEqual(
            s[("lbtwist_listener_accepted_total", (("listener", "listener0"),))], 4)


class EjectionMetricTests(SynchronousTestCase):
    """
    Outlier ejections show as a counter and a gauge per backend.
    """

    def test_ejections(self) -> None:
        """
        C{lbtwist_backend_ejections_total} counts ejections and
        C{lbtwist_backend_ejected} is 1 while one lasts; a scrape after it
        ends shows the backend back (and up) even with no traffic since.
        """
        clock = Clock()
        lb = FakeBalancer()
        lb.pools["web"] = ejectingPool(2, clock, baseEjection=10.0)
        pool = lb.pools["web"]
        a = pool.get("a")
        assert a is not None
        registry = balancerRegistry(lb)
        A = (("backend", "a"), ("pool", "web"))
        s = samples(exposition(registry)[0].decode())
        self.assertEqual((s[("lbtwist_backend_ejections_total", A)],
                          s[("lbtwist_backend_ejected", A)]), (0, 0))
        for _ in range(3):
            pool.exchangeError(a, "status 502", 502)
        s = samples(exposition(registry)[0].decode())
        self.assertEqual((s[("lbtwist_backend_ejections_total", A)],
                          s[("lbtwist_backend_ejected", A)],
                          s[("lbtwist_backend_up", A)]), (1, 1, 0))
        clock.advance(10.0)
        s = samples(exposition(registry)[0].decode())
        self.assertEqual((s[("lbtwist_backend_ejections_total", A)],
                          s[("lbtwist_backend_ejected", A)],
                          s[("lbtwist_backend_up", A)]), (1, 0, 1))


class RouteMetricTests(SynchronousTestCase):
    """
    The routes' metrics, from the listeners' L{RouteCounters}.
    """

    def test_routes(self) -> None:
        """
        Requests by listener, route and status class, rate-limited requests
        and the duration histogram (cumulative, with its sum) are exposed; a
        listener without routes adds nothing.
        """
        balancer = FakeBalancer()
        api, default = RouteCounters("api"), RouteCounters("default")
        api.count("2xx", 0.003)
        api.count("2xx", 0.2)
        api.count("5xx", 20.0)
        api.rateLimited = 4

        class Routed:
            accepted = 0
            activeClients = 0

            def routeCounters(self) -> list[RouteCounters]:
                return [api, default]

        balancer.factories["front"] = Routed()
        s = samples(exposition(balancerRegistry(balancer))[0].decode())
        route = (("listener", "front"), ("route", "api"))
        self.assertEqual(s[("lbtwist_route_requests_total", (*route, ("status", "2xx")))], 2)
        self.assertEqual(s[("lbtwist_route_requests_total", (*route, ("status", "5xx")))], 1)
        self.assertEqual(s[("lbtwist_route_rate_limited_total", route)], 4)
        self.assertEqual(
            s[("lbtwist_route_rate_limited_total", (("listener", "front"),
                                                     ("route", "default")))], 0)
        self.assertEqual(s[("lbtwist_route_duration_seconds_bucket",
                            (("le", "0.005"), *route))], 1)
        self.assertEqual(s[("lbtwist_route_duration_seconds_bucket",
                            (("le", "0.25"), *route))], 2)
        self.assertEqual(s[("lbtwist_route_duration_seconds_bucket",
                            (("le", "10"), *route))], 2)
        self.assertEqual(s[("lbtwist_route_duration_seconds_bucket",
                            (("le", "+Inf"), *route))], 3)
        self.assertEqual(s[("lbtwist_route_duration_seconds_count", route)], 3)
        self.assertAlmostEqual(s[("lbtwist_route_duration_seconds_sum", route)], 20.203)
        self.assertFalse([k for k in s if k[0].startswith("lbtwist_route")
                          and ("listener", "main") in k[1]])
