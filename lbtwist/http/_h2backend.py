"""
HTTP/2 to backends (a pool's C{protocol: h2}): one multiplexed connection
per backend (a few if one fills the backend's concurrency limit), each
exchange a stream on it.

An L{H2BackendStream} stands where an HTTP/1.1
L{lbtwist.http._backend.BackendConnection} stands for its exchange: it
takes the request head the request plan made (an HTTP/1.1 head, mapped
back to HTTP/2 fields by L{requestFields}), the body and its trailers, and
gives the exchange the response head (C{:status}), its DATA and its
trailers.  It is its own C{transport} as the exchange sees it: the
exchange registers the client as its producer and closes it as it would
close a connection (a stream reset, never the connection).

The rules:

  - B{slots per request}: the connect engine's C{maxconn} slot belongs to
    the exchange as always; a stream on a connection already open is a
    "reused" connection to the engine (L{H2Backends.stream}), a new
    connection is dialled only when none has room.
  - B{flow control as backpressure}: request DATA goes out within the
    stream's and the connection's windows; what does not fit waits (one
    read of the client's at most), and the client is paused until a
    WINDOW_UPDATE.  Response DATA is acknowledged (the backend's window
    opened again) only while the client takes it: a stream holds at most
    its window (L{STREAM_WINDOW}) of response.
  - B{joining a connection being dialled}: requests that come while a
    connection is being made share it; their heads wait in the h2 state and
    their bodies in their streams (the client paused after one read), so
    that nothing of them leaves before it is up.  If it never comes up,
    they were not sent anywhere: each gets its body back and takes the
    path of a failed connect (L{lbtwist.http._exchange.Exchange.backendUnreached}:
    another backend under C{retry-on: connect-failure}), whatever its
    method or body.
  - B{failures}: a lost connection fails its streams with the exchange's
    retry rules; a stream the backend refused (C{REFUSED_STREAM}, or beyond
    a GOAWAY's last stream id) was not processed, and is retried under
    C{retry-on: refused-stream} (L{lbtwist.http._exchange.Exchange.backendRefused}).
  - B{trailers} pass both ways: the client's request trailers end the
    request stream, the backend's response trailers go to the client side
    (gRPC's C{grpc-status}).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection as H2State
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    InformationalResponseReceived,
    RemoteSettingsChanged,
    ResponseReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    WindowUpdated,
)
from h2.exceptions import ProtocolError, StreamClosedError
from h2.settings import SettingCodes, Settings
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from ..dial import BackendProtocol
from ..pool import Backend
from ..tcp import setNoDelay
from ._gate import ProducerGate, takeWindow
from ._h2 import ENCODER_TABLE_SIZE
from ._plan import BadTrailer, forwarded, trailerFields

# The window each response stream is given: what a stream may hold of a
# response its client does not take yet.
STREAM_WINDOW = 256 * 1024
# The window of the whole connection.
CONNECTION_WINDOW = 1024 * 1024

# Fields HTTP/2 forbids (RFC 9113 8.2.2) beside the hop-by-hop ones.
_CONNECTION_SPECIFIC = frozenset((b"proxy-connection", b"host"))


def requestFields(head: bytes, scheme: bytes) -> tuple[list[tuple[bytes, bytes]], int | None]:
    """
    The HTTP/2 fields of a request head planned as HTTP/1.1 (C{head}, its
    request line and fields), and its Content-Length if it has one.

    Host becomes C{:authority}, the target C{:path} (an absolute-form
    target its path), the connection-specific fields are dropped and
    C{te: trailers} is sent (the backend may answer with trailers).
    """
    lines = head.split(b"\r\n")
    method, target, _ = lines[0].split(b" ", 2)
    if not target.startswith(b"/") and target != b"*":
        # An absolute-form target: scheme://authority/path.
        rest = target.split(b"://", 1)[-1]
        slash = rest.find(b"/")
        target = rest[slash:] if slash >= 0 else b"/"
    authority = b""
    length: int | None = None
    regular: list[tuple[bytes, bytes]] = []
    for line in lines[1:]:
        if not line:
            break
        name, _, value = line.partition(b":")
        lname = name.strip().lower()
        value = value.strip(b" \t")
        if lname == b"host":
            authority = value
            continue
        if not forwarded(lname) or lname in _CONNECTION_SPECIFIC:
            continue
        if lname == b"content-length":
            length = int(value)
        regular.append((lname, value))
    fields = [(b":method", method), (b":scheme", scheme), (b":authority", authority),
              (b":path", target), *regular, (b"te", b"trailers")]
    return fields, length


@implementer(IPushProducer)
class H2BackendStream:
    """
    One exchange's stream on an L{H2BackendConnection}: what the exchange
    takes for its backend connection (and that connection's transport).

    @ivar exchange: the exchange it serves, until it is over.
    @ivar streamId: its stream id, once its head went.
    @ivar lost: it is over for the exchange (reset, refused, or its
        connection gone).
    @ivar paused: the client does not take more response for now.
    @ivar endsWithLastByte: the response DATA being relayed ended the
        stream: the response's end follows in the same call (else the
        backend may send END_STREAM later, in a frame of its own, or never).
    """

    reusable = False
    endsWithLastByte = False

    def __init__(self, connection: H2BackendConnection) -> None:
        self.connection = connection
        self.backend = connection.backend
        self.key = connection.key
        self.transport = self
        self.exchange: Any = None
        self.streamId = 0
        # (The exchange counts its request: one per stream, never "a
        # pooled connection gone stale", which would retry unbounded.)
        self.requests = 0
        self.lost = False
        self.paused = False
        self.ended = False
        self.responseEnded = False
        self._length: int | None = None
        self._out: deque[bytes] = deque()
        self._endAfter = False
        self._trailers: list[tuple[bytes, bytes]] | None = None
        self._requestTrailers: list[tuple[bytes, bytes]] | None = None
        self._gate = ProducerGate()
        self._unacked = 0

    def __repr__(self) -> str:
        return f"<H2BackendStream {self.streamId} {self.backend.name}>"

    # -- what the exchange asks -------------------------------------------

    def sendHead(self, head: bytes) -> None:
        """
        Open the stream with the request's head.
        """
        connection = self.connection
        if connection.lost:
            self._failLater()
            return
        fields, self._length = requestFields(head, connection.scheme)
        ex = self.exchange
        end = ex is None or not ex.plan.hasBody
        self.streamId = connection.openStream(self, fields, end)
        self.ended = end
        self.backend.bytesIn += len(head)

    def sendBody(self, chunked: bool, body: bytes) -> None:
        """
        Send a piece of the request body within the windows; a
        Content-Length body ends the stream with its last byte.
        """
        if self.lost or self.ended or not body:
            return
        self.backend.bytesIn += len(body)
        self._out.append(body)
        length = self._length
        if length is not None:
            length -= len(body)
            self._length = length
            if length <= 0:
                self._endAfter = True
        self.flush()

    def endBody(self, trailers: list[tuple[bytes, bytes]] | None = None) -> None:
        """
        End the request body (with its trailers, if any).
        """
        if self.lost or self.ended:
            return
        self._endAfter = True
        if trailers:
            # (Filtered and checked by the client's side already.)
            self._requestTrailers = trailers
        self.flush()

    def flush(self) -> None:
        """
        Send what request DATA the windows allow; end the stream once it is
        all sent and complete; pause the client while some waits (all of it
        waits while the connection is being made).
        """
        if self.lost or self.ended:
            return
        connection = self.connection
        if not connection.connected:
            self._updateProducer()
            return
        state = connection.h2
        sid = self.streamId
        out = self._out
        trailers = self._requestTrailers
        try:
            while out:
                window = min(state.local_flow_control_window(sid), state.max_outbound_frame_size)
                if window <= 0:
                    break
                piece = takeWindow(out, window)
                last = self._endAfter and not out and not trailers
                state.send_data(sid, piece, end_stream=last)
                if last:
                    self.ended = True
            if not out and self._endAfter and not self.ended:
                self.ended = True
                if trailers:
                    state.send_headers(sid, trailers, end_stream=True)
                else:
                    state.end_stream(sid)
        except (StreamClosedError, ProtocolError):
            # (The backend reset the stream: its event says so.)
            out.clear()
        connection.send()
        self._updateProducer()

    def _updateProducer(self) -> None:
        self._gate.hold(bool(self._out))

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """
        The client is the producer of the request body.
        """
        self._gate.register(producer)

    def unregisterProducer(self) -> None:
        """
        The request body's producer is gone.
        """
        self._gate.unregister()

    def sendTunnel(self, data: bytes) -> None:
        """
        Never: an upgrade is not relayed over HTTP/2.
        """
        raise AssertionError("no tunnel over an HTTP/2 backend stream")

    def abortNow(self) -> None:
        """
        The backend is drained: its stream is cut, and the exchange decides
        (retry or a truncated response).
        """
        ex = self.exchange
        self.abortConnection()
        if ex is not None and not ex.over:
            ex.backendLost(self)

    def abortConnection(self) -> None:
        """
        Reset the stream (the exchange let it go): the connection stays.
        """
        if self.lost:
            return
        self.lost = True
        self.connection.resetStream(self, ErrorCodes.CANCEL)

    def loseConnection(self) -> None:
        """
        The exchange is done with the stream: cancel it if it is still
        open, else just forget it.
        """
        if self.lost:
            return
        self.lost = True
        if self.responseEnded and self.ended:
            self.connection.forget(self)
        else:
            self.connection.resetStream(self, ErrorCodes.CANCEL)

    def pauseProducing(self) -> None:
        """
        The client takes no more response for now: acknowledge no more.
        """
        self.paused = True

    def resumeProducing(self) -> None:
        """
        The client takes more: acknowledge what it was given.
        """
        self.paused = False
        self._acknowledge()

    def stopProducing(self) -> None:
        """
        The client is gone.
        """
        self.loseConnection()

    # -- what the connection reports ----------------------------------------

    def _acknowledge(self) -> None:
        n = self._unacked
        if n and not self.paused and not self.lost:
            self._unacked = 0
            self.connection.acknowledge(self.streamId, n)

    def responseHead(self, fields: list[tuple[bytes, bytes]], interim: bool) -> None:
        """
        The response head (or an interim one) arrived.
        """
        ex = self.exchange
        if ex is None:
            return
        status = 0
        headers = []
        for name, value in fields:
            if name == b":status":
                status = int(value)
            elif name[:1] != b":":
                headers.append((name, value))
        ex.client.backendActive()
        ex.responseHead(status, b"", headers)

    def dataReceived(self, data: bytes, flowLength: int, ended: bool = False) -> None:
        """
        Response DATA arrived (its frame C{ended} the stream, or not):
        relay it, acknowledge it while the client takes more.
        """
        self._unacked += flowLength
        self.endsWithLastByte = ended
        ex = self.exchange
        if ex is not None and data and ex.response is not None:
            ex.client.backendActive()
            ex.client.flushHead(ex)
            ex.responseBody(data)
        self._acknowledge()

    def trailersReceived(self, fields: list[tuple[bytes, bytes]]) -> None:
        """
        The response's trailers arrived (the stream ends with them): relayed
        filtered, or none if one is invalid.
        """
        try:
            self._trailers = trailerFields(fields)
        except BadTrailer as e:
            self.connection.log.warn(  # noqa: G010
                "backend {backend} sent bad trailers: {why}; dropped",
                backend=self.backend.name, why=str(e))

    def responseComplete(self) -> None:
        """
        The backend ended the stream.
        """
        self.responseEnded = True
        ex = self.exchange
        if ex is not None:
            # (A head still held goes with the end: a gRPC trailers-only
            # response must stay one HEADERS frame.)
            ex.responseComplete(self._trailers)

    def refused(self) -> None:
        """
        The backend did not process the stream: another try is safe.
        """
        if self.lost:
            return
        self.lost = True
        ex = self.exchange
        if ex is not None:
            ex.backendRefused(self)

    def unreached(self) -> None:
        """
        Its connection never came up: nothing of the request left; the
        exchange gets back the body it gave, to send elsewhere.
        """
        if self.lost:
            return
        self.lost = True
        self._gate.unregister()
        unsent = list(self._out)
        self._out.clear()
        ex = self.exchange
        if ex is not None:
            ex.backendUnreached(self, unsent)

    def reset(self) -> None:
        """
        The backend reset the stream, or its connection is gone.
        """
        if self.lost:
            return
        self.lost = True
        ex = self.exchange
        if ex is not None:
            ex.backendLost(self)

    def _failLater(self) -> None:
        # (Unreached if its connection never came up: nothing was sent.)
        connection = self.connection
        connection.clock.callLater(0, self.reset if connection.connected else self.unreached)


class H2BackendConnection(BackendProtocol):
    """
    One HTTP/2 connection to a backend, carrying the streams of many
    exchanges (the engine dials one; L{H2Backends} hands its streams out).

    @ivar streams: its open streams by id.
    @ivar lost: it is closed.
    @ivar goingAway: the backend sent GOAWAY: no new streams.
    """

    log = Logger()
    transport: Any

    def __init__(self, registry: H2Backends, backend: Backend, key: Any,
                 proxyHeader: bytes | None) -> None:
        self.registry = registry
        self.clock = registry.clock
        self.backend = backend
        self.key = key
        self.proxyHeader = proxyHeader
        self.scheme = b"https" if backend.config.tls is not None else b"http"
        self.streams: dict[int, H2BackendStream] = {}
        self.opening = 0
        self.lost = False
        self.goingAway = False
        self.reusable = False
        self.connected = False
        self._idleTimer: Any = None
        self.dialTimer: Any = None
        self.h2 = h2 = H2State(H2Configuration(
            client_side=True, header_encoding=None, validate_inbound_headers=True))
        # Settings in force from the start (as initial values, not an
        # update awaiting its ACK): both ends size stream windows alike.
        h2.local_settings = Settings(client=True, initial_values={
            SettingCodes.INITIAL_WINDOW_SIZE: STREAM_WINDOW,
            SettingCodes.ENABLE_PUSH: 0,
        })
        # The preface is queued now: streams opened while it connects go
        # after it (see L{H2Backends.take}).
        h2.initiate_connection()
        # The connection's window, for several streams' windows at once.
        h2.increment_flow_control_window(CONNECTION_WINDOW - 65535)

    def connectionMade(self) -> None:
        self._stopDialTimer()
        setNoDelay(self.transport)
        if self.proxyHeader is not None:
            self.transport.write(self.proxyHeader)
        # (Over TLS the backend chose h2 by ALPN: a dial in which it did
        # not failed, see L{lbtwist.backendtls.VerifiedTLSEndpoint}.)
        self.connected = True
        self.backend.http2.connections += 1
        # What the streams that joined while it connected have waiting.
        for stream in list(self.streams.values()):
            stream.flush()
        self.send()

    def _stopDialTimer(self) -> None:
        timer, self.dialTimer = self.dialTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def dialFailed(self) -> None:
        """
        The dial failed or was abandoned (the connect engine says so), or
        did not end within the connect timeout: the streams opened
        meanwhile were never sent, and go elsewhere as failed connects.
        """
        self._stopDialTimer()
        if self.connected or self.lost:
            return
        self.lost = True
        self.registry.remove(self)
        for stream in self._dropAll():
            stream.unreached()

    def joinedAs(self) -> H2BackendStream:
        """
        What the connect engine gives the exchange that dialled this
        connection: its first stream.
        """
        stream: H2BackendStream = self.openStream()
        return stream

    def openStream(self, stream: H2BackendStream | None = None,
                   fields: list[tuple[bytes, bytes]] | None = None, end: bool = False) -> Any:
        """
        With no arguments: a new stream for an exchange (its head not yet
        sent; the engine joined this connection).  With them: send
        C{stream}'s head and return its stream id.
        """
        if stream is None:
            self.opening += 1
            return H2BackendStream(self)
        self.opening -= 1
        self._disarm()
        sid = self.h2.get_next_available_stream_id()
        stream.streamId = sid
        self.streams[sid] = stream
        self.backend.http2.streams += 1
        try:
            self.h2.send_headers(sid, fields or [], end_stream=end)
        except ProtocolError:
            self._drop(sid)
            stream._failLater()
        self.send()
        return sid

    def hasRoom(self) -> bool:
        """
        Whether another stream may open on this connection now.
        """
        if self.lost or self.goingAway:
            return False
        limit = self.h2.remote_settings.max_concurrent_streams
        return len(self.streams) + self.opening < limit

    def send(self) -> None:
        """
        Write what the h2 state has to send.
        """
        if self.connected and not self.lost:
            data = self.h2.data_to_send()
            if data:
                self.transport.write(data)

    def acknowledge(self, sid: int, n: int) -> None:
        """
        Open the backend's window again by C{n} bytes of stream C{sid}.
        """
        try:
            self.h2.acknowledge_received_data(n, sid)
        except (StreamClosedError, ProtocolError):
            # (The stream is over; the connection's window is opened by
            # h2 itself.)
            pass
        self.send()

    def resetStream(self, stream: H2BackendStream, code: int) -> None:
        """
        Cancel C{stream} and forget it.
        """
        sid = stream.streamId
        if sid and not self.lost:
            try:
                self.h2.reset_stream(sid, code)
            except (StreamClosedError, ProtocolError):
                pass
            self.send()
        self.forget(stream)

    def forget(self, stream: H2BackendStream) -> None:
        """
        C{stream} is over.
        """
        if not stream.streamId:
            self.opening = max(0, self.opening - 1)
        elif self._drop(stream.streamId) is None:
            return
        if not self.streams and not self.opening:
            self._arm()

    def _arm(self) -> None:
        if self.lost or not self.connected:
            return
        if self.goingAway:
            self.transport.loseConnection()
            return
        self._disarm()
        self._idleTimer = self.clock.callLater(self.registry.idleTimeout, self._idle)

    def _disarm(self) -> None:
        timer, self._idleTimer = self._idleTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _idle(self) -> None:
        self._idleTimer = None
        if not self.streams and not self.opening and not self.lost:
            self.h2.close_connection()
            self.send()
            self.transport.loseConnection()

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            self.log.warn(  # noqa: G010
                "backend {backend} broke HTTP/2: {why}", backend=self.backend.name, why=str(e))
            self.send()
            self.transport.abortConnection()
            return
        streams = self.streams
        for event in events:
            sid = getattr(event, "stream_id", 0)
            stream = streams.get(sid) if sid else None
            if isinstance(event, DataReceived):
                if stream is None:
                    if event.flow_controlled_length:
                        self.acknowledge(sid, event.flow_controlled_length)
                    continue
                stream.dataReceived(event.data, event.flow_controlled_length,
                                    event.stream_ended is not None)
            elif isinstance(event, ResponseReceived):
                if stream is not None:
                    stream.responseHead(event.headers, False)
            elif isinstance(event, TrailersReceived):
                if stream is not None:
                    stream.trailersReceived(event.headers)
            elif isinstance(event, StreamEnded):
                if stream is not None:
                    stream.responseComplete()
            elif isinstance(event, InformationalResponseReceived):
                if stream is not None:
                    stream.responseHead(event.headers, True)
            elif isinstance(event, StreamReset):
                if stream is not None:
                    self._drop(sid)
                    if event.error_code == ErrorCodes.REFUSED_STREAM:
                        stream.refused()
                    else:
                        stream.reset()
            elif isinstance(event, WindowUpdated):
                targets = list(streams.values()) if not sid else [stream] if stream else []
                for s in targets:
                    if s._out:
                        s.flush()
            elif isinstance(event, ConnectionTerminated):
                self._goneAway(event.last_stream_id or 0)
            elif isinstance(event, RemoteSettingsChanged):
                if SettingCodes.HEADER_TABLE_SIZE in event.changed_settings:
                    # h2 sizes its encoder's table as the backend allows, up
                    # to 2 GiB, and every request field sent is kept in it:
                    # keep it to the protocol's default, as towards clients.
                    encoder = self.h2.encoder
                    if encoder.header_table_size > ENCODER_TABLE_SIZE:
                        encoder.header_table_size = ENCODER_TABLE_SIZE
                if SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                    for s in list(streams.values()):
                        if s._out:
                            s.flush()
            if self.lost:
                break
        self.send()

    def _goneAway(self, lastStreamId: int) -> None:
        """
        The backend sends GOAWAY: streams beyond C{lastStreamId} were not
        processed (safe to retry); the others may finish.
        """
        self.goingAway = True
        self.backend.http2.goaways += 1
        self.registry.remove(self)
        for sid, stream in list(self.streams.items()):
            if sid > lastStreamId:
                self._drop(sid)
                stream.refused()
        if not self.streams:
            self.transport.loseConnection()

    def _drop(self, sid: int) -> H2BackendStream | None:
        """
        Forget stream C{sid} (it is over); return it, if it was open.
        """
        stream = self.streams.pop(sid, None)
        if stream is not None:
            self.backend.http2.streams -= 1
        return stream

    def _dropAll(self) -> list[H2BackendStream]:
        """
        Forget every stream (the connection is gone); return them.
        """
        streams = list(self.streams.values())
        self.streams = {}
        self.backend.http2.streams -= len(streams)
        return streams

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        self._disarm()
        self._stopDialTimer()
        self.registry.remove(self)
        streams = self._dropAll()
        if self.connected:
            counters = self.backend.http2
            counters.connections -= 1
            if streams:
                counters.lost += 1
        for stream in streams:
            if self.connected:
                stream.reset()
            else:
                # (Lost before it was up: nothing was sent.)
                stream.unreached()


class H2Backends:
    """
    The HTTP/2 connections of one upstream, by idle-pool key (a backend, or
    a backend and a client's PROXY header).
    """

    def __init__(self, clock: Any, idleTimeout: float, connectTimeout: float) -> None:
        self.clock = clock
        self.idleTimeout = idleTimeout
        self.connectTimeout = connectTimeout
        self._connections: dict[Any, list[H2BackendConnection]] = {}
        self.closed = False

    def build(self, backend: Backend, key: Any, proxyHeader: bytes | None) -> H2BackendConnection:
        """
        A new connection for the engine to dial: its streams are handed out
        at once, so that requests arriving together while it connects share
        it rather than dial one each; if it is not up within the connect
        timeout (a failed dial says nothing to it), they are refused.
        """
        connection = H2BackendConnection(self, backend, key, proxyHeader)
        self.add(connection)
        connection.dialTimer = self.clock.callLater(
            self.connectTimeout, connection.dialFailed)
        return connection

    def take(self, key: Any, maxAge: float | None = None) -> H2BackendStream | None:
        """
        A new stream on an open connection for C{key} with room, if any
        (what L{lbtwist.http._pool.IdleConnections.take} is for HTTP/1.1;
        C{maxAge} does not matter: a stream never goes stale).
        """
        for connection in self._connections.get(key, ()):
            if connection.hasRoom():
                stream: H2BackendStream = connection.openStream()
                return stream
        return None

    def add(self, connection: H2BackendConnection) -> None:
        """
        C{connection} is open: its streams may be handed out.
        """
        if self.closed:
            return
        self._connections.setdefault(connection.key, []).append(connection)

    def remove(self, connection: H2BackendConnection) -> None:
        """
        C{connection} takes no new streams.
        """
        conns = self._connections.get(connection.key)
        if conns and connection in conns:
            conns.remove(connection)
            if not conns:
                del self._connections[connection.key]

    def put(self, key: Any, conn: Any) -> bool:
        """
        Streams are never pooled.
        """
        return False

    def discard(self, key: Any, conn: Any) -> None:
        """
        Nothing to forget: connections leave on their own.
        """

    def closeKeys(self, keys: Any) -> None:
        """
        Close the connections kept under any of C{keys} (private to a
        client that left) once their streams end.
        """
        for key in keys:
            for connection in self._connections.pop(key, []):
                connection.goingAway = True
                if not connection.connected:
                    # (Its dial's engine, or the exchanges' timeouts, end it.)
                    connection._stopDialTimer()
                elif not connection.streams and not connection.lost:
                    connection.transport.loseConnection()

    def close(self) -> None:
        """
        Close every connection with no stream; the others close when their
        last stream ends.
        """
        self.closed = True
        self.closeKeys(list(self._connections))
