"""
Unit tests of HTTP mode with no sockets and no real time: the protocol state
machine over L{StringTransport} and L{MemoryReactorClock}, the idle
connection pool, the PROXY headers, the parsing helpers and the new
configuration keys.
"""

from __future__ import annotations

from typing import Any

import attrs
from httptools import HttpParserError, HttpResponseParser
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.error import ConnectionDone, TimeoutError
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import Logger, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer  # type: ignore[import-untyped]

from lbtwist.config import ConfigError, KeepAlive, Sticky, parseConfig
from lbtwist.dial import Dialler
from lbtwist.http import HTTPProxyFactory, _backend, _client, _proxy
from lbtwist.http._errors import ERRORS_CLOSE, BadRequest
from lbtwist.http._plan import checkTransferEncoding, cookieValue, planWholeRequest
from lbtwist.http._pool import IdleConnections
from lbtwist.http._strict import (
    LOOSE_REQUEST_HEADS,
    LOOSE_RESPONSE_HEADS,
    refusesLooseHeads,
    requestParser,
)
from lbtwist.http._upstream import Upstream
from lbtwist.passtime import IReactorPassTime
from lbtwist.pool import BackendPool
from lbtwist.proxyprotocol import proxyHeaderV1, proxyHeaderV2
from lbtwist.routeconfig import Route, TimeoutOverrides
from lbtwist.writethrough import sendHeld

from .support import plainTCPTransport

GET = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n"
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def httpConfig(**pool: Any) -> Any:
    """
    A configuration of one HTTP listener and a pool of one backend.
    """
    body = {"backends": [{"name": "b1", "endpoint": "tcp:host=10.0.0.1:port=80"}], **pool}
    return parseConfig({"listeners": [{"listen": "tcp:80", "mode": "http"}],
                        "pools": {"web": body}})


CLIENT = IPv4Address("TCP", "192.0.2.7", 5555)


def proxyFactory(reactor: MemoryReactorClock, **pool: Any) -> HTTPProxyFactory:
    """
    An HTTP proxy factory on a memory reactor, for L{httpConfig}'s pool.
    """
    config = httpConfig(**pool)
    return HTTPProxyFactory(
        BackendPool(config.pools[0]), reactor, Dialler(reactor), config.listeners[0],
    )


def connectClient(factory: HTTPProxyFactory, transport: StringTransport) -> Any:
    """
    Connect a client protocol of C{factory} to C{transport} (its peer is the client).
    """
    proto = factory.buildProtocol(transport.getPeer())
    proto.makeConnection(transport)
    return proto


def connectBackend(reactor: MemoryReactorClock, transport: StringTransport, index: int = -1) -> Any:
    """
    Complete the memory reactor's backend connection attempt C{index} over C{transport}.
    """
    host, port, factory, _, _ = reactor.tcpClients[index]
    proto = factory.buildProtocol(IPv4Address("TCP", host, port))
    proto.makeConnection(transport)
    return proto


def clientAndBackend(
    request: bytes = GET, **pool: Any,
) -> tuple[Any, Any, StringTransport, Any, StringTransport]:
    """
    A proxy on a memory reactor, a client that sent C{request}, and the
    backend connection it went on: the reactor, the client protocol and
    its transport, the backend protocol and its transport.
    """
    reactor = MemoryReactorClock()
    factory = proxyFactory(reactor, **pool)
    transport = StringTransport(peerAddress=CLIENT)
    client = connectClient(factory, transport)
    client.dataReceived(request)
    backendTransport = StringTransport()
    backend = connectBackend(reactor, backendTransport)
    return reactor, client, transport, backend, backendTransport


class _TakingSocket:
    """
    A client socket double that takes up to C{take} bytes of each send.
    """

    take = 1 << 20

    def send(self, data: bytes, flags: int = 0) -> int:
        return min(self.take, len(data))

    def setsockopt(self, *args: Any) -> None:
        pass


def _recordingClientTransport(sock: Any, **state: Any) -> tuple[Any, list[bytes], list[Any]]:
    """
    A client's TCP transport over C{sock} (L{plainTCPTransport}, C{state}
    set on it), with the writes it queues and the producers registered
    with it, as they come.
    """
    queued: list[bytes] = []
    registered: list[Any] = []
    transport = plainTCPTransport(
        sock, queued.append, getPeer=lambda: CLIENT,
        getHost=lambda: IPv4Address("TCP", "127.0.0.1", 8080), **state)

    def register(producer: Any, streaming: bool) -> None:
        registered.append(producer)
        transport.producer = producer

    transport.registerProducer = register
    return transport, queued, registered


class ProxyStateTests(SynchronousTestCase):
    """
    The client and backend protocols, driven by hand.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()

    def makeFactory(self, **pool: Any) -> HTTPProxyFactory:
        """
        A factory on the memory reactor.
        """
        return proxyFactory(self.reactor, **pool)

    def connectClient(self, factory: HTTPProxyFactory) -> tuple[Any, StringTransport]:
        """
        A client connection with its transport.
        """
        transport = StringTransport(peerAddress=CLIENT)
        return connectClient(factory, transport), transport

    def connectBackend(self, index: int = -1) -> tuple[Any, StringTransport]:
        """
        Complete the pending backend connection attempt.
        """
        transport = StringTransport()
        return connectBackend(self.reactor, transport, index), transport

    def assertHeadTimesOut(self, factory: HTTPProxyFactory, after: float) -> StringTransport:
        """
        A head left unfinished on a new connection of C{factory} gets a 408
        C{after} seconds, not before.
        """
        client, transport = self.connectClient(factory)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost:")
        self.reactor.advance(after - 0.1)
        self.assertEqual(transport.value(), b"")
        self.reactor.advance(0.2)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 408 "))
        return transport

    def test_requestTimeout(self) -> None:
        """
        A head not finished within the request timeout gets a 408 and the
        connection is closed.
        """
        transport = self.assertHeadTimesOut(self.makeFactory(timeouts={"request": 5}), 5)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_silentConnectionClosed(self) -> None:
        """
        A connection that sends nothing is closed after the request timeout,
        with no response.
        """
        factory = self.makeFactory(timeouts={"request": 5})
        client, transport = self.connectClient(factory)
        self.reactor.advance(5)
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)

    def test_keepAliveIdleTimeout(self) -> None:
        """
        Between requests the idle timeout applies, not the request one,
        on time whether it is longer or shorter (the timer's wakes are not
        the request timeout's); a head begun still has the whole request
        timeout.
        """
        for request, idle in [(5, 30), (5, 2)]:
            factory = self.makeFactory(timeouts={"request": request, "idle": idle})
            client, transport = self.connectClient(factory)
            client.dataReceived(GET)
            backend, btransport = self.connectBackend()
            backend.dataReceived(OK)
            self.reactor.advance(idle - 0.1)
            self.assertFalse(transport.disconnecting, (request, idle))
            self.reactor.advance(0.2)
            self.assertTrue(transport.disconnecting, (request, idle))
            self.assertHeadTimesOut(factory, request)

    def test_listenerTimeouts(self) -> None:
        """
        A listener's own C{timeouts} replace its pool's for its clients,
        key by key; given new ones (a reload), its new connections have
        them.
        """
        config = parseConfig({
            "listeners": [{"listen": "tcp:80", "mode": "http",
                           "timeouts": {"idle": 2, "request": 3}}],
            "pools": {"web": {"timeouts": {"idle": 30, "request": 5},
                              "backends": [{"name": "b1", "endpoint": "tcp:host=10.0.0.1:port=80"}]}}})
        factory = HTTPProxyFactory(BackendPool(config.pools[0]), self.reactor,
                                   Dialler(self.reactor), config.listeners[0])
        self.assertHeadTimesOut(factory, 3)
        client, transport = self.connectClient(factory)
        client.dataReceived(GET)
        backend, _ = self.connectBackend()
        backend.dataReceived(OK)
        self.reactor.advance(1.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.2)
        self.assertTrue(transport.disconnecting)
        factory.setClientTimeouts(attrs.evolve(config.listeners[0],
                                               timeouts=TimeoutOverrides(idle=7)))
        self.assertHeadTimesOut(factory, 5)
        self.assertEqual((factory.idleTimeout, factory.requestTimeout), (7, 5))

    def test_exchangeAndReuse(self) -> None:
        """
        A response is relayed, the backend connection is pooled, and the
        next request reuses it without connecting again.
        """
        factory = self.makeFactory()
        client, transport = self.connectClient(factory)
        client.dataReceived(GET)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        backend, btransport = self.connectBackend()
        sent = btransport.value()
        self.assertTrue(sent.startswith(b"GET /x HTTP/1.1\r\nHost: a\r\n"))
        self.assertIn(b"X-Forwarded-For: 192.0.2.7\r\n", sent)
        backend.dataReceived(OK)
        self.assertEqual(transport.value(), OK)
        self.assertEqual(len(factory.upstream.idle), 1)
        btransport.clear()
        client.dataReceived(GET)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertTrue(btransport.value().startswith(b"GET /x"))
        self.assertEqual(factory.pool.get("b1").total, 2)  # type: ignore[union-attr]

    def test_backendAnswersInTLS(self) -> None:
        """
        A backend whose first bytes to a plain request are a TLS record (a
        TLS backend in a pool with no C{tls} block) fails the request with
        a 502 and a reason saying so, logged once for the backend however
        many requests it fails; other garbage is a malformed response.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        factory = self.makeFactory(retries=0)
        for answer in (b"\x15\x03\x03\x00\x02\x02\x0a", b"\x16\x03\x01\x00\x05hello"):
            client, transport = self.connectClient(factory)
            client.dataReceived(GET)
            backend, btransport = self.connectBackend()
            backend.dataReceived(answer)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 502 "), transport.value())
            self.assertTrue(btransport.disconnecting)
        told = [e for e in events if "answered in TLS" in e.get("log_format", "")
                and e.get("log_namespace", "").endswith("BackendConnection")]
        self.assertEqual([formatEvent(e) for e in told],
                         ["backend b1 answered in TLS: give the pool a tls: block"])
        self.assertEqual(factory.pool.get("b1").failures, {"response": 2})  # type: ignore[union-attr]
        client, transport = self.connectClient(factory)
        client.dataReceived(GET)
        backend, _ = self.connectBackend()
        backend.dataReceived(b"\x15\x02 not HTTP\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 502 "))
        whys = [e["why"] for e in events if "why" in e and e.get("backend") == "b1"]
        self.assertEqual(whys[:2], ["answered in TLS: give the pool a tls: block"] * 2)
        self.assertRegex(whys[2], "^malformed response: ")
        self.assertEqual(len(whys), 3)

    def test_responseTimeout(self) -> None:
        """
        No response head within the response timeout: 504, the backend
        connection is closed and not pooled.
        """
        factory = self.makeFactory(timeouts={"response": 3})
        client, transport = self.connectClient(factory)
        client.dataReceived(GET)
        backend, btransport = self.connectBackend()
        self.reactor.advance(3)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 504 Gateway Timeout\r\n"))
        self.assertTrue(btransport.disconnecting)
        self.assertEqual(len(factory.upstream.idle), 0)
        self.assertEqual(factory.pool.get("b1").failures, {"timeout": 1})  # type: ignore[union-attr]

    def test_connectTimeout(self) -> None:
        """
        A backend that does not accept within the connect timeout is given
        up; with no other backend the client gets a 503.
        """
        factory = self.makeFactory(timeouts={"connect": 2})
        client, transport = self.connectClient(factory)
        client.dataReceived(GET)
        host, port, dialFactory, timeout, bind = self.reactor.tcpClients[0]
        self.assertEqual(timeout, 2.0)
        # The reactor enforces connectTCP's timeout (a memory reactor does
        # not): this is what it reports.
        dialFactory.clientConnectionFailed(
            self.reactor.connectors[0], Failure(TimeoutError("connect timed out"))
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertEqual(factory.pool.get("b1").failures, {"timeout": 1})  # type: ignore[union-attr]

    def test_maxRequests(self) -> None:
        """
        A backend connection that served C{max-requests} is closed, not
        pooled.
        """
        factory = self.makeFactory(http={"keepalive": {"max-requests": 2}})
        client, transport = self.connectClient(factory)
        client.dataReceived(GET)
        backend, btransport = self.connectBackend()
        backend.dataReceived(OK)
        client.dataReceived(GET)
        self.assertFalse(btransport.disconnecting)
        backend.dataReceived(OK)
        self.assertTrue(btransport.disconnecting)
        self.assertEqual(len(factory.upstream.idle), 0)

    def test_backpressure(self) -> None:
        """
        During an exchange each side is the other's producer: a full client
        pauses the backend, a full backend pauses the client, and the
        registrations end with the exchange.  The backend is registered
        with the client's transport once a write to the client has to
        queue (a transport double queues every write).
        """
        factory = self.makeFactory()
        client, transport = self.connectClient(factory)
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        backend, btransport = self.connectBackend()
        self.assertIs(btransport.producer, client)
        self.assertIsNone(transport.producer)
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
        self.assertIs(transport.producer, backend)
        backend.pauseProducing()
        self.assertEqual(btransport.producerState, "paused")
        backend.resumeProducing()
        client.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        client.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        client.dataReceived(b"67890")
        self.assertTrue(btransport.value().endswith(b"\r\n\r\n1234567890"))
        backend.dataReceived(b"!!")
        self.assertTrue(transport.value().endswith(b"\r\n\r\nok!!"))
        self.assertIsNone(transport.producer)
        self.assertIsNone(btransport.producer)

    def test_writtenThroughRegistersNothing(self) -> None:
        """
        A response the client's socket takes whole registers no producer
        on its transport; once a write has to queue (the socket takes part
        of it), the backend is registered, and let go at the exchange's end.
        """
        sock = _TakingSocket()
        transport, queued, registered = _recordingClientTransport(sock)
        factory = self.makeFactory()
        client = connectClient(factory, transport)
        client.dataReceived(GET)
        backend, _ = self.connectBackend()
        backend.dataReceived(OK)
        self.assertEqual((queued, registered), ([], []))
        sock.take = 10
        client.dataReceived(GET)
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
        self.assertEqual(registered, [backend])
        self.assertIs(transport.producer, backend)
        self.assertEqual(len(queued), 1)
        backend.dataReceived(b"!!")
        self.assertIsNone(transport.producer)

    def test_heldThenQueuedRegisters(self) -> None:
        """
        A response held for the reactor pass's end (on a lean connection)
        registers nothing while held; if the client's socket then takes
        only part of it, the backend is registered before the rest queues.
        """
        sock = _TakingSocket()
        sock.take = 10
        transport, queued, registered = _recordingClientTransport(
            sock, holders=[], held=None, heldQueues=None, _tempDataBuffer=[])
        factory = self.makeFactory()
        client = connectClient(factory, transport)
        client.dataReceived(GET)
        backend, _ = self.connectBackend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok")
        self.assertEqual((queued, registered, transport.holders), ([], [], [transport]))
        sendHeld(transport)
        self.assertEqual(registered, [backend])
        self.assertEqual(len(queued), 1)

    def test_bufferedWhileConnecting(self) -> None:
        """
        While the backend is being connected the client is not read, and
        the body read so far is sent once connected.
        """
        factory = self.makeFactory()
        client, transport = self.connectClient(factory)
        client.dataReceived(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n12345")
        self.assertEqual(transport.producerState, "paused")
        backend, btransport = self.connectBackend()
        self.assertTrue(btransport.value().endswith(b"\r\n\r\n12345"))
        self.assertEqual(transport.producerState, "producing")

    def test_clientGoneMidExchange(self) -> None:
        """
        A client that disconnects during an exchange takes the backend
        connection with it: it is closed, not pooled.
        """
        factory = self.makeFactory()
        client, transport = self.connectClient(factory)
        client.dataReceived(GET)
        backend, btransport = self.connectBackend()
        client.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(btransport.disconnecting)
        self.assertEqual(len(factory.upstream.idle), 0)
        self.assertEqual(factory.pool.get("b1").active, 0)  # type: ignore[union-attr]

    def test_http10Client(self) -> None:
        """
        An HTTP/1.0 client gets a chunked response unchunked, and the
        connection is closed after it.
        """
        factory = self.makeFactory()
        client, transport = self.connectClient(factory)
        client.dataReceived(b"GET / HTTP/1.0\r\n\r\n")
        backend, btransport = self.connectBackend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        self.assertEqual(transport.value(), b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nabc")
        self.assertTrue(transport.disconnecting)

    def test_versionsRead(self) -> None:
        """
        Each request's exchange gets the HTTP version its request line
        says, however the requests come: one per read, pipelined in one
        read (1.1 then 1.0, and 1.0 then 1.1), a head in pieces (one whose
        second read has " HTTP/1.1" where the first read's version was), a
        request line cut after its target, blank lines before a request,
        versions other than 1.0 and 1.1, and HTTP/0.9 lines made to put
        " HTTP/1.1" where a 1.1 line's version would be.
        """
        cases: list[tuple[list[bytes], list[str]]] = [
            ([b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n"], ["1.1"]),
            ([b"GET /a HTTP/1.0\r\n\r\n"], ["1.0"]),
            ([b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.0\r\n\r\n"], ["1.1", "1.0"]),
            ([b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n"],
             ["1.0", "1.1"]),
            ([b"GET /a HTTP/1.0\r\nHo", b"st: a\r\n\r\n"], ["1.0"]),
            ([b"GET /a", b" HTTP/1.0\r\n\r\n"], ["1.0"]),
            # (Where an HTTP/1.1 line's version would be, in a read that
            # did not begin the head.)
            ([b"GET /a HTTP/1.0\r\n", b"X-Pad: HTTP/1.1\r\n\r\n"], ["1.0"]),
            ([b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HT", b"TP/1.0\r\n\r\n"], ["1.1", "1.0"]),
            ([b"\r\nGET /a HTTP/1.0\r\n\r\n"], ["1.0"]),
            ([b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n\r\nGET /b HTTP/1.0\r\n\r\n"], ["1.1", "1.0"]),
            ([b"GET /HTTP/1.1 HTTP/1.0\r\n\r\n"], ["1.0"]),
            ([b"GET /a HTTP/1.9\r\nHost: a\r\n\r\n"], ["1.9"]),
            # An HTTP/0.9 line whose target is "HTTP/1.1" (CONNECT's
            # authority form takes it), moved by spaces before the target
            # or blank lines before the method to where a one-space 1.1
            # line's version would be.
            ([b"CONNECT" + b" " * 10 + b"HTTP/1.1\r\n\r\n"], ["0.9"]),
            ([b"\n" * 9 + b"CONNECT HTTP/1.1\r\n\r\n"], ["0.9"]),
            ([b"\r\n" * 4 + b"\rCONNECT HTTP/1.1\r\n\r\n"], ["0.9"]),
            ([b"GET  /a HTTP/1.1\r\nHost: a\r\n\r\n"], ["1.1"]),
        ]
        for reads, expected in cases:
            factory = self.makeFactory()
            versions: list[str] = []
            exchangeFor = factory.exchangeFor

            def recording(side: Any, method: bytes, url: bytes, version: str, *rest: Any,
                          versions: list[str] = versions, exchangeFor: Any = exchangeFor) -> Any:
                versions.append(version)
                return exchangeFor(side, method, url, version, *rest)

            wholeExchange = factory.wholeExchange

            def recordingWhole(side: Any, data: bytes, started: float,
                               versions: list[str] = versions,
                               wholeExchange: Any = wholeExchange) -> Any:
                ex = wholeExchange(side, data, started)
                if ex is not None:
                    versions.append(ex.version)
                return ex

            factory.exchangeFor = recording  # type: ignore[method-assign]
            factory.wholeExchange = recordingWhole  # type: ignore[method-assign]
            client, transport = self.connectClient(factory)
            for data in reads:
                client.dataReceived(data)
            self.assertEqual(versions, expected, reads)

    def test_http09AsHTTP11Refused505(self) -> None:
        """
        An HTTP/0.9 CONNECT line that puts " HTTP/1.1" where an HTTP/1.1
        line's version would be (ten spaces before its target "HTTP/1.1")
        is refused as the HTTP/0.9 request it is, with a 505, not as an
        HTTP/1.1 CONNECT.
        """
        client, transport = self.connectClient(self.makeFactory())
        client.dataReceived(b"CONNECT" + b" " * 10 + b"HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 505 "), transport.value())


    def test_h2cPrefaceWithoutH2c(self) -> None:
        """
        An HTTP/2 connection preface on a listener without h2c is refused
        with a 400 and a log line that say so in an operator's words
        (llhttp's own are "Pause on PRI/Upgrade"), and nothing is forwarded.
        """
        factory = self.makeFactory()
        events: list[dict[str, Any]] = []
        factory.log = Logger(observer=events.append)
        client, transport = self.connectClient(factory)
        client.dataReceived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        answer = transport.value()
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer)
        self.assertIn(b"Connection: close\r\n", answer)
        self.assertTrue(answer.endswith(
            b"\r\n\r\n400 Bad Request: an HTTP/2 (h2c) preface on a listener without h2c:"
            b" set http2: true on the listener.\n"))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.reactor.tcpClients, [])
        [event] = [e for e in events if "refused" in e["log_format"]]
        self.assertEqual(
            formatEvent(event),
            "refused request from 192.0.2.7:5555: 400 (an HTTP/2 (h2c) preface on a listener"
            " without h2c: set http2: true on the listener)",
        )

    def test_malformedKeepsGenericAnswer(self) -> None:
        """
        Any other request llhttp rejects still gets the generic 400, and
        the log keeps llhttp's reason.
        """
        factory = self.makeFactory()
        events: list[dict[str, Any]] = []
        factory.log = Logger(observer=events.append)
        client, transport = self.connectClient(factory)
        client.dataReceived(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        self.assertEqual(transport.value(), ERRORS_CLOSE[400])
        [event] = [e for e in events if "refused" in e["log_format"]]
        self.assertNotIn("h2c", formatEvent(event))


class SlotsTests(SynchronousTestCase):
    """
    The client and backend connections keep what they set in slots (faster
    on the hot path than an instance dictionary): one attribute added
    without its slot shows here.
    """

    def test_exchangesInSlots(self) -> None:
        """
        Through keep-alive exchanges with bodies both ways, a chunked
        response, a timeout rescheduled and a close, neither connection
        puts anything in its instance dictionary (the backend only the
        dialler's notification, a default of L{lbtwist.dial.BackendProtocol}),
        nor does their factory.
        """
        reactor, client, transport, backend, backendTransport = clientAndBackend()
        backend.dataReceived(OK)
        client.dataReceived(b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        backend.dataReceived(
            b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n")
        reactor.advance(1)
        self.assertEqual(transport.value().count(b"HTTP/1.1 20"), 2)
        self.assertEqual(backendTransport.value().count(b"HTTP/1.1\r\n"), 2)
        client.connectionLost(Failure(ConnectionDone()))
        backend.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(vars(client), {})
        self.assertLessEqual(set(vars(backend)), {"_whenConnected"})
        self.assertEqual(vars(client.factory), {})


class HeadSizeTests(SynchronousTestCase):
    """
    A request head's fields, and a chunked body's trailers with them, are
    held to C{max-header-size} exactly, however they are spelled and read.
    """

    limit = 256

    def fields(self, size: int, spaced: bool) -> bytes:
        """
        Header lines whose fields count C{size} (each name and value, and 4
        for its separator and line end): a Host, then short fields, spelled
        with or without a space after the colon.
        """
        fields = [(b"Host", b"a")]
        counted = 9
        i = 0
        while size - counted > 12:
            fields.append((b"x%02d" % i, b"v"))
            counted += 8
            i += 1
        fields.append((b"y", b"v" * (size - counted - 5)))
        colon = b": " if spaced else b":"
        return b"".join(n + colon + v + b"\r\n" for n, v in fields)

    def send(
        self, data: bytes, pieces: int, http: dict[str, Any] | None = None,
    ) -> tuple[Any, StringTransport]:
        reactor = MemoryReactorClock()
        factory = proxyFactory(reactor, http={"max-header-size": self.limit, **(http or {})})
        transport = StringTransport(peerAddress=CLIENT)
        client = connectClient(factory, transport)
        step = -(-len(data) // pieces)
        for start in range(0, len(data), step):
            client.dataReceived(data[start:start + step])
        return reactor, transport

    def test_head(self) -> None:
        """
        A head is refused with 431 exactly when its fields count more than
        the limit: read whole, in two pieces or a byte at a time, with or
        without a space after each colon (a field then takes a byte less
        than it counts).
        """
        for size in (self.limit - 1, self.limit, self.limit + 1, self.limit + 40):
            for spaced in (True, False):
                for pieces in (1, 2, 10_000):
                    data = b"GET / HTTP/1.1\r\n" + self.fields(size, spaced) + b"\r\n"
                    reactor, transport = self.send(data, pieces)
                    refused = transport.value().startswith(b"HTTP/1.1 431 ")
                    self.assertEqual((refused, len(reactor.tcpClients)),
                                     (size > self.limit, 0 if size > self.limit else 1),
                                     (size, spaced, pieces))

    def test_requestLine(self) -> None:
        """
        A request target is refused with 414 exactly when it is longer than
        C{max-request-line}, read whole, in two pieces or a byte at a time,
        whether that limit is above C{max-header-size} or well below it.
        """
        for limit in (300, 100):
            for length in (limit - 1, limit, limit + 1, limit + 40):
                for pieces in (1, 2, 10_000):
                    data = b"GET /" + b"a" * (length - 1) + b" HTTP/1.1\r\nHost: a\r\n\r\n"
                    reactor, transport = self.send(data, pieces, {"max-request-line": limit})
                    refused = transport.value().startswith(b"HTTP/1.1 414 ")
                    self.assertEqual((refused, len(reactor.tcpClients)),
                                     (length > limit, 0 if length > limit else 1),
                                     (limit, length, pieces))

    def test_trailers(self) -> None:
        """
        A chunked body's trailers count with the head's fields: the request
        is refused with 431 exactly when both together count more than the
        limit.
        """
        head = (b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"2\r\nok\r\n0\r\n")
        # (Host and Transfer-Encoding count 9 + 28.)
        for size in (self.limit - 37, self.limit - 36):
            trailers = b"t: " + b"v" * (size - 5) + b"\r\n"
            for pieces in (1, 3):
                _, transport = self.send(head + trailers + b"\r\n", pieces)
                self.assertEqual(b"HTTP/1.1 431 " in transport.value(), size > self.limit - 37,
                                 (size, pieces))

    def test_responseHead(self) -> None:
        """
        A response head is refused (a 502 for the client) exactly when its
        fields and reason count more than C{max-response-header-size},
        however spelled and read.
        """
        for size in (self.limit - 1, self.limit, self.limit + 1, self.limit + 40):
            for spaced in (True, False):
                for pieces in (1, 2, 10_000):
                    reactor = MemoryReactorClock()
                    factory = proxyFactory(
                        reactor, http={"max-response-header-size": self.limit})
                    transport = StringTransport(peerAddress=CLIENT)
                    connectClient(factory, transport).dataReceived(GET)
                    backend = connectBackend(reactor, StringTransport())
                    # (The reason, "OK", counts 2; Content-Length: 0, 19.)
                    data = (b"HTTP/1.1 200 OK\r\n" + self.fields(size - 21, spaced)
                            + b"Content-Length: 0\r\n\r\n")
                    step = -(-len(data) // pieces)
                    for start in range(0, len(data), step):
                        backend.dataReceived(data[start:start + step])
                    status = transport.value()[:12]
                    self.assertEqual(status, b"HTTP/1.1 502" if size > self.limit
                                     else b"HTTP/1.1 200", (size, spaced, pieces))

    def test_responseHeadReadAgain(self) -> None:
        """
        A response head over C{max-response-header-size} that is read
        again as fields (a chunked one, an interim one) fails its exchange
        as over it, as any other (it was taken for a malformed response).
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        over = self.fields(self.limit + 40, True)
        for data in (b"HTTP/1.1 200 OK\r\n" + over + b"Transfer-Encoding: chunked\r\n\r\n",
                     b"HTTP/1.1 103 Early Hints\r\n" + over + b"\r\n"):
            del events[:]
            reactor = MemoryReactorClock()
            factory = proxyFactory(reactor, http={"max-response-header-size": self.limit})
            transport = StringTransport(peerAddress=CLIENT)
            connectClient(factory, transport).dataReceived(GET)
            connectBackend(reactor, StringTransport()).dataReceived(data)
            failed = [formatEvent(e) for e in events if "failed" in e.get("log_format", "")]
            self.assertEqual((transport.value()[:12], failed),
                             (b"HTTP/1.1 502", [f"backend b1 failed {CLIENT.host}:{CLIENT.port}: "
                                                f"response head over {self.limit} bytes"]),
                             data[:12])

    def test_pipelinedAfterBody(self) -> None:
        """
        A request whose head begins in the read that ends the body before
        it, and ends in a later read, is held to the limits by its own
        bytes, not the body's: within them it is served (it was refused
        with 414), and a head that goes on past them in later reads is
        still refused, with 431.
        """
        body = 3 * (self.limit + 8192)
        first = b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % body
        for rest, refused in ((b"st: a\r\n\r\n", False),
                              (b"st: a\r\nx: " + b"v" * (self.limit + 8192) + b"\r\n", True)):
            reactor = MemoryReactorClock()
            factory = proxyFactory(reactor, http={"max-header-size": self.limit})
            transport = StringTransport(peerAddress=CLIENT)
            client = connectClient(factory, transport)
            client.dataReceived(first)
            backend = connectBackend(reactor, StringTransport())
            client.dataReceived(b"x" * body + b"GET /second HTTP/1.1\r\nHo")
            client.dataReceived(rest)
            backend.dataReceived(OK)
            self.assertEqual(
                (transport.value().count(b"HTTP/1.1 200 "),
                 transport.value().count(b"HTTP/1.1 4")),
                (1, 1 if refused else 0), refused)
            self.assertEqual(b"HTTP/1.1 431 " in transport.value(), refused)
            if not refused:
                # The second request went to the backend.
                backend.dataReceived(OK)
                self.assertEqual(transport.value().count(b"HTTP/1.1 200 "), 2)

    def test_afterInterim(self) -> None:
        """
        A final response head that begins in the read of an interim
        response before it, and ends in a later read, is held to
        C{max-response-header-size} by its own bytes, not the interim
        response's: within it, it is relayed (it failed the exchange).
        """
        reactor = MemoryReactorClock()
        factory = proxyFactory(reactor, http={"max-response-header-size": self.limit})
        transport = StringTransport(peerAddress=CLIENT)
        connectClient(factory, transport).dataReceived(GET)
        backend = connectBackend(reactor, StringTransport())
        # (Its reason and field count limit - 19; it takes limit - 2 bytes.)
        hints = b"HTTP/1.1 103 Early Hints\r\nLink: <" + b"a" * (self.limit - 40) + b">\r\n\r\n"
        backend.dataReceived(hints + b"HTTP/1.1 200 OK\r\nCont")
        backend.dataReceived(b"ent-Length: 2\r\n\r\nok")
        self.assertEqual(transport.value(),
                         hints + b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def test_afterHeadReply(self) -> None:
        """
        A reply to HEAD is relayed as it came whatever follows it in the
        same read (a head over C{max-response-header-size}, whole or not,
        or bytes that are no response): those bytes are dropped, unmeasured
        and unparsed, and the backend connection, which sent more than it
        was asked for, is closed rather than reused.
        """
        over = (b"HTTP/1.1 200 OK\r\n" + self.fields(self.limit + 40, True)
                + b"Content-Length: 0\r\n\r\n")
        for follows in (b"", over, over[:-2], b"xyz\r\n\r\n"):
            reactor = MemoryReactorClock()
            factory = proxyFactory(reactor, http={"max-response-header-size": self.limit})
            transport = StringTransport(peerAddress=CLIENT)
            connectClient(factory, transport).dataReceived(
                b"HEAD /x HTTP/1.1\r\nHost: a\r\n\r\n")
            backendTransport = StringTransport()
            backend = connectBackend(reactor, backendTransport)
            backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n" + follows)
            self.assertEqual(
                (transport.value(), backendTransport.disconnecting),
                (b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", bool(follows)),
                follows[:20])


class BytesAfterResponseTests(SynchronousTestCase):
    """
    A backend connection that sends more than the response asked for is
    closed rather than pooled.
    """

    def test_messageAfterResponse(self) -> None:
        """
        Bytes after a response in its read, a whole message, the beginning
        of a head or a few bytes of one, close the backend connection: the
        response goes to the client whole, and the next request gets
        another connection (the pooled one would read the next response as
        the rest of those bytes).
        """
        for follows in (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nzz",
                        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n", b"HTT"):
            reactor, client, transport, backend, backendTransport = clientAndBackend()
            backend.dataReceived(OK + follows)
            self.assertEqual(
                (transport.value(), backendTransport.disconnecting),
                (OK, True), follows)
            client.dataReceived(GET)
            self.assertEqual(len(reactor.tcpClients), 2, follows)

    def test_messageAfterResponseToWaitingClient(self) -> None:
        """
        Bytes after a response in its read never go to the request that
        takes the connection as that response ends (a client waiting at the
        backend's maxconn, woken then): a response its backend sent before
        that request went is not its answer.  The connection closes, and
        the request goes again on a new one; whether the response's body
        ended in the read llhttp parsed, in one relayed as it came, or in a
        head read again as fields (a chunked one).
        """
        extra = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nPOISON"
        for reads in ([OK + extra],
                      [b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nok", b"ok" + extra],
                      [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                       + extra]):
            reactor, client, _, backend, backendTransport = clientAndBackend(
                backends=[{"name": "b1", "endpoint": "tcp:host=10.0.0.1:port=80", "maxconn": 1}])
            waiting = StringTransport(peerAddress=CLIENT)
            connectClient(client.factory, waiting).dataReceived(GET)
            for data in reads:
                backend.dataReceived(data)
            self.assertEqual((waiting.value(), backendTransport.disconnecting), (b"", True), reads)
            backend.connectionLost(Failure(ConnectionDone()))
            again = connectBackend(reactor, StringTransport())
            again.dataReceived(OK)
            self.assertEqual((waiting.value(), len(reactor.tcpClients)), (OK, 2), reads)


class HeadAsBytesTests(SynchronousTestCase):
    """
    A usual response head read whole in one read goes on as its bytes; one
    read in pieces, one that needs its fields (an interim response, a
    chunked body whose trailers only fields give), goes on as fields.
    """

    head = (b"HTTP/1.1 200 OK\r\nx-a:1\r\nCONTENT-length: 2\r\nConnection:  keep-alive\r\n"
            b"X-B:  b \r\n\r\n")
    # The same head, as fields.
    fields = b"HTTP/1.1 200 OK\r\nx-a: 1\r\nCONTENT-length: 2\r\nX-B: b \r\n\r\n"

    def test_asSent(self) -> None:
        """
        A head read whole goes on as it came (its spacing, its spelling, its
        Connection, which says what the client's does), and the next one
        on the same backend connection too.
        """
        reactor, client, transport, backend, _ = clientAndBackend()
        backend.dataReceived(self.head + b"ok")
        client.dataReceived(GET)
        backend.dataReceived(self.head + b"ok")
        self.assertEqual(transport.value(), (self.head + b"ok") * 2)
        self.assertEqual(len(reactor.tcpClients), 1)

    def test_inPieces(self) -> None:
        """
        A head read in pieces goes on as fields; the next, read whole, as
        it came.
        """
        _, client, transport, backend, _ = clientAndBackend()
        backend.dataReceived(self.head[:20])
        backend.dataReceived(self.head[20:] + b"ok")
        client.dataReceived(GET)
        backend.dataReceived(self.head + b"ok")
        self.assertEqual(transport.value(), self.fields + b"ok" + self.head + b"ok")

    def test_inTurn(self) -> None:
        """
        A backend whose heads come whole and in pieces in turn has each read
        by the parser of its kind, kept between responses: none is made.
        """
        _, client, transport, backend, _ = clientAndBackend()
        made = []

        def counting(protocol: Any) -> Any:
            made.append(protocol)
            return HttpResponseParser(protocol)

        for whole in (True, False, True, False):
            if not whole:
                backend.dataReceived(self.head[:20])
                backend.dataReceived(self.head[20:] + b"ok")
            else:
                backend.dataReceived(self.head + b"ok")
            self.patch(_backend, "HttpResponseParser", counting)
            client.dataReceived(GET)
        self.assertEqual(transport.value(), (self.head + b"ok" + self.fields + b"ok") * 2)
        self.assertEqual(made, [])

    def test_unusual(self) -> None:
        """
        A head whose Connection is not the client's goes on from its
        fields: the backend's Connection goes, the client's comes.
        """
        _, client, transport, backend, _ = clientAndBackend()
        client.dataReceived(b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        backend.dataReceived(self.head + b"ok")
        backend.dataReceived(self.head + b"ok")
        self.assertEqual(transport.value(), self.head + b"ok" + self.fields[:-2]
                         + b"Connection: close\r\n\r\nok")

    def test_chunkedWithTrailers(self) -> None:
        """
        A chunked response read whole is read again as fields, its
        trailers relayed to a client that takes them; from then on, heads
        from that backend connection go on as fields.
        """
        _, client, transport, backend, _ = clientAndBackend(
            b"GET /t HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n")
        client.dataReceived(GET)
        backend.dataReceived(
            b"HTTP/1.1 200 OK\r\nX-A:1\r\nTRANSFER-ENCODING: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\nX-Sum: 9\r\n\r\n")
        backend.dataReceived(self.head + b"ok")
        self.assertEqual(
            transport.value(),
            b"HTTP/1.1 200 OK\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"2\r\nok\r\n0\r\nx-sum: 9\r\n\r\n" + self.fields + b"ok")

    def test_emptyLinesFirst(self) -> None:
        """
        A head after empty lines (llhttp skips CR and LF before a status
        line), the first on its connection or a pooled one's, goes on as
        llhttp read it, from its fields: its bytes are not those from the
        start of the read to its first empty line.
        """
        for before in (b"\r\n", b"\r\n\r\n", b"\n", b"\r\n\r\n\r\n"):
            _, client, transport, backend, _ = clientAndBackend()
            backend.dataReceived(before + self.head + b"ok")
            client.dataReceived(GET)
            backend.dataReceived(before + self.head + b"ok")
            self.assertEqual(transport.value(), (self.fields + b"ok") * 2, before)

    def test_otherProtocol(self) -> None:
        """
        A status line of another protocol that llhttp takes (C{ICE/1.0})
        goes on with its reason as llhttp read it.
        """
        _, _, transport, backend, _ = clientAndBackend()
        backend.dataReceived(b"ICE/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(transport.value(),
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    def test_interim(self) -> None:
        """
        An interim response and the final one in the same read go on,
        each from its fields.
        """
        _, _, transport, backend, _ = clientAndBackend()
        backend.dataReceived(b"HTTP/1.1 103 Early Hints\r\nLink:</s>\r\n\r\n"
                             + self.head + b"ok")
        self.assertEqual(transport.value(),
                         b"HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\n" + self.fields + b"ok")

    def test_looseParser(self) -> None:
        """
        Heads go on as their bytes only if llhttp refuses every loose shape
        of a head (a bare LF or CR, a folded line, whitespace before a
        colon): the installed one does; one that took any would not do.
        """
        self.assertTrue(refusesLooseHeads())

        class Taking:
            def __init__(self, protocol: Any) -> None:
                pass

            def feed_data(self, data: bytes) -> None:
                if data == taken:
                    return
                raise HttpParserError("refused")

        for taken in LOOSE_RESPONSE_HEADS:
            self.assertFalse(refusesLooseHeads(Taking), taken)
        # And of a request head, as a client connection's parser is set.
        self.assertTrue(refusesLooseHeads(requestParser, LOOSE_REQUEST_HEADS))
        for taken in LOOSE_REQUEST_HEADS:
            self.assertFalse(refusesLooseHeads(Taking, LOOSE_REQUEST_HEADS), taken)


class WholeHeadTests(SynchronousTestCase):
    """
    A usual request head that is all of a read goes to the backend as it
    came (L{lbtwist.http._plan.planWholeRequest}); any other head, and a
    head in pieces, as fields.
    """

    head = b"GET /a HTTP/1.1\r\nhost:a\r\nConnection:  keep-alive\r\nX-B:  b \r\n"
    # As sent to the backend: the head as it came, without its Connection.
    sent = (b"GET /a HTTP/1.1\r\nhost:a\r\nX-B:  b \r\nX-Forwarded-For: 192.0.2.7\r\n"
            b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n")
    # As fields.
    fields = (b"GET /a HTTP/1.1\r\nhost: a\r\nX-B: b \r\nX-Forwarded-For: 192.0.2.7\r\n"
              b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n")

    def test_asSent(self) -> None:
        """
        A usual head goes on as it came, and the next one on the same
        connection too.
        """
        _, client, transport, backend, btransport = clientAndBackend(self.head + b"\r\n")
        backend.dataReceived(OK)
        client.dataReceived(self.head + b"\r\n")
        backend.dataReceived(OK)
        self.assertEqual(btransport.value(), self.sent * 2)
        self.assertEqual(transport.value(), OK * 2)
        # An idle connection keeps nothing of its last read.
        self.assertIsNone(client._fresh)

    def test_oneParser(self) -> None:
        """
        A connection whose requests all come whole makes one parser, of
        whole heads, and no fields' parser.
        """
        made: list[Any] = []

        def counted(callbacks: Any) -> Any:
            made.append(callbacks)
            return requestParser(callbacks)

        self.patch(_client, "requestParser", counted)
        _, client, _, backend, btransport = clientAndBackend(self.head + b"\r\n")
        backend.dataReceived(OK)
        client.dataReceived(self.head + b"\r\n")
        self.assertEqual(btransport.value(), self.sent * 2)
        self.assertEqual(len(made), 1)
        self.assertIsNot(made[0], client)

    def test_readOnce(self) -> None:
        """
        A head in one read that is not a usual one (here, with a body) is
        read once, as fields, by the connection's one parser (none of whole
        heads is made for it), and served as before; so is every later head
        of its connection.
        """
        made: list[Any] = []

        def counted(callbacks: Any) -> Any:
            made.append(callbacks)
            return requestParser(callbacks)

        self.patch(_client, "requestParser", counted)
        post = self.head.replace(b"GET", b"POST") + b"Content-Length: 2\r\n\r\n"
        _, client, transport, backend, btransport = clientAndBackend(post)
        self.assertEqual(made, [client])
        client.dataReceived(b"ok")
        backend.dataReceived(OK)
        client.dataReceived(self.head + b"\r\n")
        backend.dataReceived(OK)
        self.assertEqual(
            btransport.value(),
            self.fields.replace(b"GET", b"POST").replace(
                b"b \r\n", b"b \r\nContent-Length: 2\r\n") + b"ok" + self.fields)
        self.assertEqual(transport.value(), OK * 2)
        self.assertEqual(made, [client])
        self.assertFalse(client._wholeHeads)

    def test_inPieces(self) -> None:
        """
        A head in pieces is read as fields; the connection's next head,
        whole, as it came.
        """
        reactor = MemoryReactorClock()
        client = connectClient(proxyFactory(reactor), StringTransport(peerAddress=CLIENT))
        client.dataReceived(self.head[:10])
        client.dataReceived(self.head[10:] + b"\r\n")
        btransport = StringTransport()
        backend = connectBackend(reactor, btransport)
        backend.dataReceived(OK)
        client.dataReceived(self.head + b"\r\n")
        self.assertEqual(btransport.value(), self.fields + self.sent)

    def test_pipelined(self) -> None:
        """
        Two heads in one read are read as fields, and served in turn.
        """
        _, client, transport, backend, btransport = clientAndBackend((self.head + b"\r\n") * 2)
        backend.dataReceived(OK)
        backend.dataReceived(OK)
        self.assertEqual(btransport.value(), self.fields * 2)
        self.assertEqual(transport.value(), OK * 2)

    def test_pipelinedHeld(self) -> None:
        """
        A head read whole while the request before it is answered waits
        for that answer, and the client is not read meanwhile, as for a
        head read as fields.
        """
        _, client, transport, backend, btransport = clientAndBackend(self.head + b"\r\n")
        self.assertEqual(transport.producerState, "producing")
        client.dataReceived(self.head + b"\r\n")
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(btransport.value(), self.sent)
        backend.dataReceived(OK)
        self.assertEqual(btransport.value(), self.sent * 2)
        backend.dataReceived(OK)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(transport.value(), OK * 2)

    def test_http09(self) -> None:
        """
        A read whose request line is HTTP/0.9 (llhttp ends it at a CR or a
        bare LF, and reads what follows as fields, whatever " HTTP/1.1"
        they hold) is refused with a 505, as one read as fields is:
        nothing of it reaches a backend.
        """
        for raw in (b"GET /\r\n\r\n", b"GET /\r\nX:y\r\nb:c HTTP/1.1\r\nHost: a\r\n\r\n",
                    b"GET /\n\r\nGET\t/admin HTTP/1.1\r\nHost: a\r\n\r\n"):
            reactor = MemoryReactorClock()
            transport = StringTransport(peerAddress=CLIENT)
            connectClient(proxyFactory(reactor), transport).dataReceived(raw)
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 505 "), raw)
            self.assertEqual(reactor.tcpClients, [], raw)

    def test_misplanned(self) -> None:
        """
        Were a read planned whole more than the head llhttp ends first (a
        plan that misjudged it), the exchange planned for it would reach no
        backend: a read llhttp then refuses gets its 400 alone, and one it
        reads on is read again as fields, each of its heads once.
        """

        def firstHead(data: bytes, *rest: Any) -> Any:
            return planWholeRequest(data[:data.index(b"\r\n\r\n") + 4], *rest)

        self.patch(_proxy, "planWholeRequest", firstHead)
        head = self.head + b"\r\n"
        reactor = MemoryReactorClock()
        transport = StringTransport(peerAddress=CLIENT)
        connectClient(proxyFactory(reactor), transport).dataReceived(
            head + b"GET\x01 / HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "), transport.value())
        self.assertEqual(reactor.tcpClients, [])
        _, client, transport, backend, btransport = clientAndBackend(head * 2)
        backend.dataReceived(OK)
        backend.dataReceived(OK)
        self.assertEqual(btransport.value(), self.fields * 2)
        self.assertEqual(transport.value(), OK * 2)

    def test_closes(self) -> None:
        """
        A head read whole that closes the connection is served as one read
        as fields is: the connection closes after its response, and a head
        the client sent after it is refused by llhttp and gets nothing
        (here, in pieces: a whole one goes to the first one's parser in
        any case).
        """
        head = b"GET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        seen = []
        for whole in (True, False):
            self.patch(_client, "REQUEST_HEADS_WHOLE", whole)
            _, client, transport, backend, btransport = clientAndBackend(head)
            client.dataReceived(b"GET /b HTTP/1.1\r\nHo")
            client.dataReceived(b"st: a\r\n\r\n")
            backend.dataReceived(OK)
            seen.append((client._wholeHeads, transport.value(), btransport.value(),
                         transport.disconnecting, client.factory.refused))
        self.assertEqual(seen[0][1:], seen[1][1:])
        closing = OK.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
        self.assertEqual(seen[0][1:3], (
            closing, b"GET /a HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 192.0.2.7\r\n"
                b"X-Forwarded-Proto: http\r\nX-Forwarded-Host: a\r\n\r\n"))
        self.assertEqual(seen[0][3:], (True, 1))

    def test_looseParser(self) -> None:
        """
        With an llhttp that took a loose request head, every head is read
        as fields.
        """
        self.patch(_client, "REQUEST_HEADS_WHOLE", False)
        _, client, _, _, btransport = clientAndBackend(self.head + b"\r\n")
        self.assertEqual(btransport.value(), self.fields)

    def test_refused(self) -> None:
        """
        A read that llhttp refuses is refused as before, with a 400.
        """
        reactor = MemoryReactorClock()
        transport = StringTransport(peerAddress=CLIENT)
        client = connectClient(proxyFactory(reactor), transport)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 "))
        self.assertEqual(reactor.tcpClients, [])

    def test_rulesReadFields(self) -> None:
        """
        A pool sticky on a cookie, or one that sets Host, reads its heads
        as fields.
        """
        for pool in ({"sticky": {"cookie": "LB"}}, {"http": {"host-header": "a"}}):
            _, client, _, backend, btransport = clientAndBackend(self.head + b"\r\n", **pool)
            self.assertIn(b"\r\nX-B: b \r\n", btransport.value(), pool)
            self.assertFalse(client._wholeHeads)

    def test_routesLater(self) -> None:
        """
        A connection whose listener has routes since it was made (a reload)
        reads its heads as fields from then on.
        """
        _, client, transport, backend, btransport = clientAndBackend(self.head + b"\r\n")
        backend.dataReceived(OK)
        client.factory.setRoutes([], Route(name="all", pool="web"))
        client.dataReceived(self.head + b"\r\n")
        self.assertEqual(btransport.value(), self.sent + self.fields)
        self.assertFalse(client._wholeHeads)


@implementer(IReactorPassTime)
class PassTimeReactor(MemoryReactorClock):
    """
    A memory reactor that keeps the time of its pass, as the lean reactor
    does: set C{polledAt} to say when the pass began.
    """

    polledAt = 0.0


class PassTimeTests(SynchronousTestCase):
    """
    On a reactor that keeps the time of its pass, the stamps a pass's time
    is exact enough for are that time, not the clock's: the response's
    deadline, the client's last activity after an exchange, an idle backend
    connection's idle since.
    """

    def setUp(self) -> None:
        self.reactor = PassTimeReactor()
        self.reactor.advance(100)
        self.factory = proxyFactory(self.reactor, timeouts={"response": 3, "idle": 10})
        self.transport = StringTransport(peerAddress=CLIENT)
        self.client = connectClient(self.factory, self.transport)
        # The pass began two seconds before the clock's now.
        self.reactor.polledAt = 98.0

    def test_responseDeadline(self) -> None:
        """
        The response is due within the response timeout from the pass in
        which the request went whole to the backend.
        """
        self.client.dataReceived(GET)
        connectBackend(self.reactor, StringTransport())
        self.reactor.advance(0.9)
        self.assertEqual(self.transport.value(), b"")
        self.reactor.advance(0.2)
        self.assertTrue(self.transport.value().startswith(b"HTTP/1.1 504 "))

    def test_idleStamps(self) -> None:
        """
        After an exchange, the client connection is idle since the pass
        that ended it (its idle timeout counts from then), and so is the
        backend connection pooled then.
        """
        self.client.dataReceived(GET)
        backend = connectBackend(self.reactor, StringTransport())
        backend.dataReceived(OK)
        self.assertEqual(self.transport.value(), OK)
        self.assertEqual(backend.idleSince, 98.0)
        self.reactor.advance(7.9)
        self.assertFalse(self.transport.disconnecting)
        self.reactor.advance(0.2)
        self.assertTrue(self.transport.disconnecting)


class _FakeConnection:
    """
    Stands for a backend connection in the idle pool.
    """

    def __init__(self) -> None:
        self.idleSince = 0.0
        self.lost = False
        self.reusable = True
        self.transport = StringTransport()


class IdleConnectionsTests(SynchronousTestCase):
    """
    The pool of idle backend connections.
    """

    def test_lifoAndBound(self) -> None:
        """
        The last connection put back is taken first, and no more than
        C{idle-pool} are kept per key.
        """
        pool = IdleConnections(Clock(), KeepAlive(idlePool=2))
        a, b, c = _FakeConnection(), _FakeConnection(), _FakeConnection()
        self.assertTrue(pool.put("k", a))
        self.assertTrue(pool.put("k", b))
        self.assertFalse(pool.put("k", c))
        self.assertIs(pool.take("k"), b)
        self.assertIs(pool.take("k"), a)
        self.assertIsNone(pool.take("k"))
        self.assertIsNone(pool.take("other"))

    def test_lostSkipped(self) -> None:
        """
        A connection that closed while idle is never handed out.
        """
        pool = IdleConnections(Clock(), KeepAlive())
        a, b = _FakeConnection(), _FakeConnection()
        pool.put("k", a)
        pool.put("k", b)
        b.lost = True
        self.assertIs(pool.take("k"), a)

    def test_maxAge(self) -> None:
        """
        With a maximum age, a connection idle longer is not handed out but
        stays pooled.
        """
        clock = Clock()
        pool = IdleConnections(clock, KeepAlive())
        a = _FakeConnection()
        pool.put("k", a)
        clock.advance(2)
        self.assertIsNone(pool.take("k", maxAge=1.0))
        self.assertIs(pool.take("k"), a)

    def test_idleTimeout(self) -> None:
        """
        Connections idle longer than the idle timeout are closed by one
        timer, which stops when the pool is empty.
        """
        clock = Clock()
        pool = IdleConnections(clock, KeepAlive(idleTimeout=10))
        a, b = _FakeConnection(), _FakeConnection()
        pool.put("k", a)
        clock.advance(5)
        pool.put("k", b)
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(5)
        self.assertTrue(a.transport.disconnecting)
        self.assertFalse(b.transport.disconnecting)
        clock.advance(5)
        self.assertTrue(b.transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_close(self) -> None:
        """
        Closing the pool closes every idle connection and cancels the timer.
        """
        clock = Clock()
        pool = IdleConnections(clock, KeepAlive())
        a = _FakeConnection()
        pool.put("k", a)
        pool.close()
        self.assertTrue(a.transport.disconnecting)
        self.assertEqual(clock.getDelayedCalls(), [])


class ProxyHeaderTests(SynchronousTestCase):
    """
    The PROXY protocol headers.
    """

    def test_v1(self) -> None:
        """
        The v1 header names the protocol family, addresses and ports.
        """
        self.assertEqual(
            proxyHeaderV1(IPv4Address("TCP", "192.0.2.1", 5000), IPv4Address("TCP", "10.0.0.1", 80)),
            b"PROXY TCP4 192.0.2.1 10.0.0.1 5000 80\r\n",
        )
        self.assertEqual(
            proxyHeaderV1(IPv6Address("TCP", "2001:db8::1", 5000), IPv6Address("TCP", "::1", 80)),
            b"PROXY TCP6 2001:db8::1 ::1 5000 80\r\n",
        )
        self.assertEqual(proxyHeaderV1(UNIXAddress(b"/s"), UNIXAddress(b"/s")),
                         b"PROXY UNKNOWN\r\n")

    def test_v2(self) -> None:
        """
        The v2 header is the signature, PROXY command over TCP4, the length
        and the packed addresses.
        """
        header = proxyHeaderV2(
            IPv4Address("TCP", "192.0.2.1", 5000), IPv4Address("TCP", "10.0.0.1", 80)
        )
        self.assertEqual(
            header,
            b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c"
            b"\xc0\x00\x02\x01\x0a\x00\x00\x01\x13\x88\x00\x50",
        )
        local = proxyHeaderV2(UNIXAddress(b"/s"), UNIXAddress(b"/s"))
        self.assertEqual(local[12:], b"\x20\x00\x00\x00")


class ParserHelperTests(SynchronousTestCase):
    """
    The checks llhttp leaves to us.
    """

    def test_transferEncoding(self) -> None:
        """
        Only a single C{chunked} in HTTP/1.1 is accepted.
        """
        self.assertFalse(checkTransferEncoding(None, "1.1"))
        self.assertTrue(checkTransferEncoding(b"Chunked", "1.1"))
        for bad, version in [(b"gzip, chunked", "1.1"), (b"chunked", "1.0"), (b"identity", "1.1")]:
            self.assertRaises(BadRequest, checkTransferEncoding, bad, version)

    def test_cookieValue(self) -> None:
        """
        A cookie is found by its exact name.
        """
        self.assertEqual(cookieValue(b"a=1; LB=abc; b=2", b"LB"), b"abc")
        self.assertIsNone(cookieValue(b"lb=abc", b"LB"))

    def test_stickyCookieAttributes(self) -> None:
        """
        The sticky cookie is for the whole site and hidden from scripts; to
        a client that came over TLS it is C{Secure} too, so that it never
        leaves the client in the clear.
        """
        reactor = MemoryReactorClock()
        pool = BackendPool(httpConfig(sticky={"cookie": "LB"}).pools[0])

        class _Exchange:
            backend = pool.get("b1")

        for proto, attributes in [(b"http", b"; Path=/; HttpOnly"),
                                  (b"https", b"; Path=/; HttpOnly; Secure")]:
            upstream = Upstream(pool, reactor, Dialler(reactor), proto)
            self.assertEqual(upstream.cookieFor(_Exchange()),
                             b"LB=" + upstream.cookieId(_Exchange.backend) + attributes, proto)


class StickyCookieAttributeTests(SynchronousTestCase):
    """
    The sticky cookie's attributes: C{samesite}, C{max-age}, C{domain},
    C{path}, C{httponly} and C{secure} under the pool's C{sticky}, built
    into its C{Set-Cookie} once.
    """

    def cookie(self, proto: bytes = b"http", **sticky: Any) -> bytes:
        """
        What follows C{NAME=VALUE} in the cookie set to a client that came
        over C{proto}, for a pool with C{sticky: {cookie: LB, ...sticky}}.
        """
        reactor = MemoryReactorClock()
        pool = BackendPool(httpConfig(sticky={"cookie": "LB", **sticky}).pools[0])

        class _Exchange:
            backend = pool.get("b1")

        upstream = Upstream(pool, reactor, Dialler(reactor), proto)
        line = upstream.cookieFor(_Exchange())
        prefix = b"LB=" + upstream.cookieId(_Exchange.backend)
        self.assertTrue(line.startswith(prefix), line)
        self.assertIs(upstream.cookieFor(_Exchange()), line)
        return line[len(prefix):]

    def test_every(self) -> None:
        """
        Each key gives its attribute, in one line.
        """
        self.assertEqual(
            self.cookie(samesite="lax", **{"max-age": "7d"}, domain=".example.com",
                        path="/app", httponly=False, secure=True),
            b"; Path=/app; Domain=.example.com; Max-Age=604800; Secure; SameSite=Lax")
        self.assertEqual(self.cookie(samesite="Strict", **{"max-age": 90}),
                         b"; Path=/; Max-Age=90; HttpOnly; SameSite=Strict")

    def test_secureByDefaultOverTLS(self) -> None:
        """
        Without C{secure}, the cookie is C{Secure} to clients that came over
        TLS only; C{secure: false} keeps it off, C{true} puts it on, either way.
        """
        self.assertEqual(self.cookie(b"https"), b"; Path=/; HttpOnly; Secure")
        self.assertEqual(self.cookie(b"https", secure=False), b"; Path=/; HttpOnly")
        self.assertEqual(self.cookie(b"http", secure=True), b"; Path=/; HttpOnly; Secure")

    def test_sameSiteNoneForcesSecure(self) -> None:
        """
        C{samesite: None} makes the cookie C{Secure} even to a client that
        came in the clear: browsers refuse C{SameSite=None} without it.
        """
        self.assertEqual(self.cookie(samesite="None"),
                         b"; Path=/; HttpOnly; Secure; SameSite=None")

    def test_errors(self) -> None:
        """
        A bad attribute is refused with its key path and what it takes.
        """
        for sticky, message in [
            ({"samesite": "loose"},
             "pools.web.sticky.samesite: expected Strict, Lax or None, got 'loose'"),
            ({"samesite": None},
             "pools.web.sticky.samesite: expected Strict, Lax or None, got nothing"),
            ({"max-age": 0}, "pools.web.sticky.max-age: expected a lifetime from 1s to 400d "
                             "(a number of seconds, or a string like '12h' or '30d'), got 0"),
            ({"max-age": "401d"}, "pools.web.sticky.max-age: expected a lifetime from 1s to "
                                  "400d (a number of seconds, or a string like '12h' or '30d'), "
                                  "got '401d'"),
            ({"max-age": "1.5s"},
             "pools.web.sticky.max-age: expected whole seconds (a cookie's Max-Age), got 1.5"),
            ({"domain": "ex ample.com"}, "pools.web.sticky.domain: expected a domain name "
                                         "like 'example.com', got 'ex ample.com'"),
            ({"domain": "a.com;x=1"}, "pools.web.sticky.domain: expected a domain name "
                                      "like 'example.com', got 'a.com;x=1'"),
            ({"path": "app"}, "pools.web.sticky.path: expected a path starting with '/', "
                              "without spaces, control characters or ';', got 'app'"),
            ({"path": "/a;b"}, "pools.web.sticky.path: expected a path starting with '/', "
                               "without spaces, control characters or ';', got '/a;b'"),
            ({"httponly": "no"}, "pools.web.sticky.httponly: expected true or false, got 'no'"),
            ({"samesite": "None", "secure": False},
             "pools.web.sticky.secure: samesite None needs Secure (browsers refuse the "
             "cookie without it): drop secure: false, or choose Lax or Strict"),
            ({"expires": "1h"}, "pools.web.sticky.expires: unknown key (expected one of: "
                                "cookie, header, source, samesite, max-age, domain, path, "
                                "httponly, secure); nginx's sticky cookie expires is max-age "
                                "here"),
        ]:
            e = self.assertRaises(ConfigError, httpConfig, sticky={"cookie": "LB", **sticky})
            self.assertEqual(str(e), message)
        e = self.assertRaises(ConfigError, httpConfig,
                              sticky={"header": "X-User", "samesite": "Lax"})
        self.assertEqual(str(e), "pools.web.sticky.samesite: a cookie attribute, but this "
                                 "pool's sticky is header: no cookie is set")

    def test_model(self) -> None:
        """
        The keys reach the model; without them the cookie is a session
        cookie for the whole site, hidden from scripts.
        """
        self.assertEqual(
            httpConfig(sticky={"cookie": "LB", "samesite": "none", "max-age": "1h"}).pools[0].sticky,
            Sticky("cookie", "LB", sameSite="None", maxAge=3600))
        self.assertEqual(httpConfig(sticky={"cookie": "LB"}).pools[0].sticky,
                         Sticky("cookie", "LB", None, None, None, "/", True, None))


class HTTPConfigTests(SynchronousTestCase):
    """
    The HTTP mode configuration keys and their errors.
    """

    def test_parsed(self) -> None:
        """
        Every new key maps onto the model.
        """
        pool = httpConfig(
            http={"max-header-size": 8192, "max-request-line": 4096, "host-header": "in.local",
                  "keepalive": {"idle-pool": 8, "idle-timeout": "30s", "max-requests": 50},
                  "error-limit": 5, "access-log": True},
            sticky={"cookie": "SRV"},
            **{"proxy-protocol": "v2"},
        ).pools[0]
        self.assertEqual(pool.http.maxHeaderSize, 8192)
        self.assertEqual(pool.http.maxRequestLine, 4096)
        self.assertEqual(pool.http.hostHeader, "in.local")
        self.assertEqual(pool.http.keepAlive, KeepAlive(8, 30.0, 50))
        self.assertEqual(pool.http.errorLimit, 5)
        self.assertTrue(pool.accessLog)
        self.assertEqual(pool.sticky, Sticky("cookie", "SRV"))
        self.assertEqual(pool.proxyProtocol, "v2")
        self.assertEqual(httpConfig(sticky="source").pools[0].sticky, Sticky("source"))
        self.assertEqual(httpConfig(sticky={"header": "X-U"}).pools[0].sticky, Sticky("header", "X-U"))

    def assertProblem(self, path: str, **pool: Any) -> None:
        """
        The pool keys are refused with a message naming C{path}.
        """
        e = self.assertRaises(ConfigError, httpConfig, **pool)
        self.assertEqual(e.path, path)

    def test_errors(self) -> None:
        """
        Bad values are refused, naming their key path.
        """
        self.assertProblem("pools.web.http.max-header-size", http={"max-header-size": 10})
        self.assertProblem("pools.web.http.max-request-line", http={"max-request-line": "x"})
        self.assertProblem("pools.web.http.host-header", http={"host-header": "a b"})
        self.assertProblem("pools.web.http.keepalive.idle-pool", http={"keepalive": {"idle-pool": -1}})
        self.assertProblem("pools.web.http.keepalive.idle-timeout",
                           http={"keepalive": {"idle-timeout": "soon"}})
        self.assertProblem("pools.web.http.keepalive.max-requests",
                           http={"keepalive": {"max-requests": 0}})
        self.assertProblem("pools.web.http.keepalive.bogus", http={"keepalive": {"bogus": 1}})
        self.assertProblem("pools.web.http.access-log", http={"access-log": "yes"})
        self.assertProblem("pools.web.http.nope", http={"nope": 1})
        self.assertProblem("pools.web.sticky", sticky={"cookie": "A", "header": "B"})
        self.assertProblem("pools.web.sticky.cookie", sticky={"cookie": "bad name"})
        self.assertProblem("pools.web.sticky", sticky="random")
        self.assertProblem("pools.web.proxy-protocol", **{"proxy-protocol": "v3"})


class HTTPTapTests(SynchronousTestCase):
    """
    The command-line options of HTTP mode.
    """

    def test_options(self) -> None:
        """
        C{--request-timeout}, C{--response-timeout} and C{--access-log}
        reach the pool's configuration.
        """
        from lbtwist.tap import Options

        options = Options()
        options.parseOptions([
            "--mode", "http", "--backend", "tcp:host=127.0.0.1:port=80",
            "--access-log", "--response-timeout", "2s", "--request-timeout", "3",
        ])
        pool = options["lbconfig"].pools[0]
        self.assertEqual((pool.timeouts.request, pool.timeouts.response), (3.0, 2.0))
        self.assertTrue(pool.accessLog)
        self.assertEqual(options["lbconfig"].listeners[0].mode, "http")


class WriteNowTests(SynchronousTestCase):
    """
    L{lbtwist.writethrough.writeNow} writes to plain TCP sockets at once and
    leaves every other transport to its own C{write}.
    """

    def test_otherTransports(self) -> None:
        """
        A transport that is not a plain TCP connection gets C{write}.
        """
        from lbtwist.writethrough import writeNow

        transport = StringTransport()
        writeNow(transport, b"abc")
        self.assertEqual(transport.value(), b"abc")

    def test_plainTCP(self) -> None:
        """
        On a TCP connection with nothing queued the bytes go to the socket
        at once; what the socket does not take is queued, in order.
        """

        from lbtwist.writethrough import writeNow

        class FakeSocket:
            def __init__(self, take: int) -> None:
                self.take = take
                self.sent = b""

            def send(self, data: bytes, flags: int = 0) -> int:
                n = min(self.take, len(data))
                self.sent += data[:n]
                return n

        written: list[bytes] = []

        def FakeServer(sock: FakeSocket) -> Any:
            return plainTCPTransport(sock, written.append)

        whole = FakeSocket(100)
        self.assertTrue(writeNow(FakeServer(whole), b"hello"))
        self.assertEqual((whole.sent, written), (b"hello", []))
        partial = FakeSocket(2)
        self.assertFalse(writeNow(FakeServer(partial), b"hello"))
        self.assertEqual((partial.sent, written), (b"he", [b"llo"]))
        queued = FakeServer(FakeSocket(100))
        queued._tempDataLen = 3
        writeNow(queued, b"later")
        self.assertEqual(written[-1], b"later")


def memoryProxy(idle: float = 300.0) -> tuple[Any, HTTPProxyFactory]:
    """
    An HTTP proxy factory over one backend, on a memory reactor.
    """
    from twisted.internet.testing import MemoryReactorClock

    from lbtwist.config import BackendConfig, ListenerConfig, PoolConfig, Timeouts

    reactor = MemoryReactorClock()
    pool = BackendPool(PoolConfig("p", (BackendConfig("a", "tcp:host=127.0.0.1:port=1"),),
                                  timeouts=Timeouts(idle=idle)))
    factory = HTTPProxyFactory(pool, reactor, Dialler(reactor),
                               ListenerConfig("l", "tcp:8080", "p", "http"))
    return reactor, factory


def memoryClient(factory: HTTPProxyFactory, port: int = 5555) -> tuple[Any, StringTransport]:
    """
    A client connection accepted by C{factory}, over a string transport.
    """
    transport = StringTransport(peerAddress=IPv4Address("TCP", "10.0.0.1", port))
    return connectClient(factory, transport), transport


def memoryBackend(reactor: Any, index: int = 0) -> tuple[Any, StringTransport]:
    """
    Complete the C{index}th backend connection the proxy started.
    """
    transport = StringTransport()
    return connectBackend(reactor, transport, index), transport


class ReadingResumesTests(SynchronousTestCase):
    """
    A client whose reading a backend paused reads again once that exchange
    is over.
    """

    def test_pausedUploadThenResponse(self) -> None:
        """
        The backend pauses the client mid-upload and answers in the same
        pass: the client's next request is read, not left waiting.
        """
        reactor, factory = memoryProxy()
        client, transport = memoryClient(factory)
        client.dataReceived(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        backend, _ = memoryBackend(reactor)
        client.dataReceived(b"hello")
        client.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(transport.value().endswith(b"ok"))
        self.assertEqual(transport.producerState, "producing")


class InFlightIdleTests(SynchronousTestCase):
    """
    A request in flight whose response stalls is not kept forever.
    """

    def test_stalledBody(self) -> None:
        """
        A backend that sends a head and part of the body, then nothing, has
        the exchange aborted after the idle timeout; traffic before that
        keeps it alive.
        """
        reactor, factory = memoryProxy(idle=30.0)
        client, transport = memoryClient(factory)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        backend, _ = memoryBackend(reactor)
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        reactor.advance(20)
        backend.dataReceived(b"6")
        reactor.advance(20)
        self.assertFalse(transport.disconnecting)
        reactor.advance(15)
        self.assertTrue(transport.disconnecting)
        # Visibly truncated: 6 of the 10 promised bytes.
        self.assertTrue(transport.value().endswith(b"\r\n\r\n123456"))


class UntilCloseTests(SynchronousTestCase):
    """
    A response delimited by the backend's close ends cleanly only when the
    close is clean.
    """

    def exchange(self) -> tuple[Any, Any, StringTransport]:
        """
        A GET in flight, its backend having sent a head and part of a body
        that ends when the backend closes.
        """
        reactor, factory = memoryProxy()
        client, transport = memoryClient(factory)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        backend, _ = memoryBackend(reactor)
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart")
        return client, backend, transport

    def test_cleanClose(self) -> None:
        """
        A clean close ends the body with a final chunk.
        """
        from twisted.internet.error import ConnectionDone

        client, backend, transport = self.exchange()
        backend.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(transport.value().endswith(b"0\r\n\r\n"))

    def test_reset(self) -> None:
        """
        A reset leaves the body visibly truncated: no final chunk.
        """
        from twisted.internet.error import ConnectionLost

        client, backend, transport = self.exchange()
        backend.connectionLost(Failure(ConnectionLost()))
        self.assertFalse(transport.value().endswith(b"0\r\n\r\n"), transport.value())
        self.assertTrue(transport.disconnecting)


class SoftStopTests(SynchronousTestCase):
    """
    A graceful stop ends keep-alive instead of waiting on it.
    """

    def test_softStop(self) -> None:
        """
        An idle keep-alive client is closed at once; a client with a request
        in flight gets its response with C{Connection: close}, then is closed.
        """
        reactor, factory = memoryProxy()
        idle, idleTransport = memoryClient(factory, 1)
        busy, busyTransport = memoryClient(factory, 2)
        busy.dataReceived(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        backend, _ = memoryBackend(reactor)
        factory.softStop()
        self.assertTrue(idleTransport.disconnecting)
        self.assertFalse(busyTransport.disconnecting)
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertIn(b"Connection: close\r\n", busyTransport.value())
        self.assertTrue(busyTransport.disconnecting)
