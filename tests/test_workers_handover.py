"""
Unit tests of the master's re-exec (L{lbtwist.workers._handover}) without
an exec: the hand-over's encoding, the decision to re-execute, the code's
fingerprint, and a master's group of workers deciding, checking, handing
over and adopting, over a memory reactor.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import yaml
from twisted.internet.error import ConnectionDone, ProcessDone, ProcessTerminated
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import Clock
from twisted.logger import Logger, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import parseConfig
from lbtwist.pool import Health
from lbtwist.workers import (
    HANDOVER_VARIABLE,
    ConfigText,
    Handover,
    MasterImage,
    Upgraded,
    WorkerGroup,
    releaseSignals,
    takeHandover,
)
from lbtwist.workers._handover import (
    HELD_SIGNALS,
    InheritedSocket,
    InheritedWorker,
    codeFingerprint,
    masterChanges,
    passedSockets,
)
from lbtwist.workers._master import (
    EXEC_DELAY,
    PREFLIGHT_TIMEOUT,
    QUIESCE_TIMEOUT,
    REAP_INTERVAL,
    RETIRE_MARGIN,
    Bound,
    InheritedProcess,
    UpgradeFailed,
)
from lbtwist.workers._protocol import ApplyRegistry, Retire

from .test_workers_unit import CONFIG, ProcessReactor, _Services, process

FULL = Handover(
    generation=3,
    listeners=(InheritedSocket("front", "tcp:8080", 7, socket.AF_INET),
               InheritedSocket("back", "unix:/run/lb.sock", 8, socket.AF_UNIX)),
    admin=InheritedSocket("admin", "tcp:9000:interface=127.0.0.1", 9, socket.AF_INET),
    workers=(InheritedWorker(1, 3, 101, 10, {1: 11, 2: 12}, restarts=2),
             InheritedWorker(2, 2, 102, 13, {1: 14, 2: 15}, retiring=True)),
    reads=5,
    health={"web": {"a": "up", "b": "down"}, "api": {"c": "up"}},
    pid=4242,
)


class MasterChangesTests(SynchronousTestCase):
    """
    The master re-executes itself for its code and the settings it runs,
    and only for those.
    """

    def test_table(self) -> None:
        """
        Each case: what a reload could not apply, whether the code on disk
        changed, and the reasons to re-execute.
        """
        cases = [
            ([], False, []),
            ([], True, ["code"]),
            (["listeners", "maxconn", "the set of pools"], False, []),
            (["pools.web.timeouts.idle", "pools.web.sticky", "pools.web.http"], False, []),
            (["admin"], False, ["admin"]),
            (["status-interval", "state", "resolvers", "workers"], False,
             ["status-interval", "state", "resolvers", "workers"]),
            (["pools.web.discovery", "pools.api.protocol"], False,
             ["pools.web.discovery", "pools.api.protocol"]),
            (["listeners", "admin", "pools.web.timeouts.idle"], True, ["code", "admin"]),
            (["cluster"], False, ["cluster"]),
            (["master"], False, ["master"]),
            (["worker-watchdog"], False, ["worker-watchdog"]),
            # A pool named like a master key is still a pool setting.
            (["pools.admin.sticky"], False, []),
        ]
        for restartNeeded, code, expected in cases:
            self.assertEqual(masterChanges(restartNeeded, code), expected,
                             (restartNeeded, code))

    def test_fromReload(self) -> None:
        """
        What a reload of a changed file leaves for a restart decides: the
        master's settings (the cluster store's too) are named, the
        listeners' change is the new workers' to apply.
        """
        from lbtwist.diff import runnable

        running = parseConfig({**CONFIG, "workers": 2})
        new = parseConfig({**CONFIG, "workers": 2, "status-interval": 7,
                           "cluster": {"etcd": ["http://127.0.0.1:2379"]},
                           "worker-watchdog": "5s",
                           "listeners": [{"name": "front", "listen": "tcp:1"}]})
        kept, restartNeeded = runnable(new, running, poolsLive=True)
        self.assertEqual(masterChanges(restartNeeded, False),
                         ["status-interval", "worker-watchdog", "cluster"])
        self.assertEqual((kept.cluster, kept.statusInterval, kept.workerWatchdog),
                         (running.cluster, running.statusInterval, running.workerWatchdog))


class HandoverEncodingTests(SynchronousTestCase):
    """
    The hand-over survives its trip through the environment, and anything
    else in the variable is refused with a one-line reason.
    """

    def test_roundTrip(self) -> None:
        """
        What L{Handover.toJSON} writes, L{Handover.fromJSON} reads back
        equal, empty or full.
        """
        for handover in (Handover(1), FULL):
            self.assertEqual(Handover.fromJSON(handover.toJSON()), handover)

    def test_descriptors(self) -> None:
        """
        Every descriptor named (listeners, admin, control channels, output
        pipes) is listed to keep open across the exec.
        """
        self.assertEqual(sorted(FULL.descriptors()), list(range(7, 16)))

    def test_bad(self) -> None:
        """
        Each malformed value is refused naming the variable, on one line.
        """
        good = json.loads(FULL.toJSON())
        worker = good["workers"][0]
        socketOf = {"name": "front", "endpoint": "tcp:1", "fd": 3, "family": 2}
        cases = [
            "not json",
            "[]",
            "{}",
            json.dumps({**good, "generation": "3"}),
            json.dumps({**good, "generation": True}),
            json.dumps({**good, "listeners": [{**socketOf, "fd": -1}]}),
            json.dumps({**good, "listeners": [{**socketOf, "name": 5}]}),
            json.dumps({**good, "admin": {"name": "admin"}}),
            json.dumps({**good, "workers": [{**worker, "control": "4"}]}),
            json.dumps({**good, "workers": [{**worker, "output": {"x": 4}}]}),
            json.dumps({**good, "workers": [{**worker, "retiring": "yes"}]}),
            json.dumps({**good, "health": {"web": {"a": "unknown"}}}),
            json.dumps({**good, "health": ["web"]}),
            json.dumps({k: v for k, v in good.items() if k != "pid"}),
            json.dumps({**good, "pid": "4242"}),
        ]
        for text in cases:
            e = self.assertRaises(ValueError, Handover.fromJSON, text)
            self.assertIn(f"{HANDOVER_VARIABLE}: not a hand-over from a master", str(e))
            self.assertNotIn("\n", str(e))

    def test_take(self) -> None:
        """
        The new image takes the hand-over out of its environment (its
        workers never see it); without one, it starts as any master.
        """
        environ = {HANDOVER_VARIABLE: FULL.toJSON(), "HOME": "/root"}
        self.assertEqual(takeHandover(environ, 4242), FULL)
        self.assertEqual(environ, {"HOME": "/root"})
        self.assertIsNone(takeHandover(environ, 4242))

    def test_takeOtherProcess(self) -> None:
        """
        A hand-over written for another process (a stale variable, or one
        set by hand) is refused on one line naming the variable, and taken
        out of the environment: no descriptor is adopted.
        """
        environ = {HANDOVER_VARIABLE: FULL.toJSON()}
        e = self.assertRaises(ValueError, takeHandover, environ, 4243)
        self.assertEqual(str(e), f"{HANDOVER_VARIABLE}: a hand-over to the master of pid 4242, "
                                 "not to this process (pid 4243): only a master re-executing "
                                 "itself sets it; unset it")
        self.assertEqual(environ, {})
        environ = {HANDOVER_VARIABLE: Handover(1, pid=os.getpid()).toJSON()}
        self.assertEqual(takeHandover(environ), Handover(1, pid=os.getpid()))

    def test_socketsFor(self) -> None:
        """
        The listeners kept by name and endpoint are adopted; the sockets of
        the others are closed.
        """
        kept, gone = os.pipe()
        self.addCleanup(os.close, kept)
        handover = Handover(1, listeners=(InheritedSocket("front", "tcp:1", kept, 2),
                                          InheritedSocket("old", "tcp:2", gone, 2)))
        config = parseConfig({**CONFIG, "listeners": [
            {"name": "front", "listen": "tcp:1"}, {"name": "new", "listen": "tcp:3"}]})
        self.assertEqual(handover.socketsFor(config.listeners), {"front": (kept, 2)})
        self.assertRaises(OSError, os.fstat, gone)
        os.fstat(kept)


class PassedSocketsTests(SynchronousTestCase):
    """
    The sockets systemd passed are described again for a process that
    checks or adopts them.
    """

    def test_table(self) -> None:
        """
        Each case: the environment (Twisted removed C{LISTEN_FDS} and
        C{LISTEN_PID} once read), and the variables for the next process.
        """
        cases = [
            ({}, {}),
            ({"LISTEN_FDNAMES": ""}, {}),
            ({"LISTEN_FDNAMES": "front"}, {"LISTEN_FDS": "1", "LISTEN_FDNAMES": "front"}),
            ({"LISTEN_FDNAMES": "front:back:admin", "NOTIFY_SOCKET": "/run/n"},
             {"LISTEN_FDS": "3", "LISTEN_FDNAMES": "front:back:admin"}),
        ]
        for environ, expected in cases:
            self.assertEqual(passedSockets(environ), expected, environ)


class FingerprintTests(SynchronousTestCase):
    """
    The code's fingerprint changes when a source file does.
    """

    def test_changes(self) -> None:
        """
        A file touched or rewritten changes the fingerprint; compiled files
        and C{__pycache__} do not.
        """
        root = self.mktemp()
        os.makedirs(os.path.join(root, "pkg", "__pycache__"))
        module = os.path.join(root, "pkg", "mod.py")
        with open(module, "w") as f:
            f.write("x = 1\n")
        first = codeFingerprint(root)
        self.assertEqual(codeFingerprint(root), first)
        with open(os.path.join(root, "pkg", "__pycache__", "mod.cpython-311.pyc"), "wb") as f:
            f.write(b"compiled")
        with open(os.path.join(root, "pkg", "old.pyc"), "wb") as f:
            f.write(b"compiled")
        self.assertEqual(codeFingerprint(root), first)
        info = os.stat(module)
        os.utime(module, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000))
        touched = codeFingerprint(root)
        self.assertNotEqual(touched, first)
        with open(module, "a") as f:
            f.write("y = 2\n")
        self.assertNotIn(codeFingerprint(root), (first, touched))

    def test_default(self) -> None:
        """
        By default it is lbtwist's own code, the same twice.
        """
        self.assertEqual(codeFingerprint(), codeFingerprint())


class MasterImageTests(SynchronousTestCase):
    """
    The exec itself: what stays open across it, and the signals held
    until the new image handles them.
    """

    def setUp(self) -> None:
        self.mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        self.addCleanup(signal.pthread_sigmask, signal.SIG_SETMASK, self.mask)
        read, write = os.pipe()
        self.addCleanup(os.close, read)
        self.addCleanup(os.close, write)
        self.handover = Handover(1, workers=(InheritedWorker(1, 1, 5, write, {}),))
        self.image = MasterImage(sys.executable, (sys.executable, "-c", "pass"), ())
        self.seen: list[tuple[bool, set[int], dict[str, str]]] = []

    def execve(self, path: str, argv: list[str], environ: dict[str, str]) -> None:
        """
        Record what the exec would keep, and fail as a missing interpreter.
        """
        [worker] = self.handover.workers
        self.seen.append((os.get_inheritable(worker.control),
                          set(signal.pthread_sigmask(signal.SIG_BLOCK, [])), environ))
        raise FileNotFoundError(2, "No such file or directory")

    def test_execute(self) -> None:
        """
        At the exec, the hand-over's descriptors are inheritable, the
        signals a master handles are blocked (a mask survives an exec, so
        that one received before the new image handles it is not fatal),
        and the environment carries the hand-over; an exec that fails puts
        both back as they were.
        """
        self.assertRaises(OSError, self.image.execute, self.handover, {"HOME": "/"},
                          self.execve)
        [(inheritable, blocked, environ)] = self.seen
        self.assertTrue(inheritable)
        self.assertLessEqual(set(HELD_SIGNALS), blocked)
        self.assertEqual(Handover.fromJSON(environ[HANDOVER_VARIABLE]), self.handover)
        self.assertFalse(os.get_inheritable(self.handover.workers[0].control))
        self.assertEqual(signal.pthread_sigmask(signal.SIG_BLOCK, []), self.mask)

    def test_release(self) -> None:
        """
        The new image (or a worker it spawned) unblocks them on the
        reactor's first turn, once its handlers are installed.
        """
        signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        clock = Clock()
        releaseSignals(clock)
        self.assertLessEqual(set(HELD_SIGNALS), signal.pthread_sigmask(signal.SIG_BLOCK, []))
        clock.advance(0)
        self.assertEqual(set(HELD_SIGNALS) & signal.pthread_sigmask(signal.SIG_BLOCK, []),
                         set())


class FakeImage:
    """
    A master image that records its exec instead of making it (or fails
    it with C{error}).
    """

    def __init__(self) -> None:
        self.executed: list[Handover] = []
        self.error: OSError | None = None

    def checkCommand(self) -> list[str]:
        return MasterImage(sys.executable, (), ("--config", "lb.yaml")).checkCommand()

    def execute(self, handover: Handover, environ: Any) -> None:
        self.executed.append(handover)
        if self.error is not None:
            raise self.error


class RecordingStateFile:
    """
    A state file that records when it is saved.
    """

    def __init__(self, clock: Any, saved: list[float]) -> None:
        self.clock = clock
        self.saved = saved

    def save(self, overrides: Any) -> None:
        self.saved.append(self.clock.seconds())


class FakePort:
    """
    A listening port the master holds, as L{Bound} reads it.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.socket = socket.socket(socket.AF_INET, fileno=os.dup(fd))

    def fileno(self) -> int:
        return self.fd


class GroupCase(SynchronousTestCase):
    """
    A master's group of 2 workers, with a fake image, over a memory
    reactor, serving one listener.
    """

    def setUp(self) -> None:
        self.reactor = ProcessReactor()
        self.path = self.mktemp()
        self.write()
        self.text = ConfigText(self.path)
        config = self.text()
        pools, self.live = process(config)
        self.live.loadConfig = self.text
        self.code = "one"
        self.image = FakeImage()
        self.group = WorkerGroup(_Services(pools), self.live, self.reactor, count=2,
                                 command=["--config", "lb.yaml"], grace=3.0, text=self.text,
                                 image=self.image,  # type: ignore[arg-type]
                                 fingerprint=lambda: self.code)
        listener = socket.socket()
        self.addCleanup(listener.close)
        self.port = FakePort(listener.fileno())
        self.addCleanup(self.port.socket.close)
        self.group.bound[("front", "tcp:0")] = Bound(self.port, None)
        self.group.startService()
        self.addCleanup(self.group.stopService)

    def write(self, **top: Any) -> None:
        with open(self.path, "w") as f:
            yaml.safe_dump({**CONFIG, "workers": 2, **top}, f)

    def preflights(self) -> list[tuple[Any, list[str]]]:
        return [(p, args) for p, args, _ in self.reactor.spawned if "--worker" not in args]


class ReexecDecisionTests(GroupCase):
    """
    An upgrade re-executes the master when the master must change, after a
    pre-flight check; else it only starts new workers, as before.
    """

    def test_upgradeLeaves(self) -> None:
        """
        What a reload could not apply, an upgrade applies all of when the
        master can re-execute itself; embedded (no image), it leaves the
        master's own settings to a restart.
        """
        settings = ["listeners", "status-interval", "pools.web.timeouts.idle",
                    "pools.web.discovery"]
        self.assertEqual(self.group.upgradeLeaves(settings), [])
        self.group.image = None
        self.assertEqual(self.group.upgradeLeaves(settings),
                         ["status-interval", "pools.web.discovery"])

    def test_workersOnly(self) -> None:
        """
        Nothing the master runs changed: no pre-flight, no exec; a new
        generation of workers is spawned, as before.
        """
        d = self.group.upgrade()
        self.assertEqual(self.preflights(), [])
        self.assertEqual(len(self.reactor.spawned), 4)
        for slot in self.group.retiring[-2:]:
            self.group.workerReady(slot)
        self.assertEqual(self.successResultOf(d), Upgraded(2))
        self.assertEqual(self.image.executed, [])

    def reexecuted(self) -> Upgraded:
        """
        Let the pre-flight check pass and the workers' answers time out;
        the upgrade's result, once the exec is made.
        """
        result = self.answered()
        self.reactor.advance(EXEC_DELAY)
        return result

    def answered(self) -> Upgraded:
        """
        Let the pre-flight check pass and the workers' answers time out;
        the upgrade's result, the exec not made yet.
        """
        d = self.group.upgrade()
        [(check, args)] = self.preflights()
        self.assertEqual(list(args[-2:]), ["--config", "lb.yaml"])
        self.assertEqual(list(args[1:3]), ["-m", "lbtwist.check"])
        self.assertNoResult(d)
        check.processEnded(Failure(ProcessDone(0)))
        # The workers never answered their first registry: the master
        # waits for them, but not for ever.
        self.assertNoResult(d)
        self.reactor.advance(QUIESCE_TIMEOUT)
        result: Upgraded = self.successResultOf(d)
        self.assertEqual(self.image.executed, [])
        return result

    def test_execWindow(self) -> None:
        """
        Between the answer and the exec, the workers are asked nothing (no
        counters, no registry: their answers would reach the next image)
        and a worker that dies is not started again; the hand-over, taken
        at the exec, names only the workers running then (not one that
        exited, nor one reaped whose pipes are still open), and the state
        file is saved again then, with the changes answered meanwhile.
        """
        saved: list[float] = []
        self.live.stateFile = RecordingStateFile(self.reactor, saved)  # type: ignore[assignment]
        self.write(**{"status-interval": 7, "workers": 3})
        at = self.reactor.seconds()
        self.answered()
        [first, second] = self.group.slots
        protocol = next(p for p, _, _ in self.reactor.spawned if getattr(p, "slot", None) is second)
        protocol.processEnded(Failure(ProcessTerminated(signal=9)))
        spawned = len(self.reactor.spawned)
        transport = first.channel.transport  # type: ignore[union-attr]
        before = transport.value()  # type: ignore[attr-defined]
        self.group.refresh()
        self.group.settle()
        self.reactor.advance(EXEC_DELAY - 0.01)
        self.assertEqual(transport.value(), before)  # type: ignore[attr-defined]
        self.assertEqual(len(self.reactor.spawned), spawned)
        self.assertEqual(self.image.executed, [])
        self.reactor.advance(0.02)
        [handover] = self.image.executed
        self.assertEqual([w.index for w in handover.workers], [1])
        self.assertEqual(len(saved), 2)
        self.assertAlmostEqual(saved[0], at + QUIESCE_TIMEOUT)
        # The second save is the exec's, after the changes of the window.
        self.assertGreaterEqual(saved[1] - saved[0], EXEC_DELAY - 0.01)

    def test_upgradeDuringReexec(self) -> None:
        """
        An upgrade asked of the admin API while a re-exec is under way (its
        pre-flight running, or its answer given and the exec to come) is
        answered C{409}, saying so, and the re-exec goes on; the first one's
        answer is C{202}.
        """
        from twisted.web.test.requesthelper import DummyRequest

        from lbtwist.admin._api import AdminResource

        resource = AdminResource(self.group.balancer, self.live, "t", self.reactor,
                                 group=self.group)

        class Request(DummyRequest):
            """
            A request that reads its status code as twisted.web's does.
            """

            @property
            def code(self) -> int | None:
                return self.responseCode

        def post() -> DummyRequest:
            request = Request([b"api", b"upgrade"])
            request.method = b"POST"
            request.path = b"/api/upgrade"
            request.requestHeaders.setRawHeaders(b"authorization", [b"Bearer t"])
            resource.render(request)
            return request

        def answer(request: DummyRequest) -> tuple[int | None, Any]:
            return request.responseCode, json.loads(b"".join(request.written) or b"null")

        refused = (409, {"error": "an upgrade is already under way"})
        self.write(**{"status-interval": 7})
        first = post()
        self.assertEqual(answer(post()), refused)
        [(check, _)] = self.preflights()
        check.processEnded(Failure(ProcessDone(0)))
        self.reactor.advance(QUIESCE_TIMEOUT)
        self.assertEqual(answer(first)[0], 202)
        self.assertEqual(answer(post()), refused)
        self.reactor.advance(EXEC_DELAY)
        self.assertEqual(len(self.image.executed), 1)

    def test_reapedNotHanded(self) -> None:
        """
        A worker already reaped when the exec is made (its output not all
        read yet) is not handed over: its PID may name another process.
        """
        self.write(**{"status-interval": 7})
        self.answered()
        self.group.slots[0].process.pid = None
        self.reactor.advance(EXEC_DELAY)
        [handover] = self.image.executed
        self.assertEqual([w.index for w in handover.workers], [2])

    def test_channelClosedNotHanded(self) -> None:
        """
        A worker whose control channel closed before the exec (it is
        exiting, its process not reaped yet) is not handed over: that
        descriptor is closed, its number free for another; the exec is
        made with the others.
        """
        self.write(**{"status-interval": 7})
        self.answered()
        channel = self.group.slots[1].channel
        assert channel is not None
        channel.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(EXEC_DELAY)
        [handover] = self.image.executed
        self.assertEqual([w.index for w in handover.workers], [1])

    def test_handoverFails(self) -> None:
        """
        A hand-over that cannot be made at the exec (here, a listener's
        socket gone) leaves the master as it was, not half-way: no exec,
        another upgrade possible, the workers asked for counters again.
        """
        self.write(**{"status-interval": 7})
        self.answered()
        del self.group.bound["front", "tcp:0"]
        self.reactor.advance(EXEC_DELAY)
        self.assertEqual(self.image.executed, [])
        self.assertEqual((self.group.upgrading, self.group.executing), (None, False))
        self.assertTrue(self.group.refresher.running)
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 1)

    def test_execFailsRestarts(self) -> None:
        """
        When the exec fails, a worker that died in the meantime is started
        again, and the workers are pushed the registry again.
        """
        self.image.error = FileNotFoundError(2, "No such file or directory")
        self.write(**{"status-interval": 7})
        self.answered()
        slot = self.group.slots[1]
        protocol = next(p for p, _, _ in self.reactor.spawned if getattr(p, "slot", None) is slot)
        protocol.processEnded(Failure(ProcessTerminated(signal=9)))
        spawned = len(self.reactor.spawned)
        transport = self.group.slots[0].channel.transport  # type: ignore[union-attr]
        before = transport.value()  # type: ignore[attr-defined]
        self.reactor.advance(EXEC_DELAY)
        self.assertEqual(len(self.reactor.spawned), spawned + 1)
        self.assertFalse(slot.ended)
        self.assertIn(ApplyRegistry.commandName,
                      transport.value()[len(before):])  # type: ignore[attr-defined]

    def test_masterSetting(self) -> None:
        """
        A setting only the master runs changed: after the pre-flight, the
        upgrade says so and the master execs, handing over its listeners
        and every worker (control channel and output pipes).
        """
        self.write(**{"status-interval": 7, "workers": 3})
        self.live.pools["web"].setHealth("b", Health.DOWN, "probe failed")
        result = self.reexecuted()
        self.assertEqual(result, Upgraded(2, ("status-interval", "workers")))
        [handover] = self.image.executed
        self.assertEqual((handover.generation, handover.reads, handover.pid),
                         (1, 2, os.getpid()))
        self.assertEqual(handover.health, {"web": {"b": "down"}})
        self.assertEqual(handover.listeners,
                         (InheritedSocket("front", "tcp:0", self.port.fd, socket.AF_INET),))
        self.assertEqual([(w.index, w.generation, w.pid, dict(w.output), w.retiring)
                          for w in handover.workers],
                         [(1, 1, 1001, {1: 10011, 2: 10012}, False),
                          (2, 1, 1002, {1: 10021, 2: 10022}, False)])

    def test_execFails(self) -> None:
        """
        An exec that fails (the interpreter gone, say) leaves the master
        serving as it was: its workers asked for counters again, another
        upgrade possible.
        """
        self.image.error = FileNotFoundError(2, "No such file or directory")
        self.write(**{"status-interval": 7})
        self.reexecuted()
        self.assertEqual(len(self.image.executed), 1)
        self.assertIsNone(self.group.upgrading)
        self.assertTrue(self.group.refresher.running)
        self.assertEqual([s.generation for s in self.group.slots], [1, 1])
        # What failed is kept for ctl, which waits for generation 2, until
        # the next upgrade.
        self.assertEqual(self.group.execFailed, (
            2, "the master cannot re-execute itself ([Errno 2] No such file or directory)"))
        self.group.upgrade()
        self.assertIsNone(self.group.execFailed)

    def test_execFailedClearedByRoll(self) -> None:
        """
        What a failed exec left for ctl goes at the next upgrade, also when
        that one only starts new workers (the setting that needed the exec
        put back): the generation it promised may serve then, and the API
        must not say it failed.
        """
        self.image.error = FileNotFoundError(2, "No such file or directory")
        self.write(**{"status-interval": 7})
        self.reexecuted()
        self.assertIsNotNone(self.group.execFailed)
        self.write()
        self.group.upgrade()
        self.assertEqual(len(self.image.executed), 1)
        self.assertIsNotNone(self.group.upgrading)
        self.assertIsNone(self.group.execFailed)

    def test_code(self) -> None:
        """
        The code on disk changed: the master re-executes, even with the
        same file.
        """
        self.code = "two"
        self.assertEqual(self.reexecuted(), Upgraded(2, ("code",)))
        self.assertEqual(len(self.image.executed), 1)

    def test_preflightFails(self) -> None:
        """
        A new image that would not start: the upgrade fails with the
        check's last line, nothing is exec'd, the workers are the same.
        """
        self.write(workers=900)
        d = self.group.upgrade()
        [(check, _)] = self.preflights()
        check.errReceived(b"Traceback...\nlbtwist: invalid configuration: workers: 900 "
                          b"workers need about 3665 file descriptors\n")
        check.processEnded(Failure(ProcessTerminated(exitCode=1)))
        failure = self.failureResultOf(d, UpgradeFailed)
        self.assertEqual(failure.getErrorMessage(),
                         "the new master would not start: lbtwist: invalid configuration: "
                         "workers: 900 workers need about 3665 file descriptors")
        self.reactor.advance(60)
        self.assertEqual(self.image.executed, [])
        self.assertEqual([s.generation for s in self.group.slots], [1, 1])
        self.assertEqual(len(self.reactor.spawned), 3)
        self.assertTrue(self.group.refresher.running)
        self.assertIsNone(self.group.upgrading)

    def test_preflightHangs(self) -> None:
        """
        A check that does not finish within its time fails the upgrade,
        saying so, and is killed rather than left to run; its end, when it
        is reaped, changes nothing.
        """
        self.write(**{"status-interval": 7})
        d = self.group.upgrade()
        [(check, _)] = self.preflights()
        process = self.reactor.processes[
            [p for p, _, _ in self.reactor.spawned].index(check)]
        self.reactor.advance(PREFLIGHT_TIMEOUT - 1)
        self.assertEqual(process.signals, [])
        self.reactor.advance(1)
        failure = self.failureResultOf(d, UpgradeFailed)
        self.assertEqual(failure.getErrorMessage(),
                         "the new master's check did not finish within 30s")
        self.assertEqual(process.signals, ["KILL"])
        check.processEnded(Failure(ProcessTerminated(signal=9)))
        self.assertEqual(self.image.executed, [])
        self.assertIsNone(self.group.upgrading)

    def test_preflightCannotStart(self) -> None:
        """
        A check that cannot be spawned fails the upgrade, saying why; no
        upgrade is left under way, and the next one may start.
        """
        self.write(**{"status-interval": 7})

        def refuse(*args: Any, **kwargs: Any) -> Any:
            raise OSError(24, "Too many open files")

        spawn, self.reactor.spawnProcess = (  # type: ignore[method-assign]
            self.reactor.spawnProcess, refuse)
        failure = self.failureResultOf(self.group.upgrade(), UpgradeFailed)
        self.assertEqual(failure.getErrorMessage(), "the new master's check could not start: "
                                                    "[Errno 24] Too many open files")
        self.assertIsNone(self.group.upgrading)
        self.assertEqual(self.image.executed, [])
        self.reactor.spawnProcess = spawn  # type: ignore[method-assign]
        self.group.upgrade()
        self.assertEqual(len(self.preflights()), 1)

    def test_preflightKilled(self) -> None:
        """
        A check killed by a signal fails the upgrade, saying so with what it
        wrote.
        """
        self.write(**{"status-interval": 7})
        d = self.group.upgrade()
        [(check, _)] = self.preflights()
        check.errReceived(b"out of memory\n")
        check.processEnded(Failure(ProcessTerminated(signal=9)))
        failure = self.failureResultOf(d, UpgradeFailed)
        self.assertEqual(failure.getErrorMessage(),
                         "the new master's check was killed: out of memory")
        self.assertEqual(self.image.executed, [])

    def test_toOneWorker(self) -> None:
        """
        A master cannot re-execute itself into a single process: refused,
        naming C{workers}, before any check.
        """
        self.write(workers=1)
        failure = self.failureResultOf(self.group.upgrade(), UpgradeFailed)
        self.assertIn("workers: a master cannot become a single process", str(failure.value))
        self.assertEqual(self.preflights(), [])

    def test_withoutImage(self) -> None:
        """
        Embedded (no image to run again), a master setting changed is
        left for a restart: new workers only.
        """
        self.group.image = None
        self.write(**{"status-interval": 7})
        self.group.upgrade()
        self.assertEqual(self.preflights(), [])
        self.assertEqual(len(self.reactor.spawned), 4)


class AdoptionTests(SynchronousTestCase):
    """
    The new image takes on its previous image's workers: they serve until
    its own do, then retire, and are reaped when they exit.
    """

    def test_adopt(self) -> None:
        """
        Inherited workers are retiring ones of the old generation; once the
        new generation serves they are told to retire, and an exited one is
        reaped on the timer and forgotten.
        """
        reactor = ProcessReactor()
        child = subprocess.Popen(["true"])
        self.addCleanup(child.poll)
        older = subprocess.Popen(["sleep", "30"])
        self.addCleanup(older.wait)
        self.addCleanup(older.kill)
        controls = [socket.socketpair() for _ in range(2)]
        for _, theirs in controls:
            self.addCleanup(theirs.close)
        handover = Handover(4, reads=7, health={"web": {"b": "down"}, "gone": {"x": "up"}},
                            workers=(
            InheritedWorker(1, 4, child.pid, os.dup(controls[0][0].fileno()), {}),
            InheritedWorker(2, 3, older.pid, os.dup(controls[1][0].fileno()), {}, retiring=True)))
        for a, _ in controls:
            a.close()
        config = parseConfig(CONFIG)
        pools, live = process(config)
        path = self.mktemp()
        with open(path, "w") as f:
            yaml.safe_dump(CONFIG, f)
        text = ConfigText(path)
        group = WorkerGroup(_Services(pools), live, reactor, count=2, command=[], grace=3.0,
                            handover=handover, text=text)
        group.startService()
        self.assertEqual(group.generation, 5)
        # Its reading of the file counts on from the previous images', and
        # its health from what they found.
        self.assertEqual(text.reads, 8)
        self.assertEqual([(b.name, b.health) for b in pools["web"]],
                         [("a", Health.UNKNOWN), ("b", Health.DOWN)])
        self.assertEqual([(s.index, s.generation) for s in group.retiring], [(1, 4), (2, 3)])
        self.assertEqual([s.generation for s in group.slots], [5, 5])
        sent = [s.channel.transport for s in group.retiring]  # type: ignore[union-attr]
        reactor.advance(0)
        # The old workers run this image's registry until they retire.
        for transport in sent:
            self.assertIn(ApplyRegistry.commandName, transport.value())
        before = [t.value() for t in sent]
        for slot in group.slots:
            group.workerReady(slot)
        told = [t.value()[len(b):] for t, b in zip(sent, before)]
        self.assertIn(Retire.commandName, told[0])
        self.assertEqual(told[1], b"")
        child.wait()
        reactor.advance(REAP_INTERVAL)
        self.assertEqual([s.index for s in group.retiring], [2])
        self.assertEqual([s.index for s in group.inherited], [2])
        view = group.view()
        self.assertEqual([(w["generation"], w["state"]) for w in view],
                         [(5, "serving"), (5, "serving"), (3, "retiring")])
        # The worker the previous image had retired gets the grace from
        # the adoption, and SIGTERM once it outlives it.
        reactor.advance(3.0 + RETIRE_MARGIN - REAP_INTERVAL)
        self.assertEqual(older.wait(10), -15)
        reactor.advance(REAP_INTERVAL)
        self.assertEqual(group.retiring, [])


class InheritedProcessTests(SynchronousTestCase):
    """
    An inherited worker's output pipes, inheritable for the exec, are
    read by the new image and inherited by none of its children.
    """

    def test_pipesNotInheritable(self) -> None:
        """
        Adopting a worker's output pipes makes them close-on-exec again.
        """
        read, write = os.pipe()
        self.addCleanup(os.close, write)
        os.set_inheritable(read, True)
        child = InheritedProcess(ProcessReactor(), 1, ProcessProtocol(), {1: read})
        self.addCleanup(os.close, read)
        self.assertFalse(os.get_inheritable(read))
        self.assertEqual(list(child.pipes), [1])


class RetireTests(GroupCase):
    """
    The old generation, once told to retire, is left to finish within the
    grace: one that exits in time is logged as having finished, and only
    one that outlives the grace is sent C{SIGTERM}.
    """

    def setUp(self) -> None:
        super().setUp()
        self.events: list[dict[str, Any]] = []
        self.group.log = Logger(observer=self.events.append)  # type: ignore[misc]
        self.old = list(self.group.slots)
        d = self.group.upgrade()
        for slot in self.group.retiring[-2:]:
            self.group.workerReady(slot)
        self.successResultOf(d)
        for slot in self.old:
            assert slot.channel is not None and slot.channel.transport is not None
            self.assertIn(Retire.commandName, slot.channel.transport.value())  # type: ignore[attr-defined]

    def exited(self, slot: Any, reason: Exception) -> None:
        """
        The worker of C{slot} exits: its channel closes (the answer to
        C{Retire} lost with it), then its process ends.
        """
        slot.channel.connectionLost(Failure(ConnectionDone()))
        protocol = next(p for p, _, _ in self.reactor.spawned if getattr(p, "slot", None) is slot)
        protocol.processEnded(Failure(reason))

    def lines(self) -> list[str]:
        return [formatEvent(e) for e in self.events if "exited" in e["log_format"]]

    def test_finishedInGrace(self) -> None:
        """
        A retired worker that exits within the grace, its channel closing
        before its answer came, is never signalled and is logged as having
        finished its in-flight work.
        """
        for slot in self.old:
            self.exited(slot, ProcessDone(0))
        self.reactor.advance(3.0 + RETIRE_MARGIN + 1)
        self.assertEqual([s.process.signals for s in self.old], [[], []])
        self.assertEqual(self.lines(), [
            "worker 1 of generation 1 (pid 1001) exited: finished its in-flight work",
            "worker 2 of generation 1 (pid 1002) exited: finished its in-flight work"])
        self.assertEqual(self.group.retiring, [])

    def test_outlivesGrace(self) -> None:
        """
        A retired worker still running past the grace (and the margin) is
        sent C{SIGTERM} then, and its end is logged as such; not before.
        """
        slot = self.old[0]
        self.reactor.advance(3.0 + RETIRE_MARGIN - 0.01)
        self.assertEqual(slot.process.signals, [])
        self.reactor.advance(0.01)
        self.assertEqual(slot.process.signals, [15])
        self.exited(slot, ProcessTerminated(signal=15))
        self.assertEqual(self.lines(), [
            "worker 1 of generation 1 (pid 1001) exited: stopped after outliving the grace "
            "(killed by signal 15)"])

    def test_stopWhileRetiring(self) -> None:
        """
        Stopping the master while workers retire sends each one C{SIGTERM}
        once: not again when its grace as a retired worker ends.
        """
        self.group.stopService()
        self.reactor.advance(3.0 + RETIRE_MARGIN)
        self.assertEqual([s.process.signals for s in self.old], [[15], [15]])

    def test_exitCode(self) -> None:
        """
        A retired worker that fails is logged with its exit code, not the
        raw wait status.
        """
        slot = self.old[1]
        self.exited(slot, ProcessTerminated(exitCode=1, status=256))
        self.assertEqual(self.lines(), [
            "worker 2 of generation 1 (pid 1002) exited: exit status 1"])
