"""
The strict HTTP/1.1 rules around llhttp (through C{httptools}).

llhttp already refuses most request-smuggling shapes (both Content-Length
and Transfer-Encoding, repeated or malformed Content-Length, bad chunk
sizes, bare LF, NUL or CR in values, header lines without a colon,
whitespace before the colon, obsolete line folding).  What it lets through
and we still refuse is checked here, on the head it has parsed: any
Transfer-Encoding but a single C{chunked}, a Transfer-Encoding in HTTP/1.0,
a missing or repeated Host in HTTP/1.1.

Also here: the canned error responses a client may see, and the sets of
header names the proxy treats specially.
"""

from __future__ import annotations

IDEMPOTENT = frozenset((b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"))

# Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
# Proxy-* is matched by prefix; Upgrade is forwarded for an upgrade only.
HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade")
)

REASONS = {
    400: b"Bad Request",
    404: b"Not Found",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

_BODIES = {
    400: b"400 Bad Request: the request is malformed.\n",
    408: b"408 Request Timeout: the request head did not arrive in time.\n",
    414: b"414 URI Too Long: the request line is too long.\n",
    431: b"431 Request Header Fields Too Large: the request head is too large.\n",
    501: b"501 Not Implemented: this method is not supported.\n",
    502: b"502 Bad Gateway: the backend failed to send a valid response.\n",
    503: b"503 Service Unavailable: no backend is available.\n",
    504: b"504 Gateway Timeout: the backend did not answer in time.\n",
}


def errorResponse(status: int, close: bool) -> bytes:
    """
    A complete short plain-text response for C{status}.

    @param close: whether to announce that the connection will close.
    """
    body = _BODIES[status]
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, REASONS[status]),
            b"Content-Type: text/plain; charset=utf-8\r\n",
            b"Content-Length: %d\r\n" % (len(body),),
            b"Cache-Control: no-cache\r\n",
            b"Connection: close\r\n" if close else b"",
            b"\r\n",
            body,
        )
    )


# Built once: the hot path sends these without formatting anything.
ERRORS_CLOSE = {status: errorResponse(status, True) for status in _BODIES}
ERRORS_KEEP = {status: errorResponse(status, False) for status in _BODIES}


class BadRequest(Exception):
    """
    A request head that parsed but must be refused.

    @ivar status: the status to answer with.
    """

    def __init__(self, why: str, status: int = 400) -> None:
        super().__init__(why)
        self.status = status


def checkTransferEncoding(value: bytes | None, version: str) -> bool:
    """
    Whether a request body is chunked, given its Transfer-Encoding (if any).

    @raise BadRequest: the only one accepted is a single C{chunked}, in
        HTTP/1.1; anything else would be read differently by some backend.
    """
    if value is None:
        return False
    if version != "1.1":
        raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
    if value.strip(b" \t").lower() != b"chunked":
        raise BadRequest(f"unsupported Transfer-Encoding {value!r}")
    return True


def splitTokens(value: bytes) -> list[bytes]:
    """
    The lowercased, comma-separated tokens of a header value such as
    C{Connection}.
    """
    return [t.strip(b" \t").lower() for t in value.split(b",") if t.strip(b" \t")]


def cookieValue(header: bytes, name: bytes) -> bytes | None:
    """
    The value of cookie C{name} in a C{Cookie} header, if present.
    """
    for part in header.split(b";"):
        key, sep, value = part.strip(b" \t").partition(b"=")
        if sep and key == name:
            return value.strip(b'"')
    return None
