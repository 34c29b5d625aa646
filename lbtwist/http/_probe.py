"""
Active HTTP health checks: send one request, judge the status, headers and
body.
"""

from __future__ import annotations

from typing import Any

from h2.config import H2Configuration
from h2.connection import H2Connection as H2State
from h2.events import DataReceived, ResponseReceived, StreamEnded, StreamReset
from h2.exceptions import ProtocolError
from httptools import HttpParserError, HttpResponseParser
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from ..config import MAX_PROBE_BODY, HealthCheck
from ..dial import Dialler
from ..endpoints import parseEndpoint
from ..health import ProbeFailed
from ..pool import Backend
from ._h2backend import requestFields


def _inRanges(status: int, ranges: tuple[tuple[int, int], ...]) -> bool:
    return any(low <= status <= high for low, high in ranges)


def _readsBody(check: HealthCheck) -> bool:
    """
    Whether C{check} judges the response's body, not only its head.
    """
    return check.method != "HEAD" and (
        check.expectBody is not None or check.expectBodyRegex is not None)


def headerProblem(check: HealthCheck, headers: list[tuple[bytes, bytes]]) -> str | None:
    """
    What the response C{headers} lack of C{check}'s C{expect-header}, or
    L{None}: each named header must have a field whose value (or one of
    its comma-separated elements, as HAProxy's C{http-check expect hdr}
    reads them) is exactly the expected one.
    """
    for name, wanted in check.expectHeaders:
        key = name.lower().encode("latin-1")
        values = [v for n, v in headers if n.lower() == key]
        if not values:
            return f"the header {name} is missing"
        target = wanted.encode("latin-1", "replace")
        if not any(element.strip() == target for v in values for element in v.split(b",")):
            got = b", ".join(values).decode("latin-1")
            return f"the header {name} is {got!r}, expected {wanted!r}"
    return None


def _describeRanges(ranges: tuple[tuple[int, int], ...]) -> str:
    return ",".join(f"{a}" if a == b else f"{a}-{b}" for a, b in ranges)


class _ProbeProtocol(Protocol):
    """
    Sends the check request and reads the response.
    """

    transport: Any

    def __init__(self, request: bytes, check: HealthCheck, result: Deferred[object]) -> None:
        self.request = request
        self.check = check
        self.result = result
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()
        self.parser = HttpResponseParser(self)
        self.done = False

    def connectionMade(self) -> None:
        self.transport.write(self.request)

    def dataReceived(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except HttpParserError as e:
            self._finish(ProbeFailed(f"malformed response: {e}"))

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.check.expectHeaders:
            self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not _readsBody(self.check):
            self._judge()

    def on_body(self, body: bytes) -> None:
        if len(self.body) < MAX_PROBE_BODY:
            self.body += body[: MAX_PROBE_BODY - len(self.body)]

    def on_message_complete(self) -> None:
        self._judge()

    def _judge(self) -> None:
        check = self.check
        if not _inRanges(self.status, check.expectStatus):
            self._finish(ProbeFailed(
                f"status {self.status}, expected {_describeRanges(check.expectStatus)}"
            ))
            return
        problem = headerProblem(check, self.headers) if check.expectHeaders else None
        if problem is not None:
            self._finish(ProbeFailed(f"status {self.status} but {problem}"))
        elif check.expectBody is not None and check.expectBody.encode() not in self.body:
            self._finish(ProbeFailed(
                f"status {self.status} but the body lacks {check.expectBody!r}"
            ))
        elif check.expectBodyRegex is not None and not check.expectBodyRegex.search(self.body):
            pattern = check.expectBodyRegex.pattern.decode("utf-8")
            self._finish(ProbeFailed(
                f"status {self.status} but the body does not match {pattern!r}"
            ))
        else:
            self._finish(None)

    def _finish(self, error: Exception | None) -> None:
        if self.done:
            return
        self.done = True
        self.transport.loseConnection()
        if self.result.called:
            return
        if error is None:
            self.result.callback(self.status)
        else:
            self.result.errback(Failure(error))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.done and _readsBody(self.check) and self.status:
            # A response delimited by the close.
            self._judge()
        if not self.done:
            self.done = True
            if self.result.called:
                return
            self.result.errback(Failure(ProbeFailed(
                "connection closed before a complete response"
            )))


class _H2ProbeProtocol(_ProbeProtocol):
    """
    Sends the check request over HTTP/2 (the connection preface, then one
    stream) and reads the response.
    """

    def __init__(self, request: bytes, check: HealthCheck, result: Deferred[object]) -> None:
        super().__init__(request, check, result)
        self.h2 = H2State(H2Configuration(client_side=True, header_encoding=None))

    def connectionMade(self) -> None:
        h2 = self.h2
        h2.initiate_connection()
        fields, _ = requestFields(self.request, b"https" if self.factory.tls else b"http")
        h2.send_headers(1, fields, end_stream=True)
        self.transport.write(h2.data_to_send())

    def dataReceived(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except ProtocolError as e:
            self._finish(ProbeFailed(f"malformed HTTP/2: {e}"))
            return
        for event in events:
            if isinstance(event, ResponseReceived):
                self.status = int(dict(event.headers).get(b":status", b"0"))
                if self.check.expectHeaders:
                    self.headers = list(event.headers)
                if not _readsBody(self.check):
                    self._judge()
            elif isinstance(event, DataReceived):
                self.on_body(event.data)
                self.h2.acknowledge_received_data(event.flow_controlled_length, 1)
            elif isinstance(event, StreamEnded):
                self._judge()
            elif isinstance(event, StreamReset):
                self._finish(ProbeFailed(f"stream reset ({event.error_code!r})"))
            if self.done:
                return
        data = self.h2.data_to_send()
        if data:
            self.transport.write(data)


class _ProbeFactory(Factory):
    noisy = False

    def __init__(self, request: bytes, check: HealthCheck, result: Deferred[object],
                 tls: bool = False) -> None:
        self.request = request
        self.check = check
        self.result = result
        self.tls = tls

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        kind = _H2ProbeProtocol if self.check.h2 else _ProbeProtocol
        protocol = kind(self.request, self.check, self.result)
        protocol.factory = self
        return protocol


class HTTPProbe:
    """
    A backend is healthy if it answers C{method path} with an expected
    status (and, if configured, the expected headers and a body containing
    the expected text or matching the expected pattern): over
    HTTP/1.1, or over HTTP/2 for the backends of a pool with C{protocol:
    h2} (h2c by prior knowledge, or TLS with ALPN h2).

    Register it as C{probes["http"]} of a L{lbtwist.health.HealthMonitor}.
    """

    def __init__(self, dialler: Dialler) -> None:
        self._dialler = dialler

    def request(self, backend: Backend) -> bytes:
        """
        The bytes of the check request for C{backend}.
        """
        check = backend.healthCheck
        tls = backend.config.tls
        host = (
            check.host or (tls.verifyHost if tls is not None else None)
            or parseEndpoint(backend.endpoint, False).authority or "localhost"
        )
        return (
            f"{check.method} {check.path} HTTP/1.1\r\nHost: {host}\r\n"
            "User-Agent: lbtwist-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
        ).encode("latin-1")

    def __call__(self, backend: Backend) -> Deferred[object]:
        """
        Probe C{backend}; fires with the status, or fails with
        L{ProbeFailed} saying what was wrong.  Cancelling it closes the
        connection.
        """
        connection: list[Any] = []

        def cancel(d: Deferred[object]) -> None:
            if connection and connection[0].transport is not None:
                connection[0].transport.abortConnection()
            elif attempt is not None:
                attempt.cancel()

        result: Deferred[object] = Deferred(cancel)
        attempt: Deferred[Any] | None = None
        endpoint: Any = self._dialler.endpoint(backend.endpoint, backend.config.tls)
        attempt = endpoint.connect(_ProbeFactory(
            self.request(backend), backend.healthCheck, result, backend.config.tls is not None))

        def connected(protocol: Any) -> None:
            connection.append(protocol)

        def failed(reason: Failure) -> None:
            if not result.called:
                result.errback(reason)

        attempt.addCallbacks(connected, failed)
        return result
