"""
A sample extension of lbtwist, for the tests: a balancing policy, a kind of
health check and an access-log sink, registered with L{lbtwist.extend} when
this module is imported (C{extensions: [tests.extension_sample]}).

  - C{policy: first}: every client to the first backend that takes new
    clients (the others are spares);
  - C{health: {type: banner}}: a backend is up if the first line it sends
    on connecting is C{ready};
  - C{access-log: {sink: jsonlines, path: FILE}}: each request or
    connection as one JSON object, with the process's PID, appended to
    C{FILE} (and kept in C{records}).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer  # type: ignore[import-untyped]

from lbtwist.accesslog import IAccessLog
from lbtwist.dial import Dialler
from lbtwist.extend import registerAccessLog, registerCheck, registerPolicy
from lbtwist.health import ProbeFailed
from lbtwist.policies import Balanced
from lbtwist.pool import Backend

NAMES = {"policy": "first", "check": "banner", "sink": "jsonlines"}


class First:
    """
    The first backend offered, always.
    """

    def __init__(self, rng: random.Random) -> None:
        pass

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        The first of C{backends}, in configuration order.
        """
        return backends[0]


class _FirstLine(Protocol):
    """
    Reads one line, fires its Deferred with it and hangs up.
    """

    def __init__(self, line: Deferred[bytes]) -> None:
        self.line = line
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        if b"\n" in self.buffer and not self.line.called:
            self.line.callback(self.buffer.split(b"\n", 1)[0])
            self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure | None = None) -> None:
        if not self.line.called:
            self.line.errback(ProbeFailed("closed before a line"))


class BannerProbe:
    """
    A backend is healthy if its first line is C{ready}.
    """

    def __init__(self, dialler: Dialler) -> None:
        self.dialler = dialler

    def __call__(self, backend: Backend) -> Deferred[None]:
        """
        Connect as traffic does, and judge the first line; cancelled (on
        the check's timeout), close the connection or stop connecting.
        """
        reader: list[_FirstLine] = []

        def cancel(d: Deferred[bytes]) -> None:
            if reader:
                reader[0].transport.abortConnection()  # type: ignore[union-attr]
            else:
                connecting.cancel()

        line: Deferred[bytes] = Deferred(cancel)

        class _Factory(Factory):
            noisy = False

            def buildProtocol(self, addr: IAddress | None) -> Protocol:
                reader.append(_FirstLine(line))
                return reader[0]

        endpoint = self.dialler.endpoint(backend.endpoint, backend.config.tls)
        connecting = endpoint.connect(_Factory())
        connecting.addErrback(lambda f: None if line.called else line.errback(f))

        def judge(first: bytes) -> None:
            if first != b"ready":
                raise ProbeFailed(f"said {first!r}, not 'ready'")

        return line.addCallback(judge)


@implementer(IAccessLog)
class JSONLines(Service):
    """
    Each request or connection as a JSON object: kept in C{records}, and
    appended to C{path} (one write a line) while it runs, if given.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.records: list[dict[str, Any]] = []
        self._fd: int | None = None

    def startService(self) -> None:
        super().startService()
        if self.path is not None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)

    def stopService(self) -> None:
        super().stopService()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _record(self, **fields: Any) -> None:
        fields["pid"] = os.getpid()
        self.records.append(fields)
        if self._fd is not None:
            os.write(self._fd, json.dumps(fields).encode() + b"\n")

    def request(self, client: str, method: str, path: str, status: int, backend: str | None,
                bytesIn: int, bytesOut: int, duration: float, retries: int,
                protocol: str = "HTTP/1.1") -> None:
        """
        Record an HTTP request.
        """
        self._record(kind="http", client=client, method=method, path=path, status=status,
                     backend=backend, bytesIn=bytesIn, bytesOut=bytesOut,
                     duration=duration, retries=retries, protocol=protocol)

    def connection(self, client: str, backend: str | None, bytesIn: int, bytesOut: int,
                   duration: float, retries: int) -> None:
        """
        Record a TCP connection.
        """
        self._record(kind="tcp", client=client, backend=backend, bytesIn=bytesIn,
                     bytesOut=bytesOut, duration=duration, retries=retries)


def jsonLines(options: Mapping[str, Any], clock: IReactorTime) -> JSONLines:
    """
    The C{jsonlines} sink; its one option is C{path}.

    @raise ValueError: another option.
    """
    unknown = set(options) - {"path"}
    if unknown:
        raise ValueError(f"unknown option {', '.join(sorted(unknown))} (expected path)")
    return JSONLines(options.get("path"))


registerPolicy("first", First)
registerCheck("banner", BannerProbe)
registerAccessLog("jsonlines", jsonLines)
