"""
What an HTTP listener's requests need of one pool (L{Upstream}): the
connect engine, the idle backend connections, the pool's request rules,
sticky sessions and the timeouts of the backend side.

A listener without routes has one upstream, for its pool; a routed listener
has one per pool its routes send requests to, made on first use.  The
client side of a listener (its head limits, its client timeouts, its
counters) is the listener factory's (L{lbtwist.http._proxy}); everything
an exchange does with a backend goes through its upstream.
"""

from __future__ import annotations

import copy
import hashlib
import random
from typing import Any

from ..accesslog import capturesHeaders
from ..connect import BackendConnector, FixedRetries
from ..dial import Dialler
from ..policies import SourceHash
from ..pool import Backend, BackendPool
from ..proxyprotocol import PROXY_HEADERS
from ._h2backend import H2Backends
from ._plan import RequestRules, cookieValue, measuredAbove
from ._pool import IdleConnections


class Upstream:
    """
    One pool as an HTTP listener's requests reach it.

    @ivar pool: the pool.
    @ivar connector: finds and connects its backends.
    @ivar idle: its idle backend connections.
    @ivar h2: its HTTP/2 backend connections, for a pool of C{protocol: h2}.
    @ivar rules: what the request plan follows for this listener and pool.
    @ivar proxyHeader: makes the PROXY-protocol header its backend
        connections begin with (from the client's and the listener's
        addresses), if the pool sends one.
    @ivar responseTimeout: how long a response head may take.
    @ivar maxRequests: requests a backend connection serves before it closes.
    @ivar maxResponseHeaderSize: the bound on a response head.
    @ivar measuredAbove: a response head read in one read of fewer bytes is
        within that bound, and only a larger one is measured.
    @ivar sticky: the pool has a sticky setting (L{stickyBackend} has
        anything to say).
    """

    def __init__(
        self, pool: BackendPool, reactor: Any, dialler: Dialler, forwardedProto: bytes,
    ) -> None:
        self.pool = pool
        self._reactor = reactor
        self._dialler = dialler
        self.connector = BackendConnector(pool, reactor, dialler)
        config = pool.config
        http = config.http
        # The HTTP/2 connections of an h2 pool: its exchanges are streams
        # of them, which it hands out as the idle pool hands out connections.
        self.h2 = (
            H2Backends(reactor, http.keepAlive.idleTimeout, config.timeouts.connect)
            if config.protocol == "h2" else None
        )
        self.idle: Any = self.h2 or IdleConnections(reactor, http.keepAlive)
        self.maxRequests = http.keepAlive.maxRequests
        self.maxResponseHeaderSize = http.maxResponseHeaderSize
        self.measuredAbove = measuredAbove(self.maxResponseHeaderSize)
        self.responseTimeout = config.timeouts.response
        self.proxyHeader = PROXY_HEADERS.get(config.proxyProtocol or "")
        sticky = config.sticky
        self.sticky = sticky is not None
        self._stickyName = (sticky.name or "").encode() if sticky else b""
        self.rules = RequestRules(
            forwardedProto=forwardedProto,
            hostHeader=http.hostHeader.encode("ascii") if http.hostHeader else None,
            stickyKind=sticky.kind if sticky is not None else None,
            stickyName=self._stickyName,
            captureHeaders=capturesHeaders(config.accessLogSink),
        )
        # The sticky cookie's attributes, built once: by default Secure to
        # clients that came over TLS, so that it never leaves them in the
        # clear.
        self._cookieAttributes = (
            sticky.cookieAttributes(forwardedProto == b"https").encode("ascii")
            if sticky is not None and sticky.kind == "cookie" else b"")
        self._hash = SourceHash(random.Random())
        self._cookieIds: dict[str, bytes] = {}
        self._cookieLines: dict[str, bytes] = {}

    def overridden(
        self, connect: float | None, response: float | None, retries: int | None,
    ) -> Upstream:
        """
        This upstream with a route's timeouts and retries in place of the
        pool's (itself if the route overrides nothing): the idle
        connections, rules and sticky sessions are the same.
        """
        if connect is None and response is None and retries is None:
            return self
        variant = copy.copy(self)
        variant.connector = BackendConnector(
            self.pool, self._reactor, self._dialler,
            None if retries is None else FixedRetries(retries), connect,
        )
        if response is not None:
            variant.responseTimeout = response
        return variant

    def close(self) -> None:
        """
        Close the idle backend connections (the listener stopped).
        """
        self.idle.close()

    # -- sticky sessions ---------------------------------------------------

    def cookieId(self, backend: Backend) -> bytes:
        """
        The opaque cookie value that names C{backend}.
        """
        cookie = self._cookieIds.get(backend.name)
        if cookie is None:
            cookie = hashlib.blake2b(
                f"{self.pool.name}\0{backend.name}".encode(), digest_size=8
            ).hexdigest().encode()
            self._cookieIds[backend.name] = cookie
        return cookie

    def stickyBackend(self, ex: Any) -> Backend | None:
        """
        The backend the sticky setting sends C{ex} to, if any; a request
        with no valid sticky cookie is marked to get one.
        """
        rules = self.rules
        kind = rules.stickyKind
        if kind is None:
            return None
        key = ex.plan.stickyKey
        if kind == "cookie":
            backend = self._cookieBackend(key) if key is not None else None
            ex.setCookie = backend is None
            return backend
        return self._hashed(key) if key is not None else None

    def claims(self, headers: Any) -> bool:
        """
        Whether a request's headers carry this pool's sticky cookie naming
        one of its eligible backends (a route's split keeps such a client
        on this pool).
        """
        rules = self.rules
        if rules.stickyKind != "cookie":
            return False
        for name, value in headers:
            if len(name) == 6 and name.lower() == b"cookie":
                found = cookieValue(value, rules.stickyName)
                if found is not None and self._cookieBackend(found) is not None:
                    return True
        return False

    def cookieFor(self, ex: Any) -> bytes:
        """
        The C{Set-Cookie} value that sends the client back to its backend.
        """
        backend = ex.backend
        assert backend is not None
        line = self._cookieLines.get(backend.name)
        if line is None:
            # Once per backend: a request only looks it up.
            line = self._stickyName + b"=" + self.cookieId(backend) + self._cookieAttributes
            self._cookieLines[backend.name] = line
        return line

    def _cookieBackend(self, value: bytes) -> Backend | None:
        for backend in self.pool:
            if backend.eligible and self.cookieId(backend) == value:
                return backend
        return None

    def _hashed(self, key: bytes) -> Backend | None:
        # Hashing balances: a weight-0 backend takes none of it (a sticky
        # cookie, which persists, still reaches one).
        candidates = self.pool.inRotation()
        if not candidates:
            return None
        chosen = self._hash.choose(candidates, key)
        assert isinstance(chosen, Backend)
        return chosen
