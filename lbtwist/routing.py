"""
Routes at run time: a table compiled once from a listener's routes that
answers, for the facts of a request (or of a TCP connection), the first
route in order whose conditions all hold, and the pure actions a route
takes (redirect locations, prefix stripping, header changes, weighted pool
choice, direct answers).

Sans-IO: plain values in and out, synchronous.  The table is immutable, so
replacing a listener's routes is one assignment of a new table.

How a match stays cheap (about 40 microseconds is a whole proxied request):
  - Routes are indexed by host (TCP: by TLS server name).  Each exact host
    has its candidate list, in order: the routes naming that host or a
    wildcard covering it, merged with the routes naming no host.  A host
    named by no route takes the routes of the wildcards it ends with (the
    lists per wildcard combination are built once and kept; there are only
    as many as the configuration makes) or the host-less routes.
  - Within a candidate list, each route's path condition (exact, prefix or
    regex) is one alternative of a single compiled regular expression, so
    the regex engine, in C, finds the first route whose path matches; only
    that route's other conditions (method, headers, query, source) are then
    checked in Python, and if they fail, the search goes on from the next
    route with the pattern of the rest of the list (built on first need).
  - A long candidate list is split once more by the path's first segment
    (C{v1} of C{/v1/users}), for routes whose exact path or prefix fixes it;
    so fifty prefixes on one host cost one dictionary lookup and a short
    pattern, not fifty tries.
"""

from __future__ import annotations

import bisect
import ipaddress
import re
import zlib
from typing import Callable, NamedTuple, Sequence
from urllib.parse import unquote_to_bytes

import attrs

from .routeconfig import HeaderActions, Match, Redirect, Respond, Rewrite, Route


class RequestFacts(NamedTuple):
    """
    What a route may look at, as the exchange already has it.

    @ivar method: the request method, e.g. C{b"GET"}.
    @ivar host: the host, lowercase, port removed; L{None} if none was sent.
    @ivar path: the path, without the query.
    @ivar query: the query string, without the C{?}.
    @ivar headers: the request's headers as (lowercase name, value) pairs.
    @ivar source: the client's address (after the PROXY protocol).
    @ivar sni: the TLS server name the client asked for, if any.
    """

    method: bytes
    host: bytes | None
    path: bytes
    query: bytes
    headers: Sequence[tuple[bytes, bytes]]
    source: str
    sni: str | None = None


def connectionFacts(source: str, sni: str | None) -> RequestFacts:
    """
    The facts of a TCP connection: its source and TLS server name only.
    """
    return RequestFacts(b"", None, b"", b"", (), source, sni)


# -- pure actions ------------------------------------------------------------


@attrs.frozen
class PoolSplit:
    """
    A weighted choice among pools.

    Random rather than smooth weighted round-robin: it keeps no state, so a
    table stays an immutable value that every connection shares and a
    replacement swaps in at once; a sticky key maps onto the same weighted
    scale through a stable hash, so sticky and fresh clients split alike; a
    95/5 split over 2,000 requests lands within +-2% with a margin of about
    four standard deviations.

    @ivar bounds: cumulative weights, one per pool.
    """

    names: tuple[str, ...]
    bounds: tuple[int, ...]

    @classmethod
    def compile(cls, pools: Sequence[tuple[str, int]]) -> PoolSplit:
        """
        The split of C{(pool, weight)} pairs (whose weights sum above 0).
        """
        total = 0
        names, bounds = [], []
        for name, weight in pools:
            if weight > 0:
                total += weight
                names.append(name)
                bounds.append(total)
        if not total:
            raise ValueError("the weights add up to 0")
        return cls(tuple(names), tuple(bounds))

    def choose(self, draw: float) -> str:
        """
        The pool for a uniform random C{draw} in [0, 1).
        """
        return self.names[bisect.bisect_right(self.bounds, int(draw * self.bounds[-1]))]

    def chooseSticky(self, key: bytes) -> str:
        """
        The pool for a sticky key: the same key always gets the same pool
        while the split is unchanged.
        """
        return self.names[bisect.bisect_right(self.bounds, zlib.crc32(key) % self.bounds[-1])]


def redirectLocation(redirect: Redirect, host: bytes, path: bytes, query: bytes) -> bytes:
    """
    The C{Location} of a redirect: the same host, path and query on another
    scheme (the port is dropped: it was the old scheme's; the redirect's
    C{port} if it has one); or the fixed location, with the request's path
    and query appended if C{keepPath}.
    """
    target = path + b"?" + query if query else path
    if redirect.scheme is not None:
        if redirect.port is not None:
            host += b":%d" % (redirect.port,)
        return redirect.scheme.encode("ascii") + b"://" + host + target
    assert redirect.location is not None
    location = redirect.location.encode("utf-8")
    if not redirect.keepPath:
        return location
    if location.endswith(b"/"):
        location = location[:-1]
    return location + target


# RFC 3986 2.3: characters whose escapes mean the same as the characters.
_UNRESERVED = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_HEX = frozenset(b"0123456789abcdefABCDEF")


def matchedPath(path: bytes) -> bytes:
    """
    The path a request is matched on: the path as a backend resolves it,
    so that a route cannot be stepped around by spelling its path another
    way (C{/%61dmin/}, C{/x/../admin/}, C{//admin/} for C{/admin/}).
    Escapes of unreserved characters are decoded (other escapes keep their
    meaning, in uppercase), dot segments removed (RFC 3986 5.2.4) and
    repeated slashes merged.  A path needing none of this is returned as
    it is, at the cost of three searches.
    """
    # (An int is looked for as a byte; a bytes needle costs a failed
    # integer conversion first, so the others are found with find.)
    if path[:1] != b"/" or (37 not in path  # 37: "%"
                            and path.find(b"/.") < 0 and path.find(b"//") < 0):
        return path
    if 37 in path:
        pieces = path.split(b"%")
        decoded = [pieces[0]]
        for piece in pieces[1:]:
            if len(piece) >= 2 and piece[0] in _HEX and piece[1] in _HEX:
                char = int(piece[:2], 16)
                decoded.append((bytes((char,)) if char in _UNRESERVED
                                else b"%" + piece[:2].upper()) + piece[2:])
            else:
                decoded.append(b"%" + piece)
        path = b"".join(decoded)
    segments = path.split(b"/")[1:]
    kept: list[bytes] = []
    last = len(segments) - 1
    for i, segment in enumerate(segments):
        if segment == b"." or segment == b"..":
            if segment == b".." and kept:
                kept.pop()
            if i == last:
                kept.append(b"")
        elif segment or i == last:
            kept.append(segment)
    return b"/" + b"/".join(kept)


def _withoutPrefix(path: bytes, prefix: bytes) -> bytes | None:
    """
    C{path} without C{prefix} if it starts with it on a segment boundary
    (an emptied path is C{/}), else L{None}.
    """
    if not path.startswith(prefix):
        return None
    rest = path[len(prefix):]
    if not rest:
        return b"/"
    return rest if rest[:1] == b"/" else None


def stripPrefix(target: bytes, prefix: bytes) -> bytes:
    """
    A request target with C{prefix} (no trailing slash) taken off its path
    when the path starts with it on a segment boundary; the query is kept,
    and an emptied path becomes C{/}.  A path that has the prefix only as
    routes match it (L{matchedPath}: C{/%73tatic/a}, C{//static/a},
    C{/x/../static/a}) loses it from that resolved path, as nginx's
    C{proxy_pass} with a URI does, so the route's pool does not get the
    prefix it strips.  Any other target is unchanged.
    """
    path, sep, query = target.partition(b"?")
    rest = _withoutPrefix(path, prefix)
    if rest is None:
        rest = _withoutPrefix(matchedPath(path), prefix)
        if rest is None:
            return target
    return rest + sep + query


def rewriteTarget(target: bytes, rewrite: Rewrite) -> bytes:
    """
    A request target after a route's C{rewrite}: the prefix stripped, then
    the new prefix put in front.
    """
    if rewrite.stripPrefix is not None:
        target = stripPrefix(target, rewrite.stripPrefix.encode("utf-8"))
    if rewrite.prefix is not None:
        target = rewrite.prefix.encode("utf-8") + target
    return target


@attrs.frozen
class CompiledHeaderActions:
    """
    L{HeaderActions} as bytes, ready for L{applyHeaderActions}.

    @ivar drop: lowercase names every existing header of which is removed
        (those of C{remove} and of C{set}).
    @ivar append: the headers appended (C{set}, then C{add}).
    """

    drop: frozenset[bytes]
    append: tuple[tuple[bytes, bytes], ...]

    @classmethod
    def compile(cls, actions: HeaderActions) -> CompiledHeaderActions:
        """
        Compile header actions.
        """
        def pairs(items: Sequence[tuple[str, str]]) -> tuple[tuple[bytes, bytes], ...]:
            return tuple((n.encode("ascii"), v.encode("utf-8")) for n, v in items)

        drop = {n.lower().encode("ascii") for n in actions.remove}
        drop.update(n.lower().encode("ascii") for n, _ in actions.set)
        return cls(frozenset(drop), pairs(actions.set) + pairs(actions.add))


def applyHeaderActions(headers: Sequence[tuple[bytes, bytes]],
                       actions: CompiledHeaderActions) -> list[tuple[bytes, bytes]]:
    """
    A new header list: the headers whose names (compared without case) are
    dropped are left out, then the new ones appended.
    """
    drop = actions.drop
    kept = [h for h in headers if h[0].lower() not in drop] if drop else list(headers)
    kept.extend(actions.append)
    return kept


# A direct answer: status, headers, body; the HTTP path frames it (length,
# HEAD, closing).
Answer = tuple[int, tuple[tuple[bytes, bytes], ...], bytes]

_TEXT = (b"Content-Type", b"text/plain; charset=utf-8")


def respondAnswer(respond: Respond) -> Answer:
    """
    The answer of a C{respond} route; its headers come first, and a plain
    text C{Content-Type} is added unless it gives one.
    """
    headers = [(n.encode("ascii"), v.encode("utf-8")) for n, v in respond.headers]
    if not any(n.lower() == b"content-type" for n, _ in headers):
        headers.append(_TEXT)
    return respond.status, tuple(headers), respond.body.encode("utf-8")


def redirectAnswer(redirect: Redirect, location: bytes) -> Answer:
    """
    The answer of a redirect route.
    """
    return (redirect.code, ((b"Location", location), _TEXT),
            b"Redirecting to " + location + b"\n")


NOT_FOUND_BODY = b"404 Not Found: no route matches this request.\n"
# The answer to a request no route matches, on a listener without a
# default route.
NOT_FOUND: Answer = (404, (_TEXT,), NOT_FOUND_BODY)


def tooManyRequests(wait: bytes) -> Answer:
    """
    The answer to a request over its route's rate limit, C{wait} being its
    C{Retry-After}.
    """
    return (429, ((b"Retry-After", wait), _TEXT),
            b"429 Too Many Requests: slow down, retry after " + wait + b" s.\n")


# -- the table ---------------------------------------------------------------


Test = Callable[[RequestFacts], bool]


@attrs.frozen
class CompiledRoute:
    """
    A route ready for the hot path.

    @ivar route: the route as configured.
    @ivar split: its pool choice, if it sends to pools.
    @ivar requestHeaders: its request header changes, compiled.
    @ivar responseHeaders: its response header changes, compiled.
    """

    route: Route
    split: PoolSplit | None
    requestHeaders: CompiledHeaderActions | None
    responseHeaders: CompiledHeaderActions | None

    @classmethod
    def compile(cls, route: Route) -> CompiledRoute:
        """
        Compile one route's actions.
        """
        pools = ((route.pool, 1),) if route.pool is not None else route.pools
        return cls(
            route=route,
            split=PoolSplit.compile(pools) if pools else None,
            requestHeaders=(None if route.requestHeaders is None
                            else CompiledHeaderActions.compile(route.requestHeaders)),
            responseHeaders=(None if route.responseHeaders is None
                             else CompiledHeaderActions.compile(route.responseHeaders)),
        )


def _inlinable(pattern: bytes) -> bool:
    """
    Whether a path regex can be one alternative of the candidates' pattern:
    it has no groups to renumber and no global flags.
    """
    try:
        return re.compile(b"()|(.*?(?:" + pattern + b"))").groups == 2
    except re.error:
        return False


def _pathConditions(match: Match) -> tuple[bytes, list[Test]]:
    """
    A route's path alternative (a regex matched at the start of the path)
    and the path conditions left for Python.
    """
    conditions: list[tuple[bytes, Test]] = []
    if match.path is not None:
        exact = match.path.encode("utf-8")
        conditions.append((re.escape(exact) + rb"\Z", lambda f: f.path == exact))
    if match.pathPrefix is not None:
        prefix = match.pathPrefix.encode("utf-8")
        conditions.append((re.escape(prefix), lambda f: f.path.startswith(prefix)))
    if match.pathRegex is not None:
        pattern = match.pathRegex.encode("utf-8")
        search = re.compile(pattern).search
        inline = rb".*?(?:" + pattern + b")" if _inlinable(pattern) else b""
        conditions.append((inline, lambda f: search(f.path) is not None))
    if not conditions:
        return b"", []
    alternative, _ = conditions[0]
    rest = [test for _, test in conditions[1:]]
    if not alternative:
        rest.insert(0, conditions[0][1])
    return alternative, rest


def firstSegment(path: bytes) -> bytes:
    """
    The first segment of a path: C{b"v1"} of C{b"/v1/users"} and of C{b"/v1"}.
    """
    end = path.find(b"/", 1)
    return path[1:end] if end > 0 else path[1:]


def _segmentKey(match: Match) -> bytes | None:
    """
    The first path segment every path a route matches has, if its path
    condition fixes one (an exact path, or a prefix holding a second C{/}).
    """
    if match.path is not None:
        return firstSegment(match.path.encode("utf-8"))
    if match.pathPrefix is not None:
        prefix = match.pathPrefix.encode("utf-8")
        if prefix.find(b"/", 1) > 0:
            return firstSegment(prefix)
    return None


def _headerTest(name: bytes, value: bytes | None, regex: bytes | None,
                present: bool) -> Test:
    if value is not None:
        return lambda f: any(n == name and v == value for n, v in f.headers)
    if regex is not None:
        search = re.compile(regex).search
        return lambda f: any(n == name and search(v) is not None for n, v in f.headers)
    if present:
        return lambda f: any(n == name for n, _ in f.headers)
    return lambda f: all(n != name for n, _ in f.headers)


def _queryPairs(query: bytes) -> list[tuple[bytes, bytes]]:
    pairs = []
    for part in query.split(b"&"):
        name, _, value = part.partition(b"=")
        pairs.append((unquote_to_bytes(name.replace(b"+", b" ")),
                      unquote_to_bytes(value.replace(b"+", b" "))))
    return pairs


def _sourceTest(sources: Sequence[str]) -> Test:
    networks = [ipaddress.ip_network(s) for s in sources]
    seen: dict[str, bool] = {}

    def test(f: RequestFacts) -> bool:
        # Clients come back: remember each address's answer (bounded).
        known = seen.get(f.source)
        if known is None:
            try:
                address = ipaddress.ip_address(f.source.partition("%")[0])
            except ValueError:
                known = False
            else:
                if address.version == 6 and address.ipv4_mapped is not None:
                    address = address.ipv4_mapped
                known = any(address in n for n in networks)
            if len(seen) >= 4096:
                seen.clear()
            seen[f.source] = known
        return known

    return test


def _residual(match: Match, pathTests: list[Test]) -> Test | None:
    """
    One test of a route's conditions other than its host and first path
    condition, or L{None} when it has none.
    """
    tests = list(pathTests)
    if match.methods:
        methods = frozenset(m.encode("ascii") for m in match.methods)
        tests.append(lambda f: f.method in methods)
    for h in match.headers:
        tests.append(_headerTest(h.name.encode("ascii"),
                                 None if h.value is None else h.value.encode("utf-8"),
                                 None if h.regex is None else h.regex.encode("utf-8"),
                                 h.present))
    if match.query:
        wanted = [(n.encode("utf-8"), v.encode("utf-8")) for n, v in match.query]
        tests.append(lambda f: all(p in _queryPairs(f.query) for p in wanted))
    if match.sources:
        tests.append(_sourceTest(match.sources))
    if not tests:
        return None
    if len(tests) == 1:
        return tests[0]
    return lambda f: all(t(f) for t in tests)


class _Candidates:
    """
    The routes that may match requests for one host, in order, with the
    patterns that find the first whose path matches.
    """

    __slots__ = ("routes", "rests", "alternatives", "patterns", "count")

    def __init__(self, entries: Sequence[tuple[CompiledRoute, bytes, Test | None]]) -> None:
        self.routes = tuple(e[0] for e in entries)
        self.alternatives = tuple(e[1] for e in entries)
        self.rests = tuple(e[2] for e in entries)
        self.count = len(entries)
        self.patterns: dict[int, re.Pattern[bytes]] = {}
        if entries:
            self._pattern(0)

    def _pattern(self, start: int) -> re.Pattern[bytes]:
        pattern = self.patterns.get(start)
        if pattern is None:
            pattern = re.compile(b"|".join(b"(" + a + b")" for a in self.alternatives[start:]))
            self.patterns[start] = pattern
        return pattern

    def match(self, facts: RequestFacts) -> CompiledRoute | None:
        if not self.count:
            return None
        path = facts.path
        start = 0
        found = self.patterns[0].match(path)
        while found is not None:
            index = start + found.lastindex - 1  # type: ignore[operator]
            rest = self.rests[index]
            if rest is None or rest(facts):
                return self.routes[index]
            start = index + 1
            if start == self.count:
                return None
            found = self._pattern(start).match(path)
        return None


Entry = tuple[CompiledRoute, tuple[bytes, ...], bytes, "Test | None", "bytes | None"]

# Below this many routes with a first path segment, a candidate list is not
# split by it: the lookup would cost more than it saves.
SEGMENT_INDEX_MIN = 8


class _PathIndex:
    """
    A candidate list split by the request path's first segment: the routes
    whose path condition fixes that segment, merged in order with those
    that fix none; a segment no route fixes takes only the latter.
    """

    __slots__ = ("bySegment", "others")

    def __init__(self, entries: Sequence[Entry]) -> None:
        keys = {e[4] for e in entries} - {None}
        indexed = sum(e[4] is not None for e in entries)
        if indexed < SEGMENT_INDEX_MIN:
            self.bySegment: dict[bytes, _Candidates] | None = None
            self.others = _Candidates([(e[0], e[2], e[3]) for e in entries])
            return
        self.bySegment = {
            key: _Candidates([(e[0], e[2], e[3]) for e in entries if e[4] in (key, None)])
            for key in keys if key is not None}
        self.others = _Candidates([(e[0], e[2], e[3]) for e in entries if e[4] is None])

    def match(self, facts: RequestFacts) -> CompiledRoute | None:
        if self.bySegment is None:
            return self.others.match(facts)
        path = facts.path
        end = path.find(b"/", 1)
        return self.bySegment.get(path[1:end] if end > 0 else path[1:],
                                  self.others).match(facts)


def _hostMatches(pattern: bytes, host: bytes) -> bool:
    if pattern.startswith(b"*."):
        return host.endswith(pattern[1:])
    return host == pattern


class RouteTable:
    """
    A listener's routes compiled for matching; immutable once built.

    @ivar default: what a request no route matches gets, if anything.
    """

    def __init__(self, entries: Sequence[Entry], default: CompiledRoute | None,
                 bySni: bool) -> None:
        self.routes = tuple(e[0] for e in entries)
        self.default = default
        self._bySni = bySni
        self._entries = entries
        self._indexed = any(e[1] for e in entries)
        exact = {h for e in entries for h in e[1] if not h.startswith(b"*.")}
        self._suffixes = frozenset(h[1:] for e in entries for h in e[1]
                                   if h.startswith(b"*."))
        self._byHost = {h: self._candidatesFor(h) for h in exact}
        self._byWildcards: dict[tuple[bytes, ...], _PathIndex] = {}
        self._hostless = self._candidatesFor(None)

    @classmethod
    def compile(cls, routes: Sequence[Route], default: Route | None = None) -> RouteTable:
        """
        Compile routes (and the default route) into a table.
        """
        entries = []
        for route in routes:
            names = route.match.sni or route.match.hosts
            alternative, pathTests = _pathConditions(route.match)
            entries.append((CompiledRoute.compile(route),
                            tuple(n.encode("ascii") for n in names),
                            alternative, _residual(route.match, pathTests),
                            _segmentKey(route.match)))
        return cls(entries, None if default is None else CompiledRoute.compile(default),
                   any(r.match.sni for r in routes))

    def _candidatesFor(self, host: bytes | None) -> _PathIndex:
        return _PathIndex([
            e for e in self._entries
            if not e[1] or (host is not None and any(_hostMatches(n, host) for n in e[1]))
        ])

    def _wildcards(self, host: bytes) -> _PathIndex:
        # Walk the host's own dot-suffixes (a few) rather than every
        # wildcard of the configuration (maybe many).
        found = []
        dot = host.find(b".")
        while dot >= 0:
            if host[dot:] in self._suffixes:
                found.append(host[dot:])
            dot = host.find(b".", dot + 1)
        key = tuple(found)
        candidates = self._byWildcards.get(key)
        if candidates is None:
            # One list per combination of wildcards, which the
            # configuration bounds; the host stands for its combination.
            candidates = self._byWildcards[key] = self._candidatesFor(host)
        return candidates

    def match(self, facts: RequestFacts) -> CompiledRoute | None:
        """
        The first route whose conditions all hold for C{facts}, else the
        default route, else L{None}.
        """
        if self._indexed:
            if self._bySni:
                host = facts.sni.lower().encode("ascii", "replace") if facts.sni else None
            else:
                host = facts.host
            if host is None:
                candidates = self._hostless
            else:
                candidates = self._byHost.get(host) or self._wildcards(host)
        else:
            candidates = self._hostless
        found = candidates.match(facts)
        return self.default if found is None else found


# -- what a route did --------------------------------------------------------

# The upper bounds (seconds) of the buckets of a route's request-duration
# histogram, as Prometheus's client uses by default.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0)


class RouteCounters:
    """
    What one route of a listener did, for the metrics, the admin API and
    the dashboard.  Counted on the hot path: plain attributes, one bisect
    per request.

    @ivar name: the route's name.
    @ivar responses: responses (HTTP) by status class (C{"2xx"}...);
        connections (TCP) under C{"tcp"}.
    @ivar rateLimited: requests refused by the route's rate limit.
    @ivar buckets: requests per duration bucket (not cumulative), the last
        for those over every bound.
    @ivar durationSum: the durations counted, summed (seconds).
    """

    __slots__ = ("buckets", "durationSum", "name", "rateLimited", "responses")

    def __init__(self, name: str) -> None:
        self.name = name
        self.responses: dict[str, int] = {}
        self.rateLimited = 0
        self.buckets = [0] * (len(DURATION_BUCKETS) + 1)
        self.durationSum = 0.0

    def count(self, statusClass: str, duration: float) -> None:
        """
        Count one answered request (or closed connection) and its duration.
        """
        responses = self.responses
        responses[statusClass] = responses.get(statusClass, 0) + 1
        self.buckets[bisect.bisect_left(DURATION_BUCKETS, duration)] += 1
        self.durationSum += duration

    @property
    def requests(self) -> int:
        """
        Requests (or connections) counted, over every class.
        """
        return sum(self.responses.values())

    def cumulative(self) -> list[tuple[float, int]]:
        """
        The histogram as Prometheus gives it: C{(upper bound, requests at or
        under it)}, the last bound C{inf}.
        """
        total, out = 0, []
        for bound, n in zip((*DURATION_BUCKETS, float("inf")), self.buckets):
            total += n
            out.append((bound, total))
        return out
