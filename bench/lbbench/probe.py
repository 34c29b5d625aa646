"""A minimal blocking HTTP/1.1 client that checks a target before it is loaded.

It verifies that ``/small`` and ``/big`` come back complete, that two requests
can share one connection (keep-alive), and that a ``Connection: close`` request
makes the target close the client connection after the response.
"""

from __future__ import annotations

import socket
from dataclasses import asdict, dataclass
from typing import Any

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
