"""
Tests for L{lbtwist.control}: the one public way to change a running
balancer, which the admin API goes through too.  Its checks (table tests,
on a balancer built on a memory reactor), what it saves, reloading from a
configuration built in code, a start that fails leaving nothing started,
and (with a real etcd) changes that reach every balancer of a cluster.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist import Balancer, BalancerControl, CannotStart, ConfigError, parseConfig
from lbtwist.control import Duplicate, InUse, Unknown

from .etcdhelpers import ClusterCase, dump, eventually
from .support import Backends, firstLine, freePort, inThread, reactor, sleep


def configData(**pool: Any) -> dict[str, Any]:
    """
    One TCP listener over pool C{web} (backend C{a}; C{pool}'s settings
    over it) and an empty pool C{spare}.
    """
    return {
        "listeners": [{"name": "front", "listen": "tcp:8080", "pool": "web"}],
        "pools": {
            "web": {"backends": [{"name": "a", "endpoint": "tcp:host=127.0.0.1:port=1"}],
                    **pool},
            "spare": {"backends": []},
        },
    }


def result(d: Deferred[Any]) -> Any:
    """
    What an already fired L{Deferred} holds (a failure is raised).
    """
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


class EmbeddedCase(SynchronousTestCase):
    """
    A whole L{Balancer} (control included) built on a memory reactor, its
    state file in a temporary directory; never started, so nothing listens.
    """

    def balancer(self, data: dict[str, Any] | None = None) -> Balancer:
        """
        A balancer of C{data} (default: L{configData}) whose state file is
        C{self.statePath}.
        """
        if not hasattr(self, "statePath"):
            self.statePath = os.path.abspath(self.mktemp())
        return Balancer(parseConfig(data or configData()), MemoryReactorClock(),
                        statePath=self.statePath, signals=False, freezeHeap=False)

    def control(self, data: dict[str, Any] | None = None) -> BalancerControl:
        """
        The control of a fresh balancer of C{data}.
        """
        self.built = self.balancer(data)
        control = self.built.control
        assert control is not None
        return control


class AddBackendCheckTests(EmbeddedCase):
    """
    C{addBackend} checks its input as the admin API does: a bad one raises
    L{ConfigError} naming the field, and changes and saves nothing.
    """

    REFUSED: list[tuple[str, dict[str, Any], str, str]] = [
        ("bad name", {"name": "bad name!", "endpoint": "tcp:host=h:port=1"}, "name",
         "expected a name of 1-64 letters"),
        ("garbage endpoint", {"name": "g", "endpoint": "garbage"}, "endpoint",
         "expected an endpoint string"),
        ("weight too high", {"name": "w", "endpoint": "tcp:host=h:port=1", "weight": 9999},
         "weight", "expected an integer 0-256, got 9999"),
        ("weight a string", {"name": "w", "endpoint": "tcp:host=h:port=1", "weight": "3"},
         "weight", 'expected an integer 0-256, got "3"'),
        ("name not a string", {"name": 7, "endpoint": "tcp:host=h:port=1"}, "name",
         "expected a string, got 7"),
        ("port not an integer", {"host": "h", "port": "80"}, "port",
         'expected an integer, got "80"'),
        ("unknown field", {"name": "u", "endpoint": "tcp:host=h:port=1", "colour": 1}, "",
         "unknown field 'colour'"),
        ("no endpoint", {"name": "n"}, "", "a backend needs an endpoint"),
        ("bad endpoint argument", {"name": "x", "endpoint": "tcp:host=h:port=1:bogus=1"},
         "endpoint", "invalid endpoint"),
    ]

    def test_refused(self) -> None:
        """
        Each bad backend raises L{ConfigError} whose C{path} is the field
        and whose message says what is wrong; the pool keeps its one
        backend and no state file is written.
        """
        control = self.control()
        for label, data, path, problem in self.REFUSED:
            with self.subTest(label):
                e = self.assertRaises(ConfigError, control.addBackend, "web", data)
                self.assertEqual(e.path, path)
                self.assertIn(problem, str(e))
        self.assertEqual([b.name for b in self.built.loadBalancer.pools["web"]], ["a"])
        self.assertFalse(os.path.exists(self.statePath))

    def test_badState(self) -> None:
        """
        An unknown admin state is refused, naming C{state}.
        """
        e = self.assertRaises(ConfigError, self.control().addBackend, "web",
                              {"name": "b", "endpoint": "tcp:host=h:port=2"}, state="asleep")
        self.assertEqual((e.path, e.problem),
                         ("state", 'expected one of ready, drain, maint, got "asleep"'))

    def test_unknownPool(self) -> None:
        """
        A pool that does not exist raises L{Unknown} (a L{ConfigError})
        naming the pools there are.
        """
        e = self.assertRaises(Unknown, self.control().addBackend, "nope",
                              {"name": "b", "endpoint": "tcp:host=h:port=2"})
        self.assertIsInstance(e, ConfigError)
        self.assertEqual((e.path, e.problem), ("pool", "unknown pool 'nope' (pools: web, spare)"))

    def test_hostPortNormalised(self) -> None:
        """
        A C{HOST:PORT} endpoint, as the configuration takes it, is accepted
        and becomes a C{tcp:} endpoint string; the result fires with the
        live backend.
        """
        control = self.control()
        backend = result(control.addBackend("web", {"name": "b", "endpoint": "127.0.0.1:8081"}))
        self.assertEqual(backend.endpoint, "tcp:host=127.0.0.1:port=8081")
        self.assertIs(self.built.loadBalancer.pools["web"].get("b"), backend)

    def test_hostAndPort(self) -> None:
        """
        C{host} and C{port} make the endpoint, and the default name.
        """
        backend = result(self.control().addBackend("web", {"host": "127.0.0.1", "port": 8082}))
        self.assertEqual((backend.name, backend.endpoint),
                         ("127.0.0.1:8082", "tcp:host=127.0.0.1:port=8082"))

    def test_sslEndpoint(self) -> None:
        """
        An C{ssl:} endpoint (which verifies nothing) is refused with what
        works at run time, where a backend cannot be given a C{tls} block of
        its own: its pool's block says how it speaks TLS, so it is added as
        C{HOST:PORT} to a pool that has one; a pool with none is named as
        needing one.
        """
        ssl = {"name": "s", "endpoint": "ssl:host=app.internal:port=443"}
        e = self.assertRaises(ConfigError, self.control().addBackend, "web", ssl)
        self.assertEqual((e.path, e.problem), (
            "endpoint",
            "an ssl: backend endpoint does not verify the backend's certificate, and a "
            "backend added at run time speaks TLS as its pool's tls block says: pool 'web' "
            "has none; give it one (tls: {ca: FILE}, or ca: system) in the configuration "
            "file, or add the backend to a pool that has one, as app.internal:443"))
        control = self.control(configData(tls={"ca": "system"}))
        e = self.assertRaises(ConfigError, control.addBackend, "web", ssl)
        self.assertEqual(e.problem, (
            "an ssl: backend endpoint does not verify the backend's certificate, and a "
            "backend added at run time speaks TLS as its pool's tls block says: pool 'web' "
            "has one, so add it as app.internal:443"))
        added = result(control.addBackend("web", {"name": "s", "endpoint": "app.internal:443"}))
        self.assertEqual(added.config.tls.ca, "system")

    def test_hostIPv6InBrackets(self) -> None:
        """
        An IPv6 C{host} in brackets, as a URL writes it, is the bare address:
        the same endpoint and name as C{::1}.
        """
        backend = result(self.control().addBackend("web", {"host": "[::1]", "port": 8083}))
        self.assertEqual((backend.name, backend.endpoint),
                         ("[::1]:8083", "tcp:host=\\:\\:1:port=8083"))

    def test_badHost(self) -> None:
        """
        A C{host} that is no host name or address is refused naming C{host}
        and the forms it takes; nothing is added.
        """
        control = self.control()
        e = self.assertRaises(ConfigError, control.addBackend, "web",
                              {"host": "[::1", "port": 8083})
        self.assertEqual((e.path, e.problem), (
            "host", "expected a host name or an IP address, like 'app.internal', "
                    "'10.0.0.5', '::1' or '[::1]', got '[::1'"))
        self.assertEqual([b.name for b in self.built.loadBalancer.pools["web"]
                          if "::1" in b.name], [])

    def test_poolHealthTaken(self) -> None:
        """
        The new backend is checked with its pool's health check.
        """
        control = self.control(configData(health={"interval": 7, "rise": 3}))
        backend = result(control.addBackend("web", {"name": "b", "endpoint": "127.0.0.1:2"}))
        self.assertEqual(backend.config.health,
                         self.built.loadBalancer.pools["web"].config.health)
        self.assertEqual((backend.config.health.interval, backend.config.health.rise), (7, 3))

    def test_duplicate(self) -> None:
        """
        A name the pool has already raises L{Duplicate}.
        """
        e = self.assertRaises(Duplicate, self.control().addBackend, "web",
                              {"name": "a", "endpoint": "tcp:host=h:port=2"})
        self.assertEqual(e.problem, "pool 'web' already has a backend 'a'")

    def test_drainState(self) -> None:
        """
        C{state} sets the new backend's admin state.
        """
        backend = result(self.control().addBackend(
            "web", {"name": "b", "endpoint": "tcp:host=h:port=2"}, state="drain"))
        self.assertEqual(backend.admin.value, "drain")


class SavedStateTests(EmbeddedCase):
    """
    What the control saves, the next start reads.
    """

    def test_nextStartReadsIt(self) -> None:
        """
        After refused adds and one good C{HOST:PORT} add, the state file
        holds the normalised endpoint, and a balancer started again on it
        starts (the state file is valid) with the backend.
        """
        control = self.control()
        for bad in ({"name": "bad name!", "endpoint": "tcp:host=h:port=1"},
                    {"name": "g", "endpoint": "garbage"},
                    {"name": "w", "endpoint": "tcp:host=h:port=1", "weight": 9999}):
            self.assertRaises(ConfigError, control.addBackend, "web", bad)
        result(control.addBackend("web", {"name": "b", "endpoint": "127.0.0.1:8081",
                                           "weight": 5}))
        with open(self.statePath) as f:
            saved = json.load(f)
        self.assertIn("tcp:host=127.0.0.1:port=8081", json.dumps(saved))
        again = self.balancer()
        backend = again.loadBalancer.pools["web"].get("b")
        assert backend is not None
        self.assertEqual((backend.endpoint, backend.weight), ("tcp:host=127.0.0.1:port=8081", 5))


class ChangeTests(EmbeddedCase):
    """
    C{change}, C{removeBackend}, C{setRoutes}, C{addPool} and
    C{removePool}: checked, then applied and saved.
    """

    def test_changeRefused(self) -> None:
        """
        Each bad change raises L{ConfigError} naming the field; nothing
        changes.
        """
        control = self.control()
        for kw, path in [({"weight": 300}, "weight"), ({"weight": True}, "weight"),
                         ({"state": "off"}, "state"), ({"backup": "yes"}, "backup"),
                         ({"slowStart": -1}, "slow-start"), ({}, "")]:
            with self.subTest(kw):
                e = self.assertRaises(ConfigError, control.change, "web", "a", **kw)
                self.assertEqual(e.path, path)
        self.assertRaises(Unknown, control.change, "web", "zz", weight=2)
        backend = self.built.loadBalancer.pools["web"].get("a")
        assert backend is not None
        self.assertEqual((backend.weight, backend.admin.value), (1, "ready"))

    def test_change(self) -> None:
        """
        Weight, state, backup and slow start change in one call; the
        result fires with the backend.
        """
        backend = result(self.control().change("web", "a", weight=4, state="drain",
                                               backup=True, slowStart=2))
        self.assertEqual((backend.weight, backend.admin.value, backend.config.backup),
                         (4, "drain", True))

    def test_removeBackend(self) -> None:
        """
        A removed backend leaves its pool; an unknown one raises
        L{Unknown}.
        """
        control = self.control()
        self.assertRaises(Unknown, control.removeBackend, "web", "zz")
        removed = result(control.removeBackend("web", "a"))
        self.assertEqual(removed.name, "a")
        self.assertEqual(list(self.built.loadBalancer.pools["web"]), [])

    def test_setRoutes(self) -> None:
        """
        Routes in the configuration's shape are checked (a bad one raises
        L{ConfigError} with its key path) and given to the listener.
        """
        control = self.control()
        e = self.assertRaises(ConfigError, control.setRoutes, "front",
                              [{"name": "r", "pool": "nope"}])
        self.assertIn("routes[0]", str(e))
        self.assertRaises(Unknown, control.setRoutes, "back", [])
        listener = result(control.setRoutes("front", [{"name": "r", "pool": "spare"}]))
        self.assertEqual([r.name for r in listener.routes], ["r"])

    def test_pools(self) -> None:
        """
        A pool is added (a bad one, or one of a name in use, refused) and
        removed; one a listener sends to raises L{InUse}.
        """
        control = self.control()
        self.assertRaises(ConfigError, control.addPool, "extra", {"policy": "best"})
        self.assertRaises(Duplicate, control.addPool, "web", {"backends": []})
        self.assertRaises(ConfigError, control.addPool, 7, {})  # type: ignore[arg-type]
        pool = result(control.addPool("extra", {"backends": ["127.0.0.1:9"]}))
        self.assertEqual([b.endpoint for b in pool], ["tcp:host=127.0.0.1:port=9"])
        self.assertRaises(InUse, control.removePool, "web")
        self.assertRaises(Unknown, control.removePool, "nope")
        self.assertEqual(result(control.removePool("extra")).name, "extra")
        self.assertNotIn("extra", self.built.loadBalancer.pools)


class ReloadTests(EmbeddedCase):
    """
    C{reload(config)}: a configuration built in code, applied as a file's.
    """

    def test_withoutFile(self) -> None:
        """
        Without a configuration file, C{reload()} raises L{ConfigError}
        saying there is none to read.
        """
        e = self.assertRaises(ConfigError, self.control().reload)
        self.assertIn("no configuration file", str(e))

    def test_fromConfig(self) -> None:
        """
        A configuration built in code is applied: its new backend is in the
        pool, and a run-time change stays (as with a file reload).
        """
        control = self.control()
        result(control.change("web", "a", weight=9))
        data = configData()
        data["pools"]["web"]["backends"].append({"name": "b", "endpoint": "127.0.0.1:2"})
        self.assertEqual(result(control.reload(parseConfig(data))), [])
        pool = self.built.loadBalancer.pools["web"]
        self.assertEqual({b.name: b.weight for b in pool}, {"a": 9, "b": 1})

    def test_fromBadConfig(self) -> None:
        """
        A configuration whose endpoint Twisted refuses is rejected as a
        file's would be: L{ConfigError}, and nothing changes.
        """
        control = self.control()
        data = configData()
        data["pools"]["web"]["backends"].append(
            {"name": "b", "endpoint": "tcp:host=h:port=2:bogus=1"})
        e = self.assertRaises(ConfigError, control.reload, parseConfig(data))
        self.assertIn("bogus", str(e))
        self.assertEqual([b.name for b in self.built.loadBalancer.pools["web"]], ["a"])


class FailedStartTests(TestCase):
    """
    A start that raises leaves nothing started, and may be tried again.
    """

    def setUp(self) -> None:
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        self.busy = busy
        self.backends = Backends(self)
        self.backends.start("a")
        self.first = freePort()

    def balancer(self, second: int, admin: int) -> Balancer:
        """
        A balancer listening on C{self.first} and C{second}, its admin API
        on C{admin}, over backend C{a}.
        """
        data = {
            "listeners": [{"name": "one", "listen": f"tcp:{self.first}:interface=127.0.0.1"},
                          {"name": "two", "listen": f"tcp:{second}:interface=127.0.0.1"}],
            "admin": f"tcp:{admin}:interface=127.0.0.1",
            "pools": {"web": {"backends": [{"name": "a",
                                            "endpoint": self.backends.endpoint("a")}]}},
        }
        return Balancer(parseConfig(data), reactor, signals=False, freezeHeap=False,
                        statePath=os.path.abspath(self.mktemp()))

    @inlineCallbacks
    def failsThenServes(self, balancer: Balancer) -> Any:
        """
        C{balancer} cannot start while C{self.busy} holds its port: then it
        is not running, and once the reactor has turned the first
        listener's port can be bound again; with the port free, it starts
        and serves, and stops (a listener stopped twice) cleanly.
        """
        self.assertRaises(CannotStart, balancer.startService)
        self.assertFalse(balancer.running)
        self.assertFalse(balancer.loadBalancer.running)
        # A port stops listening when the reactor next turns.
        yield sleep(0.01)
        again = socket.socket()
        self.addCleanup(again.close)
        again.bind(("127.0.0.1", self.first))
        again.close()
        self.busy.close()
        balancer.startService()
        self.addCleanup(lambda: balancer.stopService() if balancer.running else None)
        self.assertEqual((yield inThread(firstLine, self.first)), b"a")
        # Stopped twice (a parent stops every child): the second is a no-op.
        listener = balancer.loadBalancer.getServiceNamed("listener:one")
        yield listener.stopService()
        yield balancer.stopService()
        self.assertFalse(listener.running)

    def test_listenerBusy(self) -> Any:
        """
        The second listener's port is taken: nothing stays started.
        """
        return self.failsThenServes(self.balancer(self.busy.getsockname()[1], 0))

    def test_adminBusy(self) -> Any:
        """
        The admin API's port is taken, after every listener started:
        nothing stays started, the listeners included.
        """
        return self.failsThenServes(self.balancer(freePort(), self.busy.getsockname()[1]))


class ClusterControlTests(ClusterCase):
    """
    Two embedded balancers on one real etcd, changed through
    C{balancer.control} (skipped without etcd).
    """

    @inlineCallbacks
    def test_addReachesTheOther(self) -> Any:
        """
        A backend added and re-weighted through A's control is written to
        etcd and served by B; an unrelated change made through B later
        leaves it as it is on A.
        """
        a, b = self.node("A", ["a"]), self.node("B", ["a"])
        yield eventually(lambda: a.sync.connected and b.sync.connected)
        control = a.balancer.control
        added = yield control.addBackend("web", {"name": "b", "endpoint": self.servers.endpoint("b")})
        self.assertEqual(added.name, "b")
        yield control.change("web", "b", weight=3)
        yield eventually(lambda: b.backends().get("b") == (3, "ready"), 2.0)
        self.assertEqual(dump(self.etcd.url, "/lbt/pools/web/backends/b"),
                         {"/lbt/pools/web/backends/b": {
                             "endpoint": self.servers.endpoint("b"), "weight": 3,
                             "state": "ready"}})
        yield b.balancer.control.change("web", "a", state="maint")
        yield eventually(lambda: a.backends().get("a") == (1, "maint"), 2.0)
        self.assertEqual(a.backends()["b"], (3, "ready"))
        self.assertEqual((yield inThread(firstLine, b.port)), b"b")

    @inlineCallbacks
    def test_poolAndRoutesReachTheOther(self) -> Any:
        """
        A pool and a route list set through A's control are written to
        etcd and used by B: its listener sends to the new pool's backend.
        """
        a, b = self.node("A", ["a"]), self.node("B", ["a"])
        yield eventually(lambda: a.sync.connected and b.sync.connected)
        control = a.balancer.control
        pool = yield control.addPool("extra", {
            "health": {"interval": 60},
            "backends": [{"name": "c", "endpoint": self.servers.endpoint("c")}]})
        self.assertEqual([x.name for x in pool], ["c"])
        listener = a.balancer.loadBalancer.config.listeners[0].name
        route = {"name": "local", "match": {"source": ["127.0.0.0/8"]}, "pool": "extra"}
        running = yield control.setRoutes(listener, [route])
        self.assertEqual([r.name for r in running.routes], ["local"])
        yield eventually(lambda: [r.pool for r in b.balancer.live.listener(listener).routes]
                         == ["extra"], 2.0)
        self.assertEqual(dump(self.etcd.url, "/lbt/routes/"), {f"/lbt/routes/{listener}": [route]})
        self.assertEqual((yield inThread(firstLine, b.port)), b"c")
