"""
The admin listener as a service, its bounded requests, and the check that
an admin API reachable from the network has a token.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Request, Site

from ..config import Config, ConfigError
from ..control import BalancerControl
from ..endpoints import parseEndpoint
from ..reload import LiveConfig
from ..service import CannotStart
from ..tcp import describe
from ._api import DEFAULT_ADMIN, MAX_BODY, TOKEN_VARIABLE, AdminResource


def checkAdmin(config: Config, environ: Mapping[str, str]) -> Config:
    """
    Fill in the admin token from the environment (when the file has none),
    and refuse an admin listener on a non-loopback interface without one.

    @raise ConfigError: the admin API would be open to the network.
    """
    token = config.adminToken or environ.get(TOKEN_VARIABLE) or None
    endpoint = config.admin or DEFAULT_ADMIN
    if not token and not parseEndpoint(endpoint, True).loopback:
        raise ConfigError(
            "admin",
            f"the admin API on {endpoint!r} is reachable from the network: set "
            f"admin-token (or {TOKEN_VARIABLE}), or listen on 127.0.0.1",
        )
    return attrs.evolve(config, adminToken=token)


# -- errors and views ---------------------------------------------------------


# Seconds a request has to arrive whole (head and body) from its first line.
REQUEST_TIMEOUT = 10.0
# Seconds a connection may sit with nothing read before it is closed.
IDLE_TIMEOUT = 60.0


class BoundedRequest(Request):
    """
    A request that keeps at most C{MAX_BODY} bytes of its body, in memory:
    the rest is dropped as it arrives (twisted.web would spool a large or
    chunked body to a temporary file before any check ran), and the request
    is answered 413.

    It must arrive whole within L{REQUEST_TIMEOUT} of its first line, else
    the connection is timed out unanswered: twisted.web only times out a
    connection that reads nothing for its C{timeout}, so a head or body
    trickled a byte at a time would hold it for ever.
    """

    oversized = False
    _kept = 0

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        self._arrival: Any = channel.callLater(REQUEST_TIMEOUT, channel.timeoutConnection)

    def _arrived(self) -> None:
        arrival, self._arrival = self._arrival, None
        if arrival is not None and arrival.active():
            arrival.cancel()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._arrived()
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Failure) -> None:
        self._arrived()
        super().connectionLost(reason)

    def gotLength(self, length: int | None) -> None:
        if length is None or length > MAX_BODY:
            self.oversized = length is not None
            length = MAX_BODY
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        if self._kept + len(data) > MAX_BODY:
            self.oversized = True
            return
        self._kept += len(data)
        super().handleContentChunk(data)


def adminSite(resource: Any, reactor: Any) -> Site:
    """
    The admin listener's site: bounded requests (L{BoundedRequest}), and
    connections closed after L{IDLE_TIMEOUT} with nothing read, on
    C{reactor}'s clock.
    """
    site = Site(resource, requestFactory=BoundedRequest, timeout=IDLE_TIMEOUT, reactor=reactor)
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


class AdminService(Service):
    """
    The admin listener.  When it is the default one (not configured) and the
    port is taken, the balancer runs on without it and says so; a configured
    one that cannot listen stops the balancer from starting.

    @ivar port: the listening port, once started.
    """

    log = Logger()

    def __init__(self, balancer: Any, live: LiveConfig, reactor: Any,
                 environ: Mapping[str, str] | None = None, group: Any = None,
                 cluster: Any = None, adopted: tuple[str, int, int] | None = None,
                 control: BalancerControl | None = None) -> None:
        """
        @param group: the worker processes this master speaks for (see
            L{lbtwist.admin.AdminResource}), if any.
        @param cluster: the cluster registry sync, if any.
        @param adopted: the listening socket the previous image of this
            master left (see L{lbtwist.workers._handover}), as its
            endpoint, file descriptor and address family: served instead of
            binding when the endpoint is this one's, else closed.
        @param control: what the API's changes go through (default: one
            over C{live} and C{cluster}).
        """
        config: Config = checkAdmin(
            balancer.config, os.environ if environ is None else environ)
        self.required = config.admin is not None
        self.endpointText = self.endpointFor(config)
        if adopted is not None and adopted[0] == self.endpointText:
            self.endpoint: Any = AdoptedStreamServerEndpoint(reactor, adopted[1], adopted[2])
        else:
            if adopted is not None:
                os.close(adopted[1])
            self.endpoint = serverFromString(reactor, self.endpointText)
        self.resource = AdminResource(balancer, live, config.adminToken, reactor, group=group,
                                      cluster=cluster, control=control)
        self.sampler = LoopingCall(lambda: self.resource.history.add(self.resource.sample()))
        self.sampler.clock = reactor
        self.site = adminSite(self.resource, reactor)
        self.port: Any = None
        self.setName("admin")

    @staticmethod
    def endpointFor(config: Config) -> str:
        """
        The endpoint the admin API of C{config} listens on.
        """
        return config.admin or DEFAULT_ADMIN

    def startService(self) -> None:
        super().startService()
        problem: list[Failure] = []
        self.endpoint.listen(self.site).addCallbacks(self._listening, problem.append)
        if problem:
            why = problem[0].getErrorMessage()
            if self.required:
                self.log.critical("admin API cannot listen on {endpoint}: {error}",
                                  endpoint=self.endpointText, error=why)
                raise CannotStart(
                    f"lbtwist: admin API cannot listen on {self.endpointText}: {why}")
            self.log.error(
                "admin API cannot listen on the default {endpoint} ({error}); running "
                "without it (set --admin or admin: in the config file)",
                endpoint=self.endpointText, error=why)

    def _listening(self, port: Any) -> None:
        self.port = port
        self.sampler.start(self.resource.history.interval, now=True)
        self.log.info("admin API listening on {address}", address=describe(port.getHost()))
        if self.resource.token is None:
            self.log.info(
                "admin API: changes are disabled until a token is set (admin-token, or "
                "LBTWIST_ADMIN_TOKEN); it answers reads")

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self.sampler.running:
            self.sampler.stop()
        port, self.port = self.port, None
        if port is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        port.stopListening().addBoth(lambda _: d.callback(None))
        return d
