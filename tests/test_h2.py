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
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import TestCase

from .httphelpers import RecordingBackend
from .support import reactor, startBalancer
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
