"""
Tests for L{lbtwist.metrics}: the collector reads the pools' counters at
scrape time, in its own registry, and C{/metrics} serves them.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.config import parseConfig
from lbtwist.metrics import balancerRegistry, exposition
from lbtwist.pool import Admin, BackendPool
from tests.support import firstLine, inThread, poolConfig
from tests.test_admin import AdminHarness, call


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

    def test_ownRegistry(self) -> None:
        """
        The global registry is left alone.
        """
        before = set(REGISTRY._names_to_collectors)
        balancerRegistry(FakeBalancer())
        self.assertEqual(set(REGISTRY._names_to_collectors), before)


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
