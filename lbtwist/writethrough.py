"""
Write-through for relayed bytes.

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
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.tcp import Connection


def writeThrough(transport: Any) -> Callable[[bytes], None]:
    """
    A function that writes C{data} to C{transport}, straight to its socket
    when nothing is queued.

    Transports that are not plain sockets (TLS, test doubles) get their own
    C{write}, unchanged.
    """
    if not isinstance(transport, Connection):
        return transport.write  # type: ignore[no-any-return]
    send = transport.socket.send
    write = transport.write

    def sendOrQueue(data: bytes) -> None:
        if (
            transport._tempDataLen
            or transport.offset != len(transport.dataBuffer)
            or transport.disconnecting
            or transport._writeDisconnecting
            or not transport.connected
        ):
            write(data)
            return
        try:
            sent = send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            # Let Twisted find the broken connection on its own path and
            # report it through connectionLost.
            write(data)
            return
        if sent < len(data):
            write(data[sent:])

    return sendOrQueue
