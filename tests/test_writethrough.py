"""
Tests for L{lbtwist.writethrough}.
"""

from __future__ import annotations

import _socket
import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import inlineCallbacks
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionAborted
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.leantcp import LeanTransport
from lbtwist.reactor import MAX_EVENTS, LeanEPollReactor
from lbtwist.writethrough import (
    HOLD_BELOW,
    _idle,
    close,
    halfClose,
    writeLast,
    writeNow,
    writeThrough,
)

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


class HeldWriteTests(SynchronousTestCase):
    """
    On a lean connection of a L{LeanEPollReactor}, L{writeNow} holds the
    bytes until the reactor's pass ends, then sends what the connection was
    given in one C{send}, in the order it was written, ahead of anything
    Twisted queued after it.
    """

    def setUp(self) -> None:
        self.reactor = LeanEPollReactor()
        self.addCleanup(self.reactor._poller.close)

    def connect(self, sendBuffer: int | None = None,
                reactor: Any = None) -> tuple[LeanTransport, socket.socket]:
        """
        A lean connection of C{self.reactor} (or C{reactor}) over loopback
        TCP (with a small send buffer if asked), and its peer's socket.
        """
        with socket.create_server(("127.0.0.1", 0)) as server:
            peer = socket.create_connection(server.getsockname(), timeout=5)
            mine, address = server.accept()
        self.addCleanup(peer.close)
        peer.setblocking(False)
        if sendBuffer is not None:
            mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sendBuffer)
        sock = _socket.socket(socket.AF_INET, socket.SOCK_STREAM, 0, mine.detach())
        sock.setblocking(False)
        protocol = Protocol()
        transport = LeanTransport.dialled(sock, protocol, reactor or self.reactor, address)
        protocol.makeConnection(transport)
        self.addCleanup(lambda: transport.connected and transport.abortConnection())
        return transport, peer

    def pending(self, peer: socket.socket) -> bytes:
        """
        What C{peer} has received so far (nothing, without waiting).
        """
        chunks: list[bytes] = []
        while True:
            try:
                chunk = peer.recv(1 << 20)
            except (BlockingIOError, ConnectionResetError):
                return b"".join(chunks)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def receive(self, peer: socket.socket, size: int) -> bytes:
        """
        Run the reactor until C{peer} has received C{size} bytes (or the
        connection ended), and give them.
        """
        received = b""
        for _ in range(500):
            self.reactor.doIteration(0.01)
            received += self.pending(peer)
            if len(received) >= size:
                break
        return received

    def ended(self, peer: socket.socket) -> bool:
        """
        Run the reactor until C{peer} reads the end of the stream (with
        nothing before it); say whether it did.
        """
        for _ in range(500):
            self.reactor.doIteration(0.01)
            try:
                return peer.recv(100) == b""
            except BlockingIOError:
                pass
        return False

    def test_heldToThePassEnd(self) -> None:
        """
        What is written during a pass is on the wire when the pass ends,
        not before, in one C{send}; and nothing waits in Twisted's queue.
        """
        transport, peer = self.connect()
        sends: list[bytes] = []
        sock = transport.socket

        class Counting:
            def send(self, data: bytes, flags: int = 0) -> int:
                sends.append(data)
                return sock.send(data, flags)

            def __getattr__(self, name: str) -> Any:
                return getattr(sock, name)

        transport.socket = Counting()  # type: ignore[assignment]
        self.assertTrue(writeNow(transport, b"GET / HTTP/1.1\r\n"))
        self.assertTrue(writeNow(transport, b"\r\n"))
        self.assertEqual(self.pending(peer), b"")
        self.assertEqual(self.reactor.holders, [transport])
        self.reactor.doIteration(0)
        self.assertEqual(sends, [b"GET / HTTP/1.1\r\n\r\n"])
        self.assertEqual(self.receive(peer, 18), b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual((transport.held, self.reactor.holders, transport._tempDataLen), (None, [], 0))

    def test_largeNotHeld(self) -> None:
        """
        A write of L{HOLD_BELOW} bytes or more is not held, nor one that
        makes what is held as large: it goes at once, after whatever was
        held on the connection.
        """
        transport, peer = self.connect()
        large = b"x" * HOLD_BELOW
        self.assertTrue(writeNow(transport, large))
        self.assertEqual((transport.held, self.reactor.holders), (None, []))
        self.assertEqual(self.pending(peer), large)
        writeNow(transport, b"head ")
        self.assertTrue(writeNow(transport, large))
        self.assertIsNone(transport.held)
        self.assertEqual(self.pending(peer), b"head " + large)
        # Small writes that come to as much together are not held either.
        writeNow(transport, large[:-10])
        self.assertEqual(self.pending(peer), b"")
        writeNow(transport, b"0123456789")
        self.assertIsNone(transport.held)
        self.assertEqual(self.pending(peer), large[:-10] + b"0123456789")

    def test_sentBeforeThePoll(self) -> None:
        """
        Bytes written between passes (by a timed call) go before the
        reactor polls, not after whatever event ends the wait.
        """
        transport, peer = self.connect()
        polled: list[tuple[list[Any], int]] = []
        reactor = self.reactor

        class Watched:
            def __init__(self, poller: Any) -> None:
                self.poller = poller

            def poll(self, timeout: float, maxEvents: int) -> Any:
                polled.append((list(reactor.holders), maxEvents))
                return self.poller.poll(timeout, maxEvents)

            def __getattr__(self, name: str) -> Any:
                return getattr(self.poller, name)

        reactor._poller = Watched(reactor._poller)  # type: ignore[assignment]
        writeNow(transport, b"timed out")
        self.reactor.doIteration(0)
        self.assertEqual(polled[0], ([], MAX_EVENTS))
        self.assertEqual(self.pending(peer), b"timed out")

    def test_twistedQueueAfter(self) -> None:
        """
        Bytes given to the transport's own C{write} after held ones, and
        any written after those, arrive after the held ones: Twisted's
        C{doWrite} sends the held bytes first, even within the pass.
        """
        transport, peer = self.connect()
        writeNow(transport, b"one ")
        transport.write(b"two ")
        self.assertFalse(writeNow(transport, b"three"))
        transport.doWrite()
        self.assertEqual(transport.held, None)
        self.assertEqual(self.receive(peer, 13), b"one two three")

    def test_restQueuedFirst(self) -> None:
        """
        What the kernel does not take of the held bytes queues ahead of
        what Twisted queued after them, C{beforeQueue} is called first,
        and all of it arrives in order.
        """
        transport, peer = self.connect(sendBuffer=4096)
        filled = 0
        while True:
            # (The socket filled around Twisted, which queues nothing.)
            try:
                filled += transport.socket.send(b"f" * 65536)
            except BlockingIOError:
                break
        calls: list[int] = []
        writeNow(transport, b"held", beforeQueue=lambda: calls.append(transport._tempDataLen))
        self.assertEqual(transport.held, b"held")
        transport.write(b"after")
        self.reactor.sendHeld()
        self.assertEqual(calls, [5])
        self.assertEqual((transport.held, transport._tempDataBuffer), (None, [b"held", b"after"]))
        received = self.receive(peer, filled + 9)
        self.assertEqual((len(received), received[filled:]), (filled + 9, b"heldafter"))

    def test_withFlags(self) -> None:
        """
        Bytes written with C{send} flags (the last before a FIN) go at
        once when nothing is held, and after what is when something is.
        """
        transport, peer = self.connect()
        writeLast(transport, b"last")
        halfClose(transport)
        self.assertEqual(self.pending(peer), b"last")
        other, otherPeer = self.connect()
        writeNow(other, b"held ")
        writeLast(other, b"last")
        self.assertEqual((other.held, other._tempDataLen), (None, 0))
        halfClose(other)
        self.assertEqual(self.receive(otherPeer, 9), b"held last")
        self.assertTrue(self.ended(otherPeer))

    def test_closeAfterHeld(self) -> None:
        """
        A close or half-close asked for after held bytes sends them first.
        """
        for end in (halfClose, close):
            transport, peer = self.connect()
            writeNow(transport, b"bye")
            end(transport)
            self.assertEqual(self.receive(peer, 3), b"bye")
            self.assertTrue(self.ended(peer))

    def test_lostMeanwhile(self) -> None:
        """
        Held bytes of a connection lost before the pass ends are dropped,
        as Twisted drops its queue.
        """
        transport, peer = self.connect()
        writeNow(transport, b"never")
        transport.connectionLost(Failure(ConnectionAborted()))
        self.reactor.doIteration(0)
        self.assertEqual((transport.held, self.reactor.holders), (None, []))
        self.assertEqual(self.pending(peer), b"")

    def test_otherReactors(self) -> None:
        """
        On a reactor that does not hold writes, a lean connection's bytes
        go at once.
        """
        other = EPollReactor()
        self.addCleanup(other._poller.close)
        transport, peer = self.connect(reactor=other)
        self.assertIsNone(transport.holders)
        self.assertTrue(writeNow(transport, b"now"))
        self.assertEqual(self.pending(peer), b"now")
