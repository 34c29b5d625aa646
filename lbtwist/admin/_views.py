"""
The admin API's JSON views of pools, backends and their counters: plain
values in, dictionaries out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..endpoints import parseEndpoint
from ..metrics import (
    Counters,
    mergedBuckets,
    responsePercentiles,
)
from ..pool import Backend, BackendPool, BackendStats
from ..routeconfig import HeaderActions, Match, Route
from ..routing import RouteCounters


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


# -- routes ---------------------------------------------------------------


def _rateText(rate: float) -> str:
    """
    A rate in requests per second as the configuration writes it, in the
    largest unit that keeps it whole: C{100/s}, C{30/m}, C{1/h}.
    """
    for unit, seconds in (("s", 1), ("m", 60), ("h", 3600)):
        count = rate * seconds
        if abs(count - round(count)) < 1e-9 and round(count) >= 1:
            return f"{round(count)}/{unit}"
    return f"{rate * 3600:.6f}".rstrip("0").rstrip(".") + "/h"


def _pairs(items: Sequence[tuple[str, str]]) -> dict[str, str]:
    return dict(items)


def _headerActionsData(actions: HeaderActions) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if actions.set:
        data["set"] = _pairs(actions.set)
    if actions.add:
        data["add"] = _pairs(actions.add)
    if actions.remove:
        data["remove"] = list(actions.remove)
    return data


def matchData(match: Match) -> dict[str, Any]:
    """
    A route's match in the configuration's shape.
    """
    data: dict[str, Any] = {}
    for key, value in (("host", list(match.hosts)), ("sni", list(match.sni)),
                       ("path", match.path), ("path-prefix", match.pathPrefix),
                       ("path-regex", match.pathRegex), ("method", list(match.methods)),
                       ("source", list(match.sources))):
        if value:
            data[key] = value
    if match.headers:
        data["header"] = {
            h.name: (h.value if h.value is not None
                     else {"regex": h.regex} if h.regex is not None
                     else {"present": h.present})
            for h in match.headers}
    if match.query:
        data["query"] = _pairs(match.query)
    return data


def routeData(route: Route, default: bool = False) -> dict[str, Any]:
    """
    A route in the configuration's (YAML) shape, so that what the API shows
    can be given back to it (or written in the file) unchanged; the default
    route has no name or match.
    """
    data: dict[str, Any] = {} if default else {"name": route.name}
    match = matchData(route.match)
    if match and not default:
        data["match"] = match
    if route.pool is not None:
        data["pool"] = route.pool
    if route.pools:
        data["pools"] = dict(route.pools)
    if route.redirect is not None:
        r = route.redirect
        data["redirect"] = ({"scheme": r.scheme, "code": r.code,
                             **({"port": r.port} if r.port is not None else {})}
                            if r.scheme is not None else
                            {"location": r.location, "code": r.code,
                             **({"keep-path": True} if r.keepPath else {})})
    if route.respond is not None:
        data["respond"] = {"status": route.respond.status, "body": route.respond.body,
                           **({"headers": _pairs(route.respond.headers)}
                              if route.respond.headers else {})}
    if route.rewrite is not None:
        data["rewrite"] = {k: v for k, v in (("strip-prefix", route.rewrite.stripPrefix),
                                             ("prefix", route.rewrite.prefix)) if v is not None}
    if route.timeouts is not None:
        data["timeouts"] = {k: v for k, v in attrs.asdict(route.timeouts).items()
                            if v is not None}
    if route.retries is not None:
        data["retries"] = route.retries
    if route.rateLimit is not None:
        limit = route.rateLimit
        data["rate-limit"] = {
            "key": "source" if limit.key == "source" else f"header:{limit.header}",
            "rate": _rateText(limit.rate), "burst": limit.burst, "max-keys": limit.maxKeys}
    if route.auth is not None:
        data["auth"] = {"basic": {"realm": route.auth.realm, "users": route.auth.usersFile}}
    if route.requestHeaders is not None:
        data["request-headers"] = _headerActionsData(route.requestHeaders)
    if route.responseHeaders is not None:
        data["response-headers"] = _headerActionsData(route.responseHeaders)
    return data


def routeCountersView(counters: RouteCounters) -> dict[str, Any]:
    """
    What one route did, as the API shows it: requests (TCP: connections),
    by status class (TCP: under C{tcp}), those refused by its rate limit,
    and its mean duration.
    """
    requests = counters.requests
    return {
        "name": counters.name,
        "requests": requests,
        "responses": dict(counters.responses),
        "rateLimited": counters.rateLimited,
        "meanDuration": counters.durationSum / requests if requests else None,
    }
