"""
Tests for L{lbtwist.extend}: the registries, and a sample extension
(L{tests.extension_sample}) at work in a real balancer over loopback: its
policy choosing, its kind of check marking backends down, its sink getting
each request, in one process and in workers.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Any

import yaml
from twisted.application.service import Service
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface.verify import verifyObject  # type: ignore[import-untyped]

from lbtwist.accesslog import AccessLogEvents, AccessLogFile, IAccessLog
from lbtwist.checks import checkConfig
from lbtwist.config import AccessLogSink, ConfigError, loadConfigFile, parseConfig
from lbtwist.extend import ACCESS_LOGS, CHECKS, POLICIES, Registry
from lbtwist.health import TCPProbe
from lbtwist.policies import SmoothWeighted
from lbtwist.pool import BackendPool
from lbtwist.reload import LiveConfig
from lbtwist.service import LoadBalancer
from lbtwist.state import StateFile
from lbtwist.tap import BadConfiguration, Options

from .httphelpers import RecordingBackend, httpRequests, waitFor
from .support import Backends, firstLine, freePort, inThread, reactor, sleep, spawn, startBalancer
from .test_embedding import recipe
from .test_workers import (
    TWISTD,
    GroupTestCase,
    adminChange,
    adminGet,
    connections,
    named,
    nameLine,
)

SAMPLE = "tests.extension_sample"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def forgetSample(case: SynchronousTestCase) -> None:
    """
    When C{case} ends, forget the sample extension (its names and its
    module) if it was imported, so that other tests see only the built-ins.
    """
    def forget() -> None:
        if SAMPLE in sys.modules:
            for registry, name in ((POLICIES, "first"), (CHECKS, "banner"),
                                   (ACCESS_LOGS, "jsonlines")):
                registry.unregister(name)
            del sys.modules[SAMPLE]

    case.addCleanup(forget)


def useSample(case: SynchronousTestCase) -> None:
    """
    Import the sample extension for C{case}, and forget it when the case
    ends.
    """
    if SAMPLE not in sys.modules:
        forgetSample(case)
        parseConfig({"extensions": [SAMPLE], "listeners": [{"listen": "tcp:0"}],
                     "pools": {"p": {"backends": []}}})


class RegistryTests(SynchronousTestCase):
    """
    A registry maps names to factories, given as objects or references.
    """

    def test_builtIns(self) -> None:
        """
        The built-in policies, checks and sinks are registered by
        reference, and a look-up imports the object.
        """
        self.assertEqual(POLICIES.names()[:6],
                         ("roundrobin", "weighted", "leastconn", "random", "p2c", "source"))
        self.assertIs(POLICIES["roundrobin"], SmoothWeighted)
        self.assertIs(CHECKS["tcp"], TCPProbe)
        from lbtwist.http import HTTPProbe

        self.assertIs(CHECKS["http"], HTTPProbe)
        self.assertIsInstance(ACCESS_LOGS["events"]({}, reactor), AccessLogEvents)
        sink = ACCESS_LOGS["file"]({"path": "x.log"}, reactor)
        self.assertIsInstance(sink, AccessLogFile)
        self.assertTrue(verifyObject(IAccessLog, sink))

    def test_register(self) -> None:
        """
        A name is registered once: again with the same factory is no
        change, with another is refused, naming the one it has.
        """
        registry: Registry[Any] = Registry("thing")
        registry.register("a", dict)
        registry.register("a", dict)
        registry.register("b", "collections:OrderedDict")
        self.assertEqual(registry.names(), ("a", "b"))
        from collections import OrderedDict

        registry.register("b", OrderedDict)
        self.assertIs(registry["b"], OrderedDict)
        registry.register("b", "collections:OrderedDict")
        with self.assertRaises(ValueError) as e:
            registry.register("a", list)
        self.assertEqual(str(e.exception),
                         "cannot register thing 'a': builtins:dict has that name already")
        registry.unregister("a")
        self.assertEqual(list(registry), ["b"])
        self.assertRaises(KeyError, registry.__getitem__, "a")

    def test_badRegistrations(self) -> None:
        """
        A name must be a lower-case word, a factory callable or a
        C{module:name} reference.
        """
        registry: Registry[Any] = Registry("policy")
        for name, factory, problem in [
            ("First", dict, "expected a lower-case name"),
            ("", dict, "expected a lower-case name"),
            ("ok", 3, "3 is not callable"),
            ("ok", "no.colon", "expected a callable or 'module:name', got 'no.colon'"),
        ]:
            with self.assertRaises(ValueError) as e:
                registry.register(name, factory)
            self.assertIn(problem, str(e.exception))
        self.assertEqual(registry.names(), ())

    def test_policyNoIndirection(self) -> None:
        """
        A pool's policy is the object the registered factory made: the
        pool calls its C{choose} as it calls a built-in's, with nothing
        between.
        """
        useSample(self)
        from tests.extension_sample import First

        config = parseConfig({
            "listeners": [{"listen": "tcp:0"}],
            "pools": {"p": {"policy": "first", "backends": [
                {"name": n, "endpoint": f"tcp:host=127.0.0.1:port={9000 + i}"}
                for i, n in enumerate("abc")]}}})
        pool = BackendPool(config.pools[0])
        self.assertIs(type(pool.policy), First)
        self.assertEqual([pool.pick().name for _ in range(5)], ["a"] * 5)  # type: ignore[union-attr]


class SinkConfigTests(SynchronousTestCase):
    """
    C{access-log: {sink: NAME, ...}} chooses a registered sink.
    """

    def test_builtInsAsSinks(self) -> None:
        """
        C{true} and a path are the built-in C{events} and C{file} sinks,
        which may also be named.
        """
        def pool(value: Any) -> Any:
            return parseConfig({"listeners": [{"listen": "tcp:0"}],
                                "pools": {"p": {"access-log": value, "backends": []}}},
                               directory="/srv").pools[0]

        self.assertEqual(pool(True).accessLogSink, AccessLogSink("events"))
        self.assertEqual(pool("a.log").accessLogSink, AccessLogSink("file", (("path", "/srv/a.log"),)))
        self.assertIsNone(pool(False).accessLogSink)
        named = pool({"sink": "file", "path": "logs/a.log"})
        self.assertEqual(named.accessLog, AccessLogSink("file", (("path", "/srv/logs/a.log"),)))


class SinkOptionTypeTests(SynchronousTestCase):
    """
    A sink's options are compared with their types: C{1} and C{true} (and
    C{1.0}) are different options, as the YAML wrote them.
    """

    def sinks(self, *values: Any) -> Any:
        """
        A configuration whose pools' access logs go to the C{reopening}
        sink with option C{level} set to each of C{values} in turn.
        """
        useReopening(self)
        return parseConfig({
            "listeners": [{"listen": "tcp:0", "pool": "p0"}],
            "pools": {f"p{i}": {"access-log": {"sink": "reopening", "level": value},
                                "backends": []}
                      for i, value in enumerate(values)}})

    def test_distinct(self) -> None:
        """
        Options equal in value but not in type make different sinks; the
        same option twice is one sink.
        """
        config = self.sinks(1, True, 1.0, 1)
        specs = [p.accessLogSink for p in config.pools]
        self.assertEqual([specs[0] == s for s in specs], [True, False, False, True])
        self.assertEqual(len({*specs}), 3)

    def test_eachPoolItsOwn(self) -> None:
        """
        Two pools whose options differ only as C{1} and C{true} each get a
        sink built with their own option.
        """
        from twisted.internet.testing import MemoryReactorClock

        lb = LoadBalancer(self.sinks(1, True), MemoryReactorClock())
        levels = [lb.accessLogs[p.accessLogSink].options["level"]  # type: ignore[attr-defined,index]
                  for p in lb.config.pools]
        self.assertEqual([(type(v), v) for v in levels], [(int, 1), (bool, True)])

    def test_reloadSeesTheChange(self) -> None:
        """
        A reload that changes an option from C{true} to C{1} is a change of
        the access log, which needs a restart, and says so.
        """
        from twisted.internet.task import Clock

        before, after = self.sinks(True), self.sinks(1)
        pools = {p.name: BackendPool(p) for p in before.pools}
        live = LiveConfig(pools, before, Clock(), StateFile(self.mktemp()),
                          loadConfig=lambda: after)
        self.assertIsNone(live.reload())
        self.assertEqual(live.restartNeeded, ["pools.p0.access-log"])


class PolicyTests(TestCase):
    """
    A registered policy chooses in a real balancer.
    """

    @inlineCallbacks
    def test_first(self) -> Any:
        """
        With the sample's C{policy: first}, every connection goes to the
        first backend (round-robin would spread them over all three).
        """
        backends = Backends(self)
        for name in "abc":
            backends.start(name)
        useSample(self)
        lb, port = startBalancer(self, {
            "extensions": [SAMPLE],
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1"}],
            "pools": {"web": {"policy": "first", "backends": [
                {"name": n, "endpoint": e} for n, e in named(backends, "a", "b", "c")]}},
        })
        answers = []
        for _ in range(9):
            answers.append((yield inThread(firstLine, port)))
        self.assertEqual(answers, [b"a"] * 9)


class ReloadTests(SynchronousTestCase):
    """
    A module new in C{extensions} is imported by the reload that reads it.
    """

    def test_newModule(self) -> None:
        """
        A reload of a file that now names the sample and its policy
        imports it and switches the pool to the policy, with no restart.
        """
        self.assertNotIn(SAMPLE, sys.modules)
        forgetSample(self)
        path = FilePath(self.mktemp())
        data: dict[str, Any] = {
            "listeners": [{"listen": "tcp:0"}],
            "pools": {"web": {"backends": [
                {"name": n, "endpoint": f"tcp:host=127.0.0.1:port={9000 + i}"}
                for i, n in enumerate("abc")]}}}
        path.setContent(yaml.safe_dump(data).encode())
        config = loadConfigFile(path.path)
        pools = {p.name: BackendPool(p) for p in config.pools}
        live = LiveConfig(pools, config, Clock(), StateFile(self.mktemp()),
                          loadConfig=lambda: loadConfigFile(path.path))
        self.assertEqual([pools["web"].pick().name for _ in range(3)],  # type: ignore[union-attr]
                         ["a", "b", "c"])
        data["extensions"] = [SAMPLE]
        data["pools"]["web"]["policy"] = "first"
        path.setContent(yaml.safe_dump(data).encode())
        self.assertIsNone(live.reload())
        self.assertEqual(live.restartNeeded, [])
        self.assertIn(SAMPLE, sys.modules)
        self.assertEqual([pools["web"].pick().name for _ in range(3)],  # type: ignore[union-attr]
                         ["a", "a", "a"])


class CheckTests(TestCase):
    """
    A registered kind of health check probes backends in a real balancer.
    """

    @inlineCallbacks
    def test_banner(self) -> Any:
        """
        The sample's C{banner} check marks down the backend whose first
        line is not C{ready}, though it accepts connections (which a C{tcp}
        check passes), and the log says which check failed.
        """
        backends = Backends(self)
        backends.start("ready")
        backends.start("busy")
        useSample(self)
        lb, port = startBalancer(self, {
            "extensions": [SAMPLE],
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1"}],
            "pools": {"web": {
                "health": {"type": "banner", "interval": "50ms", "rise": 1, "fall": 1},
                "backends": [{"name": n, "endpoint": e}
                             for n, e in named(backends, "busy", "ready")]}},
        })
        busy, ready = lb.pools["web"].get("busy"), lb.pools["web"].get("ready")
        assert busy is not None and ready is not None
        yield waitFor(lambda: not busy.eligible and ready.eligible)
        answers = []
        for _ in range(4):
            answers.append((yield inThread(firstLine, port)))
        self.assertEqual(answers, [b"ready"] * 4)
        self.assertEqual(busy.lastChange,
                         "banner check failed: said b'busy', not 'ready', 1 failure in a row")


class SinkTests(TestCase):
    """
    A registered access-log sink gets each request's fields.
    """

    @inlineCallbacks
    def test_http(self) -> Any:
        """
        Each HTTP request reaches the sample's sink with its method, path,
        status and backend.
        """
        import urllib.request

        backend = RecordingBackend("b")
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(backend.port.stopListening)
        useSample(self)
        lb, port = startBalancer(self, {
            "extensions": [SAMPLE],
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1",
                           "mode": "http"}],
            "pools": {"web": {"access-log": {"sink": "jsonlines"},
                              "backends": [{"name": "b", "endpoint": backend.endpoint}]}},
        })
        [sink] = lb.accessLogs.values()
        self.assertTrue(verifyObject(IAccessLog, sink))

        def get(path: str) -> int:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
                r.read()
                return int(r.status)

        for path in ("/one", "/two?x=1"):
            self.assertEqual((yield inThread(get, path)), 200)
        yield waitFor(lambda: len(sink.records) == 2)  # type: ignore[attr-defined]
        self.assertEqual(
            [(r["method"], r["path"], r["status"], r["backend"], r["protocol"])
             for r in sink.records],  # type: ignore[attr-defined]
            [("GET", "/one", 200, "b", "HTTP/1.1"), ("GET", "/two?x=1", 200, "b", "HTTP/1.1")])
        self.assertTrue(all(r["client"].startswith("127.0.0.1:") and r["bytesOut"] > 0
                            for r in sink.records))  # type: ignore[attr-defined]

    @inlineCallbacks
    def test_tcp(self) -> Any:
        """
        Each TCP connection reaches it too, with its bytes.
        """
        backends = Backends(self)
        backends.start("a")
        useSample(self)
        lb, port = startBalancer(self, {
            "extensions": [SAMPLE],
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1"}],
            "pools": {"web": {"access-log": {"sink": "jsonlines"},
                              "backends": [{"name": "a", "endpoint": backends.endpoint("a")}]}},
        })
        [sink] = lb.accessLogs.values()
        yield inThread(firstLine, port)
        yield waitFor(lambda: len(sink.records) == 1)  # type: ignore[attr-defined]
        [record] = sink.records  # type: ignore[attr-defined]
        self.assertEqual((record["kind"], record["backend"], record["bytesOut"]), ("tcp", "a", 2))


class Reopening:
    """
    An access-log sink with the optional C{reopen}: counts its calls, and
    raises from it if told to.
    """

    def __init__(self, options: Any, clock: Any) -> None:
        self.options = options
        self.reopened = 0
        self.fails = bool(options.get("fails"))

    def request(self, *fields: Any) -> None:
        """
        Drop a request's line.
        """

    def connection(self, *fields: Any) -> None:
        """
        Drop a connection's line.
        """

    def reopen(self) -> None:
        """
        Count a reopen; fail if told to.
        """
        self.reopened += 1
        if self.fails:
            raise OSError("cannot reopen: disk on fire")


def useReopening(case: SynchronousTestCase) -> None:
    """
    Register L{Reopening} as the C{reopening} sink for C{case} (once).
    """
    if "reopening" in ACCESS_LOGS:
        return
    ACCESS_LOGS.register("reopening", Reopening)
    case.addCleanup(ACCESS_LOGS.unregister, "reopening")


def sinkPools(endpoint: str, logPath: str) -> dict[str, Any]:
    """
    A listener and pools whose access logs go to a C{reopening} sink, the
    C{file} sink at C{logPath}, and the C{events} sink, which has no
    C{reopen}.
    """
    backends = [{"name": "a", "endpoint": endpoint}]
    return {
        "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1", "pool": "web"}],
        "pools": {
            "web": {"access-log": {"sink": "reopening", "level": 2}, "backends": backends},
            "files": {"access-log": logPath, "backends": backends},
            "events": {"access-log": True, "backends": backends},
        },
    }


class Closing(Reopening, Service):
    """
    An access-log sink that is a service with the optional C{close}: counts
    its calls, and raises from it if told to.
    """

    def __init__(self, options: Any, clock: Any) -> None:
        super().__init__(options, clock)
        self.closed = 0

    def close(self) -> None:
        """
        Count a close, once stopped; fail if told to.
        """
        assert not self.running
        self.closed += 1
        if self.fails:
            raise OSError("cannot close: disk on fire")


class SinkCloseTests(TestCase):
    """
    A registered sink no pool logs to any more is stopped and closed.
    """

    def test_removedPool(self) -> None:
        """
        Removing a pool stops and closes its sink, unless a pool left
        shares it; what C{close} raises is logged and the pool is removed
        all the same.
        """
        ACCESS_LOGS.register("closing", Closing)
        self.addCleanup(ACCESS_LOGS.unregister, "closing")
        backends = [{"name": "a", "endpoint": "tcp:host=127.0.0.1:port=9"}]
        lb, _ = startBalancer(self, {
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1", "pool": "web"}],
            "pools": {name: {"access-log": {"sink": "closing", "fails": name == "bad"},
                             "backends": backends} for name in ("web", "one", "two", "bad")},
        })
        shared, bad = (lb.accessLogs[lb.pools[n].config.accessLogSink]  # type: ignore[index]
                       for n in ("one", "bad"))
        assert isinstance(shared, Closing) and isinstance(bad, Closing)
        self.assertIs(lb.accessLogs[lb.pools["web"].config.accessLogSink], shared)  # type: ignore[index]
        lb.removePool("one")
        lb.removePool("two")
        self.assertEqual((shared.running, shared.closed), (1, 0))
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        lb.removePool("bad")
        self.assertEqual((bad.running, bad.closed), (0, 1))
        self.assertNotIn("bad", lb.pools)
        self.assertIn("cannot close access-log sink closing: OSError: cannot close: disk on "
                      "fire", [formatEvent(e) for e in events])


class SinkReopenTests(TestCase):
    """
    A sink's optional C{reopen} is called where the C{file} sink reopens
    its file: on C{SIGHUP} (and C{POST /api/reload}), for log rotation.
    """

    @inlineCallbacks
    def test_sighup(self) -> Any:
        """
        A real C{SIGHUP} to an embedded balancer reopens a registered sink
        once, as it reopens the C{file} sink's renamed file; a sink with no
        C{reopen} is left alone.
        """
        from .test_reload import signalledBalancer

        useReopening(self)
        logPath = os.path.abspath(self.mktemp())
        balancer = signalledBalancer(self, sinkPools("tcp:host=127.0.0.1:port=9", logPath))
        lb = balancer.loadBalancer
        [sink] = [s for s in lb.accessLogs.values() if isinstance(s, Reopening)]
        os.rename(logPath, logPath + ".1")
        os.kill(os.getpid(), signal.SIGHUP)
        yield waitFor(lambda: sink.reopened > 0 and os.path.exists(logPath))
        yield sleep(0.05)
        self.assertEqual(sink.reopened, 1)
        self.assertTrue(os.path.exists(logPath))

    def test_reopenFails(self) -> None:
        """
        A sink whose C{reopen} raises is logged with its name and the
        reason; the others are reopened all the same.
        """
        from twisted.internet.testing import MemoryReactorClock

        useReopening(self)
        data = sinkPools("tcp:host=127.0.0.1:port=9", os.path.abspath(self.mktemp()))
        data["pools"]["broken"] = {"access-log": {"sink": "reopening", "fails": True},
                                   "backends": []}
        lb = LoadBalancer(parseConfig(data), MemoryReactorClock())
        events: list[dict[str, Any]] = []
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        lb.reopenAccessLogs()
        lb.reopenAccessLogs()
        sinks = sorted((s.fails, s.reopened) for s in lb.accessLogs.values()
                       if isinstance(s, Reopening))
        self.assertEqual(sinks, [(False, 2), (True, 2)])
        said = [e for e in events if "cannot reopen" in e.get("log_format", "")]
        self.assertEqual(len(said), 2)
        self.assertEqual(said[0]["sink"], "reopening")
        self.assertIn("disk on fire", said[0]["error"])


class _Raising:
    """
    An access-log sink that breaks its contract: every call raises.
    """

    def __init__(self) -> None:
        self.calls = 0

    def request(self, *fields: Any) -> None:
        self.calls += 1
        raise RuntimeError("sink is broken")

    def connection(self, *fields: Any) -> None:
        self.calls += 1
        raise RuntimeError("sink is broken")


class RaisingSinkTests(TestCase):
    """
    A sink that raises (which its contract forbids) costs its own lines
    only: the requests and connections it logs are served and closed as
    ever, and what it raised is counted and logged, once for the first
    few (not a traceback per request).
    """

    def startRaising(self, mode: str, endpoint: str) -> tuple[Any, int, _Raising]:
        """
        Start a balancer whose pool logs to a registered sink that raises;
        return it, its port and the sink.
        """
        sink = _Raising()
        ACCESS_LOGS.register("raising", lambda options, clock: sink)
        self.addCleanup(ACCESS_LOGS.unregister, "raising")
        lb, port = startBalancer(self, {
            "listeners": [{"name": "main", "listen": "tcp:0:interface=127.0.0.1",
                           "mode": mode}],
            "pools": {"web": {"access-log": {"sink": "raising"},
                              "backends": [{"name": "b", "endpoint": endpoint}]}},
        })
        return lb, port, sink

    @inlineCallbacks
    def test_http(self) -> Any:
        """
        Two requests on one keep-alive connection are both answered though
        the sink raised for the first.
        """
        backend = RecordingBackend("b")
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(backend.port.stopListening)
        lb, port, sink = self.startRaising("http", backend.endpoint)

        results = yield httpRequests(port, [("GET", "/one", None, {}), ("GET", "/two", None, {})])
        self.assertEqual([status for status, _, _ in results], [200, 200])
        self.assertEqual(sink.calls, 2)
        self.assertEqual(lb.factories["main"].accessLogErrors, 2)  # type: ignore[attr-defined]
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_tcp(self) -> Any:
        """
        A TCP connection whose line the sink failed to take is closed and
        counted out as any other, and the next is served.
        """
        backends = Backends(self)
        backends.start("b")
        lb, port, sink = self.startRaising("tcp", backends.endpoint("b"))
        for _ in range(2):
            self.assertEqual((yield inThread(firstLine, port)), b"b")
        yield waitFor(lambda: sink.calls == 2)
        factory = lb.factories["main"]
        yield waitFor(lambda: factory.activeClients == 0)  # type: ignore[attr-defined]
        self.assertEqual([b.active for b in lb.pools["web"]], [0])
        self.assertEqual(factory.accessLogErrors, 2)  # type: ignore[attr-defined]
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class WorkerTests(GroupTestCase):
    """
    With C{workers}, every worker imports the extensions: the policy runs
    in the workers and the sink in each, seeing that worker's requests.
    """

    @inlineCallbacks
    def test_workers(self) -> Any:
        """
        Two workers send every connection to the first backend, and the
        sink's lines all come from the workers, one a connection.
        """
        backends = Backends(self)
        for name in "abc":
            backends.start(name)
        log = os.path.abspath(self.mktemp())
        group = yield self.startGroup(
            2, [], extensions=[SAMPLE], env={"PYTHONPATH": ROOT},
            pools={"web": {"policy": "first", "access-log": {"sink": "jsonlines", "path": log},
                           "backends": [{"name": n, "endpoint": e}
                                        for n, e in named(backends, "a", "b", "c")]}})
        workers = (yield inThread(adminGet, group.admin, "/api/workers"))["workers"]
        answers = yield inThread(connections, group.port, 40, 4)
        self.assertEqual(answers, [b"a"] * 40)
        # A worker logs a connection once it has seen it close, which may
        # be a moment after the client has its answer.
        for _ in range(50):
            with open(log, encoding="utf-8") as f:
                records = [json.loads(line) for line in f]
            if len(records) >= 40:
                break
            yield sleep(0.1)
        yield group.stop(self)
        self.assertEqual(len(records), 40)
        self.assertEqual({r["backend"] for r in records}, {"a"})
        pids = {r["pid"] for r in records}
        self.assertLessEqual(pids, {w["pid"] for w in workers})
        self.assertNotIn(group.process.pid, pids)

    @inlineCallbacks
    def test_reload(self) -> Any:
        """
        A module added to C{extensions} with its policy, reloaded through
        the master: the master and every worker import it, and the workers
        then send every connection to the first backend.
        """
        backends = Backends(self)
        for name in "abc":
            backends.start(name)
        group = yield self.startGroup(2, named(backends, "a", "b", "c"),
                                      env={"PYTHONPATH": ROOT})
        answers = yield inThread(connections, group.port, 30, 3)
        self.assertEqual(set(answers), {b"a", b"b", b"c"})
        path = os.path.join(group.workdir, "lb.yaml")
        with open(path) as f:
            data = yaml.safe_load(f)
        data["extensions"] = [SAMPLE]
        data["pools"]["web"]["policy"] = "first"
        with open(path, "w") as f:
            yaml.safe_dump(data, f)
        answer = yield inThread(adminChange, group.admin, "POST", "/api/reload", {})
        self.assertEqual(answer, {"status": "reloaded"})
        answers = yield inThread(connections, group.port, 30, 3)
        self.assertEqual(answers, [b"a"] * 30)
        yield group.stop(self)


class StartChecksTests(SynchronousTestCase):
    """
    What the command line and the checks before a start do with extensions.
    """

    def test_extensionOption(self) -> None:
        """
        C{--extension} imports a module before the command line's pool is
        checked; one that cannot be imported is named with the option.
        """
        forgetSample(self)
        options = Options()
        options.parseOptions(["--backend", "127.0.0.1:9", "--extension", SAMPLE,
                              "--policy", "first"])
        config = options["lbconfig"]
        self.assertEqual((config.extensions, config.pool("default").policy), ((SAMPLE,), "first"))
        with self.assertRaises(BadConfiguration) as e:
            Options().parseOptions(["--backend", "127.0.0.1:9", "--extension", "tests.nothing"])
        self.assertEqual(str(e.exception), "lbtwist: invalid configuration: --extension: "
                         "cannot import tests.nothing: ModuleNotFoundError: No module named "
                         "'tests.nothing'")

    def test_sinkOptionsChecked(self) -> None:
        """
        A sink's factory refusing its options stops the start, naming the
        pool's access log; the C{file} sink's directory is checked by name
        too.
        """
        useSample(self)
        for value, message in [
            ({"sink": "jsonlines", "level": 2},
             "pools.web.access-log: jsonlines sink: unknown option level (expected path)"),
            ({"sink": "file"}, "pools.web.access-log: file sink: the file sink takes the "
                               "options path (a file name) and format (text, json, combined)"),
            ({"sink": "file", "path": "/nonexistent/a.log"},
             "pools.web.access-log: no such directory '/nonexistent'"),
        ]:
            config = parseConfig({"listeners": [{"listen": "tcp:0"}],
                                  "pools": {"web": {"access-log": value, "backends": []}}})
            with self.assertRaises(ConfigError) as e:
                checkConfig(config)
            self.assertEqual(str(e.exception), message)


class ReadmeTests(TestCase):
    """
    The README's three examples of Extending, copied out and run as written
    by C{twistd lb} with C{extensions:}.
    """

    timeout = 60

    @inlineCallbacks
    def test_examples(self) -> Any:
        """
        The check marks down the backend that does not say C{ready}, the
        policy sends every connection to the first backend left, and the
        sink writes a line for each.
        """
        work = FilePath(self.mktemp())
        work.makedirs()
        work.child("readme_plugins.py").setContent("\n".join(
            recipe(intro) for intro in (
                "returns an object with ``choose``", "backend on its ``interval``",
                "and stopped after them")).encode())
        backends = Backends(self)
        backends.start("busy")
        backends.start("ready")
        port = freePort()
        work.child("lb.yaml").setContent(yaml.safe_dump({
            "extensions": ["readme_plugins"], "status-interval": 3600,
            "listeners": [{"listen": f"tcp:{port}:interface=127.0.0.1"}],
            "pools": {"web": {
                "policy": "first", "access-log": {"sink": "jsonlines", "path": "access.jsonl"},
                "health": {"type": "banner", "interval": "100ms", "rise": 1, "fall": 1},
                "backends": [{"name": n, "endpoint": e}
                             for n, e in named(backends, "busy", "ready")]}},
        }).encode())
        process = spawn(self, [TWISTD, "--nodaemon", "--pidfile=", "lb", "--config", "lb.yaml"],
                        work.path, {**os.environ, "PYTHONPATH": work.path})
        answers: list[bytes | None] = []
        for _ in range(100):
            answer = yield inThread(nameLine, port)
            if answer == b"ready" or process.poll() is not None:
                break
            yield sleep(0.1)
        for _ in range(5):
            answers.append((yield inThread(nameLine, port)))
        process.send_signal(signal.SIGTERM)
        assert process.stdout is not None
        output = (yield inThread(process.stdout.read)).decode()
        self.assertEqual(answers, [b"ready"] * 5, output)
        self.assertIn("banner check failed: said b'busy', not 'ready'", output)
        lines = [json.loads(x) for x in work.child("access.jsonl").getContent().splitlines()]
        self.assertEqual([x["backend"] for x in lines[-5:]], ["ready"] * 5)


class CheckCommandTests(SynchronousTestCase):
    """
    C{python -m lbtwist.check} imports the extensions too.
    """

    def check(self, extensions: list[str]) -> subprocess.CompletedProcess[bytes]:
        """
        Run the check on a file with C{extensions} and C{policy: first}.
        """
        directory = FilePath(self.mktemp())
        directory.makedirs()
        config = directory.child("lb.yaml")
        config.setContent(yaml.safe_dump({
            "extensions": extensions, "listeners": [{"listen": "tcp:0:interface=127.0.0.1"}],
            "pools": {"web": {"policy": "first", "health": {"type": "banner"},
                              "backends": [{"endpoint": "tcp:host=127.0.0.1:port=9"}]}},
        }).encode())
        return subprocess.run(
            [sys.executable, "-m", "lbtwist.check", "--config", config.path],
            capture_output=True, cwd=directory.path, timeout=60,
            env={**os.environ, "PYTHONPATH": ROOT})

    def test_ok(self) -> None:
        """
        With the sample imported, its names are valid.
        """
        result = self.check([SAMPLE])
        self.assertEqual((result.returncode, result.stderr), (0, b""))
        self.assertIn(b"configuration OK", result.stdout)

    def test_importFails(self) -> None:
        """
        A module that cannot be imported is one line naming the key, the
        module and why; exit status 1.
        """
        result = self.check([SAMPLE, "tests.no_such_extension"])
        self.assertEqual(result.returncode, 1)
        self.assertEqual(
            result.stderr.decode(),
            "lbtwist: invalid configuration: extensions[1]: cannot import "
            "tests.no_such_extension: ModuleNotFoundError: No module named "
            "'tests.no_such_extension'\n")
