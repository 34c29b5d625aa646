"""
Tests for L{lbtwist.reactor}.
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet.abstract import FileDescriptor
from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone, ConnectionFdescWentAway, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableDescriptor
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from lbtwist.reactor import STALL, LeanEPollReactor, installIfUnchosen


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

    def test_polledAtIsThePassTime(self) -> None:
        """
        C{polledAt} is when the pass's poll returned: what handles the
        pass's events reads that time, however long the handling takes.
        """
        a, b = self.pairs[0]
        clock = [1000.0]
        seen: list[float] = []
        reactor = self.reactor

        class Slow(Reader):
            def doRead(self) -> None:
                super().doRead()
                seen.append(reactor.polledAt)
                clock[0] += 0.25

        reactor.seconds = lambda: clock[0]  # type: ignore[method-assign]
        reactor.addReader(Slow(reactor, a))
        b.send(b"one")
        reactor.doIteration(1)
        clock[0] = 1010.0
        b.send(b"two")
        reactor.doIteration(1)
        self.assertEqual(seen, [1000.0, 1010.0])
        self.assertEqual(reactor.polledAt, 1010.0)

    def test_readToEnd(self) -> None:
        """
        A descriptor whose peer sent its FIN has its C{doReadToEnd} called
        where it has one (the data and the FIN arrived together), and
        C{doRead} where it has none; one with data only, C{doRead}.
        """
        class Ending(Reader):
            def doReadToEnd(self) -> None:
                self.read.append(b"to end: " + self.sock.recv(100))

        (a, b), (c, d) = self.pairs
        e, f = socket.socketpair()
        self.addCleanup(e.close)
        self.addCleanup(f.close)
        ending = Ending(self.reactor, a)
        plain = Reader(self.reactor, c)
        busy = Ending(self.reactor, e)
        for reader in (ending, plain, busy):
            self.reactor.addReader(reader)
        b.send(b"last")
        b.shutdown(socket.SHUT_WR)
        d.send(b"last")
        d.shutdown(socket.SHUT_WR)
        f.send(b"more")
        self.reactor.doIteration(1)
        self.assertEqual((ending.read, plain.read, busy.read),
                         ([b"to end: last"], [b"last"], [b"more"]))

    def test_readToEndAfterWriting(self) -> None:
        """
        A reader that was watched for writing meanwhile (a relay's socket
        whose queue filled and drained), or still is, is still watched for
        its peer's FIN: its C{doReadToEnd} is called, not C{doRead}.
        """
        class Ending(Reader):
            def doReadToEnd(self) -> None:
                self.read.append(b"to end: " + self.sock.recv(100))

            def doWrite(self) -> None:
                pass

        (a, b), (c, d) = self.pairs
        drained = Ending(self.reactor, a)
        writing = Ending(self.reactor, c)
        for reader in (drained, writing):
            self.reactor.addReader(reader)
            self.reactor.addWriter(reader)
        self.reactor.removeWriter(drained)
        for peer in (b, d):
            peer.send(b"last")
            peer.shutdown(socket.SHUT_WR)
        self.reactor.doIteration(1)
        self.assertEqual((drained.read, writing.read), ([b"to end: last"], [b"to end: last"]))

    def test_readsBeforeTimersAfterStall(self) -> None:
        """
        A pass that begins more than L{STALL} seconds after the last poll
        (the process was stopped, or stuck in a long collection) reads what
        arrived meanwhile before it runs the timed calls that fell due: a
        timeout finds the answer already read.  Without a stall, a pass runs
        its timed calls without polling first, as Twisted's does.
        """
        a, b = self.pairs[0]
        order: list[str] = []

        class Recording(Reader):
            def doRead(self) -> None:
                super().doRead()
                order.append("read")

        self.reactor.addReader(Recording(self.reactor, a))
        b.send(b"answer")
        self.reactor.callLater(0, order.append, "timer")
        self.reactor.polledAt = self.reactor.seconds()
        self.reactor.runUntilCurrent()
        self.assertEqual(order, ["timer"])
        self.reactor.callLater(0, order.append, "timer")
        self.reactor.polledAt = self.reactor.seconds() - STALL - 1
        self.reactor.runUntilCurrent()
        self.assertEqual(order, ["timer", "read", "timer"])

    def test_stoppedDuringThePoll(self) -> None:
        """
        A poll that ends long after its timeout with nothing (the process
        was stopped in it: resumed, Linux ends the poll as timed out,
        whatever came meanwhile) is made again without waiting, in the same
        pass, so what arrived is read before the timed calls that fell due
        run.  A poll that ends with nothing on time is not made again.
        """
        a, b = self.pairs[0]
        reader = Reader(self.reactor, a)
        self.reactor.addReader(reader)
        b.send(b"answer")
        clock = [1000.0]
        polls: list[float] = []
        real = self.reactor._poller

        class StoppedPoller(RecordingPoller):
            def poll(self, timeout: float, maxevents: int) -> Any:
                polls.append(timeout)
                if len(polls) == 1:
                    clock[0] += timeout + stalledFor
                    return []
                return real.poll(timeout, maxevents)

        self.reactor._poller = StoppedPoller(real)  # type: ignore[assignment]
        self.reactor.seconds = lambda: clock[0]  # type: ignore[method-assign]
        stalledFor = 0.0
        # (The last poll ended just now.)
        self.reactor.polledAt = clock[0]
        self.reactor.doIteration(0.2)
        self.assertEqual((polls, reader.read), ([0.2], []))
        polls.clear()
        stalledFor = STALL + 3
        self.reactor.doIteration(0.2)
        self.assertEqual((polls, reader.read), ([0.2, 0], [b"answer"]))

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

    def test_hangUpWhileWriting(self) -> None:
        """
        A descriptor watched only for writing whose peer goes away is told
        its connection was lost (not cleanly closed: it was not reading).
        """
        a, b = self.pairs[0]
        lost: list[Any] = []
        writer = Reader(self.reactor, a)
        writer.doWrite = lambda: None  # type: ignore[method-assign]
        writer.connectionLost = lost.append  # type: ignore[method-assign]
        self.reactor.addWriter(writer)
        b.close()
        self.reactor.doIteration(1)
        self.assertEqual(len(lost), 1)
        self.assertTrue(lost[0].check(ConnectionLost))
        self.assertNotIn(writer, self.reactor._selectables.values())

    def test_descriptorGone(self) -> None:
        """
        A descriptor whose C{fileno()} says it is closed when its event
        comes is disconnected, not read.
        """
        a, b = self.pairs[0]
        lost: list[Any] = []
        reader = Reader(self.reactor, a)
        reader.connectionLost = lost.append  # type: ignore[method-assign]
        self.reactor.addReader(reader)
        reader.fileno = lambda: -1  # type: ignore[method-assign]
        b.send(b"x")
        self.reactor.doIteration(1)
        self.assertEqual(reader.read, [])
        self.assertTrue(lost[0].check(ConnectionFdescWentAway))
        self.assertNotIn(reader, self.reactor._selectables.values())

    def test_notWhenChosen(self) -> None:
        """
        When a reactor is already installed (here, trial's), it is kept.
        """
        from twisted.internet import reactor

        self.assertFalse(installIfUnchosen())
        from twisted.internet import reactor as after

        self.assertIs(after, reactor)


class RecordingPoller:
    """
    An epoll object that records the C{epoll_ctl} calls made through it.
    """

    def __init__(self, poller: Any) -> None:
        self._poller = poller
        self.calls: list[tuple[str, int]] = []

    def register(self, fd: int, flags: int) -> None:
        self.calls.append(("register", fd))
        self._poller.register(fd, flags)

    def modify(self, fd: int, flags: int) -> None:
        self.calls.append(("modify", fd))
        self._poller.modify(fd, flags)

    def unregister(self, fd: int) -> None:
        self.calls.append(("unregister", fd))
        self._poller.unregister(fd)

    def poll(self, timeout: float, maxevents: int) -> Any:
        return self._poller.poll(timeout, maxevents)

    def close(self) -> None:
        self._poller.close()


@implementer(IHalfCloseableDescriptor)
class HalfCloser(Reader):
    """
    A readable end of a socket pair told when its peer half-closes, which
    records whether it was still being read then, and closes its socket
    when told to.
    """

    closeOnHalfClose = False

    def __init__(self, reactor: Any, sock: socket.socket) -> None:
        super().__init__(reactor, sock)
        self.halfClosed: list[bool] = []

    def doRead(self) -> Any:
        data = self.sock.recv(100)
        if not data:
            return ConnectionDone()
        self.read.append(data)
        return None

    def readConnectionLost(self, reason: Any) -> None:
        self.halfClosed.append(self.fileno() in self.reactor._reads)
        if self.closeOnHalfClose:
            self.reactor.forgetClosing(self)
            self.disconnected = True
            self.sock.close()

    def writeConnectionLost(self, reason: Any) -> None:
        pass


class ClosingTests(SynchronousTestCase):
    """
    A socket closed by its only holder leaves the epoll set with no
    C{epoll_ctl} call.
    """

    def setUp(self) -> None:
        self.reactor = LeanEPollReactor()
        self.poller = RecordingPoller(self.reactor._poller)
        self.reactor._poller = self.poller  # type: ignore[assignment]
        self.addCleanup(self.poller.close)
        self.a, self.b = socket.socketpair()
        self.addCleanup(self.a.close)
        self.addCleanup(self.b.close)

    def test_forgetClosing(self) -> None:
        """
        L{LeanEPollReactor.forgetClosing} stops watching a descriptor
        without asking epoll; once the socket is closed, epoll reports
        nothing for it (it was watched for writing, and a stale entry
        would say it is writable).
        """
        reader = Reader(self.reactor, self.a)
        self.reactor.addReader(reader)
        self.reactor.addWriter(reader)
        fd = self.a.fileno()
        self.poller.calls.clear()
        self.reactor.forgetClosing(reader)
        self.assertEqual(self.poller.calls, [])
        self.assertNotIn(fd, self.reactor._selectables)
        self.assertNotIn(fd, self.reactor._reads | self.reactor._writes)
        self.a.close()
        self.assertEqual(self.poller.poll(0, 10), [])

    def _watchedThen(self, method: Any, before: str, path: str) -> Any:
        """
        Call C{method(reactor, reader)} on a new lean reactor, for a reader
        of a socket (or of the regular file at C{path}, for C{before}
        "file" and "file read") watched as C{before} says ("none",
        "reading", "writing", "both", "file", "file read": a file added as
        a reader, polled continuously); then give the C{epoll_ctl} calls
        made and the reactor's state for the reader's descriptor.
        """
        reactor = LeanEPollReactor()
        poller = reactor._poller = RecordingPoller(reactor._poller)  # type: ignore[assignment]
        self.addCleanup(poller.close)
        if before.startswith("file"):
            handle = open(path, "rb")
            self.addCleanup(handle.close)
            reader: Any = Reader(reactor, handle)  # type: ignore[arg-type]
        else:
            a, b = socket.socketpair()
            self.addCleanup(a.close)
            self.addCleanup(b.close)
            reader = Reader(reactor, a)
        if before in ("reading", "both", "file read"):
            EPollReactor.addReader(reactor, reader)
        if before in ("writing", "both"):
            reactor.addWriter(reader)
        poller.calls.clear()
        method(reactor, reader)
        fd = reader.fileno()
        return ([(call, called == fd) for call, called in poller.calls],
                fd in reactor._reads, fd in reactor._writes,
                reactor._selectables.get(fd) is reader,
                reactor._continuousPolling.isReading(reader))

    def test_addReaderAsEpoll(self) -> None:
        """
        L{LeanEPollReactor.addReader} makes the C{epoll_ctl} calls the
        epoll reactor's does and keeps the same state, for a descriptor
        not watched, watched for writing, already read, and a regular
        file (which epoll refuses: it is polled continuously).
        """
        path = self.mktemp()
        with open(path, "wb"):
            pass
        for before in ("none", "writing", "reading", "file"):
            self.assertEqual(self._watchedThen(LeanEPollReactor.addReader, before, path),
                             self._watchedThen(EPollReactor.addReader, before, path), before)
        self.assertEqual(self._watchedThen(LeanEPollReactor.addReader, "writing", path)[0],
                         [("modify", True)])
        self.assertTrue(self._watchedThen(LeanEPollReactor.addReader, "file", path)[4])

    def test_removeReaderAsEpoll(self) -> None:
        """
        L{LeanEPollReactor.removeReader} makes the C{epoll_ctl} calls the
        epoll reactor's does and keeps the same state, for a descriptor
        read, read and written, written only, not watched, and a regular
        file polled continuously.
        """
        path = self.mktemp()
        with open(path, "wb"):
            pass
        for before in ("reading", "both", "writing", "none", "file read"):
            self.assertEqual(self._watchedThen(LeanEPollReactor.removeReader, before, path),
                             self._watchedThen(EPollReactor.removeReader, before, path), before)
        self.assertEqual(self._watchedThen(LeanEPollReactor.removeReader, "reading", path)[0],
                         [("unregister", True)])
        self.assertEqual(self._watchedThen(LeanEPollReactor.removeReader, "both", path)[0],
                         [("modify", True)])
        self.assertFalse(self._watchedThen(EPollReactor.removeReader, "file read", path)[4])

    def test_forgetNotWatched(self) -> None:
        """
        A closing descriptor no longer watched (a relay's connection that
        stopped reading at its peer's half-close) is forgotten with no
        C{epoll_ctl} call, spawned process or not, and leaves the state of
        the descriptors watched as it was.
        """
        for spawned in (False, True):
            self.reactor._spawned = spawned
            reader = Reader(self.reactor, self.a)
            other = Reader(self.reactor, self.b)
            self.reactor.addReader(reader)
            self.reactor.addReader(other)
            self.reactor.removeReader(reader)
            state = (set(self.reactor._reads), set(self.reactor._writes),
                     dict(self.reactor._selectables))
            self.assertIn(self.b.fileno(), state[0])
            self.poller.calls.clear()
            self.reactor.forgetClosing(reader)
            self.assertEqual(self.poller.calls, [])
            self.assertEqual((self.reactor._reads, self.reactor._writes,
                              self.reactor._selectables), state)
            self.reactor.removeReader(other)

    def test_forgetDescriptorGone(self) -> None:
        """
        A closing selectable whose C{fileno()} is already -1 (its socket
        detached, the descriptor still open and watched) is taken out of
        the reactor and the epoll set as the epoll reactor's
        C{removeReader} and C{removeWriter} take it out, spawned process or
        not: left there, every pass would report it again.
        """
        def forget(spawned: bool, method: Any) -> Any:
            reactor = LeanEPollReactor()
            reactor._spawned = spawned
            poller = reactor._poller = RecordingPoller(reactor._poller)  # type: ignore[assignment]
            self.addCleanup(poller.close)
            a, b = socket.socketpair()
            self.addCleanup(b.close)
            reader = Reader(reactor, a)
            reactor.addReader(reader)
            reactor.addWriter(reader)
            fd = reader.fileno()
            self.addCleanup(socket.close, a.detach())
            poller.calls.clear()
            method(reactor, reader)
            return (poller.calls == [("modify", fd), ("unregister", fd)],
                    fd in reactor._reads, fd in reactor._writes,
                    reader in reactor._selectables.values())

        def twisted(reactor: Any, reader: Any) -> None:
            EPollReactor.removeReader(reactor, reader)
            EPollReactor.removeWriter(reactor, reader)

        for spawned in (False, True):
            self.assertEqual(forget(spawned, LeanEPollReactor.forgetClosing),
                             forget(spawned, twisted))
            self.assertEqual(forget(spawned, twisted), (True, False, False, False))

    def test_afterSpawn(self) -> None:
        """
        Once the reactor has spawned a process, which may hold copies of
        its descriptors, a closing descriptor is unregistered from epoll.
        """
        self.reactor._spawned = True
        reader = Reader(self.reactor, self.a)
        self.reactor.addReader(reader)
        self.reactor.forgetClosing(reader)
        self.assertEqual(self.poller.calls[-1], ("unregister", self.a.fileno()))
        self.assertNotIn(self.a.fileno(), self.reactor._selectables)

    def test_halfCloseWhileRead(self) -> None:
        """
        A half-closeable descriptor whose peer half-closes is told while it
        is still being read, and then stops being read.
        """
        reader = HalfCloser(self.reactor, self.a)
        self.reactor.addReader(reader)
        self.b.shutdown(socket.SHUT_WR)
        self.reactor.doIteration(1)
        self.assertEqual(reader.halfClosed, [True])
        self.assertNotIn(self.a.fileno(), self.reactor._reads)
        self.assertEqual(self.poller.calls[-1], ("unregister", self.a.fileno()))

    def test_closedOnHalfClose(self) -> None:
        """
        A descriptor that closes when its peer half-closes leaves epoll
        with its socket: no C{epoll_ctl} call.
        """
        reader = HalfCloser(self.reactor, self.a)
        reader.closeOnHalfClose = True
        self.reactor.addReader(reader)
        self.poller.calls.clear()
        self.b.shutdown(socket.SHUT_WR)
        self.reactor.doIteration(1)
        self.assertEqual(reader.halfClosed, [True])
        self.assertEqual(self.poller.calls, [])
        self.assertNotIn(reader, self.reactor._selectables.values())
