"""
Counters across processes: a worker reads its own as a flat mapping
(L{countersOf}); the master adds up every worker's (L{addUp}) and shows the
totals through its own pools and listeners (L{CounterMirror}), which is what
the admin API, C{lbtwist ctl}, the dashboard and C{/metrics} read.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# A key is its path joined with NUL, which no pool, backend or listener
# name holds.
SEP = "\0"

BACKEND_FIELDS = ("active", "total", "bytesIn", "bytesOut", "responseSum", "ejections")
POOL_FIELDS = ("noBackend", "queued", "queueFull", "queueTimeouts", "retriesRefused",
               "retriesActive", "active")
LISTENER_FIELDS = ("accepted", "activeClients", "refused")
# What is open now, rather than counted since the start: a worker that has
# exited has none of it left.
GAUGES = frozenset({"active", "activeClients", "retriesActive"})


def countersOf(pools: Mapping[str, Any], factories: Mapping[str, Any]) -> dict[str, float]:
    """
    Every counter of one process, flat: C{backend/POOL/NAME/FIELD},
    C{backend/POOL/NAME/failures/KIND}, C{backend/POOL/NAME/buckets/I},
    C{pool/POOL/FIELD}, C{listener/NAME/FIELD} and
    C{listener/NAME/statuses/CLASS} (joined with L{SEP}).
    """
    out: dict[str, float] = {}
    for pool in pools.values():
        for field in POOL_FIELDS:
            out[SEP.join(("pool", pool.name, field))] = getattr(pool, field)
        for b in pool:
            base = ("backend", pool.name, b.name)
            for field in BACKEND_FIELDS:
                out[SEP.join((*base, field))] = getattr(b, field)
            for kind, count in b.failures.items():
                out[SEP.join((*base, "failures", kind))] = count
            for index, count in enumerate(b.responseBuckets):
                if count:
                    out[SEP.join((*base, "buckets", str(index)))] = count
    for name, factory in factories.items():
        for field in LISTENER_FIELDS:
            if hasattr(factory, field):
                out[SEP.join(("listener", name, field))] = getattr(factory, field)
        for cls, count in (getattr(factory, "statuses", None) or {}).items():
            out[SEP.join(("listener", name, "statuses", cls))] = count
    return out


def addUp(counters: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """
    The sum, key by key, of several processes' counters.
    """
    total: dict[str, float] = {}
    for one in counters:
        for key, value in one.items():
            total[key] = total.get(key, 0) + value
    return total


def withoutGauges(counters: Mapping[str, float]) -> dict[str, float]:
    """
    C{counters} without what is open now (connections, retries): what a
    worker that has exited still adds to the totals.
    """
    return {k: v for k, v in counters.items() if k.split(SEP)[-1] not in GAUGES}


class CounterMirror:
    """
    Shows the workers' totals in the master's own pools and listeners.

    The master serves no traffic, so its own counters hold only what it
    does itself (the health probes' failures, say): each refresh adds to
    every counter the change in the workers' total since the previous one,
    and the master's own part stays.

    @ivar applied: the workers' totals last added, by key.
    """

    def __init__(self, pools: Mapping[str, Any], factories: Mapping[str, Any]) -> None:
        self.pools = pools
        self.factories = factories
        self.applied: dict[str, float] = {}

    def show(self, totals: Mapping[str, float]) -> None:
        """
        Make the master's counters show C{totals} (the workers' sum) on top
        of its own; keys of pools or backends it no longer has are skipped.
        """
        # Per backend: the seconds and the number of responses the workers
        # timed since the last refresh.
        timed: dict[tuple[str, str], list[float]] = {}
        for key in set(totals) | set(self.applied):
            delta = totals.get(key, 0) - self.applied.get(key, 0)
            if delta:
                path = key.split(SEP)
                self._add(path, delta)
                if path[0] == "backend" and path[3] in ("responseSum", "buckets"):
                    seen = timed.setdefault((path[1], path[2]), [0.0, 0.0])
                    seen[path[3] == "buckets"] += delta
        self.applied = dict(totals)
        # Their mean is the backend's response time as the totals show it
        # (each worker knows only its own last one).
        for (poolName, name), (seconds, count) in timed.items():
            pool = self.pools.get(poolName)
            backend = pool.get(name) if pool is not None else None
            if backend is not None and count > 0:
                backend.showResponseTime(seconds / count)

    def _add(self, path: list[str], delta: float) -> None:
        """
        Add C{delta} to the counter at C{path}, unless it names something
        the master does not have.
        """
        kind = path[0]
        if kind == "pool":
            target = self.pools.get(path[1])
            rest = path[2:]
        elif kind == "backend":
            pool = self.pools.get(path[1])
            target = pool.get(path[2]) if pool is not None else None
            rest = path[3:]
        else:
            target = self.factories.get(path[1])
            rest = path[2:]
        if target is None:
            return
        if len(rest) == 1:
            setattr(target, rest[0], getattr(target, rest[0], 0) + _typed(delta))
            return
        holder, key = rest
        if holder == "buckets":
            buckets = target.responseBuckets
            index = int(key)
            if index < len(buckets):
                buckets[index] += _typed(delta)
            return
        counts = getattr(target, holder, None)
        if counts is None:
            counts = {}
            setattr(target, holder, counts)
        counts[key] = counts.get(key, 0) + _typed(delta)


def _typed(value: float) -> Any:
    """
    An integral count as an C{int} (JSON gives floats back as they went).
    """
    return int(value) if float(value).is_integer() else value
