"""
Prometheus metrics, read from the pools' own counters at scrape time.

The hot path keeps counting in plain attributes of L{lbtwist.pool.Backend}
and the listeners' factories; L{BalancerCollector} turns them into metric
families only when C{/metrics} is scraped, so serving traffic pays nothing
for metrics.  Each balancer gets its own L{CollectorRegistry}, never the
global one, so several can live in one process (and in tests).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .pool import RESPONSE_BUCKETS, Backend, BackendPool

STATES = ("ready", "drain", "maint", "up", "down", "unknown")


class Balancer(Protocol):
    """
    What the collector reads: the pools and the listeners' factories.
    """

    pools: Mapping[str, BackendPool]
    factories: Mapping[str, Any]


def _le(bound: float) -> str:
    return f"{bound:g}"


class BalancerCollector(Collector):
    """
    Collects every pool's, backend's and listener's numbers at scrape time.
    """

    def __init__(self, balancer: Balancer) -> None:
        self.balancer = balancer

    def collect(self) -> Iterator[Metric]:
        """
        The metric families, built from the counters as they are now.
        """
        b = ("pool", "backend")
        requests = CounterMetricFamily(
            "lbtwist_backend_requests",
            "Connections (TCP mode) or requests (HTTP mode) sent to the backend.", labels=b)
        failures = CounterMetricFamily(
            "lbtwist_backend_failures",
            "Failures counted against the backend, by kind.", labels=(*b, "kind"))
        bytesIn = CounterMetricFamily(
            "lbtwist_backend_bytes_in", "Bytes from clients relayed to the backend.",
            labels=b)
        bytesOut = CounterMetricFamily(
            "lbtwist_backend_bytes_out", "Bytes from the backend relayed to clients.",
            labels=b)
        active = GaugeMetricFamily(
            "lbtwist_backend_active", "Connections or requests in flight.", labels=b)
        weight = GaugeMetricFamily("lbtwist_backend_weight", "The backend's weight.",
                                   labels=b)
        state = GaugeMetricFamily(
            "lbtwist_backend_state",
            "1 for the backend's current admin state and health, 0 for the others.",
            labels=(*b, "state"))
        up = GaugeMetricFamily(
            "lbtwist_backend_up", "1 if the backend is eligible for new clients.",
            labels=b)
        probe = GaugeMetricFamily(
            "lbtwist_backend_probe_latency_seconds",
            "Duration of the last successful health probe.", labels=b)
        response = HistogramMetricFamily(
            "lbtwist_backend_response_seconds",
            "Backend response time (TCP mode: connect time).", labels=b)
        noBackend = CounterMetricFamily(
            "lbtwist_pool_no_backend",
            "Clients that found no eligible backend in the pool.", labels=("pool",))
        size = GaugeMetricFamily("lbtwist_pool_backends", "Backends in the pool.",
                                 labels=("pool",))
        queueLength = GaugeMetricFamily(
            "lbtwist_pool_queue_length",
            "Clients waiting for a backend under its maxconn.", labels=("pool",))
        queued = CounterMetricFamily(
            "lbtwist_pool_queued", "Clients that had to wait in the queue.", labels=("pool",))
        queueFull = CounterMetricFamily(
            "lbtwist_pool_queue_full", "Clients refused because the queue was full.",
            labels=("pool",))
        for pool in self.balancer.pools.values():
            noBackend.add_metric((pool.name,), pool.noBackend)
            size.add_metric((pool.name,), len(pool))
            queueLength.add_metric((pool.name,), pool.queueLength)
            queued.add_metric((pool.name,), pool.queued)
            queueFull.add_metric((pool.name,), pool.queueFull)
            for backend in pool:
                self._backend(pool.name, backend, requests, failures, bytesIn, bytesOut,
                              active, weight, state, up, probe, response)
        accepted = CounterMetricFamily(
            "lbtwist_listener_accepted", "Client connections accepted.",
            labels=("listener",))
        clients = GaugeMetricFamily(
            "lbtwist_listener_active", "Client connections open.", labels=("listener",))
        responses = CounterMetricFamily(
            "lbtwist_listener_responses", "HTTP responses sent to clients, by status class.",
            labels=("listener", "status"))
        refused = CounterMetricFamily(
            "lbtwist_listener_refused",
            "HTTP requests refused as malformed or too large.", labels=("listener",))
        for name, factory in self.balancer.factories.items():
            accepted.add_metric((name,), getattr(factory, "accepted", 0))
            clients.add_metric((name,), getattr(factory, "activeClients", 0))
            statuses = getattr(factory, "statuses", None)
            if statuses is not None:
                for cls, count in sorted(statuses.items()):
                    responses.add_metric((name, cls), count)
                refused.add_metric((name,), getattr(factory, "refused", 0))
        yield from (requests, failures, bytesIn, bytesOut, active, weight, state, up,
                    probe, response, noBackend, size, queueLength, queued, queueFull,
                    accepted, clients, responses, refused)

    def _backend(self, pool: str, backend: Backend, requests: Any, failures: Any,
                 bytesIn: Any, bytesOut: Any, active: Any, weight: Any, state: Any,
                 up: Any, probe: Any, response: Any) -> None:
        labels = (pool, backend.name)
        requests.add_metric(labels, backend.total)
        for kind, count in sorted(backend.failures.items()):
            failures.add_metric((*labels, kind), count)
        bytesIn.add_metric(labels, backend.bytesIn)
        bytesOut.add_metric(labels, backend.bytesOut)
        active.add_metric(labels, backend.active)
        weight.add_metric(labels, backend.weight)
        current = {backend.admin.value, backend.health.value}
        for s in STATES:
            state.add_metric((*labels, s), 1.0 if s in current else 0.0)
        up.add_metric(labels, 1.0 if backend.eligible else 0.0)
        if backend.probeLatency is not None:
            probe.add_metric(labels, backend.probeLatency)
        cumulative = 0
        buckets = []
        for bound, count in zip(RESPONSE_BUCKETS, backend.responseBuckets):
            cumulative += count
            buckets.append((_le(bound), cumulative))
        cumulative += backend.responseBuckets[-1]
        buckets.append(("+Inf", cumulative))
        response.add_metric(labels, buckets, backend.responseSum)


def balancerRegistry(balancer: Balancer) -> CollectorRegistry:
    """
    A registry of its own holding a L{BalancerCollector} for C{balancer}.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BalancerCollector(balancer))
    return registry


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """
    The registry's metrics in the Prometheus text format, and its content type.
    """
    return generate_latest(registry), CONTENT_TYPE_LATEST

