"""
The admin API's JSON views of pools, backends and their counters: plain
values in, dictionaries out.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import attrs

from ..endpoints import parseEndpoint
from ..metrics import (
    Counters,
    mergedBuckets,
    responsePercentiles,
)
from ..pool import Backend, BackendPool, BackendStats


def backendURL(endpoint: str) -> str:
    """
    The C{http://host:port} form of a backend's endpoint string, as the Go
    design shows it; other endpoints are shown as they are.
    """
    try:
        return parseEndpoint(endpoint, False).url
    except ValueError:
        return endpoint


def backendView(pool: BackendPool, backend: Backend) -> dict[str, Any]:
    """
    A backend as the API shows it: its stats (among them C{backup}, and
    C{effectiveWeight}, the weight slow start gives it now, or null when it
    is not ramping up), URL and response percentiles.
    """
    stats = next(s for s in pool.stats() if s.name == backend.name)
    return _statsView(stats, backend)


def _statsView(stats: BackendStats, backend: Backend | None) -> dict[str, Any]:
    view = attrs.asdict(stats)
    view["url"] = backendURL(stats.endpoint)
    # Outlier ejection: whether it is out now, until when (the balancer
    # clock's seconds, None when not out) and how many times it was.
    ejected = backend is not None and backend.ejected
    view["ejected"] = ejected
    view["ejectedUntil"] = backend.ejectedUntil if ejected and backend is not None else None
    view["ejections"] = backend.ejections if backend is not None else 0
    view["responsePercentiles"] = responsePercentiles(
        backend.responseBuckets if backend is not None else ())
    return view


ERROR_CLASSES = ("4xx", "5xx")


def poolCounters(pool: BackendPool, responses: Mapping[str, int] | None) -> Counters:
    """
    A pool's counters now.

    @param responses: the responses its HTTP listeners sent, by status
        class, or L{None} if no HTTP listener serves it.  Its C{errors} are
        the 4xx and 5xx answers then (a client refused for lack of a backend
        or of a queue slot is answered 503); else the clients refused.
    """
    refusals = pool.noBackend + pool.queueFull + pool.queueTimeouts
    return Counters(
        requests=sum(b.total for b in pool),
        errors=(refusals if responses is None
                else sum(responses.get(c, 0) for c in ERROR_CLASSES)),
        noBackend=pool.noBackend,
        queueFull=pool.queueFull,
        queueTimeouts=pool.queueTimeouts,
        responses=dict(responses or {}),
        buckets=tuple(mergedBuckets(pool)),
    )


def countersView(counters: Counters, recent: dict[str, Any] | None) -> dict[str, Any]:
    """
    The counters as the API shows them, with the C{recent} rates and
    percentiles (L{None} until the admin service has a sample to measure
    from).
    """
    return {
        "requests": counters.requests,
        "errors": counters.errors,
        "noBackend": counters.noBackend,
        "queueFull": counters.queueFull,
        "queueTimeouts": counters.queueTimeouts,
        "responses": dict(counters.responses),
        "responsePercentiles": responsePercentiles(counters.buckets),
        "recent": recent,
    }


def poolView(pool: BackendPool, counters: Counters | None = None,
             recent: dict[str, Any] | None = None) -> dict[str, Any]:
    """
    A pool as the API shows it.
    """
    return {
        "name": pool.name,
        "policy": pool.config.policy,
        "eligible": sum(1 for b in pool if b.eligible),
        "queueLength": pool.queueLength,
        "queued": pool.queued,
        "retriesActive": pool.retriesActive,
        "retriesRefused": pool.retriesRefused,
        **countersView(counters or poolCounters(pool, None), recent),
        "backends": [_statsView(s, pool.get(s.name)) for s in pool.stats()],
    }
