"""
Tests for L{lbtwist.state}: overrides on top of the configuration, and the
atomic state file.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import BackendConfig, parseConfig
from lbtwist.pool import Admin
from lbtwist.state import Overrides, StateError, StateFile, defaultStatePath


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
        The state file sits next to the config file, or in the working
        directory when there is none.
        """
        self.assertEqual(defaultStatePath("/etc/lb/lb.yaml"), "/etc/lb/lbtwist-state.json")
        self.assertEqual(defaultStatePath(None, "/srv"), "/srv/lbtwist-state.json")


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

        from lbtwist.reload import controlService
        from lbtwist.service import LoadBalancer

        lb = LoadBalancer(parseConfig({
            "listeners": [{"listen": "tcp:0"}],
            "pools": {"web": {"backends": ["tcp:host=h:port=1"]}},
        }), MemoryReactorClock())
        with self.assertRaises(SystemExit) as e:
            controlService(lb, MemoryReactorClock(), None, "/nonexistent/dir/s.json",
                           signals=False)
        self.assertIn("cannot save the state in '/nonexistent/dir'", str(e.exception))
