"""
Tests for L{lbtwist.accesslog}: access-log lines written straight to a file.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from lbtwist.accesslog import (
    AccessLogFile,
    PoolAccessLog,
    combinedHTTPLine,
    combinedTCPLine,
    fileSink,
    httpLine,
    jsonHTTPLine,
    jsonTCPLine,
    nginxTime,
    nginxValue,
    rfc3339Parts,
    splitClient,
    tcpLine,
)
from lbtwist.config import ConfigError, parseConfig
from lbtwist.diff import runnable

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


# The NCSA combined line nginx writes by default, and lbtwist's extras.
COMBINED = re.compile(
    r'^(?P<addr>\S+) - - \[(?P<time>\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d [+-]\d{4})\] '
    r'"(?P<request>(?:[^"\\]|\\x[0-9A-F]{2})*)" (?P<status>\d{3}) (?P<bytes>\d+) '
    r'"(?P<referer>(?:[^"\\]|\\x[0-9A-F]{2})*)" "(?P<agent>(?:[^"\\]|\\x[0-9A-F]{2})*)" '
    r'backend="(?P<backend>[^"]*)" rt=(?P<rt>\d+\.\d{3})$')


def localTime(offset: int) -> time.struct_time:
    """
    29 Nov 2026 06:05:09 at UTC offset C{offset} seconds (a Sunday).
    """
    return time.struct_time((2026, 11, 29, 6, 5, 9, 6, 333, 0),
                            {"tm_gmtoff": offset, "tm_zone": "X"})  # type: ignore[call-arg]


class LineFormatTests(SynchronousTestCase):
    """
    The formats' pure functions, as tables.
    """

    def test_splitClient(self) -> None:
        """
        A client's address splits into host and port (an IPv6 host
        unbracketed); one without a port (a UNIX socket's) keeps no port.
        """
        cases = [
            ("127.0.0.1:5555", ("127.0.0.1", 5555)),
            ("::1:80", ("::1", 80)),
            ("[::1]:80", ("::1", 80)),
            ("/run/lb.sock", ("/run/lb.sock", None)),
            ("host:name", ("host:name", None)),
            (":80", (":80", None)),
        ]
        self.assertEqual([(c, splitClient(c)) for c, _ in cases], cases)

    def test_times(self) -> None:
        """
        RFC 3339 (the milliseconds go between the two parts; C{Z} for UTC)
        and nginx's C{$time_local}, at several offsets.
        """
        cases = [
            (0, ("2026-11-29T06:05:09", "Z"), "29/Nov/2026:06:05:09 +0000"),
            (3600, ("2026-11-29T06:05:09", "+01:00"), "29/Nov/2026:06:05:09 +0100"),
            (19800, ("2026-11-29T06:05:09", "+05:30"), "29/Nov/2026:06:05:09 +0530"),
            (-36000, ("2026-11-29T06:05:09", "-10:00"), "29/Nov/2026:06:05:09 -1000"),
        ]
        got = [(o, rfc3339Parts(localTime(o)), nginxTime(localTime(o))) for o, _, _ in cases]
        self.assertEqual(got, cases)

    def test_nginxValue(self) -> None:
        """
        Values are escaped as nginx escapes variables: quotes, backslashes,
        control bytes and bytes above 0x7e as C{\\xHH}; none or an empty
        one is C{-}.
        """
        cases = [
            (None, "-"),
            ("", "-"),
            ("curl/8.5.0", "curl/8.5.0"),
            ('say "hi"', "say \\x22hi\\x22"),
            ("a\\b", "a\\x5Cb"),
            ("line\r\nnext\x00\x7f", "line\\x0D\\x0Anext\\x00\\x7F"),
            ("caf\xc3\xa9", "caf\\xC3\\xA9"),
        ]
        self.assertEqual([(v, nginxValue(v)) for v, _ in cases], cases)

    def test_json(self) -> None:
        """
        A JSON line is one object with the stable fields, on one line
        whatever the path holds (quotes, backslashes, control bytes,
        Latin-1 bytes); a TCP connection has its own fields.
        """
        stamp = "2026-11-29T06:05:09.123Z"
        paths = ["/x", '/a"b\\c', "/nl\r\nGET /smuggled\x00\x1b[31m", "/caf\xc3\xa9"]
        for path in paths:
            line = jsonHTTPLine(stamp, "web", "127.0.0.1:5555", "GET", path, 200, "a",
                                3, 1024, 0.0012345678, 1, "HTTP/1.1")
            self.assertNotIn("\n", line)
            self.assertNotIn("\r", line)
            self.assertEqual(json.loads(line), {
                "time": stamp, "type": "http", "pool": "web", "client": "127.0.0.1",
                "client_port": 5555, "method": "GET", "path": path, "protocol": "HTTP/1.1",
                "status": 200, "backend": "a", "bytes_in": 3, "bytes_out": 1024,
                "duration": 0.001235, "retries": 1,
            })
        self.assertEqual(
            jsonHTTPLine(stamp, None, "/run/lb.sock", "HEAD", "/", 503, None, 0, 0, 0.5, 0,
                         "HTTP/2"),
            '{"time":"2026-11-29T06:05:09.123Z","type":"http","pool":null,'
            '"client":"/run/lb.sock","client_port":null,"method":"HEAD","path":"/",'
            '"protocol":"HTTP/2","status":503,"backend":null,"bytes_in":0,"bytes_out":0,'
            '"duration":0.5,"retries":0}')
        self.assertEqual(
            jsonTCPLine(stamp, "db", "::1:40000", "pg1", 10, 20, 1.5, 2),
            '{"time":"2026-11-29T06:05:09.123Z","type":"tcp","pool":"db","client":"::1",'
            '"client_port":40000,"backend":"pg1","bytes_in":10,"bytes_out":20,'
            '"duration":1.5,"retries":2}')

    def test_combined(self) -> None:
        """
        A combined line is nginx's, with the real Referer and User-Agent
        (C{-} without them), escaped so that it stays one line that the
        combined regular expression reads; then the backend and the time
        taken.  A TCP connection's is in the same shape.
        """
        stamp = "29/Nov/2026:06:05:09 +0000"
        cases = [
            (("127.0.0.1:5555", "GET", "/x?q=1", "HTTP/1.1", 200, 2, "https://a/", "curl/8",
              "a", 0.0012),
             '127.0.0.1 - - [29/Nov/2026:06:05:09 +0000] "GET /x?q=1 HTTP/1.1" 200 2 '
             '"https://a/" "curl/8" backend="a" rt=0.001'),
            (("::1:80", "POST", '/a"b', "HTTP/2", 502, 0, None, "", None, 1.5),
             '::1 - - [29/Nov/2026:06:05:09 +0000] "POST /a\\x22b HTTP/2" 502 0 '
             '"-" "-" backend="-" rt=1.500'),
            (("10.0.0.1:1", "GET", "/\r\n", "HTTP/1.1", 404, 9, 'r"\\', "ua\n", "b", 0.0),
             '10.0.0.1 - - [29/Nov/2026:06:05:09 +0000] "GET /\\x0D\\x0A HTTP/1.1" 404 9 '
             '"r\\x22\\x5C" "ua\\x0A" backend="b" rt=0.000'),
        ]
        got = [(args, combinedHTTPLine(stamp, *args)) for args, _ in cases]  # type: ignore[arg-type]
        self.assertEqual(got, cases)
        for _, line in cases:
            self.assertIsNotNone(COMBINED.match(line), line)
        tcp = [combinedTCPLine(stamp, "127.0.0.1:5", "a", 20, 0.25),
               combinedTCPLine(stamp, "127.0.0.1:5", None, 0, 3.0)]
        self.assertEqual(tcp, [
            '127.0.0.1 - - [29/Nov/2026:06:05:09 +0000] "TCP" 200 20 "-" "-" '
            'backend="a" rt=0.250',
            '127.0.0.1 - - [29/Nov/2026:06:05:09 +0000] "TCP" 502 0 "-" "-" '
            'backend="-" rt=3.000'])
        for line in tcp:
            self.assertIsNotNone(COMBINED.match(line), line)


class FileFormatTests(SynchronousTestCase):
    """
    The file sink writes its format's lines, stamped with the clock's time;
    a pool's view names the pool.
    """

    def sink(self, format: str, **options: Any) -> tuple[AccessLogFile, Clock, str]:
        clock = Clock()
        clock.advance(1_795_932_309.0625)
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "access.log")
        sink = fileSink({"path": path, "format": format, **options}, clock)
        sink.startService()
        self.addCleanup(sink.close)
        return sink, clock, path

    def test_json(self) -> None:
        """
        C{format: json}: each line is a JSON object whose time is the
        clock's, in RFC 3339 to the millisecond, local time; a pool's view
        names its pool, the sink itself none.
        """
        sink, clock, path = self.sink("json")
        view = sink.forPool("web")
        self.assertIsInstance(view, PoolAccessLog)
        view.request("127.0.0.1:5555", "GET", '/q"\n', 200, "a", 0, 2, 0.25, 0)
        clock.advance(0.5)
        view.connection("127.0.0.1:5556", "b", 1, 2, 3.0, 1)
        sink.request("127.0.0.1:5557", "GET", "/", 404, None, 0, 0, 0.0, 0, "HTTP/2")
        sink.stopService()
        records = [json.loads(line) for line in read(path)]
        tm = time.localtime(1_795_932_309)
        prefix, zone = rfc3339Parts(tm)
        self.assertEqual([r["time"] for r in records],
                         [f"{prefix}.062{zone}", f"{prefix}.562{zone}", f"{prefix}.562{zone}"])
        self.assertEqual([(r["type"], r["pool"], r["client_port"]) for r in records],
                         [("http", "web", 5555), ("tcp", "web", 5556), ("http", None, 5557)])
        self.assertEqual(records[0]["path"], '/q"\n')
        self.assertEqual(records[2]["protocol"], "HTTP/2")

    def test_combined(self) -> None:
        """
        C{format: combined}: nginx's line, its time the clock's local time,
        with the Referer and User-Agent it is given.
        """
        sink, clock, path = self.sink("combined")
        sink.forPool("web").request("127.0.0.1:5555", "GET", "/x", 200, "a", 0, 2, 0.25, 0,
                                    referer="https://a/", userAgent="curl/8.5.0")
        sink.request("127.0.0.1:5555", "GET", "/y", 200, "a", 0, 2, 0.25, 0)
        sink.stopService()
        stamp = nginxTime(time.localtime(1_795_932_309))
        self.assertEqual(read(path), [
            f'127.0.0.1 - - [{stamp}] "GET /x HTTP/1.1" 200 2 "https://a/" "curl/8.5.0" '
            'backend="a" rt=0.250',
            f'127.0.0.1 - - [{stamp}] "GET /y HTTP/1.1" 200 2 "-" "-" backend="a" rt=0.250'])

    def test_text(self) -> None:
        """
        C{format: text} (the default) is lbtwist's own line, a pool's view
        no different.
        """
        sink, _, path = self.sink("text")
        sink.forPool("web").request("1.2.3.4:5", "GET", "/x", 200, "b1", 10, 20, 0.25, 0)
        sink.stopService()
        [line] = read(path)
        self.assertEqual(line.split(" ", 1)[1], httpLine("1.2.3.4:5", "GET", "/x", 200, "b1",
                                                         10, 20, 0.25, 0))
        self.assertEqual(fileSink({"path": path}, Clock()).format, "text")


class FileSinkOptionTests(SynchronousTestCase):
    """
    The file sink's C{format} option: checked by the sink and, with the key
    named, by the configuration.
    """

    def config(self, accessLog: object) -> Any:
        return parseConfig({"listeners": [{"listen": "tcp:80", "mode": "http"}],
                            "pools": {"web": {"access-log": accessLog,
                                              "backends": ["127.0.0.1:1"]}}},
                           directory="/var/log")

    def test_unknownFormat(self) -> None:
        """
        An unknown format is refused, naming the key and the formats.
        """
        e = self.assertRaises(ConfigError, self.config,
                              {"sink": "file", "path": "a.log", "format": "nginx"})
        self.assertEqual(str(e), "pools.web.access-log.format: expected one of text, json, "
                                 "combined, got 'nginx'")
        e = self.assertRaises(ConfigError, self.config,
                              {"sink": "file", "path": "a.log", "format": 1})
        self.assertTrue(str(e).startswith("pools.web.access-log.format: expected one of"))
        self.assertRaises(ValueError, fileSink, {"path": "a.log", "format": "xml"}, Clock())
        self.assertRaises(ValueError, fileSink, {"path": "a.log", "level": "x"}, Clock())

    def test_formats(self) -> None:
        """
        Each format is taken; C{format: text} is the same sink as
        C{access-log: PATH}.
        """
        sinks = {f: self.config({"sink": "file", "path": "a.log", "format": f}).pools[0]
                 .accessLogSink for f in ("text", "json", "combined")}
        self.assertEqual(sinks["text"], self.config("a.log").pools[0].accessLogSink)
        self.assertEqual(dict(sinks["json"].options),
                         {"path": "/var/log/a.log", "format": "json"})
        self.assertEqual(dict(sinks["combined"].options)["format"], "combined")

    def test_oneFormatPerFile(self) -> None:
        """
        Pools may share a file in one format, not in two.
        """
        def pools(first: str, second: str) -> Any:
            return parseConfig({
                "listeners": [{"listen": "tcp:80", "mode": "http", "pool": "a"}],
                "pools": {name: {"access-log": {"sink": "file", "path": "a.log", "format": f},
                                 "backends": ["127.0.0.1:1"]}
                          for name, f in (("a", first), ("b", second))}},
                directory="/var/log")

        self.assertEqual(len({p.accessLogSink for p in pools("json", "json").pools}), 1)
        pools("text", "text")
        e = self.assertRaises(ConfigError, pools, "json", "text")
        self.assertEqual(str(e), "pools.b.access-log.format: pool a writes /var/log/a.log as "
                                 "json, this pool as text: one file takes one format")

    def test_reloadNeedsRestart(self) -> None:
        """
        A reload that changes the format is as one that changes the sink's
        other options: it needs a restart, and the running format stays.
        """
        running = self.config({"sink": "file", "path": "a.log", "format": "json"})
        new = self.config({"sink": "file", "path": "a.log", "format": "combined"})
        kept, differ = runnable(new, running)
        self.assertEqual(differ, ["pools.web.access-log"])
        self.assertEqual(kept.pools[0].accessLog, running.pools[0].accessLog)


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


def _link(path: str) -> str | None:
    """
    Where the link C{path} points, or L{None} if it went meanwhile.
    """
    try:
        return os.readlink(path)
    except OSError:
        return None


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
    def test_removedPoolClosesItsFile(self) -> Any:
        """
        A pool removed at run time (by a reload, or the API) closes its
        access-log file, with what it had pending written; a file another
        pool shares stays open, and that pool's lines go on reaching it.
        """
        own, shared = self.logPath(), self.logPath()
        backends = Backends(self)
        backends.start("a")
        pool = {"backends": [{"name": "a", "endpoint": backends.endpoint("a")}]}
        lb, port = startBalancer(self, {
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1", "pool": "a"}],
            "pools": {"a": {**pool, "access-log": shared}, "b": {**pool, "access-log": own},
                      "c": {**pool, "access-log": shared}},
        })

        def opened(path: str) -> int:
            fds = os.listdir("/proc/self/fd")
            return sum(1 for fd in fds if _link(f"/proc/self/fd/{fd}") == os.path.abspath(path))

        self.assertEqual((opened(own), opened(shared)), (1, 1))
        lb.removePool("b")
        self.assertEqual((opened(own), opened(shared)), (0, 1))
        self.assertNotIn(own, lb.accessFiles)
        lb.removePool("c")
        self.assertEqual(opened(shared), 1)
        yield inThread(firstLine, port)
        yield waitFor(lambda: lb.accessFiles[shared].lines == 1)
        yield lb.stopService()
        self.assertIn(" tcp backend=a ", read(shared)[0])

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


class BalancerLogFormatTests(TestCase):
    """
    A real balancer writes the C{json} and C{combined} formats for real
    requests and connections, lines that C{json.loads} and the combined
    regular expression read back.
    """

    timeout = 30

    def logPath(self) -> str:
        directory = self.mktemp()
        os.makedirs(directory)
        return os.path.join(directory, "access.log")

    def backend(self, name: str) -> RecordingBackend:
        """
        A recording backend listening on 127.0.0.1.
        """
        backend = RecordingBackend(name)
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(backend.port.stopListening)

        def closeConnections() -> None:
            for conn in backend.connections:
                if conn.transport.connected:
                    conn.transport.abortConnection()

        self.addCleanup(closeConnections)
        return backend

    @inlineCallbacks
    def test_httpJSON(self) -> Any:
        """
        C{format: json}: each request is one JSON object naming the pool
        that served it (two routed pools share the file), with a path that
        holds quotes and backslashes kept whole; no headers are captured
        for it.
        """
        path = self.logPath()
        log = {"sink": "file", "path": path, "format": "json"}
        a, b = self.backend("a"), self.backend("b")
        lb, port = startBalancer(self, {
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1",
                           "mode": "http", "routes": [
                               {"name": "a", "match": {"path-prefix": "/a/"}, "pool": "a"},
                               {"name": "b", "pool": "b"}]}],
            "pools": {"a": {"access-log": log, "backends": [{"name": "a1", "endpoint": a.endpoint}]},
                      "b": {"access-log": log, "backends": [{"name": "b1", "endpoint": b.endpoint}]}},
        })
        answers = yield httpRequests(port, [("GET", "/a/1", None, {}),
                                            ("POST", '/b/"q"\\x', b"hello", {}),
                                            ("GET", "/a/2?x=%0A", None, {})])
        self.assertEqual([status for status, _, _ in answers], [200, 200, 200])
        yield lb.stopService()
        records = [json.loads(line) for line in read(path)]
        self.assertEqual(
            [(r["pool"], r["method"], r["path"], r["status"], r["backend"], r["bytes_in"],
              r["bytes_out"], r["protocol"], r["type"]) for r in records],
            [("a", "GET", "/a/1", 200, "a1", 0, len(answers[0][2]), "HTTP/1.1", "http"),
             ("b", "POST", '/b/"q"\\x', 200, "b1", 5, len(answers[1][2]), "HTTP/1.1", "http"),
             ("a", "GET", "/a/2?x=%0A", 200, "a1", 0, len(answers[2][2]), "HTTP/1.1", "http")])
        for r in records:
            self.assertEqual(r["client"], "127.0.0.1")
            self.assertIsInstance(r["client_port"], int)
            self.assertEqual(r["retries"], 0)
            self.assertGreaterEqual(r["duration"], 0)
            self.assertRegex(r["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)$")
        self.assertEqual(len(lb.accessFiles), 1)
        self.assertFalse(any(u.rules.captureHeaders
                             for u in lb.factories["main"].upstreams.values()))  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_httpCombined(self) -> Any:
        """
        C{format: combined}: nginx's line, with curl's real Referer and
        User-Agent (escaped, one line), and C{-} for a request without them.
        """
        if shutil.which("curl") is None:
            raise SkipTest("no curl")
        path = self.logPath()
        backend = self.backend("b")
        lb, port = startBalancer(self, {
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1", "mode": "http"}],
            "pools": {"web": {"access-log": {"sink": "file", "path": path, "format": "combined"},
                              "backends": [{"name": "b", "endpoint": backend.endpoint}]}},
        })
        self.assertTrue(lb.factories["main"].upstream.rules.captureHeaders)  # type: ignore[attr-defined]
        curled = yield inThread(lambda: subprocess.run([
            "curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
            "-A", 'Mozilla/5.0 (X11; "quoted")', "-e", "https://example.com/from?a=1",
            f"http://127.0.0.1:{port}/page?x=1"], capture_output=True, text=True, timeout=10))
        self.assertEqual(curled.stdout, "200", curled.stderr)
        answers = yield httpRequests(port, [("GET", "/plain", None, {}),
                                            ("GET", "/lower", None, {"referer": "r",
                                                                     "user-agent": "u"})])
        yield lb.stopService()
        matches = [COMBINED.match(line) for line in read(path)]
        self.assertTrue(all(matches), read(path))
        fields = [m.group("addr", "request", "status", "referer", "agent", "backend")
                  for m in matches if m is not None]
        self.assertEqual(fields, [
            ("127.0.0.1", "GET /page?x=1 HTTP/1.1", "200", "https://example.com/from?a=1",
             "Mozilla/5.0 (X11; \\x22quoted\\x22)", "b"),
            ("127.0.0.1", "GET /plain HTTP/1.1", "200", "-", "-", "b"),
            ("127.0.0.1", "GET /lower HTTP/1.1", "200", "r", "u", "b"),
        ])
        self.assertEqual(int(matches[1].group("bytes")), len(answers[0][2]))  # type: ignore[union-attr]

    @inlineCallbacks
    def test_tcp(self) -> Any:
        """
        TCP connections in both formats: a JSON object of C{type} C{tcp},
        and a combined line of request C{"TCP"}.
        """
        backends = Backends(self)
        backends.start("a")
        lines = {}
        for format in ("json", "combined"):
            path = self.logPath()
            lb, port = startBalancer(self, {
                "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1"}],
                "pools": {"web": {"access-log": {"sink": "file", "path": path, "format": format},
                                  "backends": [{"name": "a", "endpoint": backends.endpoint("a")}]}},
            })
            yield inThread(firstLine, port)
            accessFile = lb.accessFiles[path]
            yield waitFor(lambda: accessFile.lines == 1)  # noqa: B023 (awaited at once)
            yield lb.stopService()
            [lines[format]] = read(path)
        record = json.loads(lines["json"])
        self.assertEqual((record["type"], record["pool"], record["backend"], record["bytes_in"],
                          record["bytes_out"], record["client"]),
                         ("tcp", "web", "a", 0, 2, "127.0.0.1"))
        match = COMBINED.match(lines["combined"])
        assert match is not None, lines["combined"]
        self.assertEqual(match.group("addr", "request", "status", "bytes", "backend"),
                         ("127.0.0.1", "TCP", "200", "2", "a"))
