"""
Prometheus metrics, read from the pools' own counters at scrape time.

The hot path keeps counting in plain attributes of L{lbtwist.pool.Backend}
and the listeners' factories; L{BalancerCollector} turns them into metric
families only when C{/metrics} is scraped, so serving traffic pays nothing
for metrics.  Each balancer gets its own L{CollectorRegistry}, never the
global one, so several can live in one process (and in tests).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import attrs
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

# Every kind of failure the balancer counts against a backend (the keys of
# Backend.failures): connect attempts that were refused, timed out or failed
# otherwise (connect.failureKind), HTTP responses that timed out, were
# malformed or cut short, passive health's "errors in a row", and failed
# probes.  Each gets a series at zero from the start, so that Prometheus'
# increase() sees the first failure.
FAILURE_KINDS = ("refused", "timeout", "connect", "response", "errors", "probe")

# The response-time quantiles the admin API shows.
QUANTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))


class Balancer(Protocol):
    """
    What the collector reads: the pools and the listeners' factories.
    """

    pools: Mapping[str, BackendPool]
    factories: Mapping[str, Any]


def _le(bound: float) -> str:
    return f"{bound:g}"


def quantile(buckets: Sequence[int], q: float) -> float | None:
    """
    The C{q} quantile (0-1) of a response-time histogram, as Prometheus'
    C{histogram_quantile} estimates it: linear within the bucket that holds
    it; the highest finite bound if it falls in the +Inf bucket.

    @param buckets: the count in each bucket of L{RESPONSE_BUCKETS} (not
        cumulative), then the count above the last bound.
    @return: seconds, or L{None} for an empty histogram.
    """
    total = sum(buckets)
    if not total:
        return None
    rank = q * total
    below = 0
    lower = 0.0
    for upper, count in zip(RESPONSE_BUCKETS, buckets):
        if count and below + count >= rank:
            return lower + (upper - lower) * (rank - below) / count
        below += count
        lower = upper
    return RESPONSE_BUCKETS[-1]


def responsePercentiles(buckets: Sequence[int]) -> dict[str, float | int | None]:
    """
    The p50, p90 and p99 response times (seconds, or L{None}) of a
    histogram, and its C{count}.
    """
    view: dict[str, float | int | None] = {
        name: quantile(buckets, q) for name, q in QUANTILES}
    view["count"] = sum(buckets)
    return view


def mergedBuckets(backends: Iterable[Backend]) -> list[int]:
    """
    The response-time histograms of C{backends} added up.
    """
    merged = [0] * (len(RESPONSE_BUCKETS) + 1)
    for backend in backends:
        for i, count in enumerate(backend.responseBuckets):
            merged[i] += count
    return merged


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
        ejections = CounterMetricFamily(
            "lbtwist_backend_ejections",
            "Times the backend was ejected as an outlier.", labels=b)
        ejected = GaugeMetricFamily(
            "lbtwist_backend_ejected", "1 while the backend is ejected as an outlier.",
            labels=b)
        role = GaugeMetricFamily(
            "lbtwist_backend_role",
            "1 for the backend's role: primary or backup, and whether DNS discovery found it.",
            labels=("pool", "backend", "backup", "discovered"))
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
        queueTimeouts = CounterMetricFamily(
            "lbtwist_pool_queue_timeouts",
            "Clients refused after waiting the queue timeout.", labels=("pool",))
        retriesActive = GaugeMetricFamily(
            "lbtwist_pool_retries_active",
            "Retries in flight (what the retry budget caps).", labels=("pool",))
        retriesRefused = CounterMetricFamily(
            "lbtwist_pool_retries_refused",
            "Retries the retry budget did not allow.", labels=("pool",))
        # A pool of protocol h2's backends' connections.
        h2: tuple[GaugeMetricFamily | CounterMetricFamily, ...] = (
            GaugeMetricFamily(
                "lbtwist_backend_http2_connections",
                "HTTP/2 connections open to the backend (a pool of protocol h2).", labels=b),
            GaugeMetricFamily(
                "lbtwist_backend_http2_streams",
                "HTTP/2 streams (requests) open to the backend, those waiting for a "
                "connection being dialled included.", labels=b),
            CounterMetricFamily(
                "lbtwist_backend_http2_goaways", "GOAWAY frames the backend sent.", labels=b),
            CounterMetricFamily(
                "lbtwist_backend_http2_connections_lost",
                "HTTP/2 connections to the backend that closed with streams open.", labels=b),
        )
        for pool in self.balancer.pools.values():
            retriesActive.add_metric((pool.name,), pool.retriesActive)
            retriesRefused.add_metric((pool.name,), pool.retriesRefused)
            noBackend.add_metric((pool.name,), pool.noBackend)
            size.add_metric((pool.name,), len(pool))
            queueLength.add_metric((pool.name,), pool.queueLength)
            queued.add_metric((pool.name,), pool.queued)
            queueFull.add_metric((pool.name,), pool.queueFull)
            queueTimeouts.add_metric((pool.name,), pool.queueTimeouts)
            # A finished ejection is over even if no client came since.
            pool.readmit()
            for backend in pool:
                self._backend(pool.name, backend, requests, failures, bytesIn, bytesOut,
                              active, weight, state, up, probe, response)
                ejections.add_metric((pool.name, backend.name), backend.ejections)
                ejected.add_metric((pool.name, backend.name), 1.0 if backend.ejected else 0.0)
                role.add_metric((pool.name, backend.name, str(backend.backup).lower(),
                                 str(backend.config.discovered).lower()), 1.0)
                if pool.config.protocol == "h2":
                    counters = backend.http2
                    values = (counters.connections, counters.streams, counters.goaways,
                              counters.lost)
                    for family, value in zip(h2, values):
                        family.add_metric((pool.name, backend.name), value)
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
        protocols = CounterMetricFamily(
            "lbtwist_listener_protocol_responses",
            "HTTP responses sent to clients, by the protocol the client spoke.",
            labels=("listener", "protocol"))
        h2Connections = CounterMetricFamily(
            "lbtwist_listener_http2_connections", "HTTP/2 client connections accepted.",
            labels=("listener",))
        h2Streams = CounterMetricFamily(
            "lbtwist_listener_http2_streams", "HTTP/2 streams (requests) accepted.",
            labels=("listener",))
        h2Refused = CounterMetricFamily(
            "lbtwist_listener_http2_refused_streams",
            "HTTP/2 streams refused (over max-concurrent-streams, or after GOAWAY).",
            labels=("listener",))
        h2Calmed = CounterMetricFamily(
            "lbtwist_listener_http2_abusive_clients",
            "HTTP/2 clients closed with ENHANCE_YOUR_CALM (rapid reset, floods).",
            labels=("listener",))
        for name, factory in self.balancer.factories.items():
            accepted.add_metric((name,), getattr(factory, "accepted", 0))
            byProtocol = getattr(factory, "responsesByProtocol", None)
            if byProtocol is not None:
                for protocol, count in sorted(byProtocol().items()):
                    protocols.add_metric((name, protocol), count)
            if getattr(factory, "http2", None) is not None:
                h2Connections.add_metric((name,), factory.h2Connections)
                h2Streams.add_metric((name,), factory.h2Streams)
                h2Refused.add_metric((name,), factory.h2Refused)
                h2Calmed.add_metric((name,), factory.h2Calmed)
            clients.add_metric((name,), getattr(factory, "activeClients", 0))
            statuses = getattr(factory, "statuses", None)
            if statuses is not None:
                for cls, count in sorted(statuses.items()):
                    responses.add_metric((name, cls), count)
                refused.add_metric((name,), getattr(factory, "refused", 0))
        yield from (requests, failures, bytesIn, bytesOut, active, weight, state, up,
                    probe, response, ejections, ejected, role, noBackend, size, queueLength, queued, queueFull,
                    queueTimeouts, retriesActive, retriesRefused, *h2, accepted, clients, responses,
                    refused, protocols, h2Connections, h2Streams, h2Refused, h2Calmed)
        yield from self._routes()

    def _routes(self) -> Iterator[Metric]:
        """
        What each listener's routes did: requests by status class (TCP:
        connections, as C{tcp}), those refused by a rate limit, and the
        duration histogram.
        """
        r = ("listener", "route")
        requests = CounterMetricFamily(
            "lbtwist_route_requests",
            "Requests answered through the route, by status class (TCP mode: connections "
            "closed, status tcp).", labels=(*r, "status"))
        limited = CounterMetricFamily(
            "lbtwist_route_rate_limited", "Requests the route's rate limit refused (429).",
            labels=r)
        duration = HistogramMetricFamily(
            "lbtwist_route_duration_seconds",
            "Duration of the route's requests (TCP mode: connections).", labels=r)
        for name, factory in self.balancer.factories.items():
            routeCounters = getattr(factory, "routeCounters", None)
            if routeCounters is None:
                continue
            for counters in routeCounters():
                labels = (name, counters.name)
                for cls, count in sorted(counters.responses.items()):
                    requests.add_metric((*labels, cls), count)
                limited.add_metric(labels, counters.rateLimited)
                duration.add_metric(
                    labels, [("+Inf" if bound == float("inf") else _le(bound), count)
                             for bound, count in counters.cumulative()],
                    counters.durationSum)
        yield from (requests, limited, duration)

    def _backend(self, pool: str, backend: Backend, requests: Any, failures: Any,
                 bytesIn: Any, bytesOut: Any, active: Any, weight: Any, state: Any,
                 up: Any, probe: Any, response: Any) -> None:
        labels = (pool, backend.name)
        requests.add_metric(labels, backend.total)
        counts = backend.failures
        for kind in sorted(set(FAILURE_KINDS).union(counts)):
            failures.add_metric((*labels, kind), counts.get(kind, 0))
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


class ClusterCollector(Collector):
    """
    The cluster store's state, read at scrape time: whether this balancer
    is connected to etcd, and the registry revision it has applied.
    """

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[Metric]:
        connected = GaugeMetricFamily(
            "lbtwist_cluster_connected", "1 while the cluster store (etcd) is watched, else 0.")
        connected.add_metric([], 1.0 if self.cluster.connected else 0.0)
        revision = GaugeMetricFamily(
            "lbtwist_cluster_revision", "The cluster registry revision this balancer applied.")
        revision.add_metric([], float(self.cluster.registry.revision))
        yield connected
        yield revision


def exposition(registry: CollectorRegistry) -> tuple[bytes, str]:
    """
    The registry's metrics in the Prometheus text format, and its content type.
    """
    return generate_latest(registry), CONTENT_TYPE_LATEST



# -- recent rates -------------------------------------------------------------


@attrs.frozen
class Counters:
    """
    A pool's counters (or every pool's, added up) at one moment.

    @ivar requests: connections or requests sent to its backends.
    @ivar errors: what its clients saw fail (see L{lbtwist.admin.poolView}).
    @ivar responses: HTTP responses sent, by status class.
    @ivar buckets: its backends' response-time histograms added up.
    """

    requests: int
    errors: int
    noBackend: int
    queueFull: int
    queueTimeouts: int
    responses: Mapping[str, int]
    buckets: tuple[int, ...]

    def __add__(self, other: Counters) -> Counters:
        responses = dict(self.responses)
        for cls, count in other.responses.items():
            responses[cls] = responses.get(cls, 0) + count
        return Counters(
            self.requests + other.requests, self.errors + other.errors,
            self.noBackend + other.noBackend, self.queueFull + other.queueFull,
            self.queueTimeouts + other.queueTimeouts, responses,
            tuple(a + b for a, b in zip(self.buckets, other.buckets)),
        )


NO_COUNTERS = Counters(0, 0, 0, 0, 0, {}, (0,) * (len(RESPONSE_BUCKETS) + 1))


def recentView(now: Counters, then: Counters, seconds: float) -> dict[str, Any]:
    """
    What happened between two samples of the counters: rates per second and
    the response-time percentiles of that span alone.  A counter that went
    down (a backend was removed) counts as zero.
    """

    def rate(new: int, old: int) -> float:
        return max(0, new - old) / seconds

    return {
        "seconds": seconds,
        "requestRate": rate(now.requests, then.requests),
        "errorRate": rate(now.errors, then.errors),
        "noBackendRate": rate(now.noBackend, then.noBackend),
        "queueFullRate": rate(now.queueFull, then.queueFull),
        "queueTimeoutRate": rate(now.queueTimeouts, then.queueTimeouts),
        "responseRates": {
            cls: rate(count, then.responses.get(cls, 0))
            for cls, count in sorted(now.responses.items())
        },
        "responsePercentiles": responsePercentiles(
            [max(0, a - b) for a, b in zip(now.buckets, then.buckets)]),
    }


@attrs.frozen
class Sample:
    """
    Every pool's counters, and their total, at time C{when}.
    """

    when: float
    pools: Mapping[str, Counters]
    total: Counters


class CounterHistory:
    """
    Samples of the counters taken every C{window / 10} seconds (by the admin
    service, off the proxy's path), kept for one C{window}: the base the
    admin API's recent rates and percentiles are measured from.
    """

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self.interval = window / 10
        self._samples: deque[Sample] = deque(maxlen=12)

    def add(self, sample: Sample) -> None:
        """
        Keep C{sample}; the oldest goes when there are more than a window's.
        """
        self._samples.append(sample)

    def baseline(self, now: float) -> Sample | None:
        """
        The oldest sample no older than the window (and older than C{now}),
        if any.
        """
        for sample in self._samples:
            if now - self.window <= sample.when < now:
                return sample
        return None
