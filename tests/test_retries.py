"""
What is retried (C{retry-on}) and how much at once (C{retry-budget}): the
configuration, the budget's arithmetic, and retries over real sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import ConfigError, RetryBudget, parseConfig
from lbtwist.dial import Dialler
from lbtwist.http import HTTPProxyFactory
from lbtwist.pool import BackendPool

from .httphelpers import HTTPProxyTestCase, httpRequests, okResponse

UNAVAILABLE = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 4\r\n\r\nbusy"


def pool(**body: Any) -> Any:
    """
    The configuration of one pool with C{body}'s keys.
    """
    return parseConfig({
        "listeners": [{"listen": "tcp:0", "mode": "http"}],
        "pools": {"web": {"backends": ["tcp:host=h:port=1"], **body}},
    }).pools[0]


class ConfigTests(SynchronousTestCase):
    """
    The C{retry-on} and C{retry-budget} keys.
    """

    def test_defaults(self) -> None:
        """
        By default failed connects and lost connections are retried, no
        status is, and there is no budget.
        """
        config = pool()
        self.assertEqual(config.retryOn, ("connect-failure", "refused-stream", "reset"))
        self.assertIsNone(config.retryBudget)

    def test_parse(self) -> None:
        """
        Causes by name, statuses as numbers; the budget's two numbers.
        """
        config = pool(**{"retry-on": ["timeout", 503, 502],
                         "retry-budget": {"percent": 25, "min-concurrency": 2}})
        self.assertEqual(config.retryOn, ("timeout", 503, 502))
        self.assertEqual(config.retryBudget, RetryBudget(25.0, 2))

    def test_errors(self) -> None:
        """
        Each mistake names its key.
        """
        cases = {
            "pools.web.retry-on[1]": {"retry-on": ["reset", 500]},
            "pools.web.retry-on[0]": {"retry-on": ["sometimes"]},
            "pools.web.retry-on[2]": {"retry-on": [503, "reset", 503]},
            "pools.web.retry-budget.percent": {"retry-budget": {"percent": 150}},
            "pools.web.retry-budget.min-concurrency": {"retry-budget": {"min-concurrency": -1}},
            "pools.web.retry-budget": {"retry-budget": {"share": 5}},
        }
        for key, body in cases.items():
            e = self.assertRaises(ConfigError, pool, **body)
            self.assertTrue(str(e).startswith(key), (key, str(e)))


class BudgetTests(SynchronousTestCase):
    """
    The budget's arithmetic: retries in flight against requests in flight.
    """

    def test_share(self) -> None:
        """
        At most the share of the requests in flight, or the minimum; a
        refusal is counted.
        """
        p = BackendPool(pool(**{"retry-budget": {"percent": 20, "min-concurrency": 1}}))
        p.active = 20
        allowed = 0
        while p.retryAllowed():
            p.retriesActive += 1
            allowed += 1
        self.assertEqual((allowed, p.retriesRefused), (4, 1))
        p.active = 2
        p.retriesActive = 0
        self.assertTrue(p.retryAllowed())
        p.retriesActive = 1
        self.assertFalse(p.retryAllowed())

    def test_noBudget(self) -> None:
        """
        Without a budget every retry may start.
        """
        p = BackendPool(pool())
        p.retriesActive = 10**6
        self.assertTrue(p.retryAllowed())

    def test_exchangesKeepToIt(self) -> None:
        """
        Ten requests in flight, every backend answering 503 with
        C{retry-on: [503]} and a budget of 20% (at least 1): only two of
        them retry at once; the others get the 503; the counter ends at 0.
        """
        config = parseConfig({
            "listeners": [{"listen": "tcp:0", "mode": "http"}],
            "pools": {"web": {
                "backends": [f"tcp:host=10.0.0.{i}:port=80" for i in (1, 2, 3)],
                "retry-on": [503], "retry-budget": {"percent": 20, "min-concurrency": 1},
            }},
        })
        reactor = MemoryReactorClock()
        backendPool = BackendPool(config.pools[0])
        factory = HTTPProxyFactory(backendPool, reactor, Dialler(reactor), config.listeners[0])
        clients = []
        for i in range(10):
            client = factory.buildProtocol(None)
            transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 1000 + i))
            client.makeConnection(transport)
            client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            clients.append(transport)
        backends = []
        for host, port, dialFactory, _, _ in list(reactor.tcpClients):
            proto = dialFactory.buildProtocol(IPv4Address("TCP", host, port))
            proto.makeConnection(StringTransport())
            backends.append(proto)
        self.assertEqual(backendPool.active, 10)
        peak = 0
        for proto in backends:
            proto.dataReceived(UNAVAILABLE)
            peak = max(peak, backendPool.retriesActive)
        self.assertEqual(peak, 2)
        self.assertEqual(len(reactor.tcpClients), 12)
        answered = [t.value().split(b" ")[1] for t in clients if t.value()]
        self.assertEqual(answered, [b"503"] * 8)
        self.assertGreater(backendPool.retriesRefused, 0)
        from lbtwist.admin import poolView

        view = poolView(backendPool)
        self.assertEqual((view["retriesActive"], view["retriesRefused"]),
                         (2, backendPool.retriesRefused))


class BudgetCoverTests(SynchronousTestCase):
    """
    A retry in flight takes one unit of the budget, whatever it meets.
    """

    def test_failoverOfARetry(self) -> None:
        """
        A retry after a 503 whose connect is refused goes on to the next
        backend: it already holds its unit of the budget.
        """
        from twisted.internet.error import ConnectionRefusedError
        from twisted.python.failure import Failure

        config = parseConfig({
            "listeners": [{"listen": "tcp:0", "mode": "http"}],
            "pools": {"web": {
                "backends": [f"tcp:host=10.0.0.{i}:port=80" for i in (1, 2, 3)],
                "retry-on": [503, "connect-failure"],
                "retry-budget": {"percent": 20, "min-concurrency": 1},
            }},
        })
        reactor = MemoryReactorClock()
        backendPool = BackendPool(config.pools[0])
        factory = HTTPProxyFactory(backendPool, reactor, Dialler(reactor), config.listeners[0])
        client = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 1000))
        client.makeConnection(transport)
        client.dataReceived(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")

        def connect(index: int) -> Any:
            host, port, dialFactory, _, _ = reactor.tcpClients[index]
            proto = dialFactory.buildProtocol(IPv4Address("TCP", host, port))
            proto.makeConnection(StringTransport())
            return proto

        connect(0).dataReceived(UNAVAILABLE)
        self.assertEqual(backendPool.retriesActive, 1)
        reactor.tcpClients[1][2].clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        connect(2).dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())
        self.assertEqual((backendPool.retriesActive, backendPool.retriesRefused), (0, 0))


class RetryTests(HTTPProxyTestCase):
    """
    Retries over real sockets.
    """

    def failing(self, name: str, answer: bytes | None) -> Any:
        """
        A backend that answers every request with C{answer} (or never).
        """
        return self.startBackend(name, lambda r, b, c: answer)

    @inlineCallbacks
    def test_statusRetried(self) -> Any:
        """
        With C{retry-on: [503]}, a GET answered 503 by one backend is sent
        to another and the client sees only the 200; a POST is not retried.
        """
        a = self.failing("a", UNAVAILABLE)
        b = self.startBackend("b")
        proxy = self.startProxy([a, b], **{"retry-on": [503]})
        results = yield httpRequests(proxy.testPort, [("GET", "/", None, {})] * 6)
        self.assertEqual([r[0] for r in results], [200] * 6)
        self.assertGreater(len(a.requests), 0)
        posts = yield httpRequests(proxy.testPort, [("POST", "/", b"x", {})] * 4)
        self.assertIn(503, [r[0] for r in posts])

    @inlineCallbacks
    def test_statusNotRetriedByDefault(self) -> Any:
        """
        By default a 503 goes to the client as it is.
        """
        a = self.failing("a", UNAVAILABLE)
        b = self.startBackend("b")
        proxy = self.startProxy([a, b])
        results = yield httpRequests(proxy.testPort, [("GET", "/", None, {})] * 4)
        self.assertIn(503, [r[0] for r in results])

    @inlineCallbacks
    def test_lastAnswerWhenNoOther(self) -> Any:
        """
        With one backend, its 503 reaches the client (not a 502 for a retry
        that had nowhere to go).
        """
        a = self.failing("a", UNAVAILABLE)
        proxy = self.startProxy([a], **{"retry-on": [503]})
        [result] = yield httpRequests(proxy.testPort, [("GET", "/", None, {})])
        self.assertEqual((result[0], result[2]), (503, b"busy"))

    @inlineCallbacks
    def test_timeoutRetried(self) -> Any:
        """
        With C{retry-on: [timeout]}, a GET a backend does not answer in time
        goes to another backend.
        """
        a = self.failing("a", None)
        b = self.startBackend("b")
        proxy = self.startProxy([a, b], policy="roundrobin", timeouts={"response": 0.3},
                                **{"retry-on": ["timeout"]})
        results = yield httpRequests(proxy.testPort, [("GET", "/", None, {})] * 2)
        self.assertEqual([r[0] for r in results], [200, 200])
        self.assertEqual(len(a.requests), 1)

    @inlineCallbacks
    def test_resetNotRetried(self) -> Any:
        """
        Without C{reset} in C{retry-on}, a connection lost before the answer
        is a 502.
        """

        def reset(request: Any, backend: Any, conn: Any) -> None:
            conn.transport.abortConnection()

        a = self.startBackend("a", reset)
        b = self.startBackend("b", lambda r, bk, c: okResponse(r, bk))
        proxy = self.startProxy([a, b], **{"retry-on": ["connect-failure"]})
        results = yield httpRequests(proxy.testPort, [("GET", "/", None, {})] * 2)
        self.assertIn(502, [r[0] for r in results])

    @inlineCallbacks
    def test_connectFailureNotRetried(self) -> Any:
        """
        Without C{connect-failure} in C{retry-on}, a refused connect is a
        503 at once, not a failover.
        """
        from .support import freePort

        b = self.startBackend("b")
        proxy = self.startProxy(
            [{"name": "a", "endpoint": f"tcp:host=127.0.0.1:port={freePort()}"}, b],
            **{"retry-on": ["reset"]},
        )
        results = yield httpRequests(proxy.testPort, [("GET", "/", None, {})] * 2)
        self.assertIn(503, [r[0] for r in results])
