"""
Unit tests for L{lbtwist.tcp} and L{lbtwist.connect}, with a memory reactor
and string transports: no sockets, no real time.
"""

from __future__ import annotations

import random
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionRefusedError, TimeoutError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer  # type: ignore[import-untyped]

from lbtwist.backendtls import BackendTLSError
from lbtwist.config import BackendConfig, PoolConfig, Timeouts
from lbtwist.connect import BackendConnector, failureKind, failureReason
from lbtwist.leantcp import IReactorDialTCP
from lbtwist.pool import BackendPool, Health
from lbtwist.routeconfig import Match, Route
from lbtwist.tcp import ARM_DELAY, ClientSide, TCPProxyFactory

from .support import plainTCPTransport
from .test_sni import clientHello


class HalfCloseTransport(StringTransport):
    """
    A string transport that records a shutdown of its write side.
    """

    writeClosed = False

    def loseWriteConnection(self) -> None:
        self.writeClosed = True


def makeProxy(
    n: int = 2, retries: int = 2, idle: float = 300.0, connect: float = 5.0
) -> tuple[MemoryReactorClock, BackendPool, TCPProxyFactory]:
    """
    A TCP proxy factory over C{n} backends on ports 8001..., with a memory
    reactor.
    """
    reactor = MemoryReactorClock()
    pool = BackendPool(
        PoolConfig(
            name="web",
            retries=retries,
            timeouts=Timeouts(connect=connect, idle=idle),
            backends=tuple(
                BackendConfig(f"b{i}", f"tcp:host=127.0.0.1:port={8001 + i}")
                for i in range(n)
            ),
        ),
        random.Random(0),
    )
    factory = TCPProxyFactory(pool, reactor, BackendConnector(pool, reactor), idle)
    return reactor, pool, factory


def acceptClient(factory: TCPProxyFactory) -> tuple[ClientSide, HalfCloseTransport]:
    """
    Accept a client connection from 127.0.0.9.
    """
    client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", 5555))
    transport = HalfCloseTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 5555))
    client.makeConnection(transport)
    assert isinstance(client, ClientSide)
    return client, transport


def completeConnect(reactor: MemoryReactorClock, index: int) -> tuple[Any, HalfCloseTransport]:
    """
    Make the C{index}th outgoing connection attempt succeed.
    """
    host, port, factory, timeout, bind = reactor.tcpClients[index]
    protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
    transport = HalfCloseTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def refuseConnect(reactor: MemoryReactorClock, index: int) -> None:
    """
    Make the C{index}th outgoing connection attempt be refused.
    """
    factory = reactor.tcpClients[index][2]
    factory.clientConnectionFailed(reactor.connectors[index],
                                   Failure(ConnectionRefusedError()))


class CountingTransport(HalfCloseTransport):
    """
    A string transport that counts how often it is paused and resumed.
    """

    pauses = resumes = 0

    def pauseProducing(self) -> None:
        self.pauses += 1
        super().pauseProducing()

    def resumeProducing(self) -> None:
        self.resumes += 1
        super().resumeProducing()


@implementer(IReactorDialTCP)
class LoopbackReactor(MemoryReactorClock):
    """
    A memory reactor whose direct dials connect before they return, as
    they usually do over loopback.
    """

    def dialTCP(self, host: str, port: int, protocol: Any, timeout: float,
                connected: Any, failed: Any) -> None:
        protocol.makeConnection(CountingTransport())
        connected(protocol)


class JoinTests(SynchronousTestCase):
    """
    A client is paused until joined to its backend, then bytes flow both ways.
    """

    def test_connectedAtOnce(self) -> None:
        """
        A client whose backend connects before the dial returns is never
        paused, nor resumed, and bytes flow both ways.
        """
        reactor = LoopbackReactor()
        pool = BackendPool(PoolConfig(name="web", backends=(
            BackendConfig("b0", "tcp:host=127.0.0.1:port=8001"),)), random.Random(0))
        factory = TCPProxyFactory(pool, reactor, BackendConnector(pool, reactor), 300.0)
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", 5555))
        transport = CountingTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 5555))
        client.makeConnection(transport)
        assert isinstance(client, ClientSide)
        self.assertEqual((transport.pauses, transport.resumes), (0, 0))
        self.assertEqual(transport.producerState, "producing")
        client.dataReceived(b"request")
        assert client.peer is not None
        self.assertEqual(client.peer.transport.value(), b"request")  # type: ignore[union-attr]
        self.assertEqual(pool.get("b0").active, 1)  # type: ignore[union-attr]

    def test_resumedOnceConnected(self) -> None:
        """
        A client whose backend is still connecting is paused once, and
        resumed once when it connects.
        """
        reactor, pool, factory = makeProxy()
        client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", 5555))
        transport = CountingTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 5555))
        client.makeConnection(transport)
        self.assertEqual((transport.pauses, transport.resumes), (1, 0))
        completeConnect(reactor, 0)
        self.assertEqual((transport.pauses, transport.resumes), (1, 1))
        self.assertEqual(transport.producerState, "producing")

    def test_pausedUntilConnected(self) -> None:
        """
        The client is not read from until its backend connection is made;
        then each transport is the other's streaming producer.
        """
        reactor, pool, factory = makeProxy()
        client, clientTransport = acceptClient(factory)
        self.assertEqual(clientTransport.producerState, "paused")
        self.assertEqual(reactor.tcpClients[0][:2], ("127.0.0.1", 8001))
        protocol, backendTransport = completeConnect(reactor, 0)
        self.assertEqual(clientTransport.producerState, "producing")
        self.assertIs(clientTransport.producer, backendTransport)
        self.assertIs(backendTransport.producer, clientTransport)
        self.assertTrue(clientTransport.streaming)
        self.assertEqual(pool.get("b0").active, 1)  # type: ignore[union-attr]

    def test_relay(self) -> None:
        """
        What either side sends, the other receives, and it is counted.
        """
        reactor, pool, factory = makeProxy()
        client, clientTransport = acceptClient(factory)
        protocol, backendTransport = completeConnect(reactor, 0)
        client.dataReceived(b"request")
        protocol.dataReceived(b"response")
        self.assertEqual(backendTransport.value(), b"request")
        self.assertEqual(clientTransport.value(), b"response")
        b0 = pool.get("b0")
        assert b0 is not None
        self.assertEqual((b0.bytesIn, b0.bytesOut), (7, 8))

    def test_finalData(self) -> None:
        """
        The last bytes before a side's FIN (C{finalDataReceived}, from a
        lean transport that read the FIN with them) are relayed and
        counted as any others, and the FIN that follows is passed on.
        """
        reactor, pool, factory = makeProxy()
        client, clientTransport = acceptClient(factory)
        protocol, backendTransport = completeConnect(reactor, 0)
        client.finalDataReceived(b"request")
        client.readConnectionLost()
        self.assertEqual(backendTransport.value(), b"request")
        self.assertTrue(backendTransport.writeClosed)
        protocol.finalDataReceived(b"response")
        protocol.readConnectionLost()
        self.assertEqual(clientTransport.value(), b"response")
        self.assertTrue(clientTransport.disconnecting)
        b0 = pool.get("b0")
        assert b0 is not None
        self.assertEqual((b0.bytesIn, b0.bytesOut, client.received, protocol.received),
                         (7, 8, 7, 8))

    def test_halfClose(self) -> None:
        """
        A client's FIN shuts down the backend's write side only; the response
        still reaches the client, and the backend's FIN then closes both.
        """
        reactor, pool, factory = makeProxy()
        client, clientTransport = acceptClient(factory)
        protocol, backendTransport = completeConnect(reactor, 0)
        client.dataReceived(b"request")
        client.readConnectionLost()
        self.assertTrue(backendTransport.writeClosed)
        self.assertFalse(backendTransport.disconnecting)
        protocol.dataReceived(b"response")
        self.assertEqual(clientTransport.value(), b"response")
        protocol.readConnectionLost()
        self.assertTrue(clientTransport.disconnecting)
        self.assertTrue(backendTransport.disconnecting)

    def test_closePropagates(self) -> None:
        """
        When the backend closes, the client is closed (after its buffer is
        flushed) and the backend's active count drops.
        """
        reactor, pool, factory = makeProxy()
        client, clientTransport = acceptClient(factory)
        protocol, backendTransport = completeConnect(reactor, 0)
        protocol.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(clientTransport.disconnecting)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(pool.get("b0").active, 0)  # type: ignore[union-attr]
        self.assertEqual(factory.activeClients, 0)

    def test_clientGoneWhileConnecting(self) -> None:
        """
        A client that leaves while its backend connects cancels the attempt.
        """
        reactor, pool, factory = makeProxy()
        client, clientTransport = acceptClient(factory)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(reactor.connectors[0].stoppedConnecting)
        self.assertEqual(pool.get("b0").failures, {})  # type: ignore[union-attr]


class FailoverTests(SynchronousTestCase):
    """
    A failed connect moves on to the next backend; the client never notices.
    """

    def test_refused(self) -> None:
        """
        A refused connect is counted against that backend and the next one
        is tried.
        """
        reactor, pool, factory = makeProxy()
        client, clientTransport = acceptClient(factory)
        refuseConnect(reactor, 0)
        self.assertEqual(reactor.tcpClients[1][:2], ("127.0.0.1", 8002))
        protocol, backendTransport = completeConnect(reactor, 1)
        self.assertEqual(clientTransport.producerState, "producing")
        self.assertFalse(clientTransport.disconnecting)
        self.assertEqual(pool.get("b0").failures, {"refused": 1})  # type: ignore[union-attr]
        self.assertIs(client.backend, pool.get("b1"))

    def test_timeout(self) -> None:
        """
        The backend connect is given the pool's connect timeout; when it
        times out the failure is counted as a timeout and the next backend
        is tried.
        """
        reactor, pool, factory = makeProxy(connect=2.0)
        client, clientTransport = acceptClient(factory)
        self.assertEqual(reactor.tcpClients[0][3], 2.0)
        connectorFactory = reactor.tcpClients[0][2]
        connectorFactory.clientConnectionFailed(reactor.connectors[0], Failure(TimeoutError()))
        self.assertEqual(pool.get("b0").failures, {"timeout": 1})  # type: ignore[union-attr]
        self.assertEqual(reactor.tcpClients[1][:2], ("127.0.0.1", 8002))
        self.assertFalse(clientTransport.disconnecting)

    def test_allFail(self) -> None:
        """
        When every backend fails the client is closed at once.
        """
        reactor, pool, factory = makeProxy()
        client, clientTransport = acceptClient(factory)
        refuseConnect(reactor, 0)
        refuseConnect(reactor, 1)
        self.assertTrue(clientTransport.disconnecting)
        self.assertEqual(len(reactor.tcpClients), 2)

    def test_retriesBound(self) -> None:
        """
        No more than C{retries} other backends are tried.
        """
        reactor, pool, factory = makeProxy(n=5, retries=1)
        client, clientTransport = acceptClient(factory)
        refuseConnect(reactor, 0)
        refuseConnect(reactor, 1)
        self.assertEqual(len(reactor.tcpClients), 2)
        self.assertTrue(clientTransport.disconnecting)

    def test_passiveHealth(self) -> None:
        """
        C{fall} consecutive failed connects mark a backend down: it is then
        skipped without being tried.
        """
        reactor, pool, factory = makeProxy()
        b0 = pool.get("b0")
        assert b0 is not None
        handled = refused = 0
        for _ in range(10):
            if b0.health is Health.DOWN:
                break
            acceptClient(factory)
            # b0 refuses every connect; each client fails over to b1.
            while handled < len(reactor.tcpClients):
                if reactor.tcpClients[handled][1] == 8001:
                    refuseConnect(reactor, handled)
                    refused += 1
                else:
                    completeConnect(reactor, handled)
                handled += 1
        self.assertEqual(b0.health, Health.DOWN)
        self.assertEqual(refused, 3)
        before = len(reactor.tcpClients)
        acceptClient(factory)
        self.assertEqual(reactor.tcpClients[before][:2], ("127.0.0.1", 8002))

    def test_noBackend(self) -> None:
        """
        With no eligible backend the client is closed without a connect.
        """
        reactor, pool, factory = makeProxy(n=1)
        b0 = pool.get("b0")
        assert b0 is not None
        for _ in range(3):
            pool.failed(b0, "probe", "refused")
        client, clientTransport = acceptClient(factory)
        self.assertTrue(clientTransport.disconnecting)
        self.assertEqual(reactor.tcpClients, [])
        self.assertEqual(pool.noBackend, 1)


class IdleTests(SynchronousTestCase):
    """
    An idle pair is closed after the idle timeout.
    """

    def test_idle(self) -> None:
        """
        Traffic either way keeps a pair open; silence for the timeout closes it.
        """
        reactor, pool, factory = makeProxy(idle=10.0)
        client, clientTransport = acceptClient(factory)
        protocol, backendTransport = completeConnect(reactor, 0)
        reactor.advance(6)
        protocol.dataReceived(b"x")
        reactor.advance(6)
        self.assertFalse(clientTransport.disconnecting)
        reactor.advance(4.1)
        # Aborted, so that a peer that stopped reading cannot hold it open.
        self.assertTrue(clientTransport.disconnected)
        self.assertTrue(backendTransport.disconnected)

    def test_silentFromTheStart(self) -> None:
        """
        A pair that never sends anything is closed exactly at the idle
        timeout, although its timer was made a little later than it joined.
        """
        reactor, pool, factory = makeProxy(idle=10.0)
        client, clientTransport = acceptClient(factory)
        completeConnect(reactor, 0)
        reactor.advance(9.99)
        self.assertFalse(clientTransport.disconnected)
        reactor.advance(0.02)
        self.assertTrue(clientTransport.disconnected)

    def test_timersMadeLate(self) -> None:
        """
        Pairs joined within L{ARM_DELAY} of each other share one pending
        call until then, when those still open get their own timer; a pair
        that closed before never had one.
        """
        reactor, pool, factory = makeProxy(n=1, idle=10.0)
        pairs = []
        for _ in range(3):
            client, clientTransport = acceptClient(factory)
            protocol, backendTransport = completeConnect(reactor, len(pairs))
            pairs.append((client, protocol))
        self.assertEqual(len(reactor.getDelayedCalls()), 1)
        client, protocol = pairs.pop()
        protocol.connectionLost(Failure(ConnectionDone()))
        client.connectionLost(Failure(ConnectionDone()))
        reactor.advance(ARM_DELAY)
        self.assertEqual(sorted(call.getTime() for call in reactor.getDelayedCalls()),
                         [10.0, 10.0])

    def test_shortTimeout(self) -> None:
        """
        An idle timeout not over L{ARM_DELAY} gets its timer at once.
        """
        reactor, pool, factory = makeProxy(idle=0.5)
        client, clientTransport = acceptClient(factory)
        completeConnect(reactor, 0)
        self.assertEqual([call.getTime() for call in reactor.getDelayedCalls()], [0.5])
        reactor.advance(0.5)
        self.assertTrue(clientTransport.disconnected)

    def test_timerCancelled(self) -> None:
        """
        A closed pair leaves no timer behind.
        """
        reactor, pool, factory = makeProxy(idle=10.0)
        client, clientTransport = acceptClient(factory)
        protocol, backendTransport = completeConnect(reactor, 0)
        protocol.connectionLost(Failure(ConnectionDone()))
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(reactor.getDelayedCalls(), [])


class AccessLogTests(SynchronousTestCase):
    """
    With the access log on, each finished connection is one structured event.
    """

    def test_event(self) -> None:
        """
        The event names the client and backend and counts the bytes each
        way, the time the pair lived and the failed attempts before it.
        """
        import attrs
        from twisted.logger import globalLogPublisher

        reactor, pool, factory = makeProxy()
        pool.config = attrs.evolve(pool.config, accessLog=True)
        factory = TCPProxyFactory(pool, reactor, factory.connector, 300.0)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        client, clientTransport = acceptClient(factory)
        refuseConnect(reactor, 0)
        protocol, backendTransport = completeConnect(reactor, 1)
        client.dataReceived(b"12345")
        protocol.dataReceived(b"abc")
        reactor.advance(2.5)
        protocol.connectionLost(Failure(ConnectionDone()))
        client.connectionLost(Failure(ConnectionDone()))
        [event] = [e for e in events if e.get("log_namespace") == "lbtwist.access"]
        self.assertEqual(
            {k: event[k] for k in ("client", "backend", "bytesIn", "bytesOut", "duration", "retries")},
            {"client": "127.0.0.9:5555", "backend": "b1", "bytesIn": 5, "bytesOut": 3,
             "duration": 2.5, "retries": 1},
        )

    def test_offByDefault(self) -> None:
        """
        Without the access log, connections log nothing.
        """
        from twisted.logger import globalLogPublisher

        reactor, pool, factory = makeProxy()
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        client, clientTransport = acceptClient(factory)
        protocol, backendTransport = completeConnect(reactor, 0)
        protocol.connectionLost(Failure(ConnectionDone()))
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual([e for e in events if e.get("log_namespace") == "lbtwist.access"], [])


class RemovedWhileConnectingTests(SynchronousTestCase):
    """
    A backend removed while a client connects to it does not get the client.
    """

    def test_goesElsewhere(self) -> None:
        """
        The new connection to the removed backend is closed and the client
        is joined to another backend instead.
        """
        reactor, pool, factory = makeProxy()
        client, clientTransport = acceptClient(factory)
        pool.remove("b0")
        protocol, backendTransport = completeConnect(reactor, 0)
        self.assertTrue(backendTransport.disconnecting)
        self.assertEqual(reactor.tcpClients[1][:2], ("127.0.0.1", 8002))
        completeConnect(reactor, 1)
        self.assertIs(client.backend, pool.get("b1"))
        self.assertEqual(clientTransport.producerState, "producing")


class FailureReasonTests(SynchronousTestCase):
    """
    The reason a failed connect is counted against its backend with (and
    that a backend marked down by them is logged with) reads as words.
    """

    def test_reasons(self) -> None:
        """
        Refused and timed out say so; any other failure says what went
        wrong in its own message (a TLS backend's refused certificate).
        """
        cases = [
            (ConnectionRefusedError(), "refused", "connection refused"),
            (TimeoutError(), "timeout", "connect timed out"),
            (BackendTLSError("certificate of 10.0.0.5:443 does not name 10.0.0.5 (it names "
                             "app.internal): set tls.verify-host"), "connect",
             "connect failed: certificate of 10.0.0.5:443 does not name 10.0.0.5 (it names "
             "app.internal): set tls.verify-host"),
        ]
        for error, kind, reason in cases:
            self.assertEqual(failureKind(Failure(error)), kind)
            self.assertEqual(failureReason(kind, Failure(error)), reason)


class FullBufferTransport(CountingTransport):
    """
    A backend transport whose send buffer is full from its first write: it
    pauses its streaming producer then, as a socket transport does past its
    C{bufferSize}, and leaves it paused until the buffer drains.
    """

    def write(self, data: bytes) -> None:
        super().write(data)
        if self.producer is not None and self.streaming:
            self.producer.pauseProducing()


@implementer(IReactorDialTCP)
class FullBufferLoopbackReactor(MemoryReactorClock):
    """
    A memory reactor whose direct dials connect before they return, to a
    backend whose send buffer is full from its first write.
    """

    def dialTCP(self, host: str, port: int, protocol: Any, timeout: float,
                connected: Any, failed: Any) -> None:
        protocol.makeConnection(FullBufferTransport())
        connected(protocol)


class FullSocket:
    """
    A socket double whose send buffer is full: it takes nothing.
    """

    def send(self, data: bytes, flags: int = 0) -> int:
        raise BlockingIOError()

    def setsockopt(self, *args: Any) -> None:
        pass


@implementer(IReactorDialTCP)
class FullSocketLoopbackReactor(MemoryReactorClock):
    """
    A memory reactor whose direct dials connect before they return, to a
    socket transport (Twisted's own, queuing and pausing its producer past
    its C{bufferSize}) whose socket takes nothing.
    """

    def dialTCP(self, host: str, port: int, protocol: Any, timeout: float,
                connected: Any, failed: Any) -> None:
        transport = plainTCPTransport(FullSocket(), None, reactor=self,  # type: ignore[arg-type]
                                      _tempDataBuffer=[])
        del transport.write
        protocol.makeConnection(transport)
        connected(protocol)


def proxyPool(proxyProtocol: str | None = None) -> BackendPool:
    """
    A pool of one backend on port 8001, sending a PROXY header if
    C{proxyProtocol} says so.
    """
    return BackendPool(PoolConfig(name="web", proxyProtocol=proxyProtocol, backends=(
        BackendConfig("b0", "tcp:host=127.0.0.1:port=8001"),)), random.Random(0))


def acceptCounted(factory: TCPProxyFactory) -> tuple[Any, CountingTransport]:
    """
    Accept a client from 127.0.0.9 on a transport that counts its pauses
    and resumes.
    """
    client = factory.buildProtocol(IPv4Address("TCP", "127.0.0.9", 5555))
    transport = CountingTransport(peerAddress=IPv4Address("TCP", "127.0.0.9", 5555))
    client.makeConnection(transport)  # type: ignore[union-attr]
    return client, transport


class HoldTests(SynchronousTestCase):
    """
    A client is paused only while its backend connects (also once routed
    on its TLS server name), resumed once when joined, never resumed after
    leaving, and never resumed over a pause its backend asked for.
    """

    def routedProxy(self, reactor: MemoryReactorClock) -> TCPProxyFactory:
        """
        A listener of pool web routing server name db.example to pool db
        (a backend on port 8002), anything else to web.
        """
        pools = {name: BackendPool(PoolConfig(name=name, backends=(
            BackendConfig(f"{name}0", f"tcp:host=127.0.0.1:port={port}"),)), random.Random(0))
            for name, port in (("web", 8001), ("db", 8002))}
        factory = TCPProxyFactory(pools["web"], reactor, BackendConnector(pools["web"], reactor),
                                  300.0, pools=pools)
        factory.setRoutes((Route("db", Match(sni=("db.example",)), pool="db"),),
                          Route("default", pool="web"))
        return factory

    def test_routedConnectedLater(self) -> None:
        """
        A client routed on its server name is read from until its hello is
        whole, paused while the route's backend connects, and resumed once
        when it has connected; the hello reaches that backend first.
        """
        reactor = MemoryReactorClock()
        client, transport = acceptCounted(self.routedProxy(reactor))
        hello = clientHello("db.example")
        client.dataReceived(hello[:10])
        self.assertEqual((transport.pauses, transport.resumes), (0, 0))
        client.dataReceived(hello[10:])
        self.assertEqual((transport.pauses, transport.resumes), (1, 0))
        self.assertEqual(reactor.tcpClients[0][:2], ("127.0.0.1", 8002))
        protocol, backendTransport = completeConnect(reactor, 0)
        self.assertEqual((transport.pauses, transport.resumes), (1, 1))
        self.assertEqual(transport.producerState, "producing")
        client.dataReceived(b"more")
        self.assertEqual(backendTransport.value(), hello + b"more")

    def test_routedConnectedAtOnce(self) -> None:
        """
        A client routed on its server name to a backend that connects
        before the dial returns is never paused nor resumed, and its hello
        reaches the backend first.
        """
        client, transport = acceptCounted(self.routedProxy(LoopbackReactor()))
        hello = clientHello("db.example")
        client.dataReceived(hello)
        client.dataReceived(b"more")
        self.assertEqual((transport.pauses, transport.resumes), (0, 0))
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(client.backend.name, "db0")
        self.assertEqual(client.peer.transport.value(), hello + b"more")

    def test_replayFillingTheBackendPauses(self) -> None:
        """
        A routed client whose hello, with what came with it, fills its
        socket backend's buffer as it is replayed is paused then, as it is
        by a relayed chunk that fills it: the backend's transport has the
        client's as its producer from that write on.
        """
        client, transport = acceptCounted(self.routedProxy(FullSocketLoopbackReactor()))
        hello = clientHello("db.example")
        client.dataReceived(hello + b"x" * 70_000)
        backendTransport = client.peer.transport
        self.assertEqual(backendTransport._tempDataLen, len(hello) + 70_000)
        self.assertIs(backendTransport.producer, transport)
        self.assertEqual(transport.producerState, "paused")

    def test_goneWhileConnectingNotResumed(self) -> None:
        """
        A client that leaves while its backend connects is not resumed, and
        gives its backend's slot back.
        """
        reactor, pool, factory = makeProxy()
        client, transport = acceptCounted(factory)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((transport.pauses, transport.resumes), (1, 0))
        self.assertTrue(reactor.connectors[0].stoppedConnecting)
        self.assertEqual([b.slots for b in pool], [0, 0])

    def test_backendPausesJoinedAtOnce(self) -> None:
        """
        A backend connected at once whose buffer fills with the PROXY
        header pauses the client, which stays paused until the backend's
        buffer drains.
        """
        pool = proxyPool("v1")
        reactor = FullBufferLoopbackReactor()
        client, transport = acceptCounted(
            TCPProxyFactory(pool, reactor, BackendConnector(pool, reactor), 300.0))
        self.assertTrue(client.peer.transport.value().startswith(b"PROXY TCP4 "))
        self.assertEqual((transport.pauses, transport.resumes), (1, 0))
        self.assertEqual(transport.producerState, "paused")
        client.peer.transport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")

    def test_backendPausesJoinedLater(self) -> None:
        """
        A client held while its backend connects is not resumed over a
        pause that backend asked for while joining (its buffer full with
        the PROXY header): it stays paused until the backend's buffer
        drains.
        """
        pool = proxyPool("v1")
        reactor = MemoryReactorClock()
        client, transport = acceptCounted(
            TCPProxyFactory(pool, reactor, BackendConnector(pool, reactor), 300.0))
        self.assertEqual(transport.producerState, "paused")
        host, port, backendFactory, timeout, bind = reactor.tcpClients[0]
        backendTransport = FullBufferTransport()
        backendFactory.buildProtocol(IPv4Address("TCP", host, port)).makeConnection(
            backendTransport)
        self.assertTrue(backendTransport.value().startswith(b"PROXY TCP4 "))
        self.assertIs(client.backend, pool.get("b0"))
        self.assertEqual(transport.producerState, "paused")
        backendTransport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
