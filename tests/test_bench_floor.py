"""
The benchmark's floors (C{bench/lbbench/floor.py}): bare relays on lbtwist's
reactor that lbtwist is measured against, run here on the test reactor
against real backends over 127.0.0.1.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.trial.unittest import TestCase

from .httphelpers import RecordingBackend, waitFor
from .support import inThread, reactor
from .test_integration import AfterEOF, halfCloseRequest

# The harness is a script directory, not an installed package.
BENCH = str(Path(__file__).resolve().parent.parent / "bench")
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

from lbbench.floor import FloorFactory, HTTPClient, TCPClient  # noqa: E402


def _exchange(sock: socket.socket, request: bytes) -> bytes:
    """
    Send C{request} on C{sock} and read until a response head has come.
    """
    sock.sendall(request)
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    return answer


class FloorTests(TestCase):
    """
    A floor relays as an honest relay does, so that what it measures is the
    cost of a relay and not of a shortcut.
    """

    timeout = 20

    def setUp(self) -> None:
        if not hasattr(reactor, "dialTCP"):
            raise self.skipTest("the floors run on lbtwist's reactor (trial --reactor=lbtwist)")

    def listen(self, factory: Any) -> int:
        """
        Listen with C{factory} on 127.0.0.1 until the test is over; its port.
        """
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return int(port.getHost().port)

    def floor(self, mode: str, backend: int) -> int:
        """
        Start a floor in C{mode} in front of the backend on port C{backend}.
        """
        return self.listen(FloorFactory(mode, [backend], reactor))

    @inlineCallbacks
    def test_tcpHalfClose(self) -> Any:
        """
        A client of the TCP floor that shuts down its write side after its
        request gets the whole answer, which its backend sends only after
        that FIN.
        """
        backend = self.listen(Factory.forProtocol(AfterEOF))
        answer = yield inThread(halfCloseRequest, self.floor("tcp", backend), b"ping")
        self.assertEqual(answer, b"PING" * 20000)

    @inlineCallbacks
    def test_httpHalfClose(self) -> Any:
        """
        A client of the HTTP floor that shuts down its write side after its
        request gets the response, and then the floor closes the connection.
        """
        backend = RecordingBackend("a")
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(backend.port.stopListening)
        port = self.floor("http", backend.port.getHost().port)
        answer = yield inThread(halfCloseRequest, port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertEqual([r.url for r in backend.requests], [b"/"])

    @inlineCallbacks
    def noDelays(self, mode: str, kind: type[Any], backend: int) -> Any:
        """
        Relay one request through a floor in C{mode} (whose clients are
        C{kind}) to the backend on port C{backend}, and say whether each
        socket of the relayed connection, the client's and the backend's,
        had C{TCP_NODELAY}; the client's close closes both.
        """
        clients: list[Any] = []

        class Recorded(kind):  # type: ignore[valid-type,misc]
            def connectionMade(self) -> None:
                clients.append(self)
                super().connectionMade()

        factory = FloorFactory(mode, [backend], reactor)
        factory.protocol = Recorded
        port = self.listen(factory)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            answer = yield inThread(_exchange, sock, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
            [client] = clients
            sides = (client.transport, client.peer.transport)
            noDelays = [bool(side.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
                        for side in sides]
        closed = yield waitFor(lambda: all(side.disconnected for side in sides))
        self.assertTrue(closed)
        return noDelays

    @inlineCallbacks
    def test_noDelay(self) -> Any:
        """
        Both sockets of a relayed connection, the client's and the
        backend's, have Nagle's algorithm off, as lbtwist's have: a floor
        that held back the last segment of a response (for the peer's
        delayed ACK, up to 40 ms) would be slower than the relay it stands
        for, in each mode.
        """
        backend = RecordingBackend("a")
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(backend.port.stopListening)
        tcp = yield self.noDelays("tcp", TCPClient, backend.port.getHost().port)
        http = yield self.noDelays("http", HTTPClient, backend.port.getHost().port)
        self.assertEqual({"tcp": tcp, "http": http},
                         {"tcp": [True, True], "http": [True, True]})
