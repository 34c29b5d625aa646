#!/usr/bin/env python3
"""Benchmark lbtwist against HAProxy, nginx and twisted's portforward on 127.0.0.1.

Usage (normally through ``bash bench/run.sh``)::

    .venv/bin/python bench/bench.py [--quick] [--targets a,b] [--cases small,big] ...

Backends are nginx server blocks started by the harness; every target is
loaded through the cases in :mod:`lbbench.cases` that speak its protocol
(wrk for HTTP/1.1 and TCP, h2load for HTTP/2); the proxy runs alone
on one CPU, the load generator and the backends on the other.  Results are printed as a table
and written as JSON (``bench/results/latest.json`` by default).  See
``bench/README.rst``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import resource
import shlex
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType
from typing import Any

from lbbench import configs, sysinfo
from lbbench.cases import CASES, CASES_BY_NAME, CaseSpec
from lbbench.h2load import H2loadError, H2loadRun, H2LoadSpec, run_h2load
from lbbench.memory import MemoryResult, run_memory_case
from lbbench.probe import probe, probe_h2
from lbbench.processes import (
    ProcessManager,
    StartError,
    free_port,
    wait_listening,
)
from lbbench.report import (
    CaseResult,
    Results,
    TargetStatus,
    format_case_tables,
    format_machine_line,
    format_memory_table,
    format_target_notes,
    to_json,
    write_json,
)
from lbbench.targets import (
    H2_TLS,
    H2C,
    HTTP1,
    TARGETS,
    TARGETS_BY_NAME,
    BenchContext,
    RunningTarget,
    TargetSpec,
    launch,
)
from lbbench.wrk import LoadSpec, WrkError, WrkRun, run_wrk, write_script

# Run as a script, so bench/ is sys.path[0] and the lbbench package imports directly.
BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
DEFAULT_OUTPUT = BENCH_DIR / "results" / "latest.json"
WANTED_NOFILE = 65536
MEMORY_TARGETS = ("haproxy-tcp", "lbtwist-tcp", "portforward", "haproxy-h2c", "lbtwist-h2c")
DEFAULT_MEMORY_TARGETS = "haproxy-tcp,lbtwist-tcp,haproxy-h2c,lbtwist-h2c"
FULL_DEFAULTS: dict[str, float] = {"duration": 10.0, "warmup": 2.0, "repeat": 3}
QUICK_DEFAULTS: dict[str, float] = {"duration": 3.0, "warmup": 1.0, "repeat": 1}
SYSTEM_PATHS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


# ------------------------------------------------------------------ arguments


def _csv(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options (``--quick`` overrides duration, warm-up and repetitions)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, help="seconds per run (10; quick: 3)")
    parser.add_argument("--warmup", type=float, help="warm-up seconds per case (2; quick: 1)")
    parser.add_argument("--repeat", type=int, help="runs per case, median taken (3; quick: 1)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="short runs: defaults of 3 s, 1 repetition, 1 s warm-up",
    )
    parser.add_argument("--connections", type=int, default=50, help="wrk -c (50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk -t (1)")
    parser.add_argument(
        "--h2-connections", type=int, default=8, help="h2load -c, HTTP/2 connections (8)"
    )
    parser.add_argument(
        "--h2-streams", type=int, default=16, help="h2load -m, streams per connection (16)"
    )
    parser.add_argument(
        "--targets",
        type=_csv,
        default=[spec.name for spec in TARGETS],
        help="comma-separated subset of: " + ",".join(spec.name for spec in TARGETS),
    )
    parser.add_argument(
        "--cases",
        type=_csv,
        default=[case.name for case in CASES],
        help="comma-separated subset of: " + ",".join(case.name for case in CASES),
    )
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the idle-connection memory case (default: yes)",
    )
    parser.add_argument(
        "--memory-connections", type=int, default=10_000, help="idle connections (10000)"
    )
    parser.add_argument(
        "--memory-h2-connections",
        type=int,
        default=2_000,
        help="idle HTTP/2 connections for the h2c memory targets (2000)",
    )
    parser.add_argument(
        "--memory-targets",
        type=_csv,
        default=_csv(DEFAULT_MEMORY_TARGETS),
        help=f"targets for the memory case (TCP proxies and h2c), of: {','.join(MEMORY_TARGETS)} "
        f"(default {DEFAULT_MEMORY_TARGETS}; only those also in --targets run)",
    )
    parser.add_argument(
        "--memory-settle", type=float, default=20.0, help="max seconds to wait for RSS to settle"
    )
    parser.add_argument(
        "--lbtwist-args",
        default=os.environ.get("LBTWIST_ARGS", ""),
        help="extra arguments for 'twistd lb', e.g. --lbtwist-args='--retries 1' "
        "(default: $LBTWIST_ARGS)",
    )
    parser.add_argument(
        "--start-timeout", type=float, default=10.0, help="seconds for a target to listen (10)"
    )
    parser.add_argument("--client-cpu", type=int, default=0, help="CPU for wrk and backends (0)")
    parser.add_argument("--proxy-cpu", type=int, default=1, help="CPU for the proxy (1)")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes with taskset")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="JSON results file")
    parser.add_argument("--keep-temp", action="store_true", help="keep configs and logs")
    args = parser.parse_args(argv)
    defaults = QUICK_DEFAULTS if args.quick else FULL_DEFAULTS
    for option, value in defaults.items():
        if getattr(args, option) is None:
            setattr(args, option, value)
    _validate_names(parser, args.targets, TARGETS_BY_NAME, "target")
    _validate_names(parser, args.cases, CASES_BY_NAME, "case")
    _validate_names(parser, args.memory_targets, dict.fromkeys(MEMORY_TARGETS), "memory target")
    counts = (args.repeat, args.duration, args.connections, args.memory_connections,
              args.memory_h2_connections, args.h2_connections, args.h2_streams)  # fmt: skip
    if min(counts) < 1:
        parser.error(
            "--repeat, --duration, --connections, --memory-connections, "
            "--memory-h2-connections, --h2-connections, --h2-streams must be >= 1"
        )
    return args


def _validate_names(
    parser: argparse.ArgumentParser, names: list[str], known: dict[str, Any], kind: str
) -> None:
    unknown = [name for name in names if name not in known]
    if unknown:
        parser.error(f"unknown {kind}(s) {', '.join(unknown)}; known: {', '.join(known)}")


# ---------------------------------------------------------------- environment


def find_tool(name: str) -> str:
    """Absolute path of ``name`` on PATH or in the sbin directories; exit if missing."""
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *SYSTEM_PATHS])
    path = shutil.which(name, path=search_path)
    if path is None:
        sys.exit(f"error: '{name}' not found; run 'bash bench/run.sh' to install it")
    return path


def raise_fd_limit(wanted: int = WANTED_NOFILE) -> int:
    """Raise RLIMIT_NOFILE to ``wanted`` if allowed, else to the hard limit; return it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
        return wanted
    except (ValueError, OSError):
        limit = hard if hard != resource.RLIM_INFINITY else wanted
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
        return limit


def choose_cpus(args: argparse.Namespace) -> tuple[int | None, int | None]:
    """(client CPU, proxy CPU), or (None, None) when pinning is off or impossible."""
    if args.no_pin:
        return None, None
    available = os.sched_getaffinity(0)
    if args.client_cpu not in available or args.proxy_cpu not in available:
        print(f"warning: CPUs {args.client_cpu}/{args.proxy_cpu} not both available; not pinning")
        return None, None
    if shutil.which("taskset") is None:
        print("warning: taskset not found; not pinning")
        return None, None
    return args.client_cpu, args.proxy_cpu


class Interrupted(KeyboardInterrupt):
    """Raised from the SIGTERM/SIGHUP handler so that cleanup runs as for Ctrl-C."""


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


def install_signal_handlers() -> None:
    """Make SIGINT, SIGTERM and SIGHUP raise an exception, so that cleanup runs."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)


def ignore_signals() -> None:
    """Stop Ctrl-C or SIGTERM from interrupting the final cleanup."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)


def log(message: str) -> None:
    """Print a progress line immediately."""
    print(message, flush=True)


# ------------------------------------------------------------------ benchmark


class Harness:
    """Runs the whole benchmark: backends, every target and case, the memory case."""

    def __init__(self, args: argparse.Namespace, work_dir: Path, nofile: int) -> None:
        self.args = args
        self.work_dir = work_dir
        self.client_cpu, proxy_cpu = choose_cpus(args)
        self.wrk = find_tool("wrk")
        self.nginx = find_tool("nginx")
        self.manager = ProcessManager(work_dir, nofile)
        self.ctx = BenchContext(
            work_dir=work_dir,
            repo_root=REPO_ROOT,
            twistd=Path(sys.executable).with_name("twistd"),
            haproxy=find_tool("haproxy"),
            nginx=self.nginx,
            nofile=nofile,
            proxy_cpu=proxy_cpu,
            start_timeout=args.start_timeout,
            lbtwist_args=shlex.split(args.lbtwist_args),
        )
        self.script = write_script(work_dir)
        self.targets = [TARGETS_BY_NAME[name] for name in args.targets]
        self.cases = [CASES_BY_NAME[name] for name in args.cases]
        self.results = Results(self.targets, self.cases)
        self.backend_ports: list[int] = []
        # h2load is only needed (and only looked for) when an HTTP/2 case has a target.
        uses_h2load = any(
            case.uses_h2load and case.applies_to(spec)
            for case in self.cases
            for spec in self.targets
        )
        self.h2load = find_tool("h2load") if uses_h2load else None
        self.machine = sysinfo.machine_info(
            REPO_ROOT, self.ctx.haproxy, self.nginx, self.wrk, self.h2load
        )

    def settings(self) -> dict[str, Any]:
        """The options that shaped this run, stored in the JSON."""
        return {
            "duration_s": self.args.duration,
            "warmup_s": self.args.warmup,
            "repeat": self.args.repeat,
            "wrk_connections": self.args.connections,
            "wrk_threads": self.args.threads,
            "h2load_connections": self.args.h2_connections,
            "h2load_streams": self.args.h2_streams,
            "targets": self.args.targets,
            "cases": self.args.cases,
            "client_cpu": self.client_cpu,
            "proxy_cpu": self.ctx.proxy_cpu,
            "nofile_limit": self.ctx.nofile,
            "lbtwist_args": self.ctx.lbtwist_args,
            "memory": self.args.memory,
            "memory_targets": self.args.memory_targets,
            "memory_connections_requested": self.args.memory_connections,
            "memory_h2_connections_requested": self.args.memory_h2_connections,
            "backend_ports": self.backend_ports,
        }

    def start_backends(self) -> None:
        """Start the backend nginx (two server blocks) pinned to the client CPU."""
        www = self.work_dir / "www"
        configs.write_payloads(www)
        self.backend_ports = [free_port(), free_port()]
        path = configs.nginx_backend_config(self.work_dir, www, self.backend_ports, self.ctx.nofile)
        stderr_log = self.work_dir / "backend-nginx-startup.log"
        process = self.manager.start(
            "backend-nginx",
            [self.nginx, "-p", str(self.work_dir), "-e", str(stderr_log), "-c", str(path)],
            cpu=self.client_cpu,
            raise_nofile=True,
        )
        for port in self.backend_ports:
            wait_listening(process, port, self.ctx.start_timeout)
        log(f"backends: nginx on 127.0.0.1:{self.backend_ports[0]} and :{self.backend_ports[1]}")

    def run(self) -> None:
        """Start every target, run the cases against them, stop them, then the memory case.

        All available targets run side by side (idle ones use no CPU) so that the
        repetitions of a case can be interleaved across targets: a burst of
        outside load then hits one run of several targets rather than every run
        of one target, and the medians stay comparable.
        """
        self.start_backends()
        running = self.start_targets()
        try:
            for case in self.cases:
                self.run_case(case, running)
        finally:
            for target in running:
                if target.process is not None:
                    self.manager.stop(target.process)
        if self.args.memory:
            self.run_memory()

    def start_targets(self) -> list[RunningTarget]:
        """Start and probe every selected target a selected case loads; return those
        that are usable."""
        running = []
        for spec in self.targets:
            if not any(case.applies_to(spec) for case in self.cases):
                continue
            target = self.start_target(spec)
            if target is not None:
                running.append(target)
        return running

    def start_target(self, spec: TargetSpec) -> RunningTarget | None:
        """Start ``spec`` and probe it; None (and an "unavailable" status) if unusable."""
        log(f"{spec.name}: starting ({spec.description})")
        status = TargetStatus()
        self.results.statuses[spec.name] = status
        try:
            target = launch(spec, self.ctx, self.manager, free_port(), self.backend_ports)
        except StartError as exc:
            status.status, status.detail, status.log_tail = "unavailable", str(exc), exc.log_tail
            log(f"{spec.name}: unavailable: {exc}")
            return None
        status.command = target.command()
        found = probe(target.port) if spec.protocol == HTTP1 else probe_h2(
            target.port, tls=spec.protocol == H2_TLS
        )
        status.probe = found.to_json()
        status.detail = found.detail
        log(f"{spec.name}: probe: {found.detail}")
        if not found.ok:
            status.status = "unavailable"
            if target.process is not None:
                self.manager.stop(target.process)
            return None
        status.status = "ok"
        return target

    def run_case(self, case: CaseSpec, running: list[RunningTarget]) -> None:
        """Warm up each target, then ``--repeat`` rounds of one run per target."""
        log(f"\n{case.name}: {case.description}")
        running = [target for target in running if case.applies_to(target.spec)]
        results = {}
        for target in running:
            result = CaseResult(status="interrupted")
            self.results.case_results.setdefault(case.name, {})[target.spec.name] = result
            results[target.spec.name] = result
            if self.args.warmup > 0:
                self.attempt(target, case, result, self.args.warmup, "warm-up")
        for index in range(self.args.repeat):
            for target in running:
                label = f"run {index + 1}/{self.args.repeat}"
                self.attempt(target, case, results[target.spec.name], self.args.duration, label)
        for result in results.values():
            if result.status == "interrupted":
                result.status = "ok"

    def attempt(
        self, target: RunningTarget, case: CaseSpec, result: CaseResult, duration: float, label: str
    ) -> None:
        """One wrk run into ``result`` (warm-ups are not kept); mark the case failed on error."""
        if result.status == "failed":
            return
        name = target.spec.name
        try:
            self.check_alive(target)
            run = self.load(target, case, duration)
            self.check_alive(target)
        except (WrkError, H2loadError, StartError) as exc:
            result.status, result.detail = "failed", str(exc)
            log(f"  {name:<13} {label:<9} failed: {exc}")
            return
        if label != "warm-up":
            result.runs.append(run)
        log(f"  {name:<13} {label:<9} {_describe(run)}")

    def load(
        self, running: RunningTarget, case: CaseSpec, duration: float
    ) -> WrkRun | H2loadRun:
        """One wrk (or, for an HTTP/2 case, h2load) run of ``case`` for ``duration`` seconds."""
        if case.uses_h2load:
            assert self.h2load is not None
            h2 = H2LoadSpec(
                path=case.path,
                scheme=running.spec.scheme,
                duration_s=duration,
                connections=self.args.h2_connections,
                streams=self.args.h2_streams,
            )
            return run_h2load(
                self.manager,
                self.h2load,
                running.port,
                h2,
                self.client_cpu,
                running.measured_pids(),
            )
        load = LoadSpec(
            path=case.path,
            close_connections=case.close_connections,
            duration_s=duration,
            connections=self.args.connections,
            threads=self.args.threads,
        )
        return run_wrk(
            self.manager,
            self.wrk,
            self.script,
            running.port,
            load,
            self.client_cpu,
            running.measured_pids(),
        )

    @staticmethod
    def check_alive(running: RunningTarget) -> None:
        """Raise if the target's process has died."""
        if running.process is not None and not running.process.is_running():
            raise StartError(
                f"{running.spec.name} exited (code {running.process.popen.returncode})",
                running.process.log_tail(),
            )

    def memory_connection_count(self, spec: TargetSpec) -> int:
        """Requested idle connections for ``spec``, capped by what the fd limit allows
        (a TCP proxy needs 2 fds per connection, an HTTP/2 target with no stream 1)."""
        if spec.protocol == H2C:
            requested, limit = self.args.memory_h2_connections, self.ctx.nofile - 128
            fds = "1 fd"
        else:
            requested, limit = self.args.memory_connections, self.ctx.max_proxy_connections - 32
            fds = "2 fds"
        count: int = min(requested, limit)
        if count < requested:
            log(
                f"memory: {requested} connections requested, using {count} "
                f"(RLIMIT_NOFILE is {self.ctx.nofile}; {spec.name} needs {fds} per connection)"
            )
        return count

    def run_memory(self) -> None:
        """The idle-connection memory case for the selected TCP proxies and h2c targets."""
        specs = [spec for spec in self.targets if spec.name in self.args.memory_targets]
        for spec in specs:
            count = self.memory_connection_count(spec)
            log(f"\nmemory: {spec.name} with {count:,} idle connections")
            result: MemoryResult = run_memory_case(
                spec, self.ctx, self.manager, count, self.args.memory_settle, self.client_cpu
            )
            self.results.memory.append(result)
            log(
                f"memory: {spec.name}: {result.status}, {result.detail}, "
                f"per connection {result.kib_per_connection} KiB"
            )


def _describe(run: WrkRun | H2loadRun) -> str:
    cpu = "-" if run.proxy_cpu_percent is None else f"{run.proxy_cpu_percent:.0f}%"
    latency = (
        f"mean {run.mean_ms:.2f} ms, max {run.max_ms:.2f} ms"
        if isinstance(run, H2loadRun)
        else f"p50 {run.p50_ms:.2f} ms, p99 {run.p99_ms:.2f} ms"
    )
    return (
        f"{run.requests_per_s:,.0f} req/s, {run.mib_per_s:,.1f} MiB/s, {latency}, CPU {cpu}, "
        f"errors {run.socket_errors}/{run.status_errors}"
    )


# ----------------------------------------------------------------------- main


def report(harness: Harness, started: float, complete: bool, output: Path) -> None:
    """Print the tables and write the JSON file."""
    results = harness.results
    machine = {**harness.machine, "load_average_at_end": sysinfo.load_average()}
    print()
    print(format_machine_line(machine, harness.settings()))
    print()
    print(format_target_notes(results))
    print()
    print(format_case_tables(results))
    memory_table = format_memory_table(results.memory)
    if memory_table:
        print()
        print(memory_table)
    document = {
        "timestamp": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "complete": complete,
        "elapsed_s": round(time.monotonic() - started, 1),
        **to_json(results, harness.settings(), machine),
    }
    write_json(output, document)
    print(f"\nJSON written to {output}")


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return the process exit code."""
    args = parse_args(argv)
    install_signal_handlers()
    nofile = raise_fd_limit()
    work_dir = Path(tempfile.mkdtemp(prefix="lbtwist-bench-"))
    work_dir.chmod(0o755)  # nginx workers (user nobody) read the payload files
    started = time.monotonic()
    harness: Harness | None = None
    complete = False
    try:
        harness = Harness(args, work_dir, nofile)
        harness.run()
        complete = True
    except KeyboardInterrupt as exc:
        print(f"\ninterrupted ({str(exc) or 'Ctrl-C'}); stopping everything", file=sys.stderr)
    except StartError as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
    finally:
        ignore_signals()
        if harness is not None:
            harness.manager.stop_all()
        if args.keep_temp:
            print(f"configs and logs kept in {work_dir}")
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    if harness is not None and harness.results.statuses:
        report(harness, started, complete, args.output)
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())
