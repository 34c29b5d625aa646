"""
Tests for L{lbtwist.state}: overrides on top of the configuration, and the
atomic state file.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import BackendConfig, Config, ConfigError, parseConfig
from lbtwist.pool import Admin
from lbtwist.state import (
    Overrides,
    StateError,
    StateFile,
    defaultStatePath,
    demoStatePath,
    legacyStatePath,
)


def config() -> object:
    """
    A configuration with one pool of backends a and b.
    """
    return parseConfig({
        "listeners": [{"listen": "tcp:0"}],
        "pools": {"web": {"backends": [
            {"name": "a", "endpoint": "tcp:host=h:port=1"},
            {"name": "b", "endpoint": "tcp:host=h:port=2", "weight": 2}]}},
    })


class OverridesTests(SynchronousTestCase):
    """
    Recording and applying the operator's changes.
    """

    def test_apply(self) -> None:
        """
        Removed backends go, added ones come, weights are overridden.
        """
        o = Overrides()
        o.removed("web", "a")
        o.added("web", BackendConfig("c", "tcp:host=h:port=3", 4))
        o.weighted("web", "b", 9)
        o.administered("web", "b", Admin.DRAIN)
        pool = o.apply(config()).pool("web")  # type: ignore[attr-defined]
        self.assertEqual([(b.name, b.weight) for b in pool.backends], [("b", 9), ("c", 4)])
        self.assertEqual(o.adminStates("web"), {"b": Admin.DRAIN})

    def test_readdAndReady(self) -> None:
        """
        Re-adding a removed backend brings it back; ready clears an admin
        override; weighting an added backend changes the added entry.
        """
        o = Overrides()
        o.removed("web", "a")
        o.added("web", BackendConfig("a", "tcp:host=other:port=1"))
        o.weighted("web", "a", 5)
        o.administered("web", "a", Admin.MAINT)
        o.administered("web", "a", Admin.READY)
        pool = o.apply(config()).pool("web")  # type: ignore[attr-defined]
        self.assertEqual(pool.backend("a"), BackendConfig("a", "tcp:host=other:port=1", 5))
        self.assertEqual(o.adminStates("web"), {})

    def test_removeWhatTheAPIAdded(self) -> None:
        """
        Removing a backend the API added (not in the file) forgets it, so a
        backend of that name the file adds later is not hidden.
        """
        o = Overrides()
        o.added("web", BackendConfig("app4", "tcp:host=h:port=4"))
        o.removed("web", "app4", inFile=False)
        self.assertEqual(o, Overrides())

    def test_forget(self) -> None:
        """
        Forgetting a backend drops all its overrides.
        """
        o = Overrides()
        o.weighted("web", "a", 5)
        o.removed("web", "b")
        o.forget("web", {"a", "b"})
        self.assertEqual(o, Overrides())
        self.assertEqual(o.apply(config()), config())

    def test_roundTrip(self) -> None:
        """
        Overrides survive JSON.
        """
        o = Overrides()
        o.removed("web", "a")
        o.added("web", BackendConfig("c", "tcp:host=h:port=3", 4))
        o.weighted("web", "b", 9)
        o.administered("web", "b", Admin.MAINT)
        again = Overrides.fromJSON(json.loads(json.dumps(o.toJSON())))
        self.assertEqual(again, o)
        self.assertNotEqual(again, Overrides())

    def test_invalid(self) -> None:
        """
        Invalid state data is refused with a message.
        """
        for data in (None, {"version": 99, "pools": {}}, {"version": 1, "pools": []},
                     {"version": 1, "pools": {"web": {"removed": "a"}}},
                     {"version": 1, "pools": {"web": {"weights": {"a": 999}}}},
                     {"version": 1, "pools": {"web": {"admin": {"a": "off"}}}},
                     {"version": 1, "pools": {"web": {"added": [{"name": "x"}]}}}):
            self.assertRaises(StateError, Overrides.fromJSON, data)


class SummaryTests(SynchronousTestCase):
    """
    The overrides counted for the start-up log.
    """

    def test_summary(self) -> None:
        """
        Each kind of change is counted over every pool that has one.
        """
        self.assertEqual(Overrides().summary(), "nothing")
        o = Overrides()
        o.added("web", BackendConfig("c", "tcp:host=h:port=3"))
        o.weighted("web", "a", 5)
        o.weighted("api", "x", 2)
        o.administered("api", "x", Admin.DRAIN)
        o.removed("api", "y")
        self.assertEqual(
            o.summary(),
            "1 backend added, 1 backend removed, 2 weights set, 1 admin state set in 2 pools")


class StateFileTests(SynchronousTestCase):
    """
    Saving and loading, atomically.
    """

    def setUp(self) -> None:
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "state.json")

    def overrides(self, weight: int) -> Overrides:
        """
        Overrides with one weight.
        """
        o = Overrides()
        o.weighted("web", "a", weight)
        return o

    def test_missingIsEmpty(self) -> None:
        """
        No file yet means no overrides.
        """
        self.assertEqual(StateFile(self.path).load(), Overrides())

    def test_saveLoad(self) -> None:
        """
        What is saved is loaded, and no temporary file is left.
        """
        StateFile(self.path).save(self.overrides(3))
        self.assertEqual(StateFile(self.path).load(), self.overrides(3))
        self.assertEqual(os.listdir(self.dir), ["state.json"])

    def test_crashDuringSave(self) -> None:
        """
        A save that dies before the rename leaves the old state intact (and
        no temporary file behind).
        """
        StateFile(self.path).save(self.overrides(3))

        def crash(src: str, dst: str) -> None:
            with open(src) as f:
                self.assertEqual(json.load(f)["pools"]["web"]["weights"], {"a": 4})
            raise OSError("power cut")

        self.assertRaises(OSError, StateFile(self.path, replace=crash).save,
                          self.overrides(4))
        self.assertEqual(StateFile(self.path).load(), self.overrides(3))
        self.assertEqual(os.listdir(self.dir), ["state.json"])

    def test_strayTemporaryIgnored(self) -> None:
        """
        A half-written temporary file from a killed process is not read.
        """
        StateFile(self.path).save(self.overrides(3))
        with open(os.path.join(self.dir, ".lbtwist-state.x.tmp"), "w") as f:
            f.write('{"version": 1, "po')
        self.assertEqual(StateFile(self.path).load(), self.overrides(3))

    def test_corrupt(self) -> None:
        """
        A state file that is not JSON is an error naming the file.
        """
        with open(self.path, "w") as f:
            f.write("{")
        e = self.assertRaises(StateError, StateFile(self.path).load)
        self.assertIn(self.path, str(e))

    def test_defaultPath(self) -> None:
        """
        The state file sits next to the config file and is named after it,
        so two configs in one directory do not share one; with no config
        file it is in the working directory, named after the first listener.
        """
        self.assertEqual(defaultStatePath("/etc/lb/lb.yaml"), "/etc/lb/lb.state.json")
        self.assertEqual(defaultStatePath("/etc/lb/edge.yml"), "/etc/lb/edge.state.json")
        self.assertEqual(defaultStatePath("/etc/lb/noext"), "/etc/lb/noext.state.json")
        self.assertEqual(defaultStatePath(None, "/srv", ["tcp:8080"]),
                         "/srv/lbtwist-tcp-8080.state.json")
        self.assertEqual(defaultStatePath(None, "/srv", ["tcp:8080:interface=127.0.0.1", "tcp:81"]),
                         "/srv/lbtwist-tcp-8080-127.0.0.1.state.json")
        self.assertEqual(defaultStatePath(None, "/srv", ["unix:/run/lb.sock"]),
                         "/srv/lbtwist-unix-run-lb.sock.state.json")
        self.assertEqual(defaultStatePath(None, "/srv"), "/srv/lbtwist.state.json")

    def test_demoPath(self) -> None:
        """
        The demo's state file is C{lbtwist-demo.state.json} on the demo's
        usual listener (or none given); on another, it is named after the
        first listener as a command-line balancer's is, so two demos in one
        directory do not share one.
        """
        usual = "tcp:8080:interface=127.0.0.1"
        self.assertEqual(demoStatePath([], usual, "/srv"), "/srv/lbtwist-demo.state.json")
        self.assertEqual(demoStatePath([usual, "tcp:81"], usual, "/srv"),
                         "/srv/lbtwist-demo.state.json")
        self.assertEqual(demoStatePath(["tcp:8081:interface=127.0.0.1"], usual, "/srv"),
                         "/srv/lbtwist-demo-tcp-8081-127.0.0.1.state.json")
        self.assertEqual(demoStatePath(["unix:/run/d.sock"], usual, "/srv"),
                         "/srv/lbtwist-demo-unix-run-d.sock.state.json")

    def test_legacyRead(self) -> None:
        """
        While the state file does not exist, the old-named one beside it is
        read (and L{StateFile.loadedFrom} says so); saving writes the new
        one, which is read from then on.
        """
        legacy = legacyStatePath(self.path)
        self.assertEqual(legacy, os.path.join(os.path.abspath(self.dir), "lbtwist-state.json"))
        StateFile(legacy).save(self.overrides(3))
        state = StateFile(self.path, legacy=legacy)
        self.assertEqual(state.load(), self.overrides(3))
        self.assertEqual(state.loadedFrom, legacy)
        state.save(self.overrides(4))
        self.assertEqual(state.load(), self.overrides(4))
        self.assertEqual(state.loadedFrom, self.path)
        self.assertEqual(StateFile(legacy).load(), self.overrides(3))

    def test_loadedFromNothing(self) -> None:
        """
        With neither file, nothing is loaded from anywhere.
        """
        state = StateFile(self.path, legacy=legacyStatePath(self.path))
        self.assertEqual(state.load(), Overrides())
        self.assertIsNone(state.loadedFrom)


class CheckWritableTests(SynchronousTestCase):
    """
    A state file that could not be saved is found at start.
    """

    def test_missingDirectory(self) -> None:
        """
        A state path in a directory that does not exist is refused.
        """
        with self.assertRaises(StateError) as e:
            StateFile("/nonexistent/dir/state.json").checkWritable()
        self.assertIn("no such directory", str(e.exception))

    def test_writable(self) -> None:
        """
        A state path in a writable directory passes.
        """
        directory = self.mktemp()
        os.makedirs(directory)
        StateFile(os.path.join(directory, "state.json")).checkWritable()

    def test_startRefused(self) -> None:
        """
        The balancer does not start with a state file it could not save.
        """
        from twisted.internet.testing import MemoryReactorClock

        from lbtwist.app import Balancer
        from lbtwist.service import CannotStart

        with self.assertRaises(CannotStart) as e:
            Balancer(parseConfig({
                "listeners": [{"listen": "tcp:0"}],
                "pools": {"web": {"backends": ["tcp:host=h:port=1"]}},
            }), MemoryReactorClock(), statePath="/nonexistent/dir/s.json", signals=False)
        self.assertIn("cannot save the state in '/nonexistent/dir'", str(e.exception))


class StartLogTests(SynchronousTestCase):
    """
    The balancer says at start which state file it uses and what it
    restored from it.
    """

    def start(self, configPath: str | None, statePath: str | None = None) -> list[str]:
        """
        Compose the control services over a one-pool balancer; the log
        messages of the state file it logged.
        """
        from twisted.internet.testing import MemoryReactorClock
        from twisted.logger import capturedLogs, formatEvent

        from lbtwist.app import Balancer

        with capturedLogs() as events:
            balancer = Balancer(config(), MemoryReactorClock(),  # type: ignore[arg-type]
                                configPath=configPath, statePath=statePath, signals=False)
        self.lb = balancer.loadBalancer
        return [formatEvent(e) for e in events if "state" in e.get("log_format", "")]

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.configPath = os.path.join(self.dir, "lb.yaml")

    def test_noneYet(self) -> None:
        """
        With no state file, the log names the one changes will be saved to.
        """
        self.assertEqual(self.start(self.configPath), [
            f"state file {self.dir}/lb.state.json: none yet; changes made at run time "
            "are saved there"])

    def test_restored(self) -> None:
        """
        A state file's overrides are applied, and the log says from which
        file and what they are.
        """
        o = Overrides()
        o.weighted("web", "a", 7)
        o.removed("web", "b")
        StateFile(os.path.join(self.dir, "lb.state.json")).save(o)
        self.assertEqual(self.start(self.configPath), [
            f"state restored from {self.dir}/lb.state.json: 1 backend removed, "
            "1 weight set in 1 pool"])
        self.assertEqual([(b.name, b.weight) for b in self.lb.pools["web"]], [("a", 7)])

    def test_legacy(self) -> None:
        """
        An old-named state file beside the config is still applied, and the
        log says so and where changes go from now on.
        """
        o = Overrides()
        o.weighted("web", "a", 7)
        StateFile(os.path.join(self.dir, "lbtwist-state.json")).save(o)
        [line] = self.start(self.configPath)
        self.assertEqual(line, (
            f"state restored from {self.dir}/lbtwist-state.json (the old default name): "
            f"1 weight set in 1 pool; changes are saved to {self.dir}/lb.state.json from now "
            "on, which is read instead once it exists"))

    def test_givenPathNoLegacy(self) -> None:
        """
        A state file named on the command line is the only one read: an
        old-named file beside it is not.
        """
        o = Overrides()
        o.weighted("web", "a", 7)
        StateFile(os.path.join(self.dir, "lbtwist-state.json")).save(o)
        given = os.path.join(self.dir, "mine.json")
        self.assertEqual(self.start(self.configPath, given), [
            f"state file {given}: none yet; changes made at run time are saved there"])


def routedConfig() -> Config:
    """
    A configuration with pools web and api and a tcp listener routing one
    server name to api.
    """
    return parseConfig({
        "listeners": [{"name": "front", "listen": "tcp:0", "pool": "web",
                       "routes": [{"name": "db", "match": {"sni": "db.example"},
                                   "pool": "api"}]}],
        "pools": {name: {"backends": [{"name": "a", "endpoint": "tcp:host=h:port=1"}]}
                  for name in ("web", "api")},
    })


class RouteAndPoolOverridesTests(SynchronousTestCase):
    """
    Pools added and removed and route lists set at run time, in the state.
    """

    def overrides(self) -> Overrides:
        o = Overrides()
        o.poolAdded("extra", {"policy": "leastconn",
                              "backends": [{"name": "x", "endpoint": "tcp:host=h:port=9"}]})
        o.poolRemoved("api", inFile=True)
        o.routesSet("front", [{"name": "db", "match": {"sni": "db.example"}, "pool": "extra"}])
        return o

    def test_roundTrip(self) -> None:
        """
        They survive JSON, in a state of version 2, and count in the summary.
        """
        o = self.overrides()
        data = json.loads(json.dumps(o.toJSON()))
        self.assertEqual(data["version"], 2)
        self.assertEqual(data["removed-pools"], ["api"])
        again = Overrides.fromJSON(data)
        self.assertEqual(again, o)
        again.routesSet("front", [])
        self.assertNotEqual(again, o)
        self.assertEqual(o.summary(), "1 pool added; 1 pool removed; 1 route list set")

    def test_version1Loads(self) -> None:
        """
        A state file an older lbtwist wrote (version 1) still loads.
        """
        o = Overrides.fromJSON({"version": 1, "pools": {"web": {"weights": {"a": 3}}}})
        self.assertEqual(o.pool("web").weights, {"a": 3})
        self.assertEqual((o.routes, o.addedPools, o.removedPools), ({}, {}, set()))

    def test_apply(self) -> None:
        """
        The effective configuration has the pool added (and a backend added
        to it), not the one removed, and the listener's new routes.
        """
        o = self.overrides()
        o.added("extra", BackendConfig("y", "tcp:host=h:port=8"))
        effective = o.apply(routedConfig())
        self.assertEqual([p.name for p in effective.pools], ["web", "extra"])
        extra = effective.pool("extra")
        self.assertEqual((extra.policy, [b.name for b in extra.backends]),
                         ("leastconn", ["x", "y"]))
        self.assertEqual(effective.listeners[0].routes[0].pool, "extra")
        o.poolRemoved("extra", inFile=False)
        self.assertEqual(o.addedPools, {})
        self.assertNotIn("extra", o.pools)

    def test_applyChecks(self) -> None:
        """
        Routes kept in the state are checked as the file's are, naming the
        key in the state.
        """
        o = Overrides()
        o.routesSet("front", [{"name": "db", "pool": "gone"}])
        e = self.assertRaises(ConfigError, o.apply, routedConfig())
        self.assertEqual(e.path, "state: listeners.front.routes[0].pool")

    def test_invalid(self) -> None:
        """
        Route lists and pools of the wrong shape are refused.
        """
        for extra in ({"routes": {"front": {}}}, {"routes": []}, {"added-pools": {"x": []}},
                      {"removed-pools": "api"}, {"removed-pools": [1]}):
            self.assertRaises(StateError, Overrides.fromJSON,
                              {"version": 2, "pools": {}, **extra})
