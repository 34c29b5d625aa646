"""
Real servers and clients for integration tests, all on 127.0.0.1.

Backends run in the test's reactor; blocking clients (the stdlib's sockets
and C{http.client}) run in threads so the reactor keeps turning.
"""

from __future__ import annotations

import socket
import subprocess
from typing import Any, Callable, TypeVar

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from lbtwist.config import parseConfig
from lbtwist.service import LoadBalancer

reactor: Any = _reactor
T = TypeVar("T")


class NameOnConnect(Protocol):
    """
    Writes the server's name as soon as a client connects, then echoes what
    it reads until the client half-closes; then closes.
    """

    factory: NamedFactory

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.factory.live += 1
        self.factory.open.add(self)
        self.transport.write(self.factory.name.encode() + b"\n")  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def connectionLost(self, reason: object = None) -> None:
        self.factory.live -= 1
        self.factory.open.discard(self)


class NamedFactory(Factory):
    """
    Builds L{NameOnConnect}; counts connections.
    """

    protocol = NameOnConnect
    noisy = False

    def __init__(self, name: str) -> None:
        self.name = name
        self.connections = 0
        self.live = 0
        self.open: set[NameOnConnect] = set()


class Backends:
    """
    Named backend servers listening on loopback, stoppable and restartable.
    """

    def __init__(self, case: TestCase, factory: Callable[[str], Factory] = NamedFactory) -> None:
        self.case = case
        self.makeFactory = factory
        self.ports: dict[str, IListeningPort] = {}
        self.numbers: dict[str, int] = {}
        self.factories: dict[str, Factory] = {}
        case.addCleanup(self.stopAll)

    def start(self, name: str) -> int:
        """
        Start (or restart on its old port) the backend C{name}.
        """
        factory = self.factories.get(name) or self.makeFactory(name)
        self.factories[name] = factory
        # A deep accept queue, as the balancer's own listeners have: with
        # Twisted's default of 50, a burst of connections overflows it and
        # the kernel drops SYNs, which costs the balancer's connects seconds
        # of retransmits.
        port = reactor.listenTCP(
            self.numbers.get(name, 0), factory, backlog=1024, interface="127.0.0.1"
        )
        self.ports[name] = port
        self.numbers[name] = port.getHost().port
        return int(self.numbers[name])

    def stop(self, name: str) -> Deferred[None]:
        """
        Stop listening as C{name} (as if it died).
        """
        return self.ports.pop(name).stopListening()  # type: ignore[return-value]

    def endpoint(self, name: str) -> str:
        return f"tcp:host=127.0.0.1:port={self.numbers[name]}"

    @inlineCallbacks
    def stopAll(self) -> Any:
        for name in list(self.ports):
            yield self.stop(name)
        # Whatever a test left connected is cut, so the reactor ends clean.
        for factory in self.factories.values():
            for protocol in list(getattr(factory, "open", ())):
                protocol.transport.abortConnection()  # type: ignore[union-attr]
        yield sleep(0)


def startBalancer(case: TestCase, data: dict[str, Any]) -> tuple[LoadBalancer, int]:
    """
    Start a balancer from configuration data in this reactor; return it and
    the port of its first listener.  It is stopped when the test ends.
    """
    lb = LoadBalancer(parseConfig(data), reactor)
    lb.startService()

    @inlineCallbacks
    def stop() -> Any:
        yield lb.stopService()
        # Clients close first; give the balancer a moment to see it.
        for _ in range(100):
            if not any(getattr(f, "activeClients", 0) for f in lb.factories.values()):
                break
            yield sleep(0.02)

    case.addCleanup(stop)
    listener = lb.getServiceNamed("listener:" + lb.config.listeners[0].name)
    port = listener._waitingForPort.result  # type: ignore[attr-defined]
    return lb, int(getattr(port.getHost(), "port", 0))


def poolConfig(backends: list[tuple[str, str]], mode: str = "tcp", **settings: Any) -> dict[str, Any]:
    """
    Configuration data for one listener on an ephemeral loopback port and a
    pool of the given C{(name, endpoint)} backends with other C{settings}.
    """
    body: dict[str, Any] = {"backends": [{"name": n, "endpoint": e} for n, e in backends]}
    body.update(settings)
    return {
        "listeners": [{"listen": "tcp:0:interface=127.0.0.1", "mode": mode}],
        "pools": {"web": body},
    }


def inThread(f: Callable[..., T], *args: Any) -> Deferred[T]:
    """
    Run a blocking client in a thread.
    """
    return deferToThread(f, *args)


def firstLine(port: int, timeout: float = 5.0) -> bytes:
    """
    Connect to C{port}, read one line, and close.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
        return data.strip()


def sleep(seconds: float) -> Deferred[None]:
    """
    Wait in the reactor.
    """
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def stuckListener(case: TestCase) -> int:
    """
    A listener whose accept queue is full, so handshakes to it do not
    complete; returns its port.  C{case.stuck} is its socket.
    """
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    case.addCleanup(stuck.close)
    filler = socket.create_connection(stuck.getsockname(), timeout=1)
    case.addCleanup(filler.close)
    case.stuck = stuck  # type: ignore[attr-defined]
    return int(stuck.getsockname()[1])


# Every port freePort() gave out in this process.
_givenPorts: set[int] = set()


def freePort() -> int:
    """
    A loopback port nothing listens on, and never one given out before in
    this process: the kernel may hand out a port again as soon as it is
    closed, and two ports taken for one process (an etcd member's client
    and peer ports, a balancer's listener and admin) must differ.
    """
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in _givenPorts:
            _givenPorts.add(port)
            return port
    raise RuntimeError("no loopback port not given out before in 100 tries")


def spawn(case: TestCase, argv: list[str], cwd: str, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """
    Start a process with its output (both streams) in a pipe; it is killed
    by PID if still running when the test ends.
    """
    process = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )

    def reap() -> None:
        if process.poll() is None:
            process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()

    case.addCleanup(reap)
    return process


def plainTCPTransport(sock: Any, write: Callable[[bytes], None], **state: Any) -> Any:
    """
    A real C{tcp.Server}, unconnected, over the socket double C{sock}: what
    L{lbtwist.writethrough.writeNow} writes straight through goes to
    C{sock.send}, what it queues to C{write}; C{state} overrides its
    attributes (C{_tempDataLen}, C{disconnecting}, C{TLS}...).
    """
    from twisted.internet import tcp

    server = tcp.Server.__new__(tcp.Server)
    server.socket = sock
    server.connected = 1
    server.disconnecting = 0
    server.disconnected = 0
    server._writeDisconnecting = False
    server._tempDataLen = 0
    server.dataBuffer = b""
    server.offset = 0
    server.producer = None
    server.write = write  # type: ignore[method-assign]
    for attribute, value in state.items():
        setattr(server, attribute, value)
    return server
