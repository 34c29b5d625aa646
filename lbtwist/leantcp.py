"""
TCP transports with less set-up per connection, for L{LeanEPollReactor}.

A proxy that opens a backend connection for every client pays Twisted's
per-connection set-up twice per request, and with short connections that
set-up, not the relaying, is most of its CPU.  These classes are Twisted's
own TCP transports (reading, writing, producers, half-close, abort and TLS
are all L{twisted.internet.tcp.Connection}'s) with that set-up cut down:

  - An outgoing connection to an IP address starts at once, not on the next
    reactor pass after a name-resolution L{Deferred}; its socket is created
    non-blocking; and when the kernel has completed the handshake by the
    time C{connect()} returns, as it does over loopback, the connection is
    used at once: one epoll registration instead of five, no timer, no
    reactor pass.  Otherwise it waits for the socket to become writable and
    reads C{SO_ERROR}, as Twisted does.  A host name (or a bind address)
    goes through Twisted's own connector.  L{LeanConnector} does this
    behind C{connectTCP}; L{LeanDial} (the reactor's C{dialTCP}) also
    skips the connector and factory, for a caller that builds its protocol
    first and wants two callbacks: a proxy dialling a backend per client.

  - An accepted connection formats no log-prefix and C{repr} strings (they
    are built when asked for), and builds its peer's address once.

  - A connection's socket is C{_socket.socket}, the C type that
    L{socket.socket} wraps: the wrapper's C{__init__}, C{close} and
    C{_real_close} are Python calls, three on each socket, and a relay
    uses nothing the wrapper adds (C{makefile}, C{sendfile}, enum-valued
    C{family}).

  - A half-close asks the protocol whether it is half-closeable with
    C{providedBy}, not by adapting it as Twisted does: the adaptation
    looks up C{__conform__} on the protocol first, and the
    C{AttributeError} it makes and clears cost 3.5% of a proxied
    connection (three per connection; see L{_providesHalfClose}).

  - Neither shuts a socket down before closing it: sockets are
    close-on-exec, so this process holds the only reference and C{close()}
    sends the FIN itself (Twisted's own comment on C{_closeSocket} says as
    much).  That is two C{shutdown} calls fewer per proxied connection.
    For the same reason, on L{LeanEPollReactor} a closing socket is not
    taken out of the epoll set first: closing it does that (one
    C{epoll_ctl} call fewer per socket; see
    L{LeanEPollReactor.forgetClosing}).

One difference a caller can see: a connection that completes at once is
built, and its protocol's C{connectionMade} called, before C{connectTCP}
returns (an error raised there is logged and closes the connection, as
when the reactor calls it).  Failures are reported on a later reactor pass,
as Twisted does, so a factory that retries at once cannot recurse.
Twisted's L{Deferred}-based callers (endpoints, L{ClientCreator}) do not
mind either way.
"""

from __future__ import annotations

import socket
from _socket import MSG_PEEK
from _socket import socket as rawSocket
from errno import EALREADY, EINPROGRESS, EISCONN, EMFILE, ENFILE, ENOBUFS, ENOMEM, EWOULDBLOCK, errorcode
from functools import lru_cache
from os import strerror
from typing import Any, Callable

from twisted.internet import abstract, address, base, error, main, tcp
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.logger import Logger
from twisted.python import log
from twisted.python.failure import Failure
from zope.interface import Interface

from .writethrough import sendHeld


class IReactorDialTCP(Interface):
    """
    A reactor that can dial a TCP connection for a protocol directly, with
    callbacks instead of a connector and factory.
    """

    def dialTCP(
        host: str,
        port: int,
        protocol: Any,
        timeout: float,
        connected: Callable[[Any], None],
        failed: Callable[[Failure], None],
    ) -> Any:
        """
        Connect C{protocol} to C{host} (an IP address) and C{port}; call
        C{connected(protocol)} once it is connected, or C{failed(reason)}
        if it cannot be within C{timeout} seconds.  C{connected} may be
        called before this returns; C{failed} never is.

        @return: an object whose C{cancel()} abandons the attempt without
            calling either.
        """


# What a connection closed on our side reports, as Twisted's reactor shares
# one for the connections it sees closed.
_CONNECTION_DONE = Failure(main.CONNECTION_DONE)


# Whether a protocol provides IHalfCloseableProtocol itself.  A lean
# connection's half-close asks this first, and adapts the protocol (as
# Twisted's does) only when it does not: zope.interface's adaptation looks up
# C{__conform__} on the protocol first, and on one without it the
# AttributeError made and cleared costs about 2,900 instructions, where
# providedBy costs about 400.
_providesHalfClose = IHalfCloseableProtocol.providedBy


class _LeanConnection(tcp.Connection):
    """
    What the lean transports change in L{tcp.Connection}'s closing (a
    L{LeanClient} gets its C{connectionLost} through C{_commonConnection}).
    """

    _shouldShutdown = False
    # What L{lbtwist.writethrough.writeNow} holds for the end of the
    # reactor's pass (see L{LeanEPollReactor.sendHeld}): the bytes, or
    # None; what to call should any of them queue; and the reactor's list
    # of the connections holding some (None on a reactor that does not
    # hold writes).  (The first two are the class's until a connection
    # holds something: an idle connection, or a TCP relay's, which never
    # holds, is two attributes smaller.)
    held: bytes | None = None
    heldQueues: Callable[[], None] | None = None
    holders: list[Any] | None = None

    def doRead(self) -> Any:
        """
        L{tcp.Connection.doRead}, with its C{_dataReceived} written in: one
        call fewer on every read of every connection.
        """
        try:
            data = self.socket.recv(self.bufferSize)
        except OSError as se:
            if se.args[0] == EWOULDBLOCK:
                return None
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    def doReadToEnd(self) -> Any:
        """
        Read after the peer's FIN has come (the reactor saw C{EPOLLRDHUP}):
        what L{doRead} does, and when the end directly follows what was
        read, the end too, in the same pass.  The protocol then gets those
        last bytes through its C{finalDataReceived} if it has one (a relay
        sends them to its peer with C{MSG_MORE}, so that the FIN it sends
        next leaves in the same segment, as HAProxy does), else through
        C{dataReceived}; the reactor reports the end as usual.

        The event is a hint, never taken for the end: the end is a
        C{recv()} that finds nothing (peeked, so nothing is consumed).
        Data that comes after what was read (after TCP urgent data's mark,
        or more than a read holds), or nothing at all (a stale event, for a
        descriptor another socket took within the pass) are left for the
        next read.  An error (a reset after the data) is reported at once,
        after the data: the peek consumed it (C{SO_ERROR} is cleared once
        reported), and the next read would find a clean end instead.
        """
        sock = self.socket
        try:
            data = sock.recv(self.bufferSize)
        except BlockingIOError:
            # (A stale event: nothing to read.)
            return None
        except OSError:
            return main.CONNECTION_LOST
        if not data:
            return main.CONNECTION_DONE
        protocol = self.protocol
        try:
            ended = not sock.recv(1, MSG_PEEK)
        except BlockingIOError:
            ended = False
        except OSError:
            # A reset after the data: the peek took the socket's error, and
            # the next read would find a clean end, so the loss is reported
            # now, after the data.
            protocol.dataReceived(data)
            return None if self.disconnected else main.CONNECTION_LOST
        if not ended:
            protocol.dataReceived(data)
            return None
        final = getattr(protocol, "finalDataReceived", None)
        if final is None:
            protocol.dataReceived(data)
        else:
            final(data)
        # (Unless the protocol closed the connection meanwhile.)
        return None if self.disconnected else main.CONNECTION_DONE

    def doWrite(self) -> Any:
        """
        L{tcp.Connection.doWrite}, after the bytes held for the pass's end:
        they were written before anything Twisted queued.
        """
        if self.held is not None:
            sendHeld(self)
        return tcp.Connection.doWrite(self)

    def _closeWriteConnection(self) -> None:
        """
        L{tcp.Connection._closeWriteConnection}, with the protocol asked
        through L{_providesHalfClose} first.
        """
        try:
            self.socket.shutdown(1)
        except OSError:
            pass
        protocol: Any = self.protocol
        if not _providesHalfClose(protocol):
            protocol = IHalfCloseableProtocol(protocol, None)
        if protocol is not None:
            try:
                protocol.writeConnectionLost()
            except BaseException:
                reason = Failure()
                log.err()
                self.connectionLost(reason)

    def readConnectionLost(self, reason: Failure) -> None:
        """
        L{tcp.Connection.readConnectionLost}, with the protocol asked
        through L{_providesHalfClose} first.
        """
        protocol: Any = self.protocol
        if not _providesHalfClose(protocol):
            protocol = IHalfCloseableProtocol(protocol, None)
        if protocol is not None:
            try:
                protocol.readConnectionLost()
            except BaseException:
                log.err()
                self.connectionLost(Failure())
        else:
            self.connectionLost(reason)

    def _protocolName(self) -> str:
        """
        The protocol's log prefix, or C{-} once the connection is closed
        (the protocol is let go of then).
        """
        protocol = getattr(self, "protocol", None)
        return self._getLogPrefix(protocol) if protocol is not None else "-"

    def loseConnection(self) -> None:
        """
        Close once what is queued is sent; at once if the write side is
        already finished, with a shared L{Failure} rather than a new one.
        """
        if self._writeDisconnected and self.connected and not self.disconnecting and not self.TLS:
            # connectionLost stops the reading and writing.
            self.connectionLost(_CONNECTION_DONE)
        else:
            tcp.Connection.loseConnection(self)

    def connectionLost(self, reason: Failure) -> None:
        """
        L{tcp.Connection.connectionLost}, with the reason's type checked
        directly: L{Failure.check} walks the exception's class hierarchy by
        name, which cost more than the rest of closing the socket.
        """
        if not hasattr(self, "socket"):
            return
        # FileDescriptor.connectionLost, but the socket leaves the reactor
        # through forgetClosing where the reactor has it: closing the
        # socket takes it out of the epoll set, with no epoll_ctl call.
        self.disconnected = 1
        self.connected = 0
        producer = self.producer
        if producer is not None:
            producer.stopProducing()
            self.producer = None
        forget = getattr(self.reactor, "forgetClosing", None)
        if forget is not None:
            forget(self)
        else:
            self.stopReading()
            self.stopWriting()
        self._closeSocket(not isinstance(reason.value, error.ConnectionAborted))
        protocol = self.protocol
        del self.protocol
        del self.socket
        del self.fileno
        protocol.connectionLost(reason)


class LeanTransport(_LeanConnection, tcp.Server):
    """
    A TCP connection accepted by a L{LeanPort} or dialled by a L{LeanDial}:
    L{tcp.Server} without the strings it formats for every connection.

    One class for both ends of a relay: the code every read and write runs
    (C{doRead}, L{lbtwist.writethrough}) then sees one type, and CPython's
    specialised attribute reads hold; with a class for each end, they
    missed on every other call (2.3% of an HTTP request, 4% of a TCP
    connection).

    @ivar server: the listening port that accepted it, or L{None} for a
        dialled connection.
    """

    _peer: address.IPv4Address | address.IPv6Address | None = None
    # TCP_NODELAY as last set, if it was set here (else as inherited from
    # the listening port).
    _noDelay: bool | None = None

    def __init__(
        self,
        sock: rawSocket,
        protocol: Any,
        client: tuple[Any, ...],
        server: tcp.Port,
        sessionno: int,
        reactor: Any,
    ) -> None:
        """
        An accepted connection (the signature L{tcp.Port} builds its
        transports with), read from now on.
        """
        sock.setblocking(False)
        self._attach(sock, protocol, client, server, sessionno, reactor)
        # (startReading, written in.)
        reactor.addReader(self)

    @classmethod
    def dialled(cls, sock: rawSocket, protocol: Any, reactor: Any,
                peer: tuple[Any, ...]) -> LeanTransport:
        """
        A connection dialled (non-blocking already) to C{peer}, read from
        now on.
        """
        transport = cls.__new__(cls)
        transport._attach(sock, protocol, peer, None, 0, reactor)
        reactor.addReader(transport)
        return transport

    def _attach(self, sock: rawSocket, protocol: Any, client: tuple[Any, ...],
                server: tcp.Port | None, sessionno: int, reactor: Any) -> None:
        # Every attribute, in one order for both kinds: CPython keeps a
        # class's instances in one shared layout (what its specialised
        # attribute reads check) while they set the same attributes.
        # First FileDescriptor.__init__'s, then the class defaults that
        # every read and write reads (doRead, lbtwist.writethrough) as the
        # instance's own: CPython reads an instance's attribute faster than
        # a class's.  (test_ownDefaults checks they equal the class's.)
        self.reactor = reactor
        self._tempDataBuffer: list[bytes] = []
        self._tempDataLen = 0
        self.TLS = False
        self.offset = 0
        self.dataBuffer = b""
        self.disconnecting = 0
        self._writeDisconnecting = False
        self._writeDisconnected = False
        self.producer = None
        self.bufferSize = 65536
        self.socket = sock  # type: ignore[assignment]
        self.fileno = sock.fileno  # type: ignore[method-assign]
        self.protocol = protocol
        if len(client) != 2:
            self._addressType = address.IPv6Address
        self.server = server  # type: ignore[assignment]
        self.client = client
        self.sessionno = sessionno
        self.hostname = client[0]
        self.connected = 1
        self.holders = getattr(reactor, "holders", None)

    @property
    def _tlsClientDefault(self) -> bool:  # type: ignore[override]
        """
        For startTLS: a dialled connection is TLS's client, an accepted one
        its server.
        """
        return self.server is None

    def logPrefix(self) -> str:
        if self.server is None:
            return f"{self._protocolName()},client"
        return f"{self._protocolName()},{self.sessionno},{self.hostname}"

    def __repr__(self) -> str:
        protocol = getattr(self, "protocol", None)
        if self.server is None:
            return f"<{protocol.__class__.__name__} to {self.client[0]}:{self.client[1]}>"
        return f"<{protocol.__class__.__name__} #{self.sessionno} on {self.server._realPortNumber}>"

    def getPeer(self) -> address.IPv4Address | address.IPv6Address:
        peer = self._peer
        if peer is None:
            peer = self._peer = tcp.Server.getPeer(self)
        return peer

    def setTcpNoDelay(self, enabled: bool) -> None:
        """
        Set C{TCP_NODELAY}, unless the socket has it so already: inherited
        from a L{LeanPort}, or set here before.
        """
        enabled = bool(enabled)
        current = self._noDelay
        if current is None:
            current = getattr(self.server, "noDelay", False)
        if enabled is current:
            return
        tcp.Server.setTcpNoDelay(self, enabled)
        self._noDelay = enabled


class LeanDial:
    """
    Dials one TCP connection to an IP address for a protocol built in
    advance, and reports the outcome to C{connected(protocol)} or
    C{failed(reason)}, once; L{cancel} abandons it and reports nothing.

    This is L{LeanConnector} without the L{IConnector} and factory layer
    around it, for a caller that knows what it wants: a proxy dialling a
    backend for each client.  It completes before L{start} returns when the
    kernel has completed the handshake (over loopback); otherwise it waits
    for the socket to become writable, for at most C{timeout} seconds.  A
    failure is always reported on a later reactor pass.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        protocol: Any,
        timeout: float,
        connected: Callable[[Any], None],
        failed: Callable[[Failure], None],
    ) -> None:
        self.reactor = reactor
        if ipFamily(host) == socket.AF_INET6:
            self.family = socket.AF_INET6
            self.address: tuple[Any, ...] = tcp._resolveIPv6(host, port)
        else:
            self.family = socket.AF_INET
            self.address = (host, port)
        self.protocol = protocol
        self.timeout = timeout
        self._connected: Callable[[Any], None] | None = connected
        self._failed: Callable[[Failure], None] | None = failed
        self.socket: rawSocket | None = None
        self._timer: Any = None

    def start(self) -> LeanDial:
        """
        Start connecting; returns this dial, to cancel.
        """
        try:
            sock = rawSocket(self.family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        except OSError as e:
            self._failLater(error.ConnectBindError(e.args[0], e.args[1]))
            return self
        connect = sock.connect_ex
        result = connect(self.address)
        if result in (EINPROGRESS, EWOULDBLOCK):
            result = connect(self.address)
        if result in (0, EISCONN):
            self._established(sock)
        elif result in (EINPROGRESS, EALREADY, EWOULDBLOCK):
            self.socket = sock
            self.reactor.addWriter(self)
            self._timer = self.reactor.callLater(self.timeout, self._timedOut)
        else:
            sock.close()
            self._failLater(error.getConnectError((result, strerror(result))))
        return self

    def _failLater(self, why: Exception) -> None:
        """
        Report an immediate failure on the next reactor pass, not from
        inside L{start}: a caller that fails over (or wakes queued clients)
        from its C{failed} callback would otherwise recurse once per
        backend refusing at once.
        """
        self._timer = self.reactor.callLater(0, self._failNow, Failure(why))

    def _failNow(self, reason: Failure) -> None:
        self._timer = None
        self._report(None, reason)

    def cancel(self) -> None:
        """
        Abandon the attempt; neither callback will be called.
        """
        self._connected = self._failed = None
        if self.socket is None and self._timer is not None:
            # An immediate failure waiting to be reported.
            self._timer.cancel()
            self._timer = None
        self._abandon()

    # IWriteDescriptor, while the handshake is pending.

    def fileno(self) -> int:
        return self.socket.fileno() if self.socket is not None else -1

    def logPrefix(self) -> str:
        return "LeanDial"

    def doWrite(self) -> None:
        sock = self.socket
        assert sock is not None
        self._stopWaiting()
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            self._report(None, Failure(error.getConnectError((err, strerror(err)))))
        else:
            self._established(sock)

    def connectionLost(self, reason: Failure) -> None:
        # The reactor saw an error or hang-up on the pending socket.
        if self.socket is not None:
            self.doWrite()

    # Internals.

    def _timedOut(self) -> None:
        self._timer = None
        self._abandon()
        self._report(None, Failure(error.TimeoutError(string=f"connect timed out after {self.timeout}s")))

    def _stopWaiting(self) -> None:
        self.reactor.removeWriter(self)
        self.socket = None
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _abandon(self) -> None:
        sock = self.socket
        if sock is not None:
            self._stopWaiting()
            sock.close()

    def _established(self, sock: rawSocket) -> None:
        protocol = self.protocol
        transport = LeanTransport.dialled(sock, protocol, self.reactor, self.address)
        try:
            protocol.makeConnection(transport)
        except BaseException:
            # As the reactor does with an error raised handling an event:
            # log it and close the connection; the dial failed.
            reason = Failure()
            self._log.failure("connecting {protocol} failed", reason, protocol=protocol)
            transport.connectionLost(reason)
            self._timer = self.reactor.callLater(0, self._failNow, reason)
            return
        self._report(protocol, None)

    def _report(self, protocol: Any, reason: Failure | None) -> None:
        # Once, and then let go of the callbacks and the protocol: they
        # usually refer back to whoever holds this dial.
        connected, failed = self._connected, self._failed
        self._connected = self._failed = None
        self.protocol = None
        if reason is None:
            if connected is not None:
                connected(protocol)
        elif failed is not None:
            failed(reason)


# The errors that say this process (EMFILE) or the system (ENFILE, ENOBUFS,
# ENOMEM) lacks what one more socket needs: an accept or a dial the
# balancer could not make, which says nothing about the peer.
SHORTAGES = frozenset({EMFILE, ENFILE, ENOBUFS, ENOMEM})

# How long a listener short of descriptors stops accepting before it tries
# again (nginx waits 500 ms).
ACCEPT_PAUSE = 0.1

# A listener logs a shortage's start at most this often (seconds): one
# flapping in and out of it at every pause, a descriptor freed and taken at
# once, would otherwise log two lines a pause.
SHORTAGE_LOG_INTERVAL = 5.0


newObject = object.__new__


class LeanPort(tcp.Port):
    """
    A listening TCP port whose connections are L{LeanTransport}s.

    Its socket has C{TCP_NODELAY} set, which the connections it accepts
    inherit (on Linux, as in HAProxy's listeners): a relay turns Nagle's
    algorithm off on every connection (L{lbtwist.tcp.setNoDelay}), and
    L{LeanTransport.setTcpNoDelay} then has nothing to ask the kernel.

    Short of file descriptors (or of kernel buffers or memory), it stops
    accepting for L{ACCEPT_PAUSE} seconds at a time, as HAProxy and nginx
    do, and the clients wait in the kernel's backlog until a descriptor is
    free: Twisted's own loop would accept and close them (C{EMFILE}), so a
    worker at its limit turned away clients the other workers could have
    served, or try again at once (C{ENFILE}...), spinning at full CPU.

    @ivar noDelay: whether accepted connections start with C{TCP_NODELAY}.
    """

    transport = LeanTransport
    _shouldShutdown = False
    _log = Logger()
    noDelay = False
    # When accepting was first found short of resources (None: it is not),
    # the pause's timer, and whether the port should read once it is over
    # (another owner, a global maxconn say, may stop it meanwhile).
    _shortSince: float | None = None
    _resumeCall: Any = None
    _readWanted = False
    # When a shortage was last logged (see SHORTAGE_LOG_INTERVAL), whether
    # the current one was, and how many began since without being logged.
    _shortLoggedAt: float | None = None
    _shortLogged = False
    _shortUnlogged = 0

    def startReading(self) -> None:
        """
        Read (accept), unless short of resources: then once the pause is
        over.
        """
        self._readWanted = True
        if self._resumeCall is None:
            tcp.Port.startReading(self)

    def stopReading(self) -> None:
        """
        Stop reading, and do not start again when a pause is over.
        """
        self._readWanted = False
        tcp.Port.stopReading(self)

    def _pauseAccepting(self, code: int) -> None:
        """
        accept() failed for want of C{code} (an errno): stop accepting for
        L{ACCEPT_PAUSE} seconds.  A shortage is logged at its first pause,
        or, within L{SHORTAGE_LOG_INTERVAL} of the last one logged, at its
        first pause past that (if it lasts): the warning counts those that
        began and ended meanwhile, not logged.
        """
        reactor: Any = self.reactor
        now = reactor.seconds()
        if self._shortSince is None:
            self._shortSince = now
            self._shortUnlogged += 1
        last = self._shortLoggedAt
        if not self._shortLogged and (last is None or now - last >= SHORTAGE_LOG_INTERVAL):
            # The current shortage is the one logged; the others were not.
            unlogged = self._shortUnlogged - 1
            self._shortLoggedAt, self._shortLogged, self._shortUnlogged = now, True, 0
            self._log.warn(  # noqa: G010
                "listener on {address} cannot accept ({error}: {why}): clients wait "
                "in the backlog, accepting again every {pause}s until it can"
                + (" ({unlogged} more shortages since the last such warning, not logged)"
                   if unlogged else ""),
                address=self._realPortNumber, error=errorcode.get(code, code),
                why=strerror(code), pause=ACCEPT_PAUSE, unlogged=unlogged,
            )
        tcp.Port.stopReading(self)
        self._resumeCall = reactor.callLater(ACCEPT_PAUSE, self._resumeAccepting)

    def _resumeAccepting(self) -> None:
        self._resumeCall = None
        if self._readWanted and self.connected:
            tcp.Port.startReading(self)

    def connectionLost(self, reason: Failure) -> None:
        """
        Stopped listening: no pause to end any more.
        """
        if self._resumeCall is not None:
            self._resumeCall.cancel()
            self._resumeCall = None
        tcp.Port.connectionLost(self, reason)

    def doRead(self) -> None:
        """
        Accept up to C{numberAccepts} connections, as L{tcp.Port.doRead}
        does, with less around each: no log buffering or generator per
        pass, the socket built with its family and type as known (the
        standard C{accept} looks both up, as enums), and the peer's address
        built once, for the factory and the transport's C{getPeer} alike.
        Short of descriptors, buffers or memory, it pauses (see the
        class); another error (C{EPERM}, an aborted connection...) hands
        the rest of the pass to Twisted's own loop, which knows how to
        recover from each.
        """
        limit = self.numberAccepts
        accepted = 0
        short = False
        try:
            listening: Any = self.socket
            accept = listening._accept
            family = self.addressFamily
            factory: Any = self.factory
            build = self.transport
            while accepted < limit:
                try:
                    fd, addr = accept()
                except BlockingIOError:
                    break
                except OSError as e:
                    if e.errno in SHORTAGES:
                        self._pauseAccepting(e.errno)
                        short = True
                        break
                    tcp.Port.doRead(self)
                    return
                accepted += 1
                skt = rawSocket(family, socket.SOCK_STREAM, 0, fd)
                if len(addr) == 4:
                    # IPv6: with the scope ID, as Twisted gives it.
                    host = socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)
                    addr = (host[0], *addr[1:])
                    peer = self._buildAddr(addr)
                else:
                    # IPv4Address("TCP", *addr) without attrs' __init__ and its
                    # check that "TCP" is a valid type: three calls fewer.
                    peer = newObject(IPv4Address)
                    peer.type = "TCP"
                    peer.host, peer.port = addr
                protocol = factory.buildProtocol(peer)
                if protocol is None:
                    skt.close()
                    continue
                session = self.sessionno
                self.sessionno = session + 1
                transport = build(skt, protocol, addr, self, session, self.reactor)
                transport._peer = peer
                protocol.makeConnection(transport)
        except BaseException:
            self._log.failure("accepting a connection on {port} failed", port=self)
        if accepted and not short and self._shortSince is not None:
            if self._shortLogged:
                reactor: Any = self.reactor
                self._log.info(
                    "listener on {address} accepts again, after {seconds:.1f}s short of "
                    "resources",
                    address=self._realPortNumber, seconds=reactor.seconds() - self._shortSince,
                )
            self._shortSince, self._shortLogged = None, False
        if accepted == limit:
            self.numberAccepts = limit + 20
        else:
            self.numberAccepts = max(1, accepted)

    def startListening(self) -> None:
        """
        Listen, with C{TCP_NODELAY} set on the listening socket.
        """
        tcp.Port.startListening(self)
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            return
        self.noDelay = True


class LeanClient(tcp.Client):
    """
    An outgoing TCP connection to an IP address, attempted as soon as it is
    made (see the module docstring).

    Create it through L{LeanConnector}, then call L{attempt}.
    """

    _log = Logger()
    _shouldShutdown = False
    _requiresResolution = False
    # Closing a connected client is _LeanConnection's (BaseClient calls it).
    _commonConnection = _LeanConnection

    def __init__(self, host: str, port: int, connector: LeanConnector, reactor: Any) -> None:
        self.connector = connector
        if ipFamily(host) == socket.AF_INET6:
            self.addressFamily = socket.AF_INET6
            self._addressType = address.IPv6Address  # type: ignore[assignment]
            self.realAddress = self.addr = tcp._resolveIPv6(host, port)
        else:
            self.realAddress = self.addr = (host, port)
        abstract.FileDescriptor.__init__(self, reactor=reactor)
        skt = rawSocket(self.addressFamily, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
        self.socket = skt  # type: ignore[assignment]
        self.fileno = skt.fileno  # type: ignore[method-assign]
        self.protocol = None  # type: ignore[assignment]

    def attempt(self) -> None:
        """
        Start connecting.  Over loopback the kernel completes the handshake
        inside the first C{connect()}, which a second one confirms; anywhere
        else the second call answers C{EALREADY} and we wait for the socket
        to become writable.
        """
        connect = self.socket.connect_ex
        result = connect(self.realAddress)
        if result in (EINPROGRESS, EWOULDBLOCK):
            result = connect(self.realAddress)
        if result in (0, EISCONN):
            self._connectNow()
        elif result in (EINPROGRESS, EALREADY, EWOULDBLOCK):
            self.doWrite = self._connectCompleted  # type: ignore[method-assign]
            self.startWriting()
        else:
            # Reported on the next reactor pass, as Twisted does: a factory
            # that retries at once from clientConnectionFailed must not
            # recurse.
            self.connector.reactor.callLater(
                0, self.failIfNotConnected, error.getConnectError((result, strerror(result)))
            )

    def _connectNow(self) -> None:
        """
        Connected within C{connect()}: build the protocol now.  An error
        raised by its C{connectionMade} is logged and closes the
        connection, as the reactor does for errors raised handling events,
        instead of escaping from C{connectTCP}.
        """
        try:
            self._connectDone()
        except BaseException:
            reason = Failure()
            self._log.failure("connecting {connector} failed", reason, connector=self.connector)
            self.connectionLost(reason)

    def failIfNotConnected(self, err: Any) -> None:
        # The connecting write handler refers back to us: drop it.
        self.__dict__.pop("doWrite", None)
        tcp.Client.failIfNotConnected(self, err)

    def _connectCompleted(self) -> None:
        """
        The socket became writable while connecting: the handshake is over,
        one way or the other.
        """
        del self.doWrite
        self.stopWriting()
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self.failIfNotConnected(error.getConnectError((err, strerror(err))))
        else:
            self._connectDone()

    def connectionLost(self, reason: Any) -> None:
        if not self.connected and not self.disconnected and hasattr(self, "socket"):
            # The reactor saw the attempt fail (an error or hang-up event):
            # say how, as the writable path does.
            err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self.failIfNotConnected(error.getConnectError((err, strerror(err))))
                return
        tcp.Client.connectionLost(self, reason)


class LeanConnector(base.BaseConnector):
    """
    An L{IConnector} for one TCP connection to an IP address, through a
    L{LeanClient}.  The timeout timer is only started if the connection did
    not complete at once.
    """

    def __init__(self, host: str, port: int, factory: Any, timeout: float | None, reactor: Any) -> None:
        base.BaseConnector.__init__(self, factory, timeout, reactor)  # type: ignore[arg-type]
        self.host = host
        self.port = port

    def connect(self) -> None:
        if self.state != "disconnected":
            raise RuntimeError("can't connect in this state")
        self.state = "connecting"
        if not self.factoryStarted:
            self.factory.doStart()
            self.factoryStarted = 1
        try:
            transport = LeanClient(self.host, self.port, self, self.reactor)
        except OSError as e:
            # No socket (too many open files...): fail on the next pass.
            self.transport = None
            self.factory.startedConnecting(self)
            self.reactor.callLater(
                0, self._failedBeforeStarting, Failure(error.ConnectBindError(e.args[0], e.args[1]))
            )
            return
        self.transport = transport  # type: ignore[assignment]
        self.factory.startedConnecting(self)
        if self.state != "connecting" or getattr(self, "transport", None) is not transport:
            # The factory stopped us from startedConnecting.
            return
        transport.attempt()
        if (
            self.state == "connecting"
            and getattr(self, "transport", None) is transport
            and self.timeout is not None
        ):
            self.timeoutID = self.reactor.callLater(
                self.timeout, transport.failIfNotConnected, error.TimeoutError()
            )

    def _failedBeforeStarting(self, reason: Failure) -> None:
        if self.state == "connecting":
            self.connectionFailed(reason)

    def connectionLost(self, reason: Any) -> None:
        # The transport refers to its connector: drop the reference back, so
        # that the pair is freed by reference counting.
        self.transport = None
        base.BaseConnector.connectionLost(self, reason)

    def _makeTransport(self) -> Any:
        raise NotImplementedError("LeanConnector.connect makes its own transport")

    def getDestination(self) -> address.IPv4Address | address.IPv6Address:
        if ipFamily(self.host) == socket.AF_INET6:
            return address.IPv6Address("TCP", self.host, self.port)
        return address.IPv4Address("TCP", self.host, self.port)


@lru_cache(maxsize=1024)
def ipFamily(host: str) -> int | None:
    """
    The address family of C{host} if it is an IP address, which
    L{LeanConnector} can dial without resolving it; L{None} for a host name.

    Remembered, because a proxy dials the same few backends over and over
    and Twisted's checks cost a few microseconds each.
    """
    if abstract.isIPAddress(host):
        return socket.AF_INET
    if abstract.isIPv6Address(host):
        return socket.AF_INET6
    return None
