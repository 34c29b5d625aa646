"""
Write-through for relayed bytes, and half-closes without a reactor pass.

Twisted's C{transport.write} only buffers: the bytes go out on the reactor's
next pass, after an C{epoll_ctl} call to watch the socket for writability
and another to stop watching it.  A relay writes every chunk it reads, so
that is two system calls and a reactor pass per chunk that a proxy like
HAProxy does not pay.

L{writeThrough} gives a write function that sends straight to the socket
when nothing is queued on the transport, and hands only what the kernel did
not take to C{transport.write}, which queues it, watches the socket and
pauses producers as usual.  Order is kept: once anything is queued, every
later write queues behind it until Twisted has flushed the queue.

On L{lbtwist.reactor.LeanEPollReactor}, small writes to a lean connection
are held until the reactor's pass ends, then sent in one C{send} per
connection (L{writeNow}, L{sendHeld}): a process woken by the first of a
pass's responses would otherwise often run, find one, and sleep again
before the next, and each of those wake-ups is paid by the sender.

L{halfClose} and L{close} do the same for shutting a connection down: with
nothing queued, the FIN goes out at once instead of after a round of
C{epoll_ctl} calls and a reactor pass; with something queued, Twisted sends
the queue first, as usual.
"""

from __future__ import annotations

from socket import MSG_MORE
from typing import Any, Callable

from twisted.internet.tcp import Connection
from twisted.protocols.tls import TLSMemoryBIOProtocol


def _idle(transport: Connection) -> bool:
    """
    Whether C{transport} is a plain (not TLS) socket open for writing with
    nothing queued.
    """
    return not (
        transport.TLS
        or getattr(transport, "held", None) is not None
        or transport._tempDataLen
        or transport.offset != len(transport.dataBuffer)
        or transport.disconnecting
        or transport._writeDisconnecting
        or not transport.connected
    )


def halfClose(transport: Any) -> None:
    """
    Shut down the write side of C{transport} (send FIN) and keep reading;
    a transport that cannot half-close (TLS) is closed once flushed.
    """
    if isinstance(transport, Connection) and _idle(transport):
        # What Twisted's doWrite does once the queue is empty, done now.
        transport._writeDisconnecting = True
        transport._writeDisconnected = True
        transport._closeWriteConnection()
    elif isinstance(transport, TLSMemoryBIOProtocol):
        # TLS has no half-close: its close_notify ends the whole stream,
        # after what is queued has been sent.  (The TLS wrapper claims its
        # socket's interfaces and forwards loseWriteConnection to it, which
        # would shut the socket down under TLS.)
        transport.loseConnection()
    else:
        transport.loseWriteConnection()


def close(transport: Any) -> None:
    """
    Close C{transport} once what is queued is sent: at once if nothing is.
    """
    if isinstance(transport, Connection) and _idle(transport):
        # A transport whose write side is marked finished closes without
        # waiting for a writable event (see FileDescriptor.loseConnection);
        # closing the socket sends the FIN, so no shutdown() is needed.
        transport._writeDisconnected = True
    transport.loseConnection()


# Writes this size and over are not held for the end of the pass (see
# L{writeNow}): the wake-ups saved count for little beside the copying, and
# bytes held in bulk for a pass would be copied to the kernel from memory
# rather than the cache (a 1 MiB response took a third more time).
HOLD_BELOW = 16384


def writeNow(transport: Any, data: bytes, flags: int = 0,
             beforeQueue: Callable[[], None] | None = None) -> bool:
    """
    Write C{data} to C{transport}: to its socket if nothing is queued
    (with C{send}'s C{flags}), queuing only what the kernel did not take.

    On a lean connection (L{lbtwist.leantcp}) of L{LeanEPollReactor}, the
    bytes are held until the reactor's pass ends, and what the connection
    was given in the pass goes in one C{send} then (L{sendHeld}): a pass
    relays many requests and responses, and a process woken by the first
    of them would otherwise often run, find one, and sleep again before
    the next, each wake-up paid by the sender (the kernel's part of a
    keep-alive request fell from 15.4 to 12.6 µs).  Bytes written with C{flags},
    and writes of L{HOLD_BELOW} bytes or more, go at once, after any held.

    @param beforeQueue: called before any of C{data} queues on the
        transport, now or when held bytes are sent.

    @return: whether it all went to the socket or is held for it (nothing
        was queued).
    """
    # (L{_idle}, written out: this is every relayed response's path.)
    if isinstance(transport, Connection) and not (
        transport._tempDataLen
        or transport.offset != len(transport.dataBuffer)
        or transport.disconnecting
        or transport._writeDisconnecting
        or not transport.connected
        or transport.TLS
    ):
        holders = getattr(transport, "holders", None)
        if holders is not None:
            lean: Any = transport
            held = lean.held
            if held is None:
                if len(data) < HOLD_BELOW and not flags:
                    lean.held = data
                    holders.append(transport)
                    if beforeQueue is not None:
                        lean.heldQueues = beforeQueue
                    return True
            elif len(held) + len(data) < HOLD_BELOW and not flags:
                lean.held = held + data
                if beforeQueue is not None:
                    lean.heldQueues = beforeQueue
                return True
            else:
                # (More than is held back, or bytes with flags: what is
                # held goes first, now.)
                sendHeld(transport)
                if transport._tempDataLen:
                    if beforeQueue is not None:
                        beforeQueue()
                    transport.write(data)
                    return False
        try:
            sent = transport.socket.send(data, flags)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Let Twisted find the broken connection on its own path.
            sent = 0
        if sent == len(data):
            return True
        data = data[sent:]
    if beforeQueue is not None:
        beforeQueue()
    transport.write(data)
    return False


def sendHeld(transport: Any) -> None:
    """
    Send what L{writeNow} held for the end of the reactor's pass on
    C{transport}, in one C{send}; queue what the kernel does not take, in
    front of anything Twisted queued after it (L{queueFirst}).  A
    connection closed meanwhile drops them, as
    Twisted drops its queue.  (L{LeanEPollReactor.sendHeld} does this for
    each connection holding bytes, written out.)
    """
    data = transport.held
    queues = transport.heldQueues
    transport.held = transport.heldQueues = None
    if not transport.connected:
        return
    try:
        sent = transport.socket.send(data)
    except OSError:
        # Full, or broken: Twisted finds a broken connection on its own path.
        sent = 0
    if sent != len(data):
        queueFirst(transport, data[sent:], queues)


def queueFirst(transport: Any, rest: bytes, beforeQueue: Callable[[], None] | None) -> None:
    """
    Queue C{rest}, what the kernel did not take of the bytes held on
    C{transport}, in front of anything Twisted queued after them (all of it
    still in C{_tempDataBuffer}: the connection's C{doWrite} sends held bytes
    first); C{beforeQueue} first.
    """
    if beforeQueue is not None:
        beforeQueue()
    if transport._tempDataLen:
        transport._tempDataBuffer.insert(0, rest)
        transport._tempDataLen += len(rest)
        transport._maybePauseProducer()
    else:
        transport.write(rest)


def writeLast(transport: Any, data: bytes) -> None:
    """
    Write C{data}, the last before a half-close or close of C{transport}
    that follows at once: to its socket with C{MSG_MORE} if nothing is
    queued, so that the kernel holds those bytes for the FIN that comes
    next and sends both in one segment (as HAProxy does); else queued, as
    L{writeNow} does.  (Whatever ends the write side next sends the held
    bytes: a FIN, or, should anything else be written first, that write.)
    """
    writeNow(transport, data, MSG_MORE)


def writeThrough(transport: Any,
                 beforeQueue: Callable[[], None] | None = None) -> Callable[[bytes], None]:
    """
    A function that writes C{data} to C{transport}, straight to its socket
    when nothing is queued.

    Transports that are not plain sockets (test doubles, TLS over a socket or
    over another transport) get their own C{write}, unchanged.  This is L{writeNow} bound to one transport, for
    the relay's per-chunk path.

    @param beforeQueue: called before any write that queues on the
        transport (at once, for a transport written through C{write}
        only).  A relay registers its producer with it: one whose bytes
        always go straight to the socket, as most do, never has to
        register and unregister one (four calls a connection).
    """
    if not isinstance(transport, Connection):
        if beforeQueue is not None:
            beforeQueue()
        return transport.write  # type: ignore[no-any-return]

    # (It holds the transport alone, not its bound send and write, nor a
    # second function for the queue: a relay keeps one of these per side
    # for as long as a connection lives, idle or not.)
    def sendOrQueue(data: bytes) -> None:
        if _idle(transport):
            try:
                sent = transport.socket.send(data)
            except OSError:
                # The kernel took nothing (its buffer is full), or the
                # connection is broken: Twisted finds that on its own path
                # and reports it through connectionLost.
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        if beforeQueue is not None:
            beforeQueue()
        transport.write(data)

    return sendOrQueue
