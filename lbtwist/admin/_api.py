"""
The admin API's routes: one resource that dispatches by method and path,
checks the token of every change, and answers JSON.
"""

from __future__ import annotations

import hmac
import json
import os
import re
from collections.abc import Callable
from importlib import resources
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from ..config import ConfigError, ListenerConfig, isHostName, parseSlowStart
from ..control import (
    BalancerControl,
    Duplicate,
    InUse,
    Unknown,
    checkBackup,
    checkState,
    checkWeight,
)
from ..metrics import (
    NO_COUNTERS,
    ClusterCollector,
    CounterHistory,
    Sample,
    balancerRegistry,
    exposition,
    recentView,
)
from ..pool import Backend, BackendPool
from ..reload import UPGRADES_NEED_WORKERS, LiveConfig, UnknownListener, UnknownPool
from ..routeconfig import unmatchedPool
from ._input import APIError
from ._views import (
    backendURL,
    backendView,
    countersView,
    poolCounters,
    poolView,
    routeCountersView,
    routeData,
)

DEFAULT_ADMIN = "tcp:9000:interface=127.0.0.1"
TOKEN_VARIABLE = "LBTWIST_ADMIN_TOKEN"
MAX_BODY = 64 * 1024
STATIC_TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
}
_STATIC_NAME = re.compile(r"^[a-z0-9_-]+\.(html|js|css)$")
# What a change of a backend may give, each with its check.
CHANGES: dict[str, Callable[[Any, str], object]] = {
    "weight": checkWeight, "state": checkState, "backup": checkBackup,
    "slow-start": parseSlowStart,
}


def _uniqueFields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """
    A JSON object's fields, refusing one given twice (which would be
    ambiguous: L{json} keeps the last silently), as the configuration file
    refuses a repeated key.

    @raise ValueError: a field is repeated.
    """
    fields = dict(pairs)
    if len(fields) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"duplicate field {name!r}")
            seen.add(name)
    return fields


# -- configuration ------------------------------------------------------------


Handler = Callable[[Request, list[str]], Any]


class ProcessGroup(Protocol):
    """
    The worker processes a master's admin API speaks for (see
    L{lbtwist.workers.WorkerGroup}).

    @ivar execFailed: the last re-exec answered but not made: the
        generation it promised and why, else L{None}.
    """

    execFailed: tuple[int, str] | None

    def settle(self) -> Deferred[None]:
        """
        Fires once every worker has applied the pools as they are now.
        """

    def refresh(self) -> Deferred[None]:
        """
        Fires once the master's counters show the workers' totals.
        """

    def collector(self) -> Any:
        """
        A Prometheus collector of the per-worker series.
        """

    def view(self) -> list[dict[str, Any]]:
        """
        Each worker: its number, generation, pid, state and counters.
        """

    def upgrade(self) -> Deferred[Any]:
        """
        Start a new generation of workers; fires with its number and, when
        the master re-executes itself for it, why (see
        L{lbtwist.workers.Upgraded}).
        """

    def reopenLogs(self) -> None:
        """
        Have every worker open its access-log files again.
        """


class AdminResource(Resource):
    """
    Every route of the admin listener, dispatched by method and path.
    """

    isLeaf = True
    log = Logger()

    def __init__(self, balancer: Any, live: LiveConfig, token: str | None,
                 clock: IReactorTime, history: CounterHistory | None = None,
                 group: ProcessGroup | None = None, cluster: Any = None,
                 control: BalancerControl | None = None) -> None:
        """
        @param group: the worker processes this master speaks for: reads
            wait for their counters to be collected, and changes are
            answered once every one of them has applied them.
        @param cluster: the registry sync (L{lbtwist.cluster.RegistrySync})
            when the balancer shares its registry through etcd: changes are
            written there, and health reports the store's state.
        @param control: what every change goes through, checks included
            (default: one over C{live} and C{cluster}); the API only reads
            requests and answers them.
        """
        super().__init__()
        self.group = group
        self.cluster = cluster
        self.clock = clock
        self.history = history or CounterHistory()
        self.balancer = balancer
        self.live = live
        self.control = control or BalancerControl(live, cluster)
        self._startToken = token
        self.registry = balancerRegistry(balancer)
        if group is not None:
            self.registry.register(group.collector())
        if cluster is not None:
            self.registry.register(ClusterCollector(cluster))
        self.routes: list[tuple[bytes, tuple[str, ...], Handler, bool]] = [
            (b"GET", (), self.dashboard, False),
            (b"GET", ("static", "*"), self.static, False),
            (b"GET", ("metrics",), self.metrics, False),
            (b"GET", ("api", "health"), self.health, False),
            (b"GET", ("api", "pools"), self.listPools, False),
            (b"GET", ("api", "pools", "*"), self.showPool, False),
            (b"GET", ("api", "pools", "*", "backends"), self.listBackends, False),
            (b"POST", ("api", "pools", "*", "backends"), self.addBackend, True),
            (b"GET", ("api", "pools", "*", "backends", "*"), self.showBackend, False),
            (b"PATCH", ("api", "pools", "*", "backends", "*"), self.changeBackend, True),
            (b"DELETE", ("api", "pools", "*", "backends", "*"), self.removeBackend, True),
            (b"POST", ("api", "pools"), self.addPool, True),
            (b"DELETE", ("api", "pools", "*"), self.removePool, True),
            (b"GET", ("api", "listeners"), self.listListeners, False),
            (b"GET", ("api", "listeners", "*", "routes"), self.showRoutes, False),
            (b"PUT", ("api", "listeners", "*", "routes"), self.setRoutes, True),
            (b"GET", ("api", "instances"), self.listInstances, False),
            (b"POST", ("api", "reload"), self.reload, True),
            (b"POST", ("api", "upgrade"), self.upgrade, True),
            (b"GET", ("api", "workers"), self.listWorkers, False),
            (b"GET", ("health",), self.goHealth, False),
            (b"GET", ("list",), self.goList, False),
            (b"POST", ("addServer",), self.goAdd, True),
            (b"DELETE", ("removeServer",), self.goRemove, True),
        ]

    # -- dispatch --------------------------------------------------------

    def render(self, request: Request) -> bytes | int:
        """
        Find the route, check the token of a change, run it, and answer.
        """
        segments = [unquote(s) for s in request.path.decode("latin-1").split("/")[1:]]
        if segments and segments[-1] == "":
            segments.pop()
        method = request.method
        allowed: list[bytes] = []
        for routeMethod, pattern, handler, mutating in self.routes:
            if len(pattern) != len(segments) or not all(
                p == "*" or p == s for p, s in zip(pattern, segments)
            ):
                continue
            if routeMethod != method:
                allowed.append(routeMethod)
                continue
            args = [s for p, s in zip(pattern, segments) if p == "*"]
            if self.group is None or handler in (self.dashboard, self.static):
                result = self._run(request, handler, args, mutating)
                if isinstance(result, Deferred):
                    result.addCallback(lambda body: self._finish(request, body))
                    return NOT_DONE_YET  # type: ignore[no-any-return]
                return result
            return self._withGroup(self.group, request, handler, args, mutating)
        if allowed:
            request.setHeader(b"allow", b", ".join(allowed))
            return self._json(request, 405, {"error": f"method {method.decode()} not "
                                             "allowed here"})
        return self._json(request, 404, {"error": "no such resource"})

    def _run(self, request: Request, handler: Handler, args: list[str],
             mutating: bool) -> bytes | Deferred[bytes]:
        """
        Run a route's handler (a change once its token is checked), and log
        a change once answered.  A handler answers with bytes, or with a
        L{Deferred} of them when the answer takes time (an upgrade).
        """
        try:
            if mutating:
                self._authorize(request)
            result = handler(request, args)
        except Exception as e:
            refusal = self._refusal(e)
            if refusal is None:
                raise
            result = self._json(request, refusal.status, {"error": refusal.message})
        if isinstance(result, Deferred):
            # A change through the cluster store answers once this balancer
            # has applied it; its refusal is an answer too.
            result.addErrback(self._failed, request)
        if mutating:
            if isinstance(result, Deferred):
                result.addCallback(self._logChange, request)
            else:
                self._logChange(result, request)
        assert isinstance(result, (bytes, Deferred))
        return result

    def _logChange(self, body: bytes, request: Request) -> bytes:
        self.log.info(
            "admin {method} {path} from {client}: {code}",
            method=request.method.decode(), path=request.path.decode("latin-1"),
            client=getattr(request.getClientAddress(), "host", "?"),
            code=request.code,
        )
        return body

    def _withGroup(self, group: ProcessGroup, request: Request, handler: Handler,
                   args: list[str], mutating: bool) -> int:
        """
        Run a route for the worker processes: a read once their counters
        are collected, a change answered once every one has applied it.
        """
        if mutating:
            result = self._run(request, handler, args, mutating)
            answered = result if isinstance(result, Deferred) else succeed(result)

            def settle(body: bytes) -> Deferred[bytes]:
                settled = group.settle() if request.code < 400 else succeed(None)
                return settled.addBoth(lambda _: body)

            answered.addCallback(settle).addCallback(lambda body: self._finish(request, body))
        else:
            def answer(_: object) -> None:
                result = self._run(request, handler, args, mutating)
                assert isinstance(result, bytes)
                self._finish(request, result)

            group.refresh().addBoth(answer)
        return NOT_DONE_YET  # type: ignore[no-any-return]

    def _failed(self, failure: Any, request: Request) -> bytes:
        refusal = self._refusal(failure.value)
        if refusal is not None:
            return self._json(request, refusal.status, {"error": refusal.message})
        if failure.check(OSError):
            return self._saveFailed(request, failure.value)
        self.log.failure("admin request failed", failure)
        return self._json(request, 500, {"error": f"internal error: {failure.getErrorMessage()}"})

    def _refusal(self, error: BaseException) -> APIError | None:
        """
        The answer to a change the control refused (or the cluster store
        did), or L{None} for any other error.
        """
        if isinstance(error, APIError):
            return error
        if isinstance(error, Unknown):
            # The pool, backend or listener the path names is missing.
            return APIError(404, error.problem)
        if isinstance(error, (Duplicate, InUse)):
            return APIError(409, error.problem)
        if isinstance(error, ConfigError):
            return APIError(400, str(error))
        if self.cluster is None:
            return None
        from ..cluster import Conflict, StoreUnavailable

        if isinstance(error, Conflict):
            return APIError(409, str(error))
        if isinstance(error, StoreUnavailable):
            return APIError(503, str(error))
        if isinstance(error, TimeoutError):
            return APIError(503, "the change was written to the cluster store but this "
                            "balancer has not applied it yet")
        return None

    def _finish(self, request: Request, body: bytes) -> None:
        """
        Answer a request whose answer took time (the worker processes, the
        cluster store, an upgrade).
        """
        if not request.finished and not getattr(request, "_disconnected", False):
            request.write(body)
            request.finish()

    @property
    def token(self) -> str | None:
        """
        The admin token now: a reload of the file may rotate it.
        """
        return self.live.fileConfig.adminToken or self._startToken

    def _authorize(self, request: Request) -> None:
        raw = request.getHeader(b"authorization") or b""
        given = raw.decode("latin-1") if isinstance(raw, bytes) else raw
        scheme, _, credential = given.partition(" ")
        if self.token is None or scheme.lower() != "bearer" or not hmac.compare_digest(
            credential.strip().encode(), self.token.encode()
        ):
            request.setHeader(b"www-authenticate", b'Bearer realm="lbtwist"')
            raise APIError(
                401,
                "a valid bearer token is needed to change anything"
                if self.token is not None else
                f"changes are disabled: no admin token is set (admin-token or "
                f"{TOKEN_VARIABLE})",
            )

    def _json(self, request: Request, status: int, body: object) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(body).encode() + b"\n"

    def _body(self, request: Request, message: str | None = None) -> dict[str, Any]:
        """
        The request's JSON object.

        @param message: the error to give for any problem, instead of a
            precise one (the Go design's C{Invalid input}).
        """
        data = self._jsonBody(request, message)
        if not isinstance(data, dict):
            raise APIError(400, message or "the body must be a JSON object")
        return data

    def _jsonBody(self, request: Request, message: str | None = None) -> Any:
        """
        The request's JSON value, whatever it is.
        """
        assert request.content is not None
        raw = request.content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY or getattr(request, "oversized", False):
            raise APIError(413, message or f"the body is larger than {MAX_BODY} bytes")
        try:
            data = json.loads(raw, object_pairs_hook=_uniqueFields)
        except RecursionError:
            raise APIError(400, message or "the body is not valid JSON: nested too deeply") \
                from None
        except ValueError as e:
            raise APIError(400, message or f"the body is not valid JSON: {e}") from None
        return data

    def _pool(self, name: str) -> BackendPool:
        """
        The pool the path names.

        @raise APIError: C{404}, there is none.
        """
        try:
            return self.live.pool(name)
        except UnknownPool:
            raise APIError(
                404, f"unknown pool {name!r} (pools: {', '.join(self.live.pools)})"
            ) from None

    def _backend(self, pool: BackendPool, name: str) -> Backend:
        backend = pool.get(name)
        if backend is None:
            raise APIError(404, f"pool {pool.name!r} has no backend {name!r}")
        return backend

    def _saveFailed(self, request: Request, e: OSError) -> bytes:
        self.log.error("cannot save the state file: {error}", error=str(e))
        return self._json(request, 500, {"error": f"cannot save the state, nothing "
                                         f"changed: {e}"})

    # -- dashboard and metrics -------------------------------------------

    def dashboard(self, request: Request, args: list[str]) -> bytes:
        """
        The dashboard page.
        """
        return self.static(request, ["index.html"])

    def static(self, request: Request, args: list[str]) -> bytes:
        """
        One file of the dashboard, shipped in the package.
        """
        name = args[0]
        if not _STATIC_NAME.match(name):
            raise APIError(404, "no such file")
        try:
            data = (resources.files("lbtwist") / "static" / name).read_bytes()
        except OSError:
            raise APIError(404, "no such file") from None
        request.setHeader(b"content-type", STATIC_TYPES[os.path.splitext(name)[1]])
        request.setHeader(b"cache-control", b"no-cache")
        return data

    def metrics(self, request: Request, args: list[str]) -> bytes:
        """
        The Prometheus metrics.
        """
        body, contentType = exposition(self.registry)
        request.setHeader(b"content-type", contentType.encode())
        return body

    # -- the REST API ----------------------------------------------------

    def health(self, request: Request, args: list[str]) -> bytes:
        """
        C{200 ok} when every pool has an eligible backend, else C{503}.
        """
        pools = {
            p.name: {"eligible": sum(1 for b in p if b.eligible), "backends": len(p)}
            for p in self.live.pools.values()
        }
        ok = all(p["eligible"] for p in pools.values())
        body: dict[str, Any] = {"status": "ok" if ok else "degraded", "pools": pools}
        if self.cluster is not None:
            # The store's state is reported, never counted against health:
            # the balancer serves from its copy of the registry.
            body["cluster"] = self.cluster.status()
        return self._json(request, 200 if ok else 503, body)

    def _responses(self, pool: str) -> dict[str, int] | None:
        """
        The responses the HTTP listeners of C{pool} sent, by status class,
        or L{None} if no HTTP listener serves it.
        """
        statuses = [
            getattr(self.balancer.factories.get(l.name), "statuses", None)
            for l in self.live.fileConfig.listeners if l.pool == pool
        ]
        found = [s for s in statuses if s is not None]
        if not found:
            return None
        responses: dict[str, int] = {}
        for counts in found:
            for cls, count in counts.items():
                responses[cls] = responses.get(cls, 0) + count
        return responses

    def sample(self) -> Sample:
        """
        Every pool's counters now; kept in the history when the admin
        service takes one on its timer.
        """
        pools = {name: poolCounters(pool, self._responses(name))
                 for name, pool in self.live.pools.items()}
        total = NO_COUNTERS
        for counters in pools.values():
            total = total + counters
        return Sample(self.clock.seconds(), pools, total)

    def _recent(self, now: Sample, name: str | None) -> dict[str, Any] | None:
        """
        The recent rates of pool C{name} (L{None}: of every pool), measured
        from the oldest sample of the window.
        """
        base = self.history.baseline(now.when)
        if base is None:
            return None
        if name is None:
            return recentView(now.total, base.total, now.when - base.when)
        if name not in base.pools:
            return None
        return recentView(now.pools[name], base.pools[name], now.when - base.when)

    def listPools(self, request: Request, args: list[str]) -> bytes:
        """
        Every pool, with its backends' state and counters, its errors,
        response-time percentiles and recent rates, and the C{total} of
        every pool.
        """
        now = self.sample()
        views = [poolView(p, now.pools[p.name], self._recent(now, p.name))
                 for p in self.live.pools.values()]
        return self._json(request, 200, {
            "pools": views, "total": countersView(now.total, self._recent(now, None))})

    def showPool(self, request: Request, args: list[str]) -> bytes:
        """
        One pool.
        """
        pool = self._pool(args[0])
        now = self.sample()
        return self._json(request, 200, poolView(pool, now.pools[pool.name],
                                                 self._recent(now, pool.name)))

    def listBackends(self, request: Request, args: list[str]) -> bytes:
        """
        The backends of one pool.
        """
        return self._json(request, 200, poolView(self._pool(args[0]))["backends"])

    def showBackend(self, request: Request, args: list[str]) -> bytes:
        """
        One backend.
        """
        pool = self._pool(args[0])
        return self._json(request, 200, backendView(pool, self._backend(pool, args[1])))

    def addBackend(self, request: Request, args: list[str]) -> Deferred[bytes]:
        """
        Add a backend: C{{"name", "endpoint" or "host"+"port", "weight",
        "state"}}; C{201} with the new backend.
        """
        pool = self._pool(args[0])
        data = self._body(request)
        state = data.pop("state", "ready")
        return self.control.addBackend(pool.name, data, state).addCallback(
            lambda backend: self._json(request, 201, backendView(pool, backend)))

    def changeBackend(self, request: Request, args: list[str]) -> Deferred[bytes]:
        """
        Change a backend's C{weight}, C{state} (ready, drain, maint),
        C{backup} role and C{slow-start} duration, in one save.
        """
        pool = self._pool(args[0])
        backend = self._backend(pool, args[1])
        data = self._body(request)
        unknown = sorted(set(data) - set(CHANGES))
        if unknown:
            raise APIError(400, f"unknown field {unknown[0]!r} "
                                "(expected weight, state, backup, slow-start)")
        if None in data.values():
            # JSON's null is a value to refuse, not a change left out: the
            # first bad field is named, in the control's order.
            for key, check in CHANGES.items():
                if key in data:
                    check(data[key], key)
        return self.control.change(
            pool.name, backend.name, weight=data.get("weight"), state=data.get("state"),
            backup=data.get("backup"), slowStart=data.get("slow-start"),
        ).addCallback(lambda changed: self._json(request, 200, backendView(pool, changed)))

    def removeBackend(self, request: Request, args: list[str]) -> Deferred[bytes]:
        """
        Remove a backend; its connections get the grace period to finish.
        """
        pool = self._pool(args[0])
        backend = self._backend(pool, args[1])
        return self.control.removeBackend(pool.name, backend.name).addCallback(
            lambda removed: self._json(request, 200, {
                "status": "removed", "name": removed.name, "draining": removed.active,
                "grace": self.live.grace}))

    def listListeners(self, request: Request, args: list[str]) -> bytes:
        """
        The listeners, with their accepted and active connections, (HTTP
        mode) their responses by status class and by protocol and the
        requests refused as malformed, (listeners speaking HTTP/2) their
        HTTP/2 connections, streams, refused streams and abusive clients, and
        their routes with what each did (the default route's last) and what
        each is (C{route}, in the configuration's shape).  C{pool} is the
        pool of what no route matches: L{None} for a listener of routes only.
        """
        listeners = []
        for l in self.live.config.listeners:
            factory = self.balancer.factories.get(l.name)
            counters = getattr(factory, "routeCounters", None)
            shapes = {r.name: routeData(r) for r in l.routes}
            if l.defaultRoute is not None:
                shapes["default"] = routeData(l.defaultRoute, default=True)
            listeners.append({
                "name": l.name, "endpoint": l.endpoint, "mode": l.mode,
                "pool": unmatchedPool(l.pool, l.routes, l.defaultRoute),
                "accepted": getattr(factory, "accepted", 0),
                "active": getattr(factory, "activeClients", 0),
                "responses": dict(getattr(factory, "statuses", None) or {}),
                "refused": getattr(factory, "refused", 0),
                "protocols": (factory.responsesByProtocol()
                              if hasattr(factory, "responsesByProtocol") else {}),
                "routes": [{**routeCountersView(c), "route": shapes.get(c.name)}
                           for c in counters()] if counters else [],
                "defaultRoute": (None if l.defaultRoute is None
                                 else routeData(l.defaultRoute, default=True)),
            })
            if getattr(factory, "http2", None) is not None:
                listeners[-1]["http2"] = {
                    "connections": factory.h2Connections, "streams": factory.h2Streams,
                    "refused": factory.h2Refused, "abusive": factory.h2Calmed,
                }
        return self._json(request, 200, listeners)

    def _listener(self, name: str) -> ListenerConfig:
        try:
            return self.live.listener(name)
        except UnknownListener:
            raise APIError(404, f"no listener {name!r} (listeners: "
                           f"{', '.join(l.name for l in self.live.config.listeners)})") from None

    def showRoutes(self, request: Request, args: list[str]) -> bytes:
        """
        A listener's routes, in the configuration's shape: what C{PUT} takes.
        """
        listener = self._listener(args[0])
        return self._json(request, 200, [routeData(r) for r in listener.routes])

    def setRoutes(self, request: Request, args: list[str]) -> Deferred[bytes]:
        """
        Replace a listener's whole route list (a JSON list in the
        configuration's shape), checked first: a bad list changes nothing
        and gets a 400 naming the key path of the problem.  In a cluster,
        written to the store (answered once applied here).
        """
        self._listener(args[0])
        data = self._jsonBody(request)
        return self.control.setRoutes(args[0], data).addCallback(
            lambda listener: self._json(request, 200, [routeData(r) for r in listener.routes]))

    def addPool(self, request: Request, args: list[str]) -> Deferred[bytes]:
        """
        Create a pool: C{{"name": ..., and the configuration's pool keys
        (policy, health, backends...)}}; C{201} with the new pool, C{409} if
        one of that name exists.  In a cluster, written to the store
        (answered once applied here).
        """
        data = self._body(request)
        name = data.pop("name", None)
        return self.control.addPool(name, data).addCallback(
            lambda pool: self._json(request, 201, poolView(pool)))

    def removePool(self, request: Request, args: list[str]) -> Deferred[bytes]:
        """
        Remove a pool no listener or route sends to (C{409} while one
        does); its connections get the grace period to finish.  In a
        cluster, written to the store (answered once applied here).
        """
        self._pool(args[0])
        return self.control.removePool(args[0]).addCallback(
            lambda pool: self._json(request, 200, {
                "status": "removed", "name": pool.name,
                "draining": sum(b.active for b in pool), "grace": self.live.grace}))

    def listWorkers(self, request: Request, args: list[str]) -> bytes:
        """
        The worker processes (none when this process serves alone), each
        with its own counters: the other routes give their totals.
        """
        group = self.group
        answer: dict[str, Any] = {"workers": group.view() if group is not None else []}
        if group is not None and group.execFailed is not None:
            generation, why = group.execFailed
            answer["upgrade-failed"] = {"generation": generation, "error": why}
        return self._json(request, 200, answer)

    def upgrade(self, request: Request, args: list[str]) -> Deferred[bytes]:
        """
        Start a new generation of workers from the code and configuration
        on disk (see L{lbtwist.workers.WorkerGroup.upgrade}); answered once
        it serves, or C{500} with the reason it could not (the running
        workers serve on), or C{409} while another upgrade is under way.
        When the master re-executes itself to apply
        it, the answer is C{202} just before the exec: the new generation
        is the next image's to start (C{GET /api/workers} shows it
        serving).
        """
        group = self.group
        if group is None:
            raise APIError(409, UPGRADES_NEED_WORKERS)

        def upgraded(result: Any) -> bytes:
            if result.reexec:
                moved = {"admin": result.admin} if result.admin else {}
                return self._json(request, 202, {
                    "generation": result.generation, "master": "re-executing",
                    "reasons": list(result.reexec), **moved})
            return self._json(request, 200, {"status": "upgraded",
                                             "generation": result.generation,
                                             "workers": group.view()})

        def failed(f: Any) -> bytes:
            if getattr(f.value, "underWay", False):
                # Not a failure: the one under way goes on.
                return self._json(request, 409, {"error": f.getErrorMessage()})
            return self._json(request, 500, {
                "error": f"upgrade failed, the running workers serve on: "
                         f"{f.getErrorMessage()}"})

        return group.upgrade().addCallbacks(upgraded, failed)

    def listInstances(self, request: Request, args: list[str]) -> bytes | Deferred[bytes]:
        """
        The balancers registered in the cluster store (each with its name,
        admin address, version and last revision applied).
        """
        if self.cluster is None:
            raise APIError(404, "this balancer is not in a cluster (no cluster: in its "
                           "configuration)")
        from ..cluster import StoreUnavailable

        def failed(f: Any) -> bytes:
            f.trap(StoreUnavailable)
            raise APIError(503, str(f.value))

        return self.cluster.instances().addCallbacks(
            lambda found: self._json(request, 200, {"instances": found}), failed)

    def reload(self, request: Request, args: list[str]) -> Deferred[bytes]:
        """
        Reload the configuration file, as C{SIGHUP} does (access-log files
        are reopened too).  The answer names what needs a restart
        (C{restartNeeded}) and, with worker processes, those of them an
        upgrade applies instead (C{upgradeApplies}).
        """
        reopen = getattr(self.balancer, "reopenAccessLogs", None)
        if reopen is not None:
            reopen()
        if self.group is not None:
            # The workers write the access logs.
            self.group.reopenLogs()
        try:
            reloaded = self.control.reload()
        except ConfigError as e:
            raise APIError(400, f"reload rejected: {e}") from None

        def answer(restartNeeded: list[str]) -> bytes:
            body: dict[str, object] = {"status": "reloaded"}
            if restartNeeded:
                body["restartNeeded"] = restartNeeded
            if self.live.upgradeApplies:
                # With workers: no restart, an upgrade is enough for these.
                body["upgradeApplies"] = list(self.live.upgradeApplies)
            return self._json(request, 200, body)

        return reloaded.addCallback(answer)

    # -- the Go design's API ---------------------------------------------

    def _defaultPool(self) -> BackendPool:
        return next(iter(self.live.pools.values()))

    def _goURL(self, request: Request) -> tuple[str, int]:
        data = self._body(request, "Invalid input")
        keys = [k for k in data if k.lower() == "url"]
        if len(keys) != 1 or len(data) != 1 or not isinstance(data[keys[0]], str):
            raise APIError(400, "Invalid input")
        try:
            url = urlsplit(data[keys[0]])
            port = url.port or 80
        except ValueError:
            raise APIError(400, "Invalid URL") from None
        # Plain http://host[:port] only: a path or query would be dropped,
        # and an https backend needs a TLS endpoint (ssl:host=...:port=...),
        # which the REST API adds.
        if (url.scheme != "http" or not url.hostname or url.path not in ("", "/")
                or url.query or url.fragment or url.username
                or not isHostName(url.hostname)):
            raise APIError(400, "Invalid URL")
        return url.hostname, port

    def goHealth(self, request: Request, args: list[str]) -> bytes:
        """
        C{OK}, as the Go design answers.
        """
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"OK"

    def goList(self, request: Request, args: list[str]) -> bytes:
        """
        The first pool's backends as the Go design lists them.
        """
        pool = self._defaultPool()
        return self._json(request, 200, [
            # Healthy means "gets new traffic": up or not yet checked, ready,
            # still in the pool (a draining backend finishes its clients but
            # gets no new ones, so it is not).
            {"URL": backendURL(b.endpoint), "ActiveConns": b.active,
             "Healthy": b.eligible}
            for b in pool
        ])

    def goAdd(self, request: Request, args: list[str]) -> Deferred[bytes]:
        """
        Add C{{"URL": "http://host:port"}} to the first pool.
        """
        host, port = self._goURL(request)
        pool = self._defaultPool()
        escaped = host.replace(":", "\\:")
        endpoint = f"tcp:host={escaped}:port={port}"
        if any(backendURL(b.endpoint) == backendURL(endpoint) for b in pool):
            raise APIError(409, "Server already exists")
        return self.control.addBackend(pool.name, {"endpoint": endpoint}).addCallback(
            lambda _: self._json(request, 200, {"status": "success"}))

    def goRemove(self, request: Request, args: list[str]) -> bytes | Deferred[bytes]:
        """
        Remove C{{"URL": "http://host:port"}} from the first pool.
        """
        host, port = self._goURL(request)
        pool = self._defaultPool()
        escaped = host.replace(":", "\\:")
        wanted = backendURL(f"tcp:host={escaped}:port={port}")
        for b in pool:
            if backendURL(b.endpoint) == wanted:
                return self.control.removeBackend(pool.name, b.name).addCallback(
                    lambda _: self._json(request, 200, {"status": "success"}))
        raise APIError(404, "Server not found")
