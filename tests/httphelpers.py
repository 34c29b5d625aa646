"""
Helpers for the HTTP mode tests: scriptable backends that record what they
receive, a balancer on a real port, and blocking clients run in threads.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

from httptools import HttpParserUpgrade, HttpRequestParser
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.trial.unittest import TestCase

from lbtwist.config import parseConfig
from lbtwist.dial import Dialler
from lbtwist.http import HTTPProxyFactory
from lbtwist.pool import BackendPool

reactor: Any = _reactor

# What L{rawExchange} appends when the peer did not close in time.
TIMED_OUT = b"<still open>"


class BackendRequest:
    """
    A request as a test backend received it.
    """

    def __init__(self) -> None:
        self.method = b""
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.connection: RecordingProtocol | None = None

    def header(self, name: bytes) -> bytes | None:
        """
        The last value of header C{name} (case-insensitive).
        """
        found = None
        for n, v in self.headers:
            if n.lower() == name.lower():
                found = v
        return found


def okResponse(request: BackendRequest, backend: RecordingBackend) -> bytes:
    """
    The default answer: 200 with a body naming the backend and the path.
    """
    body = b"%s %s\n" % (backend.name.encode(), request.url)
    return b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s" % (
        len(body), body,
    )


Responder = Callable[[BackendRequest, "RecordingBackend", "RecordingProtocol"], "bytes | None"]


class RecordingProtocol(Protocol):
    """
    One connection to a test backend: parses requests, records them and the
    raw bytes, and answers through the backend's responder.
    """

    transport: Any

    def __init__(self, backend: RecordingBackend) -> None:
        self.backend = backend
        self.parser = HttpRequestParser(self)
        self.current: BackendRequest | None = None
        self.raw = b""
        self.tunnel = False

    def connectionMade(self) -> None:
        self.backend.connections.append(self)
        self.backend.open += 1

    def dataReceived(self, data: bytes) -> None:
        self.raw += data
        self.backend.raw += data
        if self.tunnel:
            self.transport.write(b"echo:" + data)
            return
        if self.backend.proxyHeader and self.raw == data:
            # Strip and keep a PROXY header before the first request.
            if data.startswith(b"PROXY "):
                line, _, data = data.partition(b"\r\n")
                self.backend.proxyHeaders.append(line + b"\r\n")
            elif data.startswith(b"\r\n\r\n\x00\r\nQUIT\n"):
                length = int.from_bytes(data[14:16], "big")
                self.backend.proxyHeaders.append(data[: 16 + length])
                data = data[16 + length:]
        try:
            self.parser.feed_data(data)
        except HttpParserUpgrade:
            pass
        except Exception:
            self.transport.loseConnection()

    def on_message_begin(self) -> None:
        self.current = BackendRequest()
        self.current.connection = self

    def on_url(self, url: bytes) -> None:
        assert self.current is not None
        self.current.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        assert self.current is not None
        self.current.headers.append((name, value))

    def on_headers_complete(self) -> None:
        assert self.current is not None
        self.current.method = self.parser.get_method()
        self.backend.heads.append(self.current)
        if self.backend.onHead is not None:
            self.backend.onHead(self.current, self.backend, self)

    def on_body(self, body: bytes) -> None:
        assert self.current is not None
        self.current.body += body

    def on_message_complete(self) -> None:
        request = self.current
        assert request is not None
        self.backend.requests.append(request)
        response = self.backend.respond(request, self.backend, self)
        if response is not None:
            self.transport.write(response)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.backend.open -= 1


class RecordingBackend(Factory):
    """
    A test backend on 127.0.0.1 that records every request and byte.

    @ivar respond: makes the response bytes for a request (or L{None} to
        answer later, or never).
    @ivar onHead: called when a request head arrives, before its body.
    """

    noisy = False

    def __init__(self, name: str, respond: Responder | None = None) -> None:
        self.name = name
        self.respond: Responder = respond or (lambda r, b, p: okResponse(r, b))
        self.onHead: Callable[[BackendRequest, RecordingBackend, RecordingProtocol], None] | None = None
        self.requests: list[BackendRequest] = []
        self.heads: list[BackendRequest] = []
        self.connections: list[RecordingProtocol] = []
        self.raw = b""
        self.open = 0
        self.proxyHeader = False
        self.proxyHeaders: list[bytes] = []
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> Protocol:
        return RecordingProtocol(self)

    @property
    def endpoint(self) -> str:
        """
        The client endpoint string of this backend.
        """
        return f"tcp:host=127.0.0.1:port={self.port.getHost().port}"


@inlineCallbacks
def waitFor(predicate: Callable[[], bool], timeout: float = 5.0) -> Any:
    """
    Poll C{predicate} on the reactor until it holds or C{timeout} passes.
    """
    waited = 0.0
    while not predicate() and waited < timeout:
        yield deferLater(reactor, 0.01, lambda: None)
        waited += 0.01
    return predicate()


class HTTPProxyTestCase(TestCase):
    """
    A test case with helpers to start backends and a balancer in HTTP mode.
    """

    timeout = 20

    def startBackend(self, name: str, respond: Responder | None = None) -> RecordingBackend:
        """
        Listen with a new recording backend on 127.0.0.1, port 0.
        """
        backend = RecordingBackend(name, respond)
        backend.port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(self._stopBackend, backend)
        return backend

    @inlineCallbacks
    def _stopBackend(self, backend: RecordingBackend) -> Any:
        yield backend.port.stopListening()
        for conn in backend.connections:
            if conn.transport.connected:
                conn.transport.abortConnection()
        yield waitFor(lambda: backend.open == 0)

    def startProxy(self, backends: list[Any], **pool: Any) -> HTTPProxyFactory:
        """
        Listen with an HTTP-mode balancer over C{backends} (recording
        backends or endpoint strings) on 127.0.0.1, port 0.

        @param pool: pool configuration keys, as in the YAML file.
        """
        pool.setdefault("health", {"fall": 100})
        body = {
            "backends": [
                {"name": b.name, "endpoint": b.endpoint} if isinstance(b, RecordingBackend)
                else b
                for b in backends
            ],
            **pool,
        }
        config = parseConfig(
            {"listeners": [{"listen": "tcp:0", "mode": "http"}], "pools": {"web": body}}
        )
        backendPool = BackendPool(config.pools[0])
        return self.listen(HTTPProxyFactory(
            backendPool, reactor, Dialler(reactor), config.listeners[0]
        ))

    def listen(self, factory: HTTPProxyFactory) -> HTTPProxyFactory:
        """
        Listen with C{factory} on 127.0.0.1, port 0 (its C{testPort}), until
        the test is over.
        """
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        factory.testPort = port.getHost().port  # type: ignore[attr-defined]
        self.addCleanup(self._stopProxy, factory, port)
        return factory

    @inlineCallbacks
    def _stopProxy(self, factory: HTTPProxyFactory, port: Any) -> Any:
        yield port.stopListening()
        for client in list(factory.clients):
            if client.transport is not None and client.transport.connected:
                client.transport.abortConnection()
        for upstream in factory.upstreams.values():
            upstream.close()
        yield waitFor(lambda: factory.activeClients == 0)

    def url(self, factory: HTTPProxyFactory, path: str = "/") -> str:
        """
        The URL of C{path} on the balancer.
        """
        return f"http://127.0.0.1:{factory.testPort}{path}"  # type: ignore[attr-defined]


def rawExchange(port: int, data: bytes, timeout: float = 5.0,
                chunks: list[bytes] | None = None, pause: float = 0.0) -> Deferred[bytes]:
    """
    In a thread: send C{data} (or C{chunks} with C{pause} seconds between)
    over a new socket to 127.0.0.1:C{port}, and read until the peer closes.
    """

    def run() -> bytes:
        import time

        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            for piece in chunks or [data]:
                s.sendall(piece)
                if pause:
                    time.sleep(pause)
            out = b""
            try:
                while True:
                    got = s.recv(65536)
                    if not got:
                        break
                    out += got
            except TimeoutError:
                out += TIMED_OUT
            except ConnectionResetError:
                pass
            return out

    return deferToThread(run)


def httpRequests(port: int, requests: list[tuple[str, str, bytes | None, dict[str, str]]],
                 timeout: float = 5.0) -> Deferred[list[tuple[int, dict[str, str], bytes]]]:
    """
    In a thread: send C{requests} (method, path, body, headers) over one
    kept-alive C{http.client} connection; the statuses, headers and bodies.
    """

    def run() -> list[tuple[int, dict[str, str], bytes]]:
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        results = []
        try:
            for method, path, body, headers in requests:
                conn.request(method, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                results.append((resp.status, {k.lower(): v for k, v in resp.getheaders()}, data))
        finally:
            conn.close()
        return results

    return deferToThread(run)


@inlineCallbacks
def chromiumDOM(case: TestCase, url: str) -> Any:
    """
    Load C{url} in headless Chromium (any certificate accepted) and return
    the page's DOM after its scripts ran; the test is skipped without
    Chromium, and fails if Chromium does.
    """
    import os
    import shutil
    import tempfile

    from twisted.internet.utils import getProcessOutputAndValue

    chromium = shutil.which("chromium")
    if chromium is None:
        case.skipTest("chromium is not installed")
    profile = tempfile.mkdtemp(prefix="lbtwist-chromium-")
    case.addCleanup(shutil.rmtree, profile, True)
    out, err, code = yield getProcessOutputAndValue("/usr/bin/timeout", [
        "30", chromium, "--headless", "--no-sandbox", "--disable-gpu",
        "--ignore-certificate-errors", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run",
        f"--user-data-dir={profile}", "--dump-dom", url,
    ], env=dict(os.environ), reactor=reactor)
    case.assertEqual(code, 0, err[-2000:])
    return out
