"""Minimal blocking clients that check a target before it is loaded.

For HTTP/1.1 and TCP targets it verifies that ``/small`` and ``/big`` come back
complete, that two requests can share one connection (keep-alive), and that a
``Connection: close`` request makes the target close the client connection
after the response.  For HTTP/2 targets (:func:`probe_h2`, with the ``h2``
library lbtwist itself uses) it verifies that ``/small`` and ``/big``, as two
streams of one connection, come back complete, and over TLS that ALPN chose
``h2``.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import asdict, dataclass
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from lbbench.configs import BIG_BODY_BYTES, BIG_PATH, LOOPBACK, SMALL_BODY_BYTES, SMALL_PATH

TIMEOUT_S = 3.0
MAX_HEADER_BYTES = 64 * 1024


class ProbeError(Exception):
    """The target answered badly or not at all."""


@dataclass
class ProbeResult:
    """What the probe found; ``ok`` False means the target is unusable."""

    ok: bool
    detail: str
    keepalive: bool | None = None
    honours_close: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable dict."""
        return asdict(self)


class _Connection:
    """A socket with a read buffer, enough to read HTTP responses one by one."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT_S)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def request(self, path: str, close: bool = False) -> tuple[int, bytes]:
        """Send a GET and return (status, body)."""
        connection = "close" if close else "keep-alive"
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\nConnection: {connection}\r\n\r\n".encode()
        )
        return self._read_response()

    def at_eof(self) -> bool:
        """True if the peer closes the connection within the timeout."""
        try:
            return self.buffer == b"" and self.sock.recv(1) == b""
        except OSError:
            return False

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ProbeError("connection closed before the response was complete")
        return data

    def _read_until(self, marker: bytes, limit: int) -> bytes:
        while marker not in self.buffer:
            if len(self.buffer) > limit:
                raise ProbeError("response header too large")
            self.buffer += self._recv()
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def _read_exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.buffer += self._recv()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _read_chunked(self) -> bytes:
        body = b""
        for _chunk in range(100_000):
            size = int(self._read_until(b"\r\n", 1024).split(b";")[0], 16)
            if size == 0:
                self._read_until(b"\r\n", MAX_HEADER_BYTES)
                return body
            body += self._read_exactly(size)
            self._read_exactly(2)
        raise ProbeError("too many chunks")

    def _read_response(self) -> tuple[int, bytes]:
        head = self._read_until(b"\r\n\r\n", MAX_HEADER_BYTES).decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        try:
            status = int(status_line.split()[1])
        except (IndexError, ValueError) as exc:
            raise ProbeError(f"bad status line {status_line!r}") from exc
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            return status, self._read_exactly(int(headers["content-length"]))
        if "chunked" in headers.get("transfer-encoding", "").lower():
            return status, self._read_chunked()
        raise ProbeError("response has neither Content-Length nor chunked encoding")


def _expect(status: int, body: bytes, size: int, what: str) -> None:
    if status != 200 or len(body) != size:
        raise ProbeError(f"{what}: status {status}, {len(body)} body bytes (expected {size})")


def _check_keepalive(port: int) -> bool:
    """Two small requests on one connection; False if the second one fails."""
    conn = _Connection(port)
    try:
        status, body = conn.request(SMALL_PATH)
        _expect(status, body, SMALL_BODY_BYTES, "GET /small")
        try:
            status, body = conn.request(SMALL_PATH)
        except (OSError, ProbeError):
            return False
        return status == 200 and len(body) == SMALL_BODY_BYTES
    finally:
        conn.close()


def _check_big(port: int) -> None:
    conn = _Connection(port)
    try:
        status, body = conn.request(BIG_PATH)
        _expect(status, body, BIG_BODY_BYTES, "GET /big")
    finally:
        conn.close()


def _check_close(port: int) -> bool:
    """True if the target closes the connection after a ``Connection: close`` request."""
    conn = _Connection(port)
    try:
        status, body = conn.request(SMALL_PATH, close=True)
        _expect(status, body, SMALL_BODY_BYTES, "GET /small (Connection: close)")
        return conn.at_eof()
    finally:
        conn.close()


def probe(port: int) -> ProbeResult:
    """Check the target on ``port``; never raises for target misbehaviour."""
    try:
        keepalive = _check_keepalive(port)
        _check_big(port)
        honours_close = _check_close(port)
    except (OSError, ProbeError, ValueError) as exc:
        return ProbeResult(False, f"probe failed: {exc}")
    notes = []
    if not keepalive:
        notes.append("no keep-alive")
    if not honours_close:
        notes.append("does not close on 'Connection: close'")
    return ProbeResult(True, "; ".join(notes) or "ok", keepalive, honours_close)


def _h2_socket(port: int, tls: bool) -> socket.socket:
    """A connection to ``port``, over TLS with ALPN ``h2`` (certificate not verified) if
    ``tls``; raises :class:`ProbeError` if TLS does not choose ``h2``."""
    sock = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT_S)
    if not tls:
        return sock
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    wrapped = context.wrap_socket(sock, server_hostname="localhost")
    if wrapped.selected_alpn_protocol() != "h2":
        wrapped.close()
        raise ProbeError(f"ALPN chose {wrapped.selected_alpn_protocol()!r}, not 'h2'")
    return wrapped


def _h2_get(sock: socket.socket, scheme: str, paths: list[str]) -> dict[str, tuple[int, int]]:
    """GET every path as concurrent streams of one HTTP/2 connection; return
    {path: (status, body bytes)} once every stream has ended."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    streams: dict[int, str] = {}
    for path in paths:
        stream_id = conn.get_next_available_stream_id()
        streams[stream_id] = path
        conn.send_headers(
            stream_id,
            [(":method", "GET"), (":path", path), (":scheme", scheme),
             (":authority", LOOPBACK)],
            end_stream=True,
        )  # fmt: skip
    sock.sendall(conn.data_to_send())
    status: dict[int, int] = {}
    size = dict.fromkeys(streams, 0)
    ended: set[int] = set()
    for _read in range(100_000):
        if ended == set(streams):
            return {streams[i]: (status.get(i, 0), size[i]) for i in streams}
        data = sock.recv(65536)
        if not data:
            raise ProbeError("HTTP/2 connection closed before every response was complete")
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status[event.stream_id] = int(dict(event.headers)[b":status"])
            elif isinstance(event, h2.events.DataReceived):
                size[event.stream_id] += len(event.data)
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                ended.add(event.stream_id)
            elif isinstance(event, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                raise ProbeError(f"HTTP/2 {type(event).__name__}: {event}")
        sock.sendall(conn.data_to_send())
    raise ProbeError("too many reads")


def probe_h2(port: int, tls: bool) -> ProbeResult:
    """Check an HTTP/2 target on ``port`` (h2c by prior knowledge, or TLS with ALPN h2):
    ``/small`` and ``/big`` as two streams of one connection must come back complete.
    Never raises for target misbehaviour."""
    try:
        sock = _h2_socket(port, tls)
        try:
            answers = _h2_get(sock, "https" if tls else "http", [SMALL_PATH, BIG_PATH])
        finally:
            sock.close()
        for path, expected in ((SMALL_PATH, SMALL_BODY_BYTES), (BIG_PATH, BIG_BODY_BYTES)):
            status, size = answers[path]
            if status != 200 or size != expected:
                raise ProbeError(f"GET {path} (HTTP/2): status {status}, {size} body bytes "
                                 f"(expected {expected})")
    except (OSError, ProbeError, ValueError, KeyError, h2.exceptions.H2Error) as exc:
        return ProbeResult(False, f"probe failed: {exc}")
    return ProbeResult(True, "ok (HTTP/2 over TLS, ALPN h2)" if tls else "ok (h2c)")
