"""The least a relay on Twisted does: the floor lbtwist's speed is measured against.

Usage: ``python floor.py tcp|http PORT BACKEND_PORT [BACKEND_PORT ...]`` (loopback only).

Both run on lbtwist's own reactor (:mod:`lbtwist.reactor`) with its lean transports,
``dialTCP``, write-through (:mod:`lbtwist.writethrough`) and ``TCP_NODELAY`` as lbtwist
sets it, so the gap between a floor and lbtwist in the same run is what lbtwist's
features and structure cost, and the gap between a floor and HAProxy is what Twisted and
CPython cost.  Neither has a feature:

- ``tcp``: accept, dial a backend (round-robin per connection), relay both ways with
  write-through and Twisted's producers, pass a half-close on (a client that shuts its
  write side gets its answer), close both.  No timeouts, no limits, no counters.
- ``http``: the same, with one backend connection per client for its whole life; each
  request head is parsed by llhttp (httptools), its hop-by-hop fields dropped and
  ``X-Forwarded-For`` added, and each response head parsed and rebuilt likewise.  No
  balancing per request, no pooling, no timeouts, no retries, no pipelining, no metrics,
  and bodies relayed as they come (the bench sends GETs only).

The reactor is installed by :func:`main` only, so that the tests can run a floor on theirs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from itertools import cycle
from typing import Any

from httptools import HttpRequestParser, HttpResponseParser
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer  # type: ignore[import-untyped]

from lbtwist.tcp import setNoDelay
from lbtwist.writethrough import close, halfClose, writeThrough

LOOPBACK = "127.0.0.1"
# Dropped from heads both ways, as a proxy must (RFC 9110 7.6.1).
HOP_BY_HOP = frozenset((b"connection", b"keep-alive", b"proxy-connection", b"te",
                        b"transfer-encoding", b"upgrade", b"trailer"))


class FloorFactory(Factory):
    """The clients of a floor: C{tcp} or C{http}, relayed to C{backends} (ports) in turn."""

    def __init__(self, mode: str, backends: Sequence[int], reactor: Any) -> None:
        self.protocol = TCPClient if mode == "tcp" else HTTPClient
        self.ports = cycle(backends)
        self.reactor = reactor


@implementer(IHalfCloseableProtocol)
class _Side(Protocol):
    """One side of a relay: writes through to its socket; closes its peer when it goes.

    A side that sends FIN passes it on (as lbtwist and HAProxy do: a client that shuts
    its write side still gets its answer), and both close once both directions are done.
    """

    # A lean TCP transport (registers producers, pauses, half-closes).
    transport: Any
    peer: _Side | None = None
    readDone = False

    def connectionMade(self) -> None:
        # Nagle off, as lbtwist has it: the last segment of a response is not held back
        # for the peer's delayed ACK (up to 40 ms).
        setNoDelay(self.transport)
        self.send = writeThrough(self.transport)

    def joinTo(self, peer: _Side) -> None:
        self.peer = peer
        self.transport.registerProducer(peer.transport, True)

    def readConnectionLost(self) -> None:
        self.readDone = True
        peer = self.peer
        if peer is None:
            self.transport.loseConnection()
        elif peer.readDone:
            close(self.transport)
            close(peer.transport)
        else:
            # Nothing more comes from here: the peer's close must not wait on us.
            peer.transport.unregisterProducer()
            halfClose(peer.transport)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        if self.peer is not None:
            close(self.peer.transport)
            self.peer = None


class TCPClient(_Side):
    """A client of the TCP floor: dials its backend, then relays bytes as they come."""

    def connectionMade(self) -> None:
        _Side.connectionMade(self)
        self.transport.pauseProducing()
        factory = self.factory
        factory.reactor.dialTCP(LOOPBACK, next(factory.ports), TCPBackend(), 5.0,
                                self._joined, lambda reason: self.transport.loseConnection())

    def _joined(self, backend: _Side) -> None:
        backend.joinTo(self)
        self.joinTo(backend)
        self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        self.peer.send(data)  # type: ignore[union-attr]


class TCPBackend(_Side):
    """The backend side of the TCP floor."""

    def dataReceived(self, data: bytes) -> None:
        self.peer.send(data)  # type: ignore[union-attr]


def _head(first: bytes, fields: list[tuple[bytes, bytes]], extra: bytes = b"") -> bytes:
    """A head: its first line, the fields that are not hop-by-hop, C{extra}, the blank line."""
    parts = [first]
    for name, value in fields:
        if name.lower() not in HOP_BY_HOP:
            parts.append(name + b": " + value + b"\r\n")
    parts.append(extra)
    parts.append(b"\r\n")
    return b"".join(parts)


class _Parsed:
    """What both sides of the HTTP floor do with their bytes: llhttp parses them, and
    collects the head's fields (C{self.parser} and C{self.fields} are the side's)."""

    parser: Any
    fields: list[tuple[bytes, bytes]]

    def dataReceived(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))


class HTTPClient(_Parsed, TCPClient):
    """A client of the HTTP floor: its requests' heads rebuilt, on one backend connection."""

    def connectionMade(self) -> None:
        self.parser = HttpRequestParser(self)
        self.fields: list[tuple[bytes, bytes]] = []
        self.url = b""
        self.forwarded = b"X-Forwarded-For: " + self.transport.getPeer().host.encode() + b"\r\n"
        self.closeAfter = False
        # A request went to the backend, and its response is not over.
        self.waiting = False
        self.transport.pauseProducing()
        _Side.connectionMade(self)
        factory = self.factory
        factory.reactor.dialTCP(LOOPBACK, next(factory.ports), HTTPBackend(), 5.0,
                                self._joined, lambda reason: self.transport.loseConnection())

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.closeAfter = not parser.should_keep_alive()
        self.waiting = True
        self.peer.send(_head(  # type: ignore[union-attr]
            parser.get_method() + b" " + self.url + b" HTTP/1.1\r\n", self.fields, self.forwarded))
        self.fields = []
        self.url = b""

    def on_body(self, body: bytes) -> None:
        self.peer.send(body)  # type: ignore[union-attr]

    def responded(self) -> None:
        self.waiting = False
        if self.closeAfter or self.readDone:
            close(self.transport)

    def readConnectionLost(self) -> None:
        # A client that is done sending still gets the answer it waits for, then a close.
        self.readDone = True
        if not self.waiting:
            close(self.transport)


class HTTPBackend(_Parsed, _Side):
    """The backend side of the HTTP floor: response heads rebuilt, bodies relayed."""

    def connectionMade(self) -> None:
        _Side.connectionMade(self)
        self.parser = HttpResponseParser(self)
        self.fields: list[tuple[bytes, bytes]] = []
        self.reason = b""
        self.held: bytes | None = None

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        closing = b"Connection: close\r\n" if self.peer.closeAfter else b""  # type: ignore
        self.held = _head(b"HTTP/1.1 %d %s\r\n" % (status, self.reason), self.fields, closing)
        self.fields = []
        self.reason = b""

    def on_body(self, body: bytes) -> None:
        held, self.held = self.held, None
        self.peer.send(body if held is None else held + body)  # type: ignore[union-attr]

    def on_message_complete(self) -> None:
        held, self.held = self.held, None
        if held is not None:
            self.peer.send(held)  # type: ignore[union-attr]
        self.peer.responded()  # type: ignore[union-attr]


def main(argv: list[str]) -> None:
    from lbtwist import reactor as lean

    reactor = lean.install()
    mode, port, backends = argv[0], int(argv[1]), [int(p) for p in argv[2:]]
    reactor.listenTCP(port, FloorFactory(mode, backends, reactor), backlog=4096,
                      interface=LOOPBACK)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
