"""
HTTP/2 to backends (L{lbtwist.http._h2backend}): the request head mapped to
HTTP/2 fields, the pool's C{protocol} key, requests that joined a connection
while it was dialled, or whose dial failed (on memory reactors that dial as
lbtwist's reactor does and as Twisted's do), and a real balancer over test
HTTP/2 servers (the h2 library, server side, on 127.0.0.1): streams
multiplexed on one connection, bodies both ways, refused streams retried.
"""

from __future__ import annotations

import socket
from typing import Any, Callable

import h2.config
import h2.connection
import h2.events
from h2.connection import ConnectionState
from h2.errors import ErrorCodes
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.address import IPv4Address
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.config import BackendConfig, BackendTLS, ConfigError, parseConfig, underPool
from lbtwist.dial import Dialler
from lbtwist.health import ProbeFailed
from lbtwist.http import HTTPProbe, HTTPProxyFactory
from lbtwist.http._h2backend import requestFields
from lbtwist.metrics import balancerRegistry, exposition
from lbtwist.pool import BackendPool

from .httphelpers import chromiumDOM, httpRequests, rawExchange, waitFor
from .support import inThread, reactor, startBalancer
from .test_dial import DirectReactor
from .test_h2 import H2Client
from .test_tls_listen import Certificates


class RequestFieldsTests(SynchronousTestCase):
    """
    L{requestFields} maps a planned HTTP/1.1 head to HTTP/2 fields.
    """

    def test_mapped(self) -> None:
        """
        Host becomes C{:authority}; connection-specific fields go; C{te:
        trailers} is added; the Content-Length is read.
        """
        fields, length = requestFields(
            b"POST /a?b HTTP/1.1\r\nHost: h.example\r\nContent-Length: 3\r\n"
            b"Connection: keep-alive\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n", b"http")
        self.assertEqual(fields, [
            (b":method", b"POST"), (b":scheme", b"http"), (b":authority", b"h.example"),
            (b":path", b"/a?b"), (b"content-length", b"3"), (b"x-forwarded-for", b"1.2.3.4"),
            (b"te", b"trailers")])
        self.assertEqual(length, 3)

    def test_absoluteForm(self) -> None:
        """
        An absolute-form target is sent as its path.
        """
        fields, length = requestFields(
            b"GET http://h.example/x/y HTTP/1.1\r\nHost: h.example\r\n\r\n", b"https")
        self.assertIn((b":path", b"/x/y"), fields)
        self.assertIn((b":scheme", b"https"), fields)
        self.assertIsNone(length)


class ProtocolKeyTests(SynchronousTestCase):
    """
    A pool's C{protocol} key.
    """

    def pool(self, **settings: Any) -> Any:
        return parseConfig({
            "listeners": [{"listen": "tcp:0", "mode": "http"}],
            "pools": {"web": {"backends": [{"host": "127.0.0.1", "port": 1,
                                            **settings.pop("backend", {})}], **settings}},
        }).pools[0]

    def test_default(self) -> None:
        """
        Pools speak HTTP/1.1 unless told.
        """
        self.assertEqual(self.pool().protocol, "http/1.1")

    def test_h2TLS(self) -> None:
        """
        A TLS backend of an h2 pool offers only h2 by ALPN.
        """
        pool = self.pool(protocol="h2", backend={"tls": {"verify": False}})
        self.assertEqual(pool.protocol, "h2")
        self.assertEqual(pool.backends[0].tls.alpn, ("h2",))

    def test_h2PoolSettings(self) -> None:
        """
        An h2 pool's own TLS and health settings, from which the backends
        it finds at run time are made, offer only h2 by ALPN and check in
        HTTP/2, as its listed backends do; an HTTP/1.1 pool's offer nothing
        by ALPN and check in HTTP/1.1.
        """
        pool = self.pool(protocol="h2", tls={"verify": False})
        self.assertEqual((pool.tls.alpn, pool.health.h2), (("h2",), True))
        self.assertEqual((pool.backends[0].tls.alpn, pool.backends[0].health.h2),
                         (("h2",), True))
        pool = self.pool(tls={"verify": False})
        self.assertEqual((pool.tls.alpn, pool.health.h2), ((), False))
        self.assertEqual((pool.backends[0].tls.alpn, pool.backends[0].health.h2), ((), False))

    def test_underPool(self) -> None:
        """
        A backend given at run time with no C{tls} of its own takes its
        pool's, and in an h2 pool its TLS (its own or the pool's) offers h2
        alone by ALPN and its checks speak HTTP/2; with no TLS anywhere it
        stays plain, and an HTTP/1.1 pool's backends offer nothing by ALPN.
        """
        own = BackendTLS(verify=False, sni="own.internal")
        given = [BackendConfig("x", "tcp:host=h:port=1"),
                 BackendConfig("x", "tcp:host=h:port=1", tls=own)]
        cases = [
            ({}, [(None, None, False), ("own.internal", (), False)]),
            ({"tls": {"verify": False}}, [(None, (), False), ("own.internal", (), False)]),
            ({"protocol": "h2"}, [(None, None, True), ("own.internal", ("h2",), True)]),
            ({"protocol": "h2", "tls": {"verify": False}},
             [(None, ("h2",), True), ("own.internal", ("h2",), True)]),
        ]
        for settings, expected in cases:
            pool = self.pool(**settings)
            made = [underPool(pool, b) for b in given]
            self.assertEqual(
                [(b.tls.sni if b.tls else None, b.tls.alpn if b.tls else None, b.health.h2)
                 for b in made], expected, settings)

    def test_bad(self) -> None:
        """
        Another value is refused, naming the key.
        """
        e = self.assertRaises(ConfigError, self.pool, protocol="h3")
        self.assertIn("pools.web.protocol", str(e))


Answer = Callable[["H2Server", int, dict[bytes, bytes], bytes], None]
# A dial a memory reactor recorded: its host, its protocol, what reports it
# connected and what reports it failed.
Dialled = tuple[str, Any, Callable[[Any], None], Callable[[Failure], None]]


class JoinedDialCase(SynchronousTestCase):
    """
    An HTTP proxy factory over an h2 pool of two backends, driven by hand
    on a memory reactor that dials as lbtwist's reactor does (the protocol
    built at once, so later requests may join it).
    """

    reactor: Any

    def makeReactor(self) -> Any:
        """
        The reactor the balancer dials on: one that dials directly.
        """
        return DirectReactor()

    def dialCount(self) -> int:
        """
        How many dials the balancer made.
        """
        return len(self.reactor.dials)

    def dialled(self, index: int) -> Dialled:
        """
        Dial C{index}: its host, its protocol (the backend connection it
        makes), what reports it connected and what reports it failed.
        """
        host, _, proto, _, connected, failed = self.reactor.dials[index]
        return str(host), proto, connected, failed

    def dialHost(self, index: int) -> str:
        """
        The host dial C{index} is to.
        """
        return self.dialled(index)[0]

    def dialProtocol(self, index: int) -> Any:
        """
        The protocol of dial C{index}.
        """
        return self.dialled(index)[1]

    def failDial(self, index: int) -> str:
        """
        Fail the dial C{index} (refused); return the host it was to.
        """
        host, _, _, failed = self.dialled(index)
        failed(Failure(ConnectionRefusedError()))
        return host

    def setUp(self) -> None:
        self.reactor = self.makeReactor()
        config = parseConfig({
            "listeners": [{"listen": "tcp:80", "mode": "http"}],
            "pools": {"web": {
                "protocol": "h2", "policy": "source", "retries": 2,
                "backends": [{"name": "b1", "endpoint": "tcp:host=10.0.0.1:port=80"},
                             {"name": "b2", "endpoint": "tcp:host=10.0.0.2:port=80"}],
                **self.poolSettings}},
        })
        self.pool = BackendPool(config.pools[0])
        self.factory = HTTPProxyFactory(
            self.pool, self.reactor, Dialler(self.reactor), config.listeners[0])

    poolSettings: dict[str, Any] = {}

    def post(self, path: bytes, body: bytes) -> StringTransport:
        """
        A client connection (all from one address: the same backend by
        source hash) that sent a POST of C{body}; its transport.
        """
        return self.send(b"POST %s HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n%s"
                         % (path, len(body), body))

    def send(self, request: bytes) -> StringTransport:
        """
        A client connection that sent C{request}; its transport.
        """
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 5555))
        proto = self.factory.buildProtocol(transport.getPeer())
        proto.makeConnection(transport)
        proto.dataReceived(request)
        return transport

    def connect(self, index: int) -> tuple[Any, StringTransport, Any]:
        """
        Connect the dial C{index}; return its protocol, its transport and
        the h2 state of a test HTTP/2 server at its other end.
        """
        _, proto, connected, _ = self.dialled(index)
        transport = StringTransport()
        proto.makeConnection(transport)
        connected(proto)
        server = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        server.initiate_connection()
        return proto, transport, server

    def serve(self, index: int, answer: bool = True) -> tuple[dict[bytes, bytes], ...]:
        """
        Connect the dial C{index} to a test HTTP/2 server that answers 200
        to each request (if C{answer}); return the requests it got (their
        head fields and body as C{b"body"}).
        """
        proto, transport, server = self.connect(index)
        requests: dict[int, dict[bytes, bytes]] = {}
        for event in server.receive_data(transport.value()):
            if isinstance(event, h2.events.RequestReceived):
                requests[event.stream_id] = {**dict(event.headers), b"body": b""}
            elif isinstance(event, h2.events.DataReceived):
                requests[event.stream_id][b"body"] += event.data
            elif isinstance(event, h2.events.TrailersReceived):
                requests[event.stream_id][b"trailers"] = b"; ".join(
                    n + b"=" + v for n, v in event.headers)
            elif isinstance(event, h2.events.StreamEnded) and answer:
                server.send_headers(event.stream_id, [(b":status", b"200"),
                                                      (b"content-length", b"0")],
                                    end_stream=True)
        proto.dataReceived(server.data_to_send())
        return tuple(requests[sid] for sid in sorted(requests))


class ConnectTCPDials:
    """
    For a L{JoinedDialCase}: the balancer dials on a memory reactor that
    has only C{connectTCP}, as Twisted's own reactors (the default one, an
    application's that embeds lbtwist) have: its protocol is connected
    through a factory, and reports itself connected.
    """

    reactor: Any
    _dialled: dict[int, Dialled]

    def makeReactor(self) -> Any:
        """
        A memory reactor with no C{dialTCP}.
        """
        self._dialled = {}
        return MemoryReactorClock()

    def dialCount(self) -> int:
        """
        How many dials the balancer made.
        """
        return len(self.reactor.tcpClients)

    def dialled(self, index: int) -> Dialled:
        """
        Dial C{index}, its protocol taken from its factory once.
        """
        if index not in self._dialled:
            host, port, factory, _, _ = self.reactor.tcpClients[index]
            connector = self.reactor.connectors[index]

            def failed(reason: Failure) -> None:
                factory.clientConnectionFailed(connector, reason)

            proto = factory.buildProtocol(IPv4Address("TCP", host, port))
            self._dialled[index] = host, proto, lambda proto: None, failed
        return self._dialled[index]


class JoinedDialTests(JoinedDialCase):
    """
    Requests that joined an HTTP/2 connection while it was being dialled.
    """

    def posts(self, count: int) -> list[StringTransport]:
        """
        C{count} clients that each sent a POST (C{/p0} with C{body0}...);
        their transports.
        """
        return [self.post(b"/p%d" % i, b"body%d" % i) for i in range(count)]

    def assertServed(self, got: list[dict[bytes, bytes]], clients: list[StringTransport]) -> None:
        """
        The backends got each client's POST of L{posts} once, with its
        body; each client got a 200; no slot is left taken.
        """
        self.assertEqual(sorted((r[b":path"], r[b"body"]) for r in got),
                         [(b"/p%d" % i, b"body%d" % i) for i in range(len(clients))])
        for transport in clients:
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        self.assertEqual(self.pool.retriesActive, 0)
        self.assertEqual(sum(b.slots for b in self.pool), 0)

    def test_oneDialManyStreams(self) -> None:
        """
        Requests that come while the first connection to their backend is
        being dialled make no dial of their own: each is a stream of that
        connection, all sent once it is up, and each is answered.
        """
        clients = self.posts(5)
        self.assertEqual(self.dialCount(), 1)
        got = self.serve(0)
        self.assertEqual(self.dialCount(), 1)
        self.assertServed(list(got), clients)

    def test_joinedPostRetried(self) -> None:
        """
        POSTs that joined a connection being dialled are not sent while it
        connects; when the dial fails, they go to the other backend (none
        to the failed one) with their bodies, as the POST that dialled
        does: all share one new connection, and all are answered.
        """
        clients = self.posts(5)
        self.assertEqual(self.dialCount(), 1)
        dead = self.failDial(0)
        self.assertEqual(self.dialCount(), 2)
        self.assertNotEqual(self.dialHost(1), dead)
        self.assertServed(list(self.serve(1)), clients)

    def test_joinedTrailersRetried(self) -> None:
        """
        A chunked HTTP/1.1 request with trailers that joined the connection
        goes to the other backend with its body and its trailers.
        """
        self.post(b"/a", b"hello")
        second = self.send(b"POST /b HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"5\r\nworld\r\n0\r\nX-Sum: 9\r\n\r\n")
        self.failDial(0)
        self.assertEqual(self.dialCount(), 2)
        got = self.serve(1)
        [joined] = [r for r in got if r[b":path"] == b"/b"]
        self.assertEqual((joined[b"body"], joined[b"trailers"]), (b"world", b"x-sum=9"))
        self.assertTrue(second.value().startswith(b"HTTP/1.1 200 "), second.value())

    def test_retriesCountedOnce(self) -> None:
        """
        Two GETs on one connection that is lost are retried on the other
        backend, one dialling it and the other joining that dial, which
        fails: each was sent once and had one failed connect, and the
        access log says C{retries} 1 for each (the joined one's failed
        connect is not also counted as a send).
        """
        lines: list[tuple[Any, ...]] = []

        class Sink:
            def request(self, *fields: Any) -> None:
                lines.append(fields)

        self.factory.accessLog = Sink()  # type: ignore[assignment]
        clients = [self.send(b"GET /%s HTTP/1.1\r\nHost: a\r\n\r\n" % name)
                   for name in (b"x1", b"x2")]
        proto, transport, server = self.connect(0)
        events = server.receive_data(transport.value())
        self.assertEqual(
            sorted(dict(e.headers)[b":path"] for e in events
                   if isinstance(e, h2.events.RequestReceived)),
            [b"/x1", b"/x2"])
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual([self.dialHost(i) for i in range(self.dialCount())],
                         ["10.0.0.1", "10.0.0.2"])
        self.failDial(1)
        for client in clients:
            self.assertTrue(client.value().startswith(b"HTTP/1.1 502 "), client.value())
        self.assertEqual(sorted((f[2], f[8]) for f in lines), [("/x1", 1), ("/x2", 1)])

    def test_bodyHeldWhileConnecting(self) -> None:
        """
        While the connection is being made, a joined request's body waits in
        its stream, not in the connection's output (which a failed dial
        would lose); once it is up it goes out (the dialling request's body
        waited in its exchange).
        """
        self.post(b"/a", b"hello")
        self.post(b"/b", b"world")
        self.assertEqual(self.dialCount(), 1)
        connection = self.dialProtocol(0)
        self.assertEqual([list(s._out) for s in connection.streams.values()], [[b"world"]])
        got = self.serve(0)
        self.assertEqual(sorted(r[b"body"] for r in got), [b"hello", b"world"])


class ConnectTCPJoinedDialTests(ConnectTCPDials, JoinedDialTests):
    """
    The same on a reactor with only C{connectTCP}: the connection being
    dialled is known from the dial's start there too.
    """


class H2CounterTests(JoinedDialCase):
    """
    A backend's HTTP/2 counters (L{lbtwist.pool.HTTP2Counters}) follow its
    connections and streams, and the metrics export them.
    """

    def counters(self, index: int = 0) -> tuple[int, int, int, int]:
        """
        Backend C{index}'s connections, streams, GOAWAYs and lost
        connections.
        """
        c = list(self.pool)[index].http2
        return c.connections, c.streams, c.goaways, c.lost

    def test_streamsAndConnections(self) -> None:
        """
        A stream counts from its head on (while its connection is dialled
        too), until its response ends; a connection counts while it is up.
        A GOAWAY is counted; a connection closed with no stream open is not
        lost.
        """
        self.post(b"/a", b"hello")
        self.post(b"/b", b"world")
        index = 0 if self.dialHost(0) == "10.0.0.1" else 1
        self.assertEqual(self.counters(index), (0, 1, 0, 0))
        proto, transport, server = self.connect(0)
        self.assertEqual(self.counters(index), (1, 2, 0, 0))
        for event in server.receive_data(transport.value()):
            if isinstance(event, h2.events.StreamEnded):
                server.send_headers(event.stream_id, [(b":status", b"204")], end_stream=True)
        proto.dataReceived(server.data_to_send())
        self.assertEqual(self.counters(index), (1, 0, 0, 0))
        server.close_connection()
        proto.dataReceived(server.data_to_send())
        self.assertTrue(transport.disconnecting)
        proto.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.counters(index), (0, 0, 1, 0))

    def test_lost(self) -> None:
        """
        A connection that closes with streams open is counted lost, and
        its streams are no longer open.
        """
        self.post(b"/a", b"hello")
        index = 0 if self.dialHost(0) == "10.0.0.1" else 1
        proto, transport, server = self.connect(0)
        self.assertEqual(self.counters(index), (1, 1, 0, 0))
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.counters(index), (0, 0, 0, 1))

    def test_failedDial(self) -> None:
        """
        Streams that waited for a connection whose dial failed are no
        longer open; no connection was.
        """
        self.post(b"/a", b"hello")
        self.post(b"/b", b"world")
        index = 0 if self.dialHost(0) == "10.0.0.1" else 1
        self.failDial(0)
        self.assertEqual(self.counters(index), (0, 0, 0, 0))

    def test_exported(self) -> None:
        """
        Each backend of an h2 pool has the four series, read at scrape
        time; a pool of HTTP/1.1 has none.
        """
        self.post(b"/a", b"hello")
        self.post(b"/b", b"world")
        index = 0 if self.dialHost(0) == "10.0.0.1" else 1
        self.connect(0)
        plain = BackendPool(parseConfig({
            "listeners": [{"listen": "tcp:80", "mode": "http"}],
            "pools": {"plain": {"backends": [{"name": "p", "endpoint": "tcp:host=h:port=1"}]}},
        }).pools[0])

        class Balancer:
            pools = {"web": self.pool, "plain": plain}
            factories: dict[str, Any] = {}

        text = exposition(balancerRegistry(Balancer()))[0].decode()
        got = {(s.name, s.labels["backend"]): s.value
               for family in text_string_to_metric_families(text) for s in family.samples
               if s.name.startswith("lbtwist_backend_http2_")}
        name = list(self.pool)[index].name
        other = list(self.pool)[1 - index].name
        self.assertEqual(got, {
            ("lbtwist_backend_http2_connections", name): 1,
            ("lbtwist_backend_http2_streams", name): 2,
            ("lbtwist_backend_http2_goaways_total", name): 0,
            ("lbtwist_backend_http2_connections_lost_total", name): 0,
            ("lbtwist_backend_http2_connections", other): 0,
            ("lbtwist_backend_http2_streams", other): 0,
            ("lbtwist_backend_http2_goaways_total", other): 0,
            ("lbtwist_backend_http2_connections_lost_total", other): 0,
        })


class EncoderTableTests(JoinedDialCase):
    """
    The HPACK table the balancer encodes request fields with, towards an
    HTTP/2 backend.
    """

    def test_capped(self) -> None:
        """
        A backend announcing a huge SETTINGS_HEADER_TABLE_SIZE does not
        make the balancer keep every request field it sends it in its HPACK
        table (h2 would, up to 2 GiB): over one connection the table stays
        within 4096 bytes, the protocol's default, and the backend still
        reads every field.
        """
        from h2.settings import SettingCodes

        requests = 200
        self.send(b"GET /0 HTTP/1.1\r\nHost: a\r\nX-Request-Id: %040d\r\n\r\n" % 0)
        proto, transport, server = self.connect(0)
        server.update_settings({SettingCodes.HEADER_TABLE_SIZE: 2**31 - 1})
        seen: list[bytes] = []

        def exchange() -> None:
            data = transport.value()
            transport.clear()
            for event in server.receive_data(data):
                if isinstance(event, h2.events.RequestReceived):
                    seen.append(dict(event.headers)[b"x-request-id"])
                elif isinstance(event, h2.events.StreamEnded):
                    server.send_headers(event.stream_id, [(b":status", b"200"),
                                                          (b"content-length", b"0")],
                                        end_stream=True)
            proto.dataReceived(server.data_to_send())

        exchange()
        for i in range(1, requests):
            self.send(b"GET /%d HTTP/1.1\r\nHost: a\r\nX-Request-Id: %040d\r\n\r\n" % (i, i))
            exchange()
        self.assertEqual(self.dialCount(), 1)
        self.assertEqual(seen, [b"%040d" % i for i in range(requests)])
        table = proto.h2.encoder.header_table
        held = sum(32 + len(name) + len(value) for name, value in table.dynamic_entries)
        self.assertLessEqual(held, 4096)


class JoinedDialNotRetriedTests(JoinedDialCase):
    """
    The same without C{connect-failure} in C{retry-on}.
    """

    poolSettings = {"retry-on": ["refused-stream"]}

    def test_joinedPostRetried(self) -> None:
        """
        Connect failures are not retried: both requests get a 503, as an
        HTTP/1.1 request whose connect failed does.
        """
        first = self.post(b"/a", b"hello")
        second = self.post(b"/b", b"world")
        self.failDial(0)
        self.assertEqual(self.dialCount(), 1)
        for transport in (first, second):
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "), transport.value())
        self.assertEqual(sum(b.slots for b in self.pool), 0)


class ConnectTCPJoinedDialNotRetriedTests(ConnectTCPDials, JoinedDialNotRetriedTests):
    """
    The same on a reactor with only C{connectTCP}.
    """


class H2Server(Protocol):
    """
    A test HTTP/2 backend (cleartext, prior knowledge): answers each
    complete request with C{factory.answer}.
    """

    def connectionMade(self) -> None:
        self.factory.connections += 1  # type: ignore[attr-defined]
        self.factory.open += 1  # type: ignore[attr-defined]
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=False, header_encoding=None))
        self.conn.initiate_connection()
        self.heads: dict[int, dict[bytes, bytes]] = {}
        self.bodies: dict[int, bytes] = {}
        # Response bytes still to send, by stream, as windows allow.
        self.owed: dict[int, int] = {}
        self.flush()

    def flush(self) -> None:
        """
        Send what h2 has to send.
        """
        self.transport.write(self.conn.data_to_send())  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        if self.conn.state_machine.state == ConnectionState.CLOSED:
            # After its GOAWAY it reads nothing more (h2 would call the
            # client's SETTINGS ACK a protocol error): the client closes.
            return
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.RequestReceived):
                self.heads[event.stream_id] = dict(event.headers)
                self.bodies[event.stream_id] = b""
                self.factory.requests.append(dict(event.headers))  # type: ignore[attr-defined]
                self.factory.used.add(self)  # type: ignore[attr-defined]
            elif isinstance(event, h2.events.DataReceived):
                self.bodies[event.stream_id] += event.data
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.TrailersReceived):
                self.factory.trailers.append(event.headers)  # type: ignore[attr-defined]
            elif isinstance(event, h2.events.StreamEnded):
                sid = event.stream_id
                self.factory.answer(self, sid, self.heads[sid], self.bodies[sid])  # type: ignore[attr-defined]
        self.pump()
        self.flush()

    def pump(self) -> None:
        """
        Send what is owed within the windows, ending each stream with its
        last byte.
        """
        for sid, owed in list(self.owed.items()):
            window = min(self.conn.local_flow_control_window(sid),
                         self.conn.max_outbound_frame_size)
            while owed and window > 0:
                n = min(owed, window)
                owed -= n
                self.conn.send_data(sid, b"z" * n, end_stream=not owed)
                self.factory.sent += n  # type: ignore[attr-defined]
                window = min(self.conn.local_flow_control_window(sid),
                             self.conn.max_outbound_frame_size)
            if owed:
                self.owed[sid] = owed
            else:
                del self.owed[sid]

    def connectionLost(self, reason: Any = None) -> None:
        self.factory.open -= 1  # type: ignore[attr-defined]


def echo(server: H2Server, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    """
    Answer with the path and the body, and a trailer.
    """
    conn = server.conn
    conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/plain")])
    conn.send_data(sid, head[b":path"] + b" " + body)
    conn.send_headers(sid, [(b"x-done", b"yes")], end_stream=True)


BULK = 32 * 1024 * 1024


def bulk(server: H2Server, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    """
    Answer with C{BULK} bytes, sent as the windows allow.
    """
    server.conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"%d" % BULK)])
    server.owed[sid] = BULK


def hold(server: H2Server, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    """
    Answer nothing: keep the stream open (in C{factory.held}).
    """
    server.factory.held.append((server, sid))  # type: ignore[attr-defined]


def refuse(server: H2Server, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    """
    Refuse every stream unprocessed.
    """
    server.factory.refused += 1  # type: ignore[attr-defined]
    server.conn.reset_stream(sid, ErrorCodes.REFUSED_STREAM)


def goAway(server: H2Server, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    """
    Close the connection gracefully before processing the stream: GOAWAY
    with the stream before it as the last one processed.
    """
    server.factory.refused += 1  # type: ignore[attr-defined]
    server.conn.close_connection(last_stream_id=sid - 2 if sid > 2 else 0)


class BlackHole:
    """
    A backend on 127.0.0.1 whose dials hang: a listening socket that
    accepts nothing, its backlog filled, so that the kernel drops the SYNs
    of further connects (they end only by their timeout).
    """

    def __init__(self, case: TestCase) -> None:
        self.listening = socket.socket()
        self.listening.bind(("127.0.0.1", 0))
        self.listening.listen(0)
        address = self.listening.getsockname()
        self.fillers = []
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(address)
            self.fillers.append(filler)
        self.endpoint = f"tcp:host=127.0.0.1:port={address[1]}"
        case.addCleanup(self.close)

    def close(self) -> None:
        """
        Close the sockets.
        """
        for s in [*self.fillers, self.listening]:
            s.close()


class H2ServerCase(TestCase):
    """
    Tests with test HTTP/2 servers on 127.0.0.1.
    """

    timeout = 30

    def server(self, answer: Answer, tls: Any = None) -> Any:
        """
        A test HTTP/2 server on 127.0.0.1, port 0: in cleartext, or over TLS
        with the context factory C{tls} (which says what it offers by ALPN).
        """
        factory = Factory.forProtocol(H2Server)
        factory.answer = answer  # type: ignore[attr-defined]
        factory.connections = 0  # type: ignore[attr-defined]
        factory.open = 0  # type: ignore[attr-defined]
        factory.refused = 0  # type: ignore[attr-defined]
        factory.sent = 0  # type: ignore[attr-defined]
        factory.requests = []  # type: ignore[attr-defined]
        factory.trailers = []  # type: ignore[attr-defined]
        factory.held = []  # type: ignore[attr-defined]
        # The connections that carried requests (not the health checks').
        factory.used = set()  # type: ignore[attr-defined]
        port = (reactor.listenTCP(0, factory, interface="127.0.0.1") if tls is None
                else reactor.listenSSL(0, factory, tls, interface="127.0.0.1"))
        factory.listening = port  # type: ignore[attr-defined]
        self.addCleanup(port.stopListening)
        factory.endpoint = f"tcp:host=127.0.0.1:port={port.getHost().port}"  # type: ignore[attr-defined]
        return factory


class H2BackendTests(H2ServerCase):
    """
    A balancer whose pool speaks HTTP/2 to real (test) HTTP/2 servers.
    """

    def balancer(self, *servers: Any, **pool: Any) -> int:
        """
        A balancer over C{servers} with C{protocol: h2}; its port.
        """
        _, port = startBalancer(self, {
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1", "mode": "http"}],
            "pools": {"web": {"protocol": "h2", "health": {"fall": 100},
                              "backends": [{"name": f"s{i}", "endpoint": s.endpoint}
                                           for i, s in enumerate(servers)], **pool}},
        })
        return port

    @inlineCallbacks
    def test_multiplexed(self) -> Any:
        """
        Requests from several HTTP/1.1 clients at once, the first ones
        while the connection to the backend is still being made, are
        streams of that one connection; each gets its own answer and body.
        """
        server = self.server(echo)
        port = self.balancer(server)
        results = yield DeferredList([
            httpRequests(port, [("POST", f"/p{i}", b"body%d" % i, {})]) for i in range(8)])
        for i, (ok, responses) in enumerate(results):
            self.assertTrue(ok)
            status, headers, body = responses[0]
            self.assertEqual((status, body), (200, b"/p%d body%d" % (i, i)))
        self.assertEqual(len(server.used), 1)
        self.assertEqual(server.requests[-1][b"te"], b"trailers")

    @inlineCallbacks
    def test_backpressure(self) -> Any:
        """
        A client that does not read holds the backend back: the backend
        can send only what the windows and the sockets hold, not the whole
        32 MB response; once the client reads, all of it comes.
        """
        server = self.server(bulk)
        port = self.balancer(server)

        def run() -> tuple[int, int]:
            import socket
            import time

            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
                s.sendall(b"GET /bulk HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                time.sleep(1.0)
                sentWhileStalled = server.sent
                got = 0
                while True:
                    data = s.recv(1 << 20)
                    if not data:
                        break
                    got += len(data)
                return sentWhileStalled, got

        sentWhileStalled, got = yield inThread(run)
        self.assertLess(sentWhileStalled, BULK // 4)
        self.assertGreater(got, BULK)

    @inlineCallbacks
    def test_trailersToHTTP11(self) -> Any:
        """
        The backend's trailers reach an HTTP/1.1 client that asked for
        them, after a chunked body.
        """
        port = self.balancer(self.server(echo))
        out = yield rawExchange(port, b"GET /t HTTP/1.1\r\nHost: x\r\nTE: trailers\r\n"
                                      b"Connection: close\r\n\r\n")
        self.assertIn(b"Transfer-Encoding: chunked", out)
        self.assertTrue(out.endswith(b"0\r\nx-done: yes\r\n\r\n"), out)

    @inlineCallbacks
    def test_refusedRetried(self) -> Any:
        """
        A stream refused unprocessed (REFUSED_STREAM) is retried on another
        backend, even a POST (it has no body).
        """
        refusing = self.server(refuse)
        good = self.server(echo)
        port = self.balancer(refusing, good, policy="roundrobin")
        for _ in range(2):
            responses = yield httpRequests(port, [("POST", "/r", None, {})])
            self.assertEqual(responses[0][0], 200)
        self.assertGreaterEqual(len(refusing.requests), 1)

    @inlineCallbacks
    def test_goAwayRetried(self) -> Any:
        """
        A stream beyond a GOAWAY's last stream id was not processed: it is
        retried on another backend, and the closing connection is not used
        again.
        """
        closing = self.server(goAway)
        good = self.server(echo)
        port = self.balancer(closing, good, policy="roundrobin")
        for i in range(3):
            responses = yield httpRequests(port, [("GET", f"/g{i}", None, {})])
            self.assertEqual(responses[0][:1], (200,))
            self.assertEqual(responses[0][2], b"/g%d " % i)
        self.assertGreaterEqual(closing.refused, 1)
        yield waitFor(lambda: closing.open == 0)

    @inlineCallbacks
    def test_deadBackend(self) -> Any:
        """
        Requests that joined a connection that never came up (its backend
        refused the dial) are sent to another backend.
        """
        good = self.server(echo)
        dead = self.server(echo)
        yield dead.listening.stopListening()
        port = self.balancer(dead, good, policy="roundrobin")
        results = yield DeferredList([
            httpRequests(port, [("GET", f"/d{i}", None, {})]) for i in range(6)])
        self.assertEqual([r[1][0][0] for r in results], [200] * 6)

    @inlineCallbacks
    def test_deadBackendBodies(self) -> Any:
        """
        Many POSTs with bodies at once over a backend whose dial hangs until
        the connect timeout and a live one: the requests that joined the
        dead backend's connection while it was dialled go to the live one
        with their bodies, as the one that dialled it does; all succeed.
        """
        good = self.server(echo)
        dead = BlackHole(self)
        port = self.balancer(dead, good, policy="roundrobin", timeouts={"connect": 0.5})
        n = 16
        results = yield DeferredList([
            httpRequests(port, [("POST", f"/d{i}", b"body%d" % i, {})], timeout=10)
            for i in range(n)])
        self.assertEqual([(r[1][0][0], r[1][0][2]) for r in results],
                         [(200, b"/d%d body%d" % (i, i)) for i in range(n)])
        self.assertEqual(len(good.requests), n)

    @inlineCallbacks
    def test_metrics(self) -> Any:
        """
        The scraped metrics show the backend's one connection and its
        streams in flight; when the backend drops the connection under
        them, the connection is counted lost and nothing is open.
        """
        server = self.server(hold)
        lb, port = startBalancer(self, {
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1", "mode": "http"}],
            "pools": {"web": {"protocol": "h2", "health": {"fall": 100}, "retries": 0,
                              "backends": [{"name": "s", "endpoint": server.endpoint}]}},
        })
        registry = balancerRegistry(lb)

        def scraped() -> dict[str, float]:
            text = exposition(registry)[0].decode()
            return {s.name: s.value for family in text_string_to_metric_families(text)
                    for s in family.samples if s.name.startswith("lbtwist_backend_http2_")}

        answers = DeferredList([httpRequests(port, [("GET", f"/m{i}", None, {})])
                                for i in range(3)])
        yield waitFor(lambda: len(server.held) == 3)
        self.assertEqual(scraped(), {
            "lbtwist_backend_http2_connections": 1, "lbtwist_backend_http2_streams": 3,
            "lbtwist_backend_http2_goaways_total": 0,
            "lbtwist_backend_http2_connections_lost_total": 0})
        server.held[0][0].transport.abortConnection()
        results = yield answers
        self.assertEqual([r[1][0][0] for r in results], [502] * 3)
        self.assertEqual(scraped(), {
            "lbtwist_backend_http2_connections": 0, "lbtwist_backend_http2_streams": 0,
            "lbtwist_backend_http2_goaways_total": 0,
            "lbtwist_backend_http2_connections_lost_total": 1})

    @inlineCallbacks
    def test_refusedNotRetried(self) -> Any:
        """
        Without C{refused-stream} in C{retry-on}, the refused request gets a
        502.
        """
        port = self.balancer(self.server(refuse), **{"retry-on": ["connect-failure"]})
        responses = yield httpRequests(port, [("GET", "/r", None, {})])
        self.assertEqual(responses[0][0], 502)


def lengthThenHold(server: H2Server, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    """
    Answer with a Content-Length and the whole body, without END_STREAM:
    the stream stays open (in C{factory.held}) until the test ends it, as
    a server that sends END_STREAM in a frame of its own, later.
    """
    server.conn.send_headers(sid, [(b":status", b"200"), (b"content-length", b"5")])
    server.conn.send_data(sid, b"hello")
    server.factory.held.append((server, sid))  # type: ignore[attr-defined]


class H2ClientToH2BackendTests(H2ServerCase):
    """
    HTTP/2 on both sides: an h2 client of a balancer whose pool speaks h2.
    """

    @inlineCallbacks
    def test_bodyBeforeSeparateEnd(self) -> Any:
        """
        A body whose Content-Length the backend has sent whole, but whose
        END_STREAM it sends later in a frame of its own, reaches the client
        at once, not when the END_STREAM comes; the END_STREAM then ends
        the client's stream.
        """
        server = self.server(lengthThenHold)
        _, port = startBalancer(self, {
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1", "mode": "http",
                           "http2": True}],
            "pools": {"web": {"protocol": "h2", "health": {"fall": 100},
                              "backends": [{"name": "s", "endpoint": server.endpoint}]}},
        })
        client = H2Client(port)
        self.addCleanup(client.close)

        def body() -> bytes:
            return b"".join(e.data for e in client.events
                            if isinstance(e, h2.events.DataReceived))

        def first() -> bytes:
            client.request(1, "/x")
            client.read(lambda events: body() == b"hello", timeout=2.0)
            return body()

        got = yield inThread(first)
        self.assertEqual(got, b"hello")
        self.assertEqual(len(server.held), 1)
        held, sid = server.held[0]
        held.conn.end_stream(sid)
        held.flush()
        yield inThread(client.read, lambda events: client.responses(), 2.0)
        self.assertEqual(client.responses(), {1: (200, b"hello")})


def notFound(server: H2Server, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    """
    Answer 404 with no body.
    """
    server.conn.send_headers(sid, [(b":status", b"404")], end_stream=True)


class H2HealthTests(H2ServerCase):
    """
    The http check of an h2 pool speaks HTTP/2: its request is a stream
    after the connection preface.
    """

    @inlineCallbacks
    def check(self, answer: Answer, **health: Any) -> Any:
        """
        Probe a test h2 server answering with C{answer}, with the C{health}
        keys given; the probe's result (or failure) and the request the
        server saw.
        """
        server = self.server(answer)
        config = parseConfig({
            "listeners": [{"listen": "tcp:0", "mode": "http"}],
            "pools": {"p": {"protocol": "h2",
                            "health": {"type": "http", "path": "/healthz", **health},
                            "backends": [{"name": "b", "endpoint": server.endpoint}]}},
        })
        probe = HTTPProbe(Dialler(reactor))
        backend = BackendPool(config.pools[0]).get("b")
        try:
            result = yield probe(backend)
        except ProbeFailed as e:
            result = str(e)
        return result, server.requests

    @inlineCallbacks
    def test_up(self) -> Any:
        """
        A 200 over HTTP/2 passes the check.
        """
        result, requests = yield self.check(echo)
        self.assertEqual(result, 200)
        self.assertEqual(requests[0][b":path"], b"/healthz")
        self.assertEqual(requests[0][b":method"], b"GET")

    @inlineCallbacks
    def test_down(self) -> Any:
        """
        A 404 over HTTP/2 fails it, saying the status.
        """
        result, _ = yield self.check(notFound)
        self.assertIn("status 404", result)

    @inlineCallbacks
    def test_headerAndBodyRegex(self) -> Any:
        """
        C{expect-header} and C{expect-body-regex} judge an HTTP/2 answer
        as an HTTP/1.1 one: its header fields and its DATA.
        """
        result, _ = yield self.check(echo, **{"expect-header": {"Content-Type": "text/plain"},
                                              "expect-body-regex": "^/health[a-z] $"})
        self.assertEqual(result, 200)
        result, _ = yield self.check(echo, **{"expect-header": {"Content-Type": "text/html"}})
        self.assertEqual(result, "status 200 but the header Content-Type is 'text/plain', "
                                 "expected 'text/html'")
        result, _ = yield self.check(echo, **{"expect-body-regex": "^/other"})
        self.assertEqual(result, "status 200 but the body does not match '^/other'")


PAGE = (b"<html><body><script>document.body.textContent = 'protocol=' + "
        b"performance.getEntries()[0].nextHopProtocol;</script></body></html>")


def page(server: H2Server, sid: int, head: dict[bytes, bytes], body: bytes) -> None:
    """
    A page whose script writes the protocol the browser loaded it over.
    """
    server.conn.send_headers(sid, [(b":status", b"200"), (b"content-type", b"text/html"),
                                   (b"content-length", b"%d" % len(PAGE))])
    server.conn.send_data(sid, PAGE, end_stream=True)


class ChromiumTests(H2ServerCase):
    """
    A browser speaks HTTP/2 to lbtwist, which speaks HTTP/2 to the backend.
    """

    timeout = 60

    @inlineCallbacks
    def test_page(self) -> Any:
        """
        Headless Chromium loads a page through a TLS listener offering h2
        from an h2 backend: the page says it came over C{h2}, and the
        backend saw the request as a stream.
        """
        files = Certificates(self.mktemp())
        server = self.server(page)
        _, port = startBalancer(self, {
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1", "mode": "http", "tls": {
                "certificates": [Certificates.entry(files.ab)], "alpn": ["h2", "http/1.1"]}}],
            "pools": {"web": {"protocol": "h2", "health": {"fall": 100},
                              "backends": [{"name": "s", "endpoint": server.endpoint}]}},
        })
        out = yield chromiumDOM(self, f"https://127.0.0.1:{port}/page")
        self.assertIn(b"protocol=h2", out)
        self.assertIn(b"/page", [r[b":path"] for r in server.requests])


class ReloadTests(SynchronousTestCase):
    """
    A pool's protocol is built into the listeners' factories.
    """

    def test_needsRestart(self) -> None:
        """
        A reload that changes a pool's protocol says it needs a restart and
        keeps the running protocol (and the backends that follow it).
        """
        from lbtwist.diff import runnable

        def config(**pool: Any) -> Any:
            return parseConfig({"listeners": [{"listen": "tcp:80", "mode": "http"}],
                                "pools": {"web": {"backends": ["127.0.0.1:1"], **pool}}})

        running = config()
        kept, differ = runnable(config(protocol="h2"), running)
        self.assertEqual(differ, ["pools.web.protocol"])
        self.assertEqual(kept.pools[0].protocol, "http/1.1")
        self.assertEqual(kept.pools[0].backends, running.pools[0].backends)
