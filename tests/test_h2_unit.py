"""
HTTP/2 connections and streams (L{lbtwist.http._h2}) driven by an h2
client over memory transports and a memory reactor: the protocol choice,
exchanges, flow control as backpressure, timeouts, abuse limits and the
graceful stop.
"""

from __future__ import annotations

from typing import Any

import h2.config
import h2.connection
import h2.events
from h2.errors import ErrorCodes
from h2.settings import SettingCodes, Settings
from hyperframe.frame import (
    ContinuationFrame,
    DataFrame,
    Frame,
    GoAwayFrame,
    HeadersFrame,
    PingFrame,
    RstStreamFrame,
    WindowUpdateFrame,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject  # type: ignore[import-untyped]

from lbtwist.config import parseConfig
from lbtwist.dial import Dialler
from lbtwist.http import HTTPProxyFactory
from lbtwist.http._client import ClientConnection
from lbtwist.http._exchange import IClientSide
from lbtwist.http._h2 import PREFACE, H2Connection, H2Stream, ProtocolSniffer
from lbtwist.pool import BackendPool

from .test_http_unit import CLIENT, connectBackend

GET = [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/a"),
       (b":authority", b"h.example")]


def h2Factory(reactor: MemoryReactorClock, http2: Any = True, **pool: Any) -> HTTPProxyFactory:
    """
    An HTTP proxy factory whose listener speaks h2c, on a memory reactor.
    """
    body = {"backends": [{"name": "b1", "endpoint": "tcp:host=10.0.0.1:port=80"}],
            "timeouts": {"request": 5, "response": 10, "idle": 30}, **pool}
    config = parseConfig({"listeners": [{"listen": "tcp:80", "mode": "http", "http2": http2}],
                          "pools": {"web": body}})
    return HTTPProxyFactory(BackendPool(config.pools[0]), reactor, Dialler(reactor),
                            config.listeners[0])


def frames(data: bytes) -> list[Any]:
    """
    The frames in C{data}, parsed without an h2 state machine (which would
    refuse what a server may send after its GOAWAY, or resets of streams
    a client never opened through it).
    """
    out = []
    while len(data) >= 9:
        frame, length = Frame.parse_frame_header(memoryview(data[:9]))
        frame.parse_body(memoryview(data[9:9 + length]))
        out.append(frame)
        data = data[9 + length:]
    return out


class ProtocolTransport(StringTransport):
    """
    A memory transport that, as a TCP one, calls its C{protocol}.
    """

    protocol: Any = None
    aborted = False

    def abortConnection(self) -> None:
        """
        Record the abort, then close.
        """
        self.aborted = True
        super().abortConnection()


class Client:
    """
    An h2 client talking to a balancer's connection in memory.
    """

    def __init__(self, factory: HTTPProxyFactory, settings: dict[int, int] | None = None) -> None:
        self.factory = factory
        self.transport = ProtocolTransport(peerAddress=CLIENT)
        sniffer = factory.buildProtocol(CLIENT)
        assert sniffer is not None
        self.transport.protocol = sniffer
        sniffer.makeConnection(self.transport)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        if settings:
            self.conn.local_settings = Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.events: list[Any] = []
        self.pump()

    @property
    def server(self) -> Any:
        """
        The protocol the transport calls now.
        """
        return self.transport.protocol

    def pump(self, raw: bytes = b"") -> list[Any]:
        """
        Send what the client has to send (and C{raw} bytes after it);
        read what the server sent; return the new events.
        """
        data = self.conn.data_to_send() + raw
        if data:
            self.server.dataReceived(data)
        out = self.transport.value()
        self.transport.clear()
        new = self.conn.receive_data(out) if out else []
        self.events.extend(new)
        more = self.conn.data_to_send()
        if more and not self.transport.disconnecting:
            self.server.dataReceived(more)
            out = self.transport.value()
            self.transport.clear()
            if out:
                extra = self.conn.receive_data(out)
                new.extend(extra)
                self.events.extend(extra)
        return new

    def send(self, sid: int, data: bytes, end: bool = False) -> None:
        """
        Send C{data} on C{sid} in frames of at most 16 KiB.
        """
        for at in range(0, len(data), 16384):
            self.conn.send_data(sid, data[at:at + 16384])
        if end:
            self.conn.end_stream(sid)
        self.pump()

    def raw(self, frame: Any) -> list[Any]:
        """
        Send C{frame} as it is, and parse what the server answers.
        """
        self.transport.clear()
        self.server.dataReceived(frame.serialize())
        return frames(self.transport.value())

    def get(self, sid: int, fields: list[tuple[bytes, bytes]] = GET, end: bool = True) -> None:
        """
        Send a request head on C{sid}.
        """
        self.conn.send_headers(sid, fields, end_stream=end)
        self.pump()

    def of(self, kind: type, sid: int | None = None) -> list[Any]:
        """
        The events of C{kind} (on stream C{sid}) read so far.
        """
        return [e for e in self.events if isinstance(e, kind)
                and (sid is None or getattr(e, "stream_id", None) == sid)]

    def body(self, sid: int) -> bytes:
        """
        The response body read so far on C{sid}.
        """
        return b"".join(e.data for e in self.of(h2.events.DataReceived, sid))

    def status(self, sid: int) -> int | None:
        """
        The response status on C{sid}, if a head was read.
        """
        for e in self.of(h2.events.ResponseReceived, sid):
            return int(dict(e.headers)[b":status"])
        return None


class H2TestCase(SynchronousTestCase):
    """
    A memory reactor and an h2c factory.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.factory = h2Factory(self.reactor)

    def backend(self, index: int = -1) -> tuple[Any, StringTransport]:
        """
        Complete the backend connection attempt C{index}.
        """
        transport = StringTransport()
        return connectBackend(self.reactor, transport, index), transport


class ChoiceTests(H2TestCase):
    """
    The sniffer chooses the protocol and hands the transport over.
    """

    def test_h1(self) -> None:
        """
        HTTP/1.1 bytes get an HTTP/1.1 connection, which the transport
        calls directly from then on.
        """
        transport = ProtocolTransport(peerAddress=CLIENT)
        sniffer = self.factory.buildProtocol(CLIENT)
        self.assertIsInstance(sniffer, ProtocolSniffer)
        transport.protocol = sniffer
        sniffer.makeConnection(transport)  # type: ignore[union-attr]
        sniffer.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # type: ignore[union-attr]
        self.assertIsInstance(transport.protocol, ClientConnection)
        self.assertEqual(self.factory.clients, {transport.protocol})
        self.assertEqual(len(self.reactor.tcpClients), 1)

    def test_prefaceInPieces(self) -> None:
        """
        The preface may come a byte at a time; until it is whole nothing
        is chosen.
        """
        transport = ProtocolTransport(peerAddress=CLIENT)
        sniffer: Any = self.factory.buildProtocol(CLIENT)
        transport.protocol = sniffer
        sniffer.makeConnection(transport)
        for byte in PREFACE[:-1]:
            sniffer.dataReceived(bytes([byte]))
        self.assertIs(transport.protocol, sniffer)
        sniffer.dataReceived(PREFACE[-1:])
        self.assertIsInstance(transport.protocol, H2Connection)
        self.assertEqual(self.factory.h2Connections, 1)

    def test_silentClient(self) -> None:
        """
        A client that sends nothing is aborted after the request timeout.
        """
        transport = ProtocolTransport(peerAddress=CLIENT)
        sniffer: Any = self.factory.buildProtocol(CLIENT)
        sniffer.makeConnection(transport)
        self.reactor.advance(5)
        self.assertTrue(transport.disconnecting)

    def test_plainListener(self) -> None:
        """
        A listener without HTTP/2 builds HTTP/1.1 connections at once.
        """
        factory = h2Factory(self.reactor, http2=False)
        self.assertIsInstance(factory.buildProtocol(CLIENT), ClientConnection)


class StreamTests(H2TestCase):
    """
    Streams drive exchanges.
    """

    def test_interface(self) -> None:
        """
        A stream provides L{IClientSide}.
        """
        client = Client(self.factory)
        client.get(1)
        stream = client.server.streams[1]
        self.assertIsInstance(stream, H2Stream)
        self.assertTrue(verifyObject(IClientSide, stream))

    def test_exchange(self) -> None:
        """
        A GET goes to the backend as HTTP/1.1; its response comes back on
        the stream, with hop-by-hop fields dropped.
        """
        client = Client(self.factory)
        client.get(1)
        backend, transport = self.backend()
        self.assertTrue(transport.value().startswith(
            b"GET /a HTTP/1.1\r\nhost: h.example\r\nX-Forwarded-For: 192.0.2.7\r\n"))
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                             b"Connection: keep-alive\r\nX-A: 1\r\n\r\nhi")
        client.pump()
        self.assertEqual((client.status(1), client.body(1)), (200, b"hi"))
        self.assertEqual(dict(client.of(h2.events.ResponseReceived, 1)[0].headers),
                         {b":status": b"200", b"content-length": b"2", b"x-a": b"1"})
        self.assertEqual(len(client.of(h2.events.StreamEnded, 1)), 1)
        self.assertEqual(client.server.streams, {})
        self.assertEqual(self.factory.statuses, {"2xx": 1})

    def test_endStreamOnLastData(self) -> None:
        """
        A response whose length is known ends its stream with its last
        DATA frame, as HAProxy's do, not with an empty DATA frame after it;
        a chunked one, whose end comes after its last piece was sent, ends
        with an empty frame.
        """
        cases = [
            (b"Content-Length: 2\r\n\r\nhi", [(b"hi", True)]),
            (b"Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n",
             [(b"hi", False), (b"", True)]),
        ]
        for rest, data in cases:
            client = Client(h2Factory(self.reactor))
            client.get(1)
            backend, _ = self.backend()
            backend.dataReceived(b"HTTP/1.1 200 OK\r\n" + rest)
            client.pump()
            self.assertEqual([(e.data, e.stream_ended is not None)
                              for e in client.of(h2.events.DataReceived, 1)], data, rest)
            self.assertEqual(len(client.of(h2.events.StreamEnded, 1)), 1)

    def test_concurrent(self) -> None:
        """
        Two streams are two exchanges in flight at once, answered in any
        order.
        """
        client = Client(self.factory)
        client.get(1)
        client.get(3, [*GET[:2], (b":path", b"/b"), GET[3]])
        first, _ = self.backend(0)
        second, _ = self.backend(1)
        second.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb")
        first.dataReceived(b"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\na")
        client.pump()
        self.assertEqual([client.status(1), client.body(1), client.status(3), client.body(3)],
                         [201, b"a", 200, b"b"])

    def test_malformedReset(self) -> None:
        """
        A malformed head resets its stream with PROTOCOL_ERROR, nothing is
        connected, and the connection goes on.
        """
        client = Client(self.factory)
        client.get(1, [*GET, (b"transfer-encoding", b"chunked")])
        self.assertEqual([e.error_code for e in client.of(h2.events.StreamReset, 1)],
                         [ErrorCodes.PROTOCOL_ERROR])
        self.assertEqual(self.reactor.tcpClients, [])
        client.get(3)
        self.assertEqual(len(self.reactor.tcpClients), 1)
        self.assertEqual(self.factory.refused, 1)

    def test_conflictingHost(self) -> None:
        """
        A Host that differs from C{:authority} gets a 400.
        """
        client = Client(self.factory)
        client.get(1, [*GET, (b"host", b"other.example")])
        self.assertEqual(client.status(1), 400)
        self.assertEqual(self.reactor.tcpClients, [])

    def test_contentLengthOverrun(self) -> None:
        """
        More DATA than the content-length is a connection error (h2 checks
        it): the extra bytes never reach the backend, whose connection is
        aborted.
        """
        client = Client(self.factory)
        client.get(1, [*GET, (b"content-length", b"3")], end=False)
        _, transport = self.backend()
        client.send(1, b"abcdef", end=True)
        self.assertNotIn(b"abc", transport.value())
        self.assertTrue(transport.disconnecting)
        self.assertEqual([e.error_code for e in client.of(h2.events.ConnectionTerminated)],
                         [ErrorCodes.PROTOCOL_ERROR])

    def test_contentLengthShort(self) -> None:
        """
        Less DATA than the content-length: the backend never gets a
        complete request (its connection is aborted).
        """
        client = Client(self.factory)
        client.get(1, [*GET, (b"content-length", b"5")], end=False)
        _, transport = self.backend()
        client.send(1, b"ab", end=True)
        self.assertTrue(transport.disconnecting)
        self.assertTrue(client.transport.disconnecting)

    def test_streamChecksLength(self) -> None:
        """
        The stream checks the length itself too (whatever h2 does): DATA
        past it resets the stream and aborts the backend connection before
        the extra bytes reach it; DATA short of it at the stream's end
        likewise.
        """
        client = Client(self.factory)
        client.get(1, [*GET, (b"content-length", b"3")], end=False)
        client.get(3, [*GET, (b"content-length", b"3")], end=False)
        _, first = self.backend(0)
        _, second = self.backend(1)
        streams = client.server.streams
        one, three = streams[1], streams[3]
        one.dataReceived(b"abcd", 4)
        three.dataReceived(b"ab", 2)
        three.streamEnded()
        client.pump()
        self.assertNotIn(b"abcd", first.value())
        self.assertTrue(first.disconnecting)
        self.assertTrue(second.disconnecting)
        self.assertEqual(
            sorted((e.stream_id, e.error_code) for e in client.of(h2.events.StreamReset)),
            [(1, ErrorCodes.PROTOCOL_ERROR), (3, ErrorCodes.PROTOCOL_ERROR)])

    def test_chunkedBody(self) -> None:
        """
        A body without a length goes chunked to the backend.
        """
        client = Client(self.factory)
        client.get(1, [(b":method", b"POST"), *GET[1:]], end=False)
        _, transport = self.backend()
        client.send(1, b"hello", end=True)
        self.assertIn(b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                      transport.value())

    def test_responseTimeout(self) -> None:
        """
        A stream whose backend does not answer in time gets a 504; another
        stream of the connection is not affected.
        """
        client = Client(self.factory)
        client.get(1)
        self.backend(0)
        self.reactor.advance(5)
        client.get(3)
        other, _ = self.backend(1)
        self.reactor.advance(5.5)
        client.pump()
        self.assertEqual(client.status(1), 504)
        other.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        client.pump()
        self.assertEqual(client.status(3), 200)

    def test_clientReset(self) -> None:
        """
        A stream the client resets drops its exchange: the backend
        connection is aborted, and the reset counted.
        """
        client = Client(self.factory)
        client.get(1)
        _, transport = self.backend()
        client.conn.reset_stream(1, ErrorCodes.CANCEL)
        client.pump()
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.abandoned, 1)
        self.assertEqual(client.server._resets, 1)


class FlowControlTests(H2TestCase):
    """
    Flow control is backpressure both ways.
    """

    def test_requestHeldUntilConnected(self) -> None:
        """
        Request DATA that arrives before the backend is connected is not
        acknowledged: the client's window stays closed by as much, and
        opens once the backend took it.
        """
        client = Client(self.factory)
        client.get(1, [(b":method", b"POST"), *GET[1:], (b"content-length", b"40000")],
                   end=False)
        client.send(1, b"x" * 40000)
        self.assertEqual(client.conn.local_flow_control_window(1), 65535 - 40000)
        _, transport = self.backend()
        client.pump()
        self.assertTrue(transport.value().endswith(b"x" * 40000))
        self.assertEqual(client.conn.local_flow_control_window(1), 65535)

    def test_heldDataOfResetStream(self) -> None:
        """
        DATA a stream held unacknowledged when the client reset it goes back
        to the connection's window, so resets cannot shrink it for good.
        """
        self.factory = h2Factory(self.reactor, {"connection-window-size": 65535})
        client = Client(self.factory)
        client.get(1, [(b":method", b"POST"), *GET[1:]], end=False)
        client.send(1, b"x" * 40000)
        self.assertEqual(client.conn.outbound_flow_control_window, 65535 - 40000)
        client.conn.reset_stream(1, ErrorCodes.CANCEL)
        client.pump()
        self.assertEqual(client.conn.outbound_flow_control_window, 65535)

    def test_requestPausedByBackend(self) -> None:
        """
        While the backend connection cannot take more (its transport
        paused the stream), DATA is not acknowledged.
        """
        client = Client(self.factory)
        client.get(1, [(b":method", b"POST"), *GET[1:]], end=False)
        _, transport = self.backend()
        stream = client.server.streams[1]
        self.assertIs(transport.producer, stream)
        stream.pauseProducing()
        client.send(1, b"y" * 50000)
        self.assertEqual(client.conn.local_flow_control_window(1), 65535 - 50000)
        stream.resumeProducing()
        client.pump()
        self.assertEqual(client.conn.local_flow_control_window(1), 65535)

    def test_responseWindow(self) -> None:
        """
        Response DATA goes out within the client's window; the backend is
        paused while DATA waits, and resumed when the client opens the
        window.
        """
        client = Client(self.factory, {SettingCodes.INITIAL_WINDOW_SIZE: 1000})
        client.get(1)
        backend, transport = self.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"z" * 3000)
        client.pump()
        self.assertEqual(len(client.body(1)), 1000)
        self.assertEqual(transport.producerState, "paused")
        stream = client.server.streams[1]
        self.assertEqual(sum(map(len, stream._out)), 2000)
        client.conn.increment_flow_control_window(5000, 1)
        client.pump()
        self.assertEqual(len(client.body(1)), 3000)
        self.assertEqual(transport.producerState, "producing")
        backend.dataReceived(b"z" * 2000)
        client.conn.increment_flow_control_window(5000, 1)
        client.pump()
        self.assertEqual(client.body(1), b"z" * 5000)
        self.assertEqual(len(client.of(h2.events.StreamEnded, 1)), 1)

    def test_connectionWindow(self) -> None:
        """
        DATA that waits for the connection's window (the stream's is open)
        goes out on a WINDOW_UPDATE for the connection.
        """
        client = Client(self.factory, {SettingCodes.INITIAL_WINDOW_SIZE: 200000})
        client.get(1)
        backend, transport = self.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 70000\r\n\r\n" + b"c" * 70000)
        client.pump()
        self.assertEqual(len(client.body(1)), 65535)
        self.assertEqual(client.server.waiting, {client.server.streams[1]})
        client.conn.increment_flow_control_window(10000)
        client.pump()
        self.assertEqual(client.body(1), b"c" * 70000)
        self.assertEqual(client.server.waiting, set())

    def test_socketFull(self) -> None:
        """
        When the client's socket is full (its transport pauses the
        connection), every stream's backend is paused, and reading stops.
        """
        client = Client(self.factory)
        client.get(1)
        backend, transport = self.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        client.transport.producer.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(client.transport.producerState, "paused")
        client.transport.producer.resumeProducing()
        self.assertEqual(transport.producerState, "producing")


class LimitTests(H2TestCase):
    """
    The abuse limits.
    """

    def test_concurrentStreams(self) -> None:
        """
        Streams over C{max-concurrent-streams} (sent before the client
        read the setting) are refused with REFUSED_STREAM; none of them
        reaches a backend.
        """
        self.factory = h2Factory(self.reactor, {"max-concurrent-streams": 2})
        client = Client(self.factory)
        client.get(1)
        client.get(3)
        sent = client.raw(HeadersFrame(5, client.conn.encoder.encode(GET),
                                       flags=["END_HEADERS", "END_STREAM"]))
        self.assertEqual([(f.stream_id, f.error_code) for f in sent
                          if isinstance(f, RstStreamFrame)], [(5, ErrorCodes.REFUSED_STREAM)])
        self.assertEqual(len(self.reactor.tcpClients), 2)
        self.assertEqual(self.factory.h2Refused, 1)

    def test_rapidReset(self) -> None:
        """
        A client that opens and resets streams faster than C{max-resets}
        per window gets GOAWAY ENHANCE_YOUR_CALM and is closed; its backend
        connections are aborted.
        """
        self.factory = h2Factory(self.reactor, {"max-resets": 5})
        client = Client(self.factory)
        for i in range(6):
            sid = 1 + 2 * i
            client.conn.send_headers(sid, GET, end_stream=True)
            client.conn.reset_stream(sid, ErrorCodes.CANCEL)
        client.pump()
        [goaway] = client.of(h2.events.ConnectionTerminated)
        self.assertEqual(goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertTrue(client.transport.disconnecting)
        self.assertEqual(self.factory.h2Calmed, 1)

    def test_resetsOverTime(self) -> None:
        """
        Resets spread over more than the window are no attack.
        """
        self.factory = h2Factory(self.reactor, {"max-resets": 5, "abuse-window": 1})
        client = Client(self.factory)
        for i in range(12):
            sid = 1 + 2 * i
            client.get(sid)
            client.conn.reset_stream(sid, ErrorCodes.CANCEL)
            client.pump()
            self.reactor.advance(0.3)
        self.assertEqual(client.of(h2.events.ConnectionTerminated), [])

    def test_pingFlood(self) -> None:
        """
        More PINGs than C{max-control-frames} per window: GOAWAY
        ENHANCE_YOUR_CALM.
        """
        self.factory = h2Factory(self.reactor, {"max-control-frames": 50})
        client = Client(self.factory)
        frames = b"".join(PingFrame(0, b"%08d" % i).serialize() for i in range(60))
        client.pump(frames)
        [goaway] = client.of(h2.events.ConnectionTerminated)
        self.assertEqual(goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)

    def test_windowUpdateFlood(self) -> None:
        """
        WINDOW_UPDATE frames that no response DATA called for (a flood of
        1-byte increments, each a pass through the frame parser and the
        flow-control state) count as control frames: more than
        C{max-control-frames} per window get GOAWAY ENHANCE_YOUR_CALM.
        """
        self.factory = h2Factory(self.reactor, {"max-control-frames": 50})
        client = Client(self.factory)
        update = WindowUpdateFrame(0, window_increment=1).serialize()
        client.pump(update * 40)
        self.assertEqual(client.of(h2.events.ConnectionTerminated), [])
        client.pump(update * 20)
        [goaway] = client.of(h2.events.ConnectionTerminated)
        self.assertEqual(goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertEqual(self.factory.h2Calmed, 1)

    def test_windowUpdatesForData(self) -> None:
        """
        The WINDOW_UPDATEs a client sends as it reads response DATA (one
        for the stream and one for the connection per DATA frame, and
        more) are no flood, however many a long download takes.
        """
        self.factory = h2Factory(self.reactor, {"max-control-frames": 10})
        client = Client(self.factory, {SettingCodes.INITIAL_WINDOW_SIZE: 100})
        client.get(1)
        backend, transport = self.backend()
        size = 100 * 100
        backend.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size + b"z" * size)
        client.pump()
        while not client.of(h2.events.StreamEnded, 1):
            # Each 100-byte window read is acknowledged four times over:
            # twice for the stream, twice for the connection.
            for _ in range(2):
                client.conn.increment_flow_control_window(50, 1)
                client.conn.increment_flow_control_window(50)
            client.pump()
        self.assertEqual(client.of(h2.events.ConnectionTerminated), [])
        self.assertEqual(client.body(1), b"z" * size)
        self.assertEqual(self.factory.h2Calmed, 0)

    def test_unknownFrameFlood(self) -> None:
        """
        Frames of a type HTTP/2 does not define (extensions, which must be
        ignored) count as control frames: a flood of them gets GOAWAY
        ENHANCE_YOUR_CALM.
        """
        self.factory = h2Factory(self.reactor, {"max-control-frames": 50})
        client = Client(self.factory)
        # Length 8, type 0xfa, no flags, stream 0.
        unknown = b"\x00\x00\x08\xfa\x00\x00\x00\x00\x00" + b"x" * 8
        client.pump(unknown * 40)
        self.assertEqual(client.of(h2.events.ConnectionTerminated), [])
        client.pump(unknown * 20)
        [goaway] = client.of(h2.events.ConnectionTerminated)
        self.assertEqual(goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)

    def test_closedStreamFlood(self) -> None:
        """
        Frames on a stream that is over, which h2 drops without an event
        (RST_STREAM, WINDOW_UPDATE) or answers with a reset (DATA), count
        as control frames: a flood of them gets GOAWAY ENHANCE_YOUR_CALM,
        whichever kind it is.
        """
        for make in [lambda: RstStreamFrame(1, error_code=ErrorCodes.CANCEL),
                     lambda: WindowUpdateFrame(1, window_increment=1),
                     lambda: DataFrame(1)]:
            self.factory = h2Factory(self.reactor, {"max-control-frames": 50})
            client = Client(self.factory)
            client.get(1)
            backend, transport = self.backend()
            backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
            client.pump()
            self.assertEqual(client.server.streams, {})
            client.pump(make().serialize() * 40)
            self.assertEqual(client.of(h2.events.ConnectionTerminated), [])
            client.pump(make().serialize() * 20)
            [goaway] = client.of(h2.events.ConnectionTerminated)
            self.assertEqual(goaway.error_code, ErrorCodes.ENHANCE_YOUR_CALM)

    def test_encoderTable(self) -> None:
        """
        A client announcing a huge SETTINGS_HEADER_TABLE_SIZE does not make
        the balancer keep every response field it sends in its HPACK
        table (h2 would, up to 2 GiB): the table stays within 4096 bytes,
        the protocol's default, and the client still reads every field.
        """
        client = Client(self.factory)
        client.conn.update_settings({SettingCodes.HEADER_TABLE_SIZE: 2**31 - 1})
        client.pump()
        backend = None
        for i in range(200):
            sid = 1 + 2 * i
            client.get(sid)
            if backend is None:
                # (Kept alive: every request after the first reuses it.)
                backend, _ = self.backend()
            backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
                                 b"X-Request-Id: %040d\r\n\r\n" % i)
            client.pump()
            [head] = client.of(h2.events.ResponseReceived, sid)
            self.assertEqual(dict(head.headers)[b"x-request-id"], b"%040d" % i)
        table = client.server.h2.encoder.header_table
        held = sum(32 + len(name) + len(value) for name, value in table.dynamic_entries)
        self.assertLessEqual(held, 4096)

    def test_continuationFlood(self) -> None:
        """
        A header block that never ends (CONTINUATION frames one after
        another) is cut off once it holds twice C{max-header-list-size}
        bytes: GOAWAY and close, with what it holds bounded all along.
        """
        self.factory = h2Factory(self.reactor, {"max-header-list-size": 4096})
        client = Client(self.factory)
        server = client.server
        first = HeadersFrame(1)
        first.data = client.conn.encoder.encode(GET)
        server.dataReceived(first.serialize())
        held = []
        for _ in range(100):
            if client.transport.disconnecting:
                break
            frame = ContinuationFrame(1)
            frame.data = b"\x00" * 1000
            server.dataReceived(frame.serialize())
            held.append(sum(len(f.data) for f in server.h2.incoming_buffer._headers_buffer))
        self.assertTrue(client.transport.disconnecting)
        self.assertLessEqual(max(held), 2 * 4096 + 1000)
        self.assertLess(len(held), 12)
        events = client.conn.receive_data(client.transport.value())
        self.assertEqual([e.error_code for e in events
                          if isinstance(e, h2.events.ConnectionTerminated)],
                         [ErrorCodes.ENHANCE_YOUR_CALM])

    def test_headerBlockTimeout(self) -> None:
        """
        A header block left unfinished for the request timeout closes the
        connection.
        """
        client = Client(self.factory)
        first = HeadersFrame(1)
        first.data = client.conn.encoder.encode(GET)
        client.server.dataReceived(first.serialize())
        self.reactor.advance(4.9)
        self.assertFalse(client.transport.disconnecting)
        self.reactor.advance(0.2)
        self.assertTrue(client.transport.disconnecting)

    def test_idleConnection(self) -> None:
        """
        A connection with no stream for the idle timeout gets GOAWAY and
        is closed.
        """
        client = Client(self.factory)
        client.get(1)
        backend, _ = self.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        client.pump()
        self.reactor.advance(29)
        self.assertFalse(client.transport.disconnecting)
        self.reactor.advance(6)
        self.assertTrue(client.transport.disconnecting)
        client.pump()
        self.assertEqual([e.error_code for e in client.of(h2.events.ConnectionTerminated)],
                         [ErrorCodes.NO_ERROR])

    def test_windowNeverOpened(self) -> None:
        """
        A stream whose client never opens its window again is reset after
        the idle timeout, its backend connection closed.
        """
        client = Client(self.factory, {SettingCodes.INITIAL_WINDOW_SIZE: 10})
        client.get(1)
        backend, transport = self.backend()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"z" * 100)
        client.pump()
        self.assertEqual(client.body(1), b"z" * 10)
        self.reactor.advance(29)
        self.assertEqual(client.of(h2.events.StreamReset, 1), [])
        self.reactor.advance(2)
        client.pump()
        self.assertEqual([e.error_code for e in client.of(h2.events.StreamReset, 1)],
                         [ErrorCodes.CANCEL])
        self.assertEqual(client.server.streams, {})

    def test_clientReadsNothing(self) -> None:
        """
        A client whose socket stays full for the idle timeout is aborted.
        """
        client = Client(self.factory)
        client.get(1)
        self.backend()
        client.transport.producer.pauseProducing()
        self.reactor.advance(29)
        self.assertFalse(client.transport.disconnecting)
        self.reactor.advance(2)
        self.assertTrue(client.transport.aborted)

    def test_stalledBody(self) -> None:
        """
        A request body that stops arriving for the request timeout gets a
        408 on its stream.
        """
        client = Client(self.factory)
        client.get(1, [(b":method", b"POST"), *GET[1:]], end=False)
        self.backend()
        client.send(1, b"abc")
        self.reactor.advance(6)
        client.pump()
        self.assertEqual(client.status(1), 408)


class StopTests(H2TestCase):
    """
    A graceful stop.
    """

    def test_goaway(self) -> None:
        """
        A graceful stop sends GOAWAY with the last stream id; the open
        stream finishes, then the connection closes.
        """
        client = Client(self.factory)
        client.get(1)
        backend, _ = self.backend()
        client.transport.clear()
        self.factory.softStop()
        [goaway] = frames(client.transport.value())
        self.assertIsInstance(goaway, GoAwayFrame)
        self.assertEqual((goaway.error_code, goaway.last_stream_id), (ErrorCodes.NO_ERROR, 1))
        self.assertFalse(client.transport.disconnecting)
        client.transport.clear()
        backend.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertEqual(b"".join(f.data for f in frames(client.transport.value())
                                  if f.type == 0), b"ok")
        self.assertTrue(client.transport.disconnecting)

    def test_retiringWorker(self) -> None:
        """
        A retiring worker's soft stop (which spares HTTP/1.1 clients quiet
        for less than a second) sends HTTP/2 clients GOAWAY all the same:
        none of their requests can be cut by it.
        """
        client = Client(self.factory)
        client.get(1)
        self.backend()
        client.transport.clear()
        self.factory.softStop(1.0)
        [goaway] = frames(client.transport.value())
        self.assertIsInstance(goaway, GoAwayFrame)

    def test_refusedAfterGoaway(self) -> None:
        """
        A stream opened after the GOAWAY is refused.
        """
        client = Client(self.factory)
        client.get(1)
        self.backend()
        self.factory.softStop()
        sent = client.raw(HeadersFrame(3, client.conn.encoder.encode(GET),
                                       flags=["END_HEADERS", "END_STREAM"]))
        self.assertEqual([(f.stream_id, f.error_code) for f in sent
                          if isinstance(f, RstStreamFrame)], [(3, ErrorCodes.REFUSED_STREAM)])
        self.assertEqual(len(self.reactor.tcpClients), 1)


class AddressTests(SynchronousTestCase):
    """
    A stream tells its exchange who the client is.
    """

    def test_client(self) -> None:
        """
        Its client's address, name and the local authority are the
        connection's.
        """
        factory = h2Factory(MemoryReactorClock())
        client = Client(factory)
        client.get(1)
        stream = client.server.streams[1]
        self.assertEqual((stream.clientHost, stream.clientName), (b"192.0.2.7", "192.0.2.7:5555"))
        self.assertEqual(stream.localAuthority, b"10.0.0.1:12345")


class GateTests(SynchronousTestCase):
    """
    The sending helpers HTTP/2 client and backend streams share.
    """

    def test_takeWindow(self) -> None:
        """
        A piece larger than the window is split, the rest staying first; a
        piece that fits is taken whole.
        """
        from collections import deque

        from lbtwist.http._gate import takeWindow

        out = deque([b"abcdef", b"gh"])
        self.assertEqual(takeWindow(out, 4), b"abcd")
        self.assertEqual(list(out), [b"ef", b"gh"])
        self.assertEqual(takeWindow(out, 4), b"ef")
        self.assertEqual(list(out), [b"gh"])

    def test_producerGate(self) -> None:
        """
        Each change of wish reaches the producer once; none without one.
        """
        from lbtwist.http._gate import ProducerGate

        calls: list[str] = []

        class Producer:
            def pauseProducing(self) -> None:
                calls.append("pause")

            def resumeProducing(self) -> None:
                calls.append("resume")

        gate = ProducerGate()
        gate.hold(True)
        gate.register(Producer())
        for paused in (True, True, False, False, True):
            gate.hold(paused)
        gate.unregister()
        gate.hold(False)
        self.assertEqual(calls, ["pause", "resume", "pause"])
