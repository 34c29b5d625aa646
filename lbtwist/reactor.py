"""
The epoll reactor without the per-event logging context.

Twisted's reactors run every read and write event through
C{log.callWithLogger}, which asks the transport for its log prefix and pushes
a logging context around the call, so that legacy C{log.msg} calls made from
inside it are tagged with the connection.  lbtwist logs through
L{twisted.logger} with explicit fields and has no use for that context, and
on a relay that handles one event per chunk it costs about a tenth of the
CPU.  L{LeanEPollReactor} dispatches events directly; everything else,
including the logging of errors raised while handling an event, is the epoll
reactor's.

C{twistd lb} installs it unless C{twistd --reactor} chose a reactor; an
application embedding lbtwist may install it with L{install} or keep its own.
"""

from __future__ import annotations

import errno
import socket
import sys
from select import EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP
from typing import Any, Callable

from twisted.internet.epollreactor import EPollReactor
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IConnector, IHalfCloseableDescriptor, IListeningPort
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST, installReactor
from twisted.internet.posixbase import _NO_FILEDESC
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from .leantcp import IReactorDialTCP, LeanConnector, LeanDial, LeanPort, ipFamily
from .passtime import IReactorPassTime
from .writethrough import queueFirst

# An epoll event saying the descriptor hung up or failed.
_DISCONNECTED = EPOLLHUP | EPOLLERR

# What a descriptor being read is watched for: data, and its peer's FIN
# (see LeanEPollReactor.doPoll), whether or not it is written too.
_READING = EPOLLIN | EPOLLRDHUP

# What a connection is told when its peer closed it, shared as the epoll
# reactor shares its own.
_FAILURES = {ConnectionDone: Failure(ConnectionDone()), ConnectionLost: Failure(ConnectionLost())}


# A reactor pass that begins this many seconds after the last poll means
# the process was stalled: stopped (SIGSTOP), a long garbage collection,
# starved of CPU.
STALL = 0.5

# The most events a pass handles (the rest wait for the next poll): what
# a pass writes is held until it ends, and this bounds how long (HAProxy's
# tune.maxpollevents is 200).
MAX_EVENTS = 256


@implementer(IReactorDialTCP, IReactorPassTime)
class LeanEPollReactor(EPollReactor):
    """
    An epoll reactor that dispatches I/O events without a logging context.

    After a stall it reads what has arrived before it runs the timed calls
    that fell due meanwhile: a response that came within its timeout, while
    the process could not run, is relayed, not answered with a 504 that
    counts against a healthy backend.  Twisted's loop runs the timed calls
    first; a stopped process resumed by C{SIGCONT} even finds its poll
    interrupted with nothing read.
    """

    _log = Logger()
    # Whether a process was spawned (see forgetClosing).
    _spawned = False
    # When the last poll returned: the time of this pass, for what a time
    # to the pass is exact enough (see L{lbtwist.passtime}).
    polledAt = 0.0

    def __init__(self) -> None:
        # The lean connections holding bytes written in this pass (see
        # L{lbtwist.writethrough.writeNow}), sent when it ends.
        self.holders: list[Any] = []
        EPollReactor.__init__(self)

    def sendHeld(self) -> None:
        """
        Send what each lean connection was given to write since the last
        time (L{lbtwist.writethrough.writeNow}): at the end of each pass,
        and before each poll (timed calls write too).
        """
        holders = self.holders
        # (A connection that holds again meanwhile is appended, and sent
        # in this loop too.)
        for transport in holders:
            # (L{lbtwist.writethrough.sendHeld}, written out: a call per
            # connection per pass fewer.)
            data = transport.held
            if data is None:
                continue
            queues = transport.heldQueues
            transport.held = transport.heldQueues = None
            if not transport.connected:
                continue
            try:
                sent = transport.socket.send(data)
            except OSError:
                sent = 0
            if sent != len(data):
                try:
                    queueFirst(transport, data[sent:], queues)
                except Exception:
                    self._log.failure("error queuing for {transport}", transport=transport)
        holders.clear()

    def runUntilCurrent(self) -> None:
        """
        Run the timed calls that are due, after polling (without waiting)
        if the process was stalled since the last poll.
        """
        if self.seconds() - self.polledAt > STALL:
            self.doPoll(0)
        EPollReactor.runUntilCurrent(self)

    def doPoll(self, timeout: float | None) -> None:
        """
        Poll for events and handle each at once: what the epoll reactor's
        C{_doReadOrWrite} does for each event, done in this loop rather than
        in a call per event.

        A readable event that says the peer's FIN has come (C{EPOLLRDHUP})
        is handed to the selectable's C{doReadToEnd} where it has one (a
        lean TCP connection): it reads up to the end in this pass, and a
        relay then sends the last bytes and its own FIN in one segment.
        The event is only a hint there: the end is what C{recv()} says; and
        it is reported only if the selectable still reads once given the
        last bytes (one that paused, or is closing, finds it later).
        """
        if self.holders:
            self.sendHeld()
        if timeout is None:
            timeout = -1
        poll = self._poller.poll
        # (The last poll's end: what ran since took under STALL, else
        # runUntilCurrent would have polled; one clock read a pass fewer.)
        previous = self.polledAt
        try:
            events = poll(timeout, MAX_EVENTS)
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        self.polledAt = now = self.seconds()
        if not events and timeout >= 0 and now - previous > timeout + STALL:
            # Stopped during the poll (SIGSTOP): resumed, the kernel ends
            # the poll as timed out, with nothing, whatever came meanwhile.
            events = poll(0, MAX_EVENTS)
        selectables = self._selectables
        reads = self._reads
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is None:
                continue
            inRead = False
            if event & _DISCONNECTED and not event & EPOLLIN:
                # Hung up with nothing left to read: a clean end (perhaps a
                # half-close) if it was being read, else an error.
                if fd in reads:
                    inRead = True
                    why: Any = CONNECTION_DONE
                else:
                    why = CONNECTION_LOST
            else:
                try:
                    if selectable.fileno() == -1:
                        why = _NO_FILEDESC
                    else:
                        why = None
                        if event & EPOLLIN:
                            if event & EPOLLRDHUP:
                                # The peer's FIN has come: a lean
                                # connection reads up to it in this pass.
                                readToEnd = getattr(selectable, "doReadToEnd", None)
                                if readToEnd is None:
                                    why = selectable.doRead()
                                else:
                                    why = readToEnd()
                                    if why is CONNECTION_DONE and fd not in reads:
                                        # It stopped reading meanwhile
                                        # (paused, or closing once its
                                        # queue is sent): the end waits
                                        # for its next read, as it would
                                        # have come after the data.
                                        why = None
                            else:
                                why = selectable.doRead()
                            inRead = True
                        if not why and event & EPOLLOUT:
                            why = selectable.doWrite()
                            inRead = False
                except BaseException as e:
                    why = e
                    self._log.failure("error handling {selectable}", selectable=selectable)
            if why:
                try:
                    self._disconnectSelectable(selectable, why, inRead)
                except Exception:
                    self._log.failure("unhandled error handling {selectable}",
                                      selectable=selectable)
        if self.holders:
            self.sendHeld()

    doIteration = doPoll  # type: ignore[assignment]

    def addReader(self, reader: Any) -> None:
        """
        Watch C{reader} for reading: the epoll reactor's C{addReader} with
        its C{_add} written in, one call fewer for each connection; and
        for the peer's FIN too (C{EPOLLRDHUP}; see L{doPoll}).
        """
        fd = reader.fileno()
        reads = self._reads
        if fd in reads:
            return
        try:
            if fd in self._writes:
                self._poller.modify(fd, _READING | EPOLLOUT)
            else:
                self._poller.register(fd, _READING)
        except OSError as e:
            if e.errno != errno.EPERM:
                raise
            # epoll takes no regular file: polled continuously, as by the
            # epoll reactor.
            self._continuousPolling.addReader(reader)
            return
        reads.add(fd)
        self._selectables[fd] = reader

    def addWriter(self, writer: Any) -> None:
        """
        Watch C{writer} for writing: the epoll reactor's C{addWriter}, but a
        descriptor also being read stays watched for its peer's FIN
        (C{EPOLLRDHUP}, which the epoll reactor's flags would drop).
        """
        try:
            self._add(writer, self._writes, self._reads, self._selectables,
                      EPOLLOUT, _READING)
        except OSError as e:
            if e.errno != errno.EPERM:
                raise
            self._continuousPolling.addWriter(writer)

    def removeReader(self, reader: Any) -> None:
        """
        Stop watching C{reader} for reading: the epoll reactor's
        C{removeReader} with its C{_remove} written in for a descriptor
        being read (a relay's connection whose peer half-closed).  Closing
        a connection asks this several times over, mostly of descriptors
        not being read: those are answered at once.
        """
        fd = reader.fileno()
        reads = self._reads
        if fd in reads:
            # (Read with epoll, so not polled continuously.)
            if fd in self._writes:
                self._poller.modify(fd, EPOLLOUT)
            else:
                del self._selectables[fd]
                self._poller.unregister(fd)
            reads.remove(fd)
            return
        if fd >= 0 and not self._continuousPolling.isReading(reader):
            return
        super().removeReader(reader)

    def removeWriter(self, writer: Any) -> None:
        """
        Stop watching C{writer} for writing; see L{removeReader} and
        L{addWriter}.
        """
        fd = writer.fileno()
        if fd >= 0 and fd in self._writes:
            # The epoll reactor's, with EPOLLRDHUP kept for a descriptor read.
            self._remove(writer, self._writes, self._reads, self._selectables, EPOLLOUT, _READING)
        elif self._continuousPolling.isWriting(writer):
            self._continuousPolling.removeWriter(writer)
        elif fd < 0:
            # Its descriptor is gone: found among the watched by identity.
            self._remove(writer, self._writes, self._reads, self._selectables, EPOLLOUT, _READING)

    def forgetClosing(self, selectable: Any) -> None:
        """
        C{selectable}'s socket is about to be closed: stop watching it
        without an C{epoll_ctl} call where that is safe.

        The kernel takes a descriptor out of an epoll set when its last
        reference is closed (HAProxy relies on this too, and only asks
        epoll for descriptors shared with other threads).  lbtwist's
        sockets are close-on-exec and never duplicated, so this process
        holds the only reference, unless it spawned a process: a child
        holds copies of the descriptors open when it was forked until it
        closes them, and an event on such a copy would be reported under
        the descriptor's number, perhaps reused by then.  After the first
        L{spawnProcess} every selectable is removed the usual way.
        """
        fd = selectable.fileno()
        selectables = self._selectables
        watched = selectables.get(fd)
        if watched is None and fd >= 0:
            # Watched neither for reading nor for writing (a socket is never
            # polled continuously): a relay's connection that stopped
            # reading at its peer's half-close.  (One whose descriptor is
            # gone, fileno() -1, is looked for as the epoll reactor does.)
            return
        if not self._spawned and watched is selectable:
            del selectables[fd]
            self._reads.discard(fd)
            self._writes.discard(fd)
            return
        self.removeReader(selectable)
        self.removeWriter(selectable)

    def _disconnectSelectable(self, selectable: Any, why: BaseException, isRead: bool,
                              faildict: Any = _FAILURES) -> None:
        """
        Tell C{selectable} its connection ended, as the epoll reactor does;
        but when the peer half-closed (a clean end of reading), tell it
        before it stops being read, not after: a relay closes both of its
        connections when the second peer half-closes, and a connection
        closed then leaves the epoll set with its socket (L{forgetClosing})
        instead of by a separate C{epoll_ctl} call.
        """
        if (
            isRead
            and why.__class__ is ConnectionDone
            and IHalfCloseableDescriptor.providedBy(selectable)
        ):
            selectable.readConnectionLost(faildict[ConnectionDone])
            if not getattr(selectable, "disconnected", False):
                # Still open (writing): a socket at its end of input is
                # always readable, so stop reading it.
                self.removeReader(selectable)
            return
        super()._disconnectSelectable(selectable, why, isRead, faildict)

    def spawnProcess(self, *args: Any, **kwargs: Any) -> Any:
        """
        Spawn a process, as the epoll reactor does; from now on closing
        sockets are taken out of the epoll set explicitly (see
        L{forgetClosing}).
        """
        self._spawned = True
        return super().spawnProcess(*args, **kwargs)

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> IListeningPort:
        """
        Listen on a TCP port; its connections are L{LeanTransport}s.
        """
        listening = LeanPort(port, factory, backlog, interface, self)
        listening.startListening()
        return listening

    def adoptStreamPort(self, fileDescriptor: int, addressFamily: int,
                        factory: Any) -> IListeningPort:
        """
        Serve a listening socket bound elsewhere (a worker serves its
        master's, see L{lbtwist.workers}); a TCP one's connections are
        L{LeanTransport}s, as with L{listenTCP}.
        """
        if addressFamily not in (socket.AF_INET, socket.AF_INET6):
            adopted: IListeningPort = super().adoptStreamPort(
                fileDescriptor, addressFamily, factory)
            return adopted
        listening = LeanPort._fromListeningDescriptor(self, fileDescriptor, addressFamily, factory)
        listening.startListening()
        return listening

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30.0,
        bindAddress: Any = None,
    ) -> IConnector:
        """
        Connect to a TCP address; an IP address is dialled at once by a
        L{LeanConnector}, a host name (or a bind address) by Twisted's own.
        """
        if bindAddress is not None or ipFamily(host) is None:
            return super().connectTCP(host, port, factory, timeout, bindAddress)
        connector = LeanConnector(host, port, factory, timeout, self)
        connector.connect()
        return connector

    def dialTCP(
        self,
        host: str,
        port: int,
        protocol: Any,
        timeout: float,
        connected: Callable[[Any], None],
        failed: Callable[[Failure], None],
    ) -> LeanDial:
        """
        See L{IReactorDialTCP.dialTCP}.
        """
        return LeanDial(self, host, port, protocol, timeout, connected, failed).start()


def install() -> Any:
    """
    Install L{LeanEPollReactor} as the global reactor.
    """
    reactor = LeanEPollReactor()
    installReactor(reactor)
    return reactor


def installIfUnchosen() -> bool:
    """
    Install L{LeanEPollReactor} unless a reactor is installed already (by
    C{twistd --reactor}, or by an earlier import) or epoll is not available.

    @return: whether it was installed.
    """
    if "twisted.internet.reactor" in sys.modules or not sys.platform.startswith("linux"):
        return False
    install()
    return True
