"""
The status table operators watch: every backend's state and counters, and
the pool's totals.  Logged every C{status-interval} seconds by
L{lbtwist.reporter.StatusReporter}, printed by C{lbtwist ctl list}.

Plain values in, text out: C{lbtwist ctl} uses it and loads no Twisted.
"""

from __future__ import annotations

from typing import Iterable

from .pool import BackendStats

_COLUMNS = ("backend", "state", "weight", "active", "total", "failures",
            "probe ms", "resp ms", "share %")


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.1f}"


def _weight(s: BackendStats) -> str:
    # While slow start ramps a backend up: the weight it has now, of its own.
    if s.effectiveWeight is None:
        return str(s.weight)
    return f"{s.effectiveWeight:g}/{s.weight}"


def _marked(s: BackendStats) -> str:
    marks = ("b" if s.backup else "") + ("d" if s.discovered else "")
    return f"{s.state} {marks}" if marks else s.state


def formatTable(pool: str, stats: Iterable[BackendStats]) -> str:
    """
    Render a pool's backend stats as a fixed-width text table with a totals row.

    A backup backend's state is marked C{b}, a discovered one's C{d}; a
    backend in slow start shows its weight now over its full weight.  The
    totals count the backends serving: those new clients may be given now
    (eligible, of weight above 0, and backups only while no primary is).
    """
    stats = list(stats)
    rows = [
        (
            s.name, _marked(s), _weight(s),
            str(s.active), str(s.total),
            str(s.failures), _ms(s.probeLatency), _ms(s.responseTime),
            f"{s.share:.1f}",
        )
        for s in stats
    ]
    # The backends in the pool's rotation; from a balancer that does not
    # say, the up and unknown ones (unknown backends get traffic too).
    serving = sum(
        1 for s in stats
        if (s.serving if s.serving is not None else s.state in ("up", "unknown"))
    )
    rows.append(
        (
            f"TOTAL ({serving}/{len(stats)} serving)", "", "",
            str(sum(s.active for s in stats)), str(sum(s.total for s in stats)),
            str(sum(s.failures for s in stats)), "", "",
            "100.0" if any(s.total for s in stats) else "0.0",
        )
    )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(_COLUMNS)]
    lines = [f"pool {pool}"]
    for row in (_COLUMNS, *rows):
        lines.append(
            "  ".join(
                cell.ljust(w) if i < 2 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths))
            ).rstrip()
        )
    return "\n".join(lines)
