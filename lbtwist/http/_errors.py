"""
The errors HTTP mode answers with itself: L{BadRequest}, raised for a
request that must be refused, and the canned short responses a client may
see, built once so the hot path formats nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from http import HTTPStatus

from httptools import HttpParserError, HttpParserInvalidMethodError, HttpRequestParser

REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
    505: b"HTTP Version Not Supported",
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
    505: b"505 HTTP Version Not Supported: only HTTP/1.x is spoken here.\n",
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


def localResponse(
    status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes, head: bool, close: bool,
) -> bytes:
    """
    A complete response the balancer answers with itself (a route's
    redirect or fixed answer, a refusal), framed by its length (a 204 or
    a 304 has neither body nor length).

    @param headers: its headers, checked when they were configured.
    @param head: the request was a HEAD: the length is said, the body not sent.
    @param close: whether to announce that the connection will close.
    """
    try:
        reason = HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        reason = REASONS.get(status, b"Unknown")
    parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
    parts.extend(n + b": " + v + b"\r\n" for n, v in headers)
    if status == 204 or status == 304:
        # RFC 9110 8.6, 15.3.5 and 15.4.5: no body (a client reads none
        # after them, whatever the head says), and no length.
        body = b""
    else:
        parts.append(b"Content-Length: %d\r\n" % (len(body),))
    if close:
        parts.append(b"Connection: close\r\n")
    parts.append(b"\r\n")
    if not head:
        parts.append(body)
    return b"".join(parts)


# Built once: the hot path sends these without formatting anything.
ERRORS_CLOSE = {status: errorResponse(status, True) for status in _BODIES}
ERRORS_KEEP = {status: errorResponse(status, False) for status in _BODIES}


class BadRequest(Exception):
    """
    A request head that parsed but must be refused.

    @ivar status: the status to answer with.
    @ivar answer: the complete response to close with.
    """

    def __init__(self, why: str, status: int = 400, answer: bytes | None = None) -> None:
        super().__init__(why)
        self.status = status
        self.answer = ERRORS_CLOSE[status] if answer is None else answer


#: What llhttp says of an HTTP/2 connection preface (C{PRI * HTTP/2.0}),
#: which reaches the HTTP/1.1 parser only on a listener without h2c.
_LLHTTP_PRI = "Pause on PRI/Upgrade"

H2C_PREFACE = (
    "an HTTP/2 (h2c) preface on a listener without h2c: set http2: true on the listener"
)

_H2C_PREFACE_ANSWER = localResponse(
    400, [(b"Content-Type", b"text/plain; charset=utf-8"), (b"Cache-Control", b"no-cache")],
    b"400 Bad Request: " + H2C_PREFACE.encode("ascii") + b".\n", head=False, close=True,
)


#: What llhttp says of a method it does not know that begins as one it does.
_LLHTTP_METHOD_SPACE = "Expected space after method"

#: A request line's start that is a method (a token, RFC 9110 9.1) and its space.
_METHOD = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+ ")


def parserRefusal(error: Exception, data: bytes = b"") -> BadRequest:
    """
    The refusal of a request the HTTP/1.1 parser rejected: the
    L{BadRequest} a callback raised, else llhttp's error, put in an
    operator's words where llhttp's are its own (an h2c preface, a method
    it does not know).

    @param data: the read it rejected: a method llhttp does not know, but
        a well-formed one, at its start is a 501 (RFC 9110 9.1: not
        implemented), not a malformed request.  One after a request llhttp
        took in the same read stays a 400: where it began is not known.
    """
    cause = error.__context__
    if isinstance(cause, BadRequest):
        return cause
    why = str(error)
    if why == _LLHTTP_PRI:
        return BadRequest(H2C_PREFACE, 400, _H2C_PREFACE_ANSWER)
    if isinstance(error, HttpParserInvalidMethodError) or why == _LLHTTP_METHOD_SPACE:
        method = _METHOD.match(data)
        if method is not None and _unknownMethod(method.group()):
            return BadRequest(f"method {method.group()[:-1][:40]!r} is not supported", 501)
    return BadRequest(why)


def _unknownMethod(start: bytes) -> bool:
    """
    Whether llhttp refuses C{start} (a method and its space) as a method:
    else the read that began with it held a request llhttp took, and the
    refused method came after it.
    """
    try:
        HttpRequestParser(None).feed_data(start + b"/ HTTP/1.1\r\n")
    except HttpParserError:
        return True
    return False
