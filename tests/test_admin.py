"""
Tests for L{lbtwist.admin}: the admin API over real sockets on 127.0.0.1,
every bad input it must refuse, the Go design's wire-compatible routes, and
the token and listener rules.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from types import SimpleNamespace
from typing import Any, ClassVar

import attrs
from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.test.requesthelper import DummyRequest

from lbtwist.admin import AdminResource, AdminService, backendURL, checkAdmin
from lbtwist.admin._service import IDLE_TIMEOUT, REQUEST_TIMEOUT, adminSite
from lbtwist.admin._views import backendView, poolView
from lbtwist.config import BackendConfig, ConfigError, PoolConfig, parseConfig
from lbtwist.pool import Admin, BackendPool, Health
from lbtwist.reload import LiveConfig
from lbtwist.state import StateFile
from tests.httphelpers import httpRequests, waitFor
from tests.support import (
    Backends,
    NamedFactory,
    firstLine,
    inThread,
    poolConfig,
    reactor,
    sleep,
    startBalancer,
)
from tests.test_pool import ejectingPool

TOKEN = "s3cret-token"


def call(port: int, method: str, path: str, body: object = None, token: str | None = TOKEN,
         raw: bytes | None = None, headers: dict[str, str] | None = None
         ) -> tuple[int, dict[str, str], bytes]:
    """
    One blocking HTTP request to the admin API (run it in a thread).
    """
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        h = {"Connection": "close", **(headers or {})}
        if token is not None:
            h["Authorization"] = f"Bearer {token}"
        conn.request(method, path, body=data, headers=h)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def jcall(port: int, method: str, path: str, body: object = None, **kw: Any
          ) -> tuple[int, Any]:
    """
    Like L{call}, decoding a JSON answer.
    """
    status, _, data = call(port, method, path, body, **kw)
    return status, json.loads(data)


def recvOrReset(sock: socket.socket) -> bytes:
    """
    Read from C{sock}; a reset (an aborted connection) reads as the end.
    """
    try:
        return sock.recv(100)
    except ConnectionResetError:
        return b""


class StatusPage(Resource):
    """
    A test backend's site: C{/status/N} answers status N, anything else 200;
    the body names the backend.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, request: Request) -> bytes:
        """
        Answer with the status the path asks for.
        """
        parts = request.path.decode().split("/")
        if len(parts) == 3 and parts[1] == "status" and parts[2].isdigit():
            request.setResponseCode(int(parts[2]))
        return self.name.encode() + b"\n"


def statusSite(name: str) -> Factory:
    """
    An HTTP backend named C{name} serving L{StatusPage}.
    """
    site = Site(StatusPage(name))
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


class AdminHarness:
    """
    Backends, a balancer, its live configuration and admin API, in this
    reactor, all stopped when the test ends.

    @param factory: makes each backend's server (HTTP mode needs
        L{statusSite}).
    @param configure: changes the configuration data before the balancer
        starts (more listeners or pools).
    """

    def __init__(self, case: TestCase, names: tuple[str, ...] = ("a", "b"),
                 grace: float = 0.3, token: str | None = TOKEN, mode: str = "tcp",
                 factory: Any = NamedFactory,
                 configure: Any = None) -> None:
        self.backends = Backends(case, factory)
        for name in names:
            self.backends.start(name)
        data = poolConfig([(n, self.backends.endpoint(n)) for n in names], mode=mode,
                          health={"interval": 0.2, "rise": 1, "fall": 1})
        if configure is not None:
            configure(data)
        self.lb, self.port = startBalancer(case, data)
        self.lb.config = attrs.evolve(
            self.lb.config, admin="tcp:0:interface=127.0.0.1", adminToken=token)
        self.statePath = os.path.abspath(case.mktemp())
        self.live = LiveConfig(self.lb.pools, self.lb.config, reactor,
                               StateFile(self.statePath), grace=grace)
        self.service = AdminService(self.lb, self.live, reactor, environ={})
        self.service.startService()
        case.addCleanup(self.service.stopService)
        case.addCleanup(self.live.closeEverything)
        self.admin = int(self.service.port.getHost().port)
        self.pool = self.lb.pools["web"]

    def call(self, *args: Any, **kw: Any) -> Any:
        """
        L{jcall} on the admin port, in a thread.
        """
        return inThread(lambda: jcall(self.admin, *args, **kw))

    def rawCall(self, *args: Any, **kw: Any) -> Any:
        """
        L{call} on the admin port, in a thread.
        """
        return inThread(lambda: call(self.admin, *args, **kw))

    def snapshot(self) -> list[tuple[str, str, int, str]]:
        """
        The pool's backends as comparable values.
        """
        return sorted((b.name, b.endpoint, b.weight, b.admin.value) for b in self.pool)


class ReadTests(TestCase):
    """
    The read-only routes.
    """

    @inlineCallbacks
    def test_listPools(self) -> Any:
        """
        C{GET /api/pools} lists every pool with each backend's state and counters.
        """
        h = AdminHarness(self)
        yield inThread(firstLine, h.port)
        status, body = yield h.call("GET", "/api/pools")
        self.assertEqual(status, 200)
        [pool] = body["pools"]
        self.assertEqual(pool["name"], "web")
        self.assertEqual(pool["policy"], "roundrobin")
        names = [b["name"] for b in pool["backends"]]
        self.assertEqual(names, ["a", "b"])
        first = pool["backends"][0]
        for key in ("state", "weight", "active", "total", "failures", "failuresByKind",
                    "bytesIn", "bytesOut", "probeLatency", "responseTime", "share", "url"):
            self.assertIn(key, first)
        self.assertEqual(sum(b["total"] for b in pool["backends"]), 1)
        self.assertEqual(first["url"], backendURL(h.backends.endpoint("a")))

    @inlineCallbacks
    def test_showPoolAndBackend(self) -> Any:
        """
        One pool, its backends, and one backend have their own routes; an
        unknown backend or pool is a 404 naming it.
        """
        h = AdminHarness(self)
        status, pool = yield h.call("GET", "/api/pools/web")
        self.assertEqual((status, pool["name"]), (200, "web"))
        status, backends = yield h.call("GET", "/api/pools/web/backends")
        self.assertEqual([b["name"] for b in backends], ["a", "b"])
        status, backend = yield h.call("GET", "/api/pools/web/backends/b")
        self.assertEqual((status, backend["name"], backend["weight"]), (200, "b", 1))
        status, body = yield h.call("GET", "/api/pools/web/backends/zz")
        self.assertEqual(status, 404)
        self.assertIn("zz", body["error"])
        status, body = yield h.call("GET", "/api/pools/nope/backends")
        self.assertEqual(status, 404)
        self.assertIn("unknown pool 'nope'", body["error"])

    @inlineCallbacks
    def test_unknownPoolIsNotFound(self) -> Any:
        """
        Every route whose path names a pool or a backend that does not exist
        answers 404 with the API's JSON error body naming it, whatever the
        method and body, and changes nothing.
        """
        h = AdminHarness(self)
        before = h.snapshot()
        add = {"name": "x", "endpoint": "tcp:host=127.0.0.1:port=9"}
        cases: list[tuple[str, str, Any, str]] = [
            ("GET", "/api/pools/nope", None, "unknown pool 'nope' (pools: web)"),
            ("GET", "/api/pools/nope/backends", None, "unknown pool 'nope'"),
            ("POST", "/api/pools/nope/backends", add, "unknown pool 'nope'"),
            ("GET", "/api/pools/nope/backends/a", None, "unknown pool 'nope'"),
            ("PATCH", "/api/pools/nope/backends/a", {"weight": 2}, "unknown pool 'nope'"),
            ("DELETE", "/api/pools/nope/backends/a", None, "unknown pool 'nope'"),
            ("DELETE", "/api/pools/nope", None, "'nope'"),
            ("GET", "/api/pools/web/backends/zz", None, "no backend 'zz'"),
            ("PATCH", "/api/pools/web/backends/zz", {"weight": 2}, "no backend 'zz'"),
            ("DELETE", "/api/pools/web/backends/zz", None, "no backend 'zz'"),
            ("GET", "/api/listeners/nope/routes", None, "no listener 'nope'"),
            ("PUT", "/api/listeners/nope/routes", [], "no listener 'nope'"),
        ]
        for method, path, body, message in cases:
            status, headers, raw = yield h.rawCall(method, path, body)
            self.assertEqual((status, headers["content-type"]), (404, "application/json"),
                             (method, path, raw))
            self.assertIn(message, json.loads(raw)["error"], (method, path))
        self.assertEqual(h.snapshot(), before)
        self.assertFalse(os.path.exists(h.statePath))

    @inlineCallbacks
    def test_health(self) -> Any:
        """
        C{GET /api/health} is 200 while every pool has an eligible backend,
        and 503 when one has none.
        """
        h = AdminHarness(self)
        status, body = yield h.call("GET", "/api/health")
        self.assertEqual((status, body["status"]), (200, "ok"))
        for b in h.pool:
            h.pool.setAdmin(b.name, Admin.MAINT)
        status, body = yield h.call("GET", "/api/health")
        self.assertEqual((status, body["status"]), (503, "degraded"))
        self.assertEqual(body["pools"]["web"], {"eligible": 0, "backends": 2})

    @inlineCallbacks
    def test_listeners(self) -> Any:
        """
        C{GET /api/listeners} shows each listener's accepted and active clients.
        """
        h = AdminHarness(self)
        yield inThread(firstLine, h.port)
        yield inThread(firstLine, h.port)
        status, body = yield h.call("GET", "/api/listeners")
        self.assertEqual(status, 200)
        self.assertEqual(body[0]["accepted"], 2)
        self.assertEqual(body[0]["pool"], "web")

    @inlineCallbacks
    def test_errorsAndPercentiles(self) -> Any:
        """
        After HTTP traffic with 5xx and 4xx answers, C{GET /api/pools} shows
        the pool's errors, responses by status class, response-time
        percentiles and recent rates, and their total; C{GET /api/listeners}
        the listener's responses by class.
        """
        h = AdminHarness(self, mode="http", factory=statusSite)
        paths = ["/"] * 6 + ["/status/500"] * 3 + ["/status/404"]
        answers = yield httpRequests(h.port, [("GET", p, None, {}) for p in paths])
        self.assertEqual(sorted(a[0] for a in answers), [200] * 6 + [404] + [500] * 3)
        status, body = yield h.call("GET", "/api/pools")
        self.assertEqual(status, 200)
        [pool] = body["pools"]
        self.assertEqual(pool["requests"], 10)
        self.assertEqual(pool["responses"], {"2xx": 6, "4xx": 1, "5xx": 3})
        self.assertEqual(pool["errors"], 4)
        self.assertEqual(pool["noBackend"], 0)
        percentiles = pool["responsePercentiles"]
        self.assertEqual(percentiles["count"], 10)
        for name in ("p50", "p90", "p99"):
            self.assertGreater(percentiles[name], 0)
        self.assertLessEqual(percentiles["p50"], percentiles["p90"])
        self.assertLessEqual(percentiles["p90"], percentiles["p99"])
        self.assertEqual(
            sum(b["responsePercentiles"]["count"] for b in pool["backends"]), 10)
        # The admin service sampled the counters when it started, before
        # the traffic: the recent rates count all of it.
        recent = pool["recent"]
        self.assertGreater(recent["seconds"], 0)
        self.assertAlmostEqual(recent["requestRate"] * recent["seconds"], 10, places=6)
        self.assertAlmostEqual(recent["errorRate"] * recent["seconds"], 4, places=6)
        self.assertAlmostEqual(recent["responseRates"]["5xx"] * recent["seconds"], 3,
                               places=6)
        self.assertEqual(recent["responsePercentiles"]["count"], 10)
        total = body["total"]
        self.assertEqual((total["requests"], total["errors"]), (10, 4))
        self.assertEqual(total["responses"], pool["responses"])
        self.assertEqual(total["responsePercentiles"], percentiles)
        status, listeners = yield h.call("GET", "/api/listeners")
        self.assertEqual(listeners[0]["responses"], {"2xx": 6, "4xx": 1, "5xx": 3})
        self.assertEqual(listeners[0]["refused"], 0)
        self.assertEqual(listeners[0]["active"], 0)

    @inlineCallbacks
    def test_queueTimeouts(self) -> Any:
        """
        An HTTP request that waits out the queue timeout is answered 503 and
        counted in the pool's C{queueTimeouts} and C{errors}.
        """

        def configure(data: dict[str, Any]) -> None:
            data["pools"]["web"]["queue"] = {"size": 5, "timeout": 0.2}
            data["pools"]["web"]["backends"][0]["maxconn"] = 1

        h = AdminHarness(self, names=("a",), mode="http", factory=statusSite,
                         configure=configure)
        a = h.pool.get("a")
        assert a is not None
        h.pool.acquire(a)  # as if a client held its only slot
        [answer] = yield httpRequests(h.port, [("GET", "/", None, {})])
        h.pool.release(a)
        self.assertEqual(answer[0], 503)
        status, body = yield h.call("GET", "/api/pools/web")
        self.assertEqual((body["queueTimeouts"], body["queueFull"], body["queued"]), (1, 0, 1))
        self.assertEqual((body["errors"], body["responses"]), (1, {"5xx": 1}))

    @inlineCallbacks
    def test_unknownRouteAndMethod(self) -> Any:
        """
        An unknown path is a 404; a known path with the wrong method is a 405
        with an C{Allow} header.
        """
        h = AdminHarness(self)
        status, _, _ = yield h.rawCall("GET", "/api/nothing")
        self.assertEqual(status, 404)
        status, headers, _ = yield h.rawCall("PUT", "/api/pools/web/backends")
        self.assertEqual(status, 405)
        self.assertIn("POST", headers["allow"])

    @inlineCallbacks
    def test_staticFiles(self) -> Any:
        """
        The dashboard and its script are served from the package, and no
        other file is.
        """
        h = AdminHarness(self)
        status, headers, body = yield h.rawCall("GET", "/")
        self.assertEqual(status, 200)
        self.assertIn("text/html", headers["content-type"])
        self.assertIn(b"/static/dashboard.js", body)
        status, headers, body = yield h.rawCall("GET", "/static/dashboard.js")
        self.assertEqual(status, 200)
        self.assertIn(b"setInterval", body)
        status, _, _ = yield h.rawCall("GET", "/static/..%2Fadmin.py")
        self.assertEqual(status, 404)


class ChangeTests(TestCase):
    """
    The routes that change the pool, their validation, and the state file.
    """

    @inlineCallbacks
    def test_addBackend(self) -> Any:
        """
        C{POST /api/pools/{pool}/backends} adds a backend that then gets
        traffic, answers 201, and saves the change to the state file.
        """
        h = AdminHarness(self, names=("a",))
        c = h.backends.start("c")
        status, body = yield h.call("POST", "/api/pools/web/backends",
                                    {"name": "c", "host": "127.0.0.1", "port": c,
                                     "weight": 3})
        self.assertEqual(status, 201, body)
        self.assertEqual((body["name"], body["weight"]), ("c", 3))
        self.assertIn("c", h.pool)
        seen = set()
        for _ in range(6):
            seen.add((yield inThread(firstLine, h.port)))
        self.assertEqual(seen, {b"a", b"c"})
        with open(h.statePath) as f:
            saved = json.load(f)
        self.assertEqual(saved["pools"]["web"]["added"],
                         [{"name": "c", "endpoint": f"tcp:host=127.0.0.1:port={c}",
                           "weight": 3}])

    @inlineCallbacks
    def test_addWithState(self) -> Any:
        """
        A backend can be added straight into maintenance.
        """
        h = AdminHarness(self)
        status, body = yield h.call("POST", "/api/pools/web/backends",
                                    {"name": "m", "endpoint": "tcp:host=127.0.0.1:port=9",
                                     "state": "maint"})
        self.assertEqual((status, body["state"]), (201, "maint"))
        self.assertIs(h.pool.get("m").admin, Admin.MAINT)  # type: ignore[union-attr]

    @inlineCallbacks
    def test_addDuplicate(self) -> Any:
        """
        Adding a name the pool has is a 409, and the pool is unchanged.
        """
        h = AdminHarness(self)
        before = h.snapshot()
        status, body = yield h.call("POST", "/api/pools/web/backends",
                                    {"name": "a", "endpoint": "tcp:host=127.0.0.1:port=9"})
        self.assertEqual(status, 409)
        self.assertIn("'a'", body["error"])
        self.assertEqual(h.snapshot(), before)

    @inlineCallbacks
    def test_upgradeWithoutWorkers(self) -> Any:
        """
        An upgrade of a single process is a 409 that names both ways to
        start one that can upgrade: workers, or a master with one worker.
        """
        h = AdminHarness(self)
        status, body = yield h.call("POST", "/api/upgrade", {})
        self.assertEqual(status, 409)
        self.assertIn("--workers 2 or more (workers: in the file)", body["error"])
        self.assertIn("--master (master: true) for one worker with a master", body["error"])

    @inlineCallbacks
    def test_largeBodies(self) -> Any:
        """
        A body over 64 KiB, given with a length or chunked, is a 413 and is
        never spooled to disk; the pool is unchanged.
        """
        h = AdminHarness(self)
        before = h.snapshot()
        big = b'{"name": "' + b"x" * 200_000 + b'"}'
        status, answer = yield h.call("POST", "/api/pools/web/backends", None, raw=big)
        self.assertEqual(status, 413)
        self.assertIn("larger than", answer["error"])

        def chunked() -> int:
            conn = http.client.HTTPConnection("127.0.0.1", h.admin, timeout=10)
            try:
                conn.request("POST", "/api/pools/web/backends",
                             body=iter([b"x" * 50_000] * 4),
                             headers={"Authorization": f"Bearer {TOKEN}",
                                      "Transfer-Encoding": "chunked"},
                             encode_chunked=True)
                return conn.getresponse().status
            finally:
                conn.close()

        status = yield inThread(chunked)
        self.assertEqual(status, 413)
        self.assertEqual(h.snapshot(), before)

    @inlineCallbacks
    def test_addBadInput(self) -> Any:
        """
        Bad JSON, a body that is not an object, unknown fields, wrong types,
        and bad values are 400s naming the problem, and the pool is unchanged.
        """
        h = AdminHarness(self)
        before = h.snapshot()
        cases: list[tuple[str, Any, str]] = [
            ("/api/pools/web/backends", b"{not json", "not valid JSON"),
            ("/api/pools/web/backends", b"[1, 2]", "must be a JSON object"),
            ("/api/pools/web/backends", {"name": "x", "endpoint": "tcp:host=h:port=1",
                                         "colour": "red"}, "unknown field 'colour'"),
            ("/api/pools/web/backends", {"name": 5, "endpoint": "tcp:host=h:port=1"},
             "name: expected a string"),
            ("/api/pools/web/backends", {"name": "x", "host": "h", "port": "80"},
             "port: expected an integer"),
            ("/api/pools/web/backends", {"name": "x", "endpoint": "tcp:host=h:port=1",
                                         "weight": "3"}, "weight: expected an integer"),
            ("/api/pools/web/backends", {"name": "x", "endpoint": "tcp:host=h:port=1",
                                         "weight": 999}, "0-256"),
            ("/api/pools/web/backends", {"name": "x", "endpoint": "tcp:host=h:port=1",
                                         "state": "sleepy"}, "ready, drain, maint"),
            ("/api/pools/web/backends", {"name": "x", "endpoint": "carrier-pigeon:h"},
             "endpoint"),
            ("/api/pools/web/backends", {"name": "x", "host": "h", "port": 70000},
             "port"),
            ("/api/pools/web/backends", {"name": "bad name!", "endpoint":
                                         "tcp:host=h:port=1"}, "name"),
            ("/api/pools/web/backends", {"name": "x"}, "endpoint, or a host and a port"),
            ("/api/pools/web/backends", {"name": "x", "host": "[::1", "port": 1},
             "host: expected a host name or an IP address, like 'app.internal', '10.0.0.5', "
             "'::1' or '[::1]', got '[::1'"),
            ("/api/pools/web/backends", {"name": "x", "endpoint": "tcp:host=[::1]:port=1"},
             "endpoint: an IPv6 address in an endpoint string has its colons escaped"),
        ]
        for path, body, message in cases:
            raw = body if isinstance(body, bytes) else None
            status, answer = yield h.call("POST", path, None if raw else body, raw=raw)
            self.assertEqual(status, 400, (body, answer))
            self.assertIn(message, answer["error"], body)
        self.assertEqual(h.snapshot(), before)
        self.assertFalse(os.path.exists(h.statePath))

    @inlineCallbacks
    def test_patchWeightAndState(self) -> Any:
        """
        C{PATCH} changes a backend's weight and admin state, and saves them.
        """
        h = AdminHarness(self)
        status, body = yield h.call("PATCH", "/api/pools/web/backends/a",
                                    {"weight": 7, "state": "drain"})
        self.assertEqual(status, 200, body)
        self.assertEqual((body["weight"], body["state"]), (7, "drain"))
        a = h.pool.get("a")
        assert a is not None
        self.assertEqual((a.weight, a.admin), (7, Admin.DRAIN))
        self.assertFalse(a.eligible)
        for _ in range(3):
            self.assertEqual((yield inThread(firstLine, h.port)), b"b")
        status, body = yield h.call("PATCH", "/api/pools/web/backends/a", {"state": "maint"})
        self.assertEqual(body["state"], "maint")
        status, body = yield h.call("PATCH", "/api/pools/web/backends/a", {"state": "ready"})
        self.assertEqual(a.admin, Admin.READY)
        with open(h.statePath) as f:
            saved = json.load(f)["pools"]["web"]
        self.assertEqual((saved["weights"], saved["admin"]), ({"a": 7}, {}))

    @inlineCallbacks
    def test_patchBackupAndSlowStart(self) -> Any:
        """
        C{PATCH} makes a backend a backup (it then takes no new clients
        while a primary serves) and gives it a slow start; both are saved,
        and a balancer starting from the state file has them again.
        """
        h = AdminHarness(self)
        status, body = yield h.call("PATCH", "/api/pools/web/backends/a",
                                    {"backup": True, "slow-start": "30s"})
        self.assertEqual(status, 200, body)
        self.assertTrue(body["backup"])
        a = h.pool.get("a")
        assert a is not None
        self.assertEqual((a.backup, a.config.slowStart), (True, 30.0))
        for _ in range(4):
            self.assertEqual((yield inThread(firstLine, h.port)), b"b")
        with open(h.statePath) as f:
            saved = json.load(f)["pools"]["web"]
        self.assertEqual(saved["settings"], {"a": {"backup": True, "slow-start": 30.0}})
        # What a restart reads back.
        overrides = StateFile(h.statePath).load()
        [pc] = overrides.apply(h.lb.config).pools
        self.assertEqual([(b.name, b.backup, b.slowStart) for b in pc.backends],
                         [("a", True, 30.0), ("b", False, None)])
        status, body = yield h.call("PATCH", "/api/pools/web/backends/a", {"backup": False})
        self.assertFalse(a.backup)
        names = set()
        for _ in range(4):
            names.add((yield inThread(firstLine, h.port)))
        self.assertEqual(names, {b"a", b"b"})

    @inlineCallbacks
    def test_patchBadInput(self) -> Any:
        """
        A C{PATCH} with bad JSON, unknown fields, wrong types, bad values, no
        change, an unknown pool or an unknown backend changes nothing.
        """
        h = AdminHarness(self)
        before = h.snapshot()
        cases: list[tuple[str, Any, int, str]] = [
            ("/api/pools/web/backends/a", b"nope", 400, "not valid JSON"),
            # Nested past Python's recursion limit (it raised out of the
            # handler: a 500 and a traceback).
            ("/api/pools/web/backends/a", b"[" * 60000, 400, "nested too deeply"),
            # Ambiguous: which weight?
            ("/api/pools/web/backends/a", b'{"weight": 1, "weight": 2}', 400,
             "duplicate field 'weight'"),
            ("/api/pools/web/backends/a", {"weight": 2, "name": "z"}, 400,
             "unknown field 'name'"),
            ("/api/pools/web/backends/a", {"weight": 1.5}, 400, "weight"),
            ("/api/pools/web/backends/a", {"weight": True}, 400, "weight"),
            ("/api/pools/web/backends/a", {"weight": -1}, 400, "0-256"),
            # The state is checked before the weight is applied.
            ("/api/pools/web/backends/a", {"weight": 9, "state": "off"}, 400, "state"),
            ("/api/pools/web/backends/a", {"state": 1}, 400, "state"),
            ("/api/pools/web/backends/a", {}, 400, "nothing to change"),
            ("/api/pools/web/backends/a", {"backup": "yes"}, 400, "backup"),
            ("/api/pools/web/backends/a", {"backup": True, "slow-start": "soon"}, 400,
             "slow-start"),
            ("/api/pools/zz/backends/a", {"weight": 2}, 404, "unknown pool 'zz'"),
            ("/api/pools/web/backends/zz", {"weight": 2}, 404, "'zz'"),
        ]
        for path, body, code, message in cases:
            raw = body if isinstance(body, bytes) else None
            status, answer = yield h.call("PATCH", path, None if raw else body, raw=raw)
            self.assertEqual(status, code, (body, answer))
            self.assertIn(message, answer["error"], body)
        self.assertEqual(h.snapshot(), before)

    @inlineCallbacks
    def test_removeDrainsThenCloses(self) -> Any:
        """
        C{DELETE} takes the backend out of rotation at once; its open
        connections keep working until the grace period is over, and are
        closed then.  An unknown backend is a 404.
        """
        h = AdminHarness(self, grace=0.5)
        sock = yield inThread(socket.create_connection, ("127.0.0.1", h.port), 5)
        self.addCleanup(sock.close)
        first = yield inThread(sock.recv, 100)
        name = first.strip().decode()
        other = "b" if name == "a" else "a"
        status, body = yield h.call("DELETE", f"/api/pools/web/backends/{name}")
        self.assertEqual(status, 200, body)
        self.assertEqual((body["name"], body["draining"]), (name, 1))
        self.assertNotIn(name, h.pool)
        # In flight: still relayed.
        yield inThread(sock.sendall, b"still here\n")
        self.assertEqual((yield inThread(sock.recv, 100)), b"still here\n")
        # New clients go to the other backend.
        self.assertEqual((yield inThread(firstLine, h.port)), other.encode())
        # After the grace period the connection is closed.
        yield sleep(0.8)
        sock.settimeout(5)
        self.assertEqual((yield inThread(recvOrReset, sock)), b"")
        status, body = yield h.call("DELETE", f"/api/pools/web/backends/{name}")
        self.assertEqual(status, 404)

    @inlineCallbacks
    def test_removeIdleBackend(self) -> Any:
        """
        Removing a backend with no connection leaves no drain timer behind,
        and is saved.
        """
        h = AdminHarness(self)
        status, body = yield h.call("DELETE", "/api/pools/web/backends/b")
        self.assertEqual((status, body["draining"]), (200, 0))
        self.assertEqual(h.live.draining, {})
        with open(h.statePath) as f:
            self.assertEqual(json.load(f)["pools"]["web"]["removed"], ["b"])

    @inlineCallbacks
    def test_saveFailureChangesNothing(self) -> Any:
        """
        When the state cannot be saved the answer is a 500 and the pool is
        unchanged: a success always means the change was saved.
        """
        h = AdminHarness(self)
        h.live.stateFile = StateFile(os.path.join(self.mktemp(), "missing-dir", "s.json"))
        before = h.snapshot()
        status, body = yield h.call("PATCH", "/api/pools/web/backends/a", {"weight": 5})
        self.assertEqual(status, 500)
        self.assertIn("nothing changed", body["error"])
        status, body = yield h.call("DELETE", "/api/pools/web/backends/a")
        self.assertEqual(status, 500)
        self.assertEqual(h.snapshot(), before)

    @inlineCallbacks
    def test_twoChangesOneSave(self) -> Any:
        """
        A change of weight and state together is saved once: when that save
        fails, neither is applied; when it works, the state file has both.
        """
        h = AdminHarness(self)
        saves: list[object] = []
        good = h.live.stateFile
        assert good is not None

        class FailSecond(StateFile):
            def save(self, overrides: Any) -> None:
                saves.append(overrides)
                raise OSError("disk full")

        h.live.stateFile = FailSecond(good.path)
        before = h.snapshot()
        status, _ = yield h.call("PATCH", "/api/pools/web/backends/a",
                                 {"weight": 5, "state": "drain"})
        self.assertEqual(status, 500)
        self.assertEqual(len(saves), 1)
        self.assertEqual(h.snapshot(), before)
        h.live.stateFile = good
        status, _ = yield h.call("PATCH", "/api/pools/web/backends/a",
                                 {"weight": 5, "state": "drain"})
        self.assertEqual(status, 200)
        loaded = good.load()
        self.assertEqual(loaded.pools["web"].weights, {"a": 5})
        self.assertEqual(loaded.pools["web"].admin, {"a": Admin.DRAIN})


class TokenTests(TestCase):
    """
    Every change needs the bearer token.
    """

    @inlineCallbacks
    def test_mutationsNeedToken(self) -> Any:
        """
        Without a token, or with a wrong one or another scheme, every
        mutating route answers 401 and changes nothing; reads need none.
        """
        h = AdminHarness(self)
        before = h.snapshot()
        requests = [
            ("POST", "/api/pools/web/backends", {"name": "x", "endpoint": "tcp:host=h:port=1"}),
            ("PATCH", "/api/pools/web/backends/a", {"weight": 5}),
            ("DELETE", "/api/pools/web/backends/a", None),
            ("POST", "/addServer", {"URL": "http://127.0.0.1:9"}),
            ("DELETE", "/removeServer", {"URL": h.pool.get("a").endpoint}),  # type: ignore[union-attr]
            ("POST", "/api/reload", None),
        ]
        for method, path, body in requests:
            for kw in ({"token": None}, {"token": "wrong"}, {"token": TOKEN[:-1]},
                       {"token": None, "headers": {"Authorization": f"Basic {TOKEN}"}}):
                status, headers, answer = yield h.rawCall(method, path, body, **kw)
                self.assertEqual(status, 401, (method, path, kw))
                self.assertIn("Bearer", headers["www-authenticate"])
                self.assertIn("token", json.loads(answer)["error"])
        self.assertEqual(h.snapshot(), before)
        status, _ = yield h.call("GET", "/api/pools", token=None)
        self.assertEqual(status, 200)

    @inlineCallbacks
    def test_tokenRotatedByReload(self) -> Any:
        """
        After a reload whose file names a new token, the new token is needed
        and the old one is refused.
        """
        h = AdminHarness(self)
        h.live.loadConfig = lambda: attrs.evolve(h.lb.config, adminToken="rotated")
        status, answer = yield h.call("POST", "/api/reload", None)
        self.assertEqual((status, answer), (200, {"status": "reloaded"}))
        status, _ = yield h.call("PATCH", "/api/pools/web/backends/a", {"weight": 3})
        self.assertEqual(status, 401)
        status, _ = yield h.call("PATCH", "/api/pools/web/backends/a", {"weight": 3},
                                 token="rotated")
        self.assertEqual(status, 200)

    @inlineCallbacks
    def test_noTokenConfigured(self) -> Any:
        """
        With no token configured, changes are refused with a message saying
        how to set one.
        """
        h = AdminHarness(self, token=None)
        status, body = yield h.call("PATCH", "/api/pools/web/backends/a", {"weight": 5},
                                    token="anything")
        self.assertEqual(status, 401)
        self.assertIn("LBTWIST_ADMIN_TOKEN", body["error"])
        self.assertEqual(h.pool.get("a").weight, 1)  # type: ignore[union-attr]


def resourceFor(case: SynchronousTestCase, factories: dict[str, Any]) -> AdminResource:
    """
    An admin resource on a task clock over pools C{web} (served by listener
    C{front}, HTTP) and C{db} (listener C{raw}, TCP), with the listeners'
    C{factories} given.
    """
    config = parseConfig({
        "listeners": [
            {"name": "front", "listen": "tcp:0", "mode": "http", "pool": "web"},
            {"name": "raw", "listen": "tcp:1", "pool": "db"},
        ],
        "pools": {
            "web": {"backends": [{"name": n, "endpoint": f"tcp:host=h:port={i + 1}"}
                                 for i, n in enumerate("upmdr")]},
            "db": {"backends": [{"name": "x", "endpoint": "tcp:host=h:port=9"}]},
        },
    })
    pools = {p.name: BackendPool(p) for p in config.pools}
    balancer = SimpleNamespace(pools=pools, factories=factories, config=config)
    clock = Clock()
    live = LiveConfig(pools, config, clock, StateFile(case.mktemp()))
    return AdminResource(balancer, live, None, clock)


def get(resource: AdminResource, path: str) -> Any:
    """
    C{GET path} on C{resource}, decoded from JSON.
    """
    request = DummyRequest(path.encode().split(b"/")[1:])
    request.path = path.encode()
    request.method = b"GET"
    return json.loads(resource.render(request))


class ResourceTests(SynchronousTestCase):
    """
    The JSON views on a task clock, with no sockets.
    """

    def test_goListHealthy(self) -> None:
        """
        C{/list} calls a backend C{Healthy} when it gets new traffic: up,
        or unknown (not checked yet) and ready; not down, maint or drain.
        """
        resource = resourceFor(self, {})
        pool = resource.live.pools["web"]
        for name, health in (("p", Health.UP), ("d", Health.DOWN), ("r", Health.UP)):
            pool.get(name).health = health  # type: ignore[union-attr]
        pool.setAdmin("m", Admin.MAINT)
        pool.setAdmin("r", Admin.DRAIN)
        listed = get(resource, "/list")
        healthy = {e["URL"].rsplit(":", 1)[1]: e["Healthy"] for e in listed}
        self.assertEqual(healthy, {"1": True, "2": True, "3": False, "4": False,
                                   "5": False})

    def test_workersUpgradeFailed(self) -> None:
        """
        C{/api/workers} lists a master's workers, and the re-exec that was
        answered but failed, if any (what C{lbtwist ctl upgrade} waits on).
        """
        from twisted.internet.defer import succeed

        worker = {"worker": 1, "generation": 2, "state": "serving"}
        group = SimpleNamespace(view=lambda: [worker], execFailed=None,
                                refresh=lambda: succeed(None), settle=lambda: succeed(None))
        resource = resourceFor(self, {})
        resource.group = group  # type: ignore[assignment]

        def workers() -> Any:
            # A master's reads are answered once its workers' counters are
            # in (at once, here).
            request = DummyRequest([b"api", b"workers"])
            request.path, request.method = b"/api/workers", b"GET"
            resource.render(request)
            return json.loads(b"".join(request.written))

        self.assertEqual(workers(), {"workers": [worker]})
        group.execFailed = (3, "the master cannot re-execute itself (gone)")
        self.assertEqual(workers(), {
            "workers": [worker],
            "upgrade-failed": {"generation": 3,
                               "error": "the master cannot re-execute itself (gone)"}})

    def test_errorsByMode(self) -> None:
        """
        A pool an HTTP listener serves counts its 4xx and 5xx answers as
        errors; a TCP-only pool counts the clients refused: for lack of a
        backend, a full queue, or a queue timeout.
        """
        front = SimpleNamespace(accepted=9, activeClients=2, refused=1,
                                statuses={"2xx": 5, "4xx": 1, "5xx": 2})
        resource = resourceFor(self, {"front": front,
                                      "raw": SimpleNamespace(accepted=4, activeClients=1)})
        db = resource.live.pools["db"]
        db.noBackend, db.queueFull, db.queueTimeouts = 1, 2, 3
        web = resource.live.pools["web"]
        web.noBackend = 7
        body = get(resource, "/api/pools")
        views = {p["name"]: p for p in body["pools"]}
        self.assertEqual(views["web"]["errors"], 3)
        self.assertEqual(views["web"]["responses"], {"2xx": 5, "4xx": 1, "5xx": 2})
        self.assertEqual(views["db"]["errors"], 6)
        self.assertEqual(views["db"]["responses"], {})
        self.assertEqual((views["db"]["queueFull"], views["db"]["queueTimeouts"]), (2, 3))
        self.assertEqual(body["total"]["errors"], 9)
        self.assertEqual(body["total"]["noBackend"], 8)
        self.assertIsNone(body["total"]["responsePercentiles"]["p50"])
        self.assertEqual(get(resource, "/api/pools/db")["errors"], 6)
        listeners = {item["name"]: item for item in get(resource, "/api/listeners")}
        self.assertEqual(listeners["front"]["responses"], front.statuses)
        self.assertEqual((listeners["front"]["active"], listeners["front"]["refused"]),
                         (2, 1))
        self.assertEqual((listeners["raw"]["responses"], listeners["raw"]["active"]),
                         ({}, 1))

    def test_recent(self) -> None:
        """
        Recent rates are measured from the oldest sample of the window to
        the request's own numbers; none before the first sample.
        """
        front = SimpleNamespace(statuses={"2xx": 0})
        resource = resourceFor(self, {"front": front})
        self.assertIsNone(get(resource, "/api/pools")["total"]["recent"])
        resource.history.add(resource.sample())
        web = resource.live.pools["web"]
        u = web.get("u")
        assert u is not None
        for _ in range(8):
            web.opened(u)
            u.responseTime = 0.02
        front.statuses = {"2xx": 6, "5xx": 2}
        resource.clock.advance(4)  # type: ignore[attr-defined]
        body = get(resource, "/api/pools")
        recent = body["pools"][0]["recent"]
        self.assertEqual(recent["seconds"], 4)
        self.assertEqual(recent["requestRate"], 2.0)
        self.assertEqual(recent["errorRate"], 0.5)
        self.assertEqual(recent["responseRates"], {"2xx": 1.5, "5xx": 0.5})
        self.assertTrue(0.01 < recent["responsePercentiles"]["p50"] <= 0.025)
        self.assertEqual(body["total"]["recent"]["requestRate"], 2.0)
        self.assertEqual(body["pools"][1]["recent"]["requestRate"], 0.0)
        # Past the window, the old sample is no base any more.
        resource.clock.advance(20)  # type: ignore[attr-defined]
        self.assertIsNone(get(resource, "/api/pools")["total"]["recent"])


class SlowClientTests(SynchronousTestCase):
    """
    The admin listener's time limits, on a task clock: a request must
    arrive whole within L{REQUEST_TIMEOUT} of its first line however it is
    trickled, and a connection with nothing to do closes after
    L{IDLE_TIMEOUT} (twisted.web's default would hold both for 12 hours).
    """

    def connect(self) -> tuple[Clock, Any, StringTransport]:
        """
        A connection to an admin site on a task clock.
        """
        clock = Clock()
        site = adminSite(resourceFor(self, {}), clock)
        channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        channel.makeConnection(transport)
        return clock, channel, transport

    def trickle(self, first: bytes, piece: bytes) -> StringTransport:
        """
        Send C{first}, then C{piece} every second: the connection is still
        open just before L{REQUEST_TIMEOUT}, and timed out at it.
        """
        clock, channel, transport = self.connect()
        channel.dataReceived(first)
        for _ in range(int(REQUEST_TIMEOUT) - 1):
            clock.advance(1)
            channel.dataReceived(piece)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)
        return transport

    def test_trickledHead(self) -> None:
        """
        A head trickled a line a second is cut L{REQUEST_TIMEOUT} after
        its first line, unanswered.
        """
        transport = self.trickle(b"GET /api/pools HTTP/1.1\r\n", b"X-A: b\r\n")
        self.assertEqual(transport.value(), b"")

    def test_trickledBody(self) -> None:
        """
        A body trickled a byte a second is cut as a head is.
        """
        self.trickle(b"PATCH /api/pools/web/backends/u HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 1000\r\n\r\n", b"{")

    def test_answeredThenIdle(self) -> None:
        """
        A request that arrives in time is answered and its timer is gone;
        the connection then closes after L{IDLE_TIMEOUT} with nothing to do.
        """
        clock, channel, transport = self.connect()
        channel.dataReceived(b"GET /api/pools HTTP/1.1\r\nHost: x\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 OK"))
        clock.advance(IDLE_TIMEOUT - 1)
        self.assertFalse(transport.disconnecting)
        clock.advance(1)
        self.assertTrue(transport.disconnecting)


class GoCompatibleTests(TestCase):
    """
    The Go design's routes: C{/addServer}, C{/removeServer}, C{/list},
    C{/health}, acting on the first pool.
    """

    @inlineCallbacks
    def test_addListRemove(self) -> Any:
        """
        A server added with C{{"URL": ...}} (any case of the field name) is
        listed with C{URL}, C{ActiveConns} and C{Healthy}, and removed again.
        """
        h = AdminHarness(self, names=("a",))
        c = h.backends.start("c")
        url = f"http://127.0.0.1:{c}"
        status, body = yield h.call("POST", "/addServer", {"url": url})
        self.assertEqual((status, body), (200, {"status": "success"}))
        self.assertIn(f"127.0.0.1:{c}", h.pool)
        added = h.pool.get(f"127.0.0.1:{c}")
        assert added is not None
        # Health checks (every 0.2 s, rise 1) mark it up.
        self.assertTrue((yield waitFor(lambda: added.health is Health.UP)), added.health)
        status, listed = yield h.call("GET", "/list")
        self.assertEqual(status, 200)
        entry = next(e for e in listed if e["URL"] == url)
        self.assertEqual(entry, {"URL": url, "ActiveConns": 0, "Healthy": True})
        self.assertIsInstance(listed[0]["URL"], str)
        status, body = yield h.call("DELETE", "/removeServer", {"Url": url})
        self.assertEqual((status, body), (200, {"status": "success"}))
        self.assertNotIn(f"127.0.0.1:{c}", h.pool)

    @inlineCallbacks
    def test_ipv6StateLoads(self) -> Any:
        """
        A server added by an IPv6 URL, or by host (bare or in brackets) and
        port with no name, is saved under a name the state file loads again
        at the next start.
        """
        h = AdminHarness(self, names=("a",))
        status, _ = yield h.call("POST", "/addServer", {"URL": "http://[::1]:8080"})
        self.assertEqual(status, 200)
        status, _ = yield h.call("POST", "/api/pools/web/backends", {"host": "::1", "port": 8081})
        self.assertEqual(status, 201)
        # In brackets, as the URL writes it.
        status, _ = yield h.call("POST", "/api/pools/web/backends",
                                 {"host": "[::1]", "port": 8082})
        self.assertEqual(status, 201)
        self.assertIn("[::1]:8080", h.pool)
        self.assertIn("[::1]:8081", h.pool)
        self.assertEqual(h.pool.get("[::1]:8082").endpoint,  # type: ignore[union-attr]
                         "tcp:host=\\:\\:1:port=8082")
        loaded = StateFile(h.statePath).load()
        self.assertEqual(sorted(loaded.pools["web"].added),
                         ["[::1]:8080", "[::1]:8081", "[::1]:8082"])

    @inlineCallbacks
    def test_errors(self) -> Any:
        """
        Bad bodies are C{Invalid input}, bad URLs C{Invalid URL} (both 400);
        a duplicate add is a 409 and removing an unknown server a 404.
        """
        h = AdminHarness(self)
        before = h.snapshot()
        invalidInput: list[Any] = [b"{", b"[]", {"URL": 5}, {"Address": "http://h:1"},
                                   {"URL": "http://h:1", "extra": 1}, {}]
        for path, method in (("/addServer", "POST"), ("/removeServer", "DELETE")):
            for body in invalidInput:
                raw = body if isinstance(body, bytes) else None
                status, answer = yield h.call(method, path, None if raw else body, raw=raw)
                self.assertEqual((status, answer), (400, {"error": "Invalid input"}), body)
            for url in ("not a url", "ftp://h:21", "http://", "http://h:99999",
                        "https://h:443", "http://h:1/path", "http://h:1/?q=1",
                        "http://bad host:80", "http://a%20b:80", "http://h_!:80"):
                status, answer = yield h.call(method, path, {"URL": url})
                self.assertEqual((status, answer), (400, {"error": "Invalid URL"}), url)
        a = h.pool.get("a")
        assert a is not None
        status, answer = yield h.call("POST", "/addServer", {"URL": backendURL(a.endpoint)})
        self.assertEqual(status, 409)
        status, answer = yield h.call("DELETE", "/removeServer",
                                      {"URL": "http://127.0.0.1:1"})
        self.assertEqual(status, 404)
        self.assertEqual(h.snapshot(), before)

    @inlineCallbacks
    def test_health(self) -> Any:
        """
        C{GET /health} answers C{OK}.
        """
        h = AdminHarness(self)
        status, _, body = yield h.rawCall("GET", "/health")
        self.assertEqual((status, body), (200, b"OK"))


class ListenerRuleTests(SynchronousTestCase):
    """
    The admin listener's address and token rules.
    """

    def config(self, **kw: Any) -> Any:
        """
        A small valid configuration with C{kw} set.
        """
        return attrs.evolve(parseConfig(poolConfig([("a", "tcp:host=h:port=1")])), **kw)

    def test_refuseOpenWithoutToken(self) -> None:
        """
        A non-loopback admin listener without a token is refused, naming
        the way out; with a token (from the file or the environment) it is
        allowed.
        """
        e = self.assertRaises(ConfigError, checkAdmin, self.config(admin="tcp:9000"), {})
        self.assertIn("admin-token", str(e))
        self.assertEqual(
            checkAdmin(self.config(admin="tcp:9000", adminToken="t"), {}).adminToken, "t")
        self.assertEqual(
            checkAdmin(self.config(admin="tcp:9000"),
                       {"LBTWIST_ADMIN_TOKEN": "env"}).adminToken, "env")

    def test_fileTokenWins(self) -> None:
        """
        The file's token is used over the environment's; the default
        listener is loopback and needs none.
        """
        config = checkAdmin(self.config(adminToken="file"), {"LBTWIST_ADMIN_TOKEN": "env"})
        self.assertEqual(config.adminToken, "file")
        self.assertIsNone(checkAdmin(self.config(), {}).adminToken)

    def test_serviceRefusesOpen(self) -> None:
        """
        The service itself refuses a non-loopback listener without a token.
        """

        class Balancer:
            config = self.config(admin="tcp:9000")
            pools: ClassVar[dict[str, Any]] = {}
            factories: ClassVar[dict[str, Any]] = {}

        live = LiveConfig({}, Balancer.config, reactor)
        self.assertRaises(ConfigError, AdminService, Balancer(), live, reactor, {})


class DefaultListenerTests(TestCase):
    """
    The default admin listener is optional; a configured one is not.
    """

    def setUp(self) -> None:
        self.blocker = socket.socket()
        self.blocker.bind(("127.0.0.1", 0))
        self.blocker.listen(1)
        self.addCleanup(self.blocker.close)
        self.busy = self.blocker.getsockname()[1]

    def service(self, admin: str | None) -> AdminService:
        lb, _ = startBalancer(self, poolConfig([("a", "tcp:host=127.0.0.1:port=9")]))
        lb.config = attrs.evolve(lb.config, admin=admin)
        return AdminService(lb, LiveConfig(lb.pools, lb.config, reactor), reactor, {})

    def test_configuredBusyPortStops(self) -> None:
        """
        A configured admin endpoint that cannot listen stops the start.
        """
        s = self.service(f"tcp:{self.busy}:interface=127.0.0.1")
        e = self.assertRaises(SystemExit, s.startService)
        self.assertIn("admin API cannot listen", str(e))

    def test_defaultBusyPortIsLogged(self) -> None:
        """
        The default endpoint being busy is logged, and the balancer goes on.
        """
        from lbtwist.admin import _service

        self.patch(_service, "DEFAULT_ADMIN", f"tcp:{self.busy}:interface=127.0.0.1")
        s = self.service(None)
        s.startService()
        self.assertIsNone(s.port)
        s.stopService()


class EjectionViewTests(SynchronousTestCase):
    """
    The backend view says whether a backend is ejected as an outlier,
    until when and how many times it was.
    """

    def test_ejected(self) -> None:
        """
        A backend ejected shows C{ejected: true}, its end time on the pool
        clock and its count, in its own view and in its pool's; when the
        ejection is over it shows as back, its count kept.
        """
        clock = Clock()
        clock.advance(100.0)
        pool = ejectingPool(2, clock, baseEjection=30.0)
        a = pool.get("a")
        assert a is not None
        self.assertEqual(
            {k: backendView(pool, a)[k] for k in ("ejected", "ejectedUntil", "ejections")},
            {"ejected": False, "ejectedUntil": None, "ejections": 0},
        )
        for _ in range(5):
            pool.exchangeError(a, "status 500", 500)
        view = backendView(pool, a)
        self.assertEqual((view["ejected"], view["ejectedUntil"], view["ejections"]),
                         (True, 130.0, 1))
        self.assertEqual(poolView(pool)["eligible"], 1)
        self.assertEqual(poolView(pool)["backends"][0]["ejected"], True)
        clock.advance(30.0)
        view = backendView(pool, a)
        self.assertEqual((view["ejected"], view["ejectedUntil"], view["ejections"]),
                         (False, None, 1))


class BackupViewTests(SynchronousTestCase):
    """
    The backend views show whether a backend is a backup and, while slow
    start ramps it up, its effective weight.
    """

    def test_backupAndRamp(self) -> None:
        """
        C{backup} is shown for every backend; C{effectiveWeight} is the
        weight it has now while it ramps up, and null otherwise.
        """
        now = [0.0]
        pool = BackendPool(PoolConfig("web", (
            BackendConfig("a", "tcp:host=127.0.0.1:port=8000", weight=4),
            BackendConfig("b", "tcp:host=127.0.0.1:port=8001", backup=True),
        ), slowStart=20.0), clock=lambda: now[0])
        pool.setAdmin("a", Admin.DRAIN)
        pool.setAdmin("a", Admin.READY)
        now[0] = 10.0
        a, b = pool.get("a"), pool.get("b")
        assert a is not None and b is not None
        self.assertEqual(
            [(v["backup"], v["weight"], v["effectiveWeight"])
             for v in (backendView(pool, a), backendView(pool, b))],
            [(False, 4, 2.19), (True, 1, None)],
        )
        now[0] = 20.0
        self.assertEqual(
            [(v["name"], v["effectiveWeight"]) for v in poolView(pool)["backends"]],
            [("a", None), ("b", None)],
        )
