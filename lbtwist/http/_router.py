"""
A routed HTTP listener's routes at run time: for each request head, the
route it takes (L{lbtwist.routing.RouteTable}), and what that route does
with it before it becomes an exchange: a direct answer (404, a redirect, a
fixed response, 429 past a rate limit, 401 without credentials), or a pool
(one, or a weighted split) with the target rewritten and the headers
changed, the route's timeouts and retries in force.

A listener without routes has no router and pays nothing for routing.
The table is immutable: L{Router} is replaced whole when the routes
change, and requests already under way finish as they began.  What a route
has counted is carried over to the new router for a route that keeps its
name; its rate-limit buckets too if it keeps its rate limit, and its
checked credentials if it keeps its auth settings.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from ..basicauth import BasicAuthenticator, unauthorizedAnswer
from ..ratelimit import TokenBuckets, requestKey, retryAfter
from ..routeconfig import Route
from ..routing import (
    NOT_FOUND,
    Answer,
    CompiledRoute,
    RequestFacts,
    RouteCounters,
    RouteTable,
    applyHeaderActions,
    matchedPath,
    redirectAnswer,
    redirectLocation,
    respondAnswer,
    rewriteTarget,
    tooManyRequests,
)
from ._exchange import Exchange
from ._plan import absoluteAuthority, planRequest
from ._upstream import Upstream

# The answer when a route's pool no longer exists (removed at run time).
_NO_POOL: Answer = (503, ((b"Content-Type", b"text/plain; charset=utf-8"),),
                    b"503 Service Unavailable: the route's pool is gone.\n")
# The answer when a route's credential checks in flight are at their bound.
_CHECKS_BUSY: Answer = (503, ((b"Retry-After", b"1"),
                              (b"Content-Type", b"text/plain; charset=utf-8")),
                        b"503 Service Unavailable: too many credential checks under way; "
                        b"retry.\n")


def hostOf(authority: bytes | None) -> bytes | None:
    """
    The host of an authority, lowercase, without its port (an IPv6
    literal keeps its brackets) or a trailing dot (C{example.com.} is
    C{example.com}, fully qualified, as backends and routes' hosts take it).
    """
    if not authority:
        return None
    if authority[:1] == b"[":
        end = authority.find(b"]")
        return (authority if end == -1 else authority[:end + 1]).lower()
    host = authority.partition(b":")[0].lower()
    return host[:-1] if host[-1:] == b"." else host


def targetParts(target: bytes, headers: Sequence[tuple[bytes, bytes]]) -> tuple[
        bytes | None, bytes, bytes]:
    """
    The authority (the absolute-form target's, else the Host header's),
    the path and the query of a request.

    @raise lbtwist.http._errors.BadRequest: an absolute form that cannot be
        forwarded.
    """
    if target[:1] == b"/":
        authority = None
        path, _, query = target.partition(b"?")
    else:
        authority = absoluteAuthority(target) if target != b"*" else None
        if authority is None:
            path, query = target, b""
        else:
            rest = target.partition(b"://")[2][len(authority):]
            path, _, query = rest.partition(b"?")
            path = path or b"/"
    if authority is None:
        for name, value in headers:
            if len(name) == 4 and name.lower() == b"host":
                authority = value.strip(b" \t")
                break
    return authority, path, query


def _header(headers: Sequence[tuple[bytes, bytes]], lname: bytes) -> bytes | None:
    for name, value in headers:
        if len(name) == len(lname) and name.lower() == lname:
            return value
    return None


class RouteRuntime:
    """
    One route of a listener at run time.

    @ivar route: the route as configured, or L{None} for what a listener
        with no default route does with a request no route matches (404).
    @ivar counters: what it did.
    @ivar limiter: its rate-limit buckets, if it has a limit.
    @ivar auth: checks its credentials, if it asks for them.
    """

    def __init__(
        self, compiled: CompiledRoute | None, factory: Any, counters: RouteCounters,
        limiter: TokenBuckets | None, auth: BasicAuthenticator | None,
    ) -> None:
        self.compiled = compiled
        self.route = route = compiled.route if compiled is not None else None
        self.factory = factory
        self.counters = counters
        self.limiter = limiter
        self.auth = auth
        self.split = compiled.split if compiled is not None else None
        self.requestHeaders = compiled.requestHeaders if compiled is not None else None
        self.responseHeaders = compiled.responseHeaders if compiled is not None else None
        self.answer: Answer | None = None
        if route is None:
            self.answer = NOT_FOUND
        elif route.respond is not None:
            self.answer = respondAnswer(route.respond)
        if self.answer is not None and self.responseHeaders is not None:
            self.answer = self.withResponseHeaders(self.answer)
        self._upstreams: dict[str, Upstream] = {}
        # The one pool of a route that sends to one: no choice to make.
        self.onlyPool = (self.split.names[0] if self.split is not None
                         and len(self.split.names) == 1 else None)
        # A route that only sends to one pool: nothing else to do per request.
        self.plain = (self.onlyPool is not None and route is not None and limiter is None
                      and auth is None and route.rewrite is None
                      and self.requestHeaders is None)
        self._sticky = False
        if self.split is not None and len(self.split.names) > 1:
            pools = factory.pools
            self._sticky = any(
                name in pools and pools[name].config.sticky is not None
                for name in self.split.names
            )

    def withResponseHeaders(self, answer: Answer) -> Answer:
        """
        A direct answer with the route's response header changes made.
        """
        actions = self.responseHeaders
        if actions is None:
            return answer
        status, headers, body = answer
        return status, tuple(applyHeaderActions(headers, actions)), body

    def upstream(self, name: str) -> Upstream | None:
        """
        The pool C{name} as this route reaches it (its timeouts and retries
        in force), or L{None} if there is no such pool any more.
        """
        upstream = self._upstreams.get(name)
        if upstream is None:
            base = self.factory.upstreamFor(name)
            if base is None:
                return None
            timeouts = self.route.timeouts if self.route is not None else None
            upstream = self._upstreams[name] = base.overridden(
                timeouts.connect if timeouts is not None else None,
                timeouts.response if timeouts is not None else None,
                self.route.retries if self.route is not None else None,
            )
        return upstream

    def forget(self, name: str) -> None:
        """
        Pool C{name} was removed.
        """
        self._upstreams.pop(name, None)

    def choosePool(self, headers: Sequence[tuple[bytes, bytes]], clientHost: bytes) -> str:
        """
        The pool of the route's split for this request: random by weight;
        when a pool of the split is sticky, a client stays with the pool
        its sticky cookie names, else with the one its address hashes to.
        """
        split = self.split
        assert split is not None
        names = split.names
        if len(names) == 1:
            return names[0]
        if self._sticky:
            for name in names:
                upstream = self.upstream(name)
                if upstream is not None and upstream.claims(headers):
                    return name
            return split.chooseSticky(clientHost)
        return split.choose(random.random())


# RequestFacts from a tuple of all its fields, without the Python-level
# __new__ of a NamedTuple: one per routed request.
_facts = partial(tuple.__new__, RequestFacts)


class Router:
    """
    A routed listener's routes, compiled, with their run-time state.

    @ivar routes: the routes, as configured.
    @ivar default: the default route, if any.
    """

    def __init__(
        self, factory: Any, routes: Sequence[Route], default: Route | None,
        previous: Router | None, clock: Callable[[], float],
        runInThread: Callable[[Callable[[], bool]], Any],
    ) -> None:
        self.factory = factory
        self.routes = tuple(routes)
        self.default = default
        self.table = RouteTable.compile(routes, default)
        old = {} if previous is None else {
            (rt.route.name if rt.route is not None else None): rt for rt in previous.runtimes()
        }
        self._byCompiled: dict[int, RouteRuntime] = {}
        compiled = [*self.table.routes]
        if self.table.default is not None:
            compiled.append(self.table.default)
        for c in compiled:
            self._byCompiled[id(c)] = self._runtime(c, old.get(c.route.name), clock, runInThread)
        self.noRoute = self._runtime(None, old.get(None), clock, runInThread)
        # The last request's authority and client address, with what they
        # came to: a client's requests on one connection mostly name the
        # same host, and come from the same address object.
        self._lastAuthority: bytes | None = None
        self._lastHost: bytes | None = None
        self._lastClientHost = b""
        self._lastSource = ""
        # Headers are lowercased for the table only when a route looks at them.
        self._needsHeaders = any(
            r.match.headers or (r.rateLimit is not None and r.rateLimit.header is not None)
            for r in routes
        )

    def _runtime(
        self, compiled: CompiledRoute | None, old: RouteRuntime | None,
        clock: Callable[[], float], runInThread: Callable[[Callable[[], bool]], Any],
    ) -> RouteRuntime:
        route = compiled.route if compiled is not None else None
        name = route.name if route is not None else "default"
        limit = route.rateLimit if route is not None else None
        limiter = None
        if limit is not None:
            kept = old.limiter if old is not None and old.route is not None else None
            limiter = (kept if kept is not None and old is not None and old.route is not None
                       and old.route.rateLimit == limit
                       else TokenBuckets.fromConfig(limit, clock))
        auth = None
        if route is not None and route.auth is not None:
            checked = old.auth if old is not None and old.route is not None else None
            auth = (checked if checked is not None and old is not None and old.route is not None
                    and old.route.auth == route.auth
                    else BasicAuthenticator(route.auth, runInThread))
        counters = old.counters if old is not None else RouteCounters(name)
        return RouteRuntime(compiled, self.factory, counters, limiter, auth)

    def runtimes(self) -> list[RouteRuntime]:
        """
        The routes at run time, in order, then the default route's (or the
        404's).
        """
        found = [self._byCompiled[id(c)] for c in self.table.routes]
        if self.table.default is not None:
            found.append(self._byCompiled[id(self.table.default)])
        else:
            found.append(self.noRoute)
        return found

    def forget(self, name: str) -> None:
        """
        Pool C{name} was removed.
        """
        for rt in self.runtimes():
            rt.forget(name)

    def exchange(
        self, client: Any, method: bytes, url: bytes, version: str,
        headers: list[tuple[bytes, bytes]], keepAlive: bool, upgrade: bool, started: float,
    ) -> Exchange:
        """
        The exchange of a request head: routed, planned, and given its
        route's direct answer, if any.

        @raise lbtwist.http._errors.BadRequest: the head must be refused.
        """
        factory = self.factory
        authority, path, query = targetParts(url, headers)
        if authority == self._lastAuthority:
            host = self._lastHost
        else:
            host = self._lastHost = hostOf(authority)
            self._lastAuthority = authority
        clientHost = client.clientHost
        if clientHost is self._lastClientHost:
            source = self._lastSource
        else:
            source = self._lastSource = clientHost.decode("ascii", "replace")
            self._lastClientHost = clientHost
        lowered = [(n.lower(), v) for n, v in headers] if self._needsHeaders else ()
        found = self.table.match(
            _facts((method, host, matchedPath(path), query, lowered, source, None)))
        rt = self.noRoute if found is None else self._byCompiled[id(found)]
        if rt.plain:
            # The common case: a route to one pool, and nothing else to do.
            upstream = rt._upstreams.get(rt.onlyPool) or rt.upstream(rt.onlyPool)  # type: ignore[arg-type]
            if upstream is not None:
                ex = Exchange(client, factory, upstream, planRequest(
                    method, url, version, headers, keepAlive, upgrade, client.clientHost,
                    client.localAuthority, upstream.rules,
                ), method, url, version, started)
                ex.route = rt
                if rt.responseHeaders is not None:
                    ex.headsAsBytes = False
                return ex
        route = rt.route
        answer = None
        gate = None
        upstream = factory.upstream
        target = url
        if route is not None:
            # The route's rate limit, then its credentials, come before its
            # action, whichever it is: its own answers (respond, redirect)
            # are kept from those they refuse as its pools are.
            limiter = rt.limiter
            if limiter is not None:
                assert route.rateLimit is not None
                wait = limiter.take(requestKey(route.rateLimit, source, lowered))
                if wait:
                    rt.counters.rateLimited += 1
                    answer = rt.withResponseHeaders(self.tooMany(wait))
            if answer is None and rt.auth is not None:
                passed = rt.auth.check(_header(headers, b"authorization"))
                if passed is False:
                    answer = rt.withResponseHeaders(self.unauthorized(rt))
                elif passed is None:
                    answer = _CHECKS_BUSY
                elif passed is not True:
                    gate = passed
        if answer is None:
            # The action: its fixed answer (respond, or 404 for no route), a
            # redirect, or a pool.
            answer = rt.answer
            if answer is None and route is not None:
                if route.redirect is not None:
                    # An HTTP/1.0 request may name no host: the address it
                    # reached.
                    answer = rt.withResponseHeaders(redirectAnswer(
                        route.redirect, redirectLocation(
                            route.redirect, host or hostOf(client.localAuthority) or b"localhost",
                            path, query)))
                else:
                    name = rt.onlyPool or rt.choosePool(headers, client.clientHost)
                    chosen = rt._upstreams.get(name) or rt.upstream(name)
                    if chosen is None:
                        answer = _NO_POOL
                    else:
                        upstream = chosen
                        if route.rewrite is not None:
                            target = rewritten(url, route.rewrite)
                        if rt.requestHeaders is not None:
                            headers = applyHeaderActions(headers, rt.requestHeaders)
        plan = planRequest(
            method, target, version, headers, keepAlive, upgrade, client.clientHost,
            client.localAuthority, upstream.rules,
        )
        ex = Exchange(client, factory, upstream, plan, method, url, version, started)
        ex.route = rt
        if rt.responseHeaders is not None:
            ex.headsAsBytes = False
        ex.local = answer
        if gate is not None:
            ex.gateOn(gate, rt.withResponseHeaders(self.unauthorized(rt)))
        return ex

    @staticmethod
    def tooMany(wait: float) -> Answer:
        """
        The 429 answer, with its C{Retry-After}.
        """
        return tooManyRequests(retryAfter(wait))

    @staticmethod
    def unauthorized(rt: RouteRuntime) -> Answer:
        """
        The 401 answer of C{rt}'s realm.
        """
        assert rt.route is not None and rt.route.auth is not None
        return unauthorizedAnswer(rt.route.auth.realm)


def rewritten(url: bytes, rewrite: Any) -> bytes:
    """
    A request target after a route's rewrite; an absolute-form target has
    its path rewritten and keeps its scheme and authority.
    """
    if url[:1] == b"/":
        return rewriteTarget(url, rewrite)
    scheme, sep, rest = url.partition(b"://")
    slash = rest.find(b"/")
    if not sep or slash == -1:
        return url
    return scheme + sep + rest[:slash] + rewriteTarget(rest[slash:], rewrite)

