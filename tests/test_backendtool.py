"""
Tests of the test backend as a command, C{python -m lbtwist.testing.backend}:
what it says about the requests it gets; and of its connection protocol
over a memory transport.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
from typing import IO, Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.testing.backend import ScriptedBackend
from tests.support import inThread


class BackendCommandTests(TestCase):
    """
    The backend run as a process, on 127.0.0.1.
    """

    timeout = 30

    def start(self, *args: str) -> tuple[subprocess.Popen[bytes], IO[bytes], int]:
        """
        Start the backend with C{args}; the process, its standard output
        and the port it listens on.  It is killed (by PID) when the test ends.
        """
        process = subprocess.Popen(
            [sys.executable, "-m", "lbtwist.testing.backend", "--port", "0",
             "--name", "t", *args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )

        def stop() -> None:
            if process.poll() is None:
                os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
            assert process.stdout is not None
            process.stdout.close()

        self.addCleanup(stop)
        assert process.stdout is not None
        line = process.stdout.readline()
        self.assertTrue(line.startswith(b"listening on "), line)
        return process, process.stdout, int(line.split()[-1])

    @staticmethod
    def get(port: int, paths: list[str]) -> list[int]:
        """
        GET each of C{paths} on one connection; their statuses.
        """
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            statuses = []
            for path in paths:
                conn.request("GET", path)
                response = conn.getresponse()
                response.read()
                statuses.append(response.status)
            return statuses
        finally:
            conn.close()

    @inlineCallbacks
    def test_logsToStandardOutput(self) -> Any:
        """
        Without C{--log} every request is one readable line on standard
        output, as the README says.
        """
        process, out, port = self.start()
        statuses = yield inThread(self.get, port, ["/a?id=one", "/b?status=503"])
        self.assertEqual(statuses, [200, 503])
        lines = []
        for _ in range(2):
            lines.append((yield inThread(out.readline)))
        self.assertEqual(lines, [
            b"t #1 GET /a?id=one id=one body=0 connection=1\n",
            b"t #2 GET /b?status=503 id=t-2 body=0 connection=1\n",
        ])

    @inlineCallbacks
    def test_logFile(self) -> Any:
        """
        With C{--log FILE} every request is a JSON line in that file, and
        standard output says nothing after the port (the chaos tests read
        only that line from a pipe they never drain).
        """
        path = os.path.abspath(self.mktemp())
        process, out, port = self.start("--log", path)
        statuses = yield inThread(self.get, port, ["/x?id=7"])
        self.assertEqual(statuses, [200])
        os.kill(process.pid, signal.SIGKILL)
        yield inThread(process.wait, 10)
        self.assertEqual((yield inThread(out.read)), b"")
        with open(path, encoding="utf-8") as f:
            [record] = [json.loads(line) for line in f]
        self.assertEqual((record["backend"], record["path"], record["id"]), ("t", "/x?id=7", "7"))


class UpgradeIgnoredTests(SynchronousTestCase):
    """
    An C{Upgrade} the backend does not do is ignored: the request is
    answered over HTTP/1.1 (curl --http2 sends C{Upgrade: h2c}).
    """

    H2C = (b"GET /one HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
           b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n")

    def answers(self, *pieces: bytes) -> tuple[list[str], StringTransport, ScriptedBackend]:
        """
        Feed C{pieces} to one connection of a backend named C{t}; the
        status lines it answered with, its transport and the backend.
        """
        backend = ScriptedBackend("t", Clock())
        transport = StringTransport()
        proto = backend.buildProtocol(None)
        proto.makeConnection(transport)
        for piece in pieces:
            proto.dataReceived(piece)
        lines = [line.decode() for line in re.findall(rb"HTTP/1\.1 [0-9]{3} [^\r]*",
                                                      transport.value())]
        return lines, transport, backend

    def test_upgradeAnswered(self) -> None:
        """
        The request asking for h2c (or a WebSocket) is answered with a 200
        and the connection stays open for the next request, in the same
        read or a later one.
        """
        websocket = (b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
                     b"Upgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        nextOne = b"GET /two HTTP/1.1\r\nHost: a\r\n\r\n"
        for pieces in [(self.H2C,), (self.H2C + nextOne,), (self.H2C, nextOne),
                       (websocket + nextOne,)]:
            with self.subTest(pieces=pieces):
                lines, transport, backend = self.answers(*pieces)
                self.assertEqual(lines, ["HTTP/1.1 200 OK"] * len(backend.requests))
                self.assertEqual(len(backend.requests), 1 + (nextOne in b"".join(pieces)))
                self.assertEqual(backend.malformed, 0)
                self.assertFalse(transport.disconnecting)
                self.assertNotIn(b"101", transport.value())
