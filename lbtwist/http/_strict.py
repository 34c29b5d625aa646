"""
What reading a head as its bytes relies on llhttp for.

A head read by llhttp with no callback per field (the backend's usual
response head, the client's usual request head) goes on as it came, and a
regular expression finds the fields a plan must see in it, each at the
start of a line, its name ending at its colon.  That holds only if llhttp
refuses every looser shape of a head: a bare LF or CR, a folded line,
whitespace before a colon, a line without one.  The installed llhttp is
checked once, at import; if it took any of them, heads are read as fields.
"""

from __future__ import annotations

from typing import Any

from httptools import HttpParserError, HttpRequestParser, HttpResponseParser

# Response heads llhttp must refuse.
LOOSE_RESPONSE_HEADS = (
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n",
    b"HTTP/1.1 200 OK\r\nA: b\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA: b\rContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA: b\r\n c\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA: b\r\n\tc\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding : chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding\t: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nA\r\nContent-Length: 0\r\n\r\n",
)

# Request heads llhttp must refuse, as a client connection's parser is set
# (L{requestParser}).
LOOSE_REQUEST_HEADS = (
    b"GET / HTTP/1.1\nHost: a\n\n",
    b"GET / HTTP/1.1\r\nHost: a\nContent-Length: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\rContent-Length: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\tb\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nB\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n",
)


def requestParser(callbacks: Any) -> HttpRequestParser:
    """
    A parser of a client's requests, calling C{callbacks}: a 1.x minor
    version it does not know is read as 1.1 (RFC 9110 2.5; the request plan
    refuses other majors).
    """
    parser = HttpRequestParser(callbacks)
    parser.set_dangerous_leniencies(lenient_version=True)
    return parser


class ReadFields(Exception):
    """
    A head being read as its bytes turned out to need llhttp's fields after
    all: read it again with them (nothing of it went anywhere yet).
    """


class _Fields:
    """
    llhttp's callback for fields, and nothing else (see L{refusesLooseHeads}).
    """

    def on_header(self, name: bytes, value: bytes) -> None:
        pass


def refusesLooseHeads(
    parser: Any = HttpResponseParser, heads: tuple[bytes, ...] = LOOSE_RESPONSE_HEADS,
) -> bool:
    """
    Whether llhttp, as the installed httptools builds it (C{parser}),
    refuses every loose shape of a head (C{heads}): only then is a head
    read as its bytes, else from its fields alone.
    """
    for head in heads:
        try:
            parser(_Fields()).feed_data(head)
        except HttpParserError:
            continue
        return False
    return True


# Backend response heads may be read as their bytes (see
# L{lbtwist.http._backend.BackendConnection._chooseParser}).
RESPONSE_HEADS_AS_BYTES = refusesLooseHeads()

# Client request heads may be read whole (see
# L{lbtwist.http._client.ClientConnection._wholeHead}).
REQUEST_HEADS_WHOLE = refusesLooseHeads(requestParser, LOOSE_REQUEST_HEADS)
