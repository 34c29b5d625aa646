"""
Tests for L{lbtwist.accesslog}: access-log lines written straight to a file.
"""

from __future__ import annotations

import http.client
import os
import socket
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.accesslog import AccessLogFile, httpLine, tcpLine
from lbtwist.config import parseConfig

from .httphelpers import RecordingBackend, httpRequests, waitFor
from .support import Backends, firstLine, inThread, reactor, startBalancer
from .test_http_features import tunnelSession, upgradeAccepted


def read(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


class AccessLogFileTests(SynchronousTestCase):
    """
    Lines are batched, stamped, and all written by the time it stops.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        directory = self.mktemp()
        os.makedirs(directory)
        self.path = os.path.join(directory, "access.log")
        self.log = AccessLogFile(self.path, self.clock, flushAfter=1.0, bufferSize=200)
        self.log.startService()
        self.addCleanup(self.log.close)

    def test_batched(self) -> None:
        """
        A line is written a second after it was logged, not at once.
        """
        self.log.write("one")
        self.assertEqual(read(self.path), [])
        self.clock.advance(1)
        [line] = read(self.path)
        self.assertTrue(line.endswith(" one"))
        self.assertRegex(line.split(" ")[0], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}$")
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_full(self) -> None:
        """
        A full buffer is written at once.
        """
        for i in range(10):
            self.log.write(f"line {i} " + "x" * 20)
        self.assertGreater(len(read(self.path)), 0)
        self.log.stopService()
        self.assertEqual([line.split(" ", 1)[1][:7] for line in read(self.path)],
                         [f"line {i} " for i in range(10)])

    def test_stopFlushes(self) -> None:
        """
        Stopping writes what is pending and leaves no timer; lines logged
        after it (clients finishing during a graceful stop) are written at
        once.
        """
        self.log.write("last")
        self.log.stopService()
        self.assertTrue(read(self.path)[0].endswith(" last"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.log.write("after stop")
        self.assertTrue(read(self.path)[1].endswith(" after stop"))
        self.assertEqual(self.log.lines, 2)

    def test_writeErrors(self) -> None:
        """
        When the file cannot be written the lines are counted as dropped
        and logged about (the count in the right number), and nothing is
        raised to the caller.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        os.close(self.log._fd)  # type: ignore[arg-type]
        self.log._fd = os.open(os.devnull, os.O_RDONLY)
        self.log.write("lost")
        self.log.flush()
        self.assertEqual(self.log.dropped, 1)
        self.assertEqual(len(self.flushLoggedErrors()), 0)
        [said] = [formatEvent(e) for e in events if "lost so far" in e.get("log_format", "")]
        self.assertTrue(said.endswith("; 1 line lost so far"), said)

    def test_reopen(self) -> None:
        """
        After the file is renamed (rotated), reopening starts a new file and
        what was pending goes to the old one.
        """
        self.log.write("before")
        os.rename(self.path, self.path + ".1")
        self.log.open()
        self.log.write("after")
        self.log.stopService()
        self.assertTrue(read(self.path + ".1")[0].endswith(" before"))
        self.assertTrue(read(self.path)[0].endswith(" after"))

    def test_lines(self) -> None:
        """
        The line formats of both modes.
        """
        self.assertEqual(tcpLine("1.2.3.4:5", "b1", 10, 20, 0.5, 1),
                         "1.2.3.4:5 tcp backend=b1 in=10 out=20 0.5000s retries=1")
        self.assertEqual(httpLine("1.2.3.4:5", "GET", "/x", 200, "b1", 10, 20, 0.25, 0),
                         "1.2.3.4:5 GET /x 200 backend=b1 in=10 out=20 0.2500s retries=0 proto=HTTP/1.1")


class SayAndClose(Protocol):
    """
    Says one line and closes.
    """

    def connectionMade(self) -> None:
        self.transport.write(b"hello, then goodbye\n")  # type: ignore[union-attr]
        self.transport.loseConnection()  # type: ignore[union-attr]


class SayAndCloseFactory(Factory):
    """
    Builds L{SayAndClose}.
    """

    protocol = SayAndClose
    noisy = False

    def __init__(self, name: str) -> None:
        self.name = name


def readAll(port: int) -> bytes:
    """
    Connect to C{port} and read until the other side closes.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        data = b""
        while chunk := s.recv(100):
            data += chunk
        return data


class BalancerAccessLogTests(TestCase):
    """
    A pool with C{access-log: PATH} writes one line per connection or request.
    """

    timeout = 30

    def logPath(self) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        return os.path.join(directory, "access.log")

    def startHTTP(self, path: str, backend: RecordingBackend) -> tuple[Any, int]:
        """
        Listen with C{backend} on 127.0.0.1 and start an HTTP-mode balancer
        in front of it logging to C{path}; the balancer and its port.
        """
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(backend.port.stopListening)
        return startBalancer(self, {
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1", "mode": "http"}],
            "pools": {"web": {"access-log": path,
                              "backends": [{"name": "b", "endpoint": backend.endpoint}]}},
        })

    @inlineCallbacks
    def test_tcp(self) -> Any:
        """
        Each TCP connection is one line, written when the balancer stops.
        """
        path = self.logPath()
        backends = Backends(self)
        backends.start("a")
        lb, port = startBalancer(self, {
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1"}],
            "pools": {"web": {"access-log": path,
                              "backends": [{"name": "a", "endpoint": backends.endpoint("a")}]}},
        })
        for _ in range(3):
            yield inThread(firstLine, port)
        yield waitFor(lambda: lb.accessFiles[path].lines == 3)
        yield lb.stopService()
        lines = read(path)
        self.assertEqual(len(lines), 3)
        self.assertIn(" tcp backend=a in=0 out=2 ", lines[0])

    @inlineCallbacks
    def test_tcpBackendClosesFirst(self) -> Any:
        """
        When the backend answers and closes before the client does, the
        line still counts the bytes it sent.
        """
        path = self.logPath()
        backends = Backends(self, SayAndCloseFactory)
        backends.start("a")
        lb, port = startBalancer(self, {
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1"}],
            "pools": {"web": {"access-log": path,
                              "backends": [{"name": "a", "endpoint": backends.endpoint("a")}]}},
        })
        self.assertEqual((yield inThread(readAll, port)), b"hello, then goodbye\n")
        yield waitFor(lambda: lb.accessFiles[path].lines == 1)
        yield lb.stopService()
        self.assertIn(" tcp backend=a in=0 out=20 ", read(path)[0])

    @inlineCallbacks
    def test_http(self) -> Any:
        """
        Each HTTP request is one line with its method, path and status.
        """
        path = self.logPath()
        backend = RecordingBackend("b")
        lb, port = self.startHTTP(path, backend)

        def get() -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            try:
                for p in ("/one", "/two"):
                    conn.request("GET", p)
                    conn.getresponse().read()
                return 2
            finally:
                conn.close()

        yield inThread(get)
        yield lb.stopService()
        lines = read(path)
        self.assertEqual([line.split(" ")[2:5] for line in lines],
                         [["GET", "/one", "200"], ["GET", "/two", "200"]])
        for conn in backend.connections:
            if conn.transport.connected:
                conn.transport.abortConnection()

    @inlineCallbacks
    def test_httpRoutedPools(self) -> Any:
        """
        Behind routes, each request is logged by the access log of the pool
        that served it (none for a pool without one); a request the
        listener answers itself (a redirect) by its own pool's, the first
        route's for a listener with routes only.  A pool added at run time
        logs by its own too.
        """
        paths = {name: self.logPath() for name in ("a", "b", "d")}
        backends = {name: RecordingBackend(name) for name in ("a", "b", "c", "d")}
        for backend in backends.values():
            backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
            self.addCleanup(backend.port.stopListening)

        def pool(name: str, log: bool) -> dict[str, Any]:
            body: dict[str, Any] = {"backends": [{"name": name,
                                                  "endpoint": backends[name].endpoint}]}
            if log:
                body["access-log"] = paths[name]
            return body

        lb, port = startBalancer(self, {
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1",
                           "mode": "http", "routes": [
                               {"name": "a", "match": {"path-prefix": "/a/"}, "pool": "a"},
                               {"name": "b", "match": {"path-prefix": "/b/"}, "pool": "b"},
                               {"name": "c", "match": {"path-prefix": "/c/"}, "pool": "c"},
                               {"name": "d", "match": {"path-prefix": "/d/"}, "pool": "a"},
                               {"name": "r", "redirect": {"scheme": "https"}}]}],
            "pools": {"a": pool("a", True), "b": pool("b", True), "c": pool("c", False)},
        })
        lb.addPool(parseConfig({"listeners": [{"listen": "tcp:0"}],
                                "pools": {"d": pool("d", True)}}).pool("d"))
        routes = list(lb.config.listeners[0].routes)
        routes[3] = parseConfig({
            "listeners": [{"listen": "tcp:0", "mode": "http", "routes": [
                {"name": "d", "match": {"path-prefix": "/d/"}, "pool": "d"}]}],
            "pools": {"d": pool("d", True)}}).listeners[0].routes[0]
        lb.factories["main"].setRoutes(routes, None)  # type: ignore[attr-defined]

        answers = yield httpRequests(port, [("GET", p, None, {}) for p in
                                            ("/a/1", "/b/1", "/c/1", "/d/1", "/elsewhere")])
        self.assertEqual([status for status, _, _ in answers], [200, 200, 200, 200, 302])
        yield lb.stopService()
        logged = {name: [line.split(" ")[3:6] for line in read(path)]
                  for name, path in paths.items()}
        self.assertEqual(logged, {
            "a": [["/a/1", "200", "backend=a"], ["/elsewhere", "302", "backend=None"]],
            "b": [["/b/1", "200", "backend=b"]],
            "d": [["/d/1", "200", "backend=d"]],
        })
        for backend in backends.values():
            for conn in backend.connections:
                if conn.transport.connected:
                    conn.transport.abortConnection()

    @inlineCallbacks
    def test_tcpRoutedPools(self) -> Any:
        """
        Behind TCP routes, each connection is logged by the access log of
        the pool its route chose, not that of the listener's first route.
        """
        path = self.logPath()
        backends = Backends(self)
        backends.start("a")
        backends.start("b")
        lb, port = startBalancer(self, {
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1", "routes": [
                {"name": "far", "match": {"source": "10.0.0.0/8"}, "pool": "a"},
                {"name": "near", "match": {"source": "127.0.0.1"}, "pool": "b"}]}],
            "pools": {"a": {"backends": [{"name": "a", "endpoint": backends.endpoint("a")}]},
                      "b": {"access-log": path,
                            "backends": [{"name": "b", "endpoint": backends.endpoint("b")}]}},
        })
        yield inThread(firstLine, port)
        yield waitFor(lambda: lb.accessFiles[path].lines == 1)
        yield lb.stopService()
        self.assertIn(" tcp backend=b ", read(path)[0])

    @inlineCallbacks
    def test_httpTunnel(self) -> Any:
        """
        An upgraded connection (a WebSocket) is one line, written when the
        tunnel closes, with the tunnel's bytes each way and its lifetime.
        """
        path = self.logPath()
        lb, port = self.startHTTP(path, RecordingBackend("b", upgradeAccepted))
        accessFile = lb.accessFiles[path]
        linesBeforeClose = yield inThread(tunnelSession, port, lambda: accessFile.lines)
        yield waitFor(lambda: accessFile.lines == 1)
        yield lb.stopService()
        [line] = read(path)
        self.assertEqual(linesBeforeClose, 0)
        fields = line.split(" ")
        self.assertEqual(fields[2:8], ["GET", "/ws", "101", "backend=b", "in=9", "out=19"])
        self.assertGreaterEqual(float(fields[8].rstrip("s")), 0.3)
