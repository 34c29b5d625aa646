"""
TLS to backends, verified by default: a backend whose certificate does not
chain to the C{ca} given (or the system's), or does not name the host, is a
failed connection, as a refused one is (the client gets a 503, the backend
a failure);
C{verify-host} names the host to verify, C{verify: false} opts out, a client
certificate reaches a backend that requires one; health checks speak the
same TLS.  Real certificates (made by C{openssl}), real TLS backends and a
real client on 127.0.0.1.
"""

from __future__ import annotations

import http.client
import os
from typing import Any

from cryptography import x509
from OpenSSL import SSL
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone, TimeoutError
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import Certificate, PrivateCertificate
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.backendtls import (
    BackendTLSError,
    _Verification,
    backendAddress,
    handshakeMessage,
    untrustedMessage,
)
from lbtwist.checks import checkTLS
from lbtwist.config import (
    BackendConfig,
    BackendTLS,
    ConfigError,
    HealthCheck,
    PoolConfig,
    parseConfig,
)
from lbtwist.dial import BackendProtocol, Dialler
from lbtwist.health import HealthMonitor, ProbeFailed, TCPProbe
from lbtwist.http import HTTPProbe
from lbtwist.pool import Backend, BackendPool, HealthChanged, PoolEvent

from .httphelpers import RecordingBackend, waitFor
from .support import inThread, reactor, startBalancer
from .tlscerts import CertificateAuthority, expired, selfSigned


def get(port: int, path: str = "/") -> tuple[int, bytes]:
    """
    One request through the balancer; the status and body.
    """
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path, headers={"Host": "front.example"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class TLSBackend(RecordingBackend):
    """
    A recording HTTP backend that speaks TLS with a certificate, requiring
    a client certificate from C{clientsFrom} if given, and records the
    server names clients ask for.
    """

    def __init__(self, name: str, pair: tuple[str, str], clientsFrom: str | None = None) -> None:
        super().__init__(name)
        with open(pair[0], "rb") as f, open(pair[1], "rb") as k:
            own = PrivateCertificate.loadPEM(f.read() + k.read())
        if clientsFrom is not None:
            with open(clientsFrom, "rb") as f:
                options = own.options(Certificate.loadPEM(f.read()))
        else:
            options = own.options()
        self.serverNames: list[bytes | None] = []
        options.getContext().set_tlsext_servername_callback(
            lambda connection: self.serverNames.append(connection.get_servername()))
        self.port = reactor.listenSSL(0, self, options, interface="127.0.0.1")

    @property
    def hostPort(self) -> int:
        """
        The port it listens on.
        """
        return int(self.port.getHost().port)


class BackendTLSTests(TestCase):
    """
    HTTP mode through a balancer to TLS backends.
    """

    timeout = 60

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.ca = CertificateAuthority(directory)
        # Self-signed, for the host name and the address it is reached at.
        self.own = selfSigned(directory, "own", ["app.internal", "127.0.0.1"])
        # Issued by the CA for a name only.
        self.named = self.ca.issue("named", ["app.internal"])
        self.client = self.ca.issue("client", ["lbtwist.client"], client=True)

    def backend(self, pair: tuple[str, str], clientsFrom: str | None = None) -> TLSBackend:
        """
        Start a TLS backend serving C{pair}.
        """
        backend = TLSBackend("b", pair, clientsFrom)
        self.addCleanup(backend.port.stopListening)
        # Each TLS connection's close is over before the test ends.
        self.addCleanup(waitFor, lambda: backend.open == 0)
        return backend

    def balancer(self, backend: TLSBackend, tls: dict[str, Any], **pool: Any) -> tuple[Any, int]:
        """
        Start an HTTP-mode balancer in front of C{backend} with its C{tls}
        block; no retries, so one request is one attempt.
        """
        return startBalancer(self, {
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1", "mode": "http"}],
            "pools": {"web": {"retries": 0, "health": {"interval": 60}, "backends": [{
                "name": "b", "endpoint": f"tcp:host=127.0.0.1:port={backend.hostPort}",
                "tls": tls}], **pool}},
        })

    @inlineCallbacks
    def assertRefused(self, backend: TLSBackend, tls: dict[str, Any], expected: int = 503) -> Any:
        """
        Through a balancer with C{tls}, a request fails with C{expected}
        (503: the backend could not be connected), the backend is counted
        a failure and sees no request.
        """
        lb, port = self.balancer(backend, tls)
        status, _ = yield inThread(get, port)
        self.assertEqual(status, expected, tls)
        self.assertGreaterEqual(lb.pools["web"].get("b").failureCount, 1)
        self.assertEqual(backend.requests, [])

    @inlineCallbacks
    def assertServed(self, backend: TLSBackend, tls: dict[str, Any]) -> Any:
        """
        Through a balancer with C{tls}, a request is answered by the backend.
        """
        lb, port = self.balancer(backend, tls)
        status, body = yield inThread(get, port, "/tls")
        self.assertEqual((status, body), (200, b"b /tls\n"), tls)
        return lb

    @inlineCallbacks
    def test_selfSigned(self) -> Any:
        """
        A self-signed backend is refused against the system's trust store
        (C{tls: {}}), and served once its certificate is the C{ca}.
        """
        backend = self.backend(self.own)
        yield self.assertRefused(backend, {})
        yield self.assertRefused(backend, {"ca": self.ca.cert})
        yield self.assertServed(backend, {"ca": self.own[0]})
        # An address is sent no SNI.
        self.assertEqual(backend.serverNames[-1:], [None])

    @inlineCallbacks
    def test_otherHost(self) -> Any:
        """
        A certificate from the right CA but for another name than the
        backend's host is refused; C{verify-host} naming it fixes that, and
        is the name sent over SNI.
        """
        backend = self.backend(self.named)
        yield self.assertRefused(backend, {"ca": self.ca.cert})
        yield self.assertRefused(backend, {"ca": self.ca.cert, "verify-host": "other.internal"})
        yield self.assertServed(backend, {"ca": self.ca.cert, "verify-host": "app.internal"})
        self.assertEqual(backend.serverNames[-1], b"app.internal")
        # The client's Host goes to the backend as it came.
        self.assertEqual(backend.requests[-1].header(b"host"), b"front.example")

    @inlineCallbacks
    def test_verifyFalse(self) -> Any:
        """
        C{verify: false} connects to any certificate, with a warning at
        start naming the pool and backend.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        backend = self.backend(self.named)
        yield self.assertServed(backend, {"verify": False, "sni": "app.internal"})
        warned = [e for e in events if "is not verified" in e.get("log_format", "")]
        self.assertEqual([(e["pool"], e["backends"]) for e in warned], [("web", "b")])
        self.assertEqual(backend.serverNames[-1], b"app.internal")

    @inlineCallbacks
    def test_clientCertificate(self) -> Any:
        """
        A backend that requires a client certificate from the CA refuses
        the balancer without one, and serves it with C{client-cert} and
        C{client-key}.  (In TLS 1.3 the client's side of the handshake is
        over before the server refuses: the request was sent, so the answer
        is a 502.)
        """
        backend = self.backend(self.named, clientsFrom=self.ca.cert)
        verified = {"ca": self.ca.cert, "verify-host": "app.internal"}
        yield self.assertRefused(backend, verified, 502)
        yield self.assertServed(backend, {**verified, "client-cert": self.client[0],
                                          "client-key": self.client[1]})

    @inlineCallbacks
    def test_poolBlock(self) -> Any:
        """
        A pool's C{tls} block applies to its backends, a backend's keys
        over it.
        """
        backend = self.backend(self.named)
        lb, port = startBalancer(self, {
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1", "mode": "http"}],
            "pools": {"web": {"retries": 0, "tls": {"ca": self.ca.cert, "verify-host": "wrong"},
                              "backends": [{"name": "b", "endpoint": (
                                  f"tcp:host=127.0.0.1:port={backend.hostPort}"),
                                  "tls": {"verify-host": "app.internal"}}]}},
        })
        status, _ = yield inThread(get, port)
        self.assertEqual(status, 200)


    @inlineCallbacks
    def test_addedAtRunTime(self) -> Any:
        """
        A backend added at run time with no C{tls} of its own (as the admin
        API, the state file and the registries add one) speaks TLS as its
        pool's block says, verified against the pool's CA: not plain TCP.
        """
        backend = self.backend(self.named)
        lb, port = startBalancer(self, {
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1", "mode": "http"}],
            "pools": {"web": {"retries": 0, "health": {"interval": 60},
                              "tls": {"ca": self.ca.cert, "verify-host": "app.internal"},
                              "backends": []}},
        })
        pool = lb.pools["web"]
        added = pool.add(BackendConfig(
            "b", f"tcp:host=127.0.0.1:port={backend.hostPort}", health=pool.config.health))
        self.assertEqual(added.config.tls, pool.config.tls)
        status, body = yield inThread(get, port, "/tls")
        self.assertEqual((status, body), (200, b"b /tls\n"))

    @inlineCallbacks
    def test_tcpMode(self) -> Any:
        """
        TCP mode relays to a verified TLS backend too.
        """
        backend = self.backend(self.named)
        _, port = startBalancer(self, {
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1"}],
            "pools": {"web": {"backends": [{
                "name": "b", "endpoint": f"tcp:host=127.0.0.1:port={backend.hostPort}",
                "tls": {"ca": self.ca.cert, "verify-host": "app.internal"}}]}},
        })
        status, body = yield inThread(get, port, "/tcp")
        self.assertEqual((status, body), (200, b"b /tcp\n"))


class SilentProtocol(Protocol):
    """
    Accepts a connection and never answers (no TLS handshake).
    """

    def connectionMade(self) -> None:
        self.factory.open.append(self)  # type: ignore[attr-defined]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.factory.open.remove(self)  # type: ignore[attr-defined]


class PlainRefusal(Protocol):
    """
    A plain-text HTTP server's answer to bytes it cannot parse (a TLS
    ClientHello): a 400, then the connection closed.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(  # type: ignore[union-attr]
            b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.transport.loseConnection()  # type: ignore[union-attr]


class DialTests(TestCase):
    """
    The connect timeout covers the TLS handshake.
    """

    timeout = 30

    @inlineCallbacks
    def test_handshakeTimesOut(self) -> Any:
        """
        A backend that accepts but never shakes hands fails the dial with a
        timeout after the connect timeout, and its connection is closed.
        """
        silent = Factory.forProtocol(SilentProtocol)
        silent.open = []  # type: ignore[attr-defined]
        port = reactor.listenTCP(0, silent, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        outcome: Deferred[Any] = Deferred()
        Dialler(reactor).dial(
            f"tcp:host=127.0.0.1:port={port.getHost().port}", BackendProtocol, 0.3,
            outcome.callback, outcome.errback, BackendTLS(verifyHost="app.internal"))
        started = reactor.seconds()
        yield self.assertFailure(outcome, TimeoutError)
        self.assertGreaterEqual(reactor.seconds() - started, 0.25)
        yield waitFor(lambda: not silent.open)  # type: ignore[attr-defined]


class ProbeTests(TestCase):
    """
    Health checks connect with the backend's TLS settings: they pass only
    when the handshake verifies the backend.
    """

    timeout = 30

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.ca = CertificateAuthority(directory)
        self.named = self.ca.issue("named", ["app.internal"])
        self.server = TLSBackend("b", self.named)
        self.addCleanup(self.server.port.stopListening)
        self.addCleanup(waitFor, lambda: self.server.open == 0)
        self.dialler = Dialler(reactor)

    def backend(self, tls: BackendTLS, check: HealthCheck = HealthCheck()) -> Backend:
        """
        A backend for the TLS server, with C{tls}.
        """
        return Backend(BackendConfig(
            "b", f"tcp:host=127.0.0.1:port={self.server.hostPort}", health=check, tls=tls))

    @inlineCallbacks
    def test_tcpCheck(self) -> Any:
        """
        A TCP check fails on a certificate for another host, or one not
        from the CA, each with one line saying what failed and what to do,
        and passes when it is verified.
        """
        probe = TCPProbe(self.dialler)
        where = f"127.0.0.1:{self.server.hostPort}"
        error = yield self.assertFailure(probe(self.backend(BackendTLS(ca=self.ca.cert))),
                                         BackendTLSError)
        self.assertEqual(str(error), f"certificate of {where} does not name 127.0.0.1 "
                                     "(it names app.internal): set tls.verify-host")
        error = yield self.assertFailure(
            probe(self.backend(BackendTLS(verifyHost="app.internal"))), BackendTLSError)
        self.assertEqual(str(error), f"certificate of {where} is not trusted by the system CAs "
                                     "(unable to get local issuer certificate): "
                                     "set tls.ca to the CA that issued it")
        yield probe(self.backend(BackendTLS(ca=self.ca.cert, verifyHost="app.internal")))

    @inlineCallbacks
    def test_reasons(self) -> Any:
        """
        A self-signed backend checked against the system CAs is refused for
        its untrusted certificate (not for its name, which OpenSSL would
        look at later); a backend that answers in plain text is said not to
        speak TLS; the health check says so in the backend's down reason.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        own = TLSBackend("own", selfSigned(directory, "own", ["app.internal"]))
        self.addCleanup(own.port.stopListening)
        self.addCleanup(waitFor, lambda: own.open == 0)
        plainPort = reactor.listenTCP(0, Factory.forProtocol(PlainRefusal),
                                      interface="127.0.0.1")
        self.addCleanup(plainPort.stopListening)
        probe = TCPProbe(self.dialler)
        ownAt = f"127.0.0.1:{own.hostPort}"
        pool = BackendPool(PoolConfig("p", (BackendConfig(
            "own", f"tcp:host=127.0.0.1:port={own.hostPort}", health=HealthCheck(fall=1),
            tls=BackendTLS()),)))
        backend = pool.get("own")
        assert backend is not None
        error = yield self.assertFailure(probe(backend), BackendTLSError)
        self.assertEqual(str(error), f"certificate of {ownAt} is not trusted by the system CAs "
                                     "(self-signed certificate): set tls.ca to that certificate")
        plainAt = f"127.0.0.1:{plainPort.getHost().port}"
        error = yield self.assertFailure(probe(Backend(BackendConfig(
            "plain", f"tcp:host=127.0.0.1:port={plainPort.getHost().port}",
            tls=BackendTLS(verify=False)))), BackendTLSError)
        self.assertRegex(str(error), f"^TLS handshake with {plainAt} failed: .*[(]the backend "
                                     "does not speak TLS on that port[)]$")
        # The health monitor's reason, as the pool logs it.
        events: list[PoolEvent] = []
        pool.observers.append(events.append)
        monitor = HealthMonitor(pool, {"tcp": probe}, Clock())
        monitor.startService()
        self.addCleanup(monitor.stopService)
        yield waitFor(lambda: any(isinstance(e, HealthChanged) for e in events))
        self.assertEqual([e.reason for e in events if isinstance(e, HealthChanged)], [
            f"tcp check failed: certificate of {ownAt} is not trusted by the system CAs "
            "(self-signed certificate): set tls.ca to that certificate, 1 failure in a row"])

    @inlineCallbacks
    def test_httpCheck(self) -> Any:
        """
        An HTTP check is sent over verified TLS with C{verify-host} as its
        Host; it fails on a certificate that does not verify.
        """
        probe = HTTPProbe(self.dialler)
        check = HealthCheck(kind="http", path="/health")
        error = yield self.assertFailure(probe(self.backend(BackendTLS(ca=self.ca.cert), check)),
                                         BackendTLSError)
        self.assertIn("does not name 127.0.0.1 (it names app.internal)", str(error))
        self.assertEqual(self.server.requests, [])
        status = yield probe(self.backend(
            BackendTLS(ca=self.ca.cert, verifyHost="app.internal"), check))
        self.assertEqual(status, 200)
        self.assertEqual(self.server.requests[-1].header(b"host"), b"app.internal")

    @inlineCallbacks
    def test_missingFile(self) -> Any:
        """
        A CA file gone since the start fails the attempt (on a later turn
        of the reactor), naming the file.
        """
        missing = os.path.join(self.mktemp(), "ca.pem")
        error = yield self.assertFailure(
            TCPProbe(self.dialler)(self.backend(BackendTLS(ca=missing))), ProbeFailed, ValueError)
        self.assertIn(repr(missing), str(error))


def certificate(pair: tuple[str, ...]) -> x509.Certificate:
    """
    The certificate in the first file of C{pair}.
    """
    with open(pair[0], "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


class MessageTests(SynchronousTestCase):
    """
    Each way a backend's certificate or handshake can fail reads as one
    line saying what failed and what to do.
    """

    def setUp(self) -> None:
        directory = self.mktemp()
        os.makedirs(directory)
        self.own = certificate(selfSigned(directory, "own", ["app.internal", "127.0.0.1"]))
        self.named = certificate(CertificateAuthority(directory).issue("named", ["app.internal"]))
        self.old = expired(directory, "old", "old.internal")
        self.expired = certificate(self.old)

    def test_untrusted(self) -> None:
        """
        OpenSSL's verify error is said in its own words, with the trust it
        was checked against, the certificate of the chain at fault when it
        is not the backend's own, and the advice for that error.
        """
        where = "127.0.0.1:8443"
        cases = [
            ("system", 18, 0, self.own,
             f"certificate of {where} is not trusted by the system CAs (self-signed "
             "certificate): set tls.ca to that certificate"),
            ("pki/ca.pem", 20, 0, self.named,
             f"certificate of {where} is not trusted by the CA in 'pki/ca.pem' (unable to get "
             "local issuer certificate): set tls.ca to the CA that issued it"),
            ("system", 19, 1, self.own,
             f"certificate of {where} is not trusted by the system CAs (self-signed certificate "
             "in certificate chain, at CN=app.internal in its chain): set tls.ca to the root "
             "CA of its chain"),
            ("system", 10, 0, self.expired,
             f"certificate of {where} is out of date (certificate has expired: not after "
             f"{self.old[2]:%Y-%m-%d %H:%M} UTC): renew it on the backend"),
            ("ca.pem", 23, 0, self.own,
             f"certificate of {where} failed verification against the CA in 'ca.pem' "
             "(certificate revoked)"),
        ]
        for ca, code, depth, cert, expected in cases:
            self.assertEqual(untrustedMessage(where, ca, code, depth, cert), expected)

    def test_verification(self) -> None:
        """
        OpenSSL's refusal comes first (a self-signed certificate that does
        not name the host either is untrusted); then the backend's own
        certificate must name the host or address verified, by its
        subjectAltName; an issuer above it is not checked for a name.
        """
        check = _Verification("127.0.0.1:8443", "127.0.0.1", "system")
        self.assertEqual(check.problem(self.named, 18, 0, False),
                         untrustedMessage("127.0.0.1:8443", "system", 18, 0, self.named))
        self.assertIsNone(check.problem(self.own, 0, 0, True))
        self.assertIsNone(check.problem(self.named, 0, 1, True))
        self.assertEqual(check.problem(self.named, 0, 0, True),
                         "certificate of 127.0.0.1:8443 does not name 127.0.0.1 (it names "
                         "app.internal): set tls.verify-host")
        byName = _Verification("10.0.0.5:443", "api.internal", "ca.pem")
        self.assertEqual(byName.problem(self.own, 0, 0, True),
                         "certificate of 10.0.0.5:443 does not name api.internal (it names "
                         "app.internal, 127.0.0.1): set tls.verify-host")
        self.assertIsNone(_Verification("x:1", "app.internal", "ca.pem").problem(
            self.named, 0, 0, True))

    def test_handshake(self) -> None:
        """
        Another failed handshake gives OpenSSL's reason, with what it
        usually means when that is known; a connection closed mid-way says
        so.
        """
        def message(*reasons: str) -> str:
            error = SSL.Error([("SSL routines", "", reason) for reason in reasons])
            return handshakeMessage("10.0.0.5:443", Failure(error))

        self.assertEqual(message("wrong version number"),
                         "TLS handshake with 10.0.0.5:443 failed: wrong version number (the "
                         "backend does not speak TLS on that port)")
        self.assertEqual(message("tlsv13 alert certificate required"),
                         "TLS handshake with 10.0.0.5:443 failed: tlsv13 alert certificate "
                         "required (the backend wants a client certificate: set "
                         "tls.client-cert and tls.client-key)")
        self.assertEqual(message("bad ecpoint", "other"),
                         "TLS handshake with 10.0.0.5:443 failed: bad ecpoint; other")
        self.assertEqual(handshakeMessage("10.0.0.5:443", Failure(ConnectionDone())),
                         "10.0.0.5:443 closed the connection during the TLS handshake")

    def test_address(self) -> None:
        """
        A backend is named by its host and port, a UNIX one by its path.
        """
        self.assertEqual(backendAddress("tcp:host=10.0.0.5:port=443"), "10.0.0.5:443")
        self.assertEqual(backendAddress(r"tcp:host=\:\:1:port=443"), "[::1]:443")
        self.assertEqual(backendAddress("unix:/run/app.sock"), "/run/app.sock")


class CheckTests(TestCase):
    """
    The files of TLS to backends are read before anything starts; a bad
    one is refused naming the key and the file.
    """

    def test_errors(self) -> None:
        """
        A missing CA file, a CA file that holds a key, a client key that is
        not the client certificate's: each named by the key that gave it,
        in the pool's C{tls} block or the backend's own.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        ca = CertificateAuthority(directory)
        client = ca.issue("client", ["lbtwist.client"], client=True)
        missing = os.path.join(directory, "missing.pem")

        def check(tls: dict[str, Any], poolTLS: dict[str, Any] | None = None) -> str:
            with self.assertRaises(ConfigError) as e:
                checkTLS(parseConfig({
                    "listeners": [{"listen": "tcp:0"}],
                    "pools": {"web": {"tls": poolTLS, "backends": [
                        {"name": "a", "endpoint": "tcp:host=127.0.0.1:port=443"},
                        {"name": "b", "endpoint": "tcp:host=127.0.0.1:port=444", "tls": tls}]}},
                }))
            return str(e.exception)

        where = "pools.web.backends[1].tls"
        self.assertEqual(check({"ca": missing}),
                         f"{where}.ca: cannot read {missing!r}: No such file or directory")
        self.assertEqual(check({"ca": ca.key}),
                         f"{where}.ca: {ca.key!r} is not a PEM certificate "
                         "(it holds a private key: is it the key file?)")
        self.assertEqual(check({"ca": ca.cert, "client-cert": client[0], "client-key": ca.key}),
                         f"{where}: the key in {ca.key!r} does not match the certificate in "
                         f"{client[0]!r}")
        self.assertEqual(check({"client-cert": client[0], "client-key": missing}),
                         f"{where}.client-key: cannot read {missing!r}: No such file or directory")
        # Given in the pool's block, a file is named there.
        self.assertEqual(check({}, {"ca": missing}),
                         f"pools.web.tls.ca: cannot read {missing!r}: No such file or directory")
        self.assertEqual(check({"ca": missing}, {"ca": ca.cert}),
                         f"{where}.ca: cannot read {missing!r}: No such file or directory")
        self.assertEqual(check({"verify-host": "app.internal"},
                               {"client-cert": missing, "client-key": client[1]}),
                         f"pools.web.tls.client-cert: cannot read {missing!r}: "
                         "No such file or directory")
        checkTLS(parseConfig({
            "listeners": [{"listen": "tcp:0"}],
            "pools": {"web": {"tls": {"ca": ca.cert, "client-cert": client[0],
                                      "client-key": client[1]},
                              "backends": ["127.0.0.1:443"]}},
        }))
