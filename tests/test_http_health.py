"""
Tests of L{lbtwist.http.HTTPProbe} against real backends, and of passive
health in HTTP mode.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import Clock

from lbtwist.config import parseConfig
from lbtwist.dial import Dialler
from lbtwist.health import HealthMonitor, ProbeFailed
from lbtwist.http import HTTPProbe
from lbtwist.pool import Backend, BackendPool, Health
from lbtwist.service import LoadBalancer

from .httphelpers import HTTPProxyTestCase, httpRequests


class HTTPProbeTests(HTTPProxyTestCase):
    """
    The HTTP probe sends the configured request and judges the answer.
    """

    def backendFor(self, endpoint: str, **health: Any) -> Backend:
        """
        A pool backend at C{endpoint} with the given health settings.
        """
        config = parseConfig({
            "listeners": [{"listen": "tcp:0", "mode": "http"}],
            "pools": {"p": {"backends": [{"name": "b", "endpoint": endpoint}],
                            "health": {"type": "http", **health}}},
        })
        backend = BackendPool(config.pools[0]).get("b")
        assert backend is not None
        return backend

    @inlineCallbacks
    def test_passes(self) -> Any:
        """
        A status in the expected range and the expected body text pass; the
        request has the configured method, path and Host.
        """
        server = self.startBackend("s")
        backend = self.backendFor(server.endpoint, path="/health", host="app.local",
                                  **{"expect-status": "200-299", "expect-body": "s /hea"})
        status = yield HTTPProbe(Dialler(reactor))(backend)
        self.assertEqual(status, 200)
        request = server.requests[0]
        self.assertEqual((request.method, request.url), (b"GET", b"/health"))
        self.assertEqual(request.header(b"host"), b"app.local")

    @inlineCallbacks
    def test_badStatus(self) -> Any:
        """
        An unexpected status fails the probe with a message saying so.
        """
        server = self.startBackend(
            "s", lambda r, b, c: b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
        )
        backend = self.backendFor(server.endpoint)
        d = HTTPProbe(Dialler(reactor))(backend)
        failure = yield self.assertFailure(d, ProbeFailed)
        self.assertEqual(str(failure), "status 500, expected 200-399")

    @inlineCallbacks
    def test_missingBody(self) -> Any:
        """
        A body without the expected text fails the probe.
        """
        server = self.startBackend("s")
        backend = self.backendFor(server.endpoint, **{"expect-body": "healthy"})
        d = HTTPProbe(Dialler(reactor))(backend)
        failure = yield self.assertFailure(d, ProbeFailed)
        self.assertIn("lacks 'healthy'", str(failure))

    @inlineCallbacks
    def probe(self, response: bytes, close: bool = False, **health: Any) -> Any:
        """
        Probe a backend answering C{response} (then closing, if C{close}),
        with the C{health} keys given: the status, or the reason the probe
        failed.
        """
        def answer(request: Any, backend: Any, connection: Any) -> bytes | None:
            if not close:
                return response
            connection.transport.write(response)
            connection.transport.loseConnection()
            return None

        server = self.startBackend("s", answer)
        try:
            result = yield HTTPProbe(Dialler(reactor))(self.backendFor(server.endpoint, **health))
        except ProbeFailed as e:
            result = str(e)
        return result

    @inlineCallbacks
    def test_bodyRegex(self) -> Any:
        """
        C{expect-body-regex} passes a body the pattern is found in, and
        fails one it is not, saying the pattern.
        """
        ok = b"HTTP/1.1 200 OK\r\nContent-Length: 21\r\n\r\nstatus: ready (42 ok)"
        passed = yield self.probe(ok, **{"expect-body-regex": r"ready \(\d+ ok\)$"})
        self.assertEqual(passed, 200)
        failed = yield self.probe(ok, **{"expect-body-regex": r"^ready"})
        self.assertEqual(failed, "status 200 but the body does not match '^ready'")
        # Delimited by the close, as a response without a length is.
        closed = yield self.probe(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nup 3",
                                  close=True, **{"expect-body-regex": r"up \d"})
        self.assertEqual(closed, 200)

    @inlineCallbacks
    def test_bodyBound(self) -> Any:
        """
        The body is judged on its first 64 KiB: text beyond them is not
        seen (the rest is read and dropped, never kept).
        """
        filler = b"x" * 65536

        def answer(body: bytes) -> bytes:
            return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)

        early = yield self.probe(answer(b"ready" + filler), **{"expect-body-regex": "ready"})
        self.assertEqual(early, 200)
        late = yield self.probe(answer(filler + b"ready"), **{"expect-body-regex": "ready"})
        self.assertEqual(late, "status 200 but the body does not match 'ready'")
        late = yield self.probe(answer(filler + b"ready"), **{"expect-body": "ready"})
        self.assertEqual(late, "status 200 but the body lacks 'ready'")

    @inlineCallbacks
    def test_expectHeader(self) -> Any:
        """
        C{expect-header} needs each named header (its name in any case)
        with a field, or a comma-separated element of one, exactly the
        value given; a missing or other value fails, saying which.
        """
        head = (b"HTTP/1.1 200 OK\r\nx-ready: yes\r\nCache-Control: no-cache, private\r\n"
                b"Content-Length: 0\r\n\r\n")
        passed = yield self.probe(head, **{"expect-header": {"X-Ready": "yes",
                                                             "cache-control": "private"}})
        self.assertEqual(passed, 200)
        for expected, reason in [
            ({"X-Ready": "Yes"}, "the header X-Ready is 'yes', expected 'Yes'"),
            ({"Cache-Control": "no"}, "the header Cache-Control is 'no-cache, private', "
                                      "expected 'no'"),
            ({"X-Version": "2"}, "the header X-Version is missing"),
        ]:
            failed = yield self.probe(head, **{"expect-header": expected})
            self.assertEqual(failed, f"status 200 but {reason}")
        # A HEAD check judges the head alone.
        headOnly = yield self.probe(head, method="HEAD", **{"expect-header": {"x-ready": "yes"}})
        self.assertEqual(headOnly, 200)

    @inlineCallbacks
    def test_headMethod(self) -> Any:
        """
        A HEAD probe passes on the head alone, whatever Content-Length says.
        """
        server = self.startBackend(
            "s", lambda r, b, c: b"HTTP/1.1 204 No Content\r\nContent-Length: 50\r\n\r\n"
        )
        backend = self.backendFor(server.endpoint, method="HEAD")
        status = yield HTTPProbe(Dialler(reactor))(backend)
        self.assertEqual(status, 204)

    @inlineCallbacks
    def test_monitorMarksDown(self) -> Any:
        """
        Through the health monitor, failing HTTP probes mark a backend down
        after C{fall}, and the service registers the probe as C{http}.
        """
        server = self.startBackend(
            "s", lambda r, b, c: b"HTTP/1.1 503 No\r\nContent-Length: 0\r\n\r\n"
        )
        config = parseConfig({
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1", "mode": "http"}],
            "pools": {"p": {"backends": [{"name": "b", "endpoint": server.endpoint}],
                            "health": {"type": "http", "interval": "50ms", "fall": 2}}},
        })
        lb = LoadBalancer(config, reactor)
        self.assertIsInstance(lb.probes["http"], HTTPProbe)
        pool = lb.pools["p"]
        monitor = HealthMonitor(pool, lb.probes, reactor)
        monitor.startService()
        self.addCleanup(monitor.stopService)
        from .httphelpers import waitFor

        yield waitFor(lambda: pool.get("b").health is Health.DOWN)  # type: ignore[union-attr]
        self.assertEqual(pool.get("b").health, Health.DOWN)  # type: ignore[union-attr]
        self.assertIn("status 503", pool.get("b").lastChange)  # type: ignore[union-attr]


class PassiveHealthTests(HTTPProxyTestCase):
    """
    Consecutive errors seen by traffic mark a backend down.
    """

    @inlineCallbacks
    def test_errorLimit(self) -> Any:
        """
        With C{error-limit: 3}, three 5xx answers in a row from a backend
        mark it down and the traffic moves to the other one.
        """
        bad = self.startBackend(
            "bad", lambda r, b, c: b"HTTP/1.1 500 Err\r\nContent-Length: 0\r\n\r\n"
        )
        good = self.startBackend("good")
        proxy = self.startProxy([bad, good], http={"error-limit": 3})
        results = yield httpRequests(proxy.testPort, [("GET", "/", None, {})] * 10)
        statuses = [r[0] for r in results]
        self.assertEqual(statuses[:6], [500, 200] * 3)
        self.assertEqual(statuses[6:], [200] * 4)
        self.assertEqual(proxy.pool.get("bad").health, Health.DOWN)  # type: ignore[union-attr]
        self.assertEqual(len(bad.requests), 3)

    @inlineCallbacks
    def test_successResetsStreak(self) -> Any:
        """
        A good answer between errors resets the count: alternating 500 and
        200 never marks the backend down.
        """
        answers = iter([500, 200] * 10)

        def respond(request: Any, backend: Any, conn: Any) -> bytes:
            return b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % next(answers)

        flaky = self.startBackend("flaky", respond)
        proxy = self.startProxy([flaky], http={"error-limit": 2})
        yield httpRequests(proxy.testPort, [("GET", "/", None, {})] * 8)
        self.assertNotEqual(proxy.pool.get("flaky").health, Health.DOWN)  # type: ignore[union-attr]


class OutlierEjectionTests(HTTPProxyTestCase):
    """
    Outlier ejection seen through real HTTP traffic over 127.0.0.1.
    """

    @inlineCallbacks
    def test_ejectedThenBack(self) -> Any:
        """
        A backend answering 503 is ejected after three in a row (gateway
        errors) and gets no more requests while the good one serves every
        client; once the base ejection time has passed on the pool's clock
        it gets requests again, and three more 503s eject it for twice as
        long.  Health is untouched throughout.
        """
        bad = self.startBackend(
            "bad", lambda r, b, c: b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
        )
        good = self.startBackend("good")
        proxy = self.startProxy([bad, good], outlier={"base-ejection": "30s"})
        clock = Clock()
        proxy.pool.clock = clock.seconds
        backend = proxy.pool.get("bad")
        assert backend is not None
        get = [("GET", "/", None, {})]
        results = yield httpRequests(proxy.testPort, get * 12)
        self.assertEqual([r[0] for r in results], [503, 200] * 3 + [200] * 6)
        self.assertEqual((len(bad.requests), len(good.requests)), (3, 9))
        self.assertEqual((backend.ejected, backend.ejections), (True, 1))
        self.assertEqual(backend.health, Health.UNKNOWN)
        clock.advance(30.0)
        results = yield httpRequests(proxy.testPort, get * 10)
        statuses = [r[0] for r in results]
        # Round robin goes on where it was: the third 503 comes at the
        # fifth or sixth request, and none after it.
        self.assertEqual(statuses.count(503), 3)
        self.assertEqual(statuses[6:], [200] * 4)
        self.assertEqual(len(bad.requests), 6)
        self.assertEqual((backend.ejected, backend.ejections), (True, 2))
        self.assertEqual(backend.ejectedUntil, 30.0 + 60.0)
