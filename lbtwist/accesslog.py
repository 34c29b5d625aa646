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

The file sink writes one of three formats (its option C{format}, one of
L{lbtwist.extend.FILE_FORMATS}), each a pure function here, table-tested:
C{text}, lbtwist's own line (L{httpLine}, L{tcpLine}; C{access-log: PATH});
C{json}, one JSON object a line (L{jsonHTTPLine}, L{jsonTCPLine}), as log
shippers read without a parser; and C{combined}, the NCSA combined line
nginx writes by default (L{combinedHTTPLine}, L{combinedTCPLine}), with the
request's C{Referer} and C{User-Agent}: only a pool whose sink writes that
format has them captured from its request heads (L{capturesHeaders}), so
that no other pays for it.  A line names the pool that served it (a sink
shared by pools with the same options is given each pool's own view,
L{PoolAccessLog}).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.interfaces import IReactorTime
from twisted.logger import FileLogObserver, Logger, jsonFileLogObserver
from zope.interface import Interface, implementer  # type: ignore[import-untyped]

from .extend import FILE_FORMATS
from .wording import counted

if TYPE_CHECKING:
    from .config import AccessLogSink

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
    the sink's name, and the other sinks are reopened all the same.  Nor
    is C{forPool(pool)}: a sink that has it is given each pool's lines
    through what it returns, an L{IAccessLog} for that pool (see
    L{poolView}); one without it gets every pool's lines itself.  Nor is
    C{close()}: called (after stopping a sink that is a service) once no
    pool logs to the sink any more, its last pool removed at run time.
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
    the option C{path}, in the option C{format} (C{text} by default).

    @raise ValueError: no C{path}, an unknown C{format}, or other options.
    """
    path = options.get("path")
    if not isinstance(path, str) or not set(options) <= {"path", "format"}:
        raise ValueError("the file sink takes the options path (a file name) and format "
                         f"({', '.join(FILE_FORMATS)})")
    format = options.get("format", "text")
    if format not in FILE_FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FILE_FORMATS)}, got {format!r}")
    return AccessLogFile(path, clock, format=format)


def capturesHeaders(sink: AccessLogSink | None) -> bool:
    """
    Whether a pool whose access-log sink is C{sink} needs the C{Referer}
    and C{User-Agent} of its requests: only the C{file} sink writing the
    C{combined} format does, and only for such a pool does the request plan
    capture them (L{lbtwist.http._plan.RequestRules.captureHeaders}).
    """
    return (sink is not None and sink.name == "file"
            and dict(sink.options).get("format") == "combined")


def poolView(sink: IAccessLog, pool: str) -> IAccessLog:
    """
    What pool C{pool} logs to when its sink is C{sink}: the sink's own view
    of that pool if it has one (a C{forPool(pool)} method, as
    L{AccessLogFile}'s, whose lines name the pool), else the sink itself.
    """
    forPool = getattr(sink, "forPool", None)
    return sink if forPool is None else forPool(pool)  # type: ignore[no-any-return]


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
    Appends access-log lines to a file, buffered while it runs, in one of
    L{lbtwist.extend.FILE_FORMATS}.

    @ivar format: the lines' format.
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
        format: str = "text",
    ) -> None:
        """
        @raise KeyError: C{format} is none of L{lbtwist.extend.FILE_FORMATS}.
        """
        self.path = path
        self.clock = clock
        self.flushAfter = flushAfter
        self.bufferSize = bufferSize
        self.format = format
        self.lines = 0
        self.dropped = 0
        self._lastComplaint = float("-inf")
        self._fd: int | None = None
        self._pending: list[bytes] = []
        self._size = 0
        self._timer: Any = None
        self._second = -1
        self._stamp = b""
        self._parts = ("", "")
        # The format's writers, chosen once.
        self.logRequest: Callable[..., None]
        self.logConnection: Callable[..., None]
        self.logRequest, self.logConnection = {
            "text": (self._textRequest, self._textConnection),
            "json": (self._jsonRequest, self._jsonConnection),
            "combined": (self._combinedRequest, self._combinedConnection),
        }[format]

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

    def forPool(self, pool: str) -> PoolAccessLog:
        """
        The view of this file that pool C{pool} logs to (see L{poolView}).
        """
        return PoolAccessLog(self, pool)

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

    def _now(self) -> tuple[float, time.struct_time | None]:
        """
        The time now, and the local time of its second if that second is
        not the one last seen (the formats' time strings are made once a
        second).
        """
        now = self.clock.seconds()
        second = int(now)
        if second == self._second:
            return now, None
        self._second = second
        return now, time.localtime(second)

    def write(self, line: str) -> None:
        """
        Add one line of the C{text} format (without its newline), stamped
        with the time.
        """
        self._append(b"%s %s\n" % (self._timestamp(), line.encode("utf-8", "backslashreplace")))

    def _append(self, data: bytes) -> None:
        """
        Add one whole line, its newline included.
        """
        self._pending.append(data)
        self._size += len(data)
        self.lines += 1
        if self._size >= self.bufferSize or not self.running:
            self.flush()
        elif self._timer is None:
            self._timer = self.clock.callLater(self.flushAfter, self.flush)

    def _line(self, line: str) -> None:
        """
        Add one line (without its newline) that holds its own time.
        """
        self._append(line.encode("utf-8", "backslashreplace") + b"\n")

    def request(self, client: str, method: str, path: str, status: int,
                backend: str | None, bytesIn: int, bytesOut: int, duration: float,
                retries: int, protocol: str = "HTTP/1.1", referer: str | None = None,
                userAgent: str | None = None) -> None:
        """
        Write the line of one HTTP request, of no pool (see L{forPool}):
        with its C{Referer} and C{User-Agent} if given (the C{combined}
        format writes them).
        """
        self.logRequest(None, client, method, path, status, backend, bytesIn, bytesOut,
                        duration, retries, protocol, referer, userAgent)

    def connection(self, client: str, backend: str | None, bytesIn: int, bytesOut: int,
                   duration: float, retries: int) -> None:
        """
        Write the line of one TCP connection, of no pool (see L{forPool}).
        """
        self.logConnection(None, client, backend, bytesIn, bytesOut, duration, retries)

    def _textRequest(self, pool: str | None, client: str, method: str, path: str,
                     status: int, backend: str | None, bytesIn: int, bytesOut: int,
                     duration: float, retries: int, protocol: str, referer: str | None,
                     userAgent: str | None) -> None:
        self.write(httpLine(client, method, path, status, backend, bytesIn, bytesOut,
                            duration, retries, protocol))

    def _textConnection(self, pool: str | None, client: str, backend: str | None,
                        bytesIn: int, bytesOut: int, duration: float, retries: int) -> None:
        self.write(tcpLine(client, backend, bytesIn, bytesOut, duration, retries))

    def _jsonTime(self) -> str:
        now, tm = self._now()
        if tm is not None:
            self._parts = rfc3339Parts(tm)
        prefix, offset = self._parts
        return f"{prefix}.{int((now % 1) * 1000):03d}{offset}"

    def _jsonRequest(self, pool: str | None, client: str, method: str, path: str,
                     status: int, backend: str | None, bytesIn: int, bytesOut: int,
                     duration: float, retries: int, protocol: str, referer: str | None,
                     userAgent: str | None) -> None:
        self._line(jsonHTTPLine(self._jsonTime(), pool, client, method, path, status,
                                backend, bytesIn, bytesOut, duration, retries, protocol))

    def _jsonConnection(self, pool: str | None, client: str, backend: str | None,
                        bytesIn: int, bytesOut: int, duration: float, retries: int) -> None:
        self._line(jsonTCPLine(self._jsonTime(), pool, client, backend, bytesIn, bytesOut,
                               duration, retries))

    def _combinedTime(self) -> str:
        _, tm = self._now()
        if tm is not None:
            self._parts = (nginxTime(tm), "")
        return self._parts[0]

    def _combinedRequest(self, pool: str | None, client: str, method: str, path: str,
                         status: int, backend: str | None, bytesIn: int, bytesOut: int,
                         duration: float, retries: int, protocol: str, referer: str | None,
                         userAgent: str | None) -> None:
        self._line(combinedHTTPLine(self._combinedTime(), client, method, path, protocol,
                                    status, bytesOut, referer, userAgent, backend, duration))

    def _combinedConnection(self, pool: str | None, client: str, backend: str | None,
                            bytesIn: int, bytesOut: int, duration: float,
                            retries: int) -> None:
        self._line(combinedTCPLine(self._combinedTime(), client, backend, bytesOut, duration))

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


@implementer(IAccessLog)
class PoolAccessLog:
    """
    One pool's view of an L{AccessLogFile} that pools with the same options
    share: its lines name the pool (in the formats that have the field),
    and take the C{Referer} and C{User-Agent} the pool captured.

    @ivar file: the shared file.
    @ivar pool: the pool's name.
    """

    __slots__ = ("file", "pool")

    def __init__(self, file: AccessLogFile, pool: str) -> None:
        self.file = file
        self.pool = pool

    def request(self, client: str, method: str, path: str, status: int,
                backend: str | None, bytesIn: int, bytesOut: int, duration: float,
                retries: int, protocol: str = "HTTP/1.1", referer: str | None = None,
                userAgent: str | None = None) -> None:
        """
        Write the line of one HTTP request the pool served.
        """
        self.file.logRequest(self.pool, client, method, path, status, backend, bytesIn,
                             bytesOut, duration, retries, protocol, referer, userAgent)

    def connection(self, client: str, backend: str | None, bytesIn: int, bytesOut: int,
                   duration: float, retries: int) -> None:
        """
        Write the line of one TCP connection the pool served.
        """
        self.file.logConnection(self.pool, client, backend, bytesIn, bytesOut, duration,
                                retries)


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


def splitClient(client: str) -> tuple[str, int | None]:
    """
    A client's address (C{HOST:PORT}, as the protocols describe it; an IPv6
    host unbracketed) as its host and port; a client with no port (a UNIX
    socket's) as itself and L{None}.
    """
    host, sep, port = client.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return client, None
    if host[:1] == "[" and host[-1:] == "]":
        host = host[1:-1]
    return host, int(port)


def rfc3339Parts(tm: time.struct_time) -> tuple[str, str]:
    """
    The local time C{tm} in RFC 3339, as the date and time to the second
    and the UTC offset (C{+HH:MM}, C{Z} for UTC), between which the
    milliseconds go.
    """
    offset = tm.tm_gmtoff or 0
    if offset == 0:
        zone = "Z"
    else:
        sign = "-" if offset < 0 else "+"
        minutes = abs(offset) // 60
        zone = f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"
    return time.strftime("%Y-%m-%dT%H:%M:%S", tm), zone


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun",
           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def nginxTime(tm: time.struct_time) -> str:
    """
    The local time C{tm} as nginx's C{$time_local} writes it
    (C{29/Nov/2026:06:00:00 +0000}), its month in English whatever the
    locale.
    """
    offset = tm.tm_gmtoff or 0
    minutes = abs(offset) // 60
    sign = "-" if offset < 0 else "+"
    return (f"{tm.tm_mday:02d}/{_MONTHS[tm.tm_mon - 1]}/{tm.tm_year:04d}:"
            f"{tm.tm_hour:02d}:{tm.tm_min:02d}:{tm.tm_sec:02d} "
            f"{sign}{minutes // 60:02d}{minutes % 60:02d}")


# One line of JSON: no spaces, and not ASCII-only (the line is UTF-8); control
# characters are escaped all the same, so a line stays one line.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def jsonHTTPLine(
    time: str, pool: str | None, client: str, method: str, path: str, status: int,
    backend: str | None, bytesIn: int, bytesOut: int, duration: float, retries: int,
    protocol: str,
) -> str:
    """
    The C{json} line of one HTTP request: an object with the fields C{time}
    (RFC 3339, to the millisecond), C{type} (C{"http"}), C{pool},
    C{client} and C{client_port}, C{method}, C{path}, C{protocol},
    C{status}, C{backend} (C{null} if none), C{bytes_in}, C{bytes_out},
    C{duration} (seconds) and C{retries}.
    """
    host, port = splitClient(client)
    return _JSON.encode({
        "time": time, "type": "http", "pool": pool, "client": host, "client_port": port,
        "method": method, "path": path, "protocol": protocol, "status": status,
        "backend": backend, "bytes_in": bytesIn, "bytes_out": bytesOut,
        "duration": round(duration, 6), "retries": retries,
    })


def jsonTCPLine(
    time: str, pool: str | None, client: str, backend: str | None, bytesIn: int,
    bytesOut: int, duration: float, retries: int,
) -> str:
    """
    The C{json} line of one TCP connection: C{type} C{"tcp"}, and the
    fields of L{jsonHTTPLine} a connection has (C{bytes_in} from the
    client, C{bytes_out} to it, C{duration} open, C{retries} failed
    connects).
    """
    host, port = splitClient(client)
    return _JSON.encode({
        "time": time, "type": "tcp", "pool": pool, "client": host, "client_port": port,
        "backend": backend, "bytes_in": bytesIn, "bytes_out": bytesOut,
        "duration": round(duration, 6), "retries": retries,
    })


# nginx's default escaping of a variable in a log line: a double quote, a
# backslash, and every byte below 0x20 or above 0x7e as \xHH, so that a
# value cannot end its quotes or its line.
_NGINX_ESCAPES = {c: f"\\x{c:02X}" for c in (*range(0x20), 0x22, 0x5C, *range(0x7F, 0x100))}


def nginxValue(value: str | None) -> str:
    """
    A value as nginx writes a variable in a log line: escaped (see
    L{_NGINX_ESCAPES}), and C{-} for none or an empty one.
    """
    if not value:
        return "-"
    return value.translate(_NGINX_ESCAPES)


def combinedHTTPLine(
    time: str, client: str, method: str, path: str, protocol: str, status: int,
    bytesOut: int, referer: str | None, userAgent: str | None, backend: str | None,
    duration: float,
) -> str:
    """
    The C{combined} line of one HTTP request: nginx's default
    C{$remote_addr - - [$time_local] "$request" $status $body_bytes_sent
    "$http_referer" "$http_user_agent"}, then lbtwist's extras as nginx users
    append theirs, C{backend="NAME"} and C{rt=SECONDS} (nginx's
    C{$request_time}, to the millisecond).

    @param time: as L{nginxTime} writes it.
    """
    request = nginxValue(f"{method} {path} {protocol}")
    return (f'{splitClient(client)[0]} - - [{time}] "{request}" {status} {bytesOut} '
            f'"{nginxValue(referer)}" "{nginxValue(userAgent)}" '
            f'backend="{nginxValue(backend)}" rt={duration:.3f}')


def combinedTCPLine(
    time: str, client: str, backend: str | None, bytesOut: int, duration: float,
) -> str:
    """
    The C{combined} line of one TCP connection, in the shape of an HTTP
    request's so that one parser reads both: its request C{"TCP"}, its
    status nginx's stream module's (200 when a backend served it, 502 when
    none did), its bytes those sent to the client, no referer or user agent.
    """
    status = 502 if backend is None else 200
    return (f'{splitClient(client)[0]} - - [{time}] "TCP" {status} {bytesOut} "-" "-" '
            f'backend="{nginxValue(backend)}" rt={duration:.3f}')
