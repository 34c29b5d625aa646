"""
The chaos suite's harness: backend and balancer processes stopped by PID,
a blocking HTTP client that classifies every outcome, bounded load loops,
and a process's file descriptors and memory.

Everything talks to 127.0.0.1 only, and every loop is bounded in count and
in time.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import attrs
import yaml
from httptools import HttpParserError, HttpResponseParser
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from lbtwist.testing.backend import RecordedRequest, readLog
from tests.support import inThread, sleep

PYTHON = sys.executable
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
TOKEN = "chaos-token"


def procStats(pid: int) -> tuple[int, int]:
    """
    The open file descriptors and the resident memory (KiB) of process C{pid}.
    """
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return fds, rss


class BackendProcess:
    """
    A L{lbtwist.testing.backend} in its own process, which a test may kill,
    freeze, thaw and start again on the same port.
    """

    def __init__(self, case: TestCase, workdir: str, name: str, *args: str) -> None:
        self.case = case
        self.name = name
        self.args = args
        self.logPath = os.path.join(workdir, f"backend-{name}.jsonl")
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.frozen = False
        case.addCleanup(self.kill)

    def start(self) -> Any:
        """
        Start the process (on its old port if it had one); fires once it
        listens.
        """
        self.process = subprocess.Popen(
            [PYTHON, "-m", "lbtwist.testing.backend", "--port", str(self.port),
             "--name", self.name, "--log", self.logPath, *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )
        return inThread(self._waitListening)

    def _waitListening(self) -> int:
        assert self.process is not None and self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith(b"listening on "):
            raise AssertionError(f"backend {self.name} did not start: {line!r}")
        self.port = int(line.split()[-1])
        return self.port

    @property
    def endpoint(self) -> str:
        """
        The balancer's client endpoint string for this backend.
        """
        return f"tcp:host=127.0.0.1:port={self.port}"

    def signal(self, signum: int) -> None:
        """
        Send C{signum} to the process, by its PID.
        """
        assert self.process is not None
        os.kill(self.process.pid, signum)

    def freeze(self) -> None:
        """
        C{SIGSTOP}: it still accepts connections (the kernel does) but
        never answers.
        """
        self.signal(signal.SIGSTOP)
        self.frozen = True

    def thaw(self) -> None:
        """
        C{SIGCONT}.
        """
        self.signal(signal.SIGCONT)
        self.frozen = False

    def kill(self) -> None:
        """
        C{SIGKILL} by PID, and reap it.
        """
        p = self.process
        if p is not None and p.poll() is None:
            if self.frozen:
                os.kill(p.pid, signal.SIGCONT)
                self.frozen = False
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
        if p is not None and p.stdout is not None:
            p.stdout.close()

    def requests(self) -> list[RecordedRequest]:
        """
        Every request it recorded, over all its lives.
        """
        return readLog(self.logPath)


# Run argv[2:] with at most argv[1] open files (as `ulimit -n` would).
_LIMITED = (
    "import os, resource, sys\n"
    "n = int(sys.argv[1])\n"
    "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def cpuSeconds(pid: int) -> float:
    """
    The CPU time (user and system) process C{pid} has used so far.
    """
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BalancerProcess:
    """
    One C{twistd -n lb} process with a configuration file written here.

    @ivar maxFiles: if set, the process's limit of open files (C{ulimit -n}).
    """

    def __init__(self, case: TestCase, workdir: str, grace: float = 10.0,
                 maxFiles: int | None = None) -> None:
        self.case = case
        self.workdir = workdir
        self.grace = grace
        self.maxFiles = maxFiles
        self.process: subprocess.Popen[bytes] | None = None
        self.logPath = os.path.join(workdir, "lb.log")
        self.port = 0
        self.admin = 0
        case.addCleanup(self.kill)

    def writeConfig(self, pools: dict[str, Any], mode: str = "http", **top: Any) -> None:
        """
        Write C{lb.yaml}: one listener on an ephemeral port for the first of
        C{pools}, an admin API, and C{top}-level keys.
        """
        data: dict[str, Any] = {
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1",
                           "mode": mode}],
            "admin": "tcp:0:interface=127.0.0.1",
            "pools": pools,
            **top,
        }
        with open(os.path.join(self.workdir, "lb.yaml"), "w") as f:
            yaml.safe_dump(data, f)

    @inlineCallbacks
    def start(self) -> Any:
        """
        Start the process and wait until it says where it listens.
        """
        import re

        if os.path.exists(self.logPath):
            os.unlink(self.logPath)
        command = [TWISTD, "-n", "--pidfile=", f"--logfile={self.logPath}", "lb",
                   "--config", "lb.yaml", "--grace", str(self.grace)]
        if self.maxFiles is not None:
            command = [PYTHON, "-c", _LIMITED, str(self.maxFiles), *command]
        self.process = subprocess.Popen(
            command,
            cwd=self.workdir, env=dict(os.environ, LBTWIST_ADMIN_TOKEN=TOKEN),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        # The last number on the line: "...port=8080)" or "...:8080".
        portRE = re.compile(r"(\d+)\)?\s*$")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            listener = self.logLine("accepting on")
            admin = self.logLine("admin API listening on")
            if listener and admin:
                self.port = int(portRE.findall(listener)[-1])
                self.admin = int(portRE.findall(admin)[-1])
                return
            if self.process.poll() is not None:
                break
            yield sleep(0.1)
        self.kill()
        raise AssertionError(f"twistd did not start: {self.log()}")

    def log(self) -> str:
        """
        The log so far.
        """
        try:
            with open(self.logPath, encoding="utf-8") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def logLine(self, text: str) -> str | None:
        """
        The last log line containing C{text}, if any.
        """
        lines = [line for line in self.log().splitlines() if text in line]
        return lines[-1] if lines else None

    @property
    def pid(self) -> int:
        """
        The process id.
        """
        assert self.process is not None
        return self.process.pid

    def signal(self, signum: int) -> None:
        """
        Send C{signum} to the balancer, by its PID.
        """
        os.kill(self.pid, signum)

    def alive(self) -> bool:
        """
        Whether the process still runs.
        """
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """
        Make sure the process is gone (SIGKILL by PID) and reaped.
        """
        p = self.process
        if p is not None and p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)

    def api(self, method: str, path: str, body: object = None) -> Any:
        """
        Call the admin API (in a thread); fires with C{(status, json)}.
        """
        import http.client
        import json

        def call() -> tuple[int, Any]:
            conn = http.client.HTTPConnection("127.0.0.1", self.admin, timeout=10)
            try:
                data = None if body is None else json.dumps(body).encode()
                conn.request(method, path, body=data, headers={
                    "Authorization": f"Bearer {TOKEN}", "Connection": "close"})
                r = conn.getresponse()
                return r.status, json.loads(r.read() or b"null")
            finally:
                conn.close()

        return inThread(call)


# -- a client that classifies every outcome ---------------------------------


@attrs.frozen
class Outcome:
    """
    What one request got.

    @ivar kind: C{ok} (a complete response, any status), C{truncated} (a
        response began and was cut short), C{closed} (the connection ended
        with no response), C{refused} (no connection) or C{hang} (nothing
        ended within the client's timeout).
    """

    kind: str
    status: int
    elapsed: float
    requestId: str
    backend: str = ""
    bodyLength: int = 0
    started: float = 0.0


class _Response:
    """
    Collects a response from llhttp's callbacks.
    """

    def __init__(self) -> None:
        self.headersDone = False
        self.complete = False
        self.body = 0
        self.backend = b""
        self._name = b""

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"x-backend":
            self.backend = value

    def on_headers_complete(self) -> None:
        self.headersDone = True

    def on_body(self, body: bytes) -> None:
        self.body += len(body)

    def on_message_complete(self) -> None:
        self.complete = True


_ids = iter(range(10**12))
_idLock = threading.Lock()


def newId(prefix: str = "r") -> str:
    """
    A request id unique in this process.
    """
    with _idLock:
        return f"{prefix}{next(_ids)}"


def fetch(port: int, path: str = "/", method: str = "GET", body: bytes | None = None,
          timeout: float = 10.0, requestId: str | None = None) -> Outcome:
    """
    One request over a new connection to 127.0.0.1:C{port}; its outcome.
    """
    requestId = requestId or newId()
    started = time.monotonic()
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: chaos\r\nX-Request-Id: {requestId}\r\n"
        "Connection: close\r\n"
    ).encode()
    if body is not None:
        head += b"Content-Length: %d\r\n" % len(body)
    data = head + b"\r\n" + (body or b"")
    response = _Response()
    parser = HttpResponseParser(response)
    got = 0

    def outcome(kind: str) -> Outcome:
        status = parser.get_status_code() if response.headersDone else 0
        return Outcome(kind, status, time.monotonic() - started, requestId,
                       response.backend.decode("latin-1"), response.body, started)

    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return outcome("refused")
    try:
        s.sendall(data)
        while not response.complete:
            remaining = timeout - (time.monotonic() - started)
            if remaining <= 0:
                return outcome("hang")
            s.settimeout(remaining)
            chunk = s.recv(65536)
            if not chunk:
                if got == 0:
                    return outcome("closed")
                try:
                    parser.feed_data(b"")
                except HttpParserError:
                    pass
                break
            got += len(chunk)
            parser.feed_data(chunk)
    except TimeoutError:
        return outcome("hang")
    except (ConnectionResetError, BrokenPipeError):
        return outcome("closed" if got == 0 else "truncated")
    except HttpParserError:
        return outcome("truncated")
    finally:
        s.close()
    return outcome("ok" if response.complete else "truncated")


def runLoad(port: int, workers: int, duration: float, maxRequests: int,
            request: Callable[[int, int], Outcome]) -> list[Outcome]:
    """
    Send requests from C{workers} threads for C{duration} seconds or until
    C{maxRequests} are sent, whichever comes first.

    @param request: makes one request, given the worker and its count.
    @return: every outcome.
    """
    deadline = time.monotonic() + duration
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    sent = [0]

    def work(n: int) -> None:
        i = 0
        while time.monotonic() < deadline:
            with lock:
                if sent[0] >= maxRequests:
                    return
                sent[0] += 1
            o = request(n, i)
            i += 1
            with lock:
                outcomes.append(o)

    threads = [threading.Thread(target=work, args=(n,), daemon=True) for n in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 60)
    return outcomes


def load(port: int, workers: int, duration: float, maxRequests: int,
         request: Callable[[int, int], Outcome]) -> Any:
    """
    L{runLoad} in a thread; fires with the outcomes.
    """
    return inThread(runLoad, port, workers, duration, maxRequests, request)


def summary(outcomes: Iterable[Outcome]) -> dict[str, int]:
    """
    Count outcomes by kind, and complete responses by status.
    """
    counts: collections.Counter[str] = collections.Counter()
    for o in outcomes:
        counts[o.kind if o.kind != "ok" else f"ok:{o.status}"] += 1
    return dict(counts)


def duplicates(requests: Iterable[RecordedRequest]) -> dict[str, int]:
    """
    The request ids recorded more than once, with their counts.
    """
    counts = collections.Counter(r.id for r in requests)
    return {k: v for k, v in counts.items() if v > 1}


def report(case: TestCase, name: str, **figures: Any) -> None:
    """
    Write a scenario's measured figures, for the suite's report: to stderr
    when C{LBTWIST_CHAOS_REPORT} is set, and appended to the file named by
    C{LBTWIST_CHAOS_FIGURES} when that is set.
    """
    line = f"chaos {name}: " + ", ".join(f"{k}={v}" for k, v in figures.items())
    if os.environ.get("LBTWIST_CHAOS_REPORT"):
        sys.stderr.write(line + "\n")
    path = os.environ.get("LBTWIST_CHAOS_FIGURES")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")
