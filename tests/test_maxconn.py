"""
Tests for the connection limits: the C{maxconn} and C{queue} configuration
keys, the pool's slots and bounded FIFO queue, and the global
L{ConnectionLimit} that pauses listeners.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.config import ConfigError, Queue, parseConfig
from lbtwist.connect import BackendConnector, NoBackendAvailable, QueueFull
from lbtwist.dial import BackendProtocol
from lbtwist.listener import ConnectionLimit
from lbtwist.pool import BackendPool, Health

from .support import freePort, reactor, sleep


def configData(**pool: Any) -> dict[str, Any]:
    """
    Configuration data with one listener and a pool of backends a and b.
    """
    body: dict[str, Any] = {
        "backends": [
            {"name": "a", "endpoint": "tcp:host=127.0.0.1:port=1"},
            {"name": "b", "endpoint": "tcp:host=127.0.0.1:port=2"},
        ]
    }
    body.update(pool)
    return {"listeners": [{"listen": "tcp:0"}], "pools": {"web": body}}


class ConfigTests(SynchronousTestCase):
    """
    The new keys are read with their defaults, and mistakes name the key path.
    """

    def assertConfigError(self, data: Any, path: str, text: str) -> None:
        """
        Parsing C{data} fails at C{path} with a message containing C{text}.
        """
        e = self.assertRaises(ConfigError, parseConfig, data)
        self.assertEqual(e.path, path)
        self.assertIn(text, e.problem)

    def test_defaults(self) -> None:
        """
        Without the keys there is no limit, and the queue has its defaults.
        """
        config = parseConfig(configData())
        self.assertEqual(config.maxconn, 0)
        self.assertEqual(config.pools[0].backends[0].maxconn, 0)
        self.assertEqual(config.pools[0].queue, Queue(size=1024, timeout=5.0))

    def test_values(self) -> None:
        """
        Global and per-backend maxconn and the pool's queue are read; the
        queue timeout takes a unit.
        """
        data = configData(queue={"size": 10, "timeout": "250ms"})
        data["maxconn"] = 5000
        data["pools"]["web"]["backends"][0]["maxconn"] = 20
        config = parseConfig(data)
        self.assertEqual(config.maxconn, 5000)
        self.assertEqual(config.pools[0].backends[0].maxconn, 20)
        self.assertEqual(config.pools[0].backends[1].maxconn, 0)
        self.assertEqual(config.pools[0].queue, Queue(size=10, timeout=0.25))

    def test_badGlobalMaxconn(self) -> None:
        """
        A global maxconn that is not a non-negative integer is refused.
        """
        data = configData()
        data["maxconn"] = "lots"
        self.assertConfigError(data, "maxconn", "expected an integer")
        data["maxconn"] = -1
        self.assertConfigError(data, "maxconn", "expected an integer")

    def test_badBackendMaxconn(self) -> None:
        """
        A backend's maxconn error names the backend's key path.
        """
        data = configData()
        data["pools"]["web"]["backends"][1]["maxconn"] = 1.5
        self.assertConfigError(data, "pools.web.backends[1].maxconn", "expected an integer")

    def test_badQueue(self) -> None:
        """
        The queue must be a mapping of size and timeout, each valid.
        """
        self.assertConfigError(configData(queue=5), "pools.web.queue", "expected a mapping")
        self.assertConfigError(
            configData(queue={"depth": 5}), "pools.web.queue.depth", "unknown key"
        )
        self.assertConfigError(
            configData(queue={"size": -2}), "pools.web.queue.size", "expected an integer"
        )
        self.assertConfigError(
            configData(queue={"timeout": "soon"}), "pools.web.queue.timeout", "duration"
        )


class PoolQueueTests(SynchronousTestCase):
    """
    A pool gives out maxconn slots and queues clients that find none.
    """

    def makePool(self, maxconn: int = 1, size: int = 2) -> BackendPool:
        """
        A pool of backends a and b with this maxconn each and queue size.
        """
        data = configData(queue={"size": size, "timeout": 1})
        for b in data["pools"]["web"]["backends"]:
            b["maxconn"] = maxconn
        return BackendPool(parseConfig(data).pools[0])

    def test_pickSkipsFullBackends(self) -> None:
        """
        A backend at its maxconn is not chosen; with all of them full the
        pool is saturated (clients may queue) rather than empty.
        """
        pool = self.makePool()
        a, b = pool.get("a"), pool.get("b")
        assert a is not None and b is not None
        pool.acquire(a)
        self.assertTrue(a.full)
        self.assertIs(pool.pick(), b)
        self.assertFalse(pool.saturated())
        pool.acquire(b)
        self.assertIsNone(pool.pick())
        self.assertTrue(pool.saturated())
        self.assertFalse(pool.saturated([a, b]))

    def test_noLimit(self) -> None:
        """
        With maxconn 0 a backend is never full.
        """
        pool = self.makePool(maxconn=0)
        a = pool.get("a")
        assert a is not None
        for _ in range(1000):
            pool.acquire(a)
        self.assertFalse(a.full)

    def test_downBackendsDoNotSaturate(self) -> None:
        """
        Full backends that are down give no reason to wait.
        """
        pool = self.makePool()
        for backend in pool:
            pool.acquire(backend)
            backend.health = Health.DOWN
        self.assertFalse(pool.saturated())

    def test_queueIsBoundedAndFIFO(self) -> None:
        """
        The queue holds C{size} clients; a released slot wakes the oldest.
        """
        pool = self.makePool(size=2)
        a, b = pool.get("a"), pool.get("b")
        assert a is not None and b is not None
        pool.acquire(a)
        pool.acquire(b)
        woken: list[str] = []

        def waiter(name: str) -> Any:
            def wake() -> None:
                woken.append(name)
                chosen = pool.pick()
                assert chosen is not None
                pool.acquire(chosen)
            return wake

        first, second = waiter("first"), waiter("second")
        self.assertTrue(pool.enqueue(first))
        self.assertTrue(pool.enqueue(second))
        self.assertFalse(pool.enqueue(waiter("third")))
        self.assertEqual(pool.queueFull, 1)
        self.assertEqual(pool.queueLength, 2)
        pool.release(a)
        self.assertEqual(woken, ["first"])
        pool.release(b)
        self.assertEqual(woken, ["first", "second"])
        self.assertEqual(pool.queueLength, 0)

    def test_dequeue(self) -> None:
        """
        A client that leaves the queue is not woken.
        """
        pool = self.makePool()
        a = pool.get("a")
        assert a is not None
        for backend in pool:
            pool.acquire(backend)
        woken: list[int] = []
        pool.enqueue(lambda: woken.append(1))
        waiter = lambda: woken.append(2)  # noqa: E731
        pool.enqueue(waiter)
        pool.dequeue(waiter)
        pool.dequeue(waiter)
        pool.release(a)
        self.assertEqual(woken, [1])

    def test_newBackendWakes(self) -> None:
        """
        A backend added while clients wait takes them at once.
        """
        pool = self.makePool()
        for backend in pool:
            pool.acquire(backend)
        woken: list[int] = []
        pool.enqueue(lambda: woken.append(1))
        config = parseConfig(configData()).pools[0].backends[0]
        import attrs

        pool.add(attrs.evolve(config, name="c"))
        self.assertEqual(woken, [1])


class QueueReadmissionTests(SynchronousTestCase):
    """
    A backend whose ejection ends has room for the clients queued meanwhile.
    """

    def test_ejectionEndWakesQueue(self) -> None:
        """
        A client queued while one backend is full and the other ejected is
        sent to the ejected one when its ejection ends, with no other
        client arriving or leaving to make the pool look (a pick readmits
        it; nothing else does), rather than wait out the queue timeout.
        """
        reactor = MemoryReactorClock()
        data = configData(queue={"size": 5, "timeout": 30}, outlier={
            "consecutive-5xx": 1, "base-ejection": "10s"})
        data["pools"]["web"]["backends"][0]["maxconn"] = 1
        pool = BackendPool(parseConfig(data).pools[0], clock=reactor.seconds)
        a, b = pool.get("a"), pool.get("b")
        assert a is not None and b is not None
        pool.acquire(a)
        pool.exchangeError(b, "status 503", 503)
        self.assertTrue(b.ejected)
        failed: list[Failure] = []
        BackendConnector(pool, reactor).connect(
            "client", None, lambda backend: BackendProtocol(), lambda *joined: None,
            failed.append)
        self.assertEqual(pool.queueLength, 1)
        reactor.advance(9.9)
        self.assertEqual((pool.queueLength, b.slots), (1, 0))
        reactor.advance(0.1)
        self.assertEqual((pool.queueLength, b.slots, failed), (0, 1, []))
        self.assertEqual([c[1] for c in reactor.tcpClients], [2])
        self.assertEqual(reactor.getDelayedCalls(), [])


class FakePort:
    """
    A listening port that records whether it reads.
    """

    def __init__(self) -> None:
        self.reading = True
        self.connected = True

    def stopReading(self) -> None:
        self.reading = False

    def startReading(self) -> None:
        self.reading = True


class ConnectionLimitTests(SynchronousTestCase):
    """
    The global maxconn pauses every listener at the limit and resumes them
    below it.
    """

    def test_pauseAndResume(self) -> None:
        """
        At the limit every port stops reading; one closed connection
        resumes them; connections past the limit are refused.
        """
        limit = ConnectionLimit(2)
        ports = [FakePort(), FakePort()]
        for p in ports:
            limit.addPort(p)
        self.assertTrue(limit.admit())
        self.assertEqual([p.reading for p in ports], [True, True])
        self.assertTrue(limit.admit())
        self.assertEqual([p.reading for p in ports], [False, False])
        self.assertFalse(limit.admit())
        self.assertEqual(limit.refused, 1)
        limit.release()
        self.assertEqual([p.reading for p in ports], [True, True])
        self.assertEqual(limit.paused, 1)

    def test_portAddedWhilePaused(self) -> None:
        """
        A port added while the limit is reached starts paused; a removed
        one is left alone.
        """
        limit = ConnectionLimit(1)
        limit.admit()
        late = FakePort()
        limit.addPort(late)
        self.assertFalse(late.reading)
        limit.removePort(late)
        limit.release()
        self.assertFalse(late.reading)


class QueueDrainTests(TestCase):
    """
    Queued clients are woken one reactor pass at a time, whatever their
    backends do.
    """

    @inlineCallbacks
    def test_refusingBackendDrainsQueue(self) -> Any:
        """
        Hundreds of clients queued for a full backend that then refuses
        every connection are all refused in the end, and every slot comes
        back: a refusal (immediate, over loopback) is reported on a later
        pass, so waking the queue never recurses.  Clients are woken and
        refused one after another until passive health marks the backend
        down (at C{fall} failures); the rest wait out the queue timeout.
        """
        n = 300
        data = {
            "listeners": [{"listen": "tcp:0"}],
            "pools": {"web": {
                "backends": [{
                    "name": "a", "endpoint": f"tcp:host=127.0.0.1:port={freePort()}", "maxconn": 1,
                }],
                "queue": {"size": n, "timeout": 1},
                "health": {"fall": 100},
                "retries": 0,
            }},
        }
        pool = BackendPool(parseConfig(data).pools[0])
        connector = BackendConnector(pool, reactor)
        backend = pool.get("a")
        assert backend is not None
        pool.acquire(backend)
        failed: list[Failure] = []
        for i in range(n):
            connector.connect(
                f"client {i}", None, lambda b: BackendProtocol(), lambda b, p, f: None,
                failed.append,
            )
        self.assertEqual(pool.queueLength, n)
        pool.release(backend)
        for _ in range(500):
            if len(failed) == n:
                break
            yield sleep(0.01)
        self.assertEqual(len(failed), n)
        refused = [f for f in failed if not f.check(QueueFull)]
        self.assertEqual(len(refused), 100)
        self.assertTrue(all(f.check(NoBackendAvailable) for f in refused))
        self.assertEqual(backend.failures, {"refused": 100})
        self.assertEqual((backend.slots, pool.queueLength), (0, 0))
        self.assertEqual(pool.queueTimeouts, n - 100)
