"""
What is retried (C{retry-on}) and how much at once (C{retry-budget}): the
configuration, the budget's arithmetic, and retries over real sockets.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import ConfigError, RetryBudget, parseConfig
from lbtwist.dial import Dialler
from lbtwist.http import HTTPProxyFactory
from lbtwist.pool import BackendPool
from lbtwist.testing.backend import ScriptedBackend

from .httphelpers import HTTPProxyTestCase, httpRequests, okResponse, waitFor

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


class AccessLines:
    """
    An access log that keeps the fields of each line.
    """

    def __init__(self) -> None:
        self.lines: list[tuple[Any, ...]] = []

    def request(self, *fields: Any) -> None:
        """
        Keep one request's fields.
        """
        self.lines.append(fields)


class StaleAllowanceTests(SynchronousTestCase):
    """
    A request lost on a pooled connection before any response byte is sent
    once more on a new connection to the same backend, outside C{retries}:
    once per request, not once per backend.  Its later tries take new
    connections only, each loss counted within C{retries}.  (A memory
    reactor stands for the network.)
    """

    OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def probe(self, answerAfter: int = -1, **body: Any) -> tuple[list[tuple[str, bool]], bytes, int]:
        """
        Three backends, each left with a pooled connection by an ordinary
        GET (round robin); then a GET whose every connection closes before
        answering (after C{answerAfter} such losses, if not -1, a new
        connection answers it).

        @param body: the pool's configuration keys.
        @return: where the GET was sent, in order (a backend's address, and
            whether the connection was a pooled one), what the client got,
            and the access log's C{retries}.
        """
        config = parseConfig({
            "listeners": [{"listen": "tcp:0", "mode": "http"}],
            "pools": {"web": {
                "backends": [{"name": f"app{i}", "endpoint": f"tcp:host=10.0.0.{i}:port=80"}
                             for i in (1, 2, 3)],
                **body,
            }},
        })
        reactor = MemoryReactorClock()
        factory = HTTPProxyFactory(
            BackendPool(config.pools[0]), reactor, Dialler(reactor), config.listeners[0])
        log = AccessLines()
        factory.accessLog = log  # type: ignore[assignment]
        client = factory.buildProtocol(None)
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", 1000))
        client.makeConnection(transport)
        backends: list[tuple[str, Any, StringTransport]] = []

        def connectDialled() -> None:
            for host, port, dialFactory, _, _ in reactor.tcpClients[len(backends):]:
                backendTransport = StringTransport()
                proto = dialFactory.buildProtocol(IPv4Address("TCP", host, port))
                proto.makeConnection(backendTransport)
                backends.append((host, proto, backendTransport))

        for _ in range(3):
            client.dataReceived(b"GET /warm HTTP/1.1\r\nHost: a\r\n\r\n")
            connectDialled()
            backends[-1][1].dataReceived(self.OK)
        self.assertEqual(len(factory.upstream.idle), 3)
        transport.clear()
        client.dataReceived(b"GET /?close=before&id=probe1 HTTP/1.1\r\nHost: a\r\n\r\n")
        sent: list[tuple[str, bool]] = []
        done: set[int] = set()
        for _ in range(20):
            connectDialled()
            carrying = [b for b in backends
                        if b"probe1" in b[2].value() and id(b[1]) not in done]
            if not carrying:
                break
            for host, proto, backendTransport in carrying:
                done.add(id(proto))
                sent.append((host, b"/warm" in backendTransport.value()))
                if len(sent) == answerAfter + 1:
                    proto.dataReceived(self.OK)
                else:
                    proto.connectionLost(Failure(ConnectionDone()))
        [line] = [f for f in log.lines if f[2] == "/?close=before&id=probe1"]
        return sent, transport.value(), line[8]

    def test_defaultRetries(self) -> None:
        """
        With the default C{retries} (2), the GET is sent four times: on
        app1's pooled connection, on a new one to app1 (not a retry), then
        to app2 and app3 on new connections (the two retries); the client
        gets a 502, and the access log counts the three sends after the
        first.
        """
        sent, answer, retries = self.probe()
        self.assertEqual(sent, [("10.0.0.1", True), ("10.0.0.1", False),
                                ("10.0.0.2", False), ("10.0.0.3", False)])
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)
        self.assertEqual(retries, 3)

    def test_oneRetry(self) -> None:
        """
        With C{retries: 1}, the GET is sent three times: on app1's pooled
        connection, on a new one to app1, and on a new one to app2 (app2's
        pooled connection is not used: its loss would be a second resend
        outside the retries).
        """
        sent, answer, retries = self.probe(retries=1)
        self.assertEqual(sent, [("10.0.0.1", True), ("10.0.0.1", False), ("10.0.0.2", False)])
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)
        self.assertEqual(retries, 2)

    def test_noRetries(self) -> None:
        """
        With C{retries: 0}, the GET is sent twice, both times to app1: on
        its pooled connection, then on a new one; the client gets a 502.
        """
        sent, answer, retries = self.probe(retries=0)
        self.assertEqual(sent, [("10.0.0.1", True), ("10.0.0.1", False)])
        self.assertTrue(answer.startswith(b"HTTP/1.1 502 "), answer)
        self.assertEqual(retries, 1)

    def test_staleThenHealthy(self) -> None:
        """
        A stale pooled connection to a healthy backend costs the client
        nothing, even with C{retries: 0}: the new connection answers, 200.
        """
        sent, answer, retries = self.probe(answerAfter=1, retries=0)
        self.assertEqual(sent, [("10.0.0.1", True), ("10.0.0.1", False)])
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertEqual(retries, 1)


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


class StaleAllowanceOverSocketsTests(HTTPProxyTestCase):
    """
    The report's case over 127.0.0.1, with the test backends of
    C{python -m lbtwist.testing.backend}: a GET each backend reads and
    closes without answering (C{close=before}), after ordinary GETs left a
    pooled connection to each.
    """

    @inlineCallbacks
    def scripted(self, name: str) -> Any:
        """
        Listen with a scripted test backend on 127.0.0.1, port 0; its
        configuration entry, and the backend.
        """
        from twisted.internet import reactor

        backend = ScriptedBackend(name, reactor)
        port = reactor.listenTCP(0, backend, interface="127.0.0.1")

        @inlineCallbacks
        def stop() -> Any:
            yield port.stopListening()
            backend.closeAll()
            yield waitFor(lambda: not backend.open)

        self.addCleanup(stop)
        yield None
        return {"name": name, "endpoint": f"tcp:host=127.0.0.1:port={port.getHost().port}"}, backend

    @inlineCallbacks
    def probe(self, **body: Any) -> Any:
        """
        Three scripted backends behind the balancer (round robin, access log
        on); three ordinary GETs on one client connection, then
        C{/?close=before&id=probe1}.

        @return: the probe's status, the connections (each backend's own
            numbers) it arrived on at each backend, and the access log's
            C{retries} for it.
        """
        from twisted.logger import globalLogPublisher

        entries, backends = [], []
        for name in ("app1", "app2", "app3"):
            entry, backend = yield self.scripted(name)
            entries.append(entry)
            backends.append(backend)
        proxy = self.startProxy(entries, **{"access-log": True}, **body)
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        results = yield httpRequests(
            proxy.testPort,
            [("GET", f"/?id=warm{i}", None, {}) for i in range(3)]
            + [("GET", "/?close=before&id=probe1", None, {})],
        )
        self.assertEqual([r[0] for r in results[:3]], [200] * 3)
        # Each ordinary GET left its backend's first connection pooled.
        self.assertEqual([[r.connection for r in b.requests if r.id.startswith("warm")]
                          for b in backends], [[1], [1], [1]])
        arrived = {b.name: [r.connection for r in b.requests if r.id == "probe1"]
                   for b in backends}
        [access] = [e for e in events if e.get("log_namespace") == "lbtwist.access"
                    and e.get("path") == "/?close=before&id=probe1"]
        return results[3][0], arrived, access["retries"]

    @inlineCallbacks
    def test_defaultRetries(self) -> Any:
        """
        With the default C{retries} (2) the GET reaches app1 twice (its
        pooled connection, then a new one) and app2 and app3 once each, on
        new connections: four sends, a 502, and C{retries=3} in the access
        log.
        """
        status, arrived, retries = yield self.probe()
        self.assertEqual(status, 502)
        self.assertEqual(arrived, {"app1": [1, 2], "app2": [2], "app3": [2]})
        self.assertEqual(retries, 3)

    @inlineCallbacks
    def test_noRetries(self) -> Any:
        """
        With C{retries: 0} the GET reaches app1 twice (its pooled
        connection, then a new one) and no other backend: a 502, and
        C{retries=1} in the access log.
        """
        status, arrived, retries = yield self.probe(retries=0)
        self.assertEqual(status, 502)
        self.assertEqual(arrived, {"app1": [1, 2], "app2": [], "app3": []})
        self.assertEqual(retries, 1)
