"""
Tests for L{lbtwist.reload}: applying run-time changes and configuration
reloads to live pools, draining, the SIGHUP hook and the graceful stop.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from types import SimpleNamespace
from typing import Any

import attrs
import yaml
from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.app import Balancer
from lbtwist.config import (
    BackendConfig,
    Config,
    ConfigError,
    Sticky,
    TimeoutOverrides,
    Timeouts,
    loadConfigFile,
    parseConfig,
)
from lbtwist.diff import poolChanges, routeChanges, runnable
from lbtwist.lifecycle import GracefulStop, ReloadOnSignal
from lbtwist.pool import Admin, BackendPool
from lbtwist.reload import (
    DuplicateBackend,
    LiveConfig,
    UnknownBackend,
    UnknownPool,
    loadState,
)
from lbtwist.state import Overrides, StateFile
from tests.support import Backends, inThread, poolConfig, reactor, sleep, startBalancer


def configOf(*backends: tuple[str, str, int]) -> Config:
    """
    A one-pool configuration of C{(name, endpoint, weight)} backends.
    """
    return parseConfig({
        "listeners": [{"listen": "tcp:0"}],
        "pools": {"web": {"backends": [
            {"name": n, "endpoint": e, "weight": w} for n, e, w in backends]}},
    })


A = ("a", "tcp:host=h:port=1", 1)
B = ("b", "tcp:host=h:port=2", 1)


class Closer:
    """
    What a protocol registers with a backend while live: C{abortNow} closes
    it (here, C{close} is called).
    """

    def __init__(self, close: Any) -> None:
        self.abortNow = close

class Live:
    """
    A L{LiveConfig} on a L{Clock}, whose next reload reads C{self.next}.
    """

    def __init__(self, case: SynchronousTestCase, config: Config, grace: float = 5.0) -> None:
        self.clock = Clock()
        self.pools = {p.name: BackendPool(p) for p in config.pools}
        self.next: Config | Exception = config
        self.path = case.mktemp()
        self.live = LiveConfig(self.pools, config, self.clock, StateFile(self.path),
                               loadConfig=self.load, grace=grace)

    def load(self) -> Config:
        """
        The next configuration (or the error) the test set.
        """
        if isinstance(self.next, Exception):
            raise self.next
        return self.next


class PoolChangesTests(SynchronousTestCase):
    """
    Comparing two lists of backends.
    """

    def test_changes(self) -> None:
        """
        Added, removed, replaced (endpoint changed) and reweighted backends
        are told apart.
        """
        old = [BackendConfig("a", "tcp:host=h:port=1"), BackendConfig("b", "tcp:host=h:port=2"),
               BackendConfig("c", "tcp:host=h:port=3")]
        new = [BackendConfig("a", "tcp:host=h:port=1", 5), BackendConfig("b", "tcp:host=h:port=9"),
               BackendConfig("d", "tcp:host=h:port=4")]
        c = poolChanges(old, new)
        self.assertEqual([b.name for b in c.added], ["d"])
        self.assertEqual(c.removed, ("c",))
        self.assertEqual([b.name for b in c.replaced], ["b"])
        self.assertEqual([b.name for b in c.reweighted], ["a"])
        self.assertEqual(c.names, {"a", "b", "c", "d"})
        self.assertEqual(poolChanges(old, old).names, set())

    def test_reconfigured(self) -> None:
        """
        A change of backup role or slow start alone is made in place (the
        backend keeps its connections and its place), with a weight change
        or without.
        """
        old = [BackendConfig("a", "tcp:host=h:port=1"), BackendConfig("b", "tcp:host=h:port=2")]
        new = [attrs.evolve(old[0], backup=True, weight=3),
               attrs.evolve(old[1], slowStart=30.0)]
        c = poolChanges(old, new)
        self.assertEqual(([b.name for b in c.replaced], [b.name for b in c.reconfigured],
                          [b.name for b in c.reweighted]), ([], ["a", "b"], ["a"]))
        pool = BackendPool(configOf(("a", "tcp:host=h:port=1", 1), ("b", "tcp:host=h:port=2", 1))
                           .pools[0])
        before = list(pool)
        live = LiveConfig({"web": pool}, configOf(A, B), Clock())
        live._reconcilePool(pool, attrs.evolve(pool.config, backends=tuple(new)))
        self.assertEqual(list(pool), before)
        self.assertEqual([(b.backup, b.config.slowStart, b.weight) for b in pool],
                         [(True, None, 3), (False, 30.0, 1)])


class LiveConfigTests(SynchronousTestCase):
    """
    The operator's changes and reloads, on a clock.
    """

    def test_errors(self) -> None:
        """
        Unknown pools and backends and duplicates are refused.
        """
        t = Live(self, configOf(A, B))
        self.assertRaises(UnknownPool, t.live.addBackend, "x", BackendConfig("c", "tcp:h:3"))
        self.assertRaises(DuplicateBackend, t.live.addBackend, "web",
                          BackendConfig("a", "tcp:h:3"))
        self.assertRaises(UnknownBackend, t.live.removeBackend, "web", "zz")
        self.assertRaises(UnknownBackend, t.live.change, "web", "zz", 1)
        self.assertRaises(ValueError, t.live.change, "web", "a", 300)
        self.assertFalse(os.path.exists(t.path))

    def test_removeDrainsWithGrace(self) -> None:
        """
        A removed backend's connections are closed when the grace is over,
        not before.
        """
        t = Live(self, configOf(A, B), grace=5.0)
        a = t.pools["web"].get("a")
        assert a is not None
        closed: list[str] = []
        a.closers.add(Closer(lambda: closed.append("one")))
        t.live.removeBackend("web", "a")
        t.clock.advance(4.9)
        self.assertEqual(closed, [])
        t.clock.advance(0.2)
        self.assertEqual(closed, ["one"])
        self.assertEqual(t.live.draining, {})

    def test_reloadApplies(self) -> None:
        """
        A reload adds new backends, drains removed ones, replaces changed
        ones and reweights in place.
        """
        t = Live(self, configOf(A, B, ("c", "tcp:host=h:port=3", 1)))
        pool = t.pools["web"]
        b, c = pool.get("b"), pool.get("c")
        assert b is not None and c is not None
        closed: list[str] = []
        c.closers.add(Closer(lambda: closed.append("c")))
        t.next = configOf(("a", "tcp:host=h:port=1", 4), ("b", "tcp:host=h:port=20", 1),
                          ("d", "tcp:host=h:port=4", 1))
        self.assertIsNone(t.live.reload())
        self.assertEqual(sorted((x.name, x.endpoint, x.weight) for x in pool), [
            ("a", "tcp:host=h:port=1", 4), ("b", "tcp:host=h:port=20", 1),
            ("d", "tcp:host=h:port=4", 1)])
        self.assertIsNot(pool.get("b"), b)
        self.assertTrue(c.removed)
        t.clock.advance(5)
        self.assertEqual(closed, ["c"])
        self.assertEqual(t.live.reloads, 1)

    def test_reloadLogsEveryChange(self) -> None:
        """
        A reload logs, per pool, every change it applies (backends added,
        removed, replaced and reweighted with old and new weights, the
        policy, other pool settings, admin states) and then one summary with
        its counts in the right number; a reload that changes nothing says
        so and logs no pool line.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        t = Live(self, configOf(A, B, ("c", "tcp:host=h:port=3", 1)))
        t.live.change("web", "a", admin=Admin.DRAIN)
        new = configOf(("a", "tcp:host=h:port=1", 4), ("b", "tcp:host=h:port=20", 1),
                       ("d", "tcp:host=h:port=4", 1))
        t.next = attrs.evolve(new, pools=(
            attrs.evolve(new.pools[0], policy="leastconn", retries=5),))
        del events[:]
        self.assertIsNone(t.live.reload())
        self.assertIsNone(t.live.reload())
        mine = [e for e in events if e.get("log_namespace") == "lbtwist.reload.LiveConfig"]
        self.assertEqual([formatEvent(e) for e in mine], [
            "pool web: added d; removed c; replaced (endpoint or health check changed) b; "
            "reweighted a 1->4; policy roundrobin->leastconn; settings retries; "
            "admin a drain->ready",
            "configuration reloaded: 3 backends in 1 pool, 1 pool changed",
            "configuration reloaded: 3 backends in 1 pool, no change",
        ])
        self.assertEqual((mine[0]["reweighted"], mine[1]["pools"]), ({"a": 4}, 1))

    def test_restartNeeded(self) -> None:
        """
        Listener, pool-set and process-wide changes are named as needing a
        restart, the pools' changes are applied, and the running listeners
        stay the baseline: a later reload that changes nothing of them says
        nothing of them.
        """
        import attrs

        t = Live(self, configOf(A, B))
        moved = attrs.evolve(
            configOf(A),
            listeners=(attrs.evolve(t.live.fileConfig.listeners[0], endpoint="tcp:1234"),),
            statusInterval=5.0,
        )
        t.next = moved
        self.assertIsNone(t.live.reload())
        self.assertEqual(t.live.restartNeeded, ["listeners", "status-interval"])
        self.assertEqual(sorted(b.name for b in t.pools["web"]), ["a"])
        self.assertEqual(t.live.fileConfig.listeners[0].endpoint, "tcp:0")
        t.next = configOf(A, B)
        self.assertIsNone(t.live.reload())
        self.assertEqual(t.live.restartNeeded, [])
        # A listener's TLS settings are the listener's too.
        from lbtwist.config import ListenerTLS

        t.next = attrs.evolve(configOf(A, B), listeners=(
            attrs.evolve(t.live.fileConfig.listeners[0], tls=ListenerTLS(alpn=("h2",))),))
        self.assertIsNone(t.live.reload())
        self.assertEqual(t.live.restartNeeded, ["listeners"])
        # So are the processes: a single process stays one.
        t.next = attrs.evolve(configOf(A, B), workers=2, master=True)
        self.assertIsNone(t.live.reload())
        self.assertEqual(t.live.restartNeeded, ["workers", "master"])
        self.assertEqual((t.live.fileConfig.workers, t.live.fileConfig.master), (1, False))

    def test_summaryNamesWhatWaits(self) -> None:
        """
        A reload whose only change needs a restart does not end with a bare
        "no change" after warning about it: its summary says no change was
        applied and names what needs a restart, as the admin API's
        C{restartNeeded} does; with pools changed too, it gives both; an
        upgrade's names what the upgrade applies.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        t = Live(self, configOf(A, B))
        base = configOf(A, B)
        sticky = attrs.evolve(base, pools=(
            attrs.evolve(base.pools[0], sticky=Sticky("cookie", "SRV")),))
        both = attrs.evolve(sticky, pools=(attrs.evolve(sticky.pools[0], policy="leastconn"),))

        def summary(config: Config, upgrade: bool = False) -> str:
            t.next = config
            del events[:]
            self.assertIsNone(t.live.reload(upgrade=upgrade))
            [line] = [formatEvent(e) for e in events
                      if formatEvent(e).startswith("configuration reloaded")]
            return line

        self.assertEqual(summary(sticky), "configuration reloaded: 2 backends in 1 pool, "
                                          "no change applied; needs a restart: pools.web.sticky")
        self.assertEqual(t.live.restartNeeded, ["pools.web.sticky"])
        self.assertEqual(summary(both), "configuration reloaded: 2 backends in 1 pool, "
                                        "1 pool changed; needs a restart: pools.web.sticky")
        self.assertEqual(summary(both, upgrade=True),
                         "configuration reloaded: 2 backends in 1 pool, "
                         "no change applied; the upgrade applies: pools.web.sticky")
        settled = attrs.evolve(base, pools=(attrs.evolve(base.pools[0], policy="leastconn"),))
        self.assertEqual(summary(settled), "configuration reloaded: 2 backends in 1 pool, "
                                           "no change")

    def test_upgradeNamesNoRestart(self) -> None:
        """
        An upgrade's reload does not claim a restart is needed for what it
        cannot apply: it says, at info level, that the upgrade applies it;
        a plain reload still warns that a restart is needed.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        t = Live(self, configOf(A, B))
        moved = attrs.evolve(configOf(A, B), listeners=(
            attrs.evolve(t.live.fileConfig.listeners[0], endpoint="tcp:1234"),))
        said = []
        for upgrade in (True, False):
            t.next = moved
            del events[:]
            self.assertIsNone(t.live.reload(upgrade=upgrade))
            self.assertEqual(t.live.restartNeeded, ["listeners"])
            [event] = [e for e in events if "listeners" in formatEvent(e)
                       and not formatEvent(e).startswith("configuration reloaded")]
            said.append((event["log_level"], formatEvent(event)))
        self.assertEqual(said, [
            (LogLevel.info, "upgrade: listeners change with the new workers (the master's own "
                            "settings by re-executing it); applying everything else now"),
            (LogLevel.warn, "configuration reload: listeners only change with a restart; "
                            "applying everything else"),
        ])

    def test_workersNameTheUpgrade(self) -> None:
        """
        With worker processes (C{upgradeLeaves} given), a reload says that
        what it cannot apply changes with an upgrade, naming the three ways
        to ask for one, not that it needs a restart, in its warning and its
        summary, and lists it in C{upgradeApplies}; only what an upgrade
        leaves (an embedded master's own settings) still needs a restart.
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        t = Live(self, configOf(A, B))
        t.live.upgradeLeaves = lambda settings: [s for s in settings if s == "status-interval"]
        moved = attrs.evolve(configOf(A, B), listeners=(
            attrs.evolve(t.live.fileConfig.listeners[0], endpoint="tcp:1234"),))
        said = []
        for config in (moved, attrs.evolve(moved, statusInterval=5.0)):
            t.next = config
            del events[:]
            self.assertIsNone(t.live.reload())
            said.append([(e["log_level"], formatEvent(e)) for e in events
                         if formatEvent(e).startswith("configuration reload")])
        self.assertEqual(t.live.upgradeApplies, ["listeners"])
        self.assertEqual(t.live.restartNeeded, ["listeners", "status-interval"])
        upgrade = ("listeners only change with an upgrade (SIGUSR2, lbtwist ctl upgrade or "
                   "POST /api/upgrade), no restart needed")
        self.assertEqual(said, [[
            (LogLevel.warn, f"configuration reload: {upgrade}; applying everything else"),
            (LogLevel.info, "configuration reloaded: 2 backends in 1 pool, no change applied; "
                            "an upgrade applies: listeners"),
        ], [
            (LogLevel.warn, f"configuration reload: {upgrade}; status-interval only change "
                            "with a restart; applying everything else"),
            (LogLevel.info, "configuration reloaded: 2 backends in 1 pool, no change applied; "
                            "an upgrade applies: listeners; needs a restart: status-interval"),
        ]])

    def test_certificatesReload(self) -> None:
        """
        The certificates a TLS listener serves change with a reload (no
        restart named, the new list running, the C{reloaded} callables
        given it); the rest of its TLS settings, or giving a C{tcp:}
        listener certificates at all, need a restart.
        """
        import attrs

        from lbtwist.config import CertificateFiles, ListenerTLS

        def serving(*files: str, **settings: Any) -> Config:
            base = configOf(A, B)
            return attrs.evolve(base, listeners=(attrs.evolve(
                base.listeners[0], tls=ListenerTLS(
                    certificates=tuple(CertificateFiles(f, f + ".key") for f in files),
                    **settings)),))

        t = Live(self, serving("a.pem"))
        given: list[Config] = []
        t.live.reloaded = [given.append]
        t.next = serving("b.pem", "c.pem")
        self.assertIsNone(t.live.reload())
        self.assertEqual(t.live.restartNeeded, [])
        self.assertEqual(t.live.fileConfig.listeners[0].tls, serving("b.pem", "c.pem").listeners[0].tls)
        self.assertEqual(given, [t.live.fileConfig])
        t.next = serving("b.pem", minVersion="1.3")
        self.assertIsNone(t.live.reload())
        self.assertEqual(t.live.restartNeeded, ["listeners"])
        self.assertEqual(t.live.fileConfig.listeners[0].tls.minVersion, "1.2")
        t.next = configOf(A, B)
        self.assertIsNone(t.live.reload())
        self.assertEqual(t.live.restartNeeded, ["listeners"])

    def test_builtSettingsNeedRestart(self) -> None:
        """
        Pool settings the protocol factories were built with (timeouts other
        than connect, http, sticky, proxy protocol) are named as needing a
        restart and keep their running values; the rest of the pool's
        changes apply.
        """
        import attrs

        t = Live(self, configOf(A, B))
        running = t.live.fileConfig.pool("web")
        changed = attrs.evolve(
            running, backends=running.backends[:1], retries=5,
            timeouts=attrs.evolve(running.timeouts, idle=7.0, connect=1.0),
        )
        t.next = attrs.evolve(configOf(A, B), pools=(changed,))
        self.assertIsNone(t.live.reload())
        self.assertEqual(t.live.restartNeeded, ["pools.web.timeouts.idle"])
        pool = t.live.fileConfig.pool("web")
        self.assertEqual((pool.retries, pool.timeouts.connect, pool.timeouts.idle),
                         (5, 1.0, running.timeouts.idle))
        self.assertEqual(sorted(b.name for b in t.pools["web"]), ["a"])

    def test_tokenRotates(self) -> None:
        """
        A new admin token in the file takes effect on reload; a file with no
        token keeps the one the balancer started with (from the environment).
        """
        import attrs

        t = Live(self, attrs.evolve(configOf(A), adminToken="from-env"))
        t.next = attrs.evolve(configOf(A), adminToken="rotated")
        self.assertIsNone(t.live.reload())
        self.assertEqual(t.live.fileConfig.adminToken, "rotated")
        t.next = configOf(A)
        self.assertIsNone(t.live.reload())
        self.assertEqual(t.live.fileConfig.adminToken, "rotated")

    def test_badReloadRejected(self) -> None:
        """
        A configuration with errors is rejected and the running one stays.
        """
        t = Live(self, configOf(A, B))
        t.next = ConfigError("pools.web.backends[0].port", "expected an integer")
        problem = t.live.reload()
        self.assertIn("expected an integer", problem or "")
        self.assertEqual(sorted(b.name for b in t.pools["web"]), ["a", "b"])
        self.assertEqual(t.live.reloads, 0)

    def test_overridesSurviveReload(self) -> None:
        """
        The operator's changes stay across a reload, unless the file changes
        that backend, in which case the file wins.
        """
        t = Live(self, configOf(A, B))
        t.live.change("web", "a", weight=7)
        t.live.change("web", "b", admin=Admin.MAINT)
        t.live.addBackend("web", BackendConfig("x", "tcp:host=h:port=8"))
        t.next = configOf(A, ("b", "tcp:host=h:port=2", 3))
        self.assertIsNone(t.live.reload())
        pool = t.pools["web"]
        self.assertEqual(pool.get("a").weight, 7)  # type: ignore[union-attr]
        self.assertIn("x", pool)
        # The file changed b: its override is gone.
        self.assertEqual(pool.get("b").admin, Admin.READY)  # type: ignore[union-attr]
        self.assertEqual(pool.get("b").weight, 3)  # type: ignore[union-attr]
        self.assertEqual(StateFile(t.path).load(), t.live.overrides)
        self.assertNotIn("b", t.live.overrides.adminStates("web"))

    def test_addedUnderPoolSettings(self) -> None:
        """
        A backend added at run time takes its pool's C{tls}: a reload that
        leaves the pool as it was leaves that backend too (it is not
        replaced, its connections not drained), and one that changes the
        pool's C{tls} (a new CA, say) gives it the new one, as it gives the
        file's backends.
        """
        def tlsConfig(host: str) -> Config:
            return parseConfig({
                "listeners": [{"listen": "tcp:0"}],
                "pools": {"web": {"tls": {"ca": "system", "verify-host": host},
                                  "backends": [{"name": "a", "endpoint": "tcp:host=h:port=1"}]}},
            })

        t = Live(self, tlsConfig("one.internal"))
        added = t.live.addBackend("web", BackendConfig("x", "tcp:host=h:port=8"))
        self.assertEqual(added.config.tls, t.pools["web"].config.tls)
        self.assertIsNone(t.live.reload())
        self.assertIs(t.pools["web"].get("x"), added)
        self.assertEqual(t.live.draining, {})
        t.next = tlsConfig("two.internal")
        self.assertIsNone(t.live.reload())
        x = t.pools["web"].get("x")
        self.assertIsNot(x, added)
        self.assertEqual(x.config.tls.verifyHost, "two.internal")  # type: ignore[union-attr]
        self.assertEqual(t.pools["web"].get("a").config.tls,  # type: ignore[union-attr]
                         x.config.tls)  # type: ignore[union-attr]

    def test_loadState(self) -> None:
        """
        Saved overrides are applied to the pools at start.
        """
        t = Live(self, configOf(A, B))
        saved = Overrides()
        saved.removed("web", "a")
        saved.administered("web", "b", Admin.DRAIN)
        saved.added("web", BackendConfig("c", "tcp:host=h:port=3"))
        StateFile(t.path).save(saved)
        loadState(t.live)
        pool = t.pools["web"]
        self.assertEqual(sorted(b.name for b in pool), ["b", "c"])
        self.assertIs(pool.get("b").admin, Admin.DRAIN)  # type: ignore[union-attr]

    def test_noConfigFile(self) -> None:
        """
        Without a configuration file there is nothing to reload.
        """
        t = Live(self, configOf(A))
        t.live.loadConfig = None
        self.assertIn("no configuration file", t.live.reload() or "")


def signalledBalancer(case: TestCase, data: dict[str, Any]) -> Balancer:
    """
    A whole L{Balancer} of C{data} started in this process as the README's
    embedding recipe starts one (signals included: a real C{SIGHUP} reloads
    it), its configuration file and state in a temporary directory and its
    admin API on an ephemeral loopback port; stopped when the test ends.
    """
    directory = os.path.abspath(case.mktemp())
    os.makedirs(directory)
    configPath = os.path.join(directory, "lb.yaml")
    with open(configPath, "w") as f:
        yaml.safe_dump({**data, "admin": "tcp:0:interface=127.0.0.1"}, f)
    balancer = Balancer(loadConfigFile(configPath), reactor, configPath=configPath,
                        freezeHeap=False, grace=0.2)
    balancer.startService()
    case.addCleanup(lambda: balancer.stopService() if balancer.running else None)
    return balancer


class EmbeddedSignalTests(TestCase):
    """
    Balancers embedded in one process each asked for signals: every one of
    them gets C{SIGHUP}, whichever started first or stops first.
    """

    @inlineCallbacks
    def test_sighupReloadsEach(self) -> Any:
        """
        One real C{SIGHUP} reloads both balancers; once the first stops,
        the next one reloads the second alone; once both stop, the handler
        the process had before is back.
        """
        before = signal.getsignal(signal.SIGHUP)
        data = poolConfig([("a", "tcp:host=127.0.0.1:port=9")])
        first, second = signalledBalancer(self, data), signalledBalancer(self, data)
        lives = [b.live for b in (first, second)]
        assert lives[0] is not None and lives[1] is not None
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if all(live.reloads for live in lives):
                break
            yield sleep(0.02)
        self.assertEqual([live.reloads for live in lives], [1, 1])
        yield first.stopService()
        os.kill(os.getpid(), signal.SIGHUP)
        for _ in range(100):
            if lives[1].reloads == 2:
                break
            yield sleep(0.02)
        self.assertEqual([live.reloads for live in lives], [1, 2])
        yield second.stopService()
        self.assertEqual(signal.getsignal(signal.SIGHUP), before)


class SignalTests(SynchronousTestCase):
    """
    C{SIGHUP} reloads and C{SIGTERM} stops, through the reactor.
    """

    def setUp(self) -> None:
        self.installed: dict[int, Any] = {signal.SIGHUP: "oldhup", signal.SIGTERM: "oldterm",
                                          signal.SIGUSR2: "oldusr2"}

        class FakeReactor:
            stopped = 0

            def __init__(self) -> None:
                self.calls: list[Any] = []

            def callFromThread(self, f: Any, *a: Any) -> None:
                self.calls.append(f)

            def callWhenRunning(self, f: Any, *a: Any) -> None:
                f()

            def stop(self) -> None:
                self.stopped += 1

            def addSystemEventTrigger(self, phase: str, event: str, f: Any) -> None:
                self.calls.append((phase, event, f))

        self.reactor = FakeReactor()

    def install(self, signum: int, handler: Any) -> Any:
        """
        A fake L{signal.signal}.
        """
        old, self.installed[signum] = self.installed[signum], handler
        return old

    def test_sighup(self) -> None:
        """
        The handler is installed on start, hands the reload to the reactor
        thread, and the old handlers are restored on stop.
        """
        t = Live(self, configOf(A))
        t.next = configOf(A, B)
        service = ReloadOnSignal(t.live, self.reactor, self.install)
        service.startService()
        self.installed[signal.SIGHUP](signal.SIGHUP, None)
        self.assertEqual(len(t.pools["web"]), 1)
        self.reactor.calls[0]()
        self.assertEqual(len(t.pools["web"]), 2)
        service.stopService()
        self.assertEqual(self.installed, {signal.SIGHUP: "oldhup", signal.SIGTERM: "oldterm",
                                          signal.SIGUSR2: "oldusr2"})

    def test_twoServicesShareSignals(self) -> None:
        """
        Two services sharing one L{SignalHandlers} each get C{SIGHUP} and
        C{SIGTERM} (the reactor stopped once: the second stop's
        L{ReactorNotRunning} is not an error); stopped in either order, the
        old handlers are back once both are.
        """
        from twisted.internet.error import ReactorNotRunning

        from lbtwist.lifecycle import SignalHandlers

        def stopOnce() -> None:
            if self.reactor.stopped:
                raise ReactorNotRunning()
            self.reactor.stopped += 1

        self.reactor.stop = stopOnce  # type: ignore[method-assign]
        shared = SignalHandlers(self.install)
        lives = [Live(self, configOf(A)), Live(self, configOf(A))]
        for t in lives:
            t.next = configOf(A, B)
        first, second = (ReloadOnSignal(t.live, self.reactor, signals=shared) for t in lives)
        first.startService()
        second.startService()
        self.installed[signal.SIGHUP](signal.SIGHUP, None)
        self.installed[signal.SIGTERM](signal.SIGTERM, None)
        for call in self.reactor.calls:
            call()
        self.assertEqual([len(t.pools["web"]) for t in lives], [2, 2])
        self.assertEqual(self.reactor.stopped, 1)
        del self.reactor.calls[:]
        # (After a SIGTERM, each puts its handlers back once the reactor
        # has shut down.)
        first.stopService()
        second.stopService()
        [(_, _, restoreFirst), (_, _, restoreSecond)] = self.reactor.calls
        restoreFirst()
        self.assertNotEqual(self.installed[signal.SIGHUP], "oldhup")
        restoreSecond()
        self.assertEqual(self.installed, {signal.SIGHUP: "oldhup", signal.SIGTERM: "oldterm",
                                          signal.SIGUSR2: "oldusr2"})

    def test_sigterm(self) -> None:
        """
        SIGTERM stops the reactor from the reactor thread.
        """
        t = Live(self, configOf(A))
        service = ReloadOnSignal(t.live, self.reactor, self.install)
        service.startService()
        self.installed[signal.SIGTERM](signal.SIGTERM, None)
        self.assertEqual(self.reactor.stopped, 0)
        self.reactor.calls[-1]()
        self.assertEqual(self.reactor.stopped, 1)

    def test_sigtermTwice(self) -> None:
        """
        A second SIGTERM while the graceful stop runs (a supervisor and a
        terminal both sending one) does not stop the reactor again, which
        would raise.
        """
        t = Live(self, configOf(A))
        service = ReloadOnSignal(t.live, self.reactor, self.install)
        service.startService()
        for _ in range(2):
            self.installed[signal.SIGTERM](signal.SIGTERM, None)
        for call in self.reactor.calls:
            call()
        self.assertEqual(self.reactor.stopped, 1)

    def test_signalsDuringTheStop(self) -> None:
        """
        The stop a SIGTERM began stops this service with the others, and
        its handlers stay until the reactor has shut down: a second SIGTERM
        during the grace still reaches it (not Twisted's handler, which
        would stop a stopping reactor, log a traceback and make twistd exit
        by the signal instead of with 0), and a SIGHUP (log rotation) does
        not reload and does not reach the default handler, which would kill
        the process and its clients.  After the shutdown the old handlers
        are back.
        """
        t = Live(self, configOf(A))
        t.next = configOf(A, B)
        service = ReloadOnSignal(t.live, self.reactor, self.install)
        service.startService()
        self.installed[signal.SIGTERM](signal.SIGTERM, None)
        self.reactor.calls.pop()()
        service.stopService()
        self.installed[signal.SIGTERM](signal.SIGTERM, None)
        self.installed[signal.SIGHUP](signal.SIGHUP, None)
        [(phase, event, restore), second, hangup] = self.reactor.calls
        second()
        hangup()
        self.assertEqual((self.reactor.stopped, len(t.pools["web"])), (1, 1))
        self.assertEqual((phase, event), ("after", "shutdown"))
        restore()
        self.assertEqual(self.installed, {signal.SIGHUP: "oldhup", signal.SIGTERM: "oldterm",
                                          signal.SIGUSR2: "oldusr2"})

    def test_signalsDuringAShutdownOfAnother(self) -> None:
        """
        A shutdown this service did not begin (twistd's own C{SIGINT}
        handler, or an embedding application's C{reactor.stop()}) is a
        graceful stop too: its handlers stay until the reactor has shut
        down, so a C{SIGHUP} during the grace (log rotation) neither
        reloads nor reaches the default handler, which would kill the
        process and its clients, and a C{SIGTERM} does not stop the
        stopping reactor again.  Stopped while the reactor runs on, it puts
        the old handlers back at once (L{test_sighup}).
        """
        t = Live(self, configOf(A))
        t.next = configOf(A, B)
        service = ReloadOnSignal(t.live, self.reactor, self.install)
        service.startService()
        # (Twisted's reactor between stop() and the end of its shutdown.)
        self.reactor.running = True  # type: ignore[attr-defined]
        self.reactor._stopped = True  # type: ignore[attr-defined]
        service.stopService()
        self.assertNotEqual(self.installed[signal.SIGHUP], "oldhup")
        self.installed[signal.SIGHUP](signal.SIGHUP, None)
        self.installed[signal.SIGTERM](signal.SIGTERM, None)
        [(phase, event, restore), hangup, term] = self.reactor.calls
        hangup()
        term()
        self.assertEqual((self.reactor.stopped, len(t.pools["web"])), (0, 1))
        self.assertEqual((phase, event), ("after", "shutdown"))
        restore()
        self.assertEqual(self.installed, {signal.SIGHUP: "oldhup", signal.SIGTERM: "oldterm",
                                          signal.SIGUSR2: "oldusr2"})

    def upgrading(self, t: Live) -> tuple[list[Any], ReloadOnSignal]:
        """
        A started service for C{t} whose upgrades are recorded: the
        list of their Deferreds, and the service.
        """
        from twisted.internet.defer import Deferred

        upgrades: list[Deferred[Any]] = []

        def upgrade() -> Deferred[Any]:
            upgrades.append(Deferred())
            return upgrades[-1]

        service = ReloadOnSignal(t.live, self.reactor, self.install, upgrade=upgrade)
        service.startService()
        return upgrades, service

    def test_sigusr2DuringTheStop(self) -> None:
        """
        A C{SIGUSR2} during the graceful stop a C{SIGTERM} began (its
        handler stays until the shutdown is over) starts no upgrade: a new
        generation, or the master's re-execution, would turn the stop into
        a restart.
        """
        t = Live(self, configOf(A))
        upgrades, service = self.upgrading(t)
        self.installed[signal.SIGTERM](signal.SIGTERM, None)
        self.reactor.calls.pop()()
        service.stopService()
        self.installed[signal.SIGUSR2](signal.SIGUSR2, None)
        self.reactor.calls.pop()()
        self.assertEqual((self.reactor.stopped, upgrades), (1, []))

    def test_sigusr2(self) -> None:
        """
        SIGUSR2 starts an upgrade from the reactor thread; without worker
        processes it is logged and does nothing (the process lives on).
        """
        t = Live(self, configOf(A))
        upgrades, service = self.upgrading(t)
        self.installed[signal.SIGUSR2](signal.SIGUSR2, None)
        self.assertEqual(upgrades, [])
        self.reactor.calls[-1]()
        self.assertEqual(len(upgrades), 1)
        upgrades[0].errback(RuntimeError("failed, and said so"))
        service.stopService()
        alone = ReloadOnSignal(t.live, self.reactor, self.install)
        alone.startService()
        self.installed[signal.SIGUSR2](signal.SIGUSR2, None)
        self.reactor.calls[-1]()
        self.assertEqual(self.reactor.stopped, 0)
        alone.stopService()


class GracefulStopTests(SynchronousTestCase):
    """
    Stopping waits for in-flight connections, up to the grace period.
    """

    def test_waitsForInFlight(self) -> None:
        """
        The stop fires as soon as the last connection finishes.
        """
        t = Live(self, configOf(A))
        pool = t.pools["web"]
        a = pool.get("a")
        assert a is not None
        pool.opened(a)
        stop = GracefulStop(t.live, t.clock, grace=10)
        stop.startService()
        d = stop.stopService()
        t.clock.advance(1)
        self.assertNoResult(d)
        pool.closed(a)
        t.clock.advance(0.1)
        self.successResultOf(d)

    def test_closesAfterGrace(self) -> None:
        """
        What is still open when the grace is over is closed.
        """
        t = Live(self, configOf(A))
        pool = t.pools["web"]
        a = pool.get("a")
        assert a is not None
        pool.opened(a)
        closed: list[int] = []
        a.closers.add(Closer(lambda: closed.append(1)))
        stop = GracefulStop(t.live, t.clock, grace=2)
        stop.startService()
        d = stop.stopService()
        t.clock.pump([0.5] * 3)
        self.assertNoResult(d)
        t.clock.pump([0.5] * 2)
        self.successResultOf(d)
        self.assertEqual(closed, [1])


def exchange(port: int, stop: threading.Event, errors: list[str], deadline: float) -> int:
    """
    Open connections through the balancer one after another until C{stop}
    is set (or the deadline passes, or 5000 rounds), each reading the
    backend's name and an echo; record anything that goes wrong.
    """
    done = 0
    for i in range(5000):
        if stop.is_set() or time.monotonic() > deadline:
            break
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                f = s.makefile("rb")
                name = f.readline()
                if not name.strip():
                    errors.append(f"round {i}: no name")
                    continue
                s.sendall(b"ping %d\n" % i)
                if f.readline() != b"ping %d\n" % i:
                    errors.append(f"round {i}: bad echo")
                    continue
                done += 1
        except OSError as e:
            errors.append(f"round {i}: {e}")
    return done


class ReloadUnderLoadTests(TestCase):
    """
    Reloads while clients are connecting lose no client.
    """

    @inlineCallbacks
    def test_zeroErrors(self) -> Any:
        """
        Clients keep connecting through several reloads that add, remove and
        reweight backends, and every one of them is served.
        """
        backends = Backends(self)
        for n in ("a", "b", "c"):
            backends.start(n)
        data = poolConfig([(n, backends.endpoint(n)) for n in ("a", "b")])
        lb, port = startBalancer(self, data)
        configs = [
            poolConfig([(n, backends.endpoint(n)) for n in ("b", "c")]),
            poolConfig([(n, backends.endpoint(n)) for n in ("a", "c")]),
            poolConfig([(n, backends.endpoint(n)) for n in ("a", "b", "c")]),
        ]
        configs[2]["pools"]["web"]["backends"][0]["weight"] = 3
        step = iter([parseConfig(c) for c in configs] * 2)
        live = LiveConfig(lb.pools, lb.config, reactor, StateFile(self.mktemp()),
                          loadConfig=lambda: next(step), grace=5.0)
        self.addCleanup(live.closeEverything)
        errors: list[str] = []
        deadline = time.monotonic() + 20
        stop = threading.Event()
        clients = [inThread(exchange, port, stop, errors, deadline) for _ in range(4)]
        reloads = 0
        for _ in range(6):
            yield sleep(0.1)
            self.assertIsNone(live.reload())
            reloads += 1
        yield sleep(0.1)
        stop.set()
        served = yield gatherResults(clients)
        self.assertEqual(errors, [])
        self.assertGreater(sum(served), 20)
        self.assertEqual(reloads, 6)
        self.assertEqual(live.reloads, 6)
        total = sum(b.total for b in lb.pools["web"]) + sum(b.total for b in live.draining)
        self.assertLessEqual(total, sum(served))


class RecordingFactory:
    """
    A listener factory that records the routes it is given.
    """

    def __init__(self) -> None:
        self.given: list[tuple[tuple[str, ...], str | None]] = []

    def setRoutes(self, routes: Any, default: Any) -> None:
        """
        Record the route names (and the default route's pool).
        """
        self.given.append((tuple(r.name for r in routes),
                           None if default is None else default.pool))

    def setClientTimeouts(self, listener: Any) -> tuple[float, float]:
        """
        Take the listener's timeouts as a real factory does, saying which.
        """
        return listener.clientTimeouts(SimpleNamespace(timeouts=Timeouts()))


def routedOf(routes: list[dict[str, Any]], pools: tuple[str, ...] = ("web", "api")) -> Config:
    """
    A configuration with a tcp listener C{front} of C{routes} and pools.
    """
    return parseConfig({
        "listeners": [{"name": "front", "listen": "tcp:0", "pool": "web", "routes": routes}],
        "pools": {name: {"backends": [{"name": "a", "endpoint": "tcp:host=h:port=1"}]}
                  for name in pools},
    })


class RouteReloadTests(SynchronousTestCase):
    """
    C{SIGHUP} (a reload) applies the file's route changes live.
    """

    def setUp(self) -> None:
        self.factory = RecordingFactory()
        self.t = Live(self, routedOf([{"name": "db", "match": {"sni": "db.example"},
                                       "pool": "api"}]))
        pools = self.t.live.pools

        def addPool(config: Any) -> BackendPool:
            pools[config.name] = BackendPool(config)
            return pools[config.name]

        self.balancer = SimpleNamespace(factories={"front": self.factory}, addPool=addPool,
                                        removePool=pools.pop)
        self.t.live.balancer = self.balancer
        self.t.live.appliedRoutes = {
            x.name: (x.routes, x.defaultRoute) for x in self.t.live.fileConfig.listeners}

    def test_fileRoutesApplied(self) -> None:
        """
        Routes changed in the file reach the listener's factory; a reload
        that changes none gives it nothing.
        """
        self.t.next = routedOf([{"name": "db2", "match": {"sni": "db.example"}, "pool": "api"}])
        self.assertIsNone(self.t.live.reload())
        self.assertEqual(self.factory.given, [(("db2",), "web")])
        self.assertEqual(self.t.live.restartNeeded, [])
        self.assertIsNone(self.t.live.reload())
        self.assertEqual(len(self.factory.given), 1)

    def test_summarySaysWhatApplied(self) -> None:
        """
        A reload that changes a listener's routes or client timeouts (and
        no pool) ends its summary line saying so, not "no change"; with a
        pool changed too, it names both; one that changes nothing still
        says "no change".
        """
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)

        def summary(config: Config) -> str:
            self.t.next = config
            del events[:]
            self.assertIsNone(self.t.live.reload())
            [line] = [formatEvent(e) for e in events
                      if formatEvent(e).startswith("configuration reloaded")]
            return line.removeprefix("configuration reloaded: 2 backends in 2 pools, ")

        routes = routedOf([{"name": "db2", "match": {"sni": "db.example"}, "pool": "api"}])
        self.assertEqual(summary(routes), "routes of listener front applied")
        timed = attrs.evolve(routes, listeners=(
            attrs.evolve(routes.listeners[0], timeouts=TimeoutOverrides(idle=5.0)),))
        self.assertEqual(summary(timed), "client timeouts of listener front applied")
        self.assertEqual(summary(timed), "no change")
        both = attrs.evolve(routes, pools=(
            attrs.evolve(routes.pools[0], policy="leastconn"), routes.pools[1]))
        self.assertEqual(summary(both), "1 pool changed, client timeouts of listener front "
                                        "applied")

    def test_fileWinsOverAPI(self) -> None:
        """
        Routes set through the API stay over a reload that leaves the
        file's routes as they were, and give way when the file changes them.
        """
        self.t.live.setRoutes("front", [{"name": "api", "pool": "api"}])
        self.assertEqual(self.factory.given, [(("api",), "web")])
        self.assertIsNone(self.t.live.reload())
        self.assertEqual(self.t.live.listener("front").routes[0].name, "api")
        self.t.next = routedOf([{"name": "new", "match": {"sni": "n.example"}, "pool": "web"}])
        self.assertIsNone(self.t.live.reload())
        self.assertEqual(self.factory.given[-1], (("new",), "web"))
        self.assertEqual(self.t.live.overrides.routes, {})

    def test_newPoolApplied(self) -> None:
        """
        File routes naming a pool new in the file are applied with it: the
        balancer starts the pool first.
        """
        self.t.next = routedOf([{"name": "db", "match": {"sni": "db.example"}, "pool": "new"}],
                               pools=("web", "api", "new"))
        self.assertIsNone(self.t.live.reload())
        self.assertIn("new", self.t.live.pools)
        self.assertEqual(self.factory.given, [(("db",), "web")])
        self.assertEqual(self.t.live.restartNeeded, [])

    def test_unknownPoolNeedsRestart(self) -> None:
        """
        Without a balancer that can start pools (run-time control over bare
        pools), file routes naming a pool new in the file are not applied;
        the reload says a restart is needed for them.
        """
        self.t.live.balancer = None
        self.t.next = routedOf([{"name": "db", "match": {"sni": "db.example"}, "pool": "new"}],
                               pools=("web", "api", "new"))
        self.assertIsNone(self.t.live.reload())
        self.assertNotIn("new", self.t.live.pools)
        self.assertIn("listeners.front.routes (pool new not running)",
                      self.t.live.restartNeeded)


class RunnableRoutesTests(SynchronousTestCase):
    """
    L{runnable} takes the routes of the new file, listener by listener.
    """

    def test_routesTaken(self) -> None:
        """
        A listener kept by name takes its new routes, even when another
        listener changed (which needs a restart); a new listener does not
        start.
        """
        running = routedOf([{"name": "db", "match": {"sni": "db.example"}, "pool": "api"}])
        new = attrs.evolve(
            routedOf([{"name": "db2", "match": {"sni": "db.example"}, "pool": "api"}]),
            listeners=(*routedOf([{"name": "db2", "match": {"sni": "db.example"},
                                   "pool": "api"}]).listeners,
                       attrs.evolve(running.listeners[0], name="other")))
        kept, differ = runnable(new, running)
        self.assertEqual(differ, ["listeners"])
        self.assertEqual([x.name for x in kept.listeners], ["front"])
        self.assertEqual([r.name for r in kept.listeners[0].routes], ["db2"])
        self.assertEqual(routeChanges(kept, running), ["front"])
        self.assertEqual(routeChanges(running, running), [])


    def test_derivedPoolNamed(self) -> None:
        """
        A routed listener that names no pool takes its client settings from
        its first route's: a new first route with another pool is applied,
        and what waits for a restart is said as that, not as "listeners".
        """

        def routed(first: str) -> Any:
            return parseConfig({
                "listeners": [{"name": "front", "listen": "tcp:0", "mode": "http", "routes": [
                    {"name": first, "match": {"path-prefix": "/" + first}, "pool": first},
                    {"name": "rest", "pool": "web"}]}],
                "pools": {name: {"backends": ["h:1"]} for name in ("web", "api")},
            })

        kept, differ = runnable(routed("api"), routed("web"))
        self.assertEqual(differ, [
            "listeners.front.pool (its client settings stay pool web's until a restart, "
            "not api's; its routes are applied)"])
        self.assertEqual([r.name for r in kept.listeners[0].routes], ["api", "rest"])
        self.assertEqual(kept.listeners[0].pool, "web")


class ListenerTimeoutsTests(TestCase):
    """
    A listener's own client timeouts change with a reload, for the
    connections it accepts from then on.
    """

    def test_runnable(self) -> None:
        """
        L{runnable} takes a listener's new timeouts as live, alone or
        beside a change that needs a restart.
        """
        def config(idle: float, endpoint: str = "tcp:0") -> Config:
            return parseConfig({
                "listeners": [{"name": "front", "listen": endpoint, "mode": "http",
                               "timeouts": {"idle": idle}}],
                "pools": {"web": {"backends": ["h:1"]}}})

        kept, differ = runnable(config(5), config(30))
        self.assertEqual(differ, [])
        self.assertEqual(kept.listeners[0].timeouts.idle, 5)
        kept, differ = runnable(config(5, "tcp:1"), config(30))
        self.assertEqual(differ, ["listeners"])
        self.assertEqual((kept.listeners[0].endpoint, kept.listeners[0].timeouts.idle),
                         ("tcp:0", 5))

    @inlineCallbacks
    def test_reloadApplies(self) -> Any:
        """
        Through a real balancer: after a reload that shortens a listener's
        C{timeouts.request}, a new client that sends nothing is closed
        after the new one, with no restart needed, and the log says it.
        """
        data = {"listeners": [{"name": "front", "listen": "tcp:0:interface=127.0.0.1",
                               "mode": "http", "timeouts": {"request": "5s"}}],
                "pools": {"web": {"timeouts": {"request": "20s"},
                                  "backends": ["127.0.0.1:9"]}}}
        balancer = signalledBalancer(self, data)
        factory = balancer.loadBalancer.factories["front"]
        self.assertEqual(factory.requestTimeout, 5.0)  # type: ignore[attr-defined]
        data["listeners"][0]["timeouts"] = {"request": "300ms"}  # type: ignore[index]
        events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        live = balancer.live
        assert live is not None
        self.assertIsNone(live.reload(config=parseConfig(
            {**data, "admin": live.fileConfig.admin})))
        self.assertEqual(live.restartNeeded, [])
        self.assertIn("listener front: client timeouts idle 300s, request 0.3s, for new "
                      "connections", [formatEvent(e) for e in events])
        service = balancer.loadBalancer.getServiceNamed("listener:front")
        port = service._waitingForPort.result.getHost().port  # type: ignore[attr-defined]

        def silent() -> float:
            started = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                while s.recv(4096):
                    pass
            return time.monotonic() - started

        elapsed = yield inThread(silent)
        self.assertGreater(elapsed, 0.25)
        self.assertLess(elapsed, 2.5)


class RunnablePoolsTests(SynchronousTestCase):
    """
    L{runnable} and the set of pools.
    """

    def test_poolsLive(self) -> None:
        """
        A balancer that adds and removes pools takes the new set; one that
        cannot keeps the running set and says so.
        """
        from lbtwist.diff import runnable

        running = parseConfig({"listeners": [{"listen": "tcp:80", "pool": "a"}],
                               "pools": {"a": {"backends": ["tcp:x:1"]},
                                         "b": {"backends": ["tcp:x:2"]}}})
        new = parseConfig({"listeners": [{"listen": "tcp:80", "pool": "a"}],
                           "pools": {"a": {"backends": ["tcp:x:1"]},
                                     "c": {"backends": ["tcp:x:3"]}}})
        kept, differ = runnable(new, running, poolsLive=True)
        self.assertEqual([p.name for p in kept.pools], ["a", "c"])
        self.assertEqual(differ, [])
        kept, differ = runnable(new, running)
        self.assertEqual([p.name for p in kept.pools], ["a", "b"])
        self.assertEqual(differ, ["the set of pools"])
