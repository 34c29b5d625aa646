"""
Dialling a backend: one outgoing connection, with a timeout, as lean as
Twisted allows.

A plain TCP backend is dialled with C{reactor.connectTCP} and the protocol
itself reports when it is connected (L{BackendProtocol}), instead of going
through a client endpoint: the endpoint would wrap the protocol (one more
call on every read), chain several L{Deferred}s and run a timer of its own on
top of ours, all per connection.  Other endpoints (UNIX, TLS...) go through
Twisted's endpoint as usual.

Either way the result is a L{Deferred} that fires with the connected
protocol, fails with L{twisted.internet.error.TimeoutError} after the
timeout, and can be cancelled.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.error import TimeoutError
from twisted.internet.interfaces import IAddress, IConnector, IStreamClientEndpoint
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.python.failure import Failure


class BackendProtocol(Protocol):
    """
    A protocol for a backend connection that tells its dialler when it is
    connected, so no wrapper protocol is needed.
    """

    _whenConnected: Callable[[BackendProtocol], None] | None = None
    # Failed attempts on other backends before this connection was made.
    retries = 0

    def makeConnection(self, transport: Any) -> None:
        super().makeConnection(transport)
        notify = self._whenConnected
        if notify is not None:
            self._whenConnected = None
            notify(self)


def tcpAddress(endpoint: str) -> tuple[str, int] | None:
    """
    The host and port of a plain C{tcp:} client endpoint string, or L{None}
    if the string is anything else or has options only an endpoint handles.
    """
    kind, _, rest = endpoint.partition(":")
    if kind != "tcp" or "\\" in rest:
        return None
    named: dict[str, str] = {}
    positional: list[str] = []
    for arg in rest.split(":"):
        if "=" in arg:
            key, _, value = arg.partition("=")
            named[key] = value
        elif arg:
            positional.append(arg)
    if set(named) - {"host", "port"} or len(positional) > 2:
        return None
    host = named.get("host") or (positional[0] if positional else None)
    port = named.get("port") or (positional[1] if len(positional) > 1 else None)
    if not host or port is None or not re.fullmatch(r"[0-9]{1,5}", port):
        return None
    return host, int(port)


def _spent() -> BackendProtocol:
    raise RuntimeError("a dial builds one protocol")


class _DialFactory(ClientFactory):
    """
    Builds the one protocol of one direct TCP connection, and fires
    C{deferred} when it is connected or has failed.

    Once the attempt is over (connected, failed or cancelled) it lets go of
    the L{Deferred} and the connector, which both refer back to it: a cycle
    left behind would keep every connection's objects alive until the
    garbage collector's next full pass.

    @ivar deferred: the attempt's result, or L{None} once it is over.
    """

    noisy = False

    def __init__(self, build: Callable[[], BackendProtocol]) -> None:
        self.build = build
        self.deferred: Deferred[BackendProtocol] | None = Deferred(self._cancel)
        self.connector: IConnector | None = None

    def _settle(self) -> Deferred[BackendProtocol] | None:
        deferred, self.deferred, self.connector = self.deferred, None, None
        return deferred

    def _cancel(self, d: Deferred[BackendProtocol]) -> None:
        connector = self.connector
        self._settle()
        if connector is not None:
            connector.stopConnecting()

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        # The builder is usually a method of the client's protocol: one use.
        build, self.build = self.build, _spent
        protocol = build()
        protocol._whenConnected = self._connected
        return protocol

    def _connected(self, protocol: BackendProtocol) -> None:
        deferred = self._settle()
        if deferred is not None:
            deferred.callback(protocol)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        deferred = self._settle()
        if deferred is not None:
            deferred.errback(reason)


class _OneShotFactory(Factory):
    """
    Builds the one protocol of one connection made through an endpoint.
    """

    noisy = False

    def __init__(self, build: Callable[[], Protocol]) -> None:
        self._build = build

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._build()


class Dialler:
    """
    Dials backends by their endpoint strings, remembering how to reach each.
    """

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._endpoints: dict[str, IStreamClientEndpoint] = {}
        self._addresses: dict[str, tuple[str, int] | None] = {}

    def endpoint(self, text: str) -> IStreamClientEndpoint:
        """
        The Twisted endpoint for an endpoint string, built once.
        """
        endpoint = self._endpoints.get(text)
        if endpoint is None:
            endpoint = clientFromString(self._reactor, text)
            self._endpoints[text] = endpoint
        return endpoint

    def dial(
        self, text: str, build: Callable[[], BackendProtocol], timeout: float
    ) -> Deferred[BackendProtocol]:
        """
        Connect a protocol from C{build} to the endpoint C{text}.

        @return: fires with the connected protocol; fails with
            L{TimeoutError} after C{timeout} seconds, or with the reason the
            connection failed.  Cancelling it abandons the connection.
        """
        try:
            address = self._addresses[text]
        except KeyError:
            address = self._addresses[text] = tcpAddress(text)
        if address is not None:
            factory = _DialFactory(build)
            result = factory.deferred
            assert result is not None
            connector = self._reactor.connectTCP(address[0], address[1], factory, timeout=timeout)
            if factory.deferred is not None:
                # Still connecting (the lean reactor may have finished already).
                factory.connector = connector
            return result
        return self._dialEndpoint(text, build, timeout)

    def _dialEndpoint(
        self, text: str, build: Callable[[], Protocol], timeout: float
    ) -> Deferred[Any]:
        attempt = self.endpoint(text).connect(_OneShotFactory(build))
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

        result: Deferred[Any] = Deferred(lambda d: attempt.cancel())
        attempt.addBoth(done).chainDeferred(result)
        return result
