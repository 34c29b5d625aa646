"""
Tests for L{lbtwist.reactor}.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.reactor import LeanEPollReactor, installIfUnchosen


class Reader(FileDescriptor):
    """
    A readable end of a socket pair that records what it reads.
    """

    def __init__(self, reactor: Any, sock: socket.socket, fail: bool = False) -> None:
        super().__init__(reactor)
        self.sock = sock
        self.fail = fail
        self.read: list[bytes] = []

    def fileno(self) -> int:
        return self.sock.fileno()

    def doRead(self) -> None:
        data = self.sock.recv(100)
        if self.fail:
            raise RuntimeError("boom")
        self.read.append(data)

    def connectionLost(self, reason: Any) -> None:
        pass


class LeanEPollReactorTests(SynchronousTestCase):
    """
    The lean reactor dispatches I/O events like the epoll reactor.
    """

    def setUp(self) -> None:
        self.reactor = LeanEPollReactor()
        self.addCleanup(self.reactor._poller.close)
        self.pairs = [socket.socketpair() for _ in range(2)]
        for a, b in self.pairs:
            self.addCleanup(a.close)
            self.addCleanup(b.close)

    def test_dispatch(self) -> None:
        """
        A readable descriptor has C{doRead} called in one iteration.
        """
        a, b = self.pairs[0]
        reader = Reader(self.reactor, a)
        self.reactor.addReader(reader)
        b.send(b"hello")
        self.reactor.doIteration(1)
        self.assertEqual(reader.read, [b"hello"])

    def test_errorLogged(self) -> None:
        """
        An exception from one descriptor is logged, and the others in the
        same iteration are still served.
        """
        bad = Reader(self.reactor, self.pairs[0][0], fail=True)
        good = Reader(self.reactor, self.pairs[1][0])
        self.reactor.addReader(bad)
        self.reactor.addReader(good)
        self.pairs[0][1].send(b"x")
        self.pairs[1][1].send(b"y")
        self.reactor.doIteration(1)
        self.assertEqual(good.read, [b"y"])
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)

    def test_notWhenChosen(self) -> None:
        """
        When a reactor is already installed (here, trial's), it is kept.
        """
        from twisted.internet import reactor

        self.assertFalse(installIfUnchosen())
        from twisted.internet import reactor as after

        self.assertIs(after, reactor)
