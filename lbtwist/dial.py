"""
Dialling a backend: one outgoing connection, with a timeout, as lean as
Twisted allows.

On lbtwist's reactor (L{IReactorDialTCP}) a TCP backend at an IP address is
dialled directly: no connector, factory or L{Deferred}, and over loopback
the connection is made before L{Dialler.dial} returns.  On other reactors,
or for a host name, it is dialled with C{reactor.connectTCP} and the
protocol itself reports when it is connected (L{BackendProtocol}), instead
of going through a client endpoint, which would wrap the protocol (one more
call on every read) and chain several L{Deferred}s.  Other endpoints (UNIX,
TLS...) go through Twisted's endpoint as usual.

Whichever way, the protocol is built when the dial starts, not once it is
connected: a protocol that stands for its connection from the start (an
HTTP/2 backend connection, whose streams requests arriving meanwhile
join) behaves alike on every reactor and over every endpoint.

A backend with TLS settings (a C{tls} block) is dialled through a
L{lbtwist.backendtls.VerifiedTLSEndpoint} over its endpoint: connected
means the handshake, with the backend's certificate verified, is over.

Either way the outcome goes to two callables, C{connected(protocol)} or
C{failed(reason)} (L{twisted.internet.error.TimeoutError} after the
timeout), and the attempt can be cancelled.
"""

from __future__ import annotations

import errno
import re
import typing
from typing import Any, Callable

from twisted.internet.defer import CancelledError
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import ConnectError, ConnectingCancelledError, TimeoutError
from twisted.internet.interfaces import IAddress, IConnector, IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from .backendtls import UnusableEndpoint, VerifiedTLSEndpoint, backendAddress, clientOptions
from .certificates import CertificateError
from .config import BackendTLS
from .endpoints import parseEndpoint
from .leantcp import SHORTAGES, IReactorDialTCP, ipFamily


def localShortage(reason: Failure) -> str | None:
    """
    Whether a dial (or a probe) failed because the balancer itself ran out
    of file descriptors, socket buffers or memory: then the failure says
    nothing about the backend, and must not count against its health.

    @return: the error's name (C{EMFILE}...), or L{None} for any other
        failure.
    """
    value = reason.value
    code = value.osError if isinstance(value, ConnectError) else getattr(value, "errno", None)
    return errno.errorcode.get(code) if code in SHORTAGES else None


class BackendProtocol(Protocol):
    """
    A protocol for a backend connection that tells its dialler when it is
    connected, so no wrapper protocol is needed.
    """

    _whenConnected: Callable[[BackendProtocol], None] | None = None

    def makeConnection(self, transport: Any) -> None:
        # (Protocol.makeConnection written in: one call fewer for each
        # backend connection.)
        self.connected = 1
        self.transport = transport
        self.connectionMade()
        notify = self._whenConnected
        if notify is not None:
            self._whenConnected = None
            notify(self)


def tcpAddress(endpoint: str) -> tuple[str, int] | None:
    """
    The host and port of a plain C{tcp:} client endpoint string, or L{None}
    if the string is anything else or has options only an endpoint handles.
    """
    try:
        parsed = parseEndpoint(endpoint, False)
    except ValueError:
        return None
    port = parsed.port
    if (
        parsed.kind != "tcp" or "\\" in endpoint or len(parsed.args) > 2
        or {name for name, _ in parsed.options} - {"host", "port"}
        or not parsed.host or port is None or not re.fullmatch(r"[0-9]{1,5}", port)
    ):
        return None
    return parsed.host, int(port)


class Cancellable(typing.Protocol):
    """
    An attempt in progress: C{cancel()} abandons it.
    """

    def cancel(self) -> None: ...


class _DialFactory(ClientFactory):
    """
    Hands the one protocol of one direct TCP connection (built when the
    dial started) to C{connectTCP}, and reports the outcome to
    C{connected} or C{failed}.

    Once the attempt is over (connected, failed or cancelled) it lets go of
    the protocol, the callbacks and the connector, which refer back to it
    and to the client: a cycle left behind would keep every connection's
    objects alive until the garbage collector's next full pass.
    """

    noisy = False

    def __init__(
        self,
        protocol: BackendProtocol,
        connected: Callable[[Any], None],
        failed: Callable[[Failure], None],
    ) -> None:
        self._protocol: BackendProtocol | None = protocol
        self._connected: Callable[[Any], None] | None = connected
        self._failed: Callable[[Failure], None] | None = failed
        self.connector: IConnector | None = None

    @property
    def settled(self) -> bool:
        """
        Whether the outcome is known (or the attempt was cancelled).
        """
        return self._connected is None

    def _settle(self) -> tuple[Callable[[Any], None] | None, Callable[[Failure], None] | None]:
        callbacks = self._connected, self._failed
        self._connected = self._failed = None
        self._protocol = None
        self.connector = None
        return callbacks

    def cancel(self) -> None:
        """
        Abandon the attempt; neither callback will be called.
        """
        connector = self.connector
        self._settle()
        if connector is not None:
            connector.stopConnecting()

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        protocol = _handOver(self)
        protocol._whenConnected = self._whenConnected
        return protocol

    def _whenConnected(self, protocol: BackendProtocol) -> None:
        connected, _ = self._settle()
        if connected is not None:
            connected(protocol)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        _, failed = self._settle()
        if failed is not None:
            failed(reason)

    def clientConnectionLost(self, connector: IConnector, reason: Failure) -> None:
        # Lost before it was reported connected: its connectionMade failed.
        self.clientConnectionFailed(connector, reason)


class _OneShotFactory(Factory):
    """
    Hands the one protocol of one connection made through an endpoint
    (built when the dial started) to that endpoint.
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol: Protocol | None = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return _handOver(self)


def _handOver(factory: _DialFactory | _OneShotFactory) -> Any:
    """
    The protocol C{factory} holds, which it lets go of: a dial connects one
    protocol, once.
    """
    protocol, factory._protocol = factory._protocol, None
    if protocol is None:
        raise RuntimeError("a dial connects one protocol, once")
    return protocol


class Dialler:
    """
    Dials backends by their endpoint strings (and TLS settings), remembering
    how to reach each.
    """

    log = Logger()

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._endpoints: dict[str, IStreamClientEndpoint] = {}
        self._tlsEndpoints: dict[tuple[str, BackendTLS], IStreamClientEndpoint] = {}
        # How each endpoint string is dialled, worked out once: its host and
        # port and whether the reactor dials it directly, or None for an
        # endpoint that is not plain TCP.
        self._routes: dict[str, tuple[str, int, bool] | None] = {}
        self._direct = IReactorDialTCP.providedBy(reactor)

    def endpoint(self, text: str, tls: BackendTLS | None = None) -> IStreamClientEndpoint:
        """
        The Twisted endpoint for an endpoint string, with TLS over it if
        C{tls} says so, built once.
        """
        if tls is not None:
            return self._tlsEndpoint(text, tls)
        endpoint = self._endpoints.get(text)
        if endpoint is None:
            endpoint = clientFromString(self._reactor, text)
            self._endpoints[text] = endpoint
        return endpoint

    def _tlsEndpoint(self, text: str, tls: BackendTLS) -> IStreamClientEndpoint:
        endpoint = self._tlsEndpoints.get((text, tls))
        if endpoint is None:
            try:
                creator = clientOptions(tls, text)
            except CertificateError as e:
                self.log.error("TLS to backend {endpoint} cannot be set up: {error}",
                               endpoint=text, error=str(e))
                endpoint = UnusableEndpoint(e, self._reactor)
            else:
                endpoint = VerifiedTLSEndpoint(creator, self.endpoint(text), self._reactor,
                                               backendAddress(text), tls.alpn)
            self._tlsEndpoints[(text, tls)] = endpoint
        return endpoint

    def forgetTLS(self) -> None:
        """
        Read the TLS files (CA, client certificates) again for the
        connections to come.
        """
        self._tlsEndpoints.clear()

    def dial(
        self,
        text: str,
        build: Callable[[], BackendProtocol],
        timeout: float,
        connected: Callable[[Any], None],
        failed: Callable[[Failure], None],
        tls: BackendTLS | None = None,
    ) -> Cancellable:
        """
        Connect a protocol from C{build} to the endpoint C{text} (over TLS
        if C{tls} says so); call C{connected(protocol)} once it is
        connected, or C{failed(reason)} if it cannot be within C{timeout}
        seconds.  C{connected} may be called before this returns; C{failed}
        never is.  C{build} is called once, before this returns, whatever
        the reactor or the endpoint.

        @return: the attempt, whose C{cancel()} abandons it without calling
            either.
        """
        if tls is not None:
            return self._dialEndpoint(
                self._tlsEndpoint(text, tls), build(), timeout, connected, failed)
        try:
            route = self._routes[text]
        except KeyError:
            route = self._routes[text] = self._route(text)
        if route is None:
            return self._dialEndpoint(self.endpoint(text), build(), timeout, connected, failed)
        host, port, direct = route
        if direct:
            return self._reactor.dialTCP(  # type: ignore[no-any-return]
                host, port, build(), timeout, connected, failed
            )
        factory = _DialFactory(build(), connected, failed)
        connector = self._reactor.connectTCP(host, port, factory, timeout=timeout)
        if not factory.settled:
            # Still connecting: keep the connector, to cancel.
            factory.connector = connector
        return factory

    def _route(self, text: str) -> tuple[str, int, bool] | None:
        address = tcpAddress(text)
        if address is None:
            return None
        host, port = address
        return host, port, self._direct and ipFamily(host) is not None

    def _dialEndpoint(
        self,
        endpoint: IStreamClientEndpoint,
        protocol: Protocol,
        timeout: float,
        connected: Callable[[Any], None],
        failed: Callable[[Failure], None],
    ) -> Cancellable:
        attempt = endpoint.connect(_OneShotFactory(protocol))
        timedOut = []

        def timeOut() -> None:
            timedOut.append(True)
            attempt.cancel()

        timer = self._reactor.callLater(timeout, timeOut)

        def done(result: object) -> object:
            if timedOut:
                return Failure(TimeoutError(string=f"connect timed out after {timeout}s"))
            timer.cancel()
            return result

        def fail(reason: Failure) -> None:
            # Cancelled by us (cancel() reports nothing); an endpoint says so
            # with either error.
            if not reason.check(CancelledError, ConnectingCancelledError):
                failed(reason)

        attempt.addBoth(done).addCallbacks(connected, fail)
        return attempt
