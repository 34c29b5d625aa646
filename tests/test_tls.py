"""
TLS termination: a listener given as an C{ssl:} endpoint string serves
clients over TLS in both modes, with plain TCP to the backends.
"""

from __future__ import annotations

import datetime
import http.client
import os
import socket
import ssl
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from .httphelpers import RecordingBackend
from .support import Backends, inThread, reactor, startBalancer


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
                    chunks = []
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            return b"".join(chunks)
                        chunks.append(chunk)

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
                    chunks = []
                    while True:
                        chunk = s.recv(65536)
                        if not chunk:
                            return b"".join(chunks)
                        chunks.append(chunk)

        last = yield inThread(closing)
        self.assertTrue(last.startswith(b"HTTP/1.1 200"), last)
        self.assertTrue(last.endswith(b"b /last\n"), last)
        self.assertEqual([r.header(b"x-forwarded-proto") for r in backend.requests],
                         [b"https", b"https"])
        for conn in backend.connections:
            if conn.transport.connected:
                conn.transport.abortConnection()
