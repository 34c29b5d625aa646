"""
Tests of the HTTP exchange core (L{lbtwist.http._exchange}): its phase
table, and an exchange driven by a client side that is not an HTTP/1.1
connection (as an HTTP/2 stream will be), over a memory reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer  # type: ignore[import-untyped]
from zope.interface.verify import verifyObject  # type: ignore[import-untyped]

from lbtwist.dial import Dialler
from lbtwist.http import HTTPProxyFactory
from lbtwist.http._exchange import (
    CONNECTING,
    DONE,
    FAILED,
    SENDING,
    STREAMING,
    TRANSITIONS,
    TUNNEL,
    WAITING,
    Exchange,
    IClientSide,
    IllegalTransition,
)
from lbtwist.http._plan import RequestRules, planRequest, planResponse
from lbtwist.pool import BackendPool

from .test_http_unit import httpConfig


class PhaseTableTests(SynchronousTestCase):
    """
    The written transition table.
    """

    def test_reachable(self) -> None:
        """
        Every phase is reachable from WAITING, and DONE and FAILED end it.
        """
        seen, todo = {WAITING}, [WAITING]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        self.assertEqual(seen, set(TRANSITIONS))
        self.assertEqual((TRANSITIONS[DONE], TRANSITIONS[FAILED]), (frozenset(), frozenset()))

    def test_illegal(self) -> None:
        """
        A move the table does not allow raises.
        """
        plan = planRequest(b"GET", b"/", "1.1", [(b"Host", b"a")], True, False, b"c", b"l",
                           RequestRules())
        ex = Exchange(None, None, plan, b"GET", b"/", "1.1", 0.0)
        for bad in (SENDING, STREAMING, TUNNEL, DONE):
            self.assertRaises(IllegalTransition, ex._to, bad)
        ex._to(CONNECTING)
        self.assertRaises(IllegalTransition, ex._to, WAITING)


@implementer(IClientSide)
class RecordingClientSide:
    """
    A client side that is not an HTTP/1.1 connection: it records what the
    exchange gives it, as an HTTP/2 stream would turn it into frames.
    """

    clientHost = b"192.0.2.9"
    clientName = "192.0.2.9:4000"
    proxyHeader = None

    def __init__(self) -> None:
        self.privateKeys: set[Any] = set()
        self.closed = False
        self.calls: list[tuple[Any, ...]] = []
        self.held = False
        self.producer: Any = None

    def holdRequest(self) -> None:
        self.held = True

    def releaseRequest(self) -> None:
        self.held = False

    def sendInterim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.calls.append(("interim", status))

    def sendHead(self, exchange: Exchange, status: int, reason: bytes,
                 headers: list[tuple[bytes, bytes]]) -> Any:
        self.calls.append(("head", status, dict(headers)))
        return planResponse(status, reason, headers, exchange.method, True, True)

    def flushHead(self, exchange: Exchange) -> None:
        pass

    def dropHeldHead(self, exchange: Exchange) -> bool:
        return False

    def sendBody(self, exchange: Exchange, data: bytes) -> None:
        self.calls.append(("body", data))

    def endResponse(self, exchange: Exchange) -> None:
        self.calls.append(("end",))

    def sendError(self, exchange: Exchange, status: int) -> None:
        self.calls.append(("error", status))

    def cutResponse(self, exchange: Exchange) -> None:
        self.calls.append(("cut",))

    def startTunnel(self, exchange: Exchange, connection: Any, head: bytes) -> None:
        self.calls.append(("tunnel",))

    def exchangeDone(self, exchange: Exchange) -> None:
        self.calls.append(("done", exchange.phase))

    def dueBy(self, deadline: float) -> None:
        self.calls.append(("due", deadline))

    def backendActive(self) -> None:
        pass

    def tunnelData(self, data: bytes) -> None:
        pass

    def tunnelClosed(self) -> None:
        pass

    def registerProducer(self, producer: Any) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class ClientSideTests(SynchronousTestCase):
    """
    The exchange talks to its client side through L{IClientSide} only.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        config = httpConfig()
        self.factory = HTTPProxyFactory(
            BackendPool(config.pools[0]), self.reactor, Dialler(self.reactor),
            config.listeners[0],
        )

    def test_http11Provides(self) -> None:
        """
        The HTTP/1.1 client connection provides the interface.
        """
        client = self.factory.buildProtocol(IPv4Address("TCP", "192.0.2.7", 5555))
        client.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 5555)))
        self.assertTrue(verifyObject(IClientSide, client))

    def test_otherClientSide(self) -> None:
        """
        A client side of another protocol drives an exchange through its
        whole life: connect, send, stream the response, done.
        """
        side = RecordingClientSide()
        self.assertTrue(verifyObject(IClientSide, side))
        plan = planRequest(b"GET", b"/x", "1.1", [(b"Host", b"a")], True, False,
                           side.clientHost, b"l:80", self.factory.rules)
        ex = Exchange(side, self.factory, plan, b"GET", b"/x", "1.1", self.reactor.seconds())
        ex.requestComplete()
        ex.start()
        self.assertEqual(ex.phase, CONNECTING)
        host, port, dialFactory, timeout, bind = self.reactor.tcpClients[0]
        backend = dialFactory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransport()
        backend.makeConnection(transport)
        self.assertEqual(ex.phase, SENDING)
        self.assertTrue(transport.value().startswith(b"GET /x HTTP/1.1\r\nHost: a\r\n"))
        self.assertIn(b"X-Forwarded-For: 192.0.2.9\r\n", transport.value())
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        self.assertEqual(ex.phase, DONE)
        self.assertEqual(
            [c for c in side.calls if c[0] != "due"],
            [("head", 200, {b"Content-Length": b"2", b"Connection": b"close"}),
             ("body", b"hi"), ("end",), ("done", DONE)],
        )
        self.assertEqual(self.factory.pool.get("b1").slots, 0)  # type: ignore[union-attr]

    def test_otherClientSideTimesOut(self) -> None:
        """
        The response deadline is given to the client side, which calls the
        exchange back: a 504 through the same interface.
        """
        side = RecordingClientSide()
        plan = planRequest(b"GET", b"/", "1.1", [(b"Host", b"a")], True, False,
                           side.clientHost, b"l:80", self.factory.rules)
        ex = Exchange(side, self.factory, plan, b"GET", b"/", "1.1", self.reactor.seconds())
        ex.requestComplete()
        ex.start()
        _, _, dialFactory, _, _ = self.reactor.tcpClients[0]
        dialFactory.buildProtocol(None).makeConnection(StringTransport())
        [due] = [c[1] for c in side.calls if c[0] == "due"]
        self.assertEqual(due, self.reactor.seconds() + self.factory.responseTimeout)
        ex.timedOut()
        self.assertEqual(ex.phase, FAILED)
        self.assertIn(("error", 504), side.calls)
