"""
TLS to backends, verified: a backend with a C{tls} block is connected with
Twisted's L{optionsForClientTLS} (its chain checked against the C{ca} file
or the platform's trust store, its name against C{verify-host} or the
backend's host), presenting a client certificate when one is given.
C{verify: false} is the explicit opt-out.

A connection is reported made only once its handshake is over
(L{VerifiedTLSEndpoint}): a backend that fails verification is a failed
connection, counted against it like a refused one, and a TCP health check
passes only when the handshake does.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from OpenSSL import SSL, crypto
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
    KeyPair,
    PrivateCertificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from .certificates import KeyedCertificate, loadCertificates, loadKeyedCertificate
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


@implementer(IOpenSSLClientConnectionCreator)
class _ServerName:
    """
    Client options that send C{name} over SNI instead of the name they
    verify.
    """

    def __init__(self, options: Any, name: str) -> None:
        self.options = options
        self.name = name.encode("idna")

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection: SSL.Connection = self.options.clientConnectionForTLS(tlsProtocol)
        connection.set_tlsext_host_name(self.name)
        return connection


@implementer(IOpenSSLClientConnectionCreator)
class _Unverified:
    """
    Client options that verify nothing (C{verify: false}): the opt-out.
    """

    def __init__(self, options: CertificateOptions, name: str | None) -> None:
        self.options = options
        self.name = name.encode("idna") if name else None

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.options.getContext(), None)
        if self.name is not None:
            connection.set_tlsext_host_name(self.name)
        return connection


def _privateCertificate(keyed: KeyedCertificate) -> PrivateCertificate:
    return PrivateCertificate.fromCertificateAndKeyPair(
        Certificate(crypto.X509.from_cryptography(keyed.certificate)),
        KeyPair(crypto.PKey.from_cryptography_key(keyed.key)),
    )


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
    alpn = [name.encode("ascii") for name in tls.alpn] or None
    if not tls.verify:
        options = CertificateOptions(
            privateKey=crypto.PKey.from_cryptography_key(keyed.key) if keyed else None,
            certificate=crypto.X509.from_cryptography(keyed.certificate) if keyed else None,
            extraCertChain=chain or None, acceptableProtocols=alpn,
        )
        return _Unverified(options, tls.sni or (None if _isAddress(name) else name))
    trust = (
        platformTrust() if tls.ca == "system"
        else trustRootFromCertificates([
            Certificate(crypto.X509.from_cryptography(c)) for c in loadCertificates(tls.ca)])
    )
    extra: dict[str, Any] = {}
    if chain:
        extra["extraCertChain"] = chain
    creator: IOpenSSLClientConnectionCreator = optionsForClientTLS(
        name, trust, _privateCertificate(keyed) if keyed else None,
        extraCertificateOptions=extra or None, acceptableProtocols=alpn,
    )
    if tls.sni is not None:
        return _ServerName(creator, tls.sni)
    return creator


@implementer(IHandshakeListener)
class _HandshakeGate(Protocol):
    """
    Holds a backend protocol back until the TLS handshake (with its
    verification) is over: only then is it connected, and C{handshake}
    fired with it; a connection lost before fails C{handshake} with the
    reason (OpenSSL's, e.g. C{certificate verify failed}).
    """

    def __init__(self, wrapped: Protocol, handshake: Deferred[IProtocol]) -> None:
        self.wrapped = wrapped
        self.handshake = handshake
        self.open = False

    def handshakeCompleted(self) -> None:
        self.open = True
        if self.handshake.called:
            # Cancelled meanwhile.
            self.transport.abortConnection()  # type: ignore[union-attr]
            return
        self.wrapped.makeConnection(self.transport)
        self.handshake.callback(self.wrapped)

    def dataReceived(self, data: bytes) -> None:
        if self.open:
            self.wrapped.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.open:
            self.wrapped.connectionLost(reason)
        elif not self.handshake.called:
            self.handshake.errback(reason)


class _GateFactory(Factory):
    noisy = False

    def __init__(self, wrapped: IProtocolFactory, handshake: Deferred[IProtocol]) -> None:
        self.wrapped = wrapped
        self.handshake = handshake
        self.gate: _HandshakeGate | None = None

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        protocol = self.wrapped.buildProtocol(addr)  # type: ignore[arg-type]
        if protocol is None:
            return None
        self.gate = _HandshakeGate(protocol, self.handshake)  # type: ignore[arg-type]
        return self.gate


@implementer(IStreamClientEndpoint)
class VerifiedTLSEndpoint:
    """
    TLS over another client endpoint, whose C{connect} fires once the
    handshake is over, with the protocol of the given factory (as
    L{twisted.internet.endpoints.wrapClientTLS} would fire at once, before
    the backend's certificate is even seen).  Cancelling it abandons the
    connection attempt or the handshake.
    """

    def __init__(self, creator: IOpenSSLClientConnectionCreator,
                 wrapped: IStreamClientEndpoint, clock: Any) -> None:
        self.creator = creator
        self.wrapped = wrapped
        self.clock = clock

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
        gates = _GateFactory(protocolFactory, handshake)
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
