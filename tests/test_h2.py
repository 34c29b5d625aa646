"""
HTTP/2 from clients (L{lbtwist.http._h2}) with real clients over 127.0.0.1:
curl over TLS (ALPN) and by prior knowledge (h2c), nghttp and h2load, and
the h2 library as a client that abuses the connection.
"""

from __future__ import annotations

import shutil
import socket
import time
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import ContinuationFrame, HeadersFrame
from twisted.internet.defer import DeferredList, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from .httphelpers import RecordingBackend, chromiumDOM, waitFor
from .support import inThread, reactor, startBalancer
from .test_tls_listen import Certificates

CURL = shutil.which("curl")
NGHTTP = shutil.which("nghttp")
H2LOAD = shutil.which("h2load")


def hasHTTP2(curl: str | None) -> bool:
    """
    Whether this curl speaks HTTP/2 (it was built with nghttp2).
    """
    if curl is None:
        return False
    import subprocess

    out = subprocess.run([curl, "--version"], capture_output=True, check=False).stdout
    return b"HTTP2" in out


CURL_H2 = hasHTTP2(CURL)


class H2Client:
    """
    A blocking HTTP/2 client on the h2 library, for tests run in a thread:
    it sends what a test tells it to, well-formed or not, and reads the
    events back.
    """

    def __init__(self, port: int, timeout: float = 5.0, settings: dict[int, int] | None = None) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False, validate_inbound_headers=False))
        if settings:
            self.conn.local_settings = h2.settings.Settings(client=True, initial_values=settings)
        self.conn.initiate_connection()
        self.events: list[Any] = []
        self.closed = False
        self.flush()

    def flush(self) -> None:
        """
        Send what h2 has to send.
        """
        data = self.conn.data_to_send()
        if data:
            try:
                self.sock.sendall(data)
            except OSError:
                self.closed = True

    def request(self, sid: int, path: str = "/", method: str = "GET", end: bool = True,
                extra: list[tuple[bytes, bytes]] | None = None) -> None:
        """
        Send a request's HEADERS on stream C{sid}.
        """
        fields = [(b":method", method.encode()), (b":scheme", b"http"),
                  (b":path", path.encode()), (b":authority", b"h2.example")]
        self.conn.send_headers(sid, fields + (extra or []), end_stream=end)
        self.flush()

    def read(self, until: Any, timeout: float = 5.0) -> list[Any]:
        """
        Read events until C{until(events)} holds, the connection closes or
        C{timeout} passes; return every event read so far.
        """
        deadline = time.monotonic() + timeout
        while not until(self.events) and not self.closed and time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                self.closed = True
                break
            if not data:
                self.closed = True
                break
            try:
                self.events.extend(self.conn.receive_data(data))
            except h2.exceptions.ProtocolError:
                self.closed = True
                break
            self.flush()
        return self.events

    def poll(self) -> list[Any]:
        """
        Read what has arrived, without waiting; return every event read so
        far.
        """
        self.sock.settimeout(0)
        try:
            data: bytes | None = self.sock.recv(65536)
        except BlockingIOError:
            data = None
        except OSError:
            self.closed = True
            data = None
        if data == b"":
            self.closed = True
        elif data:
            try:
                self.events.extend(self.conn.receive_data(data))
            except h2.exceptions.ProtocolError:
                self.closed = True
        return self.events

    def responses(self) -> dict[int, tuple[int, bytes]]:
        """
        The complete responses read so far, by stream: (status, body).
        """
        status: dict[int, int] = {}
        bodies: dict[int, bytes] = {}
        ended = set()
        for e in self.events:
            if isinstance(e, h2.events.ResponseReceived):
                status[e.stream_id] = int(dict(e.headers)[b":status"])
            elif isinstance(e, h2.events.DataReceived):
                bodies[e.stream_id] = bodies.get(e.stream_id, b"") + e.data
            elif isinstance(e, h2.events.StreamEnded):
                ended.add(e.stream_id)
        return {sid: (status.get(sid, 0), bodies.get(sid, b"")) for sid in ended}

    def close(self) -> None:
        """
        Close the socket.
        """
        self.sock.close()


def resets(events: list[Any], code: int) -> list[int]:
    """
    The streams reset by the server with C{code}.
    """
    return [e.stream_id for e in events
            if isinstance(e, h2.events.StreamReset) and e.error_code == code]


def goaway(events: list[Any]) -> Any:
    """
    The server's GOAWAY, if it sent one.
    """
    for e in events:
        if isinstance(e, h2.events.ConnectionTerminated):
            return e
    return None


class H2TestCase(TestCase):
    """
    Start a recording backend and a balancer whose HTTP listener speaks
    HTTP/2.
    """

    timeout = 60

    def backend(self, respond: Any = None) -> RecordingBackend:
        """
        A recording backend on 127.0.0.1, port 0.
        """
        backend = RecordingBackend("b", respond)
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(backend.port.stopListening)
        return backend

    def balancer(self, backend: RecordingBackend, http2: Any = True, tls: Any = None,
                 pool: dict[str, Any] | None = None) -> tuple[Any, int]:
        """
        A balancer over C{backend}: an HTTP listener with C{http2} (and
        C{tls}, if given).
        """
        listener: dict[str, Any] = {"listen": "tcp:0:interface=127.0.0.1", "mode": "http"}
        if http2 is not None:
            listener["http2"] = http2
        if tls is not None:
            listener["tls"] = tls
        lb, port = startBalancer(self, {
            "listeners": [listener],
            "pools": {"web": {"backends": [{"name": "b", "endpoint": backend.endpoint}],
                              **(pool or {})}},
        })
        return lb.factories[lb.config.listeners[0].name], port

    @inlineCallbacks
    def curl(self, *args: str) -> Any:
        """
        Run curl with C{args}; its output, error and exit code.
        """
        if not CURL_H2:
            self.skipTest("curl with HTTP/2 is not installed")
        out, err, code = yield getProcessOutputAndValue(
            CURL, ("-sS", "--max-time", "10", *args), env={}, reactor=reactor)
        return out, err, code


class CurlTests(H2TestCase):
    """
    curl speaks HTTP/2 to the balancer, which speaks HTTP/1.1 to the
    backend.
    """

    @inlineCallbacks
    def test_priorKnowledge(self) -> Any:
        """
        C{curl --http2-prior-knowledge} (h2c) gets the backend's answer over
        HTTP/2; the backend sees an HTTP/1.1 request with the authority as
        its Host; HTTP/1.1 clients still share the port.
        """
        backend = self.backend()
        factory, port = self.balancer(backend)
        out, err, code = yield self.curl(
            "--http2-prior-knowledge", "-w", "%{http_version}", f"http://127.0.0.1:{port}/h2c")
        self.assertEqual((out, code), (b"b /h2c\n2", 0), err)
        request = backend.requests[-1]
        self.assertEqual(request.header(b"host"), f"127.0.0.1:{port}".encode())
        self.assertEqual(request.header(b"x-forwarded-proto"), b"http")
        out, err, code = yield self.curl("-w", "%{http_version}", f"http://127.0.0.1:{port}/h1")
        self.assertEqual((out, code), (b"b /h1\n1.1", 0), err)
        self.assertEqual((factory.h2Connections, factory.h2Streams), (1, 1))

    @inlineCallbacks
    def test_alpn(self) -> Any:
        """
        Over TLS, C{curl --http2} is offered C{h2} by ALPN and speaks it;
        a client offering only HTTP/1.1 gets HTTP/1.1.
        """
        files = Certificates(self.mktemp())
        backend = self.backend()
        _, port = self.balancer(backend, http2=None, tls={
            "certificates": [Certificates.entry(files.ab)], "alpn": ["h2", "http/1.1"]})
        url = f"https://a.example:{port}/tls"
        common = ("--cacert", files.ca.cert, "--resolve", f"a.example:{port}:127.0.0.1",
                  "-w", "%{http_version}")
        out, err, code = yield self.curl("--http2", *common, url)
        self.assertEqual((out, code), (b"b /tls\n2", 0), err)
        self.assertEqual(backend.requests[-1].header(b"x-forwarded-proto"), b"https")
        out, err, code = yield self.curl("--http1.1", *common, url)
        self.assertEqual((out, code), (b"b /tls\n1.1", 0), err)

    @inlineCallbacks
    def test_postBody(self) -> Any:
        """
        A POST body reaches the backend whole, with its length.
        """
        backend = self.backend()
        _, port = self.balancer(backend)
        body = b"x" * 300000
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(body)
        out, err, code = yield self.curl(
            "--http2-prior-knowledge", "--data-binary", f"@{path}",
            f"http://127.0.0.1:{port}/post")
        self.assertEqual((out, code), (b"b /post\n", 0), err)
        request = backend.requests[-1]
        self.assertEqual(request.body, body)
        self.assertEqual(request.header(b"content-length"), b"300000")


def pageResponse(request: Any, backend: Any, proto: Any) -> bytes:
    """
    A page whose script writes the protocol the browser loaded it over into
    its body.
    """
    body = (b"<html><body><script>document.body.textContent = 'protocol=' + "
            b"performance.getEntries()[0].nextHopProtocol;</script></body></html>")
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n"
            % len(body) + body)


class ChromiumTests(H2TestCase):
    """
    A browser speaks HTTP/2 to the balancer.
    """

    @inlineCallbacks
    def test_page(self) -> Any:
        """
        Headless Chromium loads a page through a TLS listener offering h2:
        the page sees it came over C{h2}.
        """
        files = Certificates(self.mktemp())
        backend = self.backend(pageResponse)
        factory, port = self.balancer(backend, http2=None, tls={
            "certificates": [Certificates.entry(files.ab)], "alpn": ["h2", "http/1.1"]})
        out = yield chromiumDOM(self, f"https://127.0.0.1:{port}/page")
        self.assertIn(b"protocol=h2", out)
        self.assertGreaterEqual(factory.h2Streams, 1)


class ObservabilityTests(H2TestCase):
    """
    Access logs, metrics and the admin view say which protocol each request
    came over.
    """

    @inlineCallbacks
    def test_protocolCounted(self) -> Any:
        """
        An h2c request and an HTTP/1.1 one on the same port: the access log
        says C{proto=HTTP/2} and C{proto=HTTP/1.1}; the metrics count
        responses by protocol and the HTTP/2 connections and streams.
        """
        from lbtwist.metrics import balancerRegistry, exposition

        from .test_metrics import samples

        path = self.mktemp()
        backend = self.backend()
        listener = {"listen": "tcp:0:interface=127.0.0.1", "mode": "http", "http2": True,
                    "name": "front"}
        lb, port = startBalancer(self, {
            "listeners": [listener],
            "pools": {"web": {"backends": [{"name": "b", "endpoint": backend.endpoint}],
                              "access-log": f"./{path}"}},
        })
        out, err, code = yield self.curl("--http2-prior-knowledge",
                                         f"http://127.0.0.1:{port}/two")
        self.assertEqual(code, 0, err)
        out, err, code = yield self.curl(f"http://127.0.0.1:{port}/one")
        self.assertEqual(code, 0, err)

        def logged() -> list[str]:
            try:
                with open(path) as f:
                    return f.read().splitlines()
            except OSError:
                return []

        yield waitFor(lambda: len(logged()) == 2)
        lines = logged()
        self.assertTrue(lines[0].endswith(" proto=HTTP/2"), lines)
        self.assertIn(" GET /two 200 backend=b ", lines[0])
        self.assertTrue(lines[1].endswith(" proto=HTTP/1.1"), lines)
        s = samples(exposition(balancerRegistry(lb))[0].decode())
        front = (("listener", "front"),)
        self.assertEqual(s[("lbtwist_listener_protocol_responses_total",
                            (("listener", "front"), ("protocol", "HTTP/2")))], 1)
        self.assertEqual(s[("lbtwist_listener_protocol_responses_total",
                            (("listener", "front"), ("protocol", "HTTP/1.1")))], 1)
        self.assertEqual(s[("lbtwist_listener_http2_connections_total", front)], 1)
        self.assertEqual(s[("lbtwist_listener_http2_streams_total", front)], 1)
        self.assertEqual(s[("lbtwist_listener_http2_refused_streams_total", front)], 0)


    @inlineCallbacks
    def test_adminView(self) -> Any:
        """
        C{GET /api/listeners} counts a listener's responses by protocol and
        its HTTP/2 connections and streams.
        """
        from .test_admin import AdminHarness, statusSite

        def configure(data: dict[str, Any]) -> None:
            data["listeners"][0]["http2"] = True

        h = AdminHarness(self, mode="http", factory=statusSite, configure=configure)
        out, err, code = yield self.curl("--http2-prior-knowledge",
                                         f"http://127.0.0.1:{h.port}/status")
        self.assertEqual(code, 0, err)
        status, body = yield h.call("GET", "/api/listeners")
        self.assertEqual(status, 200)
        self.assertEqual(body[0]["protocols"], {"HTTP/1.1": 0, "HTTP/2": 1})
        self.assertEqual(body[0]["http2"],
                         {"connections": 1, "streams": 1, "refused": 0, "abusive": 0})


class NghttpTests(H2TestCase):
    """
    nghttp2's own clients.
    """

    @inlineCallbacks
    def test_severalStreams(self) -> Any:
        """
        C{nghttp} fetches several URLs as streams of one connection.
        """
        if NGHTTP is None:
            self.skipTest("nghttp is not installed")
        backend = self.backend()
        factory, port = self.balancer(backend)
        urls = [f"http://127.0.0.1:{port}/s{i}" for i in range(5)]
        out, err, code = yield getProcessOutputAndValue(
            NGHTTP, ("-n", "-s", *urls), env={}, reactor=reactor)
        self.assertEqual(code, 0, (out, err))
        self.assertEqual(sorted(r.url for r in backend.requests),
                         [f"/s{i}".encode() for i in range(5)])
        self.assertEqual((factory.h2Connections, factory.h2Streams), (1, 5))

    @inlineCallbacks
    def test_h2load(self) -> Any:
        """
        C{h2load -n 2000 -c 4 -m 10}: every request succeeds.
        """
        if H2LOAD is None:
            self.skipTest("h2load is not installed")
        backend = self.backend()
        factory, port = self.balancer(backend)
        out, err, code = yield getProcessOutputAndValue(
            H2LOAD, ("-n", "2000", "-c", "4", "-m", "10", f"http://127.0.0.1:{port}/load"),
            env={}, reactor=reactor)
        self.assertEqual(code, 0, (out, err))
        self.assertIn(b"2000 succeeded, 0 failed, 0 errored", out, out)
        self.assertEqual(factory.h2Streams, 2000)


def delayed(seconds: float) -> Any:
    """
    A responder that answers each request after C{seconds}, and counts on
    the backend the requests in flight (C{inflight}) and their most
    (C{peak}).
    """
    from .httphelpers import okResponse

    def respond(request: Any, backend: Any, proto: Any) -> None:
        backend.inflight = getattr(backend, "inflight", 0) + 1
        backend.peak = max(getattr(backend, "peak", 0), backend.inflight)

        def answer() -> None:
            backend.inflight -= 1
            if proto.transport.connected:
                proto.transport.write(okResponse(request, backend))

        reactor.callLater(seconds, answer)

    return respond


class AbuseTests(H2TestCase):
    """
    The h2 library as a client that abuses the connection, over a real
    socket.
    """

    @inlineCallbacks
    def test_rapidReset(self) -> Any:
        """
        A client that opens and resets streams as fast as it can (the
        rapid-reset attack) gets GOAWAY ENHANCE_YOUR_CALM and is closed,
        while curl fetching on its own connection at the same time sees no
        failure.
        """
        backend = self.backend()
        factory, port = self.balancer(backend)

        def flood() -> Any:
            client = H2Client(port)
            try:
                for i in range(1000):
                    sid = 1 + 2 * i
                    client.request(sid, "/flood")
                    client.conn.reset_stream(sid, ErrorCodes.CANCEL)
                    client.flush()
                    if client.closed or goaway(client.poll()) is not None:
                        break
                client.read(lambda events: goaway(events) is not None)
                return goaway(client.events), i
            finally:
                client.close()

        @inlineCallbacks
        def fetch() -> Any:
            # One curl per request: curl 7.88 cannot reuse an h2c
            # connection (curl issue 10634).
            answers = []
            for i in range(20):
                out, err, code = yield self.curl(
                    "--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{http_code}",
                    f"http://127.0.0.1:{port}/calm{i}")
                answers.append((out, code, err))
            return answers

        results = yield DeferredList([inThread(flood), fetch()], consumeErrors=True)
        (ok1, flooded), (ok2, answers) = results
        self.assertTrue(ok1 and ok2, results)
        terminated, sent = flooded
        self.assertIsNotNone(terminated)
        self.assertEqual(terminated.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        # Cut off at the 201st reset (max-resets is 200): the streams it
        # took are those and curl's 20, however many the flood sent, and the
        # few flood streams answered before their reset arrived (a reset of
        # a finished stream is no reset: on a loaded machine the backend can
        # win that race a time or two).
        self.assertLessEqual(factory.h2Streams, 201 + 20 + 5)
        self.assertGreater(sent, 200)
        self.assertEqual(factory.h2Calmed, 1)
        self.assertEqual(answers, [(b"200", 0, b"")] * 20)

    @inlineCallbacks
    def test_continuationFlood(self) -> Any:
        """
        A header block continued without end (a CONTINUATION flood) is cut
        off: GOAWAY and close, long before the client has sent what it
        meant to (10 MB).
        """
        backend = self.backend()
        factory, port = self.balancer(backend)

        def flood() -> Any:
            client = H2Client(port)
            try:
                client.read(lambda events: any(
                    isinstance(e, h2.events.RemoteSettingsChanged) for e in events))
                first = HeadersFrame(1, client.conn.encoder.encode(
                    [(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"),
                     (b":authority", b"a")]))
                sent = 0
                client.sock.sendall(first.serialize())
                for _ in range(640):
                    frame = ContinuationFrame(1)
                    frame.data = b"\x40\x01a\x01b" * 3276
                    try:
                        client.sock.sendall(frame.serialize())
                    except OSError:
                        break
                    sent += len(frame.data)
                    if goaway(client.poll()) is not None:
                        break
                client.read(lambda events: goaway(events) is not None)
                terminated = goaway(client.events)
                # Then the balancer closes (after its lingering close).
                client.read(lambda events: False, timeout=5)
                return terminated, sent, client.closed
            finally:
                client.close()

        terminated, sent, closed = yield inThread(flood)
        self.assertTrue(closed)
        self.assertIsNotNone(terminated)
        self.assertEqual(terminated.error_code, ErrorCodes.ENHANCE_YOUR_CALM)
        self.assertLess(sent, 10_000_000)
        self.assertEqual(backend.heads, [])
        self.assertEqual(factory.h2Calmed, 1)

    @inlineCallbacks
    def test_thousandStreams(self) -> Any:
        """
        1,000 streams on one connection, opened as fast as the advertised
        limit allows: all answered, and never more than 100 in flight at
        the backend.
        """
        backend = self.backend(delayed(0.02))
        factory, port = self.balancer(backend)

        def run() -> Any:
            client = H2Client(port, timeout=30)
            try:
                client.read(lambda events: any(
                    isinstance(e, h2.events.RemoteSettingsChanged) for e in events))
                limit = client.conn.remote_settings.max_concurrent_streams
                opened = 0
                deadline = time.monotonic() + 30
                while len(client.responses()) < 1000 and time.monotonic() < deadline:
                    while opened < 1000 and client.conn.open_outbound_streams < limit:
                        client.request(1 + 2 * opened, f"/s{opened}")
                        opened += 1
                    client.read(lambda events, done=len(client.responses()):
                                len(client.responses()) > done, timeout=1)
                return limit, client.responses()
            finally:
                client.close()

        limit, responses = yield inThread(run)
        self.assertEqual(limit, 100)
        self.assertEqual(len(responses), 1000)
        self.assertEqual({status for status, _ in responses.values()}, {200})
        self.assertLessEqual(backend.peak, 100)  # type: ignore[attr-defined]
        self.assertGreater(backend.peak, 10)  # type: ignore[attr-defined]
        self.assertEqual(factory.h2Streams, 1000)

    @inlineCallbacks
    def test_overTheLimit(self) -> Any:
        """
        150 streams sent before the client read the server's settings: 100
        are answered, 50 refused with REFUSED_STREAM, and the backend never
        has more than 100 in flight.
        """
        backend = self.backend(delayed(0.3))
        factory, port = self.balancer(backend)

        def run() -> Any:
            client = H2Client(port)
            try:
                for i in range(150):
                    client.conn.send_headers(1 + 2 * i, [
                        (b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/o"),
                        (b":authority", b"a")], end_stream=True)
                client.flush()
                client.read(lambda events: len(client.responses())
                            + len(resets(events, ErrorCodes.REFUSED_STREAM)) >= 150)
                return client.responses(), resets(client.events, ErrorCodes.REFUSED_STREAM)
            finally:
                client.close()

        responses, refused = yield inThread(run)
        self.assertEqual((len(responses), len(refused)), (100, 50))
        self.assertLessEqual(backend.peak, 100)  # type: ignore[attr-defined]
        self.assertEqual(factory.h2Refused, 50)


class SinkProtocol(Protocol):
    """
    A backend connection that reads nothing until told to, then counts
    the request body (after the head) and answers once it has it all.
    """

    transport: Any

    def __init__(self, factory: SinkBackend) -> None:
        self.factory = factory
        self.head = b""
        self.body = 0

    def connectionMade(self) -> None:
        self.factory.connections.append(self)
        self.transport.pauseProducing()

    def dataReceived(self, data: bytes) -> None:
        if not self.head:
            head, sep, data = data.partition(b"\r\n\r\n")
            assert sep, "the head comes in the first read"
            self.head = head
        self.body += len(data)
        if self.body == self.factory.size:
            self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")


class SinkBackend(Factory):
    """
    Backends of L{SinkProtocol}, for a body of C{size} bytes.
    """

    noisy = False

    def __init__(self, size: int) -> None:
        self.size = size
        self.connections: list[SinkProtocol] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        return SinkProtocol(self)


class BackpressureTests(H2TestCase):
    """
    Flow control is backpressure, over real sockets.
    """

    @inlineCallbacks
    def test_slowBackend(self) -> Any:
        """
        A POST body far larger than the window, to a backend that reads
        nothing: the client's window is opened only by what the balancer
        handed to the backend connection, so the client stalls; once the
        backend reads, the whole body arrives.
        """
        size = 16 * 1024 * 1024
        sink = SinkBackend(size)
        port = reactor.listenTCP(0, sink, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        backend = RecordingBackend("b")
        backend.port = port
        factory, lbPort = self.balancer(backend)
        client = H2Client(lbPort, timeout=20)
        self.addCleanup(client.close)
        progress = {"sent": 0}
        chunk = b"p" * 16384

        def send(limit: float) -> int:
            # Send what the windows allow until stalled for C{limit}.
            sent = progress["sent"]
            stalled = time.monotonic() + limit
            while sent < size and time.monotonic() < stalled:
                window = min(client.conn.local_flow_control_window(1), 16384, size - sent)
                if window > 0:
                    client.conn.send_data(1, chunk[:window], end_stream=sent + window == size)
                    client.flush()
                    sent += window
                    stalled = time.monotonic() + limit
                else:
                    client.read(lambda events: client.conn.local_flow_control_window(1) > 0,
                                timeout=0.05)
            progress["sent"] = sent
            return sent

        client.request(1, "/upload", "POST", end=False,
                       extra=[(b"content-length", b"%d" % size)])
        sent = yield inThread(send, 1.0)
        self.assertLess(sent, size // 2)
        [pool] = [u.pool for u in factory.upstreams.values()]
        taken = pool.get("b").bytesIn
        # What the client could send: what was handed to the backend
        # connection, and one window not yet acknowledged.
        self.assertLessEqual(sent, taken + 65535)
        [stream] = [s for c in factory.clients for s in c.streams.values()]
        self.assertTrue(stream._pausedByPeer)
        for proto in sink.connections:
            proto.transport.resumeProducing()
        sent = yield inThread(send, 5.0)
        self.assertEqual(sent, size)
        yield inThread(client.read, lambda events: bool(client.responses()), 10)
        self.assertEqual(client.responses(), {1: (200, b"done")})
        # (Health checks connect too, and send nothing.)
        self.assertEqual([p.body for p in sink.connections if p.head], [size])
