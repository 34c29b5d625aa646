"""
Tiny demo backends, so a newcomer can see the balancer work at once.

Each answers every HTTP request with its own name, keeping connections
alive, so repeated C{curl} calls through the balancer show the backends
taking turns.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import MultiService
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from .service import PortService

DEMO_PORTS = (8001, 8002, 8003)


class DemoBackends(MultiService):
    """
    The demo backends, which say how to try them once they are up.
    """

    log = Logger()

    def __init__(self, ports: tuple[int, ...]) -> None:
        super().__init__()
        self.ports = ports

    def startService(self) -> None:
        super().startService()
        self.log.info(
            "demo: backends demo-1..demo-{n} answer on 127.0.0.1 ports {ports}; "
            "try 'curl http://127.0.0.1:8080/' a few times, and open "
            "http://127.0.0.1:9000/ for the dashboard",
            n=len(self.ports),
            ports=", ".join(map(str, self.ports)),
        )


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


def demoBackends(reactor: Any, ports: tuple[int, ...] = DEMO_PORTS) -> MultiService:
    """
    A service running one demo backend on each of C{ports} of 127.0.0.1.
    """
    parent = DemoBackends(ports)
    for i, port in enumerate(ports, 1):
        site = Site(DemoPage(f"demo-{i}"))
        site.noisy = False
        site.log = lambda request: None  # type: ignore[method-assign]
        endpoint = f"tcp:{port}:interface=127.0.0.1"
        PortService(
            f"demo backend demo-{i}", endpoint, serverFromString(reactor, endpoint), site
        ).setServiceParent(parent)
    return parent


def demoEndpoints(ports: tuple[int, ...] = DEMO_PORTS) -> list[str]:
    """
    The backend endpoint strings of the demo backends.
    """
    return [f"tcp:host=127.0.0.1:port={port}" for port in ports]
