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

from typing import Any, Sequence

from OpenSSL import SSL
from twisted.internet.interfaces import (
    IListeningPort,
    IOpenSSLServerConnectionCreator,
    IProtocolFactory,
    IProtocolNegotiationFactory,
    IReactorTime,
)
from twisted.logger import Logger
from twisted.protocols.tls import BufferingTLSTransport, TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

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


@implementer(IOpenSSLServerConnectionCreator)
class NegotiatingServerOptions:
    """
    An C{ssl:} endpoint's options (a L{CertificateOptions}), with an ALPN
    select callback that never fails a handshake.

    The context and every connection are still the ones Twisted's options
    make, with every setting of the endpoint string; the protocols offered
    are still those of the listener factory's L{IProtocolNegotiationFactory},
    chosen in the server's order as Twisted does.  Only the answer to a
    client with nothing in common changes.
    """

    def __init__(self, options: Any) -> None:
        self.options = options
        # Installed before the context makes its first connection: after
        # that pyOpenSSL refuses to change it.  The options keep this
        # context and make every connection from it.  An endpoint that
        # listens again (a restarted service) finds its context in use, with
        # this same callback installed the first time.
        try:
            options.getContext().set_alpn_select_callback(self._select)
        except ValueError:
            pass

    def _select(self, connection: SSL.Connection, offered: list[bytes]) -> Any:
        tlsProtocol = connection.get_app_data()
        negotiation = IProtocolNegotiationFactory(tlsProtocol.factory.wrappedFactory, None)
        acceptable = negotiation.acceptableProtocols() if negotiation is not None else ()
        return chooseProtocol(offered, acceptable)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """
        A connection made by the endpoint's options, as Twisted makes it.
        """
        connection: SSL.Connection = self.options.serverConnectionForTLS(tlsProtocol)
        return connection


class ReportingTLSProtocol(BufferingTLSTransport):
    """
    Twisted's TLS transport, telling its factory's L{HandshakeFailures}
    about a handshake that fails for a reason other than the client going
    away.
    """

    factory: ListenerTLSFactory

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
        self, options: Any, wrappedFactory: IProtocolFactory, failures: HandshakeFailures,
        clock: IReactorTime,
    ) -> None:
        super().__init__(NegotiatingServerOptions(options), False, wrappedFactory, clock)
        self.failures = failures


class TLSListeningReactor:
    """
    The reactor a listener's endpoint is built with: the real one, except
    that C{listenSSL} wraps the factory in a L{ListenerTLSFactory} and
    listens with plain C{listenTCP}, exactly what Twisted's reactors do for
    C{listenSSL} with their own TLS factory.
    """

    def __init__(self, reactor: Any, failures: HandshakeFailures) -> None:
        self.reactor = reactor
        self.failures = failures

    def __getattr__(self, name: str) -> Any:
        return getattr(self.reactor, name)

    def listenSSL(
        self, port: int, factory: IProtocolFactory, contextFactory: Any, backlog: int = 50,
        interface: str = "",
    ) -> IListeningPort:
        """
        Listen for TLS clients on C{port}, with the options of the endpoint.
        """
        tlsFactory = ListenerTLSFactory(contextFactory, factory, self.failures, self.reactor)
        listening: IListeningPort = self.reactor.listenTCP(port, tlsFactory, backlog, interface)
        return listening


def listenerReactor(reactor: Any, listenerName: str, endpoint: str) -> Any:
    """
    The reactor to build the endpoint of a listener with: for an C{ssl:}
    endpoint a L{TLSListeningReactor}, for any other the reactor itself.
    """
    if parseEndpoint(endpoint, True).kind != "ssl":
        return reactor
    return TLSListeningReactor(reactor, HandshakeFailures(listenerName, reactor))
