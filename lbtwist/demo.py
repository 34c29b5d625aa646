"""
Tiny demo backends, so a newcomer can see the balancer work at once.

Each answers every HTTP request with its own name, keeping connections
alive, so repeated C{curl} calls through the balancer show the backends
taking turns.  They listen on free ports of 127.0.0.1 (port 0), so a busy
port never stops the demo; the balancer's pool is pointed at the ports they
got.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs
from twisted.application.service import IService, IServiceCollection, MultiService
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .config import Config
from .endpoints import hostPort
from .tcp import describe

DEMO_COUNT = 3
DEMO_POOL = "default"


def demoNames(count: int = DEMO_COUNT) -> list[str]:
    """
    The names of the demo backends: C{demo-1}, C{demo-2}, ...
    """
    return [f"demo-{i}" for i in range(1, count + 1)]


def demoEndpoints(count: int = DEMO_COUNT) -> list[str]:
    """
    Stand-in endpoint strings of the demo backends, for the configuration
    built from the command line before they listen (port 9, discard, where
    nothing answers); L{DemoBackends.listen} replaces them with the ports
    the backends got.
    """
    return ["tcp:host=127.0.0.1:port=9"] * count


def listenerURL(address: Any, tls: bool) -> str:
    """
    The URL a person on this machine reaches a listener at: loopback for a
    listener on every interface, https for a TLS one.
    """
    host = getattr(address, "host", "127.0.0.1")
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"{'https' if tls else 'http'}://{hostPort(host, getattr(address, 'port', 8080))}/"


def howToTry(listeners: list[str], admin: str | None) -> str:
    """
    The demo's hint for people: where to send requests (the listeners'
    URLs), and where the dashboard is, or that the admin API is not
    running.
    """
    first = listeners[0] if listeners else "http://127.0.0.1:8080/"
    # A self-signed certificate is the usual one to try TLS with.
    insecure = "-k " if first.startswith("https:") else ""
    text = f"try 'curl {insecure}{first}' a few times"
    if admin is None:
        return text + "; the admin API is not running, so there is no dashboard"
    return text + f", and open http://{admin}/ for the dashboard"


def _services(service: IService) -> Iterator[IService]:
    yield service
    if IServiceCollection.providedBy(service):
        for child in service:  # type: ignore[attr-defined]
            yield from _services(child)


class DemoBackends(MultiService):
    """
    The demo backends, which say how to try them once everything is up.

    @ivar ports: the listening ports, by backend name, once L{listen} ran.
    """

    log = Logger()

    def __init__(self, reactor: Any, count: int = DEMO_COUNT) -> None:
        super().__init__()
        self.reactor = reactor
        self.sites: dict[str, Site] = {}
        for name in demoNames(count):
            site = Site(DemoPage(name))
            site.noisy = False
            site.log = lambda request: None  # type: ignore[method-assign]
            self.sites[name] = site
        self.ports: dict[str, Any] = {}

    def listen(self, config: Config) -> Config:
        """
        Listen now, each backend on a free port of 127.0.0.1, and return
        C{config} with the demo backends of its default pool pointed at
        them.  This runs before the balancer is built, which needs the ports.
        """
        for name, site in self.sites.items():
            self.ports[name] = self.reactor.listenTCP(0, site, interface="127.0.0.1")
        endpoints = {
            name: f"tcp:host=127.0.0.1:port={port.getHost().port}"
            for name, port in self.ports.items()
        }
        pools = tuple(
            attrs.evolve(pool, backends=tuple(
                attrs.evolve(b, endpoint=endpoints.get(b.name, b.endpoint))
                for b in pool.backends
            )) if pool.name == DEMO_POOL else pool
            for pool in config.pools
        )
        return attrs.evolve(config, pools=pools)

    def startService(self) -> None:
        """
        Once the reactor runs (every service has started), log where the
        backends answer and how to try the balancer.
        """
        super().startService()
        self.reactor.callWhenRunning(self.sayHowToTry)

    def sayHowToTry(self) -> None:
        """
        Log the backends' ports, and the hint naming the addresses the
        balancer's listeners and admin API actually got.
        """
        root: IService = self
        while root.parent is not None:
            root = root.parent  # type: ignore[assignment]
        listeners, admin = [], None
        for service in _services(root):
            name = service.name or ""
            port = getattr(service, "_waitingForPort", None)
            if name.startswith("listener:") and port is not None and port.called:
                listener = service.listener  # type: ignore[attr-defined]
                listeners.append(listenerURL(
                    port.result.getHost(), listener.terminatesTLS))
            if name == "admin" and getattr(service, "port", None) is not None:
                admin = describe(service.port.getHost())  # type: ignore[attr-defined]
        self.log.info(
            "demo: backends {names} answer on 127.0.0.1 ports {ports}; {hint}",
            names=", ".join(self.ports),
            ports=", ".join(str(p.getHost().port) for p in self.ports.values()),
            hint=howToTry(listeners, admin),
        )

    def stopService(self) -> Deferred[Any]:
        """
        Stop listening.
        """
        super().stopService()
        ports, self.ports = self.ports, {}
        return gatherResults([maybeDeferred(p.stopListening) for p in ports.values()])


class DemoPage(Resource):
    """
    Answers any path with C{hello from NAME}.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def render(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-backend", self.name.encode())
        return f"hello from {self.name}\n".encode()


def demoBackends(reactor: Any, count: int = DEMO_COUNT) -> DemoBackends:
    """
    A service running C{count} demo backends on 127.0.0.1; call its
    L{DemoBackends.listen} with the configuration before building the
    balancer.
    """
    return DemoBackends(reactor, count)
