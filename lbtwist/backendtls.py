"""
TLS to backends, verified: a backend with a C{tls} block is connected with
its chain checked against the C{ca} file or the platform's trust store, and
its name against C{verify-host} or the backend's host (as Twisted's
L{optionsForClientTLS} checks them, but in a verify callback of our own, so
that a refusal can say why), presenting a client certificate when one is
given.  C{verify: false} is the explicit opt-out.

A connection is reported made only once its handshake is over
(L{VerifiedTLSEndpoint}): a backend that fails verification, or chooses
none of the protocols offered by ALPN (C{h2}, for a pool with C{protocol:
h2}), is a failed connection, counted against it like a refused one, and
a TCP health check passes only when the handshake does.  Every failed handshake is a
L{BackendTLSError} whose message is one line saying what failed and what
to do: C{certificate of 127.0.0.1:8443 does not name 127.0.0.1 (it names
app.internal): set tls.verify-host}.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable

from cryptography import x509
from cryptography.x509.oid import NameOID
from OpenSSL import SSL, crypto
from service_identity import CertificateError as ServiceIdentityCertificateError
from service_identity import VerificationError
from service_identity.cryptography import (
    verify_certificate_hostname,
    verify_certificate_ip_address,
)
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.ssl import (
    Certificate,
    CertificateOptions,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from .certificates import loadCertificates, loadKeyedCertificate, subject
from .config import BackendTLS
from .endpoints import parseEndpoint


def verifiedName(tls: BackendTLS, endpoint: str) -> str:
    """
    The name a backend's certificate must carry: C{verify-host}, else the
    host of its endpoint.
    """
    return tls.verifyHost or parseEndpoint(endpoint, False).host or "localhost"


def _isAddress(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class BackendTLSError(Exception):
    """
    A TLS connection to a backend failed: the message says, on one line,
    what failed and what to do about it.
    """


# OpenSSL's X509_V_ERR_* codes the advice depends on.
_NOT_YET_VALID, _EXPIRED = 9, 10
_SELF_SIGNED, _SELF_SIGNED_IN_CHAIN = 18, 19
_UNKNOWN_ISSUER = (2, 20, 21, 27)

# What to do when the chain does not lead to a trusted certificate.
_TRUST_ADVICE = {
    _SELF_SIGNED: "set tls.ca to that certificate",
    _SELF_SIGNED_IN_CHAIN: "set tls.ca to the root CA of its chain",
    **{code: "set tls.ca to the CA that issued it" for code in _UNKNOWN_ISSUER},
}


def verifyErrorString(code: int) -> str:
    """
    OpenSSL's words for an C{X509_V_ERR_*} code (C{self-signed certificate},
    C{certificate has expired}, ...).
    """
    try:
        from OpenSSL._util import ffi, lib  # OpenSSL's own table of these words
        text: bytes = ffi.string(lib.X509_verify_cert_error_string(code))
    except Exception:  # pyOpenSSL moved its private bindings: say the number
        return f"X509 verify error {code}"
    return text.decode("ascii", "replace")


def certificateNames(certificate: x509.Certificate) -> tuple[str, ...]:
    """
    The names a certificate is for: its subjectAltName host names and
    addresses, else its common name.
    """
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return tuple(
            str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME))
    return (*san.get_values_for_type(x509.DNSName),
            *(str(a) for a in san.get_values_for_type(x509.IPAddress)))


def _trustedBy(ca: str) -> str:
    return "the system CAs" if ca == "system" else f"the CA in {ca!r}"


def untrustedMessage(where: str, ca: str, code: int, depth: int,
                     certificate: x509.Certificate) -> str:
    """
    The one line that says why OpenSSL did not accept the certificate chain
    of the backend at C{where} (C{code} at C{depth}: 0 the backend's own
    certificate, more an issuer above it), and what to do.

    @param ca: the C{ca} setting it was verified against.
    """
    why = verifyErrorString(code)
    which = "" if depth == 0 else f", at {subject(certificate)} in its chain"
    if code in (_EXPIRED, _NOT_YET_VALID):
        when = (certificate.not_valid_after_utc if code == _EXPIRED
                else certificate.not_valid_before_utc)
        return (f"certificate of {where} is out of date ({why}{which}: "
                f"{'not after' if code == _EXPIRED else 'not before'} {when:%Y-%m-%d %H:%M} UTC): "
                "renew it on the backend")
    advice = _TRUST_ADVICE.get(code)
    if advice is None:
        return f"certificate of {where} failed verification against {_trustedBy(ca)} ({why}{which})"
    return f"certificate of {where} is not trusted by {_trustedBy(ca)} ({why}{which}): {advice}"


def mismatchMessage(where: str, name: str, certificate: x509.Certificate) -> str:
    """
    The one line that says the certificate of the backend at C{where} does
    not name C{name}, which names it does carry, and what to do.
    """
    names = certificateNames(certificate)
    carried = f"it names {', '.join(names)}" if names else "it names no host"
    return f"certificate of {where} does not name {name} ({carried}): set tls.verify-host"


# OpenSSL's reasons for a handshake that failed for another cause than the
# backend's certificate, and what they usually mean.
_HANDSHAKE_HINTS = {
    "wrong version number": "the backend does not speak TLS on that port",
    "packet length too long": "the backend does not speak TLS on that port",
    "record layer failure": "the backend does not speak TLS on that port",
    "tlsv13 alert certificate required": "the backend wants a client certificate: "
                                         "set tls.client-cert and tls.client-key",
    "sslv3 alert handshake failure": "no TLS version or cipher in common, or the backend "
                                     "wants a client certificate",
    "tlsv1 alert unknown ca": "the backend does not trust the client certificate's issuer",
    "sslv3 alert bad certificate": "the backend refused the client certificate",
    "tlsv1 alert no application protocol": "the backend speaks none of the ALPN protocols "
                                           "offered (h2 for protocol: h2)",
    "unsupported protocol": "no TLS version in common",
}


def handshakeMessage(where: str, reason: Failure) -> str:
    """
    The one line that says why the TLS handshake with the backend at
    C{where} failed, from OpenSSL's reasons (or the connection's loss).
    """
    if not reason.check(SSL.Error):
        return f"{where} closed the connection during the TLS handshake"
    args = reason.value.args if reason.value is not None else ()
    errors = args[0] if args else []
    words = [e[-1] for e in errors if isinstance(e, tuple) and e] if isinstance(errors, list) else []
    said = "; ".join(words) or str(reason.value)
    hints = [_HANDSHAKE_HINTS[w] for w in words if w in _HANDSHAKE_HINTS]
    return f"TLS handshake with {where} failed: {said}" + (f" ({hints[0]})" if hints else "")


def alpnMessage(where: str, offered: tuple[bytes, ...], chosen: bytes | None) -> str:
    """
    The one line that says the backend at C{where} chose none of the
    protocols lbtwist C{offered} by ALPN (it chose C{chosen}, or none).
    """
    names = " or ".join(p.decode("ascii", "replace") for p in offered)
    said = "none" if not chosen else chosen.decode("ascii", "replace")
    return (f"{where} did not choose {names} by ALPN (it chose {said}): "
            f"it does not speak {names} over TLS")


class _Verification:
    """
    Checks a backend's certificate as OpenSSL's verify callback, so that a
    refusal says why: the chain's fault first (untrusted, expired...), as
    OpenSSL found it, then the name (as Twisted's own client options check
    it, with C{service_identity}).

    @ivar where: the backend's address, for the messages.
    @ivar name: the name its certificate must carry.
    @ivar ca: the C{ca} setting, for the messages.
    """

    log = Logger()

    def __init__(self, where: str, name: str, ca: str) -> None:
        self.where = where
        self.name = name
        self.ca = ca

    def callback(self, tlsProtocol: Any) -> Callable[[SSL.Connection, crypto.X509, int, int, int], bool]:
        """
        The verify callback for one connection: a refusal aborts
        C{tlsProtocol} with a L{BackendTLSError}.
        """
        # Let go of the protocol once the certificate is judged: the
        # connection holds this callback, and the protocol the connection.
        protocol: list[Any] = [tlsProtocol]

        def verify(connection: SSL.Connection, cert: crypto.X509, code: int, depth: int,
                   ok: int) -> bool:
            if not protocol:
                # Judged already (refused, or the backend's own one passed).
                return bool(ok)
            try:
                message = self.problem(cert.to_cryptography(), code, depth, bool(ok))
            except Exception:
                self.log.failure("while verifying the certificate of {where}", where=self.where)
                message = f"certificate of {self.where} could not be verified"
            if message is None:
                if depth == 0:
                    protocol.clear()
                return True
            protocol.pop().failVerification(Failure(BackendTLSError(message)))
            return False

        return verify

    def problem(self, certificate: x509.Certificate, code: int, depth: int,
                ok: bool) -> str | None:
        """
        What is wrong with C{certificate}, at C{depth} of the backend's
        chain, given OpenSSL's verdict (C{ok}, else error C{code}); L{None}
        if nothing.
        """
        if not ok:
            return untrustedMessage(self.where, self.ca, code, depth, certificate)
        if depth != 0:
            return None
        try:
            if _isAddress(self.name):
                verify_certificate_ip_address(certificate, self.name)
            else:
                verify_certificate_hostname(certificate, self.name)
        except (VerificationError, ServiceIdentityCertificateError):
            return mismatchMessage(self.where, self.name, certificate)
        return None


@implementer(IOpenSSLClientConnectionCreator)
class _BackendClient:
    """
    Client connections to one backend: from C{options}'s context, sending
    C{serverName} over SNI (if any) and offering C{alpn} (if any), the
    backend's certificate checked by C{verification} (if any: none is
    C{verify: false}, the opt-out).
    """

    def __init__(self, options: CertificateOptions, serverName: str | None,
                 alpn: tuple[str, ...], verification: _Verification | None) -> None:
        self.options = options
        self.serverName = serverName.encode("idna") if serverName else None
        self.alpn = [protocol.encode("ascii") for protocol in alpn]
        self.verification = verification

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.options.getContext(), None)
        if self.serverName is not None:
            connection.set_tlsext_host_name(self.serverName)
        if self.alpn:
            # Per connection, as Twisted's own client options offer it.
            connection.set_alpn_protos(self.alpn)
        if self.verification is not None:
            connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
                                  self.verification.callback(tlsProtocol))
        return connection


def clientOptions(tls: BackendTLS, endpoint: str) -> IOpenSSLClientConnectionCreator:
    """
    The TLS options to connect to the backend at C{endpoint} with.

    @raise lbtwist.certificates.CertificateError: the C{ca} file or the
        client certificate cannot be used (naming the file).
    """
    name = verifiedName(tls, endpoint)
    keyed = (
        loadKeyedCertificate(tls.clientCert, tls.clientKey)
        if tls.clientCert is not None and tls.clientKey is not None else None
    )
    chain = [crypto.X509.from_cryptography(c) for c in keyed.chain[1:]] if keyed else []
    trust = None
    if tls.verify:
        trust = (
            platformTrust() if tls.ca == "system"
            else trustRootFromCertificates([
                Certificate(crypto.X509.from_cryptography(c)) for c in loadCertificates(tls.ca)])
        )
    options = CertificateOptions(
        privateKey=crypto.PKey.from_cryptography_key(keyed.key) if keyed else None,
        certificate=crypto.X509.from_cryptography(keyed.certificate) if keyed else None,
        extraCertChain=chain or None, trustRoot=trust,
    )
    return _BackendClient(
        options, tls.sni or (None if _isAddress(name) else name), tls.alpn,
        _Verification(backendAddress(endpoint), name, tls.ca) if tls.verify else None,
    )


def backendAddress(endpoint: str) -> str:
    """
    The backend's address as messages give it: C{host:port}, a UNIX
    socket's path, else the endpoint string.
    """
    try:
        parsed = parseEndpoint(endpoint, False)
    except ValueError:
        return endpoint
    return parsed.authority or parsed.path or endpoint


@implementer(IHandshakeListener)
class _HandshakeGate(Protocol):
    """
    Holds a backend protocol back until the TLS handshake (with its
    verification) is over: only then is it connected, and C{handshake}
    fired with it; a connection lost before fails C{handshake} with a
    L{BackendTLSError} saying why (the backend's certificate refused, or
    OpenSSL's reason, e.g. C{wrong version number}), and so does a
    handshake in which the backend chose none of C{alpn}.

    @ivar where: the backend's address, for the messages.
    @ivar alpn: the protocols offered by ALPN, one of which the backend
        must choose (if any).
    """

    def __init__(self, wrapped: Protocol, handshake: Deferred[IProtocol], where: str,
                 alpn: tuple[bytes, ...] = ()) -> None:
        self.wrapped = wrapped
        self.handshake = handshake
        self.where = where
        self.alpn = alpn
        self.open = False

    def handshakeCompleted(self) -> None:
        if self.handshake.called:
            # Cancelled meanwhile.
            self.open = True
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        chosen = getattr(self.transport, "negotiatedProtocol", None)
        if self.alpn and chosen not in self.alpn:
            # The protocol would not be spoken: a failed connect, before
            # anything was sent (a backend with no ALPN, or none in common
            # that did not refuse the handshake for it).
            self.handshake.errback(Failure(BackendTLSError(
                alpnMessage(self.where, self.alpn, chosen))))
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.open = True
        self.wrapped.makeConnection(self.transport)
        self.handshake.callback(self.wrapped)

    def dataReceived(self, data: bytes) -> None:
        if self.open:
            self.wrapped.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.open:
            self.wrapped.connectionLost(reason)
        elif not self.handshake.called:
            if not reason.check(BackendTLSError):
                reason = Failure(BackendTLSError(handshakeMessage(self.where, reason)))
            self.handshake.errback(reason)


class _GateFactory(Factory):
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, handshake: Deferred[IProtocol],
                 where: str, alpn: tuple[bytes, ...]) -> None:
        self.wrapped = wrapped
        self.handshake = handshake
        self.where = where
        self.alpn = alpn
        self.gate: _HandshakeGate | None = None

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        protocol = self.wrapped.buildProtocol(addr)  # type: ignore[arg-type]
        if protocol is None:
            return None
        self.gate = _HandshakeGate(
            protocol, self.handshake, self.where, self.alpn)  # type: ignore[arg-type]
        return self.gate


@implementer(IStreamClientEndpoint)
class VerifiedTLSEndpoint:
    """
    TLS over another client endpoint, whose C{connect} fires once the
    handshake is over, with the protocol of the given factory (as
    L{twisted.internet.endpoints.wrapClientTLS} would fire at once, before
    the backend's certificate is even seen).  Cancelling it abandons the
    connection attempt or the handshake.

    @ivar where: the backend's address, which a failed handshake's
        L{BackendTLSError} names.
    @ivar alpn: the protocols C{creator} offers by ALPN, one of which the
        backend must choose (if any): a backend that chooses none fails
        the connection as a failed handshake does.
    """

    def __init__(self, creator: IOpenSSLClientConnectionCreator,
                 wrapped: IStreamClientEndpoint, clock: Any, where: str,
                 alpn: tuple[str, ...] = ()) -> None:
        self.creator = creator
        self.wrapped = wrapped
        self.clock = clock
        self.where = where
        self.alpn = tuple(protocol.encode("ascii") for protocol in alpn)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect, shake hands, then connect a protocol of C{protocolFactory}.
        """
        tlsProtocols: list[Any] = []

        def cancel(d: Deferred[IProtocol]) -> None:
            if tlsProtocols:
                tlsProtocols[0].abortConnection()
            else:
                attempt.cancel()

        handshake: Deferred[IProtocol] = Deferred(cancel)
        gates = _GateFactory(protocolFactory, handshake, self.where, self.alpn)
        attempt = self.wrapped.connect(TLSMemoryBIOFactory(self.creator, True, gates, self.clock))

        def connected(tlsProtocol: Any) -> None:
            tlsProtocols.append(tlsProtocol)

        def failed(reason: Failure) -> None:
            # Once cancelled, the handshake has failed already.
            if not handshake.called:
                handshake.errback(reason)

        attempt.addCallbacks(connected, failed)
        return handshake


@implementer(IStreamClientEndpoint)
class UnusableEndpoint:
    """
    An endpoint whose TLS settings cannot be used (a file went missing
    since the start): every attempt fails, on the next turn of the reactor,
    with the reason.
    """

    def __init__(self, reason: Exception, clock: Any) -> None:
        self.reason = reason
        self.clock = clock

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Fail soon with the reason.
        """
        d: Deferred[IProtocol] = Deferred()

        def fail() -> None:
            if not d.called:
                d.errback(Failure(self.reason))

        self.clock.callLater(0, fail)
        return d
