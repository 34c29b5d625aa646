"""Running wrk against a target and turning its output into numbers.

wrk is given a small Lua script whose ``done()`` hook prints one line,
``WRKJSON {...}``, with the run's totals, error counters and latency
percentiles; that line is all the harness parses.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lbbench.configs import LOOPBACK
from lbbench.processes import ProcessManager, run_measured

MARKER = "WRKJSON "
MIB = 1024 * 1024

DONE_SCRIPT = r"""-- Written by bench.py: print one machine-readable summary line.
local function finite(x)
   if x ~= x or x == math.huge or x == -math.huge then return 0 end
   return x
end

done = function(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      "WRKJSON {\"duration_us\":%d,\"requests\":%d,\"bytes\":%d," ..
      "\"connect_errors\":%d,\"read_errors\":%d,\"write_errors\":%d," ..
      "\"status_errors\":%d,\"timeout_errors\":%d," ..
      "\"latency_mean_us\":%.1f,\"latency_p50_us\":%d,\"latency_p90_us\":%d," ..
      "\"latency_p99_us\":%d,\"latency_max_us\":%d}\n",
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      finite(latency.mean), latency:percentile(50), latency:percentile(90),
      latency:percentile(99), latency.max))
end
"""


class WrkError(RuntimeError):
    """wrk failed or printed no summary."""


@dataclass(frozen=True)
class LoadSpec:
    """How to load a target: path, connection handling, duration and concurrency."""

    path: str
    close_connections: bool
    duration_s: float
    connections: int
    threads: int


@dataclass
class LoadRun:
    """One measured run of a load generator plus the CPU used by the proxy during it;
    ``raw`` holds the generator's own figures."""

    requests_per_s: float
    mib_per_s: float
    socket_errors: int
    status_errors: int
    proxy_cpu_percent: float | None
    raw: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


@dataclass
class WrkRun(LoadRun):
    """One measured wrk run, with its latency percentiles."""

    p50_ms: float
    p99_ms: float


def write_script(work_dir: Path) -> Path:
    """Write the ``done()`` Lua script into ``work_dir``; return its path."""
    path = work_dir / "wrk-done.lua"
    path.write_text(DONE_SCRIPT)
    return path


def wrk_command(wrk: str, script: Path, port: int, load: LoadSpec) -> list[str]:
    """The wrk command line for ``load`` against ``127.0.0.1:port``."""
    argv = [
        wrk,
        f"-t{load.threads}",
        f"-c{load.connections}",
        f"-d{max(1, round(load.duration_s))}s",
        "--timeout", "5s",
        "-s", str(script),
    ]  # fmt: skip
    if load.close_connections:
        argv += ["-H", "Connection: close"]
    return [*argv, f"http://{LOOPBACK}:{port}{load.path}"]


def parse_output(output: str) -> dict[str, Any]:
    """Extract the ``WRKJSON`` summary from wrk's output."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            summary: dict[str, Any] = json.loads(line[len(MARKER) :])
            return summary
    raise WrkError(f"no summary in wrk output: {output.strip()[-400:]}")


def summarise(raw: dict[str, Any], cpu_percent: float | None) -> WrkRun:
    """Derive rates, latencies (ms) and error counts from a parsed summary."""
    seconds = raw["duration_us"] / 1e6 or 1.0
    socket_errors = sum(
        raw[key] for key in ("connect_errors", "read_errors", "write_errors", "timeout_errors")
    )
    return WrkRun(
        requests_per_s=raw["requests"] / seconds,
        mib_per_s=raw["bytes"] / seconds / MIB,
        p50_ms=raw["latency_p50_us"] / 1000.0,
        p99_ms=raw["latency_p99_us"] / 1000.0,
        socket_errors=socket_errors,
        status_errors=raw["status_errors"],
        proxy_cpu_percent=cpu_percent,
        raw=raw,
    )


def run_wrk(
    manager: ProcessManager,
    wrk: str,
    script: Path,
    port: int,
    load: LoadSpec,
    client_cpu: int | None,
    measured_pids: list[int],
) -> WrkRun:
    """Run wrk once (pinned to ``client_cpu``) while measuring ``measured_pids``' CPU."""
    argv = wrk_command(wrk, script, port, load)
    run = run_measured(manager, "wrk", argv, client_cpu, measured_pids, load.duration_s + 30)
    if run.returncode != 0:
        raise WrkError(f"wrk exited with code {run.returncode}: {run.output.strip()[-400:]}")
    raw = parse_output(run.output)
    raw["wall_s"] = run.wall_s
    return summarise(raw, run.cpu_percent)
