"""
The README's commands, run for real: C{twistd -n lb ...} and
C{twistd -ny lb.tac} as subprocesses, serving real backends.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from typing import Any

import yaml
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import CannotListenError
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.service import (
    STATUS_PIPE_BYTES,
    CannotStart,
    addressScope,
    cannotListen,
    shortest,
)

from .support import Backends, firstLine, freePort, inThread, sleep, spawn

TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")
ROOT = FilePath(__file__).parent().parent()


class TwistdTests(TestCase):
    """
    Tests of the balancer as users start it.
    """

    timeout = 60

    def spawn(self, *args: str, cwd: str | None = None, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """
        Start twistd in the foreground; it is killed by PID if still running
        when the test ends.
        """
        return spawn(self, [TWISTD, "--nodaemon", "--pidfile=", *args],
                     cwd or _tempdir(self), {**os.environ, **(env or {})})

    @inlineCallbacks
    def waitForPort(self, port: int, process: subprocess.Popen[bytes]) -> Any:
        """
        Wait until C{port} accepts connections, or fail with the log.
        """
        for _ in range(150):
            if process.poll() is not None:
                break
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                yield sleep(0.1)
        process.kill()
        assert process.stdout is not None
        self.fail(f"balancer did not listen on {port}:\n{process.stdout.read().decode()}")

    @inlineCallbacks
    def waitForExit(self, process: subprocess.Popen[bytes], seconds: float = 15) -> Any:
        for _ in range(int(seconds * 10)):
            if process.poll() is not None:
                return process.returncode
            yield sleep(0.1)
        self.fail("process did not exit")

    @inlineCallbacks
    def test_commandLine(self) -> Any:
        """
        The README's command line serves traffic across the backends and
        exits 0 on SIGTERM.
        """
        backends = Backends(self)
        backends.start("a")
        backends.start("b")
        port = freePort()
        process = self.spawn(
            "lb", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--backend", backends.endpoint("a"), "--backend", backends.endpoint("b"),
            "--policy", "leastconn", "--admin", "tcp:0:interface=127.0.0.1",
        )
        yield self.waitForPort(port, process)
        names = set()
        for _ in range(4):
            names.add((yield inThread(firstLine, port)))
        self.assertEqual(names, {b"a", b"b"})
        process.send_signal(signal.SIGTERM)
        code = yield self.waitForExit(process)
        self.assertEqual(code, 0)
        assert process.stdout is not None
        self.assertIn("reactor class: lbtwist.reactor.LeanEPollReactor", process.stdout.read().decode())

    @inlineCallbacks
    def test_tac(self) -> Any:
        """
        C{twistd -ny lb.tac} loads C{lb.yaml} from the working directory.
        """
        backends = Backends(self)
        backends.start("a")
        port = freePort()
        work = FilePath(_tempdir(self))
        work.child("lb.yaml").setContent(yaml.safe_dump({
            "admin": "tcp:0:interface=127.0.0.1",
            "listeners": [{"listen": f"tcp:{port}:interface=127.0.0.1"}],
            "pools": {"web": {"backends": [{"name": "a", "endpoint": backends.endpoint("a")}]}},
        }).encode())
        process = self.spawn("-y", ROOT.child("lb.tac").path, cwd=work.path)
        yield self.waitForPort(port, process)
        line = yield inThread(firstLine, port)
        self.assertEqual(line, b"a")
        process.send_signal(signal.SIGTERM)
        code = yield self.waitForExit(process)
        self.assertEqual(code, 0)

    @inlineCallbacks
    def test_badConfig(self) -> Any:
        """
        A bad config file stops twistd before anything starts, with a
        non-zero exit and one line naming the key.
        """
        work = FilePath(_tempdir(self))
        work.child("lb.yaml").setContent(
            b"listeners: [{listen: 'tcp:0'}]\n"
            b"pools: {web: {backends: [{host: a, port: 1}, {host: b, port: '80x'}]}}\n"
        )
        process = self.spawn("lb", "--config", work.child("lb.yaml").path, cwd=work.path)
        code = yield self.waitForExit(process)
        assert process.stdout is not None
        output = process.stdout.read().decode()
        self.assertNotEqual(code, 0)
        self.assertIn(
            "pools.web.backends[1].port: expected an integer 1-65535, got '80x'", output
        )

    @inlineCallbacks
    def test_portInUse(self) -> Any:
        """
        A listener port already in use is a clear error and a non-zero exit.
        """
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        process = self.spawn(
            "lb", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--backend", "tcp:host=127.0.0.1:port=9", "--admin", "tcp:0:interface=127.0.0.1",
        )
        code = yield self.waitForExit(process)
        assert process.stdout is not None
        output = process.stdout.read().decode()
        self.assertNotEqual(code, 0)
        line = f"listener main cannot listen on tcp:{port}:interface=127.0.0.1: " \
            "Address already in use"
        self.assertTrue(output.rstrip().endswith(line), output)
        self.assertEqual(output.count("cannot listen"), 1, output)
        self.assertNotIn("Traceback", output)

    @inlineCallbacks
    def test_daemonPortInUse(self) -> Any:
        """
        Started as a daemon on a busy port, twistd returns at once with a
        non-zero exit and the reason, and leaves no pid file behind.
        """
        busy = socket.socket()
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.addCleanup(busy.close)
        port = busy.getsockname()[1]
        work = _tempdir(self)
        process = spawn(
            self,
            [TWISTD, "--pidfile=lb.pid", "--logfile=lb.log", "lb",
             "--listen", f"tcp:{port}:interface=127.0.0.1",
             "--backend", "127.0.0.1:9", "--admin", "tcp:0:interface=127.0.0.1"],
            work, dict(os.environ),
        )
        code = yield self.waitForExit(process)
        assert process.stdout is not None
        self.assertEqual(code, 1)
        # The parent shows what the daemon wrote to it, whole (twistd reads
        # 100 bytes of it), in twistd's words as the README quotes them, and
        # the log file has the whole line.
        self.assertRegex(
            process.stdout.read().decode(),
            f"^An error has occurred: b'lbtwist.service.CannotStart: (listener main )?cannot "
            f"listen on 127.0.0.1:{port}: Address already in use'\n"
            "Please look at log file for more information.\n$")
        self.assertFalse(os.path.exists(os.path.join(work, "lb.pid")))
        log = FilePath(work).child("lb.log").getContent().decode()
        self.assertIn(f"listener main cannot listen on tcp:{port}:interface=127.0.0.1: "
                      "Address already in use", log)
        self.assertNotIn("Traceback", log)

    @inlineCallbacks
    def test_usageErrors(self) -> Any:
        """
        A usage error is one line: the reason, then where the help is; not
        the whole usage text before the reason.
        """
        for args, reason in [
            (("lb",), "give --config FILE, or at least one --backend, or --demo"),
            (("lb", "--config", "lb.yaml", "--backend", "127.0.0.1:9"),
             "--backend cannot be combined with --config"),
        ]:
            process = self.spawn(*args)
            code = yield self.waitForExit(process)
            assert process.stdout is not None
            output = process.stdout.read().decode()
            self.assertNotEqual(code, 0)
            self.assertEqual(len(output.splitlines()), 1, output)
            self.assertTrue(output.startswith(f"twistd lb: {reason}"), output)
            self.assertIn("(see twistd lb --help)", output)

    @inlineCallbacks
    def test_demo(self) -> Any:
        """
        C{--demo} runs its backends on free ports and balances over them;
        its hint names the admin address actually bound, and its state file
        is its own, named after its listener.
        """
        port = freePort()
        work = FilePath(_tempdir(self))
        process = self.spawn(
            "--logfile=lb.log", "lb", "--demo", "--listen", f"tcp:{port}:interface=127.0.0.1",
            "--admin", "tcp:0:interface=127.0.0.1", cwd=work.path,
        )
        yield self.waitForPort(port, process)
        names = set()
        for _ in range(3):
            names.add((yield inThread(_get, port)))
        self.assertEqual(names, {b"hello from demo-1", b"hello from demo-2",
                                 b"hello from demo-3"})
        log = ""
        for _ in range(50):
            log = work.child("lb.log").getContent().decode()
            if "demo: backends" in log:
                break
            yield sleep(0.1)
        admin = re.search(r"admin API listening on 127\.0\.0\.1:(\d+)", log)
        assert admin is not None, log
        self.assertIn(f"try 'curl http://127.0.0.1:{port}/' a few times, and open "
                      f"http://127.0.0.1:{admin.group(1)}/ for the dashboard", log)
        self.assertIn(f"accepting on loopback only, 127.0.0.1:{port}", log)
        # Not on the demo's usual port: named after this one, apart from a
        # demo on that port.
        self.assertIn(f"state file {work.path}/lbtwist-demo-tcp-{port}-127.0.0.1.state.json: "
                      "none yet", log)
        process.send_signal(signal.SIGTERM)
        self.assertEqual((yield self.waitForExit(process)), 0)


class StartFailureTests(SynchronousTestCase):
    """
    The line a start failure ends the process with.
    """

    def test_fitsTheDaemonPipe(self) -> None:
        """
        However long the listener's name and endpoint, what twistd writes to
        a daemon's parent (C{"1 "}, the class and the C{str}, 100 bytes at
        most) is whole; the full line is the exit message.
        """
        for what, endpoint in [
            ("listener main", "tcp:8080:interface=127.0.0.1"),
            ("listener " + "x" * 80, "tcp:8080:interface=127.0.0.1"),
            ("listener main", "ssl:8443:privateKey=/etc/ssl/private/" + "k" * 60 + ".pem"),
        ]:
            error = CannotListenError("127.0.0.1", 8080, OSError(98, "Address already in use"))
            failure = cannotListen(what, endpoint, error)
            self.assertEqual(failure.code,
                             f"{what} cannot listen on {endpoint}: Address already in use")
            piped = f"1 lbtwist.service.CannotStart: {failure}"
            self.assertLessEqual(len(piped.encode()), STATUS_PIPE_BYTES, piped)
            self.assertTrue(str(failure).endswith("127.0.0.1:8080: Address already in use"))
        self.assertEqual(str(cannotListen("admin API", "tcp:9000", CannotListenError(
            "", 9000, OSError(98, "Address already in use")))),
            "admin API cannot listen on tcp:9000: Address already in use")

    def test_shortest(self) -> None:
        """
        The first candidate that fits is taken; if none does, the last is cut
        and marked.
        """
        self.assertEqual(shortest(["abcdef", "abc"], 6), "abcdef")
        self.assertEqual(shortest(["abcdef", "abc"], 5), "abc")
        self.assertEqual(shortest(["abcdef", "abcde"], 4), "a...")

    def test_exitsWithTheLine(self) -> None:
        """
        L{CannotStart} is an ordinary exception (twistd reports it to a
        daemon's parent) and a L{SystemExit} whose code is the whole line
        (Python prints it instead of a traceback).
        """
        failure = CannotStart("the whole line", "short")
        self.assertIsInstance(failure, Exception)
        self.assertIsInstance(failure, SystemExit)
        self.assertEqual((failure.code, str(failure)), ("the whole line", "short"))

    def test_addressScope(self) -> None:
        """
        The start-up log says whether a listener serves every interface or
        loopback only.
        """
        self.assertEqual(addressScope("0.0.0.0"), "all interfaces, ")
        self.assertEqual(addressScope("::"), "all interfaces, ")
        self.assertEqual(addressScope("127.0.0.1"), "loopback only, ")
        self.assertEqual(addressScope("::1"), "loopback only, ")
        self.assertEqual(addressScope("10.0.0.5"), "")
        self.assertEqual(addressScope(None), "")


def _get(port: int) -> bytes:
    """
    The body of C{GET /} on a new connection to the loopback C{port}.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    return data.partition(b"\r\n\r\n")[2].strip()


def _tempdir(case: TestCase) -> str:
    path = case.mktemp()
    os.makedirs(path)
    return path
