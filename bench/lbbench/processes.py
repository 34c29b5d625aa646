"""Child process management: start (pinned, with an fd limit), wait, measure, stop.

Every process the harness starts goes through :class:`ProcessManager`, which
remembers it by PID so that :meth:`ProcessManager.stop_all` can end it on normal
exit, on an exception and on Ctrl-C.  Each child runs in its own session (and so
its own process group, whose id is the child's PID); stopping sends SIGTERM to
the child, waits, then SIGKILLs the child's own process group, which also
catches workers it forked (nginx).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class StartError(RuntimeError):
    """A target process did not come up (exited early or never listened).

    The message ends with the last line of the process's output (for a Python
    traceback, the exception); ``log_tail`` keeps more of it for the JSON.
    """

    def __init__(self, message: str, log_tail: str = "") -> None:
        last_line = log_tail.strip().splitlines()[-1] if log_tail.strip() else "(no output)"
        super().__init__(f"{message}: {last_line}")
        self.log_tail = log_tail


@dataclass
class ManagedProcess:
    """A child process started by :class:`ProcessManager`."""

    name: str
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        """PID of the started program (taskset and prlimit exec into it)."""
        return self.popen.pid

    def is_running(self) -> bool:
        """True while the process has not exited."""
        return self.popen.poll() is None

    def log_tail(self, max_chars: int = 2000) -> str:
        """Last characters of the process's combined stdout/stderr log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return text[-max_chars:].strip()


@dataclass
class ProcessManager:
    """Starts child processes and guarantees they are stopped again."""

    log_dir: Path
    nofile: int | None = None
    processes: list[ManagedProcess] = field(default_factory=list)

    def command(self, argv: Sequence[str], cpu: int | None, raise_nofile: bool) -> list[str]:
        """Wrap ``argv`` with ``taskset`` (CPU pinning) and ``prlimit`` (fd limit)."""
        wrapped = list(argv)
        if raise_nofile and self.nofile is not None:
            wrapped = ["prlimit", f"--nofile={self.nofile}:{self.nofile}", *wrapped]
        if cpu is not None:
            wrapped = ["taskset", "-c", str(cpu), *wrapped]
        return wrapped

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None = None,
        raise_nofile: bool = False,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> ManagedProcess:
        """Start ``argv`` in the background, logging its output to ``log_dir/name.log``."""
        full_argv = self.command(argv, cpu, raise_nofile)
        log_path = self.log_dir / f"{name}.log"
        with open(log_path, "wb") as log_file:
            popen = subprocess.Popen(
                full_argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        process = ManagedProcess(name, full_argv, popen, log_path)
        self.processes.append(process)
        return process

    def run(
        self,
        name: str,
        argv: Sequence[str],
        *,
        cpu: int | None = None,
        timeout: float,
    ) -> tuple[int, str]:
        """Run ``argv`` to completion (bounded by ``timeout``); return (exit code, output)."""
        process = self.start(name, argv, cpu=cpu)
        try:
            returncode = process.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.stop(process)
            return -1, process.log_tail(4000) + f"\n(timed out after {timeout:.0f}s)"
        self.processes.remove(process)
        return returncode, process.log_path.read_text(errors="replace")

    def stop(self, process: ManagedProcess, timeout: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the process, then SIGKILL it and its process group after ``timeout``."""
        if process.is_running():
            _send(process.pid, signal.SIGTERM)
            try:
                process.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _send(process.pid, signal.SIGKILL)
                process.popen.wait(timeout=timeout)
        _kill_leftover_group(process.pid, timeout)
        if process in self.processes:
            self.processes.remove(process)

    def stop_all(self) -> None:
        """Stop every process still tracked, newest first."""
        for process in reversed(list(self.processes)):
            try:
                self.stop(process)
            except (OSError, subprocess.TimeoutExpired) as exc:
                print(f"warning: could not stop {process.name} (pid {process.pid}): {exc}")


def _send(pid: int, sig: signal.Signals) -> None:
    """Send ``sig`` to ``pid``, ignoring a process that is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """True while any process is left in process group ``pgid``."""
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _kill_leftover_group(pgid: int, timeout: float) -> None:
    """End processes left in our child's own process group (e.g. orphaned workers)."""
    if not _group_alive(pgid):
        return
    os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _group_alive(pgid):
            return
        time.sleep(POLL_INTERVAL_S)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host`` (picked by binding to port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def is_listening(port: int, host: str = "127.0.0.1") -> bool:
    """True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_listening(process: ManagedProcess, port: int, timeout: float) -> None:
    """Wait until ``port`` accepts connections; raise :class:`StartError` otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.is_running():
            raise StartError(
                f"{process.name} exited with code {process.popen.returncode}",
                process.log_tail(),
            )
        if is_listening(port):
            return
        time.sleep(POLL_INTERVAL_S)
    raise StartError(
        f"{process.name} not listening on port {port} after {timeout:.0f}s", process.log_tail()
    )


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (field 3, the state, first)."""
    with open(f"/proc/{pid}/stat") as stat_file:
        text = stat_file.read()
    return text[text.rindex(")") + 2 :].split()


def children_of(pid: int) -> list[int]:
    """PIDs of the direct children of ``pid``."""
    children = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if int(_stat_fields(int(entry))[1]) == pid:
                children.append(int(entry))
        except (OSError, ValueError, IndexError):
            continue
    return children


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its live descendants (bounded depth)."""
    tree = [pid]
    frontier = [pid]
    for _depth in range(4):
        frontier = [child for parent in frontier for child in children_of(parent)]
        if not frontier:
            break
        tree.extend(frontier)
    return tree


def cpu_ticks(pids: Iterable[int]) -> int:
    """Sum of utime + stime (in clock ticks) of ``pids``, all threads included."""
    total = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total


def rss_kib(pids: Iterable[int]) -> int:
    """Sum of the resident set sizes (VmRSS, KiB) of ``pids``."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as status_file:
                for line in status_file:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


class CpuMeter:
    """Measures the CPU used by a fixed set of processes over a wall-clock interval."""

    def __init__(self, pids: Sequence[int]) -> None:
        self.pids = list(pids)
        self._start_ticks = 0
        self._start_time = 0.0

    def start(self) -> None:
        """Take the starting sample."""
        self._start_ticks = cpu_ticks(self.pids)
        self._start_time = time.monotonic()

    def stop(self) -> float:
        """Return the CPU use since :meth:`start`, in percent of one core."""
        elapsed = time.monotonic() - self._start_time
        used_s = (cpu_ticks(self.pids) - self._start_ticks) / CLOCK_TICKS
        return 100.0 * used_s / elapsed if elapsed > 0 else 0.0


@dataclass(frozen=True)
class MeasuredRun:
    """A load generator's run: exit code, output, the measured processes' CPU
    (percent of one core; None when none were measured) and wall time."""

    returncode: int
    output: str
    cpu_percent: float | None
    wall_s: float


def run_measured(
    manager: ProcessManager,
    name: str,
    argv: Sequence[str],
    cpu: int | None,
    measured_pids: Sequence[int],
    timeout: float,
) -> MeasuredRun:
    """Run ``argv`` to completion (pinned to ``cpu``, bounded by ``timeout``) while
    measuring the CPU used by ``measured_pids``."""
    meter = CpuMeter(measured_pids)
    meter.start()
    started = time.monotonic()
    returncode, output = manager.run(name, argv, cpu=cpu, timeout=timeout)
    cpu_percent = meter.stop() if measured_pids else None
    return MeasuredRun(returncode, output, cpu_percent, round(time.monotonic() - started, 3))
