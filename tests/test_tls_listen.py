"""
TLS listeners with a C{tls: {certificates: [...]}} block: the certificate is
chosen by the name the client asks for (SNI), exact or wildcard, the first
being the default; certificates are read again on C{SIGHUP} without
dropping a connection; every unusable file is refused with its key and its
name.  Real certificates (made by C{openssl}), real clients (Python's
C{ssl}, C{openssl s_client}), a real balancer on 127.0.0.1.
"""

from __future__ import annotations

import datetime
import http.client
import os
import shutil
import signal
import socket
import ssl
import time
from typing import Any

import yaml
from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.checks import checkTLS
from lbtwist.config import ConfigError, parseConfig
from lbtwist.lifecycle import ReloadOnSignal
from lbtwist.reload import LiveConfig, configLoader
from lbtwist.tlslisten import CertificateSet, ListenerCertificates, ServedCertificate

from .httphelpers import RecordingBackend, waitFor
from .support import Backends, inThread, reactor, startBalancer
from .tlscerts import CertificateAuthority, expired, openssl, selfSigned


def handshake(port: int, serverName: str | None, offer: list[str] | None = None,
              maximum: ssl.TLSVersion | None = None) -> tuple[str, str | None, bytes]:
    """
    Shake hands with the listener on C{port} asking for C{serverName} (none:
    no SNI); return the common name of the certificate served, the ALPN
    protocol selected and the first line the backend sent.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The certificate chosen is what is checked here, not its validity.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if offer:
        context.set_alpn_protocols(offer)
    if maximum is not None:
        context.maximum_version = maximum
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=serverName) as s:
            served = s.getpeercert(binary_form=True)
            assert served is not None
            line = s.recv(100)
            return commonName(served), s.selected_alpn_protocol(), line


def commonName(der: bytes) -> str:
    """
    The common name of a DER certificate.
    """
    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)
    return str(names[0].value)


class Certificates:
    """
    The certificates of these tests, in a fresh directory: a CA's leaves
    for C{a.example} and C{b.example}, for C{*.wild.example}, for
    C{default.example}, and a self-signed one for C{self.example}.
    """

    def __init__(self, directory: str) -> None:
        os.makedirs(directory)
        self.directory = directory
        self.ca = CertificateAuthority(directory)
        self.default = self.ca.issue("default", ["default.example"])
        self.ab = self.ca.issue("ab", ["a.example", "b.example"])
        self.wild = self.ca.issue("wild", ["*.wild.example"])
        self.own = selfSigned(directory, "own", ["self.example"])

    @staticmethod
    def entry(pair: tuple[str, str]) -> dict[str, str]:
        """
        A C{certificates} entry for a (certificate, key) pair.
        """
        return {"cert": pair[0], "key": pair[1]}


class SNITests(TestCase):
    """
    The certificate served is the one for the name the client asks for.
    """

    timeout = 60

    def setUp(self) -> None:
        self.files = Certificates(self.mktemp())
        self.backends = Backends(self)
        self.backends.start("app")

    def balancer(self, listen: str, certificates: list[tuple[str, str]], **tls: Any) -> int:
        """
        Start a TCP-mode balancer whose listener serves C{certificates};
        return its port.
        """
        _, port = startBalancer(self, {
            "listeners": [{"name": "secure", "listen": listen, "tls": {
                "certificates": [Certificates.entry(c) for c in certificates], **tls}}],
            "pools": {"web": {"backends": [{"name": "app", "endpoint": self.backends.endpoint("app")}]}},
        })
        return port

    @inlineCallbacks
    def test_pythonClient(self) -> Any:
        """
        On a C{tcp:} listener lbtwist terminates TLS itself: a client asking
        for a.example or b.example gets their certificate, one asking for a
        name under wild.example the wildcard, one asking for a deeper name,
        an unknown name or none the first certificate; the bytes relayed
        are the backend's either way.
        """
        port = self.balancer("tcp:0:interface=127.0.0.1",
                             [self.files.default, self.files.ab, self.files.wild])
        for asked, served in [
            ("a.example", "a.example"), ("B.Example", "a.example"),
            ("x.wild.example", "*.wild.example"), ("y.x.wild.example", "default.example"),
            ("wild.example", "default.example"), ("unknown.example", "default.example"),
            (None, "default.example"),
        ]:
            name, _, line = yield inThread(handshake, port, asked)
            self.assertEqual((name, line), (served, b"app\n"), asked)

    @inlineCallbacks
    def test_opensslClient(self) -> Any:
        """
        C{openssl s_client -servername} sees the certificate of the name it
        asks for, verified against the CA.
        """
        if shutil.which("openssl") is None:
            self.skipTest("openssl is not installed")
        port = self.balancer("tcp:0:interface=127.0.0.1",
                             [self.files.default, self.files.ab, self.files.wild])
        for asked, served in [("b.example", "CN = a.example"),
                              ("api.wild.example", "CN = *.wild.example"),
                              ("elsewhere.example", "CN = default.example")]:
            out, err, code = yield getProcessOutputAndValue("openssl", [
                "s_client", "-connect", f"127.0.0.1:{port}", "-servername", asked,
                "-CAfile", self.files.ca.cert, "-verify_return_error",
            ], env=dict(os.environ), reactor=reactor, stdinBytes=b"")
            self.assertEqual(code, 0, err)
            self.assertIn(f"subject={served}".encode(), out)
            self.assertIn(b"Verify return code: 0 (ok)", out)

    @inlineCallbacks
    def test_sslEndpointCertificateIsTheDefault(self) -> Any:
        """
        On an C{ssl:} listener with C{certificates}, the endpoint's own
        certificate is the default and the block's are chosen by name.
        """
        own, ownKey = self.files.own
        port = self.balancer(f"ssl:0:interface=127.0.0.1:privateKey={ownKey}:certKey={own}",
                             [self.files.ab])
        for asked, served in [("a.example", "a.example"), ("self.example", "self.example"),
                              ("unknown.example", "self.example"), (None, "self.example")]:
            name, _, _ = yield inThread(handshake, port, asked)
            self.assertEqual(name, served, asked)

    @inlineCallbacks
    def test_alpnAfterSNI(self) -> Any:
        """
        A client moved to another certificate by SNI still gets the
        listener's ALPN choice.
        """
        port = self.balancer("tcp:0:interface=127.0.0.1", [self.files.default, self.files.wild],
                             alpn=["h2", "http/1.1"])
        for asked in ("default.example", "x.wild.example"):
            _, chosen, _ = yield inThread(handshake, port, asked, ["http/1.1", "h2"])
            self.assertEqual(chosen, "h2", asked)

    @inlineCallbacks
    def test_minVersion(self) -> Any:
        """
        By default TLS 1.2 is the oldest version accepted; with
        C{min-version: "1.3"} a TLS 1.2 client is refused and a TLS 1.3
        one served.
        """
        port = self.balancer("tcp:0:interface=127.0.0.1", [self.files.default])
        name, _, _ = yield inThread(handshake, port, None, None, ssl.TLSVersion.TLSv1_2)
        self.assertEqual(name, "default.example")
        port = self.balancer("tcp:0:interface=127.0.0.1", [self.files.default], **{"min-version": "1.3"})
        yield self.assertFailure(inThread(handshake, port, None, None, ssl.TLSVersion.TLSv1_2),
                                 ssl.SSLError)
        name, _, _ = yield inThread(handshake, port, None)
        self.assertEqual(name, "default.example")

    @inlineCallbacks
    def test_unfinishedHandshake(self) -> Any:
        """
        A client that starts a handshake and never finishes it (half a
        ClientHello) is cut off after C{handshake-timeout}, and so is the
        backend connection a TCP-mode listener made for it, rather than
        both being held for the idle timeout; a client that shakes hands
        in time is relayed as before.
        """
        port = self.balancer("tcp:0:interface=127.0.0.1", [self.files.default],
                             **{"handshake-timeout": "300ms"})
        backend = self.backends.factories["app"]

        def halfHello() -> float:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = context.wrap_bio(incoming, outgoing, server_hostname="default.example")
            with self.assertRaises(ssl.SSLWantReadError):
                tls.do_handshake()
            hello = outgoing.read()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(hello[:len(hello) // 2])
                started = time.monotonic()
                try:
                    while raw.recv(4096):
                        pass
                except ConnectionResetError:
                    pass
                return time.monotonic() - started

        waited = yield inThread(halfHello)
        self.assertLess(waited, 3.0)
        self.assertTrue((yield waitFor(lambda: backend.live == 0)))  # type: ignore[attr-defined]
        name, _, line = yield inThread(handshake, port, None)
        self.assertEqual((name, line), ("default.example", b"app\n"))


class ReloadTests(TestCase):
    """
    On C{SIGHUP} a listener reads its certificates again: new handshakes
    get the new ones, connections already open keep going; a certificate
    that cannot be served refuses the reload and the old ones stay.
    """

    timeout = 60

    def setUp(self) -> None:
        # Absolute: the file names are read relative to the configuration
        # file's directory on reload.
        self.files = Certificates(os.path.abspath(self.mktemp()))
        self.backends = Backends(self)
        self.backends.start("app")
        self.served = os.path.join(self.files.directory, "served.pem")
        self.servedKey = os.path.join(self.files.directory, "served.key")
        self.install(self.files.ab)
        self.configPath = os.path.join(self.files.directory, "lb.yaml")

    def start(self, sslEndpoint: bool = False) -> None:
        """
        Start a balancer from a configuration file whose listener serves
        the certificate at C{self.served}: from its C{tls} block, or as an
        C{ssl:} endpoint's own; reload it on C{SIGHUP}.
        """
        listener: dict[str, Any] = (
            {"listen": f"ssl:0:interface=127.0.0.1:privateKey={self.servedKey}:certKey={self.served}"}
            if sslEndpoint else
            {"listen": "tcp:0:interface=127.0.0.1", "tls": {
                "certificates": [{"cert": self.served, "key": self.servedKey}]}})
        data = {
            "listeners": [{"name": "secure", **listener}],
            "pools": {"web": {"backends": [{"name": "app", "endpoint": self.backends.endpoint("app")}]}},
        }
        with open(self.configPath, "w") as f:
            yaml.safe_dump(data, f)
        self.lb, self.port = startBalancer(self, data)
        self.live = LiveConfig(self.lb.pools, parseConfig(data), reactor,
                               loadConfig=configLoader(self.configPath),
                               reloaded=[self.lb.reloadCertificates])
        hangup = ReloadOnSignal(self.live, reactor)
        hangup.startService()
        self.addCleanup(hangup.stopService)

    def install(self, pair: tuple[str, str]) -> None:
        """
        Put C{pair} where the configuration says the certificate is.
        """
        shutil.copyfile(pair[0], self.served)
        shutil.copyfile(pair[1], self.servedKey)

    @inlineCallbacks
    def hangUp(self) -> Any:
        """
        Send this process C{SIGHUP} and wait for the reload to be over.
        """
        before = self.live.reloads
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        os.kill(os.getpid(), signal.SIGHUP)
        yield waitFor(lambda: self.live.reloads > before or any(
            "reload rejected" in e.get("log_format", "") for e in events))
        return events

    @inlineCallbacks
    def test_swapped(self) -> Any:
        """
        A connection open before the swap still relays both ways after it;
        a new handshake gets the new certificate.
        """
        self.start()

        def openConnection() -> ssl.SSLSocket:
            context = ssl.create_default_context(cafile=self.files.ca.cert)
            raw = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            s = context.wrap_socket(raw, server_hostname="a.example")
            self.assertEqual(s.recv(100), b"app\n")
            return s

        before = yield inThread(openConnection)
        self.addCleanup(before.close)
        self.install(self.files.wild)
        yield self.hangUp()
        name, _, _ = yield inThread(handshake, self.port, "a.example")
        self.assertEqual(name, "*.wild.example")

        def echo() -> bytes:
            before.sendall(b"still here\n")
            return before.recv(100)

        self.assertEqual((yield inThread(echo)), b"still here\n")
        self.assertEqual(commonName(before.getpeercert(binary_form=True)), "a.example")

    @inlineCallbacks
    def test_badCertificateKeepsTheOld(self) -> Any:
        """
        A new certificate whose key does not match is refused with the key
        path and both files named; the old certificate is still served.
        """
        self.start()
        shutil.copyfile(self.files.wild[0], self.served)
        events = yield self.hangUp()
        errors = [e for e in events if "reload rejected" in e.get("log_format", "")]
        self.assertEqual(len(errors), 1, events)
        self.assertEqual(
            errors[0]["error"],
            f"listeners[0].tls.certificates[0]: the key in {self.servedKey!r} does not match "
            f"the certificate in {self.served!r}")
        name, _, _ = yield inThread(handshake, self.port, "a.example")
        self.assertEqual(name, "a.example")


    @inlineCallbacks
    def test_sslEndpoint(self) -> Any:
        """
        An C{ssl:} listener's own certificate is read again too.
        """
        self.start(sslEndpoint=True)
        name, _, _ = yield inThread(handshake, self.port, "x.wild.example")
        self.assertEqual(name, "a.example")
        self.install(self.files.wild)
        yield self.hangUp()
        name, _, _ = yield inThread(handshake, self.port, "x.wild.example")
        self.assertEqual(name, "*.wild.example")


class HTTPModeTests(TestCase):
    """
    An HTTP-mode listener that terminates TLS on a C{tcp:} endpoint tells
    its backends the client came over HTTPS.
    """

    timeout = 30

    def serve(self, **pool: Any) -> tuple[Any, Any]:
        """
        A balancer whose HTTP-mode listener terminates TLS in front of a
        recording backend (C{pool}: more pool keys); the backend and a
        function that GETs a path over TLS, in a thread, giving its status,
        its headers and its body.
        """
        files = Certificates(self.mktemp())
        backend = RecordingBackend("b")
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(backend.port.stopListening)
        _, port = startBalancer(self, {
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1", "mode": "http",
                           "tls": {"certificates": [Certificates.entry(files.ab)]}}],
            "pools": {"web": {"backends": [{"name": "b", "endpoint": backend.endpoint}],
                              **pool}},
        })

        def fetch(path: str) -> tuple[int, Any, bytes]:
            context = ssl.create_default_context(cafile=files.ca.cert)
            # An address asks for no name: the default certificate, for a.example.
            context.check_hostname = False
            connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5,
                                                     context=context)
            try:
                connection.request("GET", path, headers={"Host": "b.example"})
                response = connection.getresponse()
                return response.status, response.headers, response.read()
            finally:
                connection.close()

        return backend, lambda path: inThread(lambda: fetch(path))

    @inlineCallbacks
    def test_forwardedProto(self) -> Any:
        """
        The backend sees C{X-Forwarded-Proto: https}.
        """
        backend, get = self.serve()
        status, _, body = yield get("/proto")
        self.assertEqual((status, body), (200, b"b /proto\n"))
        self.assertEqual(backend.requests[-1].header(b"x-forwarded-proto"), b"https")

    @inlineCallbacks
    def test_stickyCookieSecure(self) -> Any:
        """
        The sticky cookie the balancer inserts for a client that came over
        TLS is C{Secure}, so that the client never sends it in the clear.
        """
        _, get = self.serve(sticky={"cookie": "SRV"})
        status, headers, _ = yield get("/")
        self.assertEqual(status, 200)
        self.assertRegex(headers["Set-Cookie"], r"^SRV=[0-9a-f]{16}; Path=/; HttpOnly; Secure$")


class CertificateErrorTests(SynchronousTestCase):
    """
    Every certificate file a listener cannot serve is refused before
    anything starts, naming the key and the file; an expired certificate
    is served, with a warning naming it and its end date.
    """

    def setUp(self) -> None:
        self.files = Certificates(self.mktemp())

    def check(self, cert: str, key: str, listen: str = "tcp:8443", **tls: Any) -> None:
        """
        Check a configuration whose listener serves C{cert} and C{key}.
        """
        checkTLS(parseConfig({
            "listeners": [{"listen": listen, "tls": {
                "certificates": [{"cert": cert, "key": key}], **tls}}],
            "pools": {"web": {"backends": ["127.0.0.1:80"]}},
        }))

    def assertRefused(self, cert: str, key: str, message: str, **tls: Any) -> None:
        """
        Checking C{cert} and C{key} fails with exactly C{message}.
        """
        with self.assertRaises(ConfigError) as e:
            self.check(cert, key, **tls)
        self.assertEqual(str(e.exception), message)

    def test_errors(self) -> None:
        """
        A missing file, a key file given as the certificate (and the other
        way round), a key that is not the certificate's, an encrypted key,
        a chain file in the wrong order, ciphers OpenSSL does not know.
        """
        cert, key = self.files.ab
        missing = os.path.join(self.files.directory, "missing.pem")
        where = "listeners[0].tls.certificates[0]"
        encrypted = os.path.join(self.files.directory, "encrypted.key")
        openssl("pkey", "-in", key, "-out", encrypted, "-aes256", "-passout", "pass:secret")
        chain = os.path.join(self.files.directory, "chain.pem")
        wrongOrder = os.path.join(self.files.directory, "wrong-order.pem")
        with open(chain, "w") as f:
            f.write(open(cert).read() + open(self.files.ca.cert).read())
        with open(wrongOrder, "w") as f:
            f.write(open(self.files.ca.cert).read() + open(cert).read())
        self.check(chain, key)
        cases = [
            (missing, key, f"{where}: cannot read {missing!r}: No such file or directory"),
            (cert, missing, f"{where}: cannot read {missing!r}: No such file or directory"),
            (key, key, f"{where}: {key!r} is not a PEM certificate "
                       "(it holds a private key: is it the key file?)"),
            (cert, cert, f"{where}: {cert!r} is not a PEM private key "
                         "(it holds a certificate: is it the certificate file?)"),
            (cert, self.files.wild[1],
             f"{where}: the key in {self.files.wild[1]!r} does not match the certificate in "
             f"{cert!r}"),
            (cert, encrypted, f"{where}: {encrypted!r}: the private key is encrypted; "
                              "give it unencrypted"),
            (wrongOrder, key,
             f"{where}: {wrongOrder!r}: certificate 2 of the chain (CN=a.example) did not issue "
             "certificate 1 (CN=lbtwist test CA); put the server's certificate first, then "
             "each issuer in turn"),
        ]
        for certPath, keyPath, message in cases:
            self.assertRefused(certPath, keyPath, message)
        self.assertRefused(cert, key, "listeners[0].tls.ciphers: OpenSSL knows no cipher in "
                                      "'NO-SUCH-CIPHER'", ciphers="NO-SUCH-CIPHER")

    def test_handshakeTimeout(self) -> None:
        """
        C{handshake-timeout} is a duration (10 s when left out); anything
        else is refused naming the key.
        """
        cert, key = self.files.ab
        self.check(cert, key, **{"handshake-timeout": "2s"})
        config = parseConfig({
            "listeners": [{"listen": "tcp:8443", "tls": {"certificates": [
                {"cert": cert, "key": key}]}}],
            "pools": {"web": {"backends": ["127.0.0.1:80"]}}})
        assert config.listeners[0].tls is not None
        self.assertEqual(config.listeners[0].tls.handshakeTimeout, 10.0)
        for bad in (0, "soon", -1):
            with self.assertRaises(ConfigError) as e:
                self.check(cert, key, **{"handshake-timeout": bad})
            self.assertTrue(str(e.exception).startswith(
                "listeners[0].tls.handshake-timeout: expected a duration"), str(e.exception))

    def test_sslEndpointCertificate(self) -> None:
        """
        An C{ssl:} listener's own certificate is checked with the block's.
        """
        cert, key = self.files.ab
        with self.assertRaises(ConfigError) as e:
            self.check(cert, key, listen=f"ssl:8443:privateKey={key}:certKey={self.files.wild[0]}")
        self.assertTrue(str(e.exception).startswith("listeners[0].listen: "), str(e.exception))

    def test_expiredWarns(self) -> None:
        """
        An expired certificate passes the check, and the listener starts
        with a warning naming the file and the day it expired.
        """
        cert, key, notAfter = expired(self.files.directory, "old", "old.example")
        self.check(cert, key)
        listener = parseConfig({
            "listeners": [{"listen": "tcp:8443", "tls": {"certificates": [{"cert": cert, "key": key}]}}],
            "pools": {"web": {"backends": ["127.0.0.1:80"]}},
        }).listeners[0]
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        ListenerCertificates(listener, "listeners[0]", reactor.seconds).start()
        warnings = [e["problem"] for e in events if "problem" in e]
        self.assertEqual(warnings, [
            f"certificate {cert!r} (CN=old.example) expired on {notAfter:%Y-%m-%d %H:%M:%S} UTC"])


class CertificateSetTests(SynchronousTestCase):
    """
    The choice by name, without sockets.
    """

    def test_choice(self) -> None:
        """
        An exact name wins over a wildcard, the first certificate with a
        name over later ones; a wildcard covers one label only; names are
        compared without case or a final dot.
        """
        contexts = [SSL.Context(SSL.TLS_METHOD) for _ in range(4)]
        served = [
            ServedCertificate(("first.example",), contexts[0], "0", _date()),
            ServedCertificate(("*.wild.example", "exact.wild.example"), contexts[1], "1", _date()),
            ServedCertificate(("exact.wild.example", "first.example"), contexts[2], "2", _date()),
            ServedCertificate(("*.example",), contexts[3], "3", _date()),
        ]
        choice = CertificateSet(served)
        for name, index in [(b"first.example", 0), (b"FIRST.example.", 0), (b"x.wild.example", 1),
                            (b"exact.wild.example", 1), (b"other.example", 3),
                            (b"a.b.wild.example", 0), (b"example", 0), (None, 0), (b"", 0)]:
            self.assertIs(choice.contextFor(name), contexts[index], name)


def _date() -> datetime.datetime:
    return datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)

