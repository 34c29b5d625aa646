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

from lbtwist.writethrough import _idle, close, halfClose, writeLast, writeNow, writeThrough

from .support import inThread, plainTCPTransport, reactor


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


class SocketPairMixin:
    """
    Gives tests a Twisted connection over a real socket pair.
    """

    addCleanup: Any

    def connection(self, overTCP: bool = False) -> tuple[tcp.Connection, socket.socket]:
        """
        A Twisted connection over one end of a socket pair with a small send
        buffer (or of a TCP connection over loopback, C{TCP_NODELAY} on, as
        a relay's), and the other end.
        """
        if overTCP:
            with socket.create_server(("127.0.0.1", 0)) as server:
                theirs = socket.create_connection(server.getsockname(), timeout=5)
                mine, _ = server.accept()
            mine.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            mine, theirs = socket.socketpair()
        mine.setblocking(False)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        conn = tcp.Connection(mine, Protocol(), reactor)
        conn.protocol.makeConnection(conn)
        conn.connected = True

        def close() -> None:
            conn.stopReading()
            conn.stopWriting()
            mine.close()
            theirs.close()

        self.addCleanup(close)
        return conn, theirs


class WriteThroughTests(SocketPairMixin, TestCase):
    """
    Bytes go straight to the socket when nothing is queued, and queue in
    order behind anything that is.
    """

    timeout = 20

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


    @inlineCallbacks
    def test_beforeQueue(self) -> Any:
        """
        C{beforeQueue} is called before each write that queues, and never
        while every write goes straight to the socket: a relay registers
        its producer then, not for every connection.
        """
        conn, theirs = self.connection()
        calls: list[int] = []
        write = writeThrough(conn, lambda: calls.append(conn._tempDataLen))
        write(b"small")
        self.assertEqual(calls, [])
        self.assertEqual(theirs.recv(100), b"small")
        chunks = [bytes([65 + i]) * 200_000 for i in range(3)]
        for chunk in chunks:
            write(chunk)
        # The first chunk was cut short (nothing queued before it), the
        # others queued behind it.
        self.assertEqual(len(calls), 3)
        self.assertEqual(calls[0], 0)
        self.assertGreater(calls[1], 0)
        received = yield inThread(_readAll, theirs, sum(map(len, chunks)))
        self.assertEqual(received, b"".join(chunks))


class WriteLastTests(SocketPairMixin, TestCase):
    """
    The last bytes before a half-close go to the socket held for the FIN
    (C{MSG_MORE}), and arrive with it; what the kernel does not take queues.
    """

    timeout = 20

    def test_withTheFin(self) -> None:
        """
        With nothing queued, the bytes go to the socket at once, held there
        until the half-close that follows sends them with the FIN; the peer
        reads them, then the end.
        """
        conn, theirs = self.connection(overTCP=True)
        conn.startReading()
        writeLast(conn, b"last bytes")
        self.assertEqual(conn._tempDataLen, 0)
        # Held by the kernel for the FIN (C{MSG_MORE}): not sent yet.
        theirs.setblocking(False)
        self.assertRaises(BlockingIOError, theirs.recv, 100)
        theirs.setblocking(True)
        halfClose(conn)
        theirs.settimeout(5)
        self.assertEqual(_readAll(theirs, 10), b"last bytes")
        self.assertEqual(theirs.recv(100), b"")

    @inlineCallbacks
    def test_underPressure(self) -> Any:
        """
        What the kernel does not take queues, in order, behind what it did;
        the half-close waits for the queue, and all of it arrives.
        """
        conn, theirs = self.connection()
        conn.startReading()
        data = b"x" * 300_000
        writeLast(conn, data)
        self.assertGreater(conn._tempDataLen, 0)
        halfClose(conn)
        received = yield inThread(_readAll, theirs, len(data) + 1)
        self.assertEqual(received, data)

    def test_stringTransport(self) -> None:
        """
        A transport that is not a socket is written to through its C{write}.
        """
        transport = StringTransport()
        writeLast(transport, b"x")
        self.assertEqual(transport.value(), b"x")


class HalfCloseTests(SocketPairMixin, TestCase):
    """
    Half-closes and closes go out at once when nothing is queued.
    """

    timeout = 20

    def test_halfCloseNow(self) -> None:
        """
        With nothing queued the FIN is sent at once, and the connection goes
        on reading.
        """
        conn, theirs = self.connection()
        conn.startReading()
        halfClose(conn)
        self.assertTrue(conn._writeDisconnected)
        self.assertEqual(theirs.recv(100), b"")
        self.assertTrue(conn.connected)

    @inlineCallbacks
    def test_halfCloseAfterQueue(self) -> Any:
        """
        With bytes queued, the FIN follows them.
        """
        conn, theirs = self.connection()
        data = b"z" * 1_000_000
        writeThrough(conn)(data)
        halfClose(conn)
        self.assertFalse(conn._writeDisconnected)
        received = yield inThread(_readAll, theirs, len(data) + 1)
        self.assertEqual(received, data)

    def test_closeNow(self) -> None:
        """
        With nothing queued, C{close} ends the connection without waiting
        for the reactor.
        """
        conn, theirs = self.connection()
        lost: list[object] = []
        conn.protocol.connectionLost = lost.append  # type: ignore[method-assign]
        close(conn)
        self.assertEqual(len(lost), 1)
        self.assertEqual(theirs.recv(100), b"")


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

    def test_beforeQueueAtOnce(self) -> None:
        """
        A transport written only through its C{write} calls C{beforeQueue}
        at once: everything it is given may queue.
        """
        transport = StringTransport()
        calls: list[bytes] = []
        write = writeThrough(transport, lambda: calls.append(transport.value()))
        self.assertEqual(calls, [b""])
        write(b"x")
        self.assertEqual((calls, transport.value()), ([b""], b"x"))


class _TakingSocket:
    """
    A socket double that takes whatever is sent to it.
    """

    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def send(self, data: bytes, flags: int = 0) -> int:
        self.sent.append(data)
        return len(data)


class WriteNowIdleTests(SynchronousTestCase):
    """
    L{writeNow} writes its own copy of L{_idle}'s test (it is every relayed
    response's path): the two must agree on every condition.
    """

    def test_sameAsIdle(self) -> None:
        """
        On a plain TCP connection, L{writeNow} sends to the socket exactly
        when L{_idle} says nothing is queued and the connection writes:
        not with bytes waiting (in either buffer), while closing or
        half-closing, once disconnected, nor under TLS.
        """
        busy: dict[str, dict[str, Any]] = {
            "temp buffer": {"_tempDataLen": 3},
            "buffer": {"dataBuffer": b"abc"},
            "closing": {"disconnecting": True},
            "half-closing": {"_writeDisconnecting": True},
            "disconnected": {"connected": False},
            "TLS": {"TLS": True},
        }
        seen = {}
        for name, state in [("idle", {}), *busy.items()]:
            sock = _TakingSocket()
            queued: list[bytes] = []
            server = plainTCPTransport(sock, queued.append, **state)
            idle = _idle(server)
            seen[name] = (idle, writeNow(server, b"x"), sock.sent, queued)
        self.assertEqual(seen, {
            "idle": (True, True, [b"x"], []),
            **{name: (False, False, [], [b"x"]) for name in busy},
        })
