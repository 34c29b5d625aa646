"""
Tests for L{lbtwist.writethrough}.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.writethrough import writeThrough

from .support import inThread, reactor


def _readAll(s: socket.socket, size: int) -> bytes:
    chunks = []
    total = 0
    while total < size:
        chunk = s.recv(1 << 20)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    return b"".join(chunks)


class WriteThroughTests(TestCase):
    """
    Bytes go straight to the socket when nothing is queued, and queue in
    order behind anything that is.
    """

    timeout = 20

    def connection(self) -> tuple[tcp.Connection, socket.socket]:
        """
        A Twisted connection over one end of a socket pair with a small send
        buffer, and the other end.
        """
        mine, theirs = socket.socketpair()
        mine.setblocking(False)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        conn = tcp.Connection(mine, Protocol(), reactor)
        conn.protocol.makeConnection(conn)
        conn.connected = True

        def close() -> None:
            conn.stopWriting()
            mine.close()
            theirs.close()

        self.addCleanup(close)
        return conn, theirs

    def test_direct(self) -> None:
        """
        A small write with nothing queued is on the wire at once, with no
        reactor pass and nothing buffered.
        """
        conn, theirs = self.connection()
        writeThrough(conn)(b"hello")
        self.assertEqual(conn._tempDataLen, 0)
        self.assertEqual(theirs.recv(100), b"hello")

    @inlineCallbacks
    def test_orderUnderPressure(self) -> Any:
        """
        When the kernel takes only part of a write, the rest and every later
        write queue in order, and all of it arrives.
        """
        conn, theirs = self.connection()
        write = writeThrough(conn)
        chunks = [bytes([65 + i]) * 200_000 for i in range(8)]
        for chunk in chunks:
            write(chunk)
        self.assertGreater(conn._tempDataLen, 0)
        received = yield inThread(_readAll, theirs, sum(map(len, chunks)))
        self.assertEqual(received, b"".join(chunks))


class FallbackTests(SynchronousTestCase):
    """
    Transports that are not sockets keep their own C{write}.
    """

    def test_stringTransport(self) -> None:
        """
        A test double is written to through its C{write}.
        """
        transport = StringTransport()
        writeThrough(transport)(b"x")
        self.assertEqual(transport.value(), b"x")
