"""
Tests for L{lbtwist.routing}: the route table's first-match order, every
match key, the host index, and the pure actions.
"""

from __future__ import annotations

import ipaddress
import random
import re

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.routeconfig import (
    HeaderActions,
    HeaderMatch,
    Match,
    Redirect,
    Respond,
    Rewrite,
    Route,
)
from lbtwist.routing import (
    NOT_FOUND,
    CompiledHeaderActions,
    PoolSplit,
    RequestFacts,
    RouteTable,
    applyHeaderActions,
    connectionFacts,
    redirectAnswer,
    redirectLocation,
    respondAnswer,
    rewriteTarget,
    stripPrefix,
    tooManyRequests,
)


def facts(path: bytes = b"/", host: bytes | None = b"example.com", method: bytes = b"GET",
          query: bytes = b"", headers: tuple[tuple[bytes, bytes], ...] = (),
          source: str = "192.0.2.1") -> RequestFacts:
    """
    The facts of a request, with defaults.
    """
    return RequestFacts(method, host, path, query, headers, source)


def route(name: str, **match: object) -> Route:
    """
    A route to pool C{p} with the given match.
    """
    return Route(name=name, match=Match(**match), pool="p")  # type: ignore[arg-type]


class MatchTests(SynchronousTestCase):
    """
    L{RouteTable.match} takes the first route, in order, whose conditions
    all hold.
    """

    def matched(self, routes: list[Route], f: RequestFacts,
                default: Route | None = None) -> str | None:
        found = RouteTable.compile(routes, default).match(f)
        return None if found is None else found.route.name

    def test_keys(self) -> None:
        """
        Each match key, alone, matches the requests it names and no other.
        """
        cases = [
            ({"hosts": ("api.example.com",)}, facts(host=b"api.example.com"), facts()),
            ({"hosts": ("*.example.com",)}, facts(host=b"a.b.example.com"), facts()),
            ({"hosts": ("*.example.com",)}, facts(host=b"www.example.com"),
             facts(host=b"wwwexample.com")),
            ({"path": "/a"}, facts(b"/a"), facts(b"/a/")),
            ({"pathPrefix": "/v1/"}, facts(b"/v1/x"), facts(b"/v2/x")),
            ({"pathRegex": r"\.png$"}, facts(b"/i/a.png"), facts(b"/i/a.png.txt")),
            ({"pathRegex": "^/static/"}, facts(b"/static/a"), facts(b"/x/static/a")),
            ({"pathRegex": "(a)(b)"}, facts(b"/xab"), facts(b"/xa")),
            ({"pathRegex": "(?i)^/ADMIN"}, facts(b"/admin"), facts(b"/x/admin")),
            ({"methods": ("GET", "HEAD")}, facts(method=b"HEAD"), facts(method=b"POST")),
            ({"headers": (HeaderMatch("x-admin", value="1"),)},
             facts(headers=((b"x-admin", b"1"),)), facts(headers=((b"x-admin", b"2"),))),
            ({"headers": (HeaderMatch("x-v", regex="^v[0-9]$"),)},
             facts(headers=((b"x-v", b"v2"),)), facts(headers=((b"x-v", b"vv"),))),
            ({"headers": (HeaderMatch("x-debug"),)},
             facts(headers=((b"x-debug", b""),)), facts()),
            ({"headers": (HeaderMatch("x-debug", present=False),)},
             facts(), facts(headers=((b"x-debug", b""),))),
            ({"query": (("v", "a b"),)}, facts(query=b"x=1&v=a+b"), facts(query=b"v=ab")),
            ({"sources": ("10.0.0.0/8", "::1/128")}, facts(source="10.2.3.4"),
             facts(source="11.0.0.1")),
            ({"sources": ("10.0.0.0/8",)}, facts(source="::ffff:10.0.0.1"),
             facts(source="not an address")),
            ({"sources": ("::1/128",)}, facts(source="::1"), facts(source="::2")),
        ]
        for match, hit, miss in cases:
            table = RouteTable.compile([route("r", **match)])
            self.assertIsNotNone(table.match(hit), (match, hit))
            self.assertIsNone(table.match(miss), (match, miss))

    def test_allKeys(self) -> None:
        """
        A route with several keys matches only when every one holds.
        """
        r = route("r", hosts=("a.example.com",), pathPrefix="/v1/", methods=("GET",))
        self.assertEqual(self.matched([r], facts(b"/v1/x", b"a.example.com")), "r")
        self.assertIsNone(self.matched([r], facts(b"/v1/x", b"a.example.com", b"PUT")))
        self.assertIsNone(self.matched([r], facts(b"/v2/x", b"a.example.com")))
        self.assertIsNone(self.matched([r], facts(b"/v1/x", b"b.example.com")))

    def test_order(self) -> None:
        """
        Of several matching routes the first wins, whether they name a host,
        a wildcard or none; a route whose path matches but whose other
        conditions fail gives way to the next.
        """
        routes = [
            route("post", pathPrefix="/a", methods=("POST",)),
            route("wild", hosts=("*.example.com",), pathPrefix="/a"),
            route("exact", hosts=("www.example.com",)),
            route("any"),
        ]
        self.assertEqual(self.matched(routes, facts(b"/a", b"www.example.com")), "wild")
        self.assertEqual(self.matched(routes, facts(b"/a", b"x.example.com", b"POST")), "post")
        self.assertEqual(self.matched(routes, facts(b"/b", b"www.example.com")), "exact")
        self.assertEqual(self.matched(routes, facts(b"/b", b"x.example.com")), "any")
        self.assertEqual(self.matched(routes, facts(b"/a", b"other.org")), "any")
        self.assertEqual(self.matched(routes, facts(b"/a", None)), "any")

    def test_nestedWildcards(self) -> None:
        """
        A host under two wildcards takes the routes of both, in order.
        """
        routes = [route("inner", hosts=("*.b.example.com",), path="/x"),
                  route("outer", hosts=("*.example.com",))]
        self.assertEqual(self.matched(routes, facts(b"/x", b"a.b.example.com")), "inner")
        self.assertEqual(self.matched(routes, facts(b"/y", b"a.b.example.com")), "outer")
        self.assertEqual(self.matched(routes, facts(b"/x", b"c.example.com")), "outer")
        self.assertIsNone(self.matched(routes, facts(b"/x", b"example.com")))

    def test_default(self) -> None:
        """
        A request no route matches gets the default route, or L{None}.
        """
        routes = [route("a", path="/a")]
        default = Route(name="default", pool="d")
        self.assertEqual(self.matched(routes, facts(b"/b"), default), "default")
        self.assertEqual(self.matched(routes, facts(b"/a"), default), "a")
        self.assertIsNone(self.matched(routes, facts(b"/b")))
        self.assertIsNone(self.matched([], facts(b"/b")))

    def test_manyRoutes(self) -> None:
        """
        Fifty routes on one host, differing by prefix and method: each
        request finds its own, also when the routes before it match its
        path but not its method.
        """
        routes = [route(f"r{i}", hosts=("h.example.com",), pathPrefix=f"/p{i % 10}/",
                        methods=(f"M{i}",)) for i in range(50)]
        for i in range(50):
            self.assertEqual(
                self.matched(routes, facts(f"/p{i % 10}/x".encode(), b"h.example.com",
                                           f"M{i}".encode())), f"r{i}")

    def test_sni(self) -> None:
        """
        A TCP table routes on the TLS server name, exact or wildcard, and
        on the source.
        """
        routes = [route("db", sni=("db.example.com",)),
                  route("web", sni=("*.example.com",), sources=("127.0.0.0/8",))]
        self.assertEqual(self.matched(routes, connectionFacts("10.0.0.1", "DB.example.com")),
                         "db")
        self.assertEqual(self.matched(routes, connectionFacts("127.0.0.1", "w.example.com")),
                         "web")
        self.assertIsNone(self.matched(routes, connectionFacts("10.0.0.1", "w.example.com")))
        self.assertIsNone(self.matched(routes, connectionFacts("127.0.0.1", None)))


def reference(routes: list[Route], f: RequestFacts) -> str | None:
    """
    The route a plain reading of the rules picks: the first, in order,
    whose keys all hold, checked one by one.
    """
    def host(patterns: tuple[str, ...]) -> bool:
        h = (f.host or b"").decode()
        return any(h.endswith(p[1:]) if p.startswith("*.") else h == p for p in patterns)

    path = f.path.decode()
    for r in routes:
        m = r.match
        if ((not m.hosts or host(m.hosts))
                and (m.path is None or path == m.path)
                and (m.pathPrefix is None or path.startswith(m.pathPrefix))
                and (m.pathRegex is None or re.search(m.pathRegex, path))
                and (not m.methods or f.method.decode() in m.methods)
                and (not m.sources or any(ipaddress.ip_address(f.source) in
                                          ipaddress.ip_network(n) for n in m.sources))):
            return r.name
    return None


class ReferenceTests(SynchronousTestCase):
    """
    The indexed table picks what a plain reading of the rules picks.
    """

    def test_random(self) -> None:
        """
        Over random tables of hosts, wildcards, exact paths, prefixes (on a
        segment boundary or not), regexes, methods and sources, and random
        requests, L{RouteTable.match} agrees with L{reference}.
        """
        rng = random.Random(13)
        hosts = ["a.example.com", "b.example.com", "*.example.com", "*.b.example.com"]
        segments = ["p0", "p1", "p10", "q", ""]
        for _ in range(60):
            routes = []
            for i in range(rng.randrange(1, 40)):
                match: dict[str, object] = {}
                if rng.random() < 0.4:
                    match["hosts"] = (rng.choice(hosts),)
                kind = rng.randrange(5)
                seg = rng.choice(segments)
                if kind == 0:
                    match["path"] = f"/{seg}/x" if rng.random() < 0.5 else f"/{seg}"
                elif kind == 1:
                    match["pathPrefix"] = f"/{seg}/" if rng.random() < 0.7 else f"/{seg}"
                elif kind == 2:
                    match["pathRegex"] = rng.choice(["^/p1", "x$", "(q)", "^/p[01]/"])
                if rng.random() < 0.3:
                    match["methods"] = (rng.choice(["GET", "POST"]),)
                if rng.random() < 0.2:
                    match["sources"] = ("10.0.0.0/8",)
                if not match:
                    match["methods"] = ("PUT",)
                routes.append(route(f"r{i}", **match))
            table = RouteTable.compile(routes)
            for _ in range(40):
                f = facts(
                    path=rng.choice([f"/{s}{t}" for s in segments
                                     for t in ("", "/", "/x", "x")]).encode(),
                    host=rng.choice([b"a.example.com", b"c.b.example.com", b"other.org",
                                     b"example.com", None]),
                    method=rng.choice([b"GET", b"POST", b"PUT"]),
                    source=rng.choice(["10.1.1.1", "192.0.2.1"]))
                found = table.match(f)
                self.assertEqual(None if found is None else found.route.name,
                                 reference(routes, f), (routes, f))


class ActionTests(SynchronousTestCase):
    """
    The pure actions of a route.
    """

    def test_redirectLocation(self) -> None:
        """
        A scheme redirect keeps host, path and query; a location is fixed
        unless C{keepPath} appends the path and query.
        """
        cases = [
            (Redirect(scheme="https"), b"/a/b", b"x=1", b"https://example.com/a/b?x=1"),
            (Redirect(scheme="https"), b"/", b"", b"https://example.com/"),
            (Redirect(location="https://new.example.com/"), b"/a", b"x=1",
             b"https://new.example.com/"),
            (Redirect(location="https://new.example.com/", keepPath=True), b"/a", b"x=1",
             b"https://new.example.com/a?x=1"),
            (Redirect(location="https://new.example.com", keepPath=True), b"/a", b"",
             b"https://new.example.com/a"),
            (Redirect(location="/new", keepPath=True), b"/a", b"", b"/new/a"),
        ]
        for redirect, path, query, expected in cases:
            self.assertEqual(redirectLocation(redirect, b"example.com", path, query), expected)

    def test_redirectPort(self) -> None:
        """
        A scheme redirect with a C{port} sends the client to that port of
        the same host (an IPv6 literal keeps its brackets), path and query.
        """
        redirect = Redirect(scheme="https", port=8443)
        self.assertEqual(redirectLocation(redirect, b"example.com", b"/a", b"x=1"),
                         b"https://example.com:8443/a?x=1")
        self.assertEqual(redirectLocation(redirect, b"[::1]", b"/", b""),
                         b"https://[::1]:8443/")

    def test_stripPrefix(self) -> None:
        """
        The prefix is taken off on a segment boundary, the query kept, an
        empty path made C{/}; other targets are left alone.
        """
        cases = [
            (b"/static/a.css?v=1", b"/a.css?v=1"),
            (b"/static", b"/"),
            (b"/static?v=1", b"/?v=1"),
            (b"/static/", b"/"),
            (b"/staticfoo", b"/staticfoo"),
            (b"/other/static/a", b"/other/static/a"),
        ]
        for target, expected in cases:
            self.assertEqual(stripPrefix(target, b"/static"), expected, target)

    def test_stripPrefixOfPathSpeltAnotherWay(self) -> None:
        """
        A path that matches the prefix only as a backend resolves it (an
        escaped unreserved character, repeated slashes, dot segments: as
        routes match it) has the prefix taken off that resolved path, so the
        route's pool never gets the prefix it strips; the query is kept.
        """
        cases = [
            (b"/%73tatic/a.css?v=%2F", b"/a.css?v=%2F"),
            (b"//static/a.css", b"/a.css"),
            (b"/x/../static/a.css", b"/a.css"),
            (b"/static/./a.css", b"/./a.css"),  # as sent, when that has the prefix
            (b"/%73taticfoo", b"/%73taticfoo"),
            (b"/x/../other/a", b"/x/../other/a"),
        ]
        for target, expected in cases:
            self.assertEqual(stripPrefix(target, b"/static"), expected, target)

    def test_rewriteTarget(self) -> None:
        """
        A rewrite strips, then puts the new prefix in front.
        """
        self.assertEqual(rewriteTarget(b"/static/a?q", Rewrite("/static", "/assets")),
                         b"/assets/a?q")
        self.assertEqual(rewriteTarget(b"/a", Rewrite(prefix="/v2")), b"/v2/a")

    def test_headerActions(self) -> None:
        """
        Remove and set drop every header of the name, whatever its case;
        set and add append.
        """
        actions = CompiledHeaderActions.compile(HeaderActions(
            set=(("X-Env", "prod"),), add=(("Via", "lb"),), remove=("X-Debug",)))
        headers = [(b"Host", b"h"), (b"x-debug", b"1"), (b"X-ENV", b"dev"), (b"Via", b"a")]
        self.assertEqual(applyHeaderActions(headers, actions),
                         [(b"Host", b"h"), (b"Via", b"a"), (b"X-Env", b"prod"),
                          (b"Via", b"lb")])
        self.assertEqual(len(headers), 4)

    def test_split(self) -> None:
        """
        A split maps draws and sticky keys onto weights; zero-weight pools
        are never chosen; a sticky key always gets the same pool.
        """
        split = PoolSplit.compile([("web", 95), ("off", 0), ("v2", 5)])
        self.assertEqual([split.choose(d) for d in (0.0, 0.5, 0.9499, 0.95, 0.9999)],
                         ["web", "web", "web", "v2", "v2"])
        chosen = [split.chooseSticky(b"client%d" % i) for i in range(2000)]
        self.assertEqual(chosen, [split.chooseSticky(b"client%d" % i) for i in range(2000)])
        self.assertTrue(60 < chosen.count("v2") < 140, chosen.count("v2"))
        self.assertNotIn("off", chosen)
        self.assertRaises(ValueError, PoolSplit.compile, [("a", 0)])

    def test_answers(self) -> None:
        """
        The direct answers: a respond route's status, its headers first and
        a plain-text type unless it gives one; a redirect's Location; the
        404 and 429 answers.
        """
        self.assertEqual(
            respondAnswer(Respond(403, "forbidden\n", (("X-A", "b"),))),
            (403, ((b"X-A", b"b"), (b"Content-Type", b"text/plain; charset=utf-8")),
             b"forbidden\n"))
        self.assertEqual(respondAnswer(Respond(200, "hi", (("content-type", "x/y"),)))[1],
                         ((b"content-type", b"x/y"),))
        status, headers, body = redirectAnswer(Redirect(scheme="https", code=308), b"https://a/")
        self.assertEqual((status, headers[0]), (308, (b"Location", b"https://a/")))
        self.assertEqual(NOT_FOUND[0], 404)
        self.assertEqual(tooManyRequests(b"3")[1][0], (b"Retry-After", b"3"))


class RouteCountersTests(SynchronousTestCase):
    """
    L{RouteCounters} counts answers by class and durations by bucket.
    """

    def test_counts(self) -> None:
        """
        Each answer lands in its class and in the first bucket whose bound
        it does not exceed; the cumulative view ends at +Inf with the total.
        """
        from lbtwist.routing import DURATION_BUCKETS, RouteCounters

        c = RouteCounters("api")
        for cls, duration in [("2xx", 0.001), ("2xx", 0.005), ("5xx", 0.3), ("2xx", 99.0)]:
            c.count(cls, duration)
        self.assertEqual(c.responses, {"2xx": 3, "5xx": 1})
        self.assertEqual(c.requests, 4)
        cumulative = c.cumulative()
        self.assertEqual(cumulative[0], (DURATION_BUCKETS[0], 2))
        self.assertEqual(dict(cumulative)[0.5], 3)
        self.assertEqual(cumulative[-1], (float("inf"), 4))
        self.assertAlmostEqual(c.durationSum, 99.306)
