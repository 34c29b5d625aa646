"""
What every listener shares, whatever its mode: the global C{maxconn} over
all listeners (L{ConnectionLimit}), and the base of the listeners' protocol
factories (L{ListenerFactory}): the pool, the counts of clients, the PROXY
header, the access log and the ALPN protocols offered over TLS.
"""

from __future__ import annotations

from typing import Any, Mapping

import txaio
from twisted.internet.interfaces import IProtocolNegotiationFactory
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from zope.interface import implementer  # type: ignore[import-untyped]

from .accesslog import AccessLogEvents, IAccessLog
from .pool import BackendPool
from .proxyprotocol import PROXY_HEADERS
from .wording import counted

# The sans-IO core (the pool) logs through txaio.  This layer, which every
# listener of either mode is built on, runs it on Twisted: it selects that
# framework as soon as it is imported, whatever the entry point (twistd lb,
# a .tac file, an application embedding lbtwist or its protocols), as
# autobahn's Twisted package does.
txaio.use_twisted()


class ConnectionLimit:
    """
    The global C{maxconn}: client connections open at once over every
    listener.

    At the limit the listening ports stop accepting (new clients wait in the
    kernel's accept queue, as with HAProxy) until a connection closes.  A
    Twisted port accepts a batch of connections in one pass: each pass is
    capped at the free slots, so no connection is accepted past the limit
    only to be closed.

    @ivar refused: connections closed because they came past the limit.
    @ivar paused: how many times the listeners were paused.
    """

    log = Logger()

    def __init__(self, maxconn: int) -> None:
        self.maxconn = maxconn
        self.active = 0
        self.refused = 0
        self.paused = 0
        self._ports: list[Any] = []
        self._capped: list[Any] = []
        self._reading = True

    def addPort(self, port: Any) -> None:
        """
        Pause and resume C{port} (a listening port) with the others.
        """
        self._ports.append(port)
        if not self._reading:
            port.stopReading()
        doRead = getattr(port, "doRead", None)
        # (A port added again, after a pause, is capped already.)
        if doRead is not None and hasattr(port, "numberAccepts") and port not in self._capped:
            self._capped.append(port)

            def cappedRead() -> Any:
                free = self.maxconn - self.active
                if port.numberAccepts > free:
                    port.numberAccepts = max(1, free)
                return doRead()

            port.doRead = cappedRead

    def removePort(self, port: Any) -> None:
        """
        Forget C{port}: it stopped listening.
        """
        if port in self._ports:
            self._ports.remove(port)

    def admit(self) -> bool:
        """
        A client connected: count it, or say it must be refused.

        @return: C{False} if the limit is reached (close the connection).
        """
        if self.active >= self.maxconn:
            self.refused += 1
            self._pause()
            return False
        self.active += 1
        if self.active >= self.maxconn:
            self._pause()
        return True

    def release(self) -> None:
        """
        An admitted client's connection closed.
        """
        self.active -= 1
        if not self._reading and self.active < self.maxconn:
            self._reading = True
            for port in self._ports:
                if getattr(port, "connected", True):
                    port.startReading()

    def _pause(self) -> None:
        if self._reading:
            self._reading = False
            self.paused += 1
            self.log.warn(
                "{activeCount} open, the global maxconn: "
                "listeners paused until one closes",
                active=self.active, activeCount=counted(self.active, "client connection"),
            )
            for port in self._ports:
                port.stopReading()


@implementer(IProtocolNegotiationFactory)
class ListenerFactory(ServerFactory):
    """
    What the protocol factories of every listener share, whatever their
    mode: the pool, the counts of clients, the global C{maxconn}, the
    PROXY-protocol header, the access log and the protocols a TLS
    listener offers over ALPN.

    @ivar activeClients: client connections currently open.
    @ivar accepted: client connections accepted in all.
    @ivar limit: the global maxconn shared by every listener, if set.
    @ivar accessLog: where the access log goes, if anywhere: events with
        C{access-log: true}, else a file the balancer owns and sets here.
    @ivar accessLogs: when the balancer sets it, the access log of each
        pool that has one, by pool name (read live: it follows the pools
        added and removed at run time): a request or connection is logged
        by the pool its route chose, and C{accessLog} is not used.
    @ivar alpn: the protocols offered over ALPN, most preferred first (set
        by the balancer from the listener's configuration).
    @ivar accessLogErrors: how many times the access-log sink raised.
    """

    noisy = False
    accessLogErrors = 0
    _log = Logger()
    limit: ConnectionLimit | None = None
    alpn: tuple[bytes, ...] = ()

    def __init__(self, pool: BackendPool, reactor: Any) -> None:
        self.pool = pool
        self.reactor = reactor
        self.activeClients = 0
        self.accepted = 0
        self.proxyHeader = PROXY_HEADERS.get(pool.config.proxyProtocol or "")
        self.accessLog: IAccessLog | None = (
            AccessLogEvents(self) if pool.config.accessLog is True else None
        )
        self.accessLogs: Mapping[str, IAccessLog] | None = None

    def accessLogFailed(self) -> None:
        """
        The access-log sink raised (its contract says it never does), in
        the C{except} block that caught it: count it, and log it with its
        traceback the 1st, 10th, 100th... time, so that a sink broken on
        every request does not flood the log.  The line is lost; the
        request or connection it was for goes on as if it were written.
        """
        self.accessLogErrors = count = self.accessLogErrors + 1
        if str(count).rstrip("0") == "1":
            self._log.failure(
                "access-log sink {sink!r} raised ({count} in all): its lines are lost, "
                "the traffic goes on",
                sink=self.accessLog, count=count,
            )

    def acceptableProtocols(self) -> list[bytes]:
        """
        The protocols a TLS listener offers over ALPN, most preferred first.
        """
        return list(self.alpn)

    def admit(self) -> bool:
        """
        Count a new client in, unless the global maxconn says no.
        """
        limit = self.limit
        if limit is not None and not limit.admit():
            return False
        self.accepted += 1
        self.activeClients += 1
        return True

    def clientGone(self) -> None:
        """
        Count a client out.
        """
        self.activeClients -= 1
        if self.limit is not None:
            self.limit.release()
