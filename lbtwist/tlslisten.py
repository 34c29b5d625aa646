"""
TLS on a listener: ALPN that never fails a handshake, and a rate-limited log
of the handshakes that do fail.

Twisted's C{ssl:} endpoints build their context with L{CertificateOptions},
which always installs an ALPN select callback and answers C{b""} when the
client offers nothing the server speaks; OpenSSL 3 turns that answer into a
fatal C{internal error} alert.  So every client that offers ALPN (curl, every
browser) was refused by a listener that offers nothing, and one offering only
C{h2} by any listener.  L{NegotiatingServerOptions} keeps Twisted's options,
context and connections, and installs on that context, before its first
connection, a select callback that answers
L{OpenSSL.SSL.NO_OVERLAPPING_PROTOCOLS} instead: the handshake goes on with
no protocol selected, as nginx and HAProxy do.

The listening side is L{TLSListeningReactor}: the reactor that a listener's
C{ssl:} endpoint is given, so that the endpoint string is parsed by Twisted
with every option it has, and only the last step, wrapping the factory in
TLS, is lbtwist's.
"""

from __future__ import annotations

import datetime
from typing import Any, Callable, Sequence

import attrs
from OpenSSL import SSL, crypto
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.internet.protocol import connectionDone
from twisted.internet.ssl import CertificateOptions
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from .certificates import CertificateError, dnsNames, loadKeyedCertificate, validityWarning
from .config import ConfigError, ListenerConfig, ListenerTLS
from .endpoints import parseEndpoint
from .tcp import describe

# At most one line per listener in this many seconds.
REPORT_INTERVAL = 10.0


def chooseProtocol(offered: Sequence[bytes], acceptable: Sequence[bytes]) -> Any:
    """
    The ALPN answer to a client that offers C{offered}: the first of the
    server's C{acceptable} protocols that the client offers (the server's
    preference, as Twisted chooses), else
    L{OpenSSL.SSL.NO_OVERLAPPING_PROTOCOLS}, which lets the handshake go on
    with no protocol selected.
    """
    for protocol in acceptable:
        if protocol in offered:
            return protocol
    return SSL.NO_OVERLAPPING_PROTOCOLS


def opensslReason(error: BaseException) -> str:
    """
    The reasons OpenSSL gave for an error, e.g. C{"no shared cipher"}.
    """
    queue = error.args[0] if error.args else None
    if isinstance(queue, list) and queue and all(
        isinstance(entry, tuple) and len(entry) == 3 for entry in queue
    ):
        return "; ".join(str(entry[2]) for entry in queue)
    return str(error) or type(error).__name__


def isEndOfStream(error: BaseException) -> bool:
    """
    Whether an OpenSSL error only says that the client closed the
    connection (a port scan, or a TCP health check), which is no failed
    handshake worth a log line.
    """
    if isinstance(error, SSL.SysCallError):
        return True
    queue = error.args[0] if error.args else None
    if isinstance(queue, list):
        return not queue or "unexpected eof" in opensslReason(error).casefold()
    return False


class HandshakeFailures:
    """
    The failed TLS handshakes of one listener, logged at most one line per
    C{interval} seconds; the line says how many were not logged since the
    one before.

    @ivar failed: failed handshakes in all.
    @ivar suppressed: failures not logged since the last line.
    """

    log = Logger()

    def __init__(self, listener: str, clock: IReactorTime, interval: float = REPORT_INTERVAL) -> None:
        self.listener = listener
        self.clock = clock
        self.interval = interval
        self.failed = 0
        self.suppressed = 0
        self._quietUntil: float | None = None

    def handshakeFailed(self, client: str, reason: str) -> None:
        """
        Count a failed handshake from C{client} for C{reason}; log it unless
        a line was logged less than C{interval} seconds ago.
        """
        self.failed += 1
        now = self.clock.seconds()
        if self._quietUntil is not None and now < self._quietUntil:
            self.suppressed += 1
            return
        self.log.warn(
            "listener {listener}: TLS handshake with {client} failed: {reason}"
            + (" ({suppressed} more failed handshakes not logged since the last report)"
               if self.suppressed else ""),
            listener=self.listener,
            client=client,
            reason=reason,
            suppressed=self.suppressed,
        )
        self.suppressed = 0
        self._quietUntil = now + self.interval


def selectProtocol(connection: SSL.Connection, offered: list[bytes]) -> Any:
    """
    The ALPN select callback of every listener context: the protocols
    offered are those of the listener factory's
    L{IProtocolNegotiationFactory}, chosen in the server's order as Twisted
    does, and a client with nothing in common goes on with none.
    """
    tlsProtocol = connection.get_app_data()
    negotiation = IProtocolNegotiationFactory(tlsProtocol.factory.wrappedFactory, None)
    acceptable = negotiation.acceptableProtocols() if negotiation is not None else ()
    return chooseProtocol(offered, acceptable)


@attrs.frozen
class ServedCertificate:
    """
    One certificate a listener serves: the host names it is chosen for
    (wildcards as C{*.example.com}) and the context that serves it.

    @ivar source: the file it was read from (or the C{ssl:} endpoint).
    @ivar notAfter: the end of its validity, for the log.
    """

    names: tuple[str, ...]
    context: SSL.Context
    source: str
    notAfter: datetime.datetime


class CertificateSet:
    """
    The certificates of one listener, chosen by the name a client asks for
    over SNI: an exact name first, then a wildcard for the name's parent;
    among certificates with the same name the first listed wins.  The first
    certificate is the default, for a client that asks for no name or one
    no certificate has.
    """

    def __init__(self, served: Sequence[ServedCertificate]) -> None:
        self.served = tuple(served)
        self.default = served[0].context
        self._exact: dict[str, SSL.Context] = {}
        self._wildcard: dict[str, SSL.Context] = {}
        for certificate in served:
            for name in certificate.names:
                if name.startswith("*."):
                    self._wildcard.setdefault(name[2:], certificate.context)
                else:
                    self._exact.setdefault(name, certificate.context)

    def contextFor(self, serverName: bytes | None) -> SSL.Context:
        """
        The context serving a client that asked for C{serverName}.
        """
        if not serverName:
            return self.default
        name = serverName.decode("ascii", "replace").lower().rstrip(".")
        exact = self._exact.get(name)
        if exact is not None:
            return exact
        parent = name.partition(".")[2]
        return self._wildcard.get(parent, self.default) if parent else self.default


# The oldest version a listener's min-version admits, as OpenSSL names it.
MIN_VERSIONS = {"1.2": SSL.TLS1_2_VERSION, "1.3": SSL.TLS1_3_VERSION}


class _OptionsCatcher:
    """
    A stand-in reactor for reading an C{ssl:} endpoint string again: Twisted
    builds the endpoint's options (reading its certificate files), and
    listening only hands them back.
    """

    def listenSSL(self, port: int, factory: Any, contextFactory: Any, **kwargs: Any) -> Any:
        return contextFactory


def endpointOptions(endpoint: str) -> Any:
    """
    The TLS options (a Twisted L{CertificateOptions}) an C{ssl:} listener
    endpoint string makes, read from its files now.

    @raise Exception: whatever Twisted raises for files it cannot use.
    """
    outcome: list[Any] = []
    serverFromString(_OptionsCatcher(), endpoint).listen(None).addBoth(  # type: ignore[arg-type]
        outcome.append)
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


@implementer(IOpenSSLServerConnectionCreator)
class ListenerCertificates:
    """
    The certificates of a TLS listener, chosen by SNI, and read again on
    reload: each new connection starts on the current default certificate
    and moves to the one its client asks for; connections already open
    keep theirs.

    Every context gets lbtwist's ALPN select callback (L{selectProtocol}),
    the listener's minimum TLS version and ciphers, and the SNI callback,
    before its first connection (pyOpenSSL refuses changes after it).

    @ivar current: the certificates new handshakes are served, once the
        listener listens.
    """

    log = Logger()

    def __init__(self, listener: ListenerConfig, path: str, now: Callable[[], float]) -> None:
        self.listener = listener
        self.path = path
        self.now = now
        self.current: CertificateSet | None = None

    def _prepare(self, context: SSL.Context) -> None:
        tls = self.listener.tls or ListenerTLS()
        context.set_min_proto_version(MIN_VERSIONS[tls.minVersion])
        if tls.ciphers is not None:
            try:
                context.set_cipher_list(tls.ciphers.encode("ascii"))
            except (SSL.Error, UnicodeEncodeError):
                raise ConfigError(f"{self.path}.tls.ciphers",
                                  f"OpenSSL knows no cipher in {tls.ciphers!r}") from None
        context.set_alpn_select_callback(selectProtocol)
        context.set_tlsext_servername_callback(self._serverName)

    def _serverName(self, connection: SSL.Connection) -> None:
        current = self.current
        if current is None:
            return
        context = current.contextFor(connection.get_servername())
        if context is not connection.get_context():
            connection.set_context(context)

    def build(self, options: Any = None) -> tuple[CertificateSet, list[str]]:
        """
        Read the listener's certificates: the C{ssl:} endpoint's own first
        (from C{options}, or read again from the endpoint string), then
        those of its C{tls} block.

        @return: the certificates and warnings about their dates.
        @raise ConfigError: naming the key and the file of the first
            certificate that cannot be served.
        """
        when = datetime.datetime.fromtimestamp(self.now(), datetime.timezone.utc)
        served: list[ServedCertificate] = []
        warnings: list[str] = []
        if parseEndpoint(self.listener.endpoint, True).kind == "ssl":
            where = f"{self.path}.listen"
            try:
                if options is None:
                    options = endpointOptions(self.listener.endpoint)
                leaf = options.certificate.to_cryptography()
                context = options.getContext()
                self._prepare(context)
            except ConfigError:
                raise
            except Exception as e:
                raise ConfigError(where, f"cannot serve its certificate: {e}") from e
            served.append(self._served(leaf, context, "the ssl: endpoint's certKey", when, warnings))
        tls = self.listener.tls or ListenerTLS()
        for j, files in enumerate(tls.certificates):
            where = f"{self.path}.tls.certificates[{j}]"
            try:
                keyed = loadKeyedCertificate(files.cert, files.key)
            except CertificateError as e:
                raise ConfigError(where, str(e)) from None
            options = CertificateOptions(
                privateKey=crypto.PKey.from_cryptography_key(keyed.key),
                certificate=crypto.X509.from_cryptography(keyed.certificate),
                extraCertChain=[crypto.X509.from_cryptography(c) for c in keyed.chain[1:]],
            )
            context = options.getContext()
            self._prepare(context)
            served.append(self._served(keyed.certificate, context, files.cert, when, warnings))
        return CertificateSet(served), warnings

    @staticmethod
    def _served(certificate: Any, context: SSL.Context, source: str,
                when: datetime.datetime, warnings: list[str]) -> ServedCertificate:
        warning = validityWarning(certificate, source, when)
        if warning is not None:
            warnings.append(warning)
        return ServedCertificate(dnsNames(certificate), context, source,
                                 certificate.not_valid_after_utc)

    def start(self, options: Any = None) -> None:
        """
        Read the certificates when the listener first listens (a listener
        that listens again keeps those it has), and log what it serves.

        @raise ConfigError: a certificate cannot be served.
        """
        if self.current is not None:
            return
        self._install(*self.build(options), "serving")

    def reload(self, listener: ListenerConfig) -> bool:
        """
        Read the certificates again (of C{listener}, the configuration now
        running) for the handshakes to come.  If one cannot be served the
        ones in use stay, and the error is logged.

        @return: whether the new certificates are in use.
        """
        self.listener = listener
        try:
            certificates, warnings = self.build()
        except ConfigError as e:
            self.log.error(
                "listener {listener}: certificates not reloaded, the ones in use stay: {error}",
                listener=listener.name, error=str(e))
            return False
        self._install(certificates, warnings, "reloaded, serving")
        return True

    def _install(self, certificates: CertificateSet, warnings: list[str], verb: str) -> None:
        self.current = certificates
        for warning in warnings:
            # Not "warning": the legacy log observers take that key for a
            # Python warning.
            self.log.warn("listener {listener}: {problem}", listener=self.listener.name,
                          problem=warning)
        self.log.info(
            "listener {listener}: TLS certificates {verb} {names}",
            listener=self.listener.name, verb=verb,
            names="; ".join(
                f"{', '.join(c.names) or '(no names)'} (until {c.notAfter:%Y-%m-%d})"
                for c in certificates.served),
        )

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        A connection on the current default certificate; the SNI callback
        moves it to the one its client asks for.
        """
        assert self.current is not None, "the listener has not started"
        return SSL.Connection(self.current.default, None)


class ReportingTLSProtocol(BufferingTLSTransport):
    """
    Twisted's TLS transport, telling its factory's L{HandshakeFailures}
    about a handshake that fails for a reason other than the client going
    away, and cutting a client that has not finished its handshake within
    the listener's C{handshake-timeout} (what it holds meanwhile, a TCP
    listener's backend connection among it, would else wait for the idle
    timeout).
    """

    factory: ListenerTLSFactory
    _handshakeTimer: Any = None

    def makeConnection(self, transport: Any) -> None:
        factory = self.factory
        self._handshakeTimer = factory.clock.callLater(
            factory.handshakeTimeout, self._handshakeTimedOut)
        super().makeConnection(transport)

    def _checkHandshakeStatus(self) -> None:
        # Twisted's one step of the handshake, the place it learns it is done.
        super()._checkHandshakeStatus()
        if self._handshakeDone:
            self._cancelHandshakeTimer()

    def _cancelHandshakeTimer(self) -> None:
        timer, self._handshakeTimer = self._handshakeTimer, None
        if timer is not None and timer.active():
            timer.cancel()

    def _handshakeTimedOut(self) -> None:
        self._handshakeTimer = None
        if self._handshakeDone or self._aborted:
            return
        self.factory.failures.handshakeFailed(
            describe(self.transport.getPeer()),  # type: ignore[union-attr]
            f"no handshake within {self.factory.handshakeTimeout:g}s")
        self.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelHandshakeTimer()
        super().connectionLost(reason)

    def _tlsShutdownFinished(self, reason: Failure | None) -> None:
        # Twisted's one place where a handshake error is seen before it is
        # squashed into a ConnectionLost (test_tls checks it is reached).
        if reason is not None and not self._handshakeDone and not self._aborted:
            error = reason.value
            if isinstance(error, SSL.Error) and not isEndOfStream(error):
                self.factory.failures.handshakeFailed(
                    describe(self.transport.getPeer()), opensslReason(error)  # type: ignore[union-attr]
                )
        super()._tlsShutdownFinished(reason)


class ListenerTLSFactory(TLSMemoryBIOFactory):
    """
    Wraps a listener's factory in TLS, as C{reactor.listenSSL} does, with
    connections that report their failed handshakes to C{failures}.
    """

    protocol = ReportingTLSProtocol

    def __init__(
        self, certificates: ListenerCertificates, wrappedFactory: IProtocolFactory,
        failures: HandshakeFailures, clock: IReactorTime,
    ) -> None:
        super().__init__(certificates, False, wrappedFactory, clock)
        self.failures = failures
        self.clock = clock
        tls = certificates.listener.tls
        self.handshakeTimeout = (ListenerTLS() if tls is None else tls).handshakeTimeout


class TLSListeningReactor:
    """
    The reactor a TLS listener's endpoint is built with: the real one,
    except that C{listenSSL} (for an C{ssl:} endpoint) and, for a C{tcp:}
    endpoint with certificates, C{listenTCP} wrap the factory in a
    L{ListenerTLSFactory} serving the listener's certificates, and listen
    with plain C{listenTCP}, exactly what Twisted's reactors do for
    C{listenSSL} with their own TLS factory.  So the endpoint string is
    parsed by Twisted with every option it has.
    """

    def __init__(self, reactor: Any, failures: HandshakeFailures,
                 certificates: ListenerCertificates, terminateTCP: bool) -> None:
        self.reactor = reactor
        self.failures = failures
        self.certificates = certificates
        self.terminateTCP = terminateTCP

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reactor, name)

    def _listen(self, port: int, factory: IProtocolFactory, backlog: int, interface: str,
                options: Any) -> IListeningPort:
        self.certificates.start(options)
        tlsFactory = ListenerTLSFactory(self.certificates, factory, self.failures, self.reactor)
        listening: IListeningPort = self.reactor.listenTCP(port, tlsFactory, backlog, interface)
        return listening

    def listenSSL(
        self, port: int, factory: IProtocolFactory, contextFactory: Any, backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        """
        Listen for TLS clients on C{port}, the endpoint's certificate first.
        """
        return self._listen(port, factory, backlog, interface, contextFactory)

    def listenTCP(
        self, port: int, factory: IProtocolFactory, backlog: int = 50, interface: str = "",
    ) -> IListeningPort:
        """
        Listen on C{port}: for TLS clients if the listener terminates TLS
        on a C{tcp:} endpoint, else as the reactor does.
        """
        if not self.terminateTCP:
            listening: IListeningPort = self.reactor.listenTCP(port, factory, backlog, interface)
            return listening
        return self._listen(port, factory, backlog, interface, None)

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int,
                        factory: IProtocolFactory) -> IListeningPort:
        """
        Serve a listening socket bound elsewhere (a worker serves its
        master's, see L{lbtwist.workers}) for TLS clients, as C{listenTCP}
        or C{listenSSL} would: an C{ssl:} listener's own certificate (read
        from its endpoint string) is the default one.
        """
        options = None
        if not self.terminateTCP:
            from twisted.internet.endpoints import serverFromString

            endpoint = serverFromString(self.reactor, self.certificates.listener.endpoint)
            options = getattr(endpoint, "_sslContextFactory", None)
        self.certificates.start(options)
        tlsFactory = ListenerTLSFactory(self.certificates, factory, self.failures, self.reactor)
        listening: IListeningPort = self.reactor.adoptStreamPort(
            fileDescriptor, addressFamily, tlsFactory)
        return listening


def listenerReactor(reactor: Any, listener: ListenerConfig, path: str) -> Any:
    """
    The reactor to build the endpoint of a listener with: for a listener
    that terminates TLS a L{TLSListeningReactor}, for any other the reactor
    itself.  C{path} is the listener's key path, for errors.
    """
    if not listener.terminatesTLS:
        return reactor
    return TLSListeningReactor(
        reactor, HandshakeFailures(listener.name, reactor),
        ListenerCertificates(listener, path, reactor.seconds),
        terminateTCP=parseEndpoint(listener.endpoint, True).kind != "ssl",
    )
