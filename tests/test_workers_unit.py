"""
Unit tests of L{lbtwist.workers} without processes: the registry a master
pushes and how a worker applies it, counters added up across processes,
the control channel's JSON, shared-out limits, and the supervision of
workers over a memory reactor.
"""

from __future__ import annotations

import random
import signal
import socket
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessTerminated
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import capturedLogs, formatEvent
from twisted.protocols.amp import AmpBox
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import (
    BackendConfig,
    Config,
    ConfigError,
    parseConfig,
    parseWorkers,
    validateEndpoint,
)
from lbtwist.lifecycle import ReadyNotice, sdNotify
from lbtwist.policies import SourceHash
from lbtwist.pool import Admin, BackendPool, Health
from lbtwist.reload import LiveConfig
from lbtwist.service import withBacklog
from lbtwist.workers import ConfigText, WorkerGroup, WorkerSpec, checkFileLimit
from lbtwist.workers._master import MAX_DELAY, WorkerProcess, WorkerSlot, backoff
from lbtwist.workers._protocol import JSON
from lbtwist.workers._registry import RegistryApplier, WorkerLiveConfig, snapshot, splitLimits
from lbtwist.workers._stats import SEP, CounterMirror, addUp, countersOf, withoutGauges

CONFIG = {
    "listeners": [{"name": "front", "listen": "tcp:0"}],
    "pools": {"web": {"backends": [
        {"name": "a", "endpoint": "tcp:host=127.0.0.1:port=1"},
        {"name": "b", "endpoint": "tcp:host=127.0.0.1:port=2", "maxconn": 10},
    ]}},
}


def process(config: Config) -> tuple[dict[str, BackendPool], LiveConfig]:
    """
    The pools and run-time control of one process running C{config}.
    """
    pools = {p.name: BackendPool(p) for p in config.pools}
    return pools, LiveConfig(pools, config, Clock())


class RegistryTests(SynchronousTestCase):
    """
    A worker applying its master's registry ends with the master's pools.
    """

    def setUp(self) -> None:
        self.config = parseConfig(CONFIG)
        self.masterPools, self.master = process(self.config)
        self.workerPools = {p.name: BackendPool(p) for p in self.config.pools}
        self.worker = WorkerLiveConfig(self.workerPools, self.config, Clock())
        self.applier = RegistryApplier(self.worker)

    def state(self, pools: dict[str, BackendPool]) -> dict[str, Any]:
        return {b.name: (b.endpoint, b.weight, b.admin, b.health, b.config.discovered)
                for b in pools["web"]}

    def test_operatorChanges(self) -> None:
        """
        Backends added, removed, re-weighted and put in maintenance in the
        master are so in the worker once it applies the registry.
        """
        self.master.addBackend("web", BackendConfig("c", "tcp:host=127.0.0.1:port=3"))
        self.master.change("web", "a", weight=7, admin=Admin.MAINT)
        self.master.removeBackend("web", "b")
        self.applier.apply(1, snapshot(self.master, None))
        self.assertEqual(self.state(self.workerPools), self.state(self.masterPools))
        self.assertEqual(self.applier.revision, 1)

    def test_health(self) -> None:
        """
        Health the master's probes found is the worker's, and a health
        change the registry makes is not taken for the worker's own.
        """
        seen = []
        self.workerPools["web"].observers.append(lambda e: seen.append(self.applier.applying))
        self.masterPools["web"].setHealth("a", Health.DOWN, "probe failed")
        self.applier.apply(1, snapshot(self.master, None))
        self.assertIs(self.workerPools["web"].get("a").health, Health.DOWN)  # type: ignore[union-attr]
        self.assertEqual(seen, [True])

    def test_discovered(self) -> None:
        """
        Backends DNS discovery found in the master are added to the
        worker, marked discovered, and drained once no longer found.
        """
        found = BackendConfig("d-1", "tcp:host=127.0.0.1:port=4", weight=3, discovered=True)
        self.masterPools["web"].add(found)
        self.applier.apply(1, snapshot(self.master, None))
        self.assertEqual(self.state(self.workerPools), self.state(self.masterPools))
        self.masterPools["web"].remove("d-1")
        self.applier.apply(2, snapshot(self.master, None))
        self.assertNotIn("d-1", self.workerPools["web"])

    def test_configText(self) -> None:
        """
        The configuration the master read on reload reaches the worker as
        text, whatever the file holds later.
        """
        path = self.mktemp()
        changed = {**CONFIG, "pools": {"web": {"backends": [
            {"name": "a", "endpoint": "tcp:host=127.0.0.1:port=1", "weight": 5}]}}}
        import yaml

        with open(path, "w") as f:
            yaml.safe_dump(changed, f)
        text = ConfigText(path)
        self.master.loadConfig = text
        self.assertIsNone(self.master.reload())
        with open(path, "w") as f:
            f.write("not: [valid")
        self.applier.apply(1, snapshot(self.master, text))
        self.assertEqual(self.state(self.workerPools), self.state(self.masterPools))
        self.assertEqual(self.workerPools["web"].get("a").weight, 5)  # type: ignore[union-attr]

    def test_limitsShared(self) -> None:
        """
        A worker of three gets a third of each connection limit, rounded
        up; limits of 0 (none) stay 0.
        """
        config = attrs.evolve(self.config, maxconn=100)
        shared = splitLimits(config, 3)
        self.assertEqual(shared.maxconn, 34)
        self.assertEqual([b.maxconn for b in shared.pools[0].backends], [0, 4])
        self.assertIs(splitLimits(config, 1), config)
        self.worker.workers = 3
        self.assertEqual([b.maxconn for b in self.worker.config.pools[0].backends], [0, 4])


class StatsTests(SynchronousTestCase):
    """
    Counters read in workers and shown, added up, in the master.
    """

    def test_mirror(self) -> None:
        """
        The master's counters show the workers' totals over its own (the
        probe failures), and follow them as they change.
        """
        config = parseConfig(CONFIG)
        pools, _ = process(config)
        a = pools["web"].get("a")
        assert a is not None
        a.failures["probe"] = 2
        mirror = CounterMirror(pools, {})
        one = {SEP.join(("backend", "web", "a", "total")): 5,
               SEP.join(("backend", "web", "a", "failures", "probe")): 1,
               SEP.join(("backend", "web", "a", "buckets", "0")): 4,
               SEP.join(("backend", "gone", "x", "total")): 9,
               SEP.join(("pool", "web", "noBackend")): 1}
        mirror.show(addUp([one, one]))
        self.assertEqual((a.total, a.failures["probe"], a.responseBuckets[0],
                          pools["web"].noBackend), (10, 4, 8, 2))
        mirror.show(one)
        self.assertEqual((a.total, a.failures["probe"]), (5, 3))

    def test_responseTime(self) -> None:
        """
        A backend's response time, as the master shows it, is the mean of
        the responses its workers timed since the last refresh; without
        new ones it stays; the histogram counts each response once.
        """
        pools, _ = process(parseConfig(CONFIG))
        a = pools["web"].get("a")
        assert a is not None
        mirror = CounterMirror(pools, {})

        def timed(seconds: float, count: int) -> dict[str, float]:
            return {SEP.join(("backend", "web", "a", "responseSum")): seconds,
                    SEP.join(("backend", "web", "a", "buckets", "0")): count}

        self.assertIsNone(a.responseTime)
        mirror.show(addUp([timed(0.004, 2), timed(0.002, 2)]))
        self.assertAlmostEqual(a.responseTime or 0, 0.0015)
        mirror.show(addUp([timed(0.014, 3), timed(0.002, 2)]))
        self.assertAlmostEqual(a.responseTime or 0, 0.01)
        mirror.show(addUp([timed(0.014, 3), timed(0.002, 2)]))
        self.assertAlmostEqual(a.responseTime or 0, 0.01)
        self.assertEqual(a.responseBuckets[0], 5)
        self.assertAlmostEqual(a.responseSum, 0.016)

    def test_countersOf(self) -> None:
        """
        A process's counters, flat; what is open now is left out of what
        an exited worker keeps adding.
        """
        pools, _ = process(parseConfig(CONFIG))
        b = pools["web"].get("b")
        assert b is not None
        b.total, b.active = 3, 2
        factory = attrs.make_class("F", ["accepted", "activeClients", "statuses"])(7, 1, {"2xx": 3})
        counters = countersOf(pools, {"front": factory})
        self.assertEqual(counters[SEP.join(("backend", "web", "b", "total"))], 3)
        self.assertEqual(counters[SEP.join(("listener", "front", "statuses", "2xx"))], 3)
        kept = withoutGauges(counters)
        self.assertNotIn(SEP.join(("backend", "web", "b", "active")), kept)
        self.assertNotIn(SEP.join(("listener", "front", "activeClients")), kept)
        self.assertEqual(kept[SEP.join(("listener", "front", "accepted"))], 7)


class ChannelTests(SynchronousTestCase):
    """
    The control channel's values.
    """

    def test_bigJSON(self) -> None:
        """
        JSON larger than an AMP value (64 KiB) goes in parts and comes back
        whole.
        """
        value = {"text": "x" * 200_000, "n": [1, 2.5, None]}
        strings: dict[bytes, bytes] = {}
        JSON().toBox(b"registry", strings, {"registry": value}, None)
        self.assertTrue(all(len(v) < 65_536 for v in strings.values()))
        self.assertGreater(len(strings), 3)
        objects: dict[str, Any] = {}
        JSON().fromBox(b"registry", strings, objects, None)
        self.assertEqual(objects["registry"], value)

    def test_spec(self) -> None:
        """
        A worker reads back the spec its master wrote; anything else is
        refused naming C{--worker}.
        """
        spec = WorkerSpec(control=3, listeners={"front": (4, int(socket.AF_INET))}, index=2,
                          generation=5, workers=4, heartbeat=0.25)
        self.assertEqual(WorkerSpec.fromJSON(spec.toJSON()), spec)
        e = self.assertRaises(ValueError, WorkerSpec.fromJSON, "{}")
        self.assertIn("--worker:", str(e))


class OptionsTests(SynchronousTestCase):
    """
    The number of workers and what it needs.
    """

    def test_parse(self) -> None:
        """
        A number 1-1024 or C{auto}; anything else names the key.
        """
        self.assertEqual(parseWorkers(3, "workers"), 3)
        self.assertEqual(parseWorkers("12", "workers"), 12)
        self.assertEqual(parseWorkers("auto", "workers", lambda: 6), 6)
        for bad in (0, -1, True, "x", 1025, 2.0):
            e = self.assertRaises(ConfigError, parseWorkers, bad, "workers")
            self.assertTrue(str(e).startswith("workers: expected a number"), str(e))

    def test_master(self) -> None:
        """
        C{master} is true or false (a master runs with more than one worker
        whatever it says); anything else names the key.
        """
        base = {"listeners": [{"name": "f", "listen": "tcp:1"}],
                "pools": {"default": {"backends": ["127.0.0.1:9"]}}}
        for top, runsMaster in (({}, False), ({"master": True}, True),
                                ({"master": False}, False), ({"workers": 2}, True),
                                ({"workers": 2, "master": False}, True)):
            self.assertEqual(parseConfig({**base, **top}).runsMaster, runsMaster, top)
        for bad in ("yes", 1, None):
            e = self.assertRaises(ConfigError, parseConfig, {**base, "master": bad})
            self.assertTrue(str(e).startswith("master: expected true or false"), str(e))

    def test_watchdog(self) -> None:
        """
        C{worker-watchdog} is a duration of 2 s to an hour (30 s when not
        given), or C{off} (YAML's C{false}) or 0 for none; anything else
        names the key.
        """
        base = {"listeners": [{"name": "f", "listen": "tcp:1"}],
                "pools": {"default": {"backends": ["127.0.0.1:9"]}}}
        self.assertEqual(parseConfig(base).workerWatchdog, 30.0)
        for given, seconds in (("10s", 10.0), (2, 2.0), ("2.5", 2.5), ("2m", 120.0),
                               (False, 0.0), ("off", 0.0), (0, 0.0)):
            self.assertEqual(
                parseConfig({**base, "worker-watchdog": given}).workerWatchdog, seconds, given)
        for bad in (True, "on", "500ms", 1.5, "2h", -1, "soon", [10]):
            e = self.assertRaises(ConfigError, parseConfig, {**base, "worker-watchdog": bad})
            self.assertTrue(str(e).startswith(
                "worker-watchdog: expected a duration from 2 to 3600 seconds (like 10s or 2m) "
                "or off, got "), str(e))

    def test_fileLimit(self) -> None:
        """
        Each worker costs the master a few file descriptors.
        """
        self.assertIsNone(checkFileLimit(4, 2, 1024))
        problem = checkFileLimit(300, 2, 1024)
        assert problem is not None
        self.assertIn("300 workers need about 1266 file descriptors", problem)

    def test_sourceHashSameEverywhere(self) -> None:
        """
        Source hashing picks by the key alone: processes with different
        random generators send a client to the same backend.
        """
        pools = [BackendPool(parseConfig(CONFIG).pools[0]) for _ in range(2)]
        picks = []
        for seed, pool in enumerate(pools):
            policy = SourceHash(random.Random(seed))
            picks.append([policy.choose(list(pool), b"10.0.0.%d" % i).name for i in range(50)])
        self.assertEqual(picks[0], picks[1])
        self.assertEqual(set(picks[0]), {"a", "b"})


class FakeProcess:
    """
    A spawned process as the memory reactor gives it.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.signals: list[Any] = []
        # The readers of its output, with made-up descriptors.
        self.pipes = {n: FakeReader(pid * 10 + n) for n in (1, 2)}

    def signalProcess(self, signum: Any) -> None:
        self.signals.append(signum)


class FakeReader:
    """
    The reader of a spawned process's output pipe.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


class ProcessReactor(MemoryReactorClock):
    """
    A memory reactor that records the processes spawned.
    """

    def __init__(self) -> None:
        super().__init__()
        self.spawned: list[tuple[Any, list[str], dict[int, Any]]] = []
        # The process of each, in the same order.
        self.processes: list[FakeProcess] = []

    def spawnProcess(self, protocol: Any, executable: str, args: list[str], env: Any = None,
                     path: Any = None, uid: Any = None, gid: Any = None, usePTY: Any = False,
                     childFDs: Any = None) -> FakeProcess:
        self.spawned.append((protocol, args, childFDs))
        process = FakeProcess(1000 + len(self.spawned))
        self.processes.append(process)
        return process

    def adoptStreamConnection(self, fileDescriptor: int, addressFamily: int,
                              factory: Any) -> None:
        """
        Connect the factory's protocol to a memory transport.
        """
        protocol = factory.buildProtocol(None)
        protocol.makeConnection(AdoptedTransport(fileDescriptor))


class AdoptedTransport(StringTransport):
    """
    A memory transport for a connection adopted from a descriptor.
    """

    def __init__(self, fd: int) -> None:
        super().__init__()
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


class SupervisionTests(SynchronousTestCase):
    """
    The master starts workers again after a back-off.
    """

    def setUp(self) -> None:
        self.reactor = ProcessReactor()
        config = parseConfig(CONFIG)
        pools, live = process(config)
        self.now = 0.0
        self.group = WorkerGroup(_Services(pools), live, self.reactor, count=2,
                                 command=["--config", "lb.yaml"], grace=3.0,
                                 now=lambda: self.now)
        self.group.startService()
        self.addCleanup(self.group.stopService)

    def end(self, index: int) -> None:
        slot = self.group.slots[index - 1]
        protocol = next(p for p, _, _ in reversed(self.reactor.spawned) if p.slot is slot)
        protocol.processEnded(Failure(ProcessTerminated(signal=9)))

    def test_spawned(self) -> None:
        """
        Each worker is C{twistd lb} with the master's options and its spec.
        """
        self.assertEqual(len(self.reactor.spawned), 2)
        _, args, childFDs = self.reactor.spawned[0]
        self.assertEqual(args[args.index("lb"):args.index("--worker")],
                         ["lb", "--config", "lb.yaml"])
        spec = WorkerSpec.fromJSON(args[-1])
        self.assertEqual((spec.index, spec.generation, spec.workers, spec.control),
                         (1, 1, 2, 3))
        self.assertEqual(childFDs[1], "r")

    def test_backoff(self) -> None:
        """
        A worker that dies young is replaced after 0.1 s, then 0.4 s...; one
        that lived 10 s is replaced after 0.1 s again.
        """
        self.end(1)
        self.reactor.advance(0.09)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.reactor.advance(0.02)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.end(1)
        self.reactor.advance(0.39)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.reactor.advance(0.02)
        self.assertEqual(len(self.reactor.spawned), 4)
        self.now += 10.0
        self.end(1)
        self.reactor.advance(0.11)
        self.assertEqual(len(self.reactor.spawned), 5)
        self.assertEqual(self.group.slots[0].restarts, 3)
        self.assertEqual(self.group.slots[1].restarts, 0)
        self.assertEqual([backoff(n) for n in range(6)][-1], MAX_DELAY)

    def test_stop(self) -> None:
        """
        Stopping the group sends every worker C{SIGTERM} and waits for
        them; none is started again.
        """
        d = self.group.stopService()
        self.assertNoResult(d)
        processes = [slot.process for slot in self.group.slots]
        self.assertEqual([p.signals for p in processes], [[15], [15]])
        self.end(1)
        self.end(2)
        self.successResultOf(d)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)


# The steps in which the tests of the watchdog let time pass.
TICK = 0.125


class WatchdogTests(SynchronousTestCase):
    """
    The master kills (C{SIGKILL}) a worker that sent no heartbeat for
    longer than C{worker-watchdog}, and replaces it.
    """

    def setUp(self) -> None:
        self.reactor = ProcessReactor()
        self.group = self.startGroup(2.0)
        self.beaten: dict[WorkerSlot, float] = {}

    def startGroup(self, watchdog: float) -> WorkerGroup:
        pools, live = process(parseConfig(CONFIG))
        group = WorkerGroup(_Services(pools), live, self.reactor, count=2,
                            command=["--config", "lb.yaml"], grace=3.0,
                            now=self.reactor.seconds, watchdog=watchdog)
        group.startService()
        self.addCleanup(group.stopService)
        return group

    def beat(self, slot: WorkerSlot, channel: Any = None) -> None:
        """
        A heartbeat from C{slot}'s worker, as it comes over the channel.
        """
        channel = slot.channel if channel is None else channel
        channel.dataReceived(AmpBox({b"_command": b"Heartbeat"}).serialize())
        self.beaten[slot] = self.reactor.seconds()

    def elapse(self, seconds: float, *beating: WorkerSlot, every: float = 0.5) -> None:
        """
        Let C{seconds} pass in small steps (the master runs all along),
        C{beating} sending a heartbeat C{every} so often.
        """
        for _ in range(round(seconds / TICK)):
            self.reactor.advance(TICK)
            for slot in beating:
                if self.reactor.seconds() - self.beaten.get(slot, 0.0) >= every - 1e-9:
                    self.beat(slot)

    def signals(self) -> list[list[Any]]:
        return [p.signals for p in self.reactor.processes]

    def end(self, slot: WorkerSlot) -> None:
        protocol = next(p for p, _, _ in reversed(self.reactor.spawned) if p.slot is slot)
        protocol.processEnded(Failure(ProcessTerminated(signal=9)))

    def test_heartbeatInSpec(self) -> None:
        """
        Each worker is told to beat every quarter of the limit, at least
        every second; with no watchdog, never.
        """
        spec = WorkerSpec.fromJSON(self.reactor.spawned[0][1][-1])
        self.assertEqual(spec.heartbeat, 0.5)
        self.startGroup(30.0)
        self.assertEqual(WorkerSpec.fromJSON(self.reactor.spawned[-1][1][-1]).heartbeat, 1.0)
        off = self.startGroup(0.0)
        self.assertEqual(WorkerSpec.fromJSON(self.reactor.spawned[-1][1][-1]).heartbeat, 0.0)
        self.assertFalse(off.watching.running)

    def test_wedgedKilledAndReplaced(self) -> None:
        """
        A worker silent for longer than the limit is killed with
        C{SIGKILL}, once, and the log names it, its PID and its silence;
        its successor starts as for any worker that exits.  The other
        worker, beating, is untouched.
        """
        first, second = self.group.slots
        self.beat(first)
        self.beat(second)
        with capturedLogs() as events:
            self.elapse(2.0, second)
            self.assertEqual(self.signals(), [[], []])
            self.elapse(0.5, second)
            self.assertEqual(self.signals(), [[signal.SIGKILL], []])
            # A beat still on its way from the killed process changes nothing.
            self.beat(first)
            self.elapse(5.0, second)
            self.assertEqual(self.signals(), [[signal.SIGKILL], []])
            self.end(first)
            self.reactor.advance(0.1)
        lines = [formatEvent(e) for e in events]
        self.assertIn("worker 1 of generation 1 (pid 1001) sent no heartbeat for 2.5s "
                      "(worker-watchdog: 2s): wedged, killing it (SIGKILL)", lines)
        self.assertIn("worker 1 (pid 1001) exited (killed by the watchdog) after 7.5s; "
                      "starting another in 0.1s", lines)
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertEqual((first.restarts, first.pid, second.restarts), (1, 1003, 0))
        # The successor is watched from its first heartbeat.
        self.beat(first)
        self.elapse(3.0, second)
        self.assertEqual(self.signals(), [[signal.SIGKILL], [], [signal.SIGKILL]])

    def test_slowBeatsNotKilled(self) -> None:
        """
        A worker busy enough that its heartbeats come up to the limit
        apart is not killed; one that has sent none yet (starting, or from
        a master without heartbeats) is not watched.
        """
        first, second = self.group.slots
        self.beat(first)
        self.elapse(20.0, first, every=1.9)
        self.assertEqual(self.signals(), [[], []])

    def test_masterStalled(self) -> None:
        """
        When the master itself did not run for longer than half the limit
        (stopped, starved), the heartbeats sent meanwhile are unread: no
        worker is killed for that silence, and each gets a new period.
        """
        first, second = self.group.slots
        self.beat(first)
        self.beat(second)
        with capturedLogs() as events:
            self.reactor.advance(10.0)
        self.assertEqual(self.signals(), [[], []])
        self.assertIn("the master was stalled: it did not look at its workers' heartbeats "
                      "for 10.0s; every worker's watchdog period starts again",
                      [formatEvent(e) for e in events])
        self.elapse(2.0, second)
        self.assertEqual(self.signals(), [[], []])
        self.elapse(0.5, second)
        self.assertEqual(self.signals(), [[signal.SIGKILL], []])

    def test_retiring(self) -> None:
        """
        A retiring worker draining its clients beats and is left to drain;
        one that goes silent is killed, not replaced.
        """
        old = self.group.slots[0]
        self.group.slots.remove(old)
        self.group.retiring.append(old)
        self.beat(old)
        self.elapse(10.0, old)
        self.assertEqual(self.signals()[0], [])
        self.elapse(2.5)
        self.assertEqual(self.signals()[0], [signal.SIGKILL])
        self.end(old)
        self.reactor.advance(60)
        self.assertEqual(len(self.reactor.spawned), 2)
        self.assertNotIn(old, self.group.retiring)


class RecordingChannel:
    """
    A master's channel to a worker that records its calls and lets the
    test answer them.
    """

    def __init__(self) -> None:
        self.calls: list[tuple[Any, dict[str, Any], Deferred[Any]]] = []

    def callRemote(self, command: Any, **kwargs: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.calls.append((command, kwargs, d))
        return d


class RegistryStateTests(SynchronousTestCase):
    """
    C{GET /api/workers} says whether each worker applied the master's last
    change to the pools.
    """

    def test_pendingUntilApplied(self) -> None:
        """
        A change is pending for every worker from the moment it is made
        until that worker answers the push with its revision; an answer to
        an earlier push does not count for a later one.
        """
        reactor = ProcessReactor()
        pools, live = process(parseConfig(CONFIG))
        group = WorkerGroup(_Services(pools), live, reactor, count=2,
                            command=["--config", "lb.yaml"], grace=3.0)
        group.startService()
        self.addCleanup(group.stopService)
        channels = []
        for slot in group.slots:
            slot.channel = channel = RecordingChannel()  # type: ignore[assignment]
            slot.ready = True
            channels.append(channel)

        def states() -> list[str]:
            return [w["registry"] for w in group.view()]

        group.schedulePush()
        self.assertEqual(states(), ["pending", "pending"])
        reactor.advance(0)
        self.assertEqual(states(), ["pending", "pending"])
        first = [c.calls[-1] for c in channels]
        group.schedulePush()
        reactor.advance(0)
        second = [c.calls[-1] for c in channels]
        for _, kwargs, d in first:
            d.callback({"revision": kwargs["revision"]})
        self.assertEqual(states(), ["pending", "pending"])
        _, kwargs, d = second[0]
        d.callback({"revision": kwargs["revision"]})
        self.assertEqual(states(), ["applied", "pending"])
        _, kwargs, d = second[1]
        d.callback({"revision": kwargs["revision"]})
        self.assertEqual(states(), ["applied", "applied"])


class _Services(list):  # type: ignore[type-arg]
    """
    A balancer with pools and no listeners.
    """

    def __init__(self, pools: dict[str, BackendPool]) -> None:
        super().__init__()
        self.pools = pools
        self.factories: dict[str, Any] = {}


class SystemdTests(SynchronousTestCase):
    """
    Socket activation's endpoints and the readiness notice.
    """

    def test_endpoint(self) -> None:
        """
        A C{systemd:} listener needs a domain and a name or an index; a
        backend cannot be one.
        """
        self.assertEqual(validateEndpoint("systemd:domain=INET:name=front", "l", True),
                         "systemd:domain=INET:name=front")
        self.assertEqual(withBacklog("systemd:domain=INET:index=0"),
                         "systemd:domain=INET:index=0")
        for text, server, problem in (
                ("systemd:domain=INET", True, "one of name= or index="),
                ("systemd:name=x:index=0:domain=INET", True, "one of name= or index="),
                ("systemd:domain=INET:name=x", False, "endpoints are for listeners")):
            e = self.assertRaises(ConfigError, validateEndpoint, text, "where", server)
            self.assertIn(problem, str(e))

    def receiver(self) -> tuple[socket.socket, str]:
        path = self.mktemp()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.addCleanup(s.close)
        s.bind(path)
        s.setblocking(False)
        return s, path

    def test_notify(self) -> None:
        """
        A message goes to C{NOTIFY_SOCKET}; without one nothing is sent.
        """
        s, path = self.receiver()
        self.assertTrue(sdNotify("READY=1", {"NOTIFY_SOCKET": path}))
        self.assertEqual(s.recv(100), b"READY=1")
        self.assertFalse(sdNotify("READY=1", {}))
        self.assertFalse(sdNotify("READY=1", {"NOTIFY_SOCKET": path + ".nothing"}))

    def test_readyWhenServing(self) -> None:
        """
        C{READY=1} is sent once the reactor runs and the workers serve, and
        C{STOPPING=1} on stop.
        """
        s, path = self.receiver()
        reactor = MemoryReactorClock()
        serving: Deferred[None] = Deferred()
        notice = ReadyNotice(reactor, lambda: serving, {"NOTIFY_SOCKET": path})
        notice.startService()
        reactor.run()
        self.assertRaises(BlockingIOError, s.recv, 100)
        serving.callback(None)
        self.assertTrue(s.recv(100).startswith(b"READY=1\nMAINPID="))
        notice.stopService()
        self.assertEqual(s.recv(100), b"STOPPING=1")


class WorkerOutputTests(SynchronousTestCase):
    """
    A worker's output reaches the master's log, naming the worker.
    """

    def test_linesNameWorkerAndGeneration(self) -> None:
        """
        Each whole line is logged with the worker's number and generation
        (an old worker finishing after an upgrade shares its successor's
        number); a partial line waits for its end.
        """
        slot = WorkerSlot(1, 3)
        process = WorkerProcess(None, slot)  # type: ignore[arg-type]
        with capturedLogs() as events:
            process.childDataReceived(1, b"serving\nhalf a ")
            process.childDataReceived(1, b"line\n")
        self.assertEqual([formatEvent(e) for e in events],
                         ["worker 1 gen 3: serving", "worker 1 gen 3: half a line"])
        self.assertEqual(slot.lastLines, ["serving", "half a line"])
