"""
Tests of the HTTP exchange core (L{lbtwist.http._exchange}): its phase
table, and an exchange driven by a client side that is not an HTTP/1.1
connection (as an HTTP/2 stream will be), over a memory reactor.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer  # type: ignore[import-untyped]
from zope.interface.verify import verifyObject  # type: ignore[import-untyped]

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
from lbtwist.http._plan import (
    RequestRules,
    planRequest,
    planResponse,
    websocketAccept,
)
from lbtwist.pool import Health

from .test_http_unit import CLIENT, connectBackend, connectClient, proxyFactory


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
        ex = Exchange(None, None, None, plan, b"GET", b"/", "1.1", 0.0)
        for bad in (SENDING, STREAMING, TUNNEL):
            self.assertRaises(IllegalTransition, ex._to, bad)
        ex._to(CONNECTING)
        for bad in (WAITING, DONE):
            self.assertRaises(IllegalTransition, ex._to, bad)


    def test_writtenOut(self) -> None:
        """
        The moves written out on the common path (a turn that came, a
        connection joined) raise from exactly the phases the table does not
        allow them from.
        """
        plan = planRequest(b"GET", b"/", "1.1", [(b"Host", b"a")], True, False, b"c", b"l",
                           RequestRules())
        moves = [
            (CONNECTING, lambda ex: ex.start()),
            (SENDING, lambda ex: ex._joined(None, None, 0)),
        ]
        for target, move in moves:
            for phase, allowed in TRANSITIONS.items():
                ex = Exchange(None, None, None, plan, b"GET", b"/", "1.1", 0.0)
                ex.phase = phase
                try:
                    move(ex)
                except IllegalTransition:
                    raised = True
                except AttributeError:
                    # (Allowed: it went on, to the parts this test left out.)
                    raised = False
                self.assertEqual(raised, target not in allowed, (phase, target))
                self.assertEqual(ex.phase, target if target in allowed else phase)


@implementer(IClientSide)
class RecordingClientSide:
    """
    A client side that is not an HTTP/1.1 connection: it records what the
    exchange gives it, as an HTTP/2 stream would turn it into frames.
    """

    clientHost = b"192.0.2.9"
    clientName = "192.0.2.9:4000"
    localAuthority = b"l:80"
    protocol = "HTTP/3"
    headsAsBytes = False

    def __init__(self) -> None:
        self.privateKeys: set[Any] = set()
        self.closed = False
        self.calls: list[tuple[Any, ...]] = []
        self.held = False
        self.producer: Any = None

    def proxyHeaderFor(self, make: Any) -> bytes:
        return bytes(make(None, None))

    def requestTrailers(self, exchange: Exchange) -> Any:
        return None

    def holdRequest(self) -> None:
        self.held = True

    def releaseRequest(self) -> None:
        self.held = False

    def sendInterim(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        self.calls.append(("interim", status))

    def sendHead(self, exchange: Exchange, status: int, reason: bytes,
                 headers: list[tuple[bytes, bytes]] | None, raw: Any) -> Any:
        assert headers is not None
        self.calls.append(("head", status, dict(headers)))
        return planResponse(status, reason, headers, exchange.method, True, True)

    def flushHead(self, exchange: Exchange) -> None:
        pass

    def dropHeldHead(self, exchange: Exchange) -> bool:
        return False

    def sendBody(self, exchange: Exchange, data: bytes) -> None:
        self.calls.append(("body", data))

    def endResponse(self, exchange: Exchange, trailers: Any = None) -> None:
        self.calls.append(("end",) if trailers is None else ("end", trailers))

    def sendError(self, exchange: Exchange, status: int) -> None:
        self.calls.append(("error", status))

    def sendLocal(self, exchange: Exchange, status: int, headers: Any, body: bytes) -> None:
        self.calls.append(("local", status, tuple(headers), body, exchange.closeAfter))

    def cutResponse(self, exchange: Exchange) -> None:
        self.calls.append(("cut",))

    def upgradeSent(self, exchange: Exchange, connection: Any) -> None:
        self.calls.append(("upgradeSent",))

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
        self.factory = proxyFactory(self.reactor)

    def test_http11Provides(self) -> None:
        """
        The HTTP/1.1 client connection provides the interface.
        """
        client = connectClient(self.factory, StringTransport(peerAddress=CLIENT))
        self.assertTrue(verifyObject(IClientSide, client))

    def test_otherClientSide(self) -> None:
        """
        A client side of another protocol drives an exchange through its
        whole life: connect, send, stream the response, done.
        """
        side = RecordingClientSide()
        self.assertTrue(verifyObject(IClientSide, side))
        plan = planRequest(b"GET", b"/x", "1.1", [(b"Host", b"a")], True, False,
                           side.clientHost, b"l:80", self.factory.upstream.rules)
        ex = Exchange(side, self.factory, self.factory.upstream, plan, b"GET", b"/x", "1.1", self.reactor.seconds())
        ex.requestComplete()
        ex.start()
        self.assertEqual(ex.phase, CONNECTING)
        transport = StringTransport()
        backend = connectBackend(self.reactor, transport, 0)
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

    def localExchange(self, method: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[Exchange, RecordingClientSide]:
        """
        An exchange the balancer answers itself with a 301.
        """
        side = RecordingClientSide()
        upstream = self.factory.upstream
        plan = planRequest(method, b"/", "1.1", [(b"Host", b"a"), *headers], True, False,
                           side.clientHost, b"l:80", upstream.rules)
        ex = Exchange(side, self.factory, upstream, plan, method, b"/", "1.1", 0.0)
        ex.local = (301, [(b"Location", b"https://a/")], b"moved\n")
        return ex, side

    def test_localAnswer(self) -> None:
        """
        An exchange with a local answer gives it when its turn comes, with
        no backend connected and no slot taken, and keeps the connection.
        """
        ex, side = self.localExchange(b"GET", [])
        ex.requestComplete()
        ex.start()
        self.assertEqual(ex.phase, DONE)
        self.assertEqual(self.reactor.tcpClients, [])
        self.assertEqual(
            side.calls,
            [("local", 301, ((b"Location", b"https://a/"),), b"moved\n", False), ("done", DONE)],
        )
        self.assertEqual((ex.status, ex.bytesOut), (301, 6))
        self.assertEqual(self.factory.statuses, {"3xx": 1})

    def test_localAnswerBeforeBody(self) -> None:
        """
        A local answer to a request whose body is still to come closes the
        connection after it: the body is never read.
        """
        ex, side = self.localExchange(b"POST", [(b"Content-Length", b"5")])
        ex.start()
        self.assertEqual(side.calls[0][4], True)
        ex.requestBody(b"abc")
        self.assertEqual(ex.pending, None)

    def test_otherClientSideTimesOut(self) -> None:
        """
        The response deadline is given to the client side, which calls the
        exchange back: a 504 through the same interface.
        """
        side = RecordingClientSide()
        plan = planRequest(b"GET", b"/", "1.1", [(b"Host", b"a")], True, False,
                           side.clientHost, b"l:80", self.factory.upstream.rules)
        ex = Exchange(side, self.factory, self.factory.upstream, plan, b"GET", b"/", "1.1", self.reactor.seconds())
        ex.requestComplete()
        ex.start()
        _, _, dialFactory, _, _ = self.reactor.tcpClients[0]
        dialFactory.buildProtocol(None).makeConnection(StringTransport())
        [due] = [c[1] for c in side.calls if c[0] == "due"]
        self.assertEqual(due, self.reactor.seconds() + self.factory.upstream.responseTimeout)
        ex.timedOut()
        self.assertEqual(ex.phase, FAILED)
        self.assertIn(("error", 504), side.calls)


KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCH = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          b"Sec-WebSocket-Accept: " + websocketAccept(KEY) + b"\r\n\r\n")


class AbortRecordingTransport(StringTransport):
    """
    A string transport that says whether it was aborted.
    """

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        self.loseConnection()


class EdgeTests(SynchronousTestCase):
    """
    Paths a review found wanting, each driven by hand over a memory reactor.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def factory(self, **pool: Any) -> HTTPProxyFactory:
        return proxyFactory(self.reactor, **pool)

    def client(self, factory: HTTPProxyFactory) -> tuple[Any, AbortRecordingTransport]:
        transport = AbortRecordingTransport(peerAddress=CLIENT)
        return connectClient(factory, transport), transport

    def loggingFactory(self) -> tuple[HTTPProxyFactory, list[tuple[Any, ...]]]:
        """
        A factory whose access log is a sink recording each request line's
        fields, and those lines.
        """
        lines: list[tuple[Any, ...]] = []

        class Sink:
            def request(self, *fields: Any) -> None:
                lines.append(fields)

        factory = self.factory()
        factory.accessLog = Sink()  # type: ignore[assignment]
        return factory, lines

    def backend(self, index: int = -1) -> tuple[Any, AbortRecordingTransport]:
        transport = AbortRecordingTransport()
        return connectBackend(self.reactor, transport, index), transport

    def test_drainReachesTunnels(self) -> None:
        """
        A tunnel keeps its backend's closer: a drain's end (or a stop)
        closes it.
        """
        factory = self.factory()
        client, _ = self.client(factory)
        client.dataReceived(UPGRADE)
        backend, transport = self.backend()
        backend.dataReceived(SWITCH)
        b1 = factory.pool.get("b1")
        assert b1 is not None
        self.assertEqual(len(b1.closers), 1)
        self.assertEqual(b1.closeAll(), 1)
        self.assertTrue(transport.aborted)

    def test_bytesAfterResponse(self) -> None:
        """
        A backend that sends bytes after a complete response does not get
        the next request: its connection is closed, not pooled.
        """
        factory = self.factory()
        client, _ = self.client(factory)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        backend, transport = self.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL")
        self.assertEqual(len(factory.upstream.idle), 0)
        self.assertTrue(transport.disconnecting)
        other, otherTransport = self.client(factory)
        other.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertEqual(len(self.reactor.tcpClients), 2)

    def test_manyPipelinedRefusals(self) -> None:
        """
        Hundreds of pipelined requests answered at once (no backend) are
        served in a loop, not by recursion.
        """
        factory = self.factory()
        b1 = factory.pool.get("b1")
        assert b1 is not None
        b1.health = Health.DOWN
        client, transport = self.client(factory)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n" * 1000)
        self.assertEqual(transport.value().count(b"HTTP/1.1 503 "), 1000)

    def test_earlyResponseCloses(self) -> None:
        """
        A response that comes before the request body is complete says
        Connection: close, since the connection closes after it.
        """
        factory = self.factory()
        client, transport = self.client(factory)
        client.dataReceived(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        backend, _ = self.backend()
        backend.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 2\r\n\r\nno")
        self.assertIn(b"Connection: close\r\n", transport.value())
        self.assertTrue(transport.disconnecting)

    def test_closingClientBounded(self) -> None:
        """
        A client connection closing after its last response is aborted if
        it does not go within the idle timeout (a client that stops
        reading holds nothing).
        """
        factory = self.factory(timeouts={"idle": 30})
        client, transport = self.client(factory)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        backend, _ = self.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(transport.disconnecting)
        self.reactor.advance(29)
        self.assertFalse(transport.aborted)
        self.reactor.advance(2)
        self.assertTrue(transport.aborted)

    def test_errorsCloseWhenStopping(self) -> None:
        """
        During a soft stop an error answer says Connection: close too.
        """
        factory = self.factory()
        b1 = factory.pool.get("b1")
        assert b1 is not None
        b1.health = Health.DOWN
        client, transport = self.client(factory)
        factory.softStop()
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertIn(b"Connection: close\r\n", transport.value())

    def test_upgradeWithBody(self) -> None:
        """
        What follows an upgrade request's head (here its body) goes to the
        backend, and the client is read again, before any 101.
        """
        factory = self.factory()
        client, transport = self.client(factory)
        client.dataReceived(b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\n"
                            b"Upgrade: foo\r\nContent-Length: 4\r\n\r\nab")
        backend, backendTransport = self.backend()
        self.assertEqual(transport.producerState, "producing")
        client.dataReceived(b"cd")
        self.assertTrue(backendTransport.value().endswith(b"\r\n\r\nabcd"))

    def test_upgradeCountedLoggedAtClose(self) -> None:
        """
        An upgrade's 101 is counted (as 1xx) when it is relayed, and its
        access-log line is written only when the tunnel closes; a response
        that completes is counted and logged at once.
        """
        factory, lines = self.loggingFactory()
        client, _ = self.client(factory)
        client.dataReceived(UPGRADE)
        backend, transport = self.backend()
        backend.dataReceived(SWITCH)
        self.assertEqual((factory.statuses, lines), ({"1xx": 1}, []))
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        backend.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([(f[2], f[3]) for f in lines], [("/ws", 101)])
        self.assertEqual(factory.statuses, {"1xx": 1})
        client, _ = self.client(factory)
        client.dataReceived(b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
        backend, _ = self.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(factory.statuses, {"1xx": 1, "2xx": 1})
        self.assertEqual([(f[2], f[3]) for f in lines], [("/ws", 101), ("/ok", 200)])

    def test_abandonedLogged(self) -> None:
        """
        A request whose client left before the answer is access-logged with
        status 0 and counted.
        """
        factory, lines = self.loggingFactory()
        client, _ = self.client(factory)
        client.dataReceived(b"GET /gone HTTP/1.1\r\nHost: a\r\n\r\n")
        self.backend()
        from twisted.internet.error import ConnectionLost
        from twisted.python.failure import Failure

        client.connectionLost(Failure(ConnectionLost()))
        self.assertEqual([(f[2], f[3]) for f in lines], [("/gone", 0)])
        self.assertEqual(factory.abandoned, 1)
