"""
Tests for L{lbtwist.dial}.
"""

from __future__ import annotations

import weakref
from typing import Any

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lbtwist.config import parseConfig
from lbtwist.connect import BackendConnector
from lbtwist.dial import BackendProtocol, Dialler
from lbtwist.leantcp import IReactorDialTCP
from lbtwist.pool import BackendPool


@implementer(IReactorDialTCP)
class DirectReactor(MemoryReactorClock):
    """
    A memory reactor that records direct dials.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dials: list[tuple[Any, ...]] = []

    def dialTCP(self, *args: Any) -> Any:
        self.dials.append(args)
        return None


class Outcome:
    """
    Records what a dial reports.
    """

    def __init__(self) -> None:
        self.connected: list[Any] = []
        self.failed: list[Failure] = []


def dial(reactor: Any, text: str) -> tuple[Any, Outcome, list[BackendProtocol]]:
    outcome = Outcome()
    built: list[BackendProtocol] = []

    def build() -> BackendProtocol:
        built.append(BackendProtocol())
        return built[-1]

    attempt = Dialler(reactor).dial(
        text, build, 3.0, outcome.connected.append, outcome.failed.append
    )
    return attempt, outcome, built


class DiallerTests(SynchronousTestCase):
    """
    L{Dialler} picks the leanest way to each backend.
    """

    def test_direct(self) -> None:
        """
        On a reactor that dials directly, a TCP backend at an IP address is
        dialled with a protocol built in advance.
        """
        reactor = DirectReactor()
        _, outcome, built = dial(reactor, "tcp:host=10.0.0.5:port=80")
        self.assertEqual(len(reactor.dials), 1)
        host, port, protocol, timeout = reactor.dials[0][:4]
        self.assertEqual((host, port, timeout), ("10.0.0.5", 80, 3.0))
        self.assertIs(protocol, built[0])
        self.assertEqual(reactor.tcpClients, [])

    def test_hostName(self) -> None:
        """
        A host name goes through C{connectTCP}, which resolves it; the
        protocol, built when the dial starts, is the one the factory gives,
        and reports itself connected.
        """
        reactor = DirectReactor()
        _, outcome, built = dial(reactor, "tcp:host=backend.example:port=80")
        self.assertEqual(reactor.dials, [])
        self.assertEqual(len(built), 1)
        host, port, factory, timeout, _ = reactor.tcpClients[0]
        self.assertEqual((host, port, timeout), ("backend.example", 80, 3.0))
        protocol = factory.buildProtocol(None)
        self.assertIs(protocol, built[0])
        self.assertEqual(outcome.connected, [])
        protocol.makeConnection(StringTransport())
        self.assertEqual(outcome.connected, [protocol])

    def test_connectTCPBuiltAtStart(self) -> None:
        """
        On a reactor without C{dialTCP} too, the protocol is built when the
        dial starts (so that what it stands for is known while it
        connects), and its factory gives it once.
        """
        reactor = MemoryReactorClock()
        _, outcome, built = dial(reactor, "tcp:host=10.0.0.5:port=80")
        self.assertEqual(len(built), 1)
        factory = reactor.tcpClients[0][2]
        self.assertIs(factory.buildProtocol(None), built[0])
        self.assertRaises(RuntimeError, factory.buildProtocol, None)
        self.assertEqual(len(built), 1)

    def test_endpointBuiltAtStart(self) -> None:
        """
        Through an endpoint (here UNIX) the protocol is built when the dial
        starts, and is the one connected.
        """
        reactor = MemoryReactorClock()
        _, outcome, built = dial(reactor, "unix:path=/nonexistent/backend.sock")
        self.assertEqual(len(built), 1)
        factory = reactor.unixClients[0][1]
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(StringTransport())
        self.assertEqual(outcome.connected, [built[0]])

    def test_cancelledLetsGo(self) -> None:
        """
        A cancelled C{connectTCP} attempt holds its protocol no more (it
        refers back to the client: kept, it would make a cycle).
        """
        reactor = MemoryReactorClock()
        attempt, _, built = dial(reactor, "tcp:host=10.0.0.5:port=80")
        protocol = weakref.ref(built.pop())
        attempt.cancel()
        self.assertIsNone(protocol())

    def test_connectTCPFails(self) -> None:
        """
        A failed C{connectTCP} attempt is reported once.
        """
        reactor = MemoryReactorClock()
        _, outcome, _ = dial(reactor, "tcp:host=10.0.0.5:port=80")
        factory = reactor.tcpClients[0][2]
        reason = Failure(ConnectionRefusedError())
        factory.clientConnectionFailed(reactor.connectors[0], reason)
        factory.clientConnectionFailed(reactor.connectors[0], reason)
        self.assertEqual(outcome.failed, [reason])

    def test_connectTCPCancel(self) -> None:
        """
        Cancelling a C{connectTCP} attempt stops the connector and reports
        nothing, even when the connector then says it failed.
        """
        reactor = MemoryReactorClock()
        attempt, outcome, _ = dial(reactor, "tcp:host=10.0.0.5:port=80")
        connector = reactor.connectors[0]
        attempt.cancel()
        self.assertEqual(connector.stoppedConnecting, True)
        reactor.tcpClients[0][2].clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.assertEqual((outcome.connected, outcome.failed), ([], []))

    def test_endpointCancel(self) -> None:
        """
        Cancelling a dial through an endpoint (here UNIX) reports nothing:
        the endpoint's L{ConnectingCancelledError} is ours.
        """
        reactor = MemoryReactorClock()
        attempt, outcome, _ = dial(reactor, "unix:path=/nonexistent/backend.sock")
        self.assertEqual(len(reactor.unixClients), 1)
        attempt.cancel()
        self.assertEqual((outcome.connected, outcome.failed), ([], []))
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_attemptCancel(self) -> None:
        """
        A client leaving while its backend connection is pending gives the
        backend's slot back once, and nothing is reported or logged.
        """
        reactor = MemoryReactorClock()
        data = {"listeners": [{"listen": "tcp:0"}], "pools": {"web": {
            "backends": [{"name": "a", "endpoint": "unix:path=/nonexistent/backend.sock"}],
        }}}
        pool = BackendPool(parseConfig(data).pools[0])
        backend = pool.get("a")
        assert backend is not None
        reported: list[Any] = []
        attempt = BackendConnector(pool, reactor).connect(
            "client", None, lambda b: BackendProtocol(),
            lambda b, p, failures: reported.append(p), reported.append,
        )
        assert attempt is not None
        self.assertEqual(backend.slots, 1)
        attempt.cancel()
        self.assertEqual(backend.slots, 0)
        self.assertEqual(reported, [])
        self.assertEqual(self.flushLoggedErrors(), [])
