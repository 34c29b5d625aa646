"""Machine description and tool versions stored with the results."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any


def _first_line(argv: list[str], cwd: Path | None = None) -> str | None:
    """First non-empty output line of ``argv`` (stdout or stderr), or None if it fails."""
    try:
        completed = subprocess.run(
            argv, capture_output=True, text=True, timeout=10, cwd=cwd, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in (completed.stdout + completed.stderr).splitlines():
        if line.strip():
            return line.strip()
    return None


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _memory_total_kib() -> int | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def _twisted_version() -> str | None:
    try:
        import twisted
    except ImportError:
        return None
    return str(twisted.__version__)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(value, 2) for value in os.getloadavg()]


def machine_info(
    repo_root: Path, haproxy: str, nginx: str, wrk: str, h2load: str | None = None
) -> dict[str, Any]:
    """nproc, kernel, CPU, memory and the versions of every tool involved (h2load's
    when the HTTP/2 cases run)."""
    return {
        "nproc": os.cpu_count(),
        "cpus_available": sorted(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "cpu_model": _cpu_model(),
        "memory_total_kib": _memory_total_kib(),
        "load_average_at_start": load_average(),
        "versions": {
            "python": sys.version.split()[0],
            "twisted": _twisted_version(),
            "haproxy": _first_line([haproxy, "-v"]),
            "nginx": _first_line([nginx, "-v"]),
            "wrk": _first_line([wrk, "--version"]),
            "h2load": _first_line([h2load, "--version"]) if h2load else None,
        },
        "git_commit": _first_line(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=repo_root),
    }
