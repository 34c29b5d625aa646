"""
Tests for L{lbtwist.leantcp}: the lean TCP transports, over real loopback
sockets in the test's reactor.
"""

from __future__ import annotations

import _socket
import errno
import gc
import os
import socket
from typing import Any

from twisted.internet import error, main, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import ClientFactory, Factory, Protocol, connectionDone
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer  # type: ignore[import-untyped]

from lbtwist.leantcp import (
    ACCEPT_PAUSE,
    SHORTAGE_LOG_INTERVAL,
    LeanClient,
    LeanConnector,
    LeanDial,
    LeanPort,
    LeanTransport,
    ipFamily,
)
from lbtwist.reactor import LeanEPollReactor

from .support import freePort, inThread, reactor, sleep, stuckListener


class Echo(Protocol):
    """
    Echoes what it reads.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]


class Recorder(Protocol):
    """
    Records what it reads and fires C{lost} when the connection closes.
    """

    def __init__(self) -> None:
        self.received = b""
        self.made = False
        self.lost: Deferred[BaseException] = Deferred()
        self.waiting: list[tuple[int, Deferred[bytes]]] = []

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        for n, d in list(self.waiting):
            if len(self.received) >= n:
                self.waiting.remove((n, d))
                d.callback(self.received)

    def receive(self, n: int) -> Deferred[bytes]:
        """
        Fires with everything received once there are C{n} bytes.
        """
        d: Deferred[bytes] = Deferred()
        self.waiting.append((n, d))
        self.dataReceived(b"")
        return d

    def connectionLost(self, reason: Failure = Failure(Exception())) -> None:
        self.lost.callback(reason.value)


class RecordingFactory(ClientFactory):
    """
    Builds one L{Recorder} and records how the connection attempt ended.
    """

    noisy = False

    def __init__(self) -> None:
        self.protocol_: Recorder | None = None
        self.started: list[Any] = []
        self.failed: list[Failure] = []
        self.failedD: Deferred[BaseException] = Deferred()

    def startedConnecting(self, connector: Any) -> None:
        self.started.append(connector)

    def buildProtocol(self, addr: Any) -> Recorder:
        self.protocol_ = Recorder()
        return self.protocol_

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.failed.append(reason)
        self.failedD.callback(reason.value)


def listenEcho(case: TestCase) -> int:
    """
    An echo server on an ephemeral loopback port, closed after the test.
    """
    factory = Factory.forProtocol(Echo)
    factory.noisy = False
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    case.addCleanup(port.stopListening)
    return int(port.getHost().port)


def pendingCalls(*owners: Any) -> list[Any]:
    """
    The reactor's pending timed calls of methods of C{owners}.
    """
    return [
        call for call in reactor.getDelayedCalls()
        if call.active()
        and any(getattr(call.func, "__self__", None) is o for o in owners if o is not None)
    ]


class LeanConnectorTests(TestCase):
    """
    L{LeanConnector} dials an IP address at once.
    """

    @inlineCallbacks
    def test_connectedAtOnce(self) -> Any:
        """
        Over loopback the handshake is over when C{connect} returns: the
        protocol is connected by then, no timeout is pending, and bytes go
        both ways.
        """
        port = listenEcho(self)
        factory = RecordingFactory()
        connector = LeanConnector("127.0.0.1", port, factory, 5.0, reactor)
        connector.connect()
        protocol = factory.protocol_
        assert protocol is not None
        self.assertTrue(protocol.made)
        self.assertEqual(factory.started, [connector])
        self.assertEqual(connector.state, "connected")
        self.assertIsNone(connector.timeoutID)
        transport = protocol.transport
        self.assertIsInstance(transport, LeanClient)
        self.assertEqual(transport.getPeer().port, port)  # type: ignore[union-attr]
        self.assertEqual(transport.getHost().host, "127.0.0.1")  # type: ignore[union-attr]
        transport.write(b"ping")  # type: ignore[union-attr]
        self.assertEqual((yield protocol.receive(4)), b"ping")
        transport.loseConnection()  # type: ignore[union-attr]
        reason = yield protocol.lost
        self.assertIsInstance(reason, error.ConnectionDone)
        yield sleep(0)
        self.assertEqual(connector.state, "disconnected")

    @inlineCallbacks
    def test_refused(self) -> Any:
        """
        A connection refused within C{connect} is reported on a later
        reactor pass, as Twisted does, as a L{ConnectionRefusedError}, and
        leaves no timer behind.
        """
        factory = RecordingFactory()
        connector = LeanConnector("127.0.0.1", freePort(), factory, 5.0, reactor)
        connector.connect()
        self.assertEqual(factory.failed, [])
        reason = yield factory.failedD
        self.assertIsInstance(reason, error.ConnectionRefusedError)
        self.assertEqual(connector.state, "disconnected")
        self.assertEqual(pendingCalls(connector, connector.transport), [])

    @inlineCallbacks
    def test_retryAtOnce(self) -> Any:
        """
        A factory that connects again from C{clientConnectionFailed} does not
        recurse: each refusal comes on its own reactor pass.
        """
        port = freePort()
        failures: list[Failure] = []
        done: Deferred[None] = Deferred()

        class Retrying(ClientFactory):
            noisy = False

            def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
                failures.append(reason)
                if len(failures) < 1500:
                    connector.connect()
                else:
                    done.callback(None)

        LeanConnector("127.0.0.1", port, Retrying(), 5.0, reactor).connect()
        yield done
        self.assertEqual(len(failures), 1500)

    def test_stopFromStartedConnecting(self) -> None:
        """
        A factory may stop the attempt from C{startedConnecting}: it fails
        with L{UserError} and never connects.
        """
        port = listenEcho(self)
        factory = RecordingFactory()
        factory.startedConnecting = lambda connector: connector.stopConnecting()  # type: ignore[method-assign]
        connector = LeanConnector("127.0.0.1", port, factory, 5.0, reactor)
        connector.connect()
        self.assertEqual(len(factory.failed), 1)
        self.assertTrue(factory.failed[0].check(error.UserError))
        self.assertIsNone(factory.protocol_)

    @inlineCallbacks
    def test_connectionMadeRaises(self) -> Any:
        """
        An error raised by C{connectionMade} during C{connect} is logged and
        closes the connection, as when the reactor calls it; it does not
        escape from C{connect}.
        """
        port = listenEcho(self)
        lost: Deferred[None] = Deferred()

        class Broken(Protocol):
            def connectionMade(self) -> None:
                raise RuntimeError("broken protocol")

        class Factory_(ClientFactory):
            noisy = False
            protocol = Broken

            def clientConnectionLost(self, connector: Any, reason: Failure) -> None:
                lost.callback(None)

        LeanConnector("127.0.0.1", port, Factory_(), 5.0, reactor).connect()
        yield lost
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_timesOut(self) -> Any:
        """
        A handshake that does not complete fails with L{TimeoutError} after
        the timeout, and its socket is closed.
        """
        port = stuckListener(self)
        factory = RecordingFactory()
        connector = LeanConnector("127.0.0.1", port, factory, 0.2, reactor)
        connector.connect()
        self.assertEqual(connector.state, "connecting")
        transport = connector.transport
        reason = yield factory.failedD
        self.assertIsInstance(reason, error.TimeoutError)
        self.assertFalse(hasattr(transport, "socket"))
        self.assertIsNone(factory.protocol_)
        # Nothing refers back to the transport any more (no cycle through
        # its connecting write handler).
        self.assertNotIn("doWrite", vars(transport))

    @inlineCallbacks
    def test_completesLater(self) -> Any:
        """
        A handshake that completes after C{connect} returns is noticed when
        the socket becomes writable, and the connection is then made.
        """
        port = stuckListener(self)
        factory = RecordingFactory()
        connector = LeanConnector("127.0.0.1", port, factory, 10.0, reactor)
        connector.connect()
        self.assertEqual(connector.state, "connecting")
        stuck = self.stuck  # type: ignore[attr-defined]
        # Make room in the accept queue: the next SYN retransmit gets in.
        accepted, _ = yield inThread(stuck.accept)
        self.addCleanup(accepted.close)
        for _ in range(300):
            if factory.protocol_ is not None:
                break
            yield sleep(0.01)
        self.assertIsNotNone(factory.protocol_)
        self.assertEqual(connector.state, "connected")
        self.assertIsNone(connector.timeoutID)
        connector.disconnect()
        yield factory.protocol_.lost  # type: ignore[union-attr]

    @inlineCallbacks
    def test_stopConnecting(self) -> Any:
        """
        Stopping a pending attempt fails it with L{UserError} and closes its
        socket.
        """
        port = stuckListener(self)
        factory = RecordingFactory()
        connector = LeanConnector("127.0.0.1", port, factory, 10.0, reactor)
        connector.connect()
        transport = connector.transport
        connector.stopConnecting()
        reason = yield factory.failedD
        self.assertIsInstance(reason, error.UserError)
        self.assertFalse(hasattr(transport, "socket"))

    @inlineCallbacks
    def test_ipv6(self) -> Any:
        """
        An IPv6 address is dialled the same way.
        """
        try:
            listening = reactor.listenTCP(0, Factory.forProtocol(Echo), interface="::1")
        except error.CannotListenError:
            raise self.skipTest("no IPv6 loopback here")  # noqa: B904
        self.addCleanup(listening.stopListening)
        factory = RecordingFactory()
        connector = LeanConnector("::1", listening.getHost().port, factory, 5.0, reactor)
        connector.connect()
        protocol = factory.protocol_
        assert protocol is not None
        self.assertEqual(protocol.transport.getPeer().host, "::1")  # type: ignore[union-attr]
        self.assertEqual(connector.getDestination().host, "::1")
        protocol.transport.write(b"six")  # type: ignore[union-attr]
        self.assertEqual((yield protocol.receive(3)), b"six")
        protocol.transport.loseConnection()  # type: ignore[union-attr]
        yield protocol.lost

    @inlineCallbacks
    def test_noCycles(self) -> Any:
        """
        A closed connection leaves no reference cycle between its transport
        and connector: reference counting frees them, with the cyclic
        garbage collector off.
        """
        port = listenEcho(self)
        gc.collect()
        gc.disable()
        self.addCleanup(gc.enable)
        for _ in range(3):
            factory = RecordingFactory()
            LeanConnector("127.0.0.1", port, factory, 5.0, reactor).connect()
            protocol = factory.protocol_
            assert protocol is not None
            protocol.transport.loseConnection()  # type: ignore[union-attr]
            yield protocol.lost
            yield sleep(0)
            # The test's own references to the connector and protocol.
            factory.started.clear()
            factory.protocol_ = None
        del factory, protocol
        gc.set_debug(gc.DEBUG_SAVEALL)
        self.addCleanup(gc.garbage.clear)
        self.addCleanup(gc.set_debug, 0)
        gc.collect()
        left = [o for o in gc.garbage if isinstance(o, (LeanClient, LeanConnector))]
        self.assertEqual(left, [])


class Outcome:
    """
    Records what a L{LeanDial} reports.
    """

    def __init__(self) -> None:
        self.connected: list[Any] = []
        self.failed: list[Failure] = []
        self.done: Deferred[None] = Deferred()

    def onConnected(self, protocol: Any) -> None:
        self.connected.append(protocol)
        self.done.callback(None)

    def onFailed(self, reason: Failure) -> None:
        self.failed.append(reason)
        self.done.callback(None)


class LeanDialTests(TestCase):
    """
    L{LeanDial} connects a protocol built in advance, with callbacks.
    """

    def dial(self, port: int, timeout: float = 5.0) -> tuple[LeanDial, Recorder, Outcome]:
        protocol = Recorder()
        outcome = Outcome()
        dial = LeanDial(
            reactor, "127.0.0.1", port, protocol, timeout, outcome.onConnected, outcome.onFailed
        ).start()
        return dial, protocol, outcome

    @inlineCallbacks
    def dialAccepted(self) -> Any:
        """
        Dial a listener of this reactor's; fire with the dialled protocol
        and the transports the listener accepted.
        """
        accepted: list[Any] = []

        class Kept(Echo):
            def connectionMade(self) -> None:
                accepted.append(self.transport)

        factory = Factory.forProtocol(Kept)
        factory.noisy = False
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        dial, protocol, outcome = self.dial(listening.getHost().port)
        yield sleep(0.05)
        return protocol, accepted

    @inlineCallbacks
    def test_connectedAtOnce(self) -> Any:
        """
        Over loopback the protocol is connected, and C{connected} called
        with it, before C{start} returns; bytes go both ways.
        """
        port = listenEcho(self)
        dial, protocol, outcome = self.dial(port)
        self.assertEqual(outcome.connected, [protocol])
        self.assertTrue(protocol.made)
        transport = protocol.transport
        self.assertIsInstance(transport, LeanTransport)
        self.assertEqual(transport.getPeer().port, port)  # type: ignore[union-attr]
        self.assertIs(transport.getPeer(), transport.getPeer())  # type: ignore[union-attr]
        self.assertEqual(transport.getHost().host, "127.0.0.1")  # type: ignore[union-attr]
        self.assertIn("Recorder", transport.logPrefix())  # type: ignore[union-attr]
        transport.write(b"ping")  # type: ignore[union-attr]
        self.assertEqual((yield protocol.receive(4)), b"ping")
        transport.loseConnection()  # type: ignore[union-attr]
        self.assertIsInstance((yield protocol.lost), error.ConnectionDone)

    @inlineCallbacks
    def test_ownDefaults(self) -> Any:
        """
        A dialled connection, and one its listener accepted, hold as their
        own attributes the class defaults every read and write reads (an
        instance's attribute is read faster), with the same values, until
        the connection changes them.
        """
        protocol, accepted = yield self.dialAccepted()
        transports = [protocol.transport] + [t for t in accepted if isinstance(t, LeanTransport)]
        names = ("TLS", "offset", "dataBuffer", "disconnecting", "_writeDisconnecting",
                 "_writeDisconnected", "producer", "bufferSize")
        for transport in transports:
            own = vars(transport)
            self.assertEqual({n: own.get(n, "missing") for n in names},
                             {n: getattr(type(transport), n) for n in names}, transport)
        transport = protocol.transport
        transport.write(b"ping")  # type: ignore[union-attr]
        self.assertEqual((yield protocol.receive(4)), b"ping")
        transport.loseConnection()  # type: ignore[union-attr]
        yield protocol.lost
        self.assertEqual(vars(transport)["disconnecting"], True)

    @inlineCallbacks
    def test_oneType(self) -> Any:
        """
        A dialled connection and one its listener accepted are of one
        class, with the same attributes set in the same order (what keeps
        CPython's specialised attribute reads from missing on the code both
        run), and each still says which end it is.
        """
        protocol, accepted = yield self.dialAccepted()
        dialled = protocol.transport
        [served] = accepted
        self.assertIs(type(dialled), type(served))
        self.assertEqual(list(vars(dialled)), list(vars(served))[:len(vars(dialled))])
        self.assertIsNone(dialled.server)
        self.assertIsNotNone(served.server)
        self.assertEqual(dialled.logPrefix(), "Recorder,client")
        self.assertEqual(served.logPrefix(), "Kept,0,127.0.0.1")
        self.assertEqual(repr(dialled), f"<Recorder to 127.0.0.1:{dialled.getPeer().port}>")
        self.assertEqual(dialled.getPeer(), served.getHost())
        self.assertEqual(dialled.getHost(), served.getPeer())
        self.assertEqual((dialled._tlsClientDefault, served._tlsClientDefault), (True, False))
        dialled.loseConnection()
        yield protocol.lost

    @inlineCallbacks
    def test_rawSockets(self) -> Any:
        """
        A dialled connection, and one its listener accepted, hold the C
        socket type L{socket.socket} wraps (no Python call to make or close
        one), and closing either closes its descriptor.
        """
        protocol, accepted = yield self.dialAccepted()
        transports = [protocol.transport, *accepted]
        self.assertEqual([type(t.socket) for t in transports], [_socket.socket] * 2)
        sockets = [t.socket for t in transports]
        transports[0].write(b"ping")
        self.assertEqual((yield protocol.receive(4)), b"ping")
        transports[0].loseConnection()
        yield protocol.lost
        yield sleep(0.05)
        self.assertEqual([s.fileno() for s in sockets], [-1, -1])

    @inlineCallbacks
    def test_refused(self) -> Any:
        """
        A connection refused within C{start} is reported on a later reactor
        pass (a caller that fails over from C{failed} must not recurse),
        with no timer left behind.
        """
        dial, protocol, outcome = self.dial(freePort())
        self.assertEqual(outcome.failed, [])
        yield outcome.done
        self.assertTrue(outcome.failed[0].check(error.ConnectionRefusedError))
        self.assertFalse(protocol.made)
        self.assertEqual(pendingCalls(dial), [])

    @inlineCallbacks
    def test_cancelRefused(self) -> Any:
        """
        Cancelling an attempt whose refusal is not reported yet reports
        nothing.
        """
        dial, protocol, outcome = self.dial(freePort())
        dial.cancel()
        yield sleep(0.05)
        self.assertEqual((outcome.connected, outcome.failed), ([], []))

    @inlineCallbacks
    def test_connectionMadeRaises(self) -> Any:
        """
        An error raised by the protocol's C{connectionMade} is logged, the
        connection closed, and the dial reported failed.
        """
        port = listenEcho(self)

        class Broken(Recorder):
            def connectionMade(self) -> None:
                raise RuntimeError("broken protocol")

        protocol = Broken()
        outcome = Outcome()
        LeanDial(reactor, "127.0.0.1", port, protocol, 5.0, outcome.onConnected, outcome.onFailed).start()
        self.assertIsInstance((yield protocol.lost), RuntimeError)
        yield outcome.done
        self.assertEqual(outcome.connected, [])
        self.assertTrue(outcome.failed[0].check(RuntimeError))
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    @inlineCallbacks
    def test_completesLater(self) -> Any:
        """
        A handshake that completes after C{start} returns is noticed when
        the socket becomes writable.
        """
        port = stuckListener(self)
        dial, protocol, outcome = self.dial(port, timeout=10.0)
        self.assertEqual((outcome.connected, outcome.failed), ([], []))
        accepted, _ = yield inThread(self.stuck.accept)  # type: ignore[attr-defined]
        self.addCleanup(accepted.close)
        yield outcome.done
        self.assertEqual(outcome.connected, [protocol])
        self.assertIsNone(dial._timer)
        protocol.transport.loseConnection()  # type: ignore[union-attr]
        yield protocol.lost

    @inlineCallbacks
    def test_timesOut(self) -> Any:
        """
        A handshake that does not complete is reported as a
        L{TimeoutError} after the timeout, and its socket closed.
        """
        port = stuckListener(self)
        dial, protocol, outcome = self.dial(port, timeout=0.2)
        sock = dial.socket
        assert sock is not None
        yield outcome.done
        self.assertTrue(outcome.failed[0].check(error.TimeoutError))
        self.assertEqual(sock.fileno(), -1)
        self.assertEqual(dial.fileno(), -1)

    @inlineCallbacks
    def test_cancel(self) -> Any:
        """
        A cancelled attempt reports nothing, closes its socket and stops
        its timer.
        """
        port = stuckListener(self)
        before = len(reactor.getDelayedCalls())
        dial, protocol, outcome = self.dial(port, timeout=0.2)
        sock = dial.socket
        assert sock is not None
        dial.cancel()
        self.assertEqual(sock.fileno(), -1)
        self.assertEqual(len(reactor.getDelayedCalls()), before)
        yield sleep(0.3)
        self.assertEqual((outcome.connected, outcome.failed), ([], []))

    def test_reactor(self) -> None:
        """
        L{LeanEPollReactor} dials through L{LeanDial}.
        """
        lean = LeanEPollReactor()
        self.addCleanup(lean._poller.close)
        outcome = Outcome()
        dial = lean.dialTCP(
            "127.0.0.1", freePort(), Recorder(), 5.0, outcome.onConnected, outcome.onFailed
        )
        self.assertIsInstance(dial, LeanDial)
        self.assertEqual(outcome.failed, [])
        lean.runUntilCurrent()
        self.assertTrue(outcome.failed[0].check(error.ConnectionRefusedError))


class LeanServerTests(TestCase):
    """
    L{LeanPort} accepts connections as L{LeanTransport}s.
    """

    @inlineCallbacks
    def test_serves(self) -> Any:
        """
        An accepted connection relays bytes, and knows its peer (built once)
        and its own address.
        """
        made: list[Protocol] = []
        hosts: list[Any] = []
        prefixes: list[str] = []

        class Remember(Echo):
            def connectionMade(self) -> None:
                made.append(self)
                hosts.append(self.transport.getHost())  # type: ignore[union-attr]
                prefixes.append(self.transport.logPrefix())  # type: ignore[union-attr]

        factory = Factory.forProtocol(Remember)
        factory.noisy = False
        port = LeanPort(0, factory, 50, "127.0.0.1", reactor)
        port.startListening()
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        def talk() -> tuple[bytes, tuple[str, int]]:
            with socket.create_connection(("127.0.0.1", number), timeout=5) as s:
                s.sendall(b"hello")
                data = b""
                while len(data) < 5:
                    data += s.recv(100)
                return data, s.getsockname()

        data, client = yield inThread(talk)
        self.assertEqual(data, b"hello")
        transport = made[0].transport
        self.assertIsInstance(transport, LeanTransport)
        peer = transport.getPeer()  # type: ignore[union-attr]
        self.assertEqual((peer.host, peer.port), client)
        self.assertIs(transport.getPeer(), peer)  # type: ignore[union-attr]
        # Built without IPv4Address's __init__, it is what that builds.
        expected = IPv4Address("TCP", *client)
        self.assertEqual((type(peer), vars(peer), hash(peer), repr(peer)),
                         (IPv4Address, vars(expected), hash(expected), repr(expected)))
        self.assertEqual(hosts[0].port, number)
        self.assertIn("Remember", prefixes[0])
        self.assertIn(f"on {number}", repr(transport))


    @inlineCallbacks
    def test_noDelayInherited(self) -> Any:
        """
        An accepted connection has C{TCP_NODELAY} from its listening port
        before anything sets it; setting it off and on again still works.
        """
        seen: list[bool] = []

        class Toggle(Echo):
            def connectionMade(self) -> None:
                transport: Any = self.transport
                seen.append(transport.getTcpNoDelay())
                transport.setTcpNoDelay(False)
                seen.append(transport.getTcpNoDelay())
                transport.setTcpNoDelay(True)
                seen.append(transport.getTcpNoDelay())

        factory = Factory.forProtocol(Toggle)
        factory.noisy = False
        port = LeanPort(0, factory, 50, "127.0.0.1", reactor)
        port.startListening()
        self.addCleanup(port.stopListening)
        self.assertTrue(port.noDelay)
        number = port.getHost().port

        def talk() -> bytes:
            with socket.create_connection(("127.0.0.1", number), timeout=5) as s:
                s.sendall(b"hi")
                return s.recv(100)

        self.assertEqual((yield inThread(talk)), b"hi")
        self.assertEqual(seen, [True, False, True])

    @inlineCallbacks
    def test_closedLeavesReactor(self) -> Any:
        """
        A connection closed by its peer is no longer watched by the
        reactor once it is lost.
        """
        made: list[Recorder] = []

        def build() -> Recorder:
            made.append(Recorder())
            return made[-1]

        factory = Factory.forProtocol(build)  # type: ignore[arg-type]
        factory.noisy = False
        port = LeanPort(0, factory, 50, "127.0.0.1", reactor)
        port.startListening()
        self.addCleanup(port.stopListening)
        number = port.getHost().port

        def talk() -> None:
            with socket.create_connection(("127.0.0.1", number), timeout=5) as s:
                s.sendall(b"bye")

        yield inThread(talk)
        yield made[0].lost
        transport = made[0].transport
        self.assertNotIn(transport, reactor._selectables.values())  # type: ignore[attr-defined]
        self.assertEqual(made[0].received, b"bye")


    def listenRecording(self, refuse: int = 0) -> tuple[LeanPort, list[tuple[Any, Protocol | None]]]:
        """
        A L{LeanPort} on loopback whose factory records each peer address
        and protocol it builds, refusing the first C{refuse} clients.
        """
        built: list[tuple[Any, Protocol | None]] = []

        class Recording(Factory):
            noisy = False

            def buildProtocol(self, addr: Any) -> Protocol | None:
                protocol = None if len(built) < refuse else Echo()
                built.append((addr, protocol))
                return protocol

        port = LeanPort(0, Recording(), 50, "127.0.0.1", reactor)
        port.startListening()
        self.addCleanup(port.stopListening)
        return port, built

    def clients(self, port: LeanPort, n: int) -> list[socket.socket]:
        """
        C{n} clients connected to C{port} and waiting to be accepted.
        """
        made = []
        for _ in range(n):
            c = socket.create_connection(("127.0.0.1", port.getHost().port), timeout=5)
            self.addCleanup(c.close)
            made.append(c)
        return made

    def test_acceptsWaiting(self) -> None:
        """
        One read accepts every waiting client, up to C{numberAccepts}; the
        address the factory is given is the transport's peer.
        """
        port, built = self.listenRecording()
        port.numberAccepts = 2
        clients = self.clients(port, 3)
        port.doRead()
        self.assertEqual(len(built), 2)
        self.assertEqual(port.numberAccepts, 22)
        port.doRead()
        self.assertEqual(len(built), 3)
        self.assertEqual(port.numberAccepts, 1)
        for (addr, protocol), client in zip(built, clients):
            transport: Any = protocol.transport  # type: ignore[union-attr]
            self.assertIsInstance(transport, LeanTransport)
            self.assertIs(transport.getPeer(), addr)
            self.assertEqual((addr.host, addr.port), client.getsockname())
            transport.loseConnection()

    def test_refused(self) -> None:
        """
        A client the factory builds no protocol for is closed.
        """
        port, built = self.listenRecording(refuse=1)
        [client] = self.clients(port, 1)
        port.doRead()
        self.assertEqual(built[0][1], None)
        self.assertEqual(client.recv(10), b"")

    def test_acceptErrorHandedOver(self) -> None:
        """
        An accept error other than "none waiting" hands the pass to
        Twisted's loop, which skips it (C{EPERM}: a connection netfilter
        refused) and accepts the clients waiting.
        """
        port, built = self.listenRecording()
        self.clients(port, 2)
        real: Any = port.socket

        class Refusing:
            # The listening socket, whose first accept fails.
            failed = False

            def _accept(self) -> Any:
                if not self.failed:
                    self.failed = True
                    raise PermissionError(errno.EPERM, "refused by netfilter")
                return real._accept()

            def accept(self) -> Any:
                return self._accept() if not self.failed else real.accept()

        port.socket = Refusing()  # type: ignore[assignment]
        self.addCleanup(setattr, port, "socket", real)
        port.doRead()
        self.assertEqual(len(built), 2)
        for _, protocol in built:
            protocol.transport.loseConnection()  # type: ignore[union-attr]


class _Reading:
    """
    A socket double whose C{recv} gives C{outcome}: bytes, or an exception
    to raise.
    """

    def __init__(self, outcome: bytes | Exception) -> None:
        self.outcome = outcome

    def recv(self, size: int) -> bytes:
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


class _Recving:
    """
    A socket double whose C{recv} gives each of C{outcomes} in turn (bytes,
    or an exception to raise), peeked or not; it records the calls.
    """

    def __init__(self, *outcomes: bytes | Exception) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[int, int]] = []

    def recv(self, size: int, flags: int = 0) -> bytes:
        self.calls.append((size, flags))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


class Finishing(Protocol):
    """
    Records what it is given, and through which method.
    """

    def __init__(self) -> None:
        self.got: list[tuple[str, bytes]] = []

    def dataReceived(self, data: bytes) -> None:
        self.got.append(("data", data))

    def finalDataReceived(self, data: bytes) -> None:
        self.got.append(("final", data))


class ReadToEndTests(SynchronousTestCase):
    """
    After the peer's FIN (C{EPOLLRDHUP}), a lean connection reads up to the
    end in one pass, taking the end only from what C{recv} says.
    """

    def read(self, protocol: Any, *outcomes: bytes | Exception) -> tuple[Any, Any, list[Any]]:
        transport = LeanTransport.__new__(LeanTransport)
        transport.socket = _Recving(*outcomes)  # type: ignore[assignment]
        transport.bufferSize = 65536
        transport.protocol = protocol
        why = transport.doReadToEnd()
        return why, getattr(protocol, "got", None), transport.socket.calls  # type: ignore[attr-defined]

    def test_outcomes(self) -> None:
        """
        The end right after the data: the data through C{finalDataReceived}
        and the end reported, in one pass.  Anything else after the data
        (more data, as after TCP urgent data's mark; nothing yet, as for a
        stale event) leaves the data a plain read and the rest to the next
        read; an error (a reset), which the peek consumed, is reported
        after the data as a plain read.  No data at all is what L{doRead}
        says.
        """
        peek = (1, socket.MSG_PEEK)
        reset = ConnectionResetError(errno.ECONNRESET, "reset")
        again = BlockingIOError(errno.EWOULDBLOCK, "again")
        for outcomes, expected in [
            ((b"last", b""), (main.CONNECTION_DONE, [("final", b"last")], [(65536, 0), peek])),
            ((b"some", b"m"), (None, [("data", b"some")], [(65536, 0), peek])),
            ((b"some", reset), (main.CONNECTION_LOST, [("data", b"some")], [(65536, 0), peek])),
            ((b"some", again), (None, [("data", b"some")], [(65536, 0), peek])),
            ((b"",), (main.CONNECTION_DONE, [], [(65536, 0)])),
            ((again,), (None, [], [(65536, 0)])),
            ((reset,), (main.CONNECTION_LOST, [], [(65536, 0)])),
        ]:
            self.assertEqual(self.read(Finishing(), *outcomes), expected, outcomes)

    def test_plainProtocol(self) -> None:
        """
        A protocol without C{finalDataReceived} gets the last bytes through
        C{dataReceived}, and the end is reported all the same.
        """
        received: list[bytes] = []
        protocol = Protocol()
        protocol.dataReceived = received.append  # type: ignore[method-assign]
        why, _, _ = self.read(protocol, b"last", b"")
        self.assertEqual((why, received), (main.CONNECTION_DONE, [b"last"]))

    def test_closedMeanwhile(self) -> None:
        """
        A protocol that closes the connection when given the last bytes
        gets no end reported after that.
        """
        class Closing(Finishing):
            def finalDataReceived(self, data: bytes) -> None:
                self.transport.disconnected = 1  # type: ignore[union-attr]

        protocol = Closing()
        transport = LeanTransport.__new__(LeanTransport)
        transport.socket = _Recving(b"last", b"")  # type: ignore[assignment]
        transport.bufferSize = 65536
        transport.protocol = protocol
        protocol.transport = transport
        self.assertIsNone(transport.doReadToEnd())


@implementer(IHalfCloseableProtocol)
class EndRecorder(Protocol):
    """
    A half-closeable protocol that records what it reads and how its input
    ended; C{onData} (if set) runs after each read.
    """

    onData: Any = None

    def __init__(self) -> None:
        self.got: list[tuple[str, Any]] = []

    def dataReceived(self, data: bytes) -> None:
        self.got.append(("data", data))
        if self.onData is not None:
            self.onData(self)

    def finalDataReceived(self, data: bytes) -> None:
        self.got.append(("final", data))
        if self.onData is not None:
            self.onData(self)

    def readConnectionLost(self) -> None:
        self.got.append(("end", None))

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.got.append(("lost", reason.type))


class ReadToEndOverTCPTests(SynchronousTestCase):
    """
    A lean connection in a lean reactor, over a real loopback TCP
    connection, when its peer's last bytes and end come together.
    """

    def setUp(self) -> None:
        self.reactor = LeanEPollReactor()
        self.addCleanup(self.reactor._poller.close)

    def connect(self, protocol: Protocol) -> tuple[LeanTransport, socket.socket]:
        """
        A lean connection read by C{self.reactor}, with C{protocol}, and its
        peer's socket.
        """
        with socket.create_server(("127.0.0.1", 0)) as server:
            peer = socket.create_connection(server.getsockname(), timeout=5)
            mine, address = server.accept()
        self.addCleanup(peer.close)
        sock = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, mine.detach())
        sock.setblocking(False)
        transport = LeanTransport.dialled(sock, protocol, self.reactor, address)
        protocol.makeConnection(transport)
        self.addCleanup(lambda: transport.connected and transport.abortConnection())
        return transport, peer

    def spin(self, passes: int = 5) -> None:
        for _ in range(passes):
            self.reactor.doIteration(0.05)

    def test_resetAfterData(self) -> None:
        """
        Data then a reset (C{SO_LINGER} 0): the data, then the connection
        lost, not a clean end: the peek that looked past the data took the
        socket's error, which a later read would not see again.
        """
        protocol = EndRecorder()
        _, peer = self.connect(protocol)
        peer.sendall(b"data")
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        peer.close()
        self.spin()
        self.assertEqual(protocol.got, [("data", b"data"), ("lost", error.ConnectionLost)])

    def test_urgentData(self) -> None:
        """
        Data after TCP urgent data's mark, then the end: the reads stop at
        the mark and go on past it; nothing is lost, and the end comes last.
        """
        protocol = EndRecorder()
        _, peer = self.connect(protocol)
        peer.sendall(b"before")
        peer.send(b"!", socket.MSG_OOB)
        peer.sendall(b"after")
        peer.shutdown(socket.SHUT_WR)
        self.spin()
        self.assertEqual(protocol.got, [("data", b"before"), ("final", b"after"), ("end", None)])

    def test_pausedMeanwhile(self) -> None:
        """
        A protocol that stops reading when given the last bytes (an HTTP
        client's pipelined requests wait for their answers) is not told of
        the end until it reads again, as when the end came later.
        """
        protocol = EndRecorder()
        protocol.onData = lambda p: p.transport.pauseProducing()
        transport, peer = self.connect(protocol)
        peer.sendall(b"last")
        peer.shutdown(socket.SHUT_WR)
        self.spin()
        self.assertEqual(protocol.got, [("final", b"last")])
        transport.resumeProducing()
        self.spin()
        self.assertEqual(protocol.got, [("final", b"last"), ("end", None)])

    def test_closingMeanwhile(self) -> None:
        """
        A protocol without a half-close that answers the last bytes and
        closes (the connection waits to send the answer) has its answer
        sent, not cut by the end.
        """
        class Answering(Protocol):
            def dataReceived(self, data: bytes) -> None:
                self.transport.write(b"answer")  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]

        _, peer = self.connect(Answering())
        peer.sendall(b"bad request")
        peer.shutdown(socket.SHUT_WR)
        self.spin()
        self.assertEqual(peer.recv(100), b"answer")


class LeanReadTests(SynchronousTestCase):
    """
    A lean connection reads as L{tcp.Connection.doRead} does, with one call
    fewer.
    """

    def test_sameAsTwisted(self) -> None:
        """
        For data, the end of the stream, nothing to read yet and a reset,
        the lean C{doRead} returns what Twisted's does and hands its
        protocol the same bytes.
        """
        outcomes: list[bytes | Exception] = [
            b"some bytes", b"", BlockingIOError(errno.EWOULDBLOCK, "again"),
            ConnectionResetError(errno.ECONNRESET, "reset"),
        ]

        def read(doRead: Any, outcome: bytes | Exception) -> tuple[Any, list[bytes]]:
            transport = LeanTransport.__new__(LeanTransport)
            transport.socket = _Reading(outcome)
            transport.bufferSize = 65536
            transport.protocol = Recorder()
            received: list[bytes] = []
            transport.protocol.dataReceived = received.append  # type: ignore[method-assign]
            return doRead(transport), received

        self.assertEqual([read(LeanTransport.doRead, o) for o in outcomes],
                         [read(tcp.Connection.doRead, o) for o in outcomes])
        self.assertEqual(read(LeanTransport.doRead, b"x")[1], [b"x"])
        self.assertIsNot(LeanTransport.doRead, tcp.Connection.doRead)


@implementer(IHalfCloseableProtocol)
class HalfCloser(Protocol):
    """
    A half-closeable protocol that records what it was told.
    """

    def __init__(self) -> None:
        self.told: list[str] = []

    def readConnectionLost(self) -> None:
        self.told.append("read")

    def writeConnectionLost(self) -> None:
        self.told.append("write")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.told.append("lost")


class Conforming(Protocol):
    """
    A protocol that does not provide L{IHalfCloseableProtocol} but conforms
    to it through C{__conform__}, as zope.interface allows.
    """

    def __init__(self) -> None:
        self.adapter = HalfCloser()

    def __conform__(self, interface: Any) -> Any:
        return self.adapter if interface is IHalfCloseableProtocol else None


class _ShutDown:
    """
    A socket double that counts its C{shutdown} calls.
    """

    def __init__(self) -> None:
        self.shutdowns: list[int] = []

    def shutdown(self, how: int) -> None:
        self.shutdowns.append(how)


class HalfCloseTests(SynchronousTestCase):
    """
    A lean connection's half-close asks its protocol what Twisted's adaptation
    would, without adapting a protocol that provides the interface itself.
    """

    def test_sameAsTwisted(self) -> None:
        """
        C{readConnectionLost} and C{_closeWriteConnection} tell each kind of
        protocol what Twisted's do: a half-closeable one (or its adapter)
        that a side is done, any other that the connection is lost; and the
        write side is shut down first.  (A protocol that provides the
        interface itself is not adapted: see L{lbtwist.leantcp._providesHalfClose}.)
        """

        def told(method: Any, make: Any) -> tuple[list[str], list[int]]:
            protocol = make()
            transport = LeanTransport.__new__(LeanTransport)
            transport.socket = _ShutDown()
            transport.protocol = protocol
            transport.connectionLost = lambda reason: protocol.connectionLost(reason)
            if method.__name__ == "readConnectionLost":
                method(transport, connectionDone)
            else:
                method(transport)
            record = protocol.adapter if isinstance(protocol, Conforming) else protocol
            return getattr(record, "told", ["lost"] if record is None else []), transport.socket.shutdowns

        class Plain(Protocol):
            def __init__(self) -> None:
                self.told: list[str] = []

            def connectionLost(self, reason: Failure = connectionDone) -> None:
                self.told.append("lost")

        for name in ("readConnectionLost", "_closeWriteConnection"):
            for make in (HalfCloser, Conforming, Plain):
                lean = told(getattr(LeanTransport, name), make)
                self.assertEqual(lean, told(getattr(tcp.Connection, name), make), (name, make))
        self.assertEqual(told(LeanTransport.readConnectionLost, HalfCloser), (["read"], []))
        self.assertEqual(told(LeanTransport._closeWriteConnection, HalfCloser), (["write"], [1]))
        self.assertEqual(told(LeanTransport.readConnectionLost, Plain), (["lost"], []))
        self.assertIsNot(LeanTransport.readConnectionLost, tcp.Connection.readConnectionLost)


class LeanReactorTests(SynchronousTestCase):
    """
    L{LeanEPollReactor} uses the lean transports for TCP where it can.
    """

    def setUp(self) -> None:
        self.reactor = LeanEPollReactor()
        self.addCleanup(self.reactor._poller.close)

    def test_listenTCP(self) -> None:
        """
        Its TCP listeners are L{LeanPort}s.
        """
        port = self.reactor.listenTCP(0, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.assertIsInstance(port, LeanPort)

    def test_connectTCP(self) -> None:
        """
        An IP address is dialled by a L{LeanConnector}; a host name, or a
        bind address, by Twisted's connector.
        """
        refused = freePort()
        lean = self.reactor.connectTCP("127.0.0.1", refused, RecordingFactory())
        self.assertIsInstance(lean, LeanConnector)
        named = self.reactor.connectTCP("localhost", refused, RecordingFactory())
        self.assertIsInstance(named, tcp.Connector)
        named.stopConnecting()
        bound = self.reactor.connectTCP(
            "127.0.0.1", refused, RecordingFactory(), bindAddress=("127.0.0.1", 0)
        )
        self.assertIsInstance(bound, tcp.Connector)
        bound.stopConnecting()

    def test_ipFamily(self) -> None:
        """
        L{ipFamily} tells IPv4 and IPv6 addresses from host names.
        """
        self.assertEqual(ipFamily("10.0.0.1"), socket.AF_INET)
        self.assertEqual(ipFamily("::1"), socket.AF_INET6)
        self.assertIsNone(ipFamily("localhost"))
        self.assertIsNone(ipFamily("10.0.0"))


class ScriptedListening:
    """
    A listening socket whose C{_accept} raises what the test scripted (or,
    for L{None}, accepts a connection: a fresh socket's descriptor), then
    L{BlockingIOError} (no more connections), counting the calls.
    """

    def __init__(self, *errors: OSError | None) -> None:
        self.errors = list(errors)
        self.accepts = 0

    def _accept(self) -> tuple[int, Any]:
        self.accepts += 1
        if self.errors:
            scripted = self.errors.pop(0)
            if scripted is None:
                return socket.socket().detach(), ("127.0.0.1", 40000)
            raise scripted
        raise BlockingIOError(errno.EAGAIN, "no more")

    def close(self) -> None:
        """
        Nothing to close.
        """


class Turning(Factory):
    """
    A factory that builds no protocol: each connection accepted is closed.
    """

    def buildProtocol(self, addr: Any) -> None:
        """
        Refuse the connection.
        """
        return None


class ShortOfResourcesTests(SynchronousTestCase):
    """
    L{LeanPort} short of descriptors, buffers or memory stops accepting for
    a while instead of closing what it accepts or spinning.
    """

    def listening(self, listening: ScriptedListening) -> tuple[MemoryReactorClock, LeanPort]:
        """
        A port reading from C{listening} in a memory reactor.
        """
        clock = MemoryReactorClock()
        port = LeanPort(0, Factory.forProtocol(Echo), 50, "127.0.0.1", clock)
        port.socket = listening  # type: ignore[assignment]
        port.connected = True
        port.numberAccepts = 100
        port._realPortNumber = 8080
        port.fileno = lambda: 99  # type: ignore[method-assign]
        port.startReading()
        return clock, port

    def test_pausesAndTriesAgain(self) -> None:
        """
        C{EMFILE} stops the port's reading at once (the client stays in
        the backlog, nothing is accepted and closed) for L{ACCEPT_PAUSE}
        seconds; then it reads again.  C{ENFILE}, C{ENOBUFS} and C{ENOMEM}
        do the same: the port is never left readable while accept fails,
        which would spin.
        """
        for code in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            listening = ScriptedListening(OSError(code, "short"))
            clock, port = self.listening(listening)
            port.doRead()
            self.assertEqual(listening.accepts, 1)
            self.assertNotIn(port, clock.getReaders())
            clock.advance(ACCEPT_PAUSE)
            self.assertIn(port, clock.getReaders())
            port.doRead()
            self.assertEqual(listening.accepts, 2)
            self.assertIn(port, clock.getReaders())

    def test_otherOwnersWin(self) -> None:
        """
        A port stopped by another owner during a pause (the global
        C{maxconn}, a master that never accepts) is not started again when
        the pause ends; one started during it starts when the pause ends,
        not before; a port that stopped listening has no pause pending.
        """
        clock, port = self.listening(ScriptedListening(OSError(errno.EMFILE, "short")))
        port.doRead()
        port.stopReading()
        clock.advance(ACCEPT_PAUSE)
        self.assertNotIn(port, clock.getReaders())
        port.startReading()
        self.assertIn(port, clock.getReaders())
        port.socket = ScriptedListening(OSError(errno.EMFILE, "short"))  # type: ignore[assignment]
        port.doRead()
        port.startReading()
        self.assertNotIn(port, clock.getReaders())
        clock.advance(ACCEPT_PAUSE)
        self.assertIn(port, clock.getReaders())
        port.socket.errors.append(OSError(errno.EMFILE, "short"))  # type: ignore[attr-defined]
        port.doRead()
        port.connectionLost(Failure(error.ConnectionDone()))
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_flappingLogsLittle(self) -> None:
        """
        A listener going in and out of shortage every pause (a descriptor
        freed, taken at once) logs the start of a shortage at most once in
        L{SHORTAGE_LOG_INTERVAL} seconds, the next warning counting those
        not logged, and its end only after a logged start: not two lines a
        pause.
        """
        clock, port = self.listening(ScriptedListening())
        port.factory = Turning()
        events: list[tuple[float, dict[str, Any]]] = []
        port._log = Logger(observer=lambda e: events.append((clock.seconds(), e)))
        listening: Any = port.socket
        cycles = 120
        for _ in range(cycles):
            listening.errors = [OSError(errno.EMFILE, "short")]
            port.doRead()
            clock.advance(ACCEPT_PAUSE)
            listening.errors = [None]
            port.doRead()
        warned = [(t, e) for t, e in events if e["log_level"] == LogLevel.warn]
        ended = [e for _, e in events if "accepts again" in formatEvent(e)]
        self.assertEqual(len(events), len(warned) + len(ended))
        self.assertEqual(len(warned), len(ended))
        self.assertLessEqual(len(warned), cycles * ACCEPT_PAUSE / SHORTAGE_LOG_INTERVAL + 1)
        times = [t for t, _ in warned]
        self.assertTrue(all(b - a >= SHORTAGE_LOG_INTERVAL for a, b in zip(times, times[1:])),
                        times)
        self.assertEqual([e["unlogged"] for _, e in warned],
                         [0] + [round((b - a) / ACCEPT_PAUSE) - 1 for a, b in zip(times, times[1:])])
        later = warned[1][1]
        self.assertEqual(
            formatEvent(later),
            f"listener on 8080 cannot accept (EMFILE: {os.strerror(errno.EMFILE)}): clients "
            f"wait in the backlog, accepting again every {ACCEPT_PAUSE}s until it can "
            f"({later['unlogged']} more shortages since the last such warning, not logged)")

    def test_lastingShortageLogged(self) -> None:
        """
        A shortage not logged (it began too soon after a logged one) is
        logged once it lasts past L{SHORTAGE_LOG_INTERVAL}: the log never
        ends on "accepts again" while the listener cannot accept.
        """
        clock, port = self.listening(ScriptedListening())
        port.factory = Turning()
        events: list[dict[str, Any]] = []
        port._log = Logger(observer=events.append)
        listening: Any = port.socket
        listening.errors = [OSError(errno.EMFILE, "short")]
        port.doRead()
        clock.advance(ACCEPT_PAUSE)
        listening.errors = [None]
        port.doRead()
        self.assertEqual(len(events), 2)
        for _ in range(int(SHORTAGE_LOG_INTERVAL / ACCEPT_PAUSE) + 1):
            listening.errors = [OSError(errno.EMFILE, "short")]
            port.doRead()
            clock.advance(ACCEPT_PAUSE)
        self.assertEqual(len(events), 3)
        self.assertEqual((events[2]["log_level"], events[2]["unlogged"]), (LogLevel.warn, 0))
