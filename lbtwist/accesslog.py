"""
The access log: one line per request (HTTP mode) or connection (TCP mode),
written by a sink behind one interface, L{IAccessLog}, chosen once per
listener: by name, from those registered in L{lbtwist.extend.ACCESS_LOGS}
(the two here, C{events} and C{file}, and any registered with
L{lbtwist.extend.registerAccessLog}, chosen with C{access-log: {sink: NAME,
...}}).  A sink runs in each process that serves the listeners: with
C{workers}, in every worker, each seeing its own requests.

With C{access-log: true}, L{AccessLogEvents}: every line is a structured
L{twisted.logger} event in the C{lbtwist.access} namespace, and twistd's
C{--logger} decides where it goes (L{jsonLogger} gives JSON lines).  That
is flexible but costs tens of microseconds an event in the observers
(twistd's text observer formats the time and the message of each one),
which at tens of thousands of requests a second is most of the balancer's
time.

With C{access-log: /path/to/access.log}, L{AccessLogFile}: the lines go to
that file instead,
as nginx's C{access_log} does: formatted plainly, the timestamp made once a
second, and written in batches (at 64 KiB, or a second after the first
unwritten line, and when the balancer stops).  Log rotation: rename the file
and send C{SIGHUP}, or let logrotate use C{copytruncate}.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import FileLogObserver, Logger, jsonFileLogObserver
from zope.interface import Interface, implementer  # type: ignore[import-untyped]

from .wording import counted

HTTP_FORMAT = (
    "{client} {method} {path} {status} backend={backend} in={bytesIn} "
    "out={bytesOut} {duration:.4f}s retries={retries} proto={protocol}"
)
TCP_FORMAT = (
    "{client} tcp backend={backend} in={bytesIn} out={bytesOut} {duration:.4f}s "
    "retries={retries}"
)


class IAccessLog(Interface):
    """
    Where a listener's access-log lines go: what the built-in sinks
    implement, and what a factory given to
    L{lbtwist.extend.registerAccessLog} returns.

    Its methods are called in the reactor thread once a request is answered
    or a connection closed, on the path of every request: they must return
    at once and never raise (buffer, and write in batches or from a timer,
    as L{AccessLogFile} does).  A sink that also provides
    L{twisted.application.service.IService} is started before the
    listeners and stopped after them (flush what is pending then).

    An upgraded request (a WebSocket) is logged when its tunnel closes: its
    bytes are the tunnel's each way, its duration runs to the close.

    A sink may also have a C{reopen()} method, not part of this interface
    (a sink need not have one): it is called on C{SIGHUP} and
    C{POST /api/reload}, where the C{file} sink reopens its file, for log
    rotation.  It runs in the reactor thread; what it raises is logged with
    the sink's name, and the other sinks are reopened all the same.
    """

    def request(client: str, method: str, path: str, status: int, backend: str | None,
                bytesIn: int, bytesOut: int, duration: float, retries: int,
                protocol: str = "HTTP/1.1") -> None:
        """
        One HTTP request is answered (or its tunnel closed).

        @param client: the client's address, C{HOST:PORT}.
        @param method: the request's method, C{path} its target as sent.
        @param status: the status answered (by the backend, or the
            balancer's own: 502, 503, 504...).
        @param backend: the backend's name, or L{None} if none served it.
        @param bytesIn: bytes the client sent (the body's, or the
            tunnel's); C{bytesOut} the bytes it was sent.
        @param duration: seconds from the request to the answer's end.
        @param retries: tries after the first (failed connects, and sends
            after the first).
        @param protocol: what the client spoke, C{"HTTP/1.1"} or
            C{"HTTP/2"}.
        """

    def connection(client: str, backend: str | None, bytesIn: int, bytesOut: int,
                   duration: float, retries: int) -> None:
        """
        One TCP connection is closed: C{bytesIn} from the client,
        C{bytesOut} to it, C{duration} seconds open, C{retries} failed
        connects before its backend's (see L{request} for the others).
        """


@implementer(IAccessLog)
class AccessLogEvents:
    """
    Access-log lines as structured events in the C{lbtwist.access}
    namespace, with their fields: nothing is formatted unless an observer
    formats it.
    """

    def __init__(self, source: object = None) -> None:
        self.log = Logger(namespace="lbtwist.access", source=source)

    def request(self, client: str, method: str, path: str, status: int,
                backend: str | None, bytesIn: int, bytesOut: int, duration: float,
                retries: int, protocol: str = "HTTP/1.1") -> None:
        """
        Emit the event of one HTTP request.
        """
        self.log.info(
            HTTP_FORMAT, client=client, method=method, path=path, status=status,
            backend=backend, bytesIn=bytesIn, bytesOut=bytesOut, duration=duration,
            retries=retries, protocol=protocol,
        )

    def connection(self, client: str, backend: str | None, bytesIn: int, bytesOut: int,
                   duration: float, retries: int) -> None:
        """
        Emit the event of one TCP connection.
        """
        self.log.info(
            TCP_FORMAT, client=client, backend=backend, bytesIn=bytesIn,
            bytesOut=bytesOut, duration=duration, retries=retries,
        )


def eventsSink(options: Mapping[str, Any], clock: IReactorTime) -> AccessLogEvents:
    """
    The C{events} sink (C{access-log: true}): L{AccessLogEvents}.

    @raise ValueError: it takes no options.
    """
    if options:
        raise ValueError(f"the events sink takes no options, got {', '.join(options)}")
    return AccessLogEvents()


def fileSink(options: Mapping[str, Any], clock: IReactorTime) -> AccessLogFile:
    """
    The C{file} sink (C{access-log: PATH}): an L{AccessLogFile} appending to
    the option C{path}.

    @raise ValueError: no C{path}, or other options.
    """
    path = options.get("path")
    if not isinstance(path, str) or set(options) != {"path"}:
        raise ValueError("the file sink takes one option, path (a file name)")
    return AccessLogFile(path, clock)


def jsonLogger(stream: IO[str] | None = None) -> FileLogObserver:
    """
    A log observer writing every event as one JSON line: give
    C{twistd --logger lbtwist.http.jsonLogger}.

    It writes to the file named by C{$LBTWIST_JSON_LOG} (appended), or to
    the process's original standard output.
    """
    if stream is None:
        path = os.environ.get("LBTWIST_JSON_LOG")
        # Kept open for the life of the process, as twistd's own log file is.
        out: Any = open(path, "a", encoding="utf-8") if path else sys.__stdout__  # noqa: SIM115
    else:
        out = stream
    return jsonFileLogObserver(out, recordSeparator="")


@implementer(IAccessLog)
class AccessLogFile(Service):
    """
    Appends access-log lines to a file, buffered while it runs.

    @ivar lines: lines logged since it started.
    @ivar dropped: lines lost because the file could not be written.
    """

    log = Logger()

    def __init__(
        self,
        path: str,
        clock: IReactorTime,
        flushAfter: float = 1.0,
        bufferSize: int = 65536,
    ) -> None:
        self.path = path
        self.clock = clock
        self.flushAfter = flushAfter
        self.bufferSize = bufferSize
        self.lines = 0
        self.dropped = 0
        self._lastComplaint = float("-inf")
        self._fd: int | None = None
        self._pending: list[bytes] = []
        self._size = 0
        self._timer: Any = None
        self._second = -1
        self._stamp = b""

    def open(self) -> None:
        """
        Open (or reopen, after a rotation) the file for appending.

        @raise OSError: it cannot be opened.
        """
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        if self._fd is not None:
            self.flush()
            os.close(self._fd)
        self._fd = fd

    def reopen(self) -> None:
        """
        Reopen the file after a rotation renamed it (the optional method of
        L{IAccessLog}), on C{SIGHUP}.

        @raise OSError: it cannot be opened; the old one stays open.
        """
        self.open()

    def startService(self) -> None:
        super().startService()
        if self._fd is None:
            self.open()

    def stopService(self) -> None:
        """
        Write what is pending.  The file stays open: clients finishing
        during a graceful stop still log, each line written at once.
        """
        super().stopService()
        self.flush()

    def close(self) -> None:
        """
        Write what is pending and close the file.
        """
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _timestamp(self) -> bytes:
        now = self.clock.seconds()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(second)).encode()
        return self._stamp

    def write(self, line: str) -> None:
        """
        Add one line (without its newline), stamped with the time.
        """
        data = b"%s %s\n" % (self._timestamp(), line.encode("utf-8", "backslashreplace"))
        self._pending.append(data)
        self._size += len(data)
        self.lines += 1
        if self._size >= self.bufferSize or not self.running:
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.flushAfter, self.flush)

    def request(self, client: str, method: str, path: str, status: int,
                backend: str | None, bytesIn: int, bytesOut: int, duration: float,
                retries: int, protocol: str = "HTTP/1.1") -> None:
        """
        Write the line of one HTTP request.
        """
        self.write(httpLine(client, method, path, status, backend, bytesIn, bytesOut,
                            duration, retries, protocol))

    def connection(self, client: str, backend: str | None, bytesIn: int, bytesOut: int,
                   duration: float, retries: int) -> None:
        """
        Write the line of one TCP connection.
        """
        self.write(tcpLine(client, backend, bytesIn, bytesOut, duration, retries))

    def flush(self) -> None:
        """
        Write out every pending line now.
        """
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
        if not self._pending or self._fd is None:
            return
        data = b"".join(self._pending)
        self._pending = []
        self._size = 0
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as e:
            # A full disk must not stop the traffic: drop these lines, say so.
            self.dropped += len(view.tobytes().splitlines())
            now = self.clock.seconds()
            if now - self._lastComplaint >= 10:
                self._lastComplaint = now
                self.log.error(
                    "cannot write access log {path}: {error}; {lost} lost so far",
                    path=self.path, error=str(e), dropped=self.dropped,
                    lost=counted(self.dropped, "line"),
                )


def tcpLine(
    client: str, backend: str | None, bytesIn: int, bytesOut: int, duration: float, retries: int
) -> str:
    """
    The access-log line of one TCP connection.
    """
    return (f"{client} tcp backend={backend} in={bytesIn} out={bytesOut} "
            f"{duration:.4f}s retries={retries}")


def httpLine(
    client: str, method: str, path: str, status: int, backend: str | None,
    bytesIn: int, bytesOut: int, duration: float, retries: int,
    protocol: str = "HTTP/1.1",
) -> str:
    """
    The access-log line of one HTTP request (of an upgrade: written when its
    tunnel closes, with the tunnel's bytes and lifetime).
    """
    return (f"{client} {method} {path} {status} backend={backend} in={bytesIn} "
            f"out={bytesOut} {duration:.4f}s retries={retries} proto={protocol}")
