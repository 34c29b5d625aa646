"""
gRPC end to end through lbtwist: a real C{grpcio} client speaks h2c to an
HTTP listener with C{http2: true}, and lbtwist speaks HTTP/2 to a real
C{grpcio} server (a pool with C{protocol: h2}), over cleartext and over
TLS with ALPN (certificates made by the test).

The service is defined with grpc's generic method handlers and bytes
serializers: no protoc files.
"""

from __future__ import annotations

import os
import threading
from concurrent import futures
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from .support import inThread, startBalancer
from .test_tls_listen import Certificates

try:
    import grpc
except ImportError:  # pragma: no cover - grpcio is a test extra
    grpc = None

SERVICE = "lbtwist.test.Echo"
BIG = 10 * 1024 * 1024
# Messages as large as BIG, and some framing, in both directions.
OPTIONS = [("grpc.max_receive_message_length", BIG + 1024),
           ("grpc.max_send_message_length", BIG + 1024)]


def _unary(request: bytes, context: Any) -> bytes:
    if request == b"missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing: missing")
    if request.startswith(b"sleep"):
        threading.Event().wait(float(request[5:]))
    if request == b"big":
        return b"x" * BIG
    return b"echo:" + request[:64] + b":%d" % len(request)


def _stream(request: bytes, context: Any) -> Any:
    for i in range(int(request)):
        yield b"message %d" % i


def startServer(case: TestCase, credentials: Any = None) -> int:
    """
    A gRPC server on 127.0.0.1 (TLS with C{credentials}, else cleartext),
    stopped when the test ends; its port.
    """
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=OPTIONS)
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream),
    })
    server.add_generic_rpc_handlers((handler,))
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    case.addCleanup(server.stop, None)
    return int(port)


class GRPCTests(TestCase):
    """
    A gRPC client reaches a gRPC server through lbtwist, both sides HTTP/2.
    """

    timeout = 120

    def setUp(self) -> None:
        if grpc is None:
            self.skipTest("grpcio is not installed")

    def balancer(self, backend: dict[str, Any], pool: dict[str, Any] | None = None) -> int:
        """
        A balancer with an h2c-capable HTTP listener over one h2 backend.
        """
        self.lb, port = startBalancer(self, {
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1", "mode": "http",
                           "http2": True}],
            "pools": {"grpc": {"protocol": "h2", "backends": [backend],
                               "timeouts": {"response": 30}, **(pool or {})}},
        })
        return port

    def channel(self, port: int) -> Any:
        """
        A channel to the balancer, closed when the test ends.
        """
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=OPTIONS)
        self.addCleanup(channel.close)
        return channel

    def cleartext(self) -> Any:
        """
        A channel through a balancer to a cleartext (h2c) gRPC server.
        """
        server = startServer(self)
        return self.channel(self.balancer(
            {"name": "g", "endpoint": f"tcp:host=127.0.0.1:port={server}"}))

    @inlineCallbacks
    def test_unary(self) -> Any:
        """
        A unary call gets the server's answer.
        """
        channel = self.cleartext()
        call = channel.unary_unary(f"/{SERVICE}/Unary")
        answer = yield inThread(call, b"hello", 10)
        self.assertEqual(answer, b"echo:hello:5")

    @inlineCallbacks
    def test_concurrent(self) -> Any:
        """
        100 calls in flight at once on one channel are streams of the
        backend connection(s); each gets its own answer.
        """
        channel = self.cleartext()
        call = channel.unary_unary(f"/{SERVICE}/Unary")

        def run() -> list[bytes]:
            futures = [call.future(b"c%d" % i, timeout=20) for i in range(100)]
            return [f.result() for f in futures]

        got = yield inThread(run)
        self.assertEqual(got, [b"echo:c%d:%d" % (i, len(b"c%d" % i)) for i in range(100)])
        (factory,) = self.lb.factories.values()
        (upstream,) = factory.upstreams.values()
        connections = [c for conns in upstream.h2._connections.values() for c in conns]
        self.assertEqual(len(connections), 1)

    @inlineCallbacks
    def test_serverStreaming(self) -> Any:
        """
        Server streaming relays 100 messages, in order.
        """
        channel = self.cleartext()
        call = channel.unary_stream(f"/{SERVICE}/Stream")
        got = yield inThread(lambda: list(call(b"100", timeout=10)))
        self.assertEqual(got, [b"message %d" % i for i in range(100)])

    @inlineCallbacks
    def test_bigMessages(self) -> Any:
        """
        A 10 MB request and a 10 MB response pass whole (flow control both
        ways).
        """
        channel = self.cleartext()
        call = channel.unary_unary(f"/{SERVICE}/Unary")
        payload = os.urandom(BIG)
        answer = yield inThread(call, payload, 30)
        self.assertEqual(answer, b"echo:" + payload[:64] + b":%d" % BIG)
        answer = yield inThread(call, b"big", 30)
        self.assertEqual(answer, b"x" * BIG)

    @inlineCallbacks
    def test_status(self) -> Any:
        """
        A status error (NOT_FOUND and its message, sent as trailers) reaches
        the client.
        """
        channel = self.cleartext()
        call = channel.unary_unary(f"/{SERVICE}/Unary")

        def fails() -> Any:
            try:
                call(b"missing", timeout=10)
            except grpc.RpcError as e:
                return e.code(), e.details()
            return None

        got = yield inThread(fails)
        self.assertEqual(got, (grpc.StatusCode.NOT_FOUND, "no such thing: missing"))

    @inlineCallbacks
    def test_deadline(self) -> Any:
        """
        A call slower than its deadline ends with DEADLINE_EXCEEDED, and the
        next call on the channel still works.
        """
        channel = self.cleartext()
        call = channel.unary_unary(f"/{SERVICE}/Unary")

        def late() -> Any:
            try:
                call(b"sleep2", timeout=0.3)
            except grpc.RpcError as e:
                return e.code()
            return None

        got = yield inThread(late)
        self.assertEqual(got, grpc.StatusCode.DEADLINE_EXCEEDED)
        answer = yield inThread(call, b"after", 10)
        self.assertEqual(answer, b"echo:after:5")

    @inlineCallbacks
    def test_tlsBackend(self) -> Any:
        """
        Over TLS the backend is verified and chooses h2 by ALPN: unary and
        streaming calls work.
        """
        files = Certificates(self.mktemp())
        certPath, keyPath = files.ab
        with open(certPath, "rb") as f:
            chain = f.read()
        with open(keyPath, "rb") as f:
            key = f.read()
        server = startServer(self, grpc.ssl_server_credentials([(key, chain)]))
        port = self.balancer({
            "name": "g", "endpoint": f"tcp:host=127.0.0.1:port={server}",
            "tls": {"ca": files.ca.cert, "verify-host": "a.example"}})
        channel = self.channel(port)
        answer = yield inThread(channel.unary_unary(f"/{SERVICE}/Unary"), b"tls", 10)
        self.assertEqual(answer, b"echo:tls:3")
        got = yield inThread(lambda: list(channel.unary_stream(f"/{SERVICE}/Stream")(
            b"5", timeout=10)))
        self.assertEqual(len(got), 5)
