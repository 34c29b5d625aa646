"""
Routes on an HTTP listener, over real sockets with real clients (Python's
http.client, curl, wrk): every match key and action, the canary split, rate
limits, basic auth, and a route list replaced under load.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
from collections import Counter
from typing import Any

import attrs
import bcrypt
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.basicauth import MAX_CHECKS
from lbtwist.config import parseConfig
from lbtwist.dial import Dialler
from lbtwist.http import HTTPProxyFactory
from lbtwist.http._exchange import CHECKING, CONNECTING, DONE, FAILED, WAITING, Exchange
from lbtwist.http._plan import planRequest
from lbtwist.http._router import Router, hostOf, rewritten, targetParts
from lbtwist.pool import BackendPool
from lbtwist.routeconfig import BasicAuth, Match, Redirect, Respond, Rewrite, Route

from .httphelpers import HTTPProxyTestCase, RecordingBackend, httpRequests, reactor


class RoutedProxyTestCase(HTTPProxyTestCase):
    """
    A balancer whose one HTTP listener routes over several pools of
    recording backends.
    """

    def startRouted(self, pools: dict[str, list[RecordingBackend]], listener: dict[str, Any],
                    poolSettings: dict[str, dict[str, Any]] | None = None) -> HTTPProxyFactory:
        """
        Listen on 127.0.0.1, port 0, with C{listener} (its C{routes}, ...)
        over C{pools} of backends.
        """
        settings = poolSettings or {}
        config = parseConfig({
            "listeners": [{"listen": "tcp:0", "mode": "http", **listener}],
            "pools": {
                name: {"backends": [{"name": b.name, "endpoint": b.endpoint} for b in backends],
                       "health": {"fall": 100}, **settings.get(name, {})}
                for name, backends in pools.items()
            },
        })
        live = {p.name: BackendPool(p) for p in config.pools}
        spec = config.listeners[0]
        return self.listen(
            HTTPProxyFactory(live[spec.pool], reactor, Dialler(reactor), spec, live))

    def get(self, factory: HTTPProxyFactory, *requests: tuple[str, str, dict[str, str]]) -> Any:
        """
        Send C{(method, path, headers)} requests over one connection.
        """
        return httpRequests(factory.testPort,  # type: ignore[attr-defined]
                            [(m, p, None, h) for m, p, h in requests])


class MatchTests(RoutedProxyTestCase):
    """
    Each match key sends requests to its route's pool; the first route
    that matches wins; no route is a 404.
    """

    @inlineCallbacks
    def test_hostAndPath(self) -> Any:
        """
        Host (exact, wildcard, any case, port ignored), path, path-prefix
        and path-regex route to their pools; anything else gets a 404.
        """
        api, static, web = (self.startBackend(n) for n in ("api", "static", "web"))
        proxy = self.startRouted({"api": [api], "static": [static], "web": [web]}, {"routes": [
            {"name": "api", "match": {"host": "api.example.com", "path-prefix": "/v1/"},
             "pool": "api"},
            {"name": "static", "match": {"host": "*.example.com", "path-regex": "^/static/"},
             "pool": "static"},
            {"name": "exact", "match": {"path": "/health"}, "pool": "web"},
        ]})
        results = yield self.get(
            proxy,
            ("GET", "/v1/users", {"Host": "API.example.com:8080"}),
            ("GET", "/static/a.css", {"Host": "cdn.example.com"}),
            ("GET", "/static/a.css", {"Host": "example.com"}),
            ("GET", "/health", {"Host": "other"}),
            ("GET", "/v2/users", {"Host": "api.example.com"}),
        )
        self.assertEqual([(s, b) for s, _, b in results], [
            (200, b"api /v1/users\n"), (200, b"static /static/a.css\n"),
            (404, b"404 Not Found: no route matches this request.\n"),
            (200, b"web /health\n"),
            (404, b"404 Not Found: no route matches this request.\n"),
        ])
        counters = {c.name: dict(c.responses) for c in proxy.routeCounters()}
        self.assertEqual(counters, {"api": {"2xx": 1}, "static": {"2xx": 1},
                                    "exact": {"2xx": 1}, "default": {"4xx": 2}})

    @inlineCallbacks
    def test_methodHeaderQuerySource(self) -> Any:
        """
        Method, header (exact, regex, present), query and source conditions
        all hold for their route to be taken; the default route (a C{pool:}
        beside the routes) takes the rest.
        """
        a, b, c, d, e = (self.startBackend(n) for n in "abcde")
        proxy = self.startRouted({"a": [a], "b": [b], "c": [c], "d": [d], "e": [e]}, {
            "pool": "e",
            "routes": [
                {"name": "post", "match": {"method": ["POST", "PUT"]}, "pool": "a"},
                {"name": "beta", "match": {"header": {"X-Beta": {"regex": "^y"}}}, "pool": "b"},
                {"name": "q", "match": {"query": {"v": "2"}, "header": {"X-Q": {"present": True}}},
                 "pool": "c"},
                {"name": "local", "match": {"source": ["127.0.0.0/8"], "path": "/admin"},
                 "pool": "d"},
                {"name": "far", "match": {"source": ["10.0.0.0/8"]}, "pool": "a"},
            ],
        })
        results = yield self.get(
            proxy,
            ("POST", "/x", {"Content-Length": "0"}),
            ("GET", "/x", {"X-Beta": "yes"}),
            ("GET", "/x", {"X-Beta": "no"}),
            ("GET", "/x?v=2&w=1", {"X-Q": "1"}),
            ("GET", "/x?v=2", {}),
            ("GET", "/admin", {}),
        )
        self.assertEqual([b.split()[0] for _, _, b in results],
                         [b"a", b"b", b"e", b"c", b"e", b"d"])


class ActionTests(RoutedProxyTestCase):
    """
    Redirects, fixed answers, rewrites and header changes.
    """

    @inlineCallbacks
    def test_redirects(self) -> Any:
        """
        A C{scheme:} redirect keeps host, path and query; a fixed location
        with C{keep-path} appends them; curl sees the code and Location.
        """
        web = self.startBackend("web")
        proxy = self.startRouted({"web": [web]}, {"routes": [
            {"name": "tls", "match": {"path-prefix": "/secure/"},
             "redirect": {"scheme": "https", "code": 308}},
            {"name": "old", "match": {"path-prefix": "/old/"},
             "redirect": {"location": "https://new.example.com/", "keep-path": True}},
            {"name": "web", "pool": "web"},
        ]})
        results = yield self.get(
            proxy,
            ("GET", "/secure/a?b=1", {"Host": "shop.example.com:8080"}),
            ("GET", "/old/x?y=2", {}),
            ("HEAD", "/old/x", {}),
            ("GET", "/", {}),
        )
        self.assertEqual([(s, h.get("location")) for s, h, _ in results[:3]], [
            (308, "https://shop.example.com/secure/a?b=1"),
            (302, "https://new.example.com/old/x?y=2"),
            (302, "https://new.example.com/old/x"),
        ])
        self.assertEqual(results[2][2], b"")
        self.assertEqual(results[3][2], b"web /\n")
        self.assertEqual(len(web.requests), 1)
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        out = yield deferToThread(
            subprocess.run, ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
                             "-H", "Host: a.test", self.url(proxy, "/secure/p?q")],
            capture_output=True, timeout=10)
        self.assertEqual(out.stdout, b"308 https://a.test/secure/p?q")

    @inlineCallbacks
    def test_respondRewriteHeaders(self) -> Any:
        """
        C{respond} answers without a backend; C{strip-prefix} is what the
        backend sees (query kept); request and response headers are set,
        added and removed; the response changes apply to direct answers.
        """
        static = self.startBackend("static")
        proxy = self.startRouted({"static": [static]}, {"routes": [
            {"name": "deny", "match": {"path-prefix": "/internal/"},
             "respond": {"status": 403, "body": "forbidden\n"},
             "response-headers": {"set": {"X-Why": "internal"}}},
            {"name": "static", "match": {"path-prefix": "/static/"}, "pool": "static",
             "rewrite": {"strip-prefix": "/static"},
             "request-headers": {"set": {"X-Env": "prod"}, "add": {"X-Tag": "b"},
                                 "remove": ["X-Debug"]},
             "response-headers": {"set": {"Strict-Transport-Security": "max-age=63072000"},
                                  "remove": ["Content-Type"]}},
        ]})
        results = yield self.get(
            proxy,
            ("GET", "/internal/x", {}),
            ("GET", "/static/css/a.css?v=3",
             {"X-Env": "dev", "X-Debug": "1", "X-Tag": "a"}),
        )
        (s1, h1, b1), (s2, h2, b2) = results
        self.assertEqual((s1, b1, h1.get("x-why")), (403, b"forbidden\n", "internal"))
        self.assertEqual((s2, b2), (200, b"static /css/a.css?v=3\n"))
        self.assertEqual(h2.get("strict-transport-security"), "max-age=63072000")
        self.assertNotIn("content-type", h2)
        [seen] = static.requests
        self.assertEqual(seen.url, b"/css/a.css?v=3")
        self.assertEqual(seen.header(b"X-Env"), b"prod")
        self.assertIsNone(seen.header(b"X-Debug"))
        self.assertEqual([v for n, v in seen.headers if n.lower() == b"x-tag"], [b"a", b"b"])

    @inlineCallbacks
    def test_responseHeadersOnly(self) -> Any:
        """
        A route that only names a pool and changes response headers changes
        them (the backend's head is not relayed as its bytes).
        """
        web = self.startBackend("web")
        proxy = self.startRouted({"web": [web]}, {"routes": [
            {"name": "web", "pool": "web",
             "response-headers": {"set": {"X-Frame-Options": "DENY"}, "remove": ["Content-Type"]}},
        ]})
        [(status, headers, body)] = yield self.get(proxy, ("GET", "/p", {}))
        self.assertEqual((status, body, headers.get("x-frame-options")), (200, b"web /p\n", "DENY"))
        self.assertNotIn("content-type", headers)

    @inlineCallbacks
    def test_routeTimeout(self) -> Any:
        """
        A route's response timeout overrides its pool's: a slow backend
        gets a 504 on the route with a short one, and answers on the other.
        """
        def slow(request: Any, backend: RecordingBackend, conn: Any) -> bytes | None:
            call = reactor.callLater(0.6, conn.transport.write,
                                     b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            self.addCleanup(lambda: call.cancel() if call.active() else None)
            return None

        b = self.startBackend("slow", slow)
        proxy = self.startRouted({"slow": [b]}, {"routes": [
            {"name": "quick", "match": {"path": "/quick"}, "pool": "slow",
             "timeouts": {"response": 0.2}, "retries": 0},
            {"name": "patient", "pool": "slow"},
        ]})
        results = yield self.get(proxy, ("GET", "/quick", {}))
        self.assertEqual(results[0][0], 504)
        results = yield self.get(proxy, ("GET", "/other", {}))
        self.assertEqual(results[0][:1], (200,))


class H2RouteTests(RoutedProxyTestCase):
    """
    HTTP/2 streams take the listener's routes as HTTP/1.1 requests do.
    """

    @inlineCallbacks
    def test_h2cRoutes(self) -> Any:
        """
        curl over h2c (prior knowledge) reaches the pool its route names,
        gets a route's redirect, and the route's counts include it.
        """
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        api, web = self.startBackend("api"), self.startBackend("web")
        proxy = self.startRouted({"api": [api], "web": [web]}, {"http2": True, "routes": [
            {"name": "api", "match": {"path-prefix": "/v1/"}, "pool": "api"},
            {"name": "old", "match": {"path": "/old"}, "redirect": {"location": "https://x/"}},
            {"name": "web", "pool": "web"},
        ]})

        def h2(path: str) -> Any:
            return deferToThread(subprocess.run, [
                "curl", "-s", "--http2-prior-knowledge", "-w", " %{http_code} %{http_version}",
                self.url(proxy, path)], capture_output=True, timeout=10)

        self.assertEqual((yield h2("/v1/x")).stdout, b"api /v1/x\n 200 2")
        self.assertEqual((yield h2("/page")).stdout, b"web /page\n 200 2")
        self.assertTrue((yield h2("/old")).stdout.endswith(b" 302 2"))
        counts = {c.name: dict(c.responses) for c in proxy.routeCounters()}
        self.assertEqual(counts["api"], {"2xx": 1})
        self.assertEqual(counts["old"], {"3xx": 1})


class SplitTests(RoutedProxyTestCase):
    """
    A weighted split between pools (a canary).
    """

    @inlineCallbacks
    def test_canary(self) -> Any:
        """
        95/5 over 2,000 requests lands within 2% of 5% on the canary.
        """
        web, v2 = self.startBackend("web"), self.startBackend("v2")
        proxy = self.startRouted({"web": [web], "web-v2": [v2]}, {"routes": [
            {"name": "web", "pools": {"web": 95, "web-v2": 5}},
        ]})
        results = yield self.get(proxy, *[("GET", "/", {})] * 2000)
        counts = Counter(b.split()[0] for _, _, b in results)
        self.assertEqual(sum(counts.values()), 2000)
        self.assertTrue(60 <= counts[b"v2"] <= 140, counts)

    @inlineCallbacks
    def test_stickySplit(self) -> Any:
        """
        With a sticky cookie on the pools, a client that has one stays on
        its pool; without, a client address always gets the same pool.
        """
        web, v2 = self.startBackend("web"), self.startBackend("v2")
        sticky = {"sticky": {"cookie": "lb"}}
        proxy = self.startRouted(
            {"web": [web], "web-v2": [v2]},
            {"routes": [{"name": "web", "pools": {"web": 50, "web-v2": 50}}]},
            {"web": sticky, "web-v2": sticky})
        first = yield self.get(proxy, *[("GET", "/", {})] * 20)
        self.assertEqual(len({b for _, _, b in first}), 1)
        cookie = first[0][1]["set-cookie"].split(";")[0]
        pool = first[0][2].split()[0]
        again = yield self.get(proxy, *[("GET", "/", {"Cookie": cookie})] * 20)
        self.assertEqual({b.split()[0] for _, _, b in again}, {pool})


class LimitTests(RoutedProxyTestCase):
    """
    Rate limits and basic auth.
    """

    @inlineCallbacks
    def test_rateLimit(self) -> Any:
        """
        C{burst} requests pass at once, then 429 with C{Retry-After}; then
        C{rate} pass per second, a fraction of a token carried over, and
        never more than C{burst} however long the client waited.

        The limiter reads the test's clock, so the round trips themselves
        take no time: at 20/s a token comes back every 50 ms of real time,
        which a busy machine spends on a few requests.
        """
        web = self.startBackend("web")
        proxy = self.startRouted({"web": [web]}, {"routes": [
            {"name": "web", "pool": "web", "rate-limit": {"rate": "20/s", "burst": 5}},
        ]})
        assert proxy.router is not None
        [limiter] = [rt.limiter for rt in proxy.router.runtimes() if rt.limiter is not None]
        clock = Clock()
        limiter.clock = clock.seconds
        results = yield self.get(proxy, *[("GET", "/", {})] * 8)
        self.assertEqual([s for s, _, _ in results], [200] * 5 + [429] * 3)
        self.assertEqual(results[-1][1]["retry-after"], "1")

        # Eighths of a second: 2.5 tokens each, so 2 and 3 pass in turn.
        passed = []
        for _ in range(8):
            clock.advance(0.125)
            results = yield self.get(proxy, *[("GET", "/", {})] * 4)
            statuses = [s for s, _, _ in results]
            passed.append(statuses.count(200))
            self.assertEqual(statuses, sorted(statuses), "a 429 before a 200")
        self.assertEqual(passed, [2, 3] * 4)
        clock.advance(60)
        results = yield self.get(proxy, *[("GET", "/", {})] * 7)
        self.assertEqual([s for s, _, _ in results], [200] * 5 + [429] * 2)
        [counters] = [c for c in proxy.routeCounters() if c.name == "web"]
        self.assertEqual(counters.rateLimited, 3 + (8 * 4 - 20) + 2)

    @inlineCallbacks
    def test_basicAuth(self) -> Any:
        """
        No credentials or a wrong password: 401 with C{WWW-Authenticate};
        a bcrypt entry's password passes (checked off the reactor thread),
        with curl too.
        """
        users = self.mktemp()
        with open(users, "wb") as f:
            f.write(b"ann:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)) + b"\n")
        web = self.startBackend("web")
        proxy = self.startRouted({"web": [web]}, {"routes": [
            {"name": "staff", "pool": "web", "auth": {"basic": {"realm": "staff", "users": users}}},
        ]})

        def basic(user: str, password: str) -> dict[str, str]:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            return {"Authorization": f"Basic {token}"}

        results = yield self.get(
            proxy, ("GET", "/", {}), ("GET", "/", basic("ann", "wrong")),
            ("GET", "/a", basic("ann", "s3cret")), ("GET", "/b", basic("ann", "s3cret")),
        )
        self.assertEqual([s for s, _, _ in results], [401, 401, 200, 200])
        self.assertEqual(results[0][1]["www-authenticate"], 'Basic realm="staff", charset="UTF-8"')
        self.assertEqual([r.url for r in web.requests], [b"/a", b"/b"])
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        out = yield deferToThread(
            subprocess.run, ["curl", "-s", "-u", "ann:s3cret", self.url(proxy, "/c")],
            capture_output=True, timeout=10)
        self.assertEqual(out.stdout, b"web /c\n")


    @inlineCallbacks
    def test_ownAnswersKept(self) -> Any:
        """
        A route's C{auth} and C{rate-limit} keep its own answers as they
        keep its pools: a C{respond} route with credentials answers 401
        without them and with a wrong password, its answer with the right
        one; a C{redirect} route with a rate limit answers 429 past its
        burst.
        """
        users = self.mktemp()
        with open(users, "wb") as f:
            f.write(b"ann:" + bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)) + b"\n")
        web = self.startBackend("web")
        proxy = self.startRouted({"web": [web]}, {"routes": [
            {"name": "status", "match": {"path": "/status"},
             "auth": {"basic": {"realm": "staff", "users": users}},
             "respond": {"status": 200, "body": "internal status\n"}},
            {"name": "moved", "match": {"path-prefix": "/old/"},
             "rate-limit": {"rate": "1/h", "burst": 2},
             "redirect": {"location": "https://new.example.com/"}},
            {"name": "web", "pool": "web"},
        ]})
        token = "Basic " + base64.b64encode(b"ann:s3cret").decode()
        wrong = "Basic " + base64.b64encode(b"ann:guess").decode()
        results = yield self.get(
            proxy, ("GET", "/status", {}), ("GET", "/status", {"Authorization": wrong}),
            ("GET", "/status", {"Authorization": token}),
            ("GET", "/old/a", {}), ("GET", "/old/b", {}), ("GET", "/old/c", {}),
        )
        self.assertEqual([s for s, _, _ in results], [401, 401, 200, 302, 302, 429])
        self.assertEqual(results[0][1]["www-authenticate"], 'Basic realm="staff", charset="UTF-8"')
        self.assertEqual(results[2][2], b"internal status\n")
        self.assertNotEqual(results[0][2], b"internal status\n")
        self.assertEqual(web.requests, [])
        [counters] = [c for c in proxy.routeCounters() if c.name == "moved"]
        self.assertEqual(counters.rateLimited, 1)


class ReplaceTests(RoutedProxyTestCase):
    """
    Routes replaced at run time.
    """

    @inlineCallbacks
    def test_replaceUnderLoad(self) -> Any:
        """
        The route list replaced 20 times under wrk's keep-alive load (2 s): no
        failed request, and both pools took requests.
        """
        if shutil.which("wrk") is None:
            self.skipTest("wrk is not installed")
        a, b = self.startBackend("a"), self.startBackend("b")
        toA = [{"name": "x", "pool": "a"}]
        proxy = self.startRouted({"a": [a], "b": [b]}, {"routes": toA})
        config = parseConfig({
            "listeners": [{"listen": "tcp:0", "mode": "http", "routes": [
                {"name": "x", "match": {"path-prefix": "/"}, "pool": "b"},
                {"name": "y", "pool": "a"},
            ]}],
            "pools": {"a": {"backends": [a.endpoint]}, "b": {"backends": [b.endpoint]}},
        })
        lists = [(tuple(config.listeners[0].routes), None),
                 (tuple(proxy.router.routes), None)]  # type: ignore[union-attr]
        calls = [reactor.callLater(0.1 + i * 0.08, proxy.setRoutes, *lists[i % 2])
                 for i in range(20)]
        self.addCleanup(lambda: [c.cancel() for c in calls if c.active()])
        result = yield deferToThread(
            subprocess.run, ["wrk", "-t1", "-c10", "-d2s", self.url(proxy)],
            capture_output=True, timeout=15)
        out = result.stdout.decode()
        self.assertIn("requests in", out)
        self.assertNotIn("Non-2xx", out)
        self.assertNotIn("Socket errors", out)
        self.assertGreater(len(a.requests), 50)
        self.assertGreater(len(b.requests), 50)


class TargetTests(SynchronousTestCase):
    """
    The pure helpers that give the route table its facts.
    """

    def test_hostOf(self) -> None:
        """
        The host is lowercase and loses its port; an IPv6 literal keeps its
        brackets; no authority is no host.
        """
        cases = [(b"API.Example.com:8080", b"api.example.com"), (b"a", b"a"),
                 (b"[::1]:80", b"[::1]"), (b"[::1]", b"[::1]"), (b"", None), (None, None)]
        for authority, host in cases:
            self.assertEqual(hostOf(authority), host, authority)

    def test_targetParts(self) -> None:
        """
        Origin form: Host's authority; absolute form: the target's, whatever
        Host says; the path and query split at the first C{?}.
        """
        host = [(b"HOST", b" h:1 ")]
        cases = [
            (b"/a/b?x=1?y", host, (b"h:1", b"/a/b", b"x=1?y")),
            (b"/", [], (None, b"/", b"")),
            (b"http://abs.example/p?q", host, (b"abs.example", b"/p", b"q")),
            (b"https://abs.example", host, (b"abs.example", b"/", b"")),
            (b"*", host, (b"h:1", b"*", b"")),
        ]
        for target, headers, expected in cases:
            self.assertEqual(targetParts(target, headers), expected, target)

    def test_rewritten(self) -> None:
        """
        A rewrite changes an absolute-form target's path only.
        """
        strip = Rewrite(stripPrefix="/static")
        self.assertEqual(rewritten(b"/static/a?b", strip), b"/a?b")
        self.assertEqual(rewritten(b"http://h/static/a", strip), b"http://h/a")
        self.assertEqual(rewritten(b"http://h", strip), b"http://h")


class GateTests(SynchronousTestCase):
    """
    An exchange whose credentials are checked in a thread waits in CHECKING.
    """

    def setUp(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from .test_http_unit import proxyFactory

        self.reactor = MemoryReactorClock()
        self.factory = proxyFactory(self.reactor)

    def gated(self) -> tuple[Any, Deferred[bool]]:
        from .test_http_exchange import RecordingClientSide

        side = RecordingClientSide()
        upstream = self.factory.upstream
        plan = planRequest(b"GET", b"/", "1.1", [(b"Host", b"a")], True, False,
                           side.clientHost, b"l:80", upstream.rules)
        ex = Exchange(side, self.factory, upstream, plan, b"GET", b"/", "1.1", 0.0)
        check: Deferred[bool] = Deferred()
        ex.gateOn(check, (401, (), b"no\n"))
        ex.requestComplete()
        return ex, check

    def test_passes(self) -> None:
        """
        Its turn comes while the check runs: CHECKING, no backend; the check
        passes: it connects.
        """
        ex, check = self.gated()
        ex.start()
        self.assertEqual((ex.phase, self.reactor.tcpClients), (CHECKING, []))
        check.callback(True)
        self.assertEqual(ex.phase, CONNECTING)
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_refused(self) -> None:
        """
        A check that fails before its turn: the 401 is given when it comes.
        """
        ex, check = self.gated()
        check.callback(False)
        self.assertEqual(ex.phase, WAITING)
        ex.start()
        self.assertEqual(ex.phase, DONE)
        self.assertEqual(ex.status, 401)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_clientLeft(self) -> None:
        """
        A client gone during the check: the answer changes nothing.
        """
        ex, check = self.gated()
        ex.start()
        ex.abandon()
        check.callback(True)
        self.assertEqual(ex.phase, FAILED)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_floodOfCredentials(self) -> None:
        """
        Requests with distinct credentials (as a flood of guesses sends,
        pipelined or from many clients) start at most C{MAX_CHECKS} bcrypt
        checks at once; the others are answered 503 with C{Retry-After} at
        their turn, with no check queued and no backend.
        """
        from .test_basicauth import HASH, QueuedRunner, basic
        from .test_http_exchange import RecordingClientSide

        runner = QueuedRunner()
        route = Route(name="staff", pool="web",
                      auth=BasicAuth("staff", "users", (("alice", HASH),)))
        router = Router(self.factory, [route], None, None, self.reactor.seconds, runner)
        side = RecordingClientSide()
        exchanges = [
            router.exchange(side, b"GET", b"/", "1.1",
                            [(b"Host", b"a"), (b"Authorization", basic(b"alice:%d" % i))],
                            True, False, 0.0)
            for i in range(MAX_CHECKS + 20)
        ]
        self.assertEqual(len(runner.jobs), MAX_CHECKS)
        busy = exchanges[MAX_CHECKS:]
        for ex in busy:
            ex.requestComplete()
            ex.start()
        self.assertEqual({(ex.phase, ex.status) for ex in busy}, {(DONE, 503)})
        self.assertIn((b"Retry-After", b"1"), busy[0].local[1])  # type: ignore[index]
        self.assertEqual(self.reactor.tcpClients, [])


    def test_ownAnswerWaitsForCheck(self) -> None:
        """
        A C{respond} route's answer waits for its credentials' check like a
        pool's connect: CHECKING at its turn, the answer once they pass, a
        401 when they do not; no credentials at all: 401 at once.
        """
        from .test_basicauth import HASH, QueuedRunner, basic
        from .test_http_exchange import RecordingClientSide

        runner = QueuedRunner()
        route = Route(name="status", respond=Respond(status=200, body="up\n"),
                      auth=BasicAuth("staff", "users", (("alice", HASH),)))
        router = Router(self.factory, [route], None, None, self.reactor.seconds, runner)

        def request(*headers: tuple[bytes, bytes]) -> Exchange:
            ex = router.exchange(RecordingClientSide(), b"GET", b"/", "1.1",
                                 [(b"Host", b"a"), *headers], True, False, 0.0)
            ex.requestComplete()
            ex.start()
            return ex

        passing = request((b"Authorization", basic(b"alice:secret")))
        failing = request((b"Authorization", basic(b"alice:guess")))
        self.assertEqual((passing.phase, failing.phase), (CHECKING, CHECKING))
        runner.runAll()
        self.assertEqual((passing.phase, passing.status), (DONE, 200))
        self.assertEqual((failing.phase, failing.status), (DONE, 401))
        bare = request()
        self.assertEqual((bare.phase, bare.status), (DONE, 401))
        self.assertEqual(runner.jobs, [])
        self.assertEqual(self.reactor.tcpClients, [])


class RouterCarryOverTests(SynchronousTestCase):
    """
    What a route keeps when its listener's routes are replaced.
    """

    def test_credentialsKept(self) -> None:
        """
        A route whose C{auth} is unchanged keeps the credentials it checked
        when another of its settings changes: its clients pass at once, with
        no new bcrypt check (which a whole user base would otherwise need at
        the same moment, past the bound on checks in flight).
        """
        from twisted.internet.testing import MemoryReactorClock

        from .test_basicauth import HASH, QueuedRunner, basic
        from .test_http_exchange import RecordingClientSide
        from .test_http_unit import proxyFactory

        reactor = MemoryReactorClock()
        factory = proxyFactory(reactor)
        runner = QueuedRunner()
        route = Route(name="staff", pool="web",
                      auth=BasicAuth("staff", "users", (("alice", HASH),)))
        headers = [(b"Host", b"a"), (b"Authorization", basic(b"alice:secret"))]

        def exchange(router: Router) -> Exchange:
            return router.exchange(RecordingClientSide(), b"GET", b"/", "1.1", list(headers),
                                   True, False, 0.0)

        first = Router(factory, [route], None, None, reactor.seconds, runner)
        exchange(first)
        runner.runAll()
        second = Router(factory, [attrs.evolve(route, retries=3)], None, first,
                        reactor.seconds, runner)
        ex = exchange(second)
        self.assertEqual((ex.gated, ex.local, runner.jobs), (False, None, []))


class RouterMatchTests(SynchronousTestCase):
    """
    What L{Router} matches a request head on: the host and path as the
    backend will understand them, so that a deny or auth route cannot be
    stepped around by spelling them differently.
    """

    def setUp(self) -> None:
        from twisted.internet.testing import MemoryReactorClock

        from .test_basicauth import QueuedRunner
        from .test_http_unit import proxyFactory

        self.reactor = MemoryReactorClock()
        self.factory = proxyFactory(self.reactor)
        deny = Route(name="deny", match=Match(hosts=("admin.example.com",)),
                     respond=Respond(status=403))
        private = Route(name="private", match=Match(pathPrefix="/admin/"),
                        respond=Respond(status=401))
        self.router = Router(self.factory, [deny, private], Route(name="default", pool="web"),
                             None, self.reactor.seconds, QueuedRunner())

    def status(self, target: bytes, host: bytes) -> int | None:
        """
        The status of the direct answer to C{GET target} with C{Host: host},
        or L{None} if it goes to a pool.
        """
        from .test_http_exchange import RecordingClientSide

        ex = self.router.exchange(RecordingClientSide(), b"GET", target, "1.1",
                                  [(b"Host", host)], True, False, 0.0)
        return None if ex.local is None else ex.local[0]

    def test_hostTrailingDot(self) -> None:
        """
        A host with a trailing dot (the same name, fully qualified) matches
        the route naming it without one.
        """
        for host in (b"admin.example.com", b"admin.example.com.", b"ADMIN.example.com.:80"):
            self.assertEqual(self.status(b"/", host), 403, host)
        self.assertEqual(self.status(b"http://admin.example.com./x", b"other"), 403)
        self.assertIsNone(self.status(b"/", b"www.example.com."))

    def test_eachRequestItsOwn(self) -> None:
        """
        Requests one after another, on one connection or several, are each
        matched on their own host and client address, whatever came just
        before (the router keeps the last ones it worked out).
        """
        from .test_basicauth import QueuedRunner
        from .test_http_exchange import RecordingClientSide

        local = Route(name="local", match=Match(sources=("10.0.0.0/8",)),
                      respond=Respond(status=418))
        router = Router(self.factory, [self.router.routes[0], local],
                        Route(name="default", pool="web"), None, self.reactor.seconds,
                        QueuedRunner())
        inside, outside = RecordingClientSide(), RecordingClientSide()
        inside.clientHost = b"10.1.2.3"
        script = [(inside, b"www.example.com", 418), (inside, b"admin.example.com", 403),
                  (outside, b"admin.example.com", 403), (outside, b"www.example.com", None),
                  (inside, b"www.example.com", 418), (outside, b"ADMIN.example.com", 403),
                  (outside, b"www.example.com", None), (inside, b"www.example.com", 418)]
        for i, (client, host, status) in enumerate(script):
            ex = router.exchange(client, b"GET", b"/", "1.1", [(b"Host", host)], True, False, 0.0)
            self.assertEqual(None if ex.local is None else ex.local[0], status, i)

    def test_pathNormalised(self) -> None:
        """
        The path is matched as a backend resolves it: escapes of unreserved
        characters decoded, dot segments resolved, repeated slashes merged;
        other escapes (C{%25}, C{%2F}) stay as they are.
        """
        for target in (b"/admin/x", b"/%61dmin/x", b"/%2e%2e/admin/", b"//admin/x",
                       b"/x/../admin/", b"/./admin/?q=1", b"/admin/./x", b"/ADMIN/../admin/"):
            self.assertEqual(self.status(target, b"www.example.com"), 401, target)
        for target in (b"/administrator", b"/%2561dmin/", b"/admin%2Fx", b"/admin/../x",
                       b"/x/admin/"):
            self.assertIsNone(self.status(target, b"www.example.com"), target)

    def test_schemeRedirectWithoutHost(self) -> None:
        """
        A scheme redirect of an HTTP/1.0 request naming no host sends the
        client to the address it reached, never to an empty host (where
        C{https:////evil.example/} would take a browser to another site).
        """
        from .test_basicauth import QueuedRunner
        from .test_http_exchange import RecordingClientSide

        router = Router(self.factory, [Route(name="tls", redirect=Redirect(scheme="https"))],
                        None, None, self.reactor.seconds, QueuedRunner())
        ex = router.exchange(RecordingClientSide(), b"GET", b"//evil.example/x", "1.0", [],
                             False, False, 0.0)
        assert ex.local is not None
        self.assertIn((b"Location", b"https://l//evil.example/x"), ex.local[1])
