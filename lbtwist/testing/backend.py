"""
A scriptable HTTP/1.1 test backend.

Each request chooses its own answer through its query string::

    GET /?status=503&bytes=10k&delay=200ms&close=mid-body

    status=NNN          the response status (default 200)
    bytes=N[k|m]        the body size (default: one short line)
    delay=DURATION      wait before the response head (C{250ms}, C{2s})
    trickle=DURATION    wait between 4 KiB pieces of the body
    close=WHEN          close the connection C{before} the response, right
                        C{after-head}, C{mid-body}, or C{after} it
    reset=WHEN          the same, with a reset (RST) instead of a FIN
    stall=1             read the request and never answer

Every complete request is recorded with an id (its C{X-Request-Id} header,
else its C{id} parameter, else a counter), in memory and, before the answer
(so the log survives a C{SIGKILL}): with C{--log FILE} as one JSON line in
that file, else as one readable line on standard output.  Requests that are
not well-formed HTTP are counted apart.

Whole-backend misbehaviour: reset every Nth request after reading it
(C{--reset-every}), stall every request (C{--stall}), or refuse connections
while C{SIGUSR1} has toggled it off.  A test kills (C{SIGKILL}) or freezes
(C{SIGSTOP}) the process to make it die or hang.

Run it as C{python -m lbtwist.testing.backend --port 0 --name a --log a.jsonl};
it writes C{listening on PORT} to standard output once it listens (and,
without C{--log}, a line per request after that).
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import sys
from typing import IO, Any
from urllib.parse import parse_qs, urlsplit

import attrs
from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.python.failure import Failure

_SIZE = re.compile(r"\s*([0-9]+)\s*([kKmM]?)\s*")
_DURATION = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s)?\s*")
_PIECE = 4096
_REASONS = {200: b"OK", 404: b"Not Found", 500: b"Internal Server Error",
            502: b"Bad Gateway", 503: b"Service Unavailable"}


def parseSize(text: str) -> int:
    """
    A byte count: C{"512"}, C{"10k"} (KiB) or C{"2m"} (MiB).

    @raise ValueError: it is not one.
    """
    m = _SIZE.fullmatch(text)
    if not m:
        raise ValueError(f"not a size: {text!r}")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1048576}[m.group(2).lower()]


def parseDuration(text: str) -> float:
    """
    Seconds from C{"200ms"}, C{"1.5s"} or C{"2"} (seconds).

    @raise ValueError: it is not a duration.
    """
    m = _DURATION.fullmatch(text)
    if not m:
        raise ValueError(f"not a duration: {text!r}")
    return float(m.group(1)) * (0.001 if m.group(2) == "ms" else 1.0)


@attrs.frozen
class RecordedRequest:
    """
    A complete request as the backend received it.

    @ivar seq: its position among all the requests this backend received.
    """

    backend: str
    seq: int
    id: str
    method: str
    path: str
    bodyLength: int
    connection: int


@attrs.frozen
class Script:
    """
    What to do with one request, from its query string.
    """

    status: int = 200
    size: int | None = None
    delay: float = 0.0
    trickle: float = 0.0
    close: str | None = None
    reset: bool = False
    stall: bool = False

    @classmethod
    def fromURL(cls, url: bytes) -> Script:
        """
        Read the script from a request target; bad values are ignored.
        """
        query = parse_qs(urlsplit(url.decode("latin-1")).query)
        changes: dict[str, Any] = {}

        def one(name: str) -> str | None:
            values = query.get(name)
            return values[-1] if values else None

        try:
            if one("status"):
                changes["status"] = max(100, min(599, int(one("status") or 200)))
            if one("bytes"):
                changes["size"] = parseSize(one("bytes") or "0")
            if one("delay"):
                changes["delay"] = parseDuration(one("delay") or "0")
            if one("trickle"):
                changes["trickle"] = parseDuration(one("trickle") or "0")
        except ValueError:
            pass
        for key in ("close", "reset"):
            when = one(key)
            if when in ("before", "after-head", "mid-body", "after"):
                changes["close"] = when
                changes["reset"] = key == "reset"
        changes["stall"] = one("stall") in ("1", "true", "yes")
        return cls(**changes)


class ScriptedConnection(Protocol):
    """
    One client connection of a L{ScriptedBackend}: parses requests with
    llhttp, records them, and answers each as its script says, in order.
    """

    transport: Any

    def __init__(self, factory: ScriptedBackend, number: int) -> None:
        self.factory = factory
        self.number = number
        self.parser = HttpRequestParser(self)
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._bodyLength = 0
        self._busy = False
        self._waiting: list[tuple[RecordedRequest, Script, bool]] = []
        self._calls: list[Any] = []
        self.gone = False

    def connectionMade(self) -> None:
        self.factory.open.add(self)
        self.factory.connections += 1

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.gone = True
        self.factory.open.discard(self)
        for call in self._calls:
            if call.active():
                call.cancel()
        self._calls = []

    def dataReceived(self, data: bytes) -> None:
        if self.gone:
            return
        try:
            while data:
                try:
                    self.parser.feed_data(data)
                    break
                except HttpParserUpgrade as e:
                    # An Upgrade this backend does not do (h2c, which curl
                    # --http2 asks for; a WebSocket): the request is
                    # answered over HTTP/1.1, as RFC 9110 7.8 lets a
                    # server do, and what follows it is the next request.
                    offset = e.args[0] if e.args else len(data)
                    if offset <= 0:
                        raise HttpParserError("upgrade before any request") from None
                    data = data[offset:]
        except HttpParserError:
            self.factory.malformed += 1
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            self.transport.loseConnection()
            self.gone = True

    # -- llhttp callbacks ---------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = []
        self._bodyLength = 0

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self._bodyLength += len(body)

    def on_message_complete(self) -> None:
        factory = self.factory
        requestId = None
        for name, value in self._headers:
            if name.lower() == b"x-request-id":
                requestId = value.decode("latin-1")
        query = parse_qs(urlsplit(self._url.decode("latin-1")).query)
        if requestId is None and query.get("id"):
            requestId = query["id"][-1]
        factory.received += 1
        if requestId is None:
            requestId = f"{factory.name}-{factory.received}"
        record = RecordedRequest(
            backend=factory.name,
            seq=factory.received,
            id=requestId,
            method=self.parser.get_method().decode("latin-1"),
            path=self._url.decode("latin-1"),
            bodyLength=self._bodyLength,
            connection=self.number,
        )
        factory.record(record)
        script = Script.fromURL(self._url)
        if factory.stallAll:
            script = attrs.evolve(script, stall=True)
        if factory.resetEvery and factory.received % factory.resetEvery == 0:
            script = attrs.evolve(script, close="before", reset=True)
        self._waiting.append((record, script, self.parser.should_keep_alive()))
        if not self._busy:
            self._next()

    # -- answering ------------------------------------------------------------

    def _later(self, delay: float, f: Any, *args: Any) -> None:
        self._calls = [c for c in self._calls if c.active()]
        self._calls.append(self.factory.reactor.callLater(delay, f, *args))

    def _next(self) -> None:
        if self.gone or not self._waiting:
            self._busy = False
            return
        self._busy = True
        record, script, keepAlive = self._waiting.pop(0)
        if script.stall:
            return
        if script.close == "before":
            self._end(script.reset)
            return
        if script.delay:
            self._later(script.delay, self._head, record, script, keepAlive)
        else:
            self._head(record, script, keepAlive)

    def _end(self, reset: bool) -> None:
        self.gone = True
        if reset:
            self.transport.abortConnection()
        else:
            self.transport.loseConnection()

    def _head(self, record: RecordedRequest, script: Script, keepAlive: bool) -> None:
        if self.gone:
            return
        if script.size is None:
            body = f"{self.factory.name} {record.id}\n".encode()
        else:
            body = b"x" * script.size
        keep = keepAlive and script.close is None
        head = b"HTTP/1.1 %d %s\r\nContent-Length: %d\r\nX-Backend: %s\r\nX-Request-Id: %s\r\n%s\r\n" % (
            script.status, _REASONS.get(script.status, b"Status"), len(body),
            self.factory.name.encode(), record.id.encode("latin-1"),
            b"" if keep else b"Connection: close\r\n",
        )
        if record.method == "HEAD":
            body = b""
        self.transport.write(head)
        if script.close == "after-head":
            self._end(script.reset)
            return
        if script.close == "mid-body":
            body = body[: len(body) // 2]
        if script.trickle and body:
            self._trickle(body, script, keep)
            return
        self.transport.write(body)
        self._finish(script, keep)

    def _trickle(self, body: bytes, script: Script, keep: bool) -> None:
        if self.gone:
            return
        self.transport.write(body[:_PIECE])
        rest = body[_PIECE:]
        if rest:
            self._later(script.trickle, self._trickle, rest, script, keep)
        else:
            self._finish(script, keep)

    def _finish(self, script: Script, keep: bool) -> None:
        if script.close is not None:
            self._end(script.reset)
        elif not keep:
            self.transport.loseConnection()
            self.gone = True
        else:
            self._next()


class ScriptedBackend(ServerFactory):
    """
    A test backend whose every answer is chosen by the request.

    @ivar requests: every complete request received, in order.
    @ivar malformed: requests that were not well-formed HTTP.
    @ivar resetEvery: reset every Nth request after reading it (0: never).
    @ivar stallAll: never answer any request.
    @ivar open: the connections open now.
    """

    noisy = False

    def __init__(self, name: str, reactor: Any, log: IO[str] | None = None,
                 resetEvery: int = 0, stallAll: bool = False,
                 console: IO[str] | None = None) -> None:
        self.name = name
        self.reactor = reactor
        self.log = log
        self.console = console
        self.resetEvery = resetEvery
        self.stallAll = stallAll
        self.requests: list[RecordedRequest] = []
        self.received = 0
        self.malformed = 0
        self.connections = 0
        self.open: set[ScriptedConnection] = set()

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return ScriptedConnection(self, self.connections + 1)

    def record(self, request: RecordedRequest) -> None:
        """
        Keep C{request}, and write it at once to the log file (a JSON line)
        and the console (a line for people), when they are given.
        """
        self.requests.append(request)
        if self.log is not None:
            self.log.write(json.dumps(attrs.asdict(request)) + "\n")
            self.log.flush()
        if self.console is not None:
            self.console.write(
                f"{request.backend} #{request.seq} {request.method} {request.path} "
                f"id={request.id} body={request.bodyLength} "
                f"connection={request.connection}\n"
            )
            self.console.flush()

    def closeAll(self) -> None:
        """
        Abort every open connection (the test is over, or the backend died).
        """
        for conn in list(self.open):
            conn.transport.abortConnection()


def readLog(path: str) -> list[RecordedRequest]:
    """
    The requests recorded in a backend's log file (a last line cut short by
    a kill is skipped).
    """
    out = []
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(RecordedRequest(**json.loads(line)))
                except (ValueError, TypeError):
                    continue
    except FileNotFoundError:
        pass
    return out


def main(argv: list[str] | None = None) -> None:
    """
    Run a scripted backend on 127.0.0.1 until killed.
    """
    parser = argparse.ArgumentParser(prog="python -m lbtwist.testing.backend",
                                     description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--interface", default="127.0.0.1")
    parser.add_argument("--name", help="the name it answers with (default: backend-PORT)")
    parser.add_argument("--log", help="append each request as a JSON line to this file "
                        "(default: a readable line per request on standard output)")
    parser.add_argument("--reset-every", type=int, default=0, metavar="N")
    parser.add_argument("--stall", action="store_true")
    args = parser.parse_args(argv)

    from twisted.internet import reactor

    log = open(args.log, "a", encoding="utf-8") if args.log else None  # noqa: SIM115
    factory = ScriptedBackend(args.name or "backend", reactor, log, args.reset_every, args.stall,
                              console=None if log is not None else sys.stdout)
    listening: list[Any] = [reactor.listenTCP(args.port, factory, backlog=1024,  # type: ignore[attr-defined]
                                              interface=args.interface)]
    port = listening[0].getHost().port
    if args.name is None:
        # Two backends started alike can still be told apart.
        factory.name = f"backend-{port}"

    def toggle(signum: int, frame: Any) -> None:
        # Refuse connections (stop listening) or accept them again.
        def flip() -> None:
            if listening:
                listening.pop().stopListening()
            else:
                listening.append(reactor.listenTCP(port, factory, backlog=1024,  # type: ignore[attr-defined]
                                                   interface=args.interface))
        reactor.callFromThread(flip)  # type: ignore[attr-defined]

    signal.signal(signal.SIGUSR1, toggle)
    sys.stdout.write(f"listening on {port}\n")
    sys.stdout.flush()
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
