"""
HTTP mode's listener factory: each request is balanced on its own, over
kept-alive client connections and pooled backend connections.

L{HTTPProxyFactory} holds what the connections of one listener share: the
settings, the request rules, the connect engine, the idle pool, sticky
sessions, counters and the access log.  The work is done by the exchange
core (L{lbtwist.http._exchange}), the client connection
(L{lbtwist.http._client}) and the backend connection
(L{lbtwist.http._backend}); what goes on the wire is planned by the pure
functions of L{lbtwist.http._plan}.

The hot path avoids per-request allocations it can: one exchange and one
plan per request, the head built by one C{join}, no timer per request (the
client connection's one timer watches the response deadline), no log
formatting unless the access log is on.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol
from twisted.logger import Logger

from ..config import ListenerConfig
from ..connect import BackendConnector
from ..dial import Dialler
from ..listener import ListenerFactory
from ..policies import SourceHash
from ..pool import Backend, BackendPool
from ._client import ClientConnection
from ._exchange import Exchange
from ._plan import RequestRules
from ._pool import IdleConnections

# Status classes by the status's hundreds: made once, not per request.
_CLASSES = tuple(f"{n}xx" for n in range(10))


class HTTPProxyFactory(ListenerFactory):
    """
    Accepts HTTP clients on a listener and balances their requests over a
    pool.

    @ivar idle: the pool of idle backend connections.
    @ivar connector: finds and connects backends for its requests.
    @ivar rules: what the request plan follows for this listener.
    @ivar refused: requests refused as malformed or too large.
    @ivar statuses: responses sent, by status class (C{"2xx"}...).
    """

    log = Logger()

    def __init__(
        self,
        pool: BackendPool,
        reactor: Any,
        dialler: Dialler,
        listener: ListenerConfig,
    ) -> None:
        super().__init__(pool, reactor)
        self.seconds: Callable[[], float] = reactor.seconds
        self.connector = BackendConnector(pool, reactor, dialler)
        config = pool.config
        http = config.http
        self.settings = http
        self.maxHeaderSize = http.maxHeaderSize
        self.maxRequestLine = http.maxRequestLine
        self.maxResponseHeaderSize = http.maxResponseHeaderSize
        self.requestTimeout = config.timeouts.request
        self.responseTimeout = config.timeouts.response
        self.idleTimeout = config.timeouts.idle
        self.idle = IdleConnections(reactor, http.keepAlive)
        self.maxRequests = http.keepAlive.maxRequests
        sticky = config.sticky
        self.sticky = sticky
        self._stickyName = (sticky.name or "").encode() if sticky else b""
        self.rules = RequestRules(
            forwardedProto=(
                b"https" if listener.terminatesTLS else b"http"
            ),
            hostHeader=http.hostHeader.encode("ascii") if http.hostHeader else None,
            stickyKind=sticky.kind if sticky is not None else None,
            stickyName=self._stickyName,
        )
        self._hash = SourceHash(random.Random())
        self._cookieIds: dict[str, bytes] = {}
        self.refused = 0
        # Requests dropped because their client left before the answer.
        self.abandoned = 0
        self.statuses: dict[str, int] = {}
        self.clients: set[ClientConnection] = set()
        # Set by a graceful stop: no more keep-alive.
        self.stopping = False

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:  # type: ignore[override]
        if not self.admit():
            return None
        client = ClientConnection(self)
        self.clients.add(client)
        return client

    def softStop(self) -> None:
        """
        A graceful stop began, as HAProxy's soft-stop: close the clients
        waiting between requests now, and answer every request still to
        come with C{Connection: close}, so that keep-alive clients leave
        once served instead of holding the stop up until its grace ends.
        """
        self.stopping = True
        for client in list(self.clients):
            client.stopIfIdle()

    def stopFactory(self) -> None:
        """
        The listener stopped: close the idle backend connections.
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

    def stickyBackend(self, ex: Exchange) -> Backend | None:
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

    def cookieFor(self, ex: Exchange) -> bytes:
        """
        The C{Set-Cookie} value that sends the client back to its backend.
        """
        backend = ex.backend
        assert backend is not None
        return self._stickyName + b"=" + self.cookieId(backend) + b"; Path=/; HttpOnly"

    def _cookieBackend(self, value: bytes) -> Backend | None:
        for backend in self.pool:
            if backend.eligible and self.cookieId(backend) == value:
                return backend
        return None

    def _hashed(self, key: bytes) -> Backend | None:
        # Hashing balances: a weight-0 backend takes none of it (a sticky
        # cookie, which persists, still reaches one).
        candidates = [b for b in self.pool.serving() if b.weight and b.eligible]
        if not candidates:
            return None
        chosen = self._hash.choose(candidates, key)
        assert isinstance(chosen, Backend)
        return chosen

    def exchangeLogged(self, ex: Exchange) -> None:
        """
        C{ex} is answered: count its status class and write its access-log
        line.
        """
        self.countStatus(ex)
        self.logAccess(ex)

    def countStatus(self, ex: Exchange) -> None:
        """
        Count the status class of the response to C{ex}.
        """
        cls = _CLASSES[ex.status // 100]
        statuses = self.statuses
        statuses[cls] = statuses.get(cls, 0) + 1

    def logAccess(self, ex: Exchange) -> None:
        """
        Write the access-log line of C{ex}, if the access log is on: its
        duration runs from the request to now (for an upgrade, to the
        tunnel's close, with the tunnel's bytes each way).
        """
        log = self.accessLog
        if log is not None:
            backend = ex.backend
            log.request(
                ex.client.clientName, ex.method.decode("latin-1"), ex.url.decode("latin-1"),
                ex.status, backend.name if backend is not None else None,
                ex.bytesIn, ex.bytesOut, self.seconds() - ex.started, ex.retries,
            )

