"""Results: per-case medians, ratios, the printed table and the JSON file."""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbbench.cases import CASES_BY_NAME, CaseSpec
from lbbench.memory import MemoryResult
from lbbench.targets import TargetSpec
from lbbench.wrk import LoadRun

# wrk runs have p50/p99 latencies, h2load runs mean and max: each has the others as None.
MEDIAN_METRICS = (
    "requests_per_s", "mib_per_s", "p50_ms", "p99_ms", "mean_ms", "max_ms", "proxy_cpu_percent",
)
# The target for HTTP/2 from clients: lbtwist's requests per core against the
# same kind of HAProxy (h2c against h2c, TLS against TLS), small responses.
H2_TARGET_RATIO = 0.4


@dataclass
class TargetStatus:
    """Whether a target started and passed the probe, and how it was run."""

    status: str = "not run"
    detail: str = ""
    command: list[str] = field(default_factory=list)
    probe: dict[str, Any] | None = None
    log_tail: str = ""

    @property
    def available(self) -> bool:
        """True if the target was benchmarked."""
        return self.status == "ok"


@dataclass
class CaseResult:
    """All runs of one case against one target."""

    status: str = "ok"
    detail: str = ""
    runs: list[LoadRun] = field(default_factory=list)

    def median(self) -> dict[str, float | None]:
        """Median of each metric over the runs (None where nothing was measured)."""
        medians: dict[str, float | None] = {}
        for metric in MEDIAN_METRICS:
            values = [
                getattr(run, metric) for run in self.runs if getattr(run, metric, None) is not None
            ]
            medians[metric] = statistics.median(values) if values else None
        return medians

    def errors(self) -> tuple[int, int]:
        """Total (socket errors, non-2xx/3xx responses) over the runs."""
        return (
            sum(run.socket_errors for run in self.runs),
            sum(run.status_errors for run in self.runs),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict with the raw runs and the medians."""
        socket_errors, status_errors = self.errors()
        return {
            "status": self.status,
            "detail": self.detail,
            "runs": [run.to_json() for run in self.runs],
            "median": self.median(),
            "socket_errors": socket_errors,
            "status_errors": status_errors,
        }


@dataclass
class Results:
    """Everything measured in one harness run."""

    targets: list[TargetSpec]
    cases: list[CaseSpec]
    statuses: dict[str, TargetStatus] = field(default_factory=dict)
    case_results: dict[str, dict[str, CaseResult]] = field(default_factory=dict)
    memory: list[MemoryResult] = field(default_factory=list)

    def result(self, case: str, target: str) -> CaseResult | None:
        """The result of ``case`` for ``target``, if it was run."""
        return self.case_results.get(case, {}).get(target)

    def primary(self, case: CaseSpec, target: str) -> float | None:
        """Median of the case's primary metric for ``target`` (None if unavailable)."""
        result = self.result(case.name, target)
        if result is None or result.status != "ok":
            return None
        return result.median()[case.primary]

    def per_core(self, case: CaseSpec, target: str) -> float | None:
        """Primary metric scaled to 100 % proxy CPU (a linear estimate; None for direct)."""
        result = self.result(case.name, target)
        value = self.primary(case, target)
        if result is None or value is None:
            return None
        cpu = result.median()["proxy_cpu_percent"]
        return value / (cpu / 100.0) if cpu else None

    def per_core_ratio(self, case: CaseSpec, target: str, reference: str | None) -> float | None:
        """``target``'s per-core figure divided by ``reference``'s."""
        if reference is None:
            return None
        return _quotient(self.per_core(case, target), self.per_core(case, reference))

    def ratio(self, case: CaseSpec, target: str, reference: str | None) -> float | None:
        """``target``'s primary metric divided by ``reference``'s."""
        if reference is None:
            return None
        return _quotient(self.primary(case, target), self.primary(case, reference))


def _quotient(value: float | None, base: float | None) -> float | None:
    """``value / base``, or None when either is missing or ``base`` is zero."""
    if value is None or not base:
        return None
    return value / base


# ---------------------------------------------------------------- table output


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


TABLE_HEADER = (
    f"{'target':<14} {'req/s':>10} {'MiB/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
    f"{'CPU %':>6} {'per core':>9} {'errors':>9} {'vs HAProxy':>10} {'vs direct':>9}"
)


def _case_row(results: Results, case: CaseSpec, spec: TargetSpec) -> str:
    status = results.statuses.get(spec.name, TargetStatus())
    result = results.result(case.name, spec.name)
    if not status.available:
        return f"{spec.name:<14} {status.status}: {_one_line(status.detail)}".rstrip(": ")
    if result is None:
        return f"{spec.name:<14} not run"
    if result.status != "ok":
        return f"{spec.name:<14} {result.status}: {_one_line(result.detail)}".rstrip(": ")
    median = result.median()
    socket_errors, status_errors = result.errors()
    vs_haproxy = (
        "ref"
        if spec.reference == spec.name
        else _ratio(results.ratio(case, spec.name, spec.reference))
    )
    vs_direct = _ratio(results.ratio(case, spec.name, "direct"))
    return (
        f"{spec.name:<14} {_number(median['requests_per_s']):>10} "
        f"{_number(median['mib_per_s'], 1):>9} {_number(median['p50_ms'], 2):>8} "
        f"{_number(median['p99_ms'], 2):>8} {_number(median['proxy_cpu_percent']):>6} "
        f"{_number(results.per_core(case, spec.name)):>9} "
        f"{f'{socket_errors}/{status_errors}':>9} {vs_haproxy:>10} {vs_direct:>9}"
    )


def _one_line(text: str, limit: int = 90) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


H2_TABLE_HEADER = (
    f"{'target':<14} {'req/s':>10} {'MiB/s':>9} {'mean ms':>8} {'max ms':>8} "
    f"{'CPU %':>6} {'per core':>9} {'errors':>9} {'per core vs HAProxy':>20}"
)


def _h2_case_row(results: Results, case: CaseSpec, spec: TargetSpec) -> str:
    """An HTTP/2 case's row: h2load's mean and max request times, and the ratio to the
    same kind of HAProxy per core."""
    result = results.result(case.name, spec.name)
    status = results.statuses.get(spec.name, TargetStatus())
    if not status.available or result is None or result.status != "ok":
        return _case_row(results, case, spec)
    median = result.median()
    socket_errors, status_errors = result.errors()
    vs_haproxy = (
        "ref"
        if spec.reference == spec.name
        else _ratio(results.per_core_ratio(case, spec.name, spec.reference))
    )
    return (
        f"{spec.name:<14} {_number(median['requests_per_s']):>10} "
        f"{_number(median['mib_per_s'], 1):>9} {_number(median['mean_ms'], 2):>8} "
        f"{_number(median['max_ms'], 2):>8} {_number(median['proxy_cpu_percent']):>6} "
        f"{_number(results.per_core(case, spec.name)):>9} "
        f"{f'{socket_errors}/{status_errors}':>9} {vs_haproxy:>20}"
    )


def format_case_tables(results: Results) -> str:
    """One table per case: medians, CPU use, errors and ratios for every target it loads."""
    blocks = []
    for case in results.cases:
        specs = [spec for spec in results.targets if case.applies_to(spec)]
        if not specs:
            continue
        header, row = (H2_TABLE_HEADER, _h2_case_row) if case.uses_h2load else (
            TABLE_HEADER, _case_row)
        lines = [f"== {case.name}: {case.description}", header]
        lines += [row(results, case, spec) for spec in specs]
        blocks.append("\n".join(lines))
    legend = "\n".join(
        [
            "Medians of the runs. CPU % = the proxy's processes (nginx: with its worker), "
            "100 = one core;",
            "per core = req/s (MiB/s for big) / (CPU % / 100), linear estimate of one busy core;",
            "errors = wrk socket errors / non-2xx-3xx responses, all runs;",
            "vs HAProxy = ratio to same-mode HAProxy on req/s (MiB/s for big): "
            "tcp for lbtwist-tcp, floor-tcp and portforward, http for lbtwist-http, floor-http "
            "and nginx;",
            "HTTP/2 (h2load): mean/max ms = h2load's request times; errors = streams reset or "
            "timed out / non-2xx-3xx;",
            "per core vs HAProxy = per core against HAProxy of the same kind (h2c or TLS).",
        ]
    )
    routing = _routing_line(results)
    return "\n\n".join(
        [*blocks, *routing, *_multicore_lines(results), *_h2_lines(results), legend]
    )


def _h2_lines(results: Results) -> list[str]:
    """
    The HTTP/2 summary: each lbtwist HTTP/2 target's requests per core
    against HAProxy's of the same kind, and whether it meets the issue's
    target (0.4x for small responses).
    """
    lines = []
    for case in results.cases:
        if not case.uses_h2load:
            continue
        for spec in results.targets:
            if not (case.applies_to(spec) and spec.name.startswith("lbtwist")):
                continue
            ratio = results.per_core_ratio(case, spec.name, spec.reference)
            if ratio is None:
                continue
            verdict = "met" if ratio >= H2_TARGET_RATIO else "NOT met"
            lines.append(f"{case.name}: {spec.name} / {spec.reference} per core = {ratio:.2f}x "
                         f"(target >= {H2_TARGET_RATIO:.2f}x: {verdict})")
    return ["== HTTP/2 from clients (per core, against HAProxy of the same kind)\n"
            + "\n".join(lines)] if lines else []


def _multicore_lines(results: Results) -> list[str]:
    """
    The multi-core case, per core (CPU-normalised: requests per second of
    the proxy's CPU time, so that wrk and the backends sharing the cores do
    not count): two workers' efficiency against one worker's, beside
    HAProxy's two threads against its one (what the machine allows: the
    unpinned processes share the cores with wrk and the backends, which the
    pinned single-core targets do not), and each lbtwist's ratio to HAProxy
    with as many threads.
    """
    lines = []
    for case in results.cases:
        for mode in ("tcp", "http"):
            one, two = (results.per_core(case, f"lbtwist-{mode}"),
                        results.per_core(case, f"lbtwist-{mode}-2w"))
            h1, h2 = (results.per_core(case, f"haproxy-{mode}"),
                      results.per_core(case, f"haproxy-{mode}-2t"))
            if not (one and two):
                continue
            line = (f"{case.name} {mode}: 2 workers {two:,.0f}/core vs 1 worker {one:,.0f}/core: "
                    f"capacity of 2 cores = {2 * two / one:.2f}x one worker (target >= 1.8x)")
            if h1 and h2:
                line += (f"; HAProxy on this machine: 2 threads = {2 * h2 / h1:.2f}x one thread"
                         f"; vs HAProxy per core: 2w/2t {two / h2:.2f}x, "
                         f"1w/1t {one / h1:.2f}x (target: 2w/2t >= 1w/1t)")
            lines.append(line)
    return ["== multi-core (per core: req/s per CPU-second of the proxy's processes)\n"
            + "\n".join(lines)] if lines else []


def _routing_line(results: Results) -> list[str]:
    """
    The routing case's ratio: lbtwist with 50 routes to lbtwist without,
    per core, for each case both ran.
    """
    lines = []
    for case in results.cases:
        routed = results.per_core(case, "lbtwist-routes")
        plain = results.per_core(case, "lbtwist-http")
        if routed is not None and plain:
            lines.append(f"{case.name}: lbtwist-routes / lbtwist-http per core = "
                         f"{routed / plain:.2f}x (target >= 0.90x)")
    return ["== routing (50 routes, the match last)\n" + "\n".join(lines)] if lines else []


MEMORY_HEADER = (
    f"{'target':<14} {'clients':>8} {'backend':>8} {'RSS before':>11} {'RSS after':>10} "
    f"{'KiB/conn':>9}"
)


MEMORY_TITLES = {
    "tcp": ("== memory: idle client connections through a TCP proxy", MEMORY_HEADER),
    "h2c": (
        "== memory: idle HTTP/2 connections (h2c: preface and SETTINGS exchanged, no stream)",
        f"{'target':<14} {'clients':>8} {'h2 ready':>8} {'RSS before':>11} {'RSS after':>10} "
        f"{'KiB/conn':>9}",
    ),
}


def format_memory_table(memory: list[MemoryResult]) -> str:
    """The memory case: RSS before/after N idle connections, and per connection; one
    table per kind (TCP proxies, HTTP/2 connections)."""
    blocks = []
    for kind, (title, header) in MEMORY_TITLES.items():
        items = [item for item in memory if item.kind == kind]
        if items:
            blocks.append("\n".join([title, header, *_memory_rows(items)]))
    return "\n\n".join(blocks)


def _memory_rows(memory: list[MemoryResult]) -> list[str]:
    lines = []
    for item in memory:
        if item.status != "ok":
            lines.append(f"{item.target:<14} unavailable: {_one_line(item.detail)}")
            continue
        row = (
            f"{item.target:<14} {item.opened:>8,} "
            f"{item.h2_ready if item.kind == 'h2c' else item.backend_connections:>8,} "
            f"{_kib(item.rss_before_kib):>11} {_kib(item.rss_after_kib):>10} "
            f"{_number(item.kib_per_connection, 2):>9}"
        )
        if item.detail != "ok":
            row += f"  ({item.detail})"
        lines.append(row)
    return lines


def _kib(value: int) -> str:
    return f"{value / 1024:,.1f} MiB"


def format_machine_line(machine: dict[str, Any], settings: dict[str, Any]) -> str:
    """One line on the machine and the run's settings (high load means noisy numbers)."""
    start = "/".join(map(str, machine["load_average_at_start"]))
    end = "/".join(map(str, machine["load_average_at_end"]))
    pinning = (
        f"proxy on CPU {settings['proxy_cpu']}, wrk and backends on CPU {settings['client_cpu']}"
        if settings["proxy_cpu"] is not None
        else "no CPU pinning"
    )
    return (
        f"machine: {machine['nproc']} CPUs, kernel {machine['kernel']}, load average "
        f"{start} at start, {end} at end; {pinning};\n"
        f"wrk -t{settings['wrk_threads']} -c{settings['wrk_connections']}, "
        + (f"h2load -t 1 -c {settings['h2load_connections']} -m {settings['h2load_streams']}, "
           if any(CASES_BY_NAME[name].uses_h2load for name in settings["cases"]) else "")
        + f"{settings['repeat']} x {settings['duration_s']:g} s per case "
        f"after {settings['warmup_s']:g} s warm-up"
    )


def format_target_notes(results: Results) -> str:
    """Probe findings per target (keep-alive, Connection: close)."""
    lines = ["== targets"]
    for spec in results.targets:
        status = results.statuses.get(spec.name, TargetStatus())
        text = status.detail if status.available else f"{status.status}: {status.detail}"
        text = text.rstrip(": ")
        lines.append(f"{spec.name:<14} {spec.description:<34} {_one_line(text, 70)}")
    return "\n".join(lines)


# ----------------------------------------------------------------- JSON output


def to_json(results: Results, settings: dict[str, Any], machine: dict[str, Any]) -> dict[str, Any]:
    """The full JSON document: settings, machine, targets, raw runs, medians, memory."""
    return {
        "settings": settings,
        "machine": machine,
        "targets": {
            spec.name: {
                "mode": spec.mode,
                "reference": spec.reference,
                "description": spec.description,
                **vars(results.statuses.get(spec.name, TargetStatus())),
            }
            for spec in results.targets
        },
        "cases": {
            case.name: {
                "description": case.description,
                "primary_metric": case.primary,
                "targets": {
                    name: {
                        **result.to_json(),
                        "ratio_to_haproxy": results.ratio(case, name, _reference_of(results, name)),
                        "per_core_ratio_to_haproxy": results.per_core_ratio(
                            case, name, _reference_of(results, name)
                        ),
                        "ratio_to_direct": results.ratio(case, name, "direct"),
                        "primary_per_core": results.per_core(case, name),
                    }
                    for name, result in results.case_results.get(case.name, {}).items()
                },
            }
            for case in results.cases
        },
        "memory": [item.to_json() for item in results.memory],
    }


def _reference_of(results: Results, name: str) -> str | None:
    for spec in results.targets:
        if spec.name == name:
            return spec.reference
    return None


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` (creating its directory)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
