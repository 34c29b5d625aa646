"""
TLS termination: a listener given as an C{ssl:} endpoint string serves
clients over TLS in both modes, with plain TCP to the backends, whatever
the clients offer over ALPN; failed handshakes are logged, rate-limited.
"""

from __future__ import annotations

import datetime
import http.client
import os
import shutil
import socket
import ssl
import tempfile
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import Logger, globalLogPublisher
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.tlslisten import HandshakeFailures, chooseProtocol, isEndOfStream, opensslReason

from .httphelpers import RecordingBackend
from .support import Backends, inThread, reactor, startBalancer
from .test_dashboard import CHROMIUM


def selfSigned(directory: str) -> tuple[str, str]:
    """
    Write a self-signed certificate for 127.0.0.1 and its key; return their paths.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    import ipaddress

    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certPath = os.path.join(directory, "cert.pem")
    keyPath = os.path.join(directory, "key.pem")
    with open(certPath, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(keyPath, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.TraditionalOpenSSL,
                                  serialization.NoEncryption()))
    return certPath, keyPath


def readUntilClosed(s: ssl.SSLSocket, end: bytes | None = None) -> bytes:
    """
    Read from C{s} until the peer closes, or what was read ends with C{end}.
    """
    received = b""
    while end is None or not received.endswith(end):
        chunk = s.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


class TLSTests(TestCase):
    """
    Clients speak TLS to the balancer; backends get plain bytes.
    """

    timeout = 30

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.cert, self.key = selfSigned(directory)
        self.context = ssl.create_default_context(cafile=self.cert)

    def listen(self) -> str:
        return f"ssl:0:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}"

    @inlineCallbacks
    def test_tcpMode(self) -> Any:
        """
        A TLS client reaches a plain TCP backend through a TCP-mode listener,
        the certificate verifying against its own CA file.
        """
        backends = Backends(self)
        backends.start("a")
        lb, port = startBalancer(self, {
            "listeners": [{"name": "main", "listen": self.listen()}],
            "pools": {"web": {"backends": [{"name": "a", "endpoint": backends.endpoint("a")}]}},
        })

        def ask() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with self.context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    received = s.recv(10)
                    for i in range(20):
                        # Each echo comes back through TLS, after the
                        # handshake's bytes have long been flushed.
                        s.sendall(b"echo %d\n" % i)
                        received += s.recv(100)
                    return received

        answer = yield inThread(ask)
        self.assertEqual(answer, b"a\n" + b"".join(b"echo %d\n" % i for i in range(20)))

    @inlineCallbacks
    def test_backendCloses(self) -> Any:
        """
        When the backend sends its answer and closes, the TLS client gets the
        whole answer and then a clean end of the stream.
        """
        from twisted.internet.protocol import Factory, Protocol

        class SayAndClose(Protocol):
            def connectionMade(self) -> None:
                self.transport.write(b"x" * 100_000 + b"bye")  # type: ignore[union-attr]
                self.transport.loseConnection()  # type: ignore[union-attr]

        port0 = reactor.listenTCP(0, Factory.forProtocol(SayAndClose), interface="127.0.0.1")
        self.addCleanup(port0.stopListening)
        lb, port = startBalancer(self, {
            "listeners": [{"name": "main", "listen": self.listen()}],
            "pools": {"web": {"backends": [
                {"name": "c", "endpoint": f"tcp:host=127.0.0.1:port={port0.getHost().port}"}]}},
        })

        def readAll() -> bytes:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with self.context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    return readUntilClosed(s)

        answer = yield inThread(readAll)
        self.assertEqual(len(answer), 100_003)
        self.assertTrue(answer.endswith(b"bye"))

    @inlineCallbacks
    def test_httpMode(self) -> Any:
        """
        An HTTPS client is served through an HTTP-mode listener, and the
        backend is told the original scheme was https.
        """
        backend = RecordingBackend("b")
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(backend.port.stopListening)
        lb, port = startBalancer(self, {
            "listeners": [{"name": "main", "listen": self.listen(), "mode": "http"}],
            "pools": {"web": {"backends": [{"name": "b", "endpoint": backend.endpoint}]}},
        })

        def get() -> tuple[int, bytes]:
            conn = http.client.HTTPSConnection("127.0.0.1", port, context=self.context, timeout=5)
            try:
                conn.request("GET", "/secure")
                response = conn.getresponse()
                return response.status, response.read()
            finally:
                conn.close()

        status, body = yield inThread(get)
        self.assertEqual((status, body), (200, b"b /secure\n"))

        def closing() -> bytes:
            # The balancer must end the TLS stream itself after a response
            # to "Connection: close"; reading to the end must not hang.
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with self.context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    s.sendall(b"GET /last HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    return readUntilClosed(s)

        last = yield inThread(closing)
        self.assertTrue(last.startswith(b"HTTP/1.1 200"), last)
        self.assertTrue(last.endswith(b"b /last\n"), last)
        self.assertEqual([r.header(b"x-forwarded-proto") for r in backend.requests],
                         [b"https", b"https"])
        for conn in backend.connections:
            if conn.transport.connected:
                conn.transport.abortConnection()


def handshake(port: int, cafile: str, offer: list[str] | None, request: bytes) -> tuple[str | None, str, bytes]:
    """
    Connect over TLS offering C{offer} over ALPN (nothing if L{None}), send
    C{request}, read until the server closes or the response's body
    C{b" /alpn\\n"} has come (a TCP-mode relay leaves the backend to close,
    and the test backend keeps its connections); return the protocol
    selected, the TLS version and the bytes read.
    """
    context = ssl.create_default_context(cafile=cafile)
    if offer is not None:
        context.set_alpn_protocols(offer)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(request)
            answer = readUntilClosed(s, b" /alpn\n")
            return s.selected_alpn_protocol(), str(s.version()), answer


CLOSE = b"GET /alpn HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


class ALPNTests(TestCase):
    """
    Clients that offer protocols over ALPN (curl, browsers, HTTP/2 clients)
    complete their handshake in both modes; the listener selects what its
    C{tls.alpn} offers, or nothing.
    """

    timeout = 60

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.cert, self.key = selfSigned(directory)
        self.backend = RecordingBackend("b")
        self.backend.port = reactor.listenTCP(0, self.backend, interface="127.0.0.1")
        self.addCleanup(self.backend.port.stopListening)

    def balancer(self, mode: str, tls: dict[str, Any] | None = None, options: str = "") -> int:
        """
        Start a balancer with one TLS listener in C{mode} in front of the
        recording HTTP backend; return its port.
        """
        listener: dict[str, Any] = {
            "name": "secure", "mode": mode,
            "listen": f"ssl:0:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}{options}",
        }
        if tls is not None:
            listener["tls"] = tls
        lb, port = startBalancer(self, {
            "listeners": [listener],
            "pools": {"web": {"backends": [{"name": "b", "endpoint": self.backend.endpoint}]}},
        })
        return port

    @inlineCallbacks
    def assertSelected(self, port: int, offer: list[str] | None, selected: str | None) -> Any:
        """
        A client offering C{offer} gets C{selected} and a full HTTP answer.
        """
        chosen, version, answer = yield inThread(handshake, port, self.cert, offer, CLOSE)
        self.assertEqual(chosen, selected, offer)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200"), answer)
        self.assertTrue(answer.endswith(b"b /alpn\n"), answer)
        return version

    @inlineCallbacks
    def test_httpModeOffersHTTP11(self) -> Any:
        """
        An HTTP-mode listener selects http/1.1 for a client offering h2 and
        http/1.1; one offering only h2, or nothing, gets no protocol and is
        served HTTP/1.1 all the same.
        """
        port = self.balancer("http")
        yield self.assertSelected(port, ["h2", "http/1.1"], "http/1.1")
        yield self.assertSelected(port, ["h2"], None)
        yield self.assertSelected(port, None, None)

    @inlineCallbacks
    def test_tcpModeOffersNothing(self) -> Any:
        """
        A TCP-mode listener with no C{tls.alpn} selects nothing, and the
        handshake succeeds whatever the client offers (this client used to
        get a fatal "internal error" alert).
        """
        port = self.balancer("tcp")
        yield self.assertSelected(port, ["h2", "http/1.1"], None)
        yield self.assertSelected(port, ["h2"], None)

    @inlineCallbacks
    def test_tcpModeALPN(self) -> Any:
        """
        A TCP-mode listener with C{tls.alpn: [h2, http/1.1]} selects h2 for
        a client offering both, in the listener's order whatever the client's,
        http/1.1 for a client offering only that, nothing for a client with
        nothing in common.
        """
        port = self.balancer("tcp", {"alpn": ["h2", "http/1.1"]})
        yield self.assertSelected(port, ["h2", "http/1.1"], "h2")
        yield self.assertSelected(port, ["http/1.1", "h2"], "h2")
        yield self.assertSelected(port, ["http/1.1"], "http/1.1")
        yield self.assertSelected(port, ["spdy/3.1"], None)

    @inlineCallbacks
    def test_listenAgain(self) -> Any:
        """
        A listener whose service stops and starts again listens on the same
        endpoint, whose context is in use by then, and still answers a
        client with nothing in common.
        """
        lb, port = startBalancer(self, {
            "listeners": [{"name": "again", "listen": (
                f"ssl:0:interface=127.0.0.1:privateKey={self.key}:certKey={self.cert}")}],
            "pools": {"web": {"backends": [{"name": "b", "endpoint": self.backend.endpoint}]}},
        })
        yield self.assertSelected(port, ["h2"], None)
        service = lb.getServiceNamed("listener:again")
        yield service.stopService()
        service.privilegedStartService()
        service.startService()
        port = service._waitingForPort.result.getHost().port
        yield self.assertSelected(port, ["h2"], None)

    @inlineCallbacks
    def test_endpointOptions(self) -> Any:
        """
        The options of the C{ssl:} endpoint string still apply: with
        C{sslmethod=TLSv1_2_METHOD} the handshake is TLS 1.2, and ALPN works.
        """
        port = self.balancer("http", options=":sslmethod=TLSv1_2_METHOD")
        version = yield self.assertSelected(port, ["h2", "http/1.1"], "http/1.1")
        self.assertEqual(version, "TLSv1.2")
        version = yield self.assertSelected(port, ["h2"], None)
        self.assertEqual(version, "TLSv1.2")

    @inlineCallbacks
    def curl(self, port: int) -> Any:
        """
        Fetch a page with curl's default ALPN (h2, http/1.1); return the
        body and the HTTP version curl used.
        """
        out, err, code = yield getProcessOutputAndValue(
            "curl", ["-sSk", "--max-time", "10", "-w", "\n%{http_version}",
                     f"https://127.0.0.1:{port}/curl"],
            env=dict(os.environ), reactor=reactor)
        self.assertEqual(code, 0, err)
        body, _, version = out.rpartition(b"\n")
        return body, version

    @inlineCallbacks
    def test_curl(self) -> Any:
        """
        curl, which offers h2 and http/1.1, is served HTTP/1.1 by either mode.
        """
        if shutil.which("curl") is None:
            self.skipTest("curl is not installed")
        for mode in ("http", "tcp"):
            port = self.balancer(mode)
            answer = yield self.curl(port)
            self.assertEqual(answer, (b"b /curl\n", b"1.1"), mode)

    @inlineCallbacks
    def test_chromium(self) -> Any:
        """
        Headless Chromium loads a page through either mode.
        """
        if CHROMIUM is None:
            self.skipTest("chromium is not installed")
        for mode in ("http", "tcp"):
            port = self.balancer(mode)
            profile = tempfile.mkdtemp(prefix="lbtwist-chromium-")
            self.addCleanup(shutil.rmtree, profile, True)
            out, err, code = yield getProcessOutputAndValue("/usr/bin/timeout", [
                "30", CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
                "--ignore-certificate-errors", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={profile}", "--dump-dom", f"https://127.0.0.1:{port}/chromium",
            ], env=dict(os.environ), reactor=reactor)
            self.assertEqual(code, 0, err[-2000:])
            self.assertIn(b"b /chromium", out, (mode, out, err[-2000:]))

    @inlineCallbacks
    def test_failedHandshakesLogged(self) -> Any:
        """
        Failed handshakes are logged with the listener, the client and
        OpenSSL's reason, one line for several failures in a row; a client
        that closes without a handshake is no failure.
        """
        events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if "handshake" in event.get("log_format", ""):
                events.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        port = self.balancer("http")

        def plainHTTP() -> tuple[int, bytes]:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = s.recv(1000)
                return s.getsockname()[1], answer

        def closeAtOnce() -> None:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()

        yield inThread(closeAtOnce)
        clientPort, _ = yield inThread(plainHTTP)
        yield inThread(plainHTTP)
        yield self.assertSelected(port, ["h2"], None)
        self.assertEqual(len(events), 1, events)
        self.assertEqual(events[0]["listener"], "secure")
        self.assertEqual(events[0]["client"], f"127.0.0.1:{clientPort}")
        self.assertIn("http request", events[0]["reason"])
        self.assertEqual(events[0]["suppressed"], 0)


class HandshakeFailuresTests(SynchronousTestCase):
    """
    L{HandshakeFailures} logs at most one line per interval per listener.
    """

    def test_rateLimited(self) -> None:
        """
        The first failure is logged at once; the next ones within the
        interval are only counted; the first after it is logged with that
        count.
        """
        clock = Clock()
        events: list[dict[str, Any]] = []
        failures = HandshakeFailures("front", clock, interval=10.0)
        failures.log = Logger(observer=events.append)
        failures.handshakeFailed("10.0.0.1:1000", "no shared cipher")
        clock.advance(5)
        failures.handshakeFailed("10.0.0.2:1000", "http request")
        failures.handshakeFailed("10.0.0.3:1000", "http request")
        self.assertEqual(len(events), 1)
        self.assertEqual(
            {k: events[0][k] for k in ("listener", "client", "reason", "suppressed")},
            {"listener": "front", "client": "10.0.0.1:1000", "reason": "no shared cipher",
             "suppressed": 0},
        )
        clock.advance(5)
        failures.handshakeFailed("10.0.0.4:1000", "wrong version number")
        self.assertEqual(len(events), 2)
        self.assertEqual((events[1]["client"], events[1]["suppressed"]), ("10.0.0.4:1000", 2))
        clock.advance(9.9)
        failures.handshakeFailed("10.0.0.5:1000", "http request")
        self.assertEqual((len(events), failures.failed, failures.suppressed), (2, 5, 1))


class ALPNChoiceTests(SynchronousTestCase):
    """
    The ALPN answer and the reading of OpenSSL's errors.
    """

    def test_choice(self) -> None:
        """
        The server's preference among what the client offers wins; nothing
        in common is L{SSL.NO_OVERLAPPING_PROTOCOLS}, never C{b""}, which
        OpenSSL 3 turns into a fatal alert.
        """
        cases = [
            ([b"h2", b"http/1.1"], [b"http/1.1"], b"http/1.1"),
            ([b"http/1.1", b"h2"], [b"h2", b"http/1.1"], b"h2"),
            ([b"h2"], [b"http/1.1"], SSL.NO_OVERLAPPING_PROTOCOLS),
            ([b"h2"], [], SSL.NO_OVERLAPPING_PROTOCOLS),
        ]
        for offered, acceptable, answer in cases:
            self.assertIs(chooseProtocol(offered, acceptable), answer)

    def test_reasons(self) -> None:
        """
        OpenSSL's reasons are read from its error queue; an end of stream
        is told apart from a real failure.
        """
        error = SSL.Error([("SSL routines", "", "http request")])
        self.assertEqual(opensslReason(error), "http request")
        self.assertFalse(isEndOfStream(error))
        self.assertTrue(isEndOfStream(SSL.Error([("SSL routines", "", "unexpected eof while reading")])))
        self.assertTrue(isEndOfStream(SSL.SysCallError(-1, "Unexpected EOF")))
        self.assertTrue(isEndOfStream(SSL.Error([])))

    def test_twistedHooks(self) -> None:
        """
        The private parts of Twisted's TLS transport that the failure log
        relies on are still there.
        """
        for name in ("_tlsShutdownFinished", "_handshakeDone", "_aborted"):
            self.assertTrue(hasattr(TLSMemoryBIOProtocol, name), name)
