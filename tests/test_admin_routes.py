"""
Tests for routes and pools changed at run time through the admin API
(C{GET}/C{PUT /api/listeners/NAME/routes}, C{POST /api/pools},
C{DELETE /api/pools/NAME}), against a whole running balancer
(L{lbtwist.app.Balancer}): changes apply to new clients at once, are saved
to the state file before they are answered, and survive a restart.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import threading
from typing import Any

import yaml
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.logger import formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.admin._views import routeData
from lbtwist.app import Balancer
from lbtwist.config import parseConfig, parseRoutes
from lbtwist.routeconfig import Route, unmatchedPool

from . import test_dashboard
from .support import Backends, NamedFactory, firstLine, inThread, reactor, sleep
from .test_admin import TOKEN, call, jcall, statusSite
from .test_metrics import samples


class BalancerHarness:
    """
    Backends a, b and c, and a whole balancer (data plane, state file,
    admin API) with a tcp listener C{front} routing by source to pool a,
    pool b as its default route; restartable on the same state file.  In
    C{http} mode, the backends answer their names over HTTP and the route
    matches on the path prefix C{/a/} instead.
    """

    def __init__(self, case: TestCase, mode: str = "tcp") -> None:
        self.case = case
        self.backends = Backends(case, statusSite if mode == "http" else NamedFactory)
        for name in ("a", "b", "c"):
            self.backends.start(name)
        self.statePath = os.path.abspath(case.mktemp())
        self.configPath = os.path.abspath(case.mktemp()) + ".yaml"
        self.data = {
            "admin": "tcp:0:interface=127.0.0.1",
            "admin-token": TOKEN,
            "listeners": [{
                "name": "front", "listen": "tcp:0:interface=127.0.0.1", "mode": mode,
                "routes": [{"name": "local", "pool": "a", "match": (
                    {"path-prefix": "/a/"} if mode == "http" else {"source": "127.0.0.0/8"})}],
                "default-route": {"pool": "b"},
            }],
            "pools": {name: {"backends": [{"name": name,
                                           "endpoint": self.backends.endpoint(name)}],
                             "health": {"interval": 0.2}}
                      for name in ("a", "b")},
        }
        self.start()

    def start(self) -> None:
        """
        Start a balancer on the configuration (written to its file, which
        a reload reads again) and the state file.
        """
        self.writeConfig()
        self.balancer = Balancer(parseConfig(self.data), reactor, statePath=self.statePath,
                                 configPath=self.configPath, signals=False,
                                 freezeHeap=False, grace=0.2)
        self.balancer.startService()
        self.case.addCleanup(self.stop)
        self.lb = self.balancer.loadBalancer
        listener = self.lb.getServiceNamed("listener:front")
        self.port = listener._waitingForPort.result.getHost().port
        admin = self.balancer.getServiceNamed("control").getServiceNamed("admin")
        self.admin = admin.port.getHost().port

    @inlineCallbacks
    def stop(self) -> Any:
        """
        Stop the balancer (once).
        """
        if self.balancer.running:
            yield self.balancer.stopService()

    def writeConfig(self) -> None:
        """
        Write the configuration data to the configuration file.
        """
        with open(self.configPath, "w") as f:
            yaml.safe_dump(self.data, f)

    def call(self, *args: Any, **kw: Any) -> Any:
        """
        One admin API request, JSON both ways, in a thread.
        """
        return inThread(lambda: jcall(self.admin, *args, **kw))

    def reached(self) -> Any:
        """
        The name of the backend a new client of C{front} reaches.
        """
        return inThread(firstLine, self.port)

    def get(self, path: str) -> Any:
        """
        The status and body of an HTTP C{GET path} through C{front}.
        """

        def get() -> tuple[int, bytes]:
            connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            try:
                connection.request("GET", path)
                response = connection.getresponse()
                return response.status, response.read()
            finally:
                connection.close()

        return inThread(get)

    def state(self) -> Any:
        """
        The state file's content.
        """
        with open(self.statePath) as f:
            return json.load(f)


class RouteAPITests(TestCase):
    """
    C{GET} and C{PUT /api/listeners/NAME/routes}.
    """

    @inlineCallbacks
    def test_getRoundTrips(self) -> Any:
        """
        The routes come back in the configuration's shape, and putting
        them back changes nothing.
        """
        h = BalancerHarness(self)
        status, routes = yield h.call("GET", "/api/listeners/front/routes")
        self.assertEqual((status, routes), (200, [
            {"name": "local", "match": {"source": ["127.0.0.0/8"]}, "pool": "a"}]))
        status, again = yield h.call("PUT", "/api/listeners/front/routes", routes)
        self.assertEqual((status, again), (200, routes))

    @inlineCallbacks
    def test_replace(self) -> Any:
        """
        A new list applies to the next client at once, is saved before the
        answer, survives a restart, and keeps a kept route's counts.
        """
        h = BalancerHarness(self)
        self.assertEqual((yield h.reached()), b"a")
        new = [{"name": "elsewhere", "match": {"source": "10.0.0.0/8"}, "pool": "a"},
               {"name": "local", "match": {"source": ["127.0.0.1/32"]}, "pools": {"b": 1}}]
        status, body = yield h.call("PUT", "/api/listeners/front/routes", new)
        self.assertEqual(status, 200, body)
        self.assertEqual(h.state()["routes"], {"front": new})
        self.assertEqual((yield h.reached()), b"b")
        yield sleep(0.1)
        status, listeners = yield h.call("GET", "/api/listeners")
        self.assertEqual([(r["name"], r["requests"]) for r in listeners[0]["routes"]],
                         [("elsewhere", 0), ("local", 2), ("default", 0)])
        self.assertEqual(listeners[0]["defaultRoute"], {"pool": "b"})
        status, headers, body = yield inThread(call, h.admin, "GET", "/metrics")
        self.assertEqual(samples(body.decode())[(
            "lbtwist_route_requests_total",
            (("listener", "front"), ("route", "local"), ("status", "tcp")))], 2)
        yield h.stop()
        h.start()
        self.assertEqual((yield h.reached()), b"b")
        status, routes = yield h.call("GET", "/api/listeners/front/routes")
        self.assertEqual([r["name"] for r in routes], ["elsewhere", "local"])

    @inlineCallbacks
    def test_badList(self) -> Any:
        """
        A list that is not valid changes nothing and gets a 400 naming the
        key path of the problem; a change needs the token; an unknown
        listener is a 404.
        """
        h = BalancerHarness(self)
        for body, error in (
            ([{"name": "x", "pool": "nope"}], "routes[0].pool: no pool named 'nope'"),
            ([{"name": "x", "match": {"host": "a.example"}, "pool": "a"}],
             "routes[0].match.host: a tcp listener sees no HTTP request"),
            ({"name": "x"}, "routes: expected a list"),
            ([{"pool": "a"}, {"pool": "b"}], "routes[1]: unreachable"),
        ):
            status, answer = yield h.call("PUT", "/api/listeners/front/routes", body)
            self.assertEqual(status, 400)
            self.assertTrue(answer["error"].startswith(error), answer["error"])
        status, answer = yield h.call("PUT", "/api/listeners/front/routes", [], token=None)
        self.assertEqual(status, 401)
        status, answer = yield h.call("GET", "/api/listeners/back/routes")
        self.assertEqual(status, 404)
        self.assertFalse(os.path.exists(h.statePath))
        self.assertEqual((yield h.reached()), b"a")


class PlainListenerRouteTests(TestCase):
    """
    Routes put on a listener that had none: its C{pool:} is the default
    route's pool, as beside C{routes:} in the file.
    """

    @inlineCallbacks
    def test_poolStaysDefault(self) -> Any:
        """
        A client no route matches still reaches the listener's pool; that
        pool cannot be removed while the listener sends to it (which would
        leave a listener on a removed pool, and a state file naming it that
        no restart could load); a restart keeps both.
        """
        h = BalancerHarness(self)
        yield h.stop()
        h.data["listeners"] = [{"name": "front", "listen": "tcp:0:interface=127.0.0.1",
                                "mode": "tcp", "pool": "b"}]
        h.start()
        self.assertEqual((yield h.reached()), b"b")
        status, body = yield h.call("PUT", "/api/listeners/front/routes", [
            {"name": "elsewhere", "match": {"source": "10.0.0.0/8"}, "pool": "a"}])
        self.assertEqual(status, 200, body)
        self.assertEqual((yield h.reached()), b"b")
        status, answer = yield h.call("DELETE", "/api/pools/b")
        self.assertEqual(status, 409, answer)
        self.assertIn("front", answer["error"])
        yield h.stop()
        h.start()
        self.assertEqual((yield h.reached()), b"b")
        status, listeners = yield h.call("GET", "/api/listeners")
        self.assertEqual(listeners[0]["defaultRoute"], {"pool": "b"})


class HTTPRouteTests(TestCase):
    """
    The same API in front of an HTTP listener.
    """

    @inlineCallbacks
    def test_relativeUsersFile(self) -> Any:
        """
        A route whose users file is a relative name gets a 400 saying to
        give an absolute path: the API has no configuration file for it to
        be relative to.
        """
        h = BalancerHarness(self, mode="http")
        before = yield h.get("/admin/x")
        status, answer = yield h.call("PUT", "/api/listeners/front/routes", [
            {"name": "admin", "match": {"path-prefix": "/admin/"}, "pool": "a",
             "auth": {"basic": {"users": "users.htpasswd"}}}])
        self.assertEqual(status, 400, answer)
        self.assertTrue(answer["error"].startswith(
            "routes[0].auth.basic.users: 'users.htpasswd' is a relative file name"),
            answer["error"])
        # Nothing changed: no 401 for the path.
        self.assertEqual((yield h.get("/admin/x")), before)
        self.assertEqual(before[0], 200)

    @inlineCallbacks
    def test_httpRoutes(self) -> Any:
        """
        A pool created through the API and a route list naming it take the
        next request; the route's answers show in the listener view and the
        metrics by status class; a path no route matches takes the default
        route.
        """
        h = BalancerHarness(self, mode="http")
        self.assertEqual((yield h.get("/a/x")), (200, b"a\n"))
        self.assertEqual((yield h.get("/other")), (200, b"b\n"))
        status, body = yield h.call("POST", "/api/pools", {
            "name": "c", "backends": [{"name": "c", "endpoint": h.backends.endpoint("c")}]})
        self.assertEqual(status, 201, body)
        status, body = yield h.call("PUT", "/api/listeners/front/routes", [
            {"name": "c", "match": {"path-prefix": "/c/"}, "pool": "c",
             "rewrite": {"strip-prefix": "/c"}},
            {"name": "gone", "match": {"path": "/gone"}, "respond": {"status": 410}}])
        self.assertEqual(status, 200, body)
        self.assertEqual((yield h.get("/c/status/404")), (404, b"c\n"))
        self.assertEqual((yield h.get("/c/x")), (200, b"c\n"))
        self.assertEqual((yield h.get("/gone"))[0], 410)
        self.assertEqual((yield h.get("/a/x")), (200, b"b\n"))
        status, listeners = yield h.call("GET", "/api/listeners")
        self.assertEqual(
            [(r["name"], r["responses"]) for r in listeners[0]["routes"]],
            [("c", {"2xx": 1, "4xx": 1}), ("gone", {"4xx": 1}),
             ("default", {"2xx": 2})])
        status, headers, body = yield inThread(call, h.admin, "GET", "/metrics")
        s = samples(body.decode())
        self.assertEqual(s[("lbtwist_route_requests_total", (
            ("listener", "front"), ("route", "c"), ("status", "4xx")))], 1)
        self.assertEqual(s[("lbtwist_route_duration_seconds_count", (
            ("listener", "front"), ("route", "c")))], 2)
        status, body = yield h.call("DELETE", "/api/pools/c")
        self.assertEqual(status, 409)


class RoutesOnlyTests(TestCase):
    """
    A listener with routes and no pool (what no route matches gets a 404)
    is logged and shown with no pool, not the placeholder its
    configuration holds.
    """

    @inlineCallbacks
    def test_noPoolShown(self) -> Any:
        """
        With a default route, the listener shows its pool; without one, it
        is logged as C{routes only} and C{GET /api/listeners} gives a
        C{null} pool, while unmatched requests get a 404.
        """
        h = BalancerHarness(self, mode="http")
        status, listeners = yield h.call("GET", "/api/listeners")
        self.assertEqual(listeners[0]["pool"], "b")
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        yield h.stop()
        del h.data["listeners"][0]["default-route"]  # type: ignore[attr-defined]
        h.start()
        [line] = [formatEvent(e) for e in events
                  if e.get("log_namespace") == "lbtwist.service.ListenerService"]
        self.assertTrue(line.startswith("listener front (http mode, routes only) accepting on "),
                        line)
        status, listeners = yield h.call("GET", "/api/listeners")
        self.assertEqual((status, listeners[0]["pool"]), (200, None))
        self.assertEqual((yield h.get("/a/x")), (200, b"a\n"))
        self.assertEqual((yield h.get("/other"))[0], 404)


class UnmatchedPoolTests(SynchronousTestCase):
    """
    L{unmatchedPool}: the pool shown for a listener.
    """

    def test_table(self) -> None:
        """
        A listener without routes, or whose default route goes to a pool,
        shows that pool; one of routes only, or whose default route answers
        itself, shows none.
        """
        route = {"name": "r", "match": {"path-prefix": "/a/"}, "pool": "a"}
        table = [
            ({"pool": "b"}, "b"),
            ({"routes": [route]}, None),
            ({"routes": [route], "pool": "b"}, "b"),
            ({"routes": [route], "default-route": {"pool": "b"}}, "b"),
            ({"routes": [route], "default-route": {"pools": {"a": 1, "b": 3}}}, "a"),
            ({"routes": [route], "default-route": {"respond": {"status": 410}}}, None),
        ]
        for keys, expected in table:
            with self.subTest(keys=keys):
                config = parseConfig({
                    "listeners": [{"listen": "tcp:80", "mode": "http", **keys}],
                    "pools": {n: {"backends": ["127.0.0.1:1"]} for n in ("a", "b")}})
                [listener] = config.listeners
                self.assertEqual(
                    unmatchedPool(listener.pool, listener.routes, listener.defaultRoute),
                    expected)


class RouteReloadTests(TestCase):
    """
    C{SIGHUP} (C{POST /api/reload}) applies the file's route changes live.
    """

    @inlineCallbacks
    def test_fileRoutes(self) -> Any:
        """
        Routes changed in the file take the next client; they override the
        routes set through the API, which the state file forgets.
        """
        h = BalancerHarness(self)
        status, body = yield h.call("PUT", "/api/listeners/front/routes", [
            {"name": "api", "match": {"source": "127.0.0.1"}, "pool": "a"}])
        self.assertEqual(status, 200, body)
        h.data["listeners"][0]["routes"][0]["pool"] = "b"  # type: ignore[index]
        h.writeConfig()
        status, body = yield h.call("POST", "/api/reload")
        self.assertEqual((status, body), (200, {"status": "reloaded"}))
        self.assertEqual((yield h.reached()), b"b")
        self.assertEqual(h.state()["routes"], {})
        status, routes = yield h.call("GET", "/api/listeners/front/routes")
        self.assertEqual([(r["name"], r["pool"]) for r in routes], [("local", "b")])

    @inlineCallbacks
    def test_filePools(self) -> Any:
        """
        A pool the file adds is started (health checks included) and its
        routes take the next client; a pool the file removes is removed;
        a reload that would remove a pool a route set through the API
        still uses is rejected, and nothing changes.
        """
        h = BalancerHarness(self)
        h.data["pools"]["c"] = {  # type: ignore[index]
            "backends": [{"name": "c", "endpoint": h.backends.endpoint("c")}],
            "health": {"interval": 0.2}}
        h.data["listeners"][0]["routes"][0]["pool"] = "c"  # type: ignore[index]
        h.writeConfig()
        status, body = yield h.call("POST", "/api/reload")
        self.assertEqual((status, body), (200, {"status": "reloaded"}))
        self.assertEqual((yield h.reached()), b"c")
        self.assertTrue(h.lb.monitors["c"].running)
        del h.data["pools"]["a"]  # type: ignore[attr-defined]
        h.data["listeners"][0]["routes"][0]["pool"] = "b"  # type: ignore[index]
        h.writeConfig()
        status, body = yield h.call("POST", "/api/reload")
        self.assertEqual((status, body), (200, {"status": "reloaded"}))
        self.assertNotIn("a", h.lb.pools)
        self.assertNotIn("a", h.lb.monitors)
        self.assertEqual((yield h.reached()), b"b")
        status, answer = yield h.call("PUT", "/api/listeners/front/routes",
                                      [{"name": "api", "match": {"source": "127.0.0.1"},
                                        "pool": "c"}])
        self.assertEqual(status, 200, answer)
        del h.data["pools"]["c"]  # type: ignore[attr-defined]
        h.writeConfig()
        status, body = yield h.call("POST", "/api/reload")
        self.assertEqual(status, 400, body)
        self.assertIn("'c'", body["error"])
        self.assertIn("c", h.lb.pools)
        self.assertEqual((yield h.reached()), b"c")


class PoolAPITests(TestCase):
    """
    C{POST /api/pools} and C{DELETE /api/pools/NAME}.
    """

    @inlineCallbacks
    def test_addUseRemove(self) -> Any:
        """
        A pool created in the configuration's shape is checked and usable
        by routes at once; it cannot be removed while a route uses it; once
        removed, its health checks stop; both survive a restart.
        """
        h = BalancerHarness(self)
        body = {"name": "c", "policy": "leastconn", "health": {"interval": 0.2},
                "backends": [{"name": "c", "endpoint": h.backends.endpoint("c")}]}
        status, pool = yield h.call("POST", "/api/pools", body)
        self.assertEqual((status, pool["name"], pool["policy"]), (201, "c", "leastconn"))
        self.assertTrue(h.lb.monitors["c"].running)
        status, answer = yield h.call("POST", "/api/pools", body)
        self.assertEqual(status, 409)
        status, answer = yield h.call("PUT", "/api/listeners/front/routes",
                                      [{"name": "local", "match": {"source": "127.0.0.1"}, "pool": "c"}])
        self.assertEqual(status, 200, answer)
        self.assertEqual((yield h.reached()), b"c")
        status, answer = yield h.call("DELETE", "/api/pools/c")
        self.assertEqual(status, 409)
        self.assertIn("route front/local", answer["error"])
        status, answer = yield h.call("DELETE", "/api/pools/b")
        self.assertEqual(status, 409)
        self.assertIn("route front/default", answer["error"])

        yield h.stop()
        h.start()
        self.assertEqual((yield h.reached()), b"c")
        status, answer = yield h.call("PUT", "/api/listeners/front/routes",
                                      [{"name": "local", "match": {"source": "127.0.0.1"}, "pool": "b"}])
        monitor = h.lb.monitors["c"]
        status, answer = yield h.call("DELETE", "/api/pools/c")
        self.assertEqual((status, answer["status"]), (200, "removed"))
        self.assertFalse(monitor.running)
        self.assertNotIn("c", h.lb.pools)
        status, answer = yield h.call("DELETE", "/api/pools/a")
        self.assertEqual((status, answer["status"]), (200, "removed"))
        self.assertEqual(h.state()["removed-pools"], ["a"])
        yield h.stop()
        h.start()
        self.assertEqual(sorted(h.lb.pools), ["b"])
        self.assertEqual((yield h.reached()), b"b")

    @inlineCallbacks
    def test_badPool(self) -> Any:
        """
        A pool that is not valid gets a 400 naming its key; an unknown pool
        cannot be removed.
        """
        h = BalancerHarness(self)
        for body, error in (
            ({"name": "d", "policy": "fastest", "backends": []},
             "pools.d.policy: expected one of"),
            ({"name": "d", "backends": [{"name": "x", "endpoint": "tcp:host=127.0.0.1"}]},
             "pools.d.backends[0].endpoint"),
            ({"name": "d", "backends": [], "access-log": "/nonexistent/dir/access.log"},
             "pools.d.access-log: no such directory"),
            ({"name": "d/e", "backends": []}, "name: expected a name"),
            ({"backends": []}, "name: expected the pool's name"),
            # The API has no configuration file for a relative name to be
            # relative to.
            ({"name": "d", "backends": [], "tls": {"ca": "certs/ca.pem"}},
             "pools.d.tls.ca: 'certs/ca.pem' is a relative file name, and a definition sent "
             "through the admin API has no configuration file"),
            ({"name": "d", "backends": [], "access-log": "logs/access.log"},
             "pools.d.access-log: 'logs/access.log' is a relative file name"),
        ):
            status, answer = yield h.call("POST", "/api/pools", body)
            self.assertEqual(status, 400, answer)
            self.assertTrue(answer["error"].startswith(error), answer["error"])
        status, answer = yield h.call("DELETE", "/api/pools/nope")
        self.assertEqual(status, 404)
        self.assertEqual(sorted(h.lb.pools), ["a", "b"])


class RouteDataTests(SynchronousTestCase):
    """
    L{routeData}: what the API shows is what the configuration says.
    """

    def test_roundTrip(self) -> None:
        """
        Routes using every key, shown and parsed again, are the same routes.
        """
        users = b"staff:$2b$12$" + b"a" * 53 + b"\n"
        data = [
            {"name": "api", "match": {"host": ["api.example.com", "*.api.example.com"],
                                      "path-prefix": "/v1/", "method": ["GET", "HEAD"],
                                      "header": {"X-A": "1", "X-B": {"regex": "^b"},
                                                 "X-C": {"present": False}},
                                      "query": {"debug": "1"}, "source": "10.0.0.0/8"},
             "pool": "a", "timeouts": {"response": "5s", "connect": 0.5}, "retries": 2,
             "rewrite": {"strip-prefix": "/v1", "prefix": "/api"},
             "rate-limit": {"key": "header:X-Key", "rate": "30/m", "burst": 5},
             "auth": {"basic": {"realm": "staff", "users": "users.htpasswd"}},
             "request-headers": {"set": {"X-Env": "prod"}, "add": {"X-Via": "lb"},
                                 "remove": ["X-Debug"]},
             "response-headers": {"set": {"Strict-Transport-Security": "max-age=1"}}},
            {"name": "old", "match": {"path": "/old", "path-regex": "^/o"},
             "redirect": {"location": "https://new.example.com/", "code": 308,
                          "keep-path": True}},
            {"name": "tls", "match": {"path-prefix": "/t/"},
             "redirect": {"scheme": "https", "port": 8443}},
            {"name": "deny", "match": {"path-prefix": "/internal/"},
             "respond": {"status": 403, "body": "no\n", "headers": {"X-Why": "internal"}}},
            {"name": "web", "pools": {"a": 95, "b": 5}, "rate-limit": {"rate": "1/h"}},
        ]
        routes = parseRoutes(data, "routes", "http", ["a", "b"], lambda path: users)
        shown = [routeData(r) for r in routes]
        self.assertEqual(json.loads(json.dumps(shown)), shown)
        self.assertEqual(parseRoutes(shown, "routes", "http", ["a", "b"], lambda path: users),
                         routes)
        self.assertEqual(shown[4]["rate-limit"]["rate"], "1/h")
        self.assertEqual(routeData(Route("default", pool="a"), default=True), {"pool": "a"})


_ROUTE_ROW = re.compile(r'<tr data-route="([^"]+)">(.*?)</tr>', re.DOTALL)
_ROUTE_CELL = re.compile(r'<td class="(?:num )?(\w+)[^"]*"[^>]*>([^<]*)')


class RouteDashboardTests(TestCase):
    """
    The dashboard's routes, in a real headless Chromium.
    """

    timeout = 120
    # The page is driven as the dashboard's own tests drive it (imported as
    # a module, so that trial does not run those tests here too).
    setUp = test_dashboard.DashboardTests.setUp
    chromium = test_dashboard.DashboardTests.chromium
    dump = test_dashboard.DashboardTests.dump
    screenshot = test_dashboard.DashboardTests.screenshot

    @inlineCallbacks
    def test_routesShown(self) -> Any:
        """
        Each route of a listener has a row with what it matches, where it
        sends and its traffic, the default route last; a route replaced at
        run time shows at the next poll.
        """
        h = BalancerHarness(self)
        for _ in range(3):
            self.assertEqual((yield h.reached()), b"a")
        url = f"http://127.0.0.1:{h.admin}/"
        dom = yield self.dump(url)
        found = {key: dict(_ROUTE_CELL.findall(body)) for key, body in _ROUTE_ROW.findall(dom)}
        self.assertEqual(list(found), ["front/local", "front/default"], dom[-3000:])
        self.assertEqual(found["front/local"]["match"], "source=127.0.0.0/8")
        self.assertEqual(found["front/local"]["target"], "pool a")
        self.assertEqual(found["front/local"]["requests"], "3")
        self.assertEqual(found["front/default"]["target"], "pool b")
        self.assertEqual(found["front/default"]["requests"], "0")
        self.assertIn("rate", found["front/local"])
        self.assertIn("mean", found["front/local"])
        status, body = yield h.call("PUT", "/api/listeners/front/routes", [
            {"name": "split", "match": {"source": "127.0.0.1"}, "pools": {"a": 9, "b": 1}}])
        self.assertEqual(status, 200, body)
        yield h.reached()
        yield self.screenshot(url, "routes")
        dom = yield self.dump(url)
        found = {key: dict(_ROUTE_CELL.findall(body)) for key, body in _ROUTE_ROW.findall(dom)}
        self.assertEqual(list(found), ["front/split", "front/default"])
        self.assertEqual(found["front/split"]["target"], "a 90% / b 10%")
        self.assertEqual(found["front/split"]["requests"], "1")


def clientLoop(port: int, stop: threading.Event, seen: dict[bytes, int],
               errors: list[str], limit: int = 5000) -> None:
    """
    Connect, read the backend's name and close, until told to stop (at
    most C{limit} times); count the names and keep the errors.
    """
    for _ in range(limit):
        if stop.is_set():
            return
        try:
            name = firstLine(port, timeout=5)
        except OSError as e:
            errors.append(repr(e))
            continue
        if name not in (b"a", b"b"):
            errors.append(f"read {name!r}")
        seen[name] = seen.get(name, 0) + 1


class ReplaceUnderLoadTests(TestCase):
    """
    Route lists replaced while clients connect without a pause.
    """

    @inlineCallbacks
    def test_noFailures(self) -> Any:
        """
        Twenty replacements under three busy clients: every client reaches
        a backend (no connection refused, reset or left without an answer),
        and both lists were in use.
        """
        h = BalancerHarness(self)
        stop = threading.Event()
        seen: dict[bytes, int] = {}
        errors: list[str] = []
        loops = [inThread(clientLoop, h.port, stop, seen, errors) for _ in range(3)]
        try:
            for i in range(20):
                status, body = yield h.call("PUT", "/api/listeners/front/routes", [
                    {"name": "local", "match": {"source": "127.0.0.1"},
                     "pool": "ab"[i % 2]}])
                self.assertEqual(status, 200, body)
                yield sleep(0.05)
        finally:
            stop.set()
            yield gatherResults(loops)
        self.assertEqual(errors, [])
        self.assertGreater(seen.get(b"a", 0), 0)
        self.assertGreater(seen.get(b"b", 0), 0)

    @inlineCallbacks
    def test_httpUnderWrk(self) -> Any:
        """
        On an HTTP listener, twenty route lists PUT through the admin API
        while wrk keeps ten connections busy: no failed request (no socket
        error, no answer other than 2xx), and both pools answered.
        """
        if shutil.which("wrk") is None:
            self.skipTest("wrk is not installed")
        h = BalancerHarness(self, mode="http")
        run = inThread(lambda: subprocess.run(
            ["wrk", "-t1", "-c10", "-d3s", f"http://127.0.0.1:{h.port}/a/x"],
            capture_output=True, timeout=20))
        yield sleep(0.3)
        for i in range(20):
            status, body = yield h.call("PUT", "/api/listeners/front/routes", [
                {"name": "local", "match": {"path-prefix": "/a/"}, "pool": "ab"[i % 2]}])
            self.assertEqual(status, 200, body)
            yield sleep(0.1)
        result = yield run
        out = result.stdout.decode()
        self.assertIn("requests in", out)
        self.assertNotIn("Non-2xx", out)
        self.assertNotIn("Socket errors", out)
        backends = h.lb.pools
        self.assertGreater(backends["a"].get("a").total, 100)  # type: ignore[union-attr]
        self.assertGreater(backends["b"].get("b").total, 100)  # type: ignore[union-attr]
