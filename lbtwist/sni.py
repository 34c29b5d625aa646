"""
The server name a TLS client asks for, read from the first bytes of its
connection (the ClientHello) without terminating TLS, so that a TCP
listener can route on it.

Sans-IO and bounded: the caller buffers at most L{MAX_HELLO} bytes (one
record) and asks again as more arrive.
"""

from __future__ import annotations

import attrs

# A TLS record holds at most 2^14 bytes of plaintext (RFC 8446 5.1); with
# its 5-byte header that bounds a ClientHello sent in one record.  A hello
# split over several records is rare enough that it is taken as no name.
MAX_RECORD = 16384
MAX_HELLO = MAX_RECORD + 5


@attrs.frozen
class NeedMore:
    """
    Not enough bytes yet to tell.
    """


@attrs.frozen
class NotTLS:
    """
    The bytes are not a TLS ClientHello (or not one this parser reads).

    @ivar why: what was wrong, for the log.
    """

    why: str


@attrs.frozen
class Hello:
    """
    A ClientHello.

    @ivar serverName: the host name of its C{server_name} extension,
        lowercase, or L{None} if it sent none.
    """

    serverName: str | None


NEED_MORE = NeedMore()


def _u16(data: bytes, at: int) -> int:
    return (data[at] << 8) | data[at + 1]


def readClientHello(data: bytes) -> NeedMore | NotTLS | Hello:
    """
    Read the server name from the first bytes of a connection.
    """
    if len(data) < 5:
        if data and data[0] != 0x16:
            return NotTLS("not a TLS handshake record")
        return NEED_MORE
    if data[0] != 0x16 or data[1] != 3:
        return NotTLS("not a TLS handshake record")
    length = _u16(data, 3)
    if length > MAX_RECORD:
        return NotTLS(f"a record of {length} bytes is longer than TLS allows")
    if len(data) < 5 + length:
        return NEED_MORE
    body = data[5:5 + length]
    if len(body) < 4 or body[0] != 1:
        return NotTLS("not a ClientHello")
    helloLength = (body[1] << 16) | (body[2] << 8) | body[3]
    if helloLength + 4 > len(body):
        return NotTLS("a ClientHello split over records")
    try:
        return Hello(_serverName(body[4:4 + helloLength]))
    except (IndexError, ValueError) as e:
        return NotTLS(f"a malformed ClientHello ({e})")


def _serverName(hello: bytes) -> str | None:
    """
    The server name in a ClientHello's body.

    @raise IndexError: it is cut short.
    @raise ValueError: it is malformed.
    """
    at = 2 + 32  # version, random
    at += 1 + hello[at]  # session id
    at += 2 + _u16(hello, at)  # cipher suites
    at += 1 + hello[at]  # compression methods
    if at == len(hello):
        return None  # no extensions at all
    end = at + 2 + _u16(hello, at)
    if end > len(hello):
        raise ValueError("extensions run past the hello")
    at += 2
    while at + 4 <= end:
        kind, size = _u16(hello, at), _u16(hello, at + 2)
        at += 4
        if at + size > end:
            raise ValueError("an extension runs past the hello")
        if kind == 0:
            return _hostName(hello[at:at + size])
        at += size
    return None


def _hostName(extension: bytes) -> str | None:
    listEnd = 2 + _u16(extension, 0)
    at = 2
    while at + 3 <= listEnd:
        kind, size = extension[at], _u16(extension, at + 1)
        at += 3
        name = extension[at:at + size]
        if len(name) != size:
            raise ValueError("a server name runs past its extension")
        if kind == 0:
            try:
                text = name.decode("ascii")
            except UnicodeDecodeError:
                raise ValueError("a server name that is not ASCII") from None
            return text.lower().rstrip(".") or None
        at += size
    return None
