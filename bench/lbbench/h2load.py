"""Running h2load (nghttp2's HTTP/2 load generator) and turning its output into numbers.

h2load has no machine-readable output, so :func:`parse_output` reads its
summary block (``finished in``, ``requests:``, ``status codes:``,
``traffic:``, ``time for request:``) and the ``Application protocol:`` line,
which says whether the connection really spoke HTTP/2 (a TLS target whose
ALPN picked ``http/1.1`` must not pass for an HTTP/2 result).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lbbench.configs import LOOPBACK
from lbbench.processes import ProcessManager, run_measured
from lbbench.wrk import LoadRun

MIB = 1024 * 1024
_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
_BYTE_UNITS = {"B": 1, "KB": 1024, "MB": 1024**2, "GB": 1024**3}

_FINISHED = re.compile(r"^finished in (?P<seconds>[\d.]+)(?P<unit>us|ms|s), (?P<rps>[\d.]+) req/s")
_REQUESTS = re.compile(
    r"^requests: (?P<total>\d+) total, (?P<started>\d+) started, (?P<done>\d+) done, "
    r"(?P<succeeded>\d+) succeeded, (?P<failed>\d+) failed, (?P<errored>\d+) errored, "
    r"(?P<timeout>\d+) timeout"
)
_STATUS = re.compile(
    r"^status codes: (?P<s2xx>\d+) 2xx, (?P<s3xx>\d+) 3xx, (?P<s4xx>\d+) 4xx, (?P<s5xx>\d+) 5xx"
)
# "traffic: 7.02MB (7361234) total, ..." (1.52); older versions print "7361234 bytes total".
_TRAFFIC = re.compile(
    r"^traffic: .*?\(?(?P<total>\d+)\)?(?: bytes)? total, .*?\(?(?P<headers>\d+)\)?(?: bytes)? "
    r"headers .*?, .*?\(?(?P<data>\d+)\)?(?: bytes)? data"
)
_DURATION = r"([\d.]+)(us|ms|s)"
_REQUEST_TIME = re.compile(
    rf"^time for request:\s+{_DURATION}\s+{_DURATION}\s+{_DURATION}\s+{_DURATION}"
)
_PROTOCOL = re.compile(r"^Application protocol: (?P<protocol>\S+)")
_TLS = re.compile(r"^(?P<key>TLS Protocol|Cipher): (?P<value>\S+)")


class H2loadError(RuntimeError):
    """h2load failed, printed no summary, or did not speak HTTP/2."""


@dataclass(frozen=True)
class H2LoadSpec:
    """An h2load run: path, scheme (``http`` is h2c by prior knowledge, ``https`` TLS with
    ALPN), duration, connections (``-c``) and concurrent streams per connection (``-m``)."""

    path: str
    scheme: str
    duration_s: float
    connections: int
    streams: int


@dataclass
class H2loadRun(LoadRun):
    """One measured h2load run, with its mean and maximum request times (h2load
    reports no percentiles)."""

    mean_ms: float
    max_ms: float


def h2load_command(h2load: str, port: int, load: H2LoadSpec) -> list[str]:
    """The h2load command line for ``load`` against ``127.0.0.1:port`` (one thread)."""
    argv = [
        h2load,
        "-t", "1",
        "-c", str(load.connections),
        "-m", str(load.streams),
        "-D", str(max(1, round(load.duration_s))),
    ]  # fmt: skip
    if load.scheme == "https":
        argv += ["--npn-list=h2"]  # ALPN too, despite the name (h2load 1.52)
    return [*argv, f"{load.scheme}://{LOOPBACK}:{port}{load.path}"]


def expected_protocol(scheme: str) -> str:
    """What h2load reports as its application protocol when it speaks HTTP/2 over
    ``scheme``: ``h2c`` in cleartext, ``h2`` as chosen by ALPN over TLS."""
    return "h2" if scheme == "https" else "h2c"


def _seconds(value: str, unit: str) -> float:
    return float(value) * _UNITS_S[unit]


def parse_output(output: str) -> dict[str, Any]:
    """The numbers of h2load's summary: duration, request and status counts, bytes,
    request times (``request_*_us``), the application protocol (None if no connection
    printed one) and, over TLS, the version and cipher.

    Raises :class:`H2loadError` when the summary is missing or incomplete.
    """
    found: dict[str, Any] = {"protocol": None}
    for line in output.splitlines():
        line = line.strip()
        if match := _FINISHED.match(line):
            found["duration_s"] = _seconds(match["seconds"], match["unit"])
            found["reported_requests_per_s"] = float(match["rps"])
        elif match := _REQUESTS.match(line):
            found.update({key: int(value) for key, value in match.groupdict().items()})
        elif match := _STATUS.match(line):
            found.update({key: int(value) for key, value in match.groupdict().items()})
        elif match := _TRAFFIC.match(line):
            found.update({f"{key}_bytes": int(value) for key, value in match.groupdict().items()})
        elif match := _REQUEST_TIME.match(line):
            values = match.groups()
            for index, name in enumerate(("min", "max", "mean", "sd")):
                seconds = _seconds(values[2 * index], values[2 * index + 1])
                found[f"request_{name}_us"] = round(seconds * 1e6, 1)
        elif match := _PROTOCOL.match(line):
            found["protocol"] = match["protocol"]
        elif match := _TLS.match(line):
            found["tls_version" if match["key"] == "TLS Protocol" else "tls_cipher"] = match["value"]
    missing = [
        key
        for key in ("duration_s", "done", "s2xx", "total_bytes", "request_mean_us")
        if key not in found
    ]
    if missing:
        tail = output.strip()[-400:]
        raise H2loadError(f"no complete summary in h2load output ({', '.join(missing)}): {tail}")
    return found


def summarise(raw: dict[str, Any], cpu_percent: float | None) -> H2loadRun:
    """Rates, latencies (ms) and error counts from a parsed summary.

    Requests per second count the requests done in the measured duration
    (h2load's own figure, which counts the same); errors are requests that
    failed below HTTP (stream reset, connection error: h2load's ``errored``)
    or timed out, and answers other than 2xx or 3xx.
    """
    seconds = raw["duration_s"] or 1.0
    return H2loadRun(
        requests_per_s=raw["done"] / seconds,
        mib_per_s=raw["total_bytes"] / seconds / MIB,
        mean_ms=raw["request_mean_us"] / 1000.0,
        max_ms=raw["request_max_us"] / 1000.0,
        socket_errors=raw["errored"] + raw["timeout"],
        status_errors=raw["s4xx"] + raw["s5xx"],
        proxy_cpu_percent=cpu_percent,
        raw=raw,
    )


def run_h2load(
    manager: ProcessManager,
    h2load: str,
    port: int,
    load: H2LoadSpec,
    client_cpu: int | None,
    measured_pids: list[int],
) -> H2loadRun:
    """Run h2load once (pinned to ``client_cpu``) while measuring ``measured_pids``' CPU.

    Raises :class:`H2loadError` if h2load fails or its connections did not speak HTTP/2.
    """
    argv = h2load_command(h2load, port, load)
    run = run_measured(manager, "h2load", argv, client_cpu, measured_pids, load.duration_s + 30)
    tail = run.output.strip()[-400:]
    if run.returncode != 0:
        raise H2loadError(f"h2load exited with code {run.returncode}: {tail}")
    raw = parse_output(run.output)
    expected = expected_protocol(load.scheme)
    if raw["protocol"] != expected:
        spoke = f"spoke {raw['protocol']}" if raw["protocol"] else "made no connection"
        raise H2loadError(f"h2load {spoke}, not {expected}: {tail}")
    raw["wall_s"] = run.wall_s
    return summarise(raw, run.cpu_percent)
