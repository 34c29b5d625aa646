"""
The master's side: the group of worker processes it supervises, and what it
tells them.

The master binds every listener (its own balancer's listeners, which never
accept: their ports stop reading as the group starts) and spawns the
workers with those sockets as inherited file descriptors.  It keeps the
control plane: the admin API, the state file, reloads, the health checks
(one probe per backend for the whole group) and DNS discovery.  Every
change to the pools is pushed to every worker as a whole registry (see
L{lbtwist.workers._registry}); the admin API answers a change once every
worker has applied it.  Counters are the workers' added up.

A worker that exits is started again after a back-off that grows while
workers keep dying young (0.1 s, then x4 up to 30 s).  One that is alive
but wedged (no heartbeat within C{worker-watchdog}) is killed first (see
L{lbtwist.workers._watchdog}).
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredList, FirstError, fail, succeed
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ProcessDone,
    ProcessExitedAlready,
    ProcessTerminated,
)
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ..endpoints import addressesOverlap, hostPort, listenAddress
from ..lifecycle import sdNotify
from ..pool import Health, PoolEvent
from ..reload import LiveConfig
from ..wording import counted
from ._handover import (
    Handover,
    InheritedSocket,
    InheritedWorker,
    MasterImage,
    codeFingerprint,
    masterChanges,
    passedSockets,
)
from ._protocol import (
    ApplyRegistry,
    Channel,
    CollectStats,
    GivenProtocol,
    Heartbeat,
    PauseListeners,
    Ready,
    ReopenLogs,
    ReportHealth,
    ResumeListeners,
    Retire,
)
from ._registry import ConfigText, snapshot
from ._stats import SEP, CounterMirror, addUp, withoutGauges
from ._watchdog import Watchdog, beatInterval
from ._worker import WorkerSpec

# The command that runs twistd in a worker, with the master's interpreter.
TWISTD = ("-c", "from twisted.scripts.twistd import run; run()")
FIRST_DELAY = 0.1
MAX_DELAY = 30.0
# A worker that lived this long before exiting died of something else than
# a start-up problem: its successor starts at once.
SETTLED = 10.0
ANSWER_TIMEOUT = 5.0
REFRESH = 2.0
UPGRADE_TIMEOUT = 30.0
# A re-exec: the pre-flight check's time, the wait for the workers'
# answers, and the delay that lets the API's answer go out before the exec.
PREFLIGHT_TIMEOUT = 30.0
QUIESCE_TIMEOUT = 2.0
QUIESCE_POLL = 0.02
EXEC_DELAY = 0.2
REAP_INTERVAL = 0.2
# Seconds past the grace a retired worker has to exit by itself before the
# master stops it with SIGTERM (its own deadline is the grace).
RETIRE_MARGIN = 1.0
# Bytes a worker's output pipe holds while no image of the master reads it.
PIPE_SIZE = 1 << 20
SYSTEMD_VARIABLES = frozenset({"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES", "NOTIFY_SOCKET"})
# The last lines of a worker's output kept to say why it could not start.
KEPT_LINES = 5
# File descriptors the master and a worker hold for each worker (the
# control channel, two output pipes) and, over that, for the process itself.
FDS_PER_WORKER = 4
FDS_BASE = 64


def checkFileLimit(workers: int, listeners: int, limit: int) -> str | None:
    """
    Why C{workers} workers cannot run under a file-descriptor limit of
    C{limit} with C{listeners} listeners, or L{None} if they can.
    """
    needed = FDS_BASE + listeners + workers * FDS_PER_WORKER
    if needed > limit:
        return (f"{workers} workers need about {needed} file descriptors in the master, "
                f"over its limit of {limit} (ulimit -n)")
    return None


def backoff(failures: int) -> float:
    """
    Seconds before a worker's successor starts, after C{failures} workers
    in a row died young.
    """
    return float(min(MAX_DELAY, FIRST_DELAY * 4 ** failures))


class MasterChannel(Channel):
    """
    The master's end of one worker's control channel.

    @ivar pending: questions sent and not answered yet (a master about to
        re-execute itself waits for none, so that no answer comes to an
        image that did not ask).
    """

    def __init__(self, group: WorkerGroup, slot: WorkerSlot) -> None:
        super().__init__()
        self.group = group
        self.slot = slot
        self.pending = 0

    def callRemote(self, commandType: Any, *a: Any, **kw: Any) -> Any:
        """
        Ask the worker, counting the question until it is answered.
        """
        self.pending += 1

        def answered(result: Any) -> Any:
            self.pending -= 1
            return result

        answer: Deferred[Any] = super().callRemote(commandType, *a, **kw)
        return answer.addBoth(answered)

    @Ready.responder
    def ready(self, pid: int) -> dict[str, Any]:
        """
        The worker serves.
        """
        self.group.workerReady(self.slot)
        return {}

    @Heartbeat.responder
    def heartbeat(self) -> dict[str, Any]:
        """
        The worker's reactor runs.
        """
        self.group.heartbeat(self.slot, self)
        return {}

    @ReportHealth.responder
    def reportHealth(self, pool: str, backend: str, reason: str) -> dict[str, Any]:
        """
        The worker's passive health marked a backend down.
        """
        self.group.passiveDown(self.slot, pool, backend, reason)
        return {}


class CheckProcess(ProcessProtocol):
    """
    The pre-flight check of an upgrade (C{python -m lbtwist.check}): what
    it writes, and how it ended, given to C{ended} once it is reaped
    (unless C{ended} fired before: the check timed out and was killed).

    @ivar ended: fires with C{(out, err, exitCode, signal)}.
    """

    ended: Deferred[tuple[bytes, bytes, int | None, int | None]] | None = None

    def __init__(self) -> None:
        self._out: list[bytes] = []
        self._err: list[bytes] = []

    def outReceived(self, data: bytes) -> None:
        self._out.append(data)

    def errReceived(self, data: bytes) -> None:
        self._err.append(data)

    def processEnded(self, reason: Failure) -> None:
        ended = self.ended
        if ended is not None and not ended.called:
            why: Any = reason.value
            ended.callback((b"".join(self._out), b"".join(self._err), why.exitCode, why.signal))


class WorkerProcess(ProcessProtocol):
    """
    One worker process as the master sees it: its output, logged again
    with its number, and its end.
    """

    log = Logger()

    def __init__(self, group: WorkerGroup, slot: WorkerSlot) -> None:
        self.group = group
        self.slot = slot
        self._partial = b""

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """
        Log each whole line the worker wrote, naming the worker.
        """
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)

    def _line(self, raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip()
        if not text:
            return
        self.slot.lastLines = [*self.slot.lastLines[-(KEPT_LINES - 1):], text]
        # (The generation tells an old worker finishing its clients from
        # its successor of the same number.)
        self.log.info("worker {index} gen {generation}: {line}", index=self.slot.index,
                      line=text, worker=self.slot.index, generation=self.slot.generation)

    def processEnded(self, reason: Failure) -> None:
        """
        The worker exited.
        """
        if self._partial:
            self._line(self._partial)
            self._partial = b""
        self.group.workerEnded(self.slot, reason)


class InheritedProcess:
    """
    A worker process the previous image of this master spawned (see
    L{lbtwist.workers._handover}): still this process's child, but Twisted
    did not spawn it in this image, so its output pipes are read here and
    it is reaped by L{reap}, called on a timer.  It ends as a spawned one
    does: L{ProcessProtocol.processEnded} once it exited and its pipes are
    closed.

    @ivar pipes: the readers of its output, by its file descriptor number.
    """

    def __init__(self, reactor: Any, pid: int, protocol: ProcessProtocol,
                 output: Mapping[int, int]) -> None:
        from twisted.internet.process import ProcessReader

        self.pid: int | None = pid
        self.proto = protocol
        self.status: int | None = None
        self.ended = False
        for fd in output.values():
            # Inheritable for the exec only: kept from any later child.
            os.set_inheritable(fd, False)
        self.pipes = {number: ProcessReader(reactor, self, number, fd)
                      for number, fd in output.items()}

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """
        The worker wrote C{data} on its descriptor C{childFD}.
        """
        self.proto.childDataReceived(childFD, data)

    def childConnectionLost(self, childFD: int, reason: Failure) -> None:
        """
        The worker's end of a pipe closed.
        """
        os.close(self.pipes.pop(childFD).fileno())
        self._maybeEnded()

    def signalProcess(self, signum: int) -> None:
        """
        Send the worker C{signum}.

        @raise ProcessExitedAlready: it was reaped.
        """
        if self.pid is None:
            raise ProcessExitedAlready()
        os.kill(self.pid, signum)

    def reap(self) -> bool:
        """
        Collect the worker's exit status if it exited (without waiting).

        @return: whether it has been reaped.
        """
        if self.pid is not None:
            try:
                found, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                found, status = self.pid, 0
            if found == 0:
                return False
            self.status = status
            # As Twisted's processes: a reaped PID is no longer this one's.
            self.pid = None
            self._maybeEnded()
        return True

    def _maybeEnded(self) -> None:
        if self.status is None or self.pipes or self.ended:
            return
        self.ended = True
        status = self.status
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            reason = Failure(ProcessDone(status))
        else:
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            reason = Failure(ProcessTerminated(code, sig, status))
        self.proto.processEnded(reason)


class WorkerSlot:
    """
    One worker process of a generation, as the master tracks it.

    @ivar index: its number in the group (1, 2...).
    @ivar generation: the generation it belongs to.
    @ivar ready: whether it said it serves.
    @ivar stats: its counters, as last collected.
    @ivar restarts: how many times a worker of this number was restarted.
    @ivar failures: its predecessors that died in a row, each within
        L{SETTLED} seconds of the one before (the first one whatever its
        age).
    @ivar outlived: it was retired and still ran L{RETIRE_MARGIN} seconds
        past the grace, so the master sent it C{SIGTERM}.
    @ivar wedged: its process sent no heartbeat within the watchdog's
        limit, so the master killed it.
    @ivar sent: the revision of the last registry sent to it.
    @ivar applied: the revision of the last registry it applied.
    """

    def __init__(self, index: int, generation: int) -> None:
        self.index = index
        self.generation = generation
        self.process: Any = None
        self.channel: MasterChannel | None = None
        self.pid: int | None = None
        self.ready = False
        self.ended = False
        self.started = 0.0
        self.stats: dict[str, float] = {}
        self.restarts = 0
        self.failures = 0
        self.lastLines: list[str] = []
        # Once told to retire: the timer that stops it if it outlives the
        # grace, and whether it had to be stopped.
        self.retireTimer: Any = None
        self.outlived = False
        self.wedged = False
        self.sent = 0
        self.applied = 0
        self._readyWaiters: list[Deferred[WorkerSlot]] = []
        self.whenEnded: Deferred[None] = Deferred()


def whenReady(slot: WorkerSlot) -> Deferred[WorkerSlot]:
    """
    Fires with C{slot} once its worker serves, or fails with
    L{WorkerFailed} (saying why, from its last line of output) if it
    exits first.
    """
    if slot.ready:
        return succeed(slot)
    waiter: Deferred[WorkerSlot] = Deferred()
    slot._readyWaiters.append(waiter)
    return waiter


class WorkerGroup(Service):
    """
    Runs C{count} workers on the master's listening sockets and keeps them
    in step with the master's pools.

    @ivar slots: the workers of the current generation.
    @ivar retiring: workers of older generations finishing their work.
    @ivar revision: the number of the last registry pushed.
    @ivar mirror: shows the workers' counters in the master's objects.
    """

    log = Logger()

    def __init__(
        self,
        balancer: Any,
        live: LiveConfig,
        reactor: Any,
        *,
        count: int,
        command: Sequence[str],
        grace: float,
        text: ConfigText | None = None,
        environ: dict[str, str] | None = None,
        now: Callable[[], float] = time.monotonic,
        image: MasterImage | None = None,
        handover: Handover | None = None,
        admin: Callable[[], Any] | None = None,
        fingerprint: Callable[[], str] = codeFingerprint,
        watchdog: float = 0.0,
    ) -> None:
        """
        @param balancer: the master's L{lbtwist.service.LoadBalancer}, bound
            but not accepting.
        @param live: the master's run-time control of the pools.
        @param count: how many workers.
        @param command: the options of C{twistd lb} the master runs with,
            given to each worker (with C{--worker SPEC} after them).
        @param grace: seconds a stopping worker's in-flight work gets.
        @param text: the configuration file as the master read it.
        @param image: how this master runs its own image again, to apply
            an upgrade new workers cannot apply alone (see
            L{lbtwist.workers._handover}); without one, those settings
            need a restart.
        @param handover: what the previous image of this master handed
            over, when it re-executed itself: its workers serve on until
            this image's do.
        @param admin: gives the admin API's service (its endpoint and
            port), which a re-exec hands over.
        @param fingerprint: gives a fingerprint of the code on disk (taken
            now, and again at each upgrade: a change means a re-exec).
        @param watchdog: seconds a worker may send no heartbeat before it is
            killed as wedged (and replaced, if of the serving generation);
            0: never.
        """
        self.balancer = balancer
        self.live = live
        self.reactor = reactor
        self.count = count
        self.command = list(command)
        self.grace = grace
        self.text = text
        # Socket activation and readiness are the master's business.
        source = os.environ if environ is None else environ
        self.environ = {k: v for k, v in source.items() if k not in SYSTEMD_VARIABLES}
        # But a pre-flight check reads the names of the sockets systemd
        # passed, as the master's start did.
        self.passed = passedSockets(source)
        self._servingWaiters: list[Deferred[None]] = []
        self.now = now
        self.generation = 0
        self.slots: list[WorkerSlot] = []
        self.retiring: list[WorkerSlot] = []
        self.revision = 0
        self.retired: dict[str, float] = {}
        self.sockets: dict[str, tuple[int, int]] = {}
        # Every listening socket the master holds, by listener name and
        # endpoint: an upgrade binds new ones beside them.
        self.bound: dict[tuple[str, str], Bound] = {}
        self.upgrading: Deferred[Upgraded] | None = None
        # Between a re-exec's answer and the exec: the workers are asked
        # nothing (no answer may reach the next image, which did not ask)
        # and none is started (the hand-over, taken at the exec, names
        # every worker there is).
        self.executing = False
        # The last re-exec that was answered but not made: the generation
        # it promised and why (C{lbtwist ctl upgrade} reads it at once
        # rather than wait for that generation).
        self.execFailed: tuple[int, str] | None = None
        self.mirror = CounterMirror(balancer.pools, balancer.factories)
        self._pushing: Any = None
        # The status table and the dashboard's history read the master's
        # counters on their own timers: keep them near the workers' totals.
        self.refresher = LoopingCall(self.refresh)
        self.refresher.clock = reactor
        self.image = image
        self.handover = handover
        if handover is not None and text is not None:
            text.reads = handover.reads
        self.admin = admin
        self.fingerprint = fingerprint
        self.code = fingerprint()
        # The workers the previous image ran, reaped on a timer.
        self.inherited: list[WorkerSlot] = []
        self._nextAdmin: Any = None
        self.reaper = LoopingCall(self._reap)
        self.reaper.clock = reactor
        self.watchdog: Watchdog[WorkerSlot] = Watchdog(watchdog, now)
        self.watching = LoopingCall(self._watch)
        self.watching.clock = reactor
        self.setName("workers")

    # -- life ------------------------------------------------------------

    def startService(self) -> None:
        """
        Stop the master's own ports from accepting, and start the workers.
        """
        super().startService()
        self.sockets = self._listeningSockets()
        if self.text is not None and self.text.text is None:
            self.text()
        self._observePools()
        self.live.reloaded = [*self.live.reloaded, lambda config: self.schedulePush()]
        # A change from anywhere else (the cluster registry's revisions)
        # reaches the workers too.
        self.live.reconciled.append(self.schedulePush)
        self.refresher.start(REFRESH, now=False)
        if self.watchdog.limit:
            self.watchdog.start()
            self.watching.start(beatInterval(self.watchdog.limit), now=False)
        self.generation = 1
        if self.handover is not None:
            self._adoptWorkers(self.handover)
        self.slots = [self._spawn(WorkerSlot(i, self.generation)) for i in range(1, self.count + 1)]
        self.log.info("master (pid {pid}) starting {workers} of generation {generation}",
                      pid=os.getpid(), count=self.count, workers=counted(self.count, "worker"),
                      generation=self.generation)
        if self.inherited:
            # The previous image's workers run what it ran before the
            # upgrade's reload: until they retire, they run what this one
            # runs.
            self.schedulePush()

    def _adoptWorkers(self, handover: Handover) -> None:
        """
        Take on the workers the previous image of this master ran: they
        serve on (as retiring ones, reaped on a timer) until this image's
        first generation serves, then retire.
        """
        self.generation = handover.generation + 1
        for pool, found in handover.health.items():
            live = self.live.pools.get(pool)
            for name, health in found.items():
                if live is not None:
                    live.setHealth(name, Health(health), "as found before the master re-executed")
        serving: list[WorkerSlot] = []
        for worker in handover.workers:
            slot = WorkerSlot(worker.index, worker.generation)
            slot.pid, slot.restarts, slot.started = worker.pid, worker.restarts, self.now()
            slot.ready = True
            slot.channel = MasterChannel(self, slot)
            self.reactor.adoptStreamConnection(worker.control, socket.AF_UNIX,
                                               GivenProtocol(slot.channel))
            os.close(worker.control)
            slot.process = InheritedProcess(self.reactor, worker.pid, WorkerProcess(self, slot),
                                            worker.output)
            self.retiring.append(slot)
            self.inherited.append(slot)
            if worker.retiring:
                # Told to retire by the previous image: its grace runs here.
                self._armRetire(slot)
            else:
                serving.append(slot)
        if self.inherited:
            self.reaper.start(REAP_INTERVAL, now=False)
        self.log.info(
            "master (pid {pid}) re-executed: {workers} of generation {old} serve until "
            "generation {generation} does", pid=os.getpid(), count=len(serving),
            workers=counted(len(serving), "worker"),
            old=handover.generation, generation=self.generation)

        def retire(_: object) -> None:
            self._retire(serving)
            self.log.info(
                "generation {generation} serves; the previous image's workers finish their "
                "in-flight work within {grace}s", generation=self.generation, grace=self.grace)

        self.whenServing().addCallback(retire)

    def _reap(self) -> None:
        """
        Reap the inherited workers that exited.
        """
        self.inherited = [s for s in self.inherited if not s.process.reap()]
        if not self.inherited and self.reaper.running:
            self.reaper.stop()

    def _retire(self, slots: Sequence[WorkerSlot]) -> None:
        """
        Tell C{slots} to stop accepting and finish their work within the
        grace.  One that still runs L{RETIRE_MARGIN} seconds past it is
        stopped with C{SIGTERM}; one that cannot be told, at once.
        """
        for slot in slots:
            if slot.ended or slot.channel is None:
                continue
            self._armRetire(slot)
            slot.channel.callRemote(Retire, grace=self.grace).addErrback(
                self._retireFailed, slot)

    def _armRetire(self, slot: WorkerSlot) -> None:
        """
        Stop C{slot}, told to retire, if it outlives the grace.
        """
        if slot.retireTimer is None:
            slot.retireTimer = self.reactor.callLater(
                self.grace + RETIRE_MARGIN, self._outlived, slot)

    def _outlived(self, slot: WorkerSlot) -> None:
        slot.retireTimer = None
        if slot.ended:
            return
        slot.outlived = True
        self.log.warn(  # noqa: G010
            "worker {index} of generation {generation} (pid {pid}) still running "
            "{grace}s after it was retired: stopping it (SIGTERM)", index=slot.index,
            generation=slot.generation, pid=slot.pid, grace=self.grace + RETIRE_MARGIN)
        self._signal(slot, signal.SIGTERM)

    def _retireFailed(self, reason: Failure, slot: WorkerSlot) -> None:
        """
        The worker did not answer C{Retire}.  A retiring worker with
        nothing left to serve exits at once, closing its channel before
        its answer is out: it is finishing, and the grace's timer stops it
        if it does not.  Any other failure: it cannot be told, so stop it.
        """
        if reason.check(ConnectionDone, ConnectionLost):
            return
        self.log.warn(  # noqa: G010
            "worker {index} (pid {pid}) could not be told to retire ({error}): stopping "
            "it (SIGTERM)", index=slot.index, pid=slot.pid, error=reason.getErrorMessage())
        self._signal(slot, signal.SIGTERM)

    def _listeningSockets(self) -> dict[str, tuple[int, int]]:
        """
        The listeners' sockets, by listener name, with their address family;
        the master's own ports stop accepting.
        """
        from ..service import ListenerService

        for service in self.balancer:
            if isinstance(service, ListenerService) and service.port is not None:
                service.port.stopReading()
                key = (service.listener.name, service.listener.endpoint)
                self.bound[key] = Bound(service.port, service)
        return {name: self.bound[name, endpoint].socket for name, endpoint in self.bound}

    def _bind(self, listeners: Sequence[Any], moving: list[Move] | None = None,
              reexec: bool = False) -> list[tuple[str, str]]:
        """
        Bind the listeners of C{listeners} not bound yet (a new name, or a
        new endpoint for a name), as the master binds at start, never to
        accept.

        One whose address a socket of a listener C{listeners} drops already
        binds (renamed, or its endpoint written another way) takes that
        socket: nothing is bound or closed, nothing waits.  With C{moving},
        one that cannot listen because such a socket binds an overlapping
        address (the same port, and a wildcard) is put there for L{_move};
        for a C{reexec}, which cannot make such a move, the error says so.

        @return: the keys of those bound (or given a socket) now.
        @raise UpgradeFailed: one cannot listen (those bound now are closed).
        """
        from twisted.internet.error import CannotListenError

        from ..service import cannotListen, withBacklog

        keep = {(x.name, x.endpoint) for x in listeners}
        added: list[tuple[str, str]] = []
        for listener in listeners:
            key = (listener.name, listener.endpoint)
            if key in self.bound:
                continue
            address = listenAddress(listener.endpoint)
            leaving = {k: listenAddress(k[1]) for k in self.bound
                       if k not in keep and not any(self.bound[k] is self.bound[a] for a in added)}
            same = [k for k, at in leaving.items() if address is not None and at == address]
            if same:
                self.bound[key] = self.bound[same[0]]
                added.append(key)
                continue
            port, error = _holdSocket(self.reactor, withBacklog(listener.endpoint))
            blocking = tuple(k for k, at in leaving.items()
                             if address is not None and at is not None
                             and addressesOverlap(address, at))
            if (port is None and moving is not None and blocking
                    and isinstance(error, CannotListenError)
                    and getattr(error.socketError, "errno", None) == errno.EADDRINUSE):
                moving.append(Move(listener, blocking))
                continue
            if port is None:
                for fresh in added:
                    if sum(b is self.bound[fresh] for b in self.bound.values()) == 1:
                        # At once (a close takes a turn of the reactor): an
                        # overlapping socket may have to listen again.
                        self.bound[fresh].pause()
                self._close(added)
                if blocking and reexec:
                    why = (f"listener {listener.name} cannot listen on {listener.endpoint} while "
                           f"{blocking[0][1]} (listener {blocking[0][0]}), an address that "
                           f"overlaps it on the same port, listens: an upgrade that re-executes "
                           f"the master cannot move it; move it in an upgrade of its own")
                elif isinstance(error, CannotListenError):
                    why = str(cannotListen(f"listener {listener.name}", listener.endpoint,
                                           error).code)
                else:
                    why = f"listener {listener.name} cannot listen on {listener.endpoint}: {error}"
                raise UpgradeFailed(why)
            self.bound[key] = Bound(port, None)
            added.append(key)
        return added

    def _close(self, keys: Sequence[tuple[str, str]]) -> None:
        """
        Close the master's listening sockets of C{keys} (but one another
        listener took, see L{_bind}).
        """
        for key in keys:
            bound = self.bound.pop(key, None)
            if bound is None or any(other is bound for other in self.bound.values()):
                continue
            if bound.service is not None:
                bound.service.disownServiceParent()
            else:
                bound.port.stopListening()

    def stopService(self) -> Deferred[None]:
        """
        Stop every worker (each finishes its in-flight work within the
        grace), and wait for them to exit.
        """
        super().stopService()
        if self.refresher.running:
            self.refresher.stop()
        if self.watching.running:
            # Stopping workers drain for the grace, and are killed after it.
            self.watching.stop()
        slots = [s for s in [*self.slots, *self.retiring] if not s.ended]
        for slot in slots:
            if slot.retireTimer is not None:
                # Stopped now: not again when its grace as a retired one ends.
                slot.retireTimer.cancel()
                slot.retireTimer = None
            self._signal(slot, signal.SIGTERM)
        if not slots:
            self._forgetGauges()
            return succeed(None)
        done: Deferred[None] = Deferred()
        killer = self.reactor.callLater(self.grace + 5.0, self._killAll, slots)

        def ended(_: object) -> None:
            if killer.active():
                killer.cancel()
            self._forgetGauges()
            done.callback(None)

        DeferredList([s.whenEnded for s in slots]).addCallback(ended)
        return done

    def _killAll(self, slots: list[WorkerSlot]) -> None:
        for slot in slots:
            if not slot.ended:
                self.log.warn("worker {index} (pid {pid}) still running after the grace: killed",  # noqa: G010
                              index=slot.index, pid=slot.pid)
                self._signal(slot, signal.SIGKILL)

    def _forgetGauges(self) -> None:
        """
        Every worker has exited: nothing is open any more.
        """
        self.mirror.show(self.retired)

    def _signal(self, slot: WorkerSlot, signum: int) -> None:
        try:
            slot.process.signalProcess(signum)
        except Exception:  # noqa: S110 (it has exited already)
            pass

    # -- spawning and supervising ------------------------------------------

    def _spawn(self, slot: WorkerSlot,
               sockets: dict[str, tuple[int, int]] | None = None) -> WorkerSlot:
        """
        Start the worker process of C{slot}, with the listening sockets (by
        default those of the generation serving) and its end of a new
        control channel.
        """
        masterEnd, workerEnd = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        childFDs: dict[int, Any] = {1: "r", 2: "r", 3: workerEnd.fileno()}
        listeners: dict[str, tuple[int, int]] = {}
        given = self.sockets if sockets is None else sockets
        for number, (name, (fd, family)) in enumerate(sorted(given.items()), 4):
            childFDs[number] = fd
            listeners[name] = (number, family)
        limit = self.watchdog.limit
        spec = WorkerSpec(control=3, listeners=listeners, index=slot.index,
                          generation=slot.generation, workers=self.count,
                          heartbeat=beatInterval(limit) if limit else 0.0)
        argv = [sys.executable, *TWISTD, "--nodaemon", "--pidfile=",
                "--logger=lbtwist.workers.workerLog", "lb", *self.command,
                "--worker", spec.toJSON()]
        slot.ended = False
        slot.ready = False
        slot.wedged = False
        self.watchdog.forget(slot)
        slot.started = self.now()
        slot.whenEnded = Deferred()
        try:
            slot.process = self.reactor.spawnProcess(
                WorkerProcess(self, slot), sys.executable, argv, env=self.environ,
                path=os.getcwd(), childFDs=childFDs)
        finally:
            workerEnd.close()
        slot.pid = slot.process.pid
        slot.channel = MasterChannel(self, slot)
        self.reactor.adoptStreamConnection(masterEnd.fileno(), socket.AF_UNIX,
                                           GivenProtocol(slot.channel))
        masterEnd.close()
        self.log.info("worker {index} (generation {generation}) started: pid {pid}",
                      index=slot.index, generation=slot.generation, pid=slot.pid)
        self._send(slot, snapshot(self.live, self.text))
        return slot

    def workerReady(self, slot: WorkerSlot) -> None:
        """
        A worker serves.
        """
        slot.ready = True
        waiters, slot._readyWaiters = slot._readyWaiters, []
        for waiter in waiters:
            waiter.callback(slot)
        if self.slots and all(s.ready for s in self.slots):
            serving, self._servingWaiters = self._servingWaiters, []
            for each in serving:
                each.callback(None)

    def whenServing(self) -> Deferred[None]:
        """
        Fires once every worker of the first generation serves (at once if
        they do).
        """
        if self.slots and all(s.ready for s in self.slots):
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._servingWaiters.append(waiter)
        return waiter

    def workerEnded(self, slot: WorkerSlot, reason: Failure) -> None:
        """
        A worker exited: keep its counters, and start another in its place
        unless it was asked to stop.
        """
        slot.ended = True
        slot.ready = False
        self.watchdog.forget(slot)
        self.retired = addUp([self.retired, withoutGauges(slot.stats)])
        slot.stats = {}
        # The exit code, not the raw wait status (256 for an exit code of 1).
        status = getattr(reason.value, "exitCode", None)
        sig = getattr(reason.value, "signal", None)
        how = f"killed by signal {sig}" if sig else f"exit status {status}"
        if slot.wedged:
            how = "killed by the watchdog"
        waiters, slot._readyWaiters = slot._readyWaiters, []
        for waiter in waiters:
            waiter.errback(WorkerFailed(slot.index, slot.lastLines[-1] if slot.lastLines else how))
        if slot.retireTimer is not None:
            slot.retireTimer.cancel()
            slot.retireTimer = None
        if slot in self.retiring:
            self.retiring.remove(slot)
            if slot.outlived:
                how = f"stopped after outliving the grace ({how})"
            elif not sig and status in (0, None):
                how = "finished its in-flight work"
            self.log.info("worker {index} of generation {generation} (pid {pid}) exited: {how}",
                          index=slot.index, generation=slot.generation, pid=slot.pid, how=how)
        elif self.running and slot in self.slots:
            lived = self.now() - slot.started
            if lived >= SETTLED:
                slot.failures = 0
            delay = backoff(slot.failures)
            slot.failures += 1
            slot.restarts += 1
            self.log.warn(  # noqa: G010
                "worker {index} (pid {pid}) exited ({how}) after {lived:.1f}s; "
                "starting another in {delay:g}s", index=slot.index, pid=slot.pid, how=how,
                lived=lived, delay=delay)
            self.reactor.callLater(delay, self._restart, slot)
        slot.whenEnded.callback(None)

    def heartbeat(self, slot: WorkerSlot, channel: MasterChannel) -> None:
        """
        The worker of C{slot} sent a heartbeat over C{channel} (a beat of
        a predecessor, or of a worker being killed, is not its).
        """
        if self.watchdog.limit and channel is slot.channel and not (slot.ended or slot.wedged):
            self.watchdog.beat(slot)

    def _watch(self) -> None:
        """
        Kill (C{SIGKILL}) each worker silent for longer than the watchdog's
        limit: wedged, it would never exit by itself, nor answer C{SIGTERM}.
        One of the serving generation is replaced as any worker that exits.
        """
        verdict = self.watchdog.look()
        if verdict.stalled:
            self.log.info("the master was stalled: it did not look at its workers' "
                          "heartbeats for {stalled:.1f}s; every worker's watchdog period "
                          "starts again", stalled=verdict.stalled)
        for slot, silent in verdict.wedged:
            slot.wedged = True
            self.log.warn(  # noqa: G010
                "worker {index} of generation {generation} (pid {pid}) sent no heartbeat "
                "for {silent:.1f}s (worker-watchdog: {limit:g}s): wedged, killing it (SIGKILL)",
                index=slot.index, generation=slot.generation, pid=slot.pid, silent=silent,
                limit=self.watchdog.limit)
            self._signal(slot, signal.SIGKILL)

    def _restart(self, slot: WorkerSlot) -> None:
        if self.running and slot in self.slots and slot.ended and not self.executing:
            self._spawn(slot)

    # -- upgrades --------------------------------------------------------

    def upgradeLeaves(self, settings: Sequence[str]) -> list[str]:
        """
        Which of C{settings}, what a reload could not apply, an upgrade
        would not apply either: none, when this master can re-execute
        itself for its own; embedded (no image to run again), those it runs.
        """
        return [] if self.image is not None else masterChanges(settings, False)

    def upgrade(self) -> Deferred[Upgraded]:
        """
        Start a new generation of workers, running the code and the
        configuration now on disk, on the same listening sockets (new
        listeners bound, removed ones closed); once every new worker
        serves, the old ones stop accepting and finish their in-flight
        work within the grace.

        When the master itself must change (its code on disk, or a
        setting only it runs: see L{masterChanges}), it re-executes itself
        instead (L{reexecute}), and its next image starts the new
        generation.

        @return: fires with the new generation's number (once it serves;
            with a re-exec, once the exec is decided), or fails with
            L{UpgradeFailed} (the old generation serves on).
        """
        if self.upgrading is not None:
            return fail(UpgradeUnderWay("an upgrade is already under way"))
        # A re-exec that failed before is old news: this upgrade answers
        # for itself (and its generation may be the one that one promised).
        self.execFailed = None
        problem = self.live.reload(upgrade=True) if self.live.loadConfig is not None else None
        if problem is not None:
            return self._failed(f"the configuration on disk is not valid: {problem}")
        config = (self.text.config if self.text is not None and self.text.config is not None
                  else self.live.fileConfig)
        if self.image is not None:
            reasons = masterChanges(self.live.restartNeeded, self.fingerprint() != self.code)
            if reasons:
                return self.reexecute(config, reasons)
        elif held := masterChanges(self.live.restartNeeded, False):
            self.log.warn(  # noqa: G010
                "upgrade: the master runs {settings} as it started (embedded, it cannot "
                "re-execute itself): they need a restart", settings=", ".join(held))
        moving: list[Move] = []
        try:
            added = self._bind(config.listeners, moving)
        except UpgradeFailed as e:
            return self._failed(str(e))
        generation = self.generation + 1
        done: Deferred[Upgraded] = Deferred()
        self.upgrading = done

        def start(moved: list[tuple[str, str]]) -> None:
            added.extend(moved)
            self._startGeneration(generation, config, added, moving, moved, done)

        def cannotMove(f: Failure) -> None:
            self.upgrading = None
            self._close(added)
            self._failed(f.getErrorMessage()).addErrback(done.errback)

        self._move(moving, config.listeners, generation).addCallbacks(start, cannotMove)
        return done

    def _startGeneration(self, generation: int, config: Any, added: list[tuple[str, str]],
                         moving: Sequence[Move], moved: Sequence[tuple[str, str]],
                         done: Deferred[Upgraded]) -> None:
        """
        Spawn generation C{generation} on C{config}'s listeners; once it
        serves, the old one retires and C{done} fires.  If it does not,
        the sockets bound for it (C{added}) are closed, those C{moving}
        left (for the sockets C{moved}) listen again, and C{done} fails.
        """
        sockets = {l.name: self.bound[l.name, l.endpoint].socket for l in config.listeners}
        self.log.info("upgrade: starting generation {generation} ({workers})",
                      generation=generation, count=self.count,
                      workers=counted(self.count, "worker"))
        new = [self._spawn(WorkerSlot(i, generation), sockets) for i in range(1, self.count + 1)]
        self.retiring.extend(new)
        waiting = DeferredList([whenReady(s) for s in new], fireOnOneErrback=True,
                               consumeErrors=True)
        waiting.addTimeout(UPGRADE_TIMEOUT, self.reactor)

        def ready(_: object) -> None:
            self._promote(new, generation, sockets, config)
            self.upgrading = None
            done.callback(Upgraded(generation))

        def failed(f: Failure) -> None:
            self.upgrading = None
            error = f.value.subFailure.value if isinstance(f.value, FirstError) else f.value
            why = (f"the new workers were not ready within {UPGRADE_TIMEOUT:g}s"
                   if isinstance(error, defer.TimeoutError) else str(error))
            for slot in new:
                if not slot.ended:
                    self._signal(slot, signal.SIGTERM)
            self._moveBack(moving, moved)
            self._close(added)
            self._failed(why).addErrback(done.errback)

        waiting.addCallbacks(ready, failed)

    def _move(self, moving: Sequence[Move], listeners: Sequence[Any],
              generation: int) -> Deferred[list[tuple[str, str]]]:
        """
        Bind the listeners of C{moving}, whose new addresses overlap
        sockets the running workers listen on, in HAProxy's order: the
        running workers stop accepting on those sockets (answered), the
        master stops them listening (C{shutdown}: every process's copy at
        once, the address kept bound), binds the new addresses and listens.
        If one cannot listen, the old sockets listen again and the workers
        accept on them again: nothing changed.

        There is a gap, said in the log: clients waiting in an old
        socket's accept queue are reset, and those that come meanwhile
        wait in the new socket's queue until the new generation serves.

        @return: fires with the keys bound, or fails with L{UpgradeFailed}.
        """
        if not moving:
            return succeed([])
        names = sorted({key[0] for move in moving for key in move.blocking})

        def exiting(f: Failure) -> None:
            # A worker whose channel closed is exiting: it accepts nothing.
            f.trap(ConnectionDone, ConnectionLost)

        asked = [slot.channel.callRemote(PauseListeners, names=names)
                 .addTimeout(ANSWER_TIMEOUT, self.reactor).addErrback(exiting)
                 for slot in self._alive() if slot.channel is not None]

        def paused(_: object) -> list[tuple[str, str]]:
            for move in moving:
                for key in move.blocking:
                    self.bound[key].pause()
            try:
                added = self._bind(listeners)
            except UpgradeFailed:
                self._moveBack(moving, [])
                raise
            for move in moving:
                self.log.warn(  # noqa: G010
                    "upgrade: listener {listener} moves to {endpoint}, an address that "
                    "overlaps {old} on the same port: the old socket stopped listening first, "
                    "so the clients waiting in its accept queue were reset, and new clients "
                    "wait in the new one's until generation {generation} serves",
                    listener=move.listener.name, endpoint=move.listener.endpoint,
                    old=", ".join(endpoint for _, endpoint in move.blocking),
                    generation=generation)
            return added

        def notPaused(f: Failure) -> Failure:
            self._moveBack(moving, [])
            error = f.value.subFailure.value if isinstance(f.value, FirstError) else f.value
            return Failure(UpgradeFailed(
                f"the running workers did not stop accepting on {', '.join(names)} to let "
                f"{counted(len(moving), 'listener')} move: {error}"))

        gathered = DeferredList(asked, fireOnOneErrback=True, consumeErrors=True)
        return gathered.addCallbacks(paused, notPaused)

    def _moveBack(self, moving: Sequence[Move], moved: Sequence[tuple[str, str]]) -> None:
        """
        A move is not made: the sockets bound for it (C{moved}, closed by
        the caller) stop listening, the old ones listen again, and the
        running workers accept on them again.
        """
        if not moving:
            return
        for key in moved:
            if key in self.bound:
                self.bound[key].pause()
        for move in moving:
            for key in move.blocking:
                if key in self.bound:
                    try:
                        self.bound[key].resume()
                    except OSError as e:
                        self.log.error("upgrade: {endpoint} (listener {listener}) cannot listen "
                                       "again: {error}", endpoint=key[1], listener=key[0],
                                       error=str(e))
        names = sorted({key[0] for move in moving for key in move.blocking})
        for slot in self._alive():
            if slot.channel is not None:
                slot.channel.callRemote(ResumeListeners, names=names).addErrback(lambda f: None)

    def _failed(self, why: str) -> Deferred[Upgraded]:
        self.log.error("upgrade failed, the running workers serve on: {why}", why=why)
        return fail(UpgradeFailed(why))

    # -- re-executing the master -------------------------------------------

    def reexecute(self, config: Any, reasons: Sequence[str]) -> Deferred[Upgraded]:
        """
        Re-execute this master (same PID, same arguments) to run the code
        and C{config} now on disk, its workers serving on across the exec.

        Before anything changes: the listeners and the admin API C{config}
        adds are bound here (so that one that cannot listen fails the
        upgrade), and a child process checks that the new image would
        start (L{lbtwist.check}).  Then the state
        file is saved, and the result fires (the API answers it) before the
        exec, a moment later (L{EXEC_DELAY}), when the state file is saved
        again and the hand-over is taken.

        @return: fires with the next generation's number and C{reasons},
            or fails with L{UpgradeFailed} (nothing changed).
        """
        assert self.image is not None
        if not config.runsMaster:
            return self._failed(
                "workers: a master cannot become a single process: going to 1 worker "
                "without master: true needs a restart")
        self.log.info("upgrade: the master re-executes itself ({reasons})",
                      reasons=", ".join(reasons))
        try:
            added = self._bind(config.listeners, reexec=True)
        except UpgradeFailed as e:
            return self._failed(str(e))
        try:
            # Kept here until the exec: a port that does not read is not
            # the reactor's, and its socket would close with it.
            admin, self._nextAdmin = self._adminSocket(config)
        except UpgradeFailed as e:
            self._close(added)
            return self._failed(str(e))
        done: Deferred[Upgraded] = Deferred()
        self.upgrading = done
        generation = self.generation + 1

        def checked(_: object) -> Deferred[None]:
            return self._quiesce()

        def go(_: object) -> None:
            if self.live.stateFile is not None:
                try:
                    self.live.stateFile.save(self.live.overrides)
                except OSError as e:
                    raise UpgradeFailed(f"cannot save the state file: {e}") from e
            self.executing = True
            self.log.info("upgrade: re-executing the master (pid {pid}); generation "
                          "{generation} follows", pid=os.getpid(), generation=generation)
            done.callback(Upgraded(generation, tuple(reasons), _url(self._nextAdmin)))
            self.reactor.callLater(EXEC_DELAY, self._execute, config, admin)

        def failed(f: Failure) -> None:
            self.upgrading = None
            self._unbindNext(added)
            self._failed(f.getErrorMessage()).addErrback(done.errback)

        self.preflight().addCallback(checked).addCallback(go).addErrback(failed)
        return done

    def _execute(self, config: Any, admin: InheritedSocket | None) -> None:
        """
        Make the exec, handing over what runs at this moment (a worker
        that exited since the answer is not named, nor reaped: its PID
        stays this process's child's); if it fails, this image serves on
        as it was.
        """
        assert self.image is not None
        if self.live.stateFile is not None:
            # Again: the admin API answered changes since the first save.
            try:
                self.live.stateFile.save(self.live.overrides)
            except OSError as e:
                self.log.error("upgrade: cannot save the state file again before the exec, "
                               "changes made since the upgrade was answered are lost: {error}",
                               error=str(e))
        try:
            handover = self._handover(config, admin)
        except Exception:
            # Never left half-way: upgrades refused and workers not pushed
            # to or restarted for good.
            self.log.failure("upgrade failed: the hand-over could not be made; the master "
                             "serves on as it was")
            self._notExecuted("the hand-over could not be made (see the log)")
            return
        # systemd (Type=notify) hears a reload, whose READY=1 the new image
        # sends once its workers serve.
        sdNotify(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}", os.environ)
        try:
            self.image.execute(handover, os.environ)
        except OSError as e:
            self.log.error("upgrade failed: the master cannot re-execute itself ({error}); "
                           "it serves on as it was", error=str(e))
            sdNotify(f"READY=1\nMAINPID={os.getpid()}", os.environ)
            self._notExecuted(f"the master cannot re-execute itself ({e})")

    def _notExecuted(self, why: str) -> None:
        """
        The exec failed (C{why}): close what was bound for the next image,
        and go on asking the workers for their counters.
        """
        self.execFailed = (self.generation + 1, why)
        self.upgrading = None
        self.executing = False
        for slot in self.slots:
            self._restart(slot)
        self.schedulePush()
        keys = {(x.name, x.endpoint) for x in self.live.fileConfig.listeners}
        self._unbindNext([key for key in self.bound if key not in keys])

    def _unbindNext(self, keys: Sequence[tuple[str, str]]) -> None:
        """
        A re-exec is not made: close the listening sockets of C{keys} and
        the admin API's, bound for the next image, and collect the workers'
        counters again.
        """
        self._close(keys)
        if self._nextAdmin is not None:
            self._nextAdmin.stopListening()
            self._nextAdmin = None
        if self.running and not self.refresher.running:
            self.refresher.start(REFRESH, now=False)

    def _adminSocket(self, config: Any) -> tuple[InheritedSocket | None, Any]:
        """
        The admin API's listening socket for the next image: the running
        one when C{config} keeps its endpoint, else one bound now for the
        new endpoint (and returned second, to close if the upgrade fails).

        @raise UpgradeFailed: a configured new endpoint cannot listen.
        """
        service = self.admin() if self.admin is not None else None
        if service is None:
            return None, None
        target = service.endpointFor(config)
        port = service.port
        if port is None or target != service.endpointText:
            port, error = _holdSocket(self.reactor, target)
            if port is None:
                if config.admin is None:
                    # The default endpoint taken: the next image runs
                    # without the API, as a start would.
                    return None, None
                raise UpgradeFailed(f"admin: the admin API cannot listen on {target}: {error}")
            bound = port
        else:
            bound = None
        return InheritedSocket("admin", target, port.fileno(), int(port.socket.family)), bound

    def preflight(self) -> Deferred[None]:
        """
        Check in a child process that the code and configuration on disk
        would start a master, as this one was started.

        @return: fails with L{UpgradeFailed} saying why it would not.
        """
        assert self.image is not None
        command = self.image.checkCommand()
        check = CheckProcess()
        try:
            process = self.reactor.spawnProcess(
                check, command[0], command, env={**self.environ, **self.passed},
                path=os.getcwd())
        except OSError as e:
            # No process (too many open files, no memory...): the upgrade
            # fails as any other check would, and nothing is left under way.
            return fail(UpgradeFailed(f"the new master's check could not start: {e}"))

        def hung(running: Deferred[Any]) -> None:
            # Killed, not left to run on: a check that hangs once would
            # otherwise hold its memory (and its descriptors) for good.
            try:
                process.signalProcess("KILL")
            except ProcessExitedAlready:
                pass

        running: Deferred[tuple[bytes, bytes, int | None, int | None]] = Deferred(hung)
        check.ended = running
        running.addTimeout(PREFLIGHT_TIMEOUT, self.reactor)

        def judged(result: tuple[bytes, bytes, int | None, int | None]) -> None:
            out, err, code, signum = result
            if signum is not None:
                raise UpgradeFailed("the new master's check was killed: "
                                    + err.decode("utf-8", "replace").strip())
            if code != 0:
                lines = (err or out).decode("utf-8", "replace").strip().splitlines()
                raise UpgradeFailed("the new master would not start: "
                                    + (lines[-1] if lines else f"exit status {code}"))

        def broken(f: Failure) -> None:
            f.trap(defer.TimeoutError)
            raise UpgradeFailed(
                f"the new master's check did not finish within {PREFLIGHT_TIMEOUT:g}s")

        return running.addCallbacks(judged, broken)

    def _quiesce(self) -> Deferred[None]:
        """
        Ask the workers nothing more, and fire once every question asked
        was answered (or after L{QUIESCE_TIMEOUT}): no answer must reach
        an image that did not ask.
        """
        if self.refresher.running:
            self.refresher.stop()
        self._cancelPush()
        done: Deferred[None] = Deferred()
        deadline = self.reactor.seconds() + QUIESCE_TIMEOUT

        def check() -> None:
            pending = sum(s.channel.pending for s in self._alive() if s.channel is not None)
            if not pending or self.reactor.seconds() >= deadline:
                done.callback(None)
            else:
                self.reactor.callLater(QUIESCE_POLL, check)

        check()
        return done

    def _handover(self, config: Any, admin: InheritedSocket | None) -> Handover:
        """
        What the next image takes on: the sockets of C{config}'s listeners,
        the admin API's, and every worker still running (their output
        pipes made larger, to hold what they write while no image reads).
        """
        listeners = tuple(
            InheritedSocket(x.name, x.endpoint, *self.bound[x.name, x.endpoint].socket)
            for x in config.listeners)
        workers = []
        for slot in self._alive():
            if (slot.process.pid is None or slot.channel is None
                    or slot.channel.transport is None):
                # Reaped already (its pipes not closed yet): its PID may be
                # another process's by now.  Or exiting, its channel
                # closed: that descriptor number may be another's.
                continue
            output = {number: reader.fileno() for number, reader in slot.process.pipes.items()}
            for fd in output.values():
                _widenPipe(fd)
            workers.append(InheritedWorker(
                index=slot.index, generation=slot.generation, pid=slot.process.pid,
                control=slot.channel.transport.fileno(),  # type: ignore[attr-defined]
                output=output,
                restarts=slot.restarts, retiring=slot in self.retiring))
        health = {name: {b.name: b.health.value for b in pool if b.health is not Health.UNKNOWN}
                  for name, pool in self.live.pools.items()}
        return Handover(self.generation, listeners, admin, tuple(workers), pid=os.getpid(),
                        reads=self.text.reads if self.text is not None else 0,
                        health={name: found for name, found in health.items() if found})

    def _promote(self, new: list[WorkerSlot], generation: int,
                 sockets: dict[str, tuple[int, int]], config: Any) -> None:
        """
        The new generation serves: the old one retires, and the sockets of
        listeners the configuration no longer has are closed.
        """
        old = self.slots
        for slot in new:
            self.retiring.remove(slot)
        self.slots, self.generation, self.sockets = new, generation, sockets
        self.retiring.extend(slot for slot in old if not slot.ended)
        self._retire(old)
        # The master runs those listeners now (the API lists them, and the
        # next reload compares with them).
        self.live.fileConfig = attrs.evolve(
            self.live.fileConfig, listeners=config.listeners, maxconn=config.maxconn)
        keep = {(l.name, l.endpoint) for l in config.listeners}
        gone = [key for key in self.bound if key not in keep]
        self._close(gone)
        for listener in config.listeners:
            self.balancer.factories.setdefault(listener.name, ListenerTotals())
        for name, _ in gone:
            if name not in sockets:
                self.balancer.factories.pop(name, None)
        for slot in new:
            if slot.ended:
                self.reactor.callLater(0, self._restart, slot)
        self.log.info(
            "upgrade: generation {generation} serves; generation {old} finishes its "
            "in-flight work within {grace}s", generation=generation, old=generation - 1,
            grace=self.grace)

    # -- the registry ----------------------------------------------------

    def _poolChanged(self, event: PoolEvent) -> None:
        self.schedulePush()

    def _observePools(self) -> None:
        """
        Watch every pool's changes (its health transitions included), pools
        added at run time too.
        """
        for pool in self.live.pools.values():
            if self._poolChanged not in pool.observers:
                pool.observers.append(self._poolChanged)

    def schedulePush(self) -> None:
        """
        Push the registry to every worker soon (changes made together, in
        one turn of the reactor, go in one push).
        """
        self._observePools()
        if self._pushing is None and self.running:
            self._pushing = self.reactor.callLater(0, self._pushNow)

    def _pushNow(self) -> None:
        self._pushing = None
        self.push()

    def _cancelPush(self) -> None:
        """
        Forget the push L{schedulePush} planned, if any.
        """
        if self._pushing is not None and self._pushing.active():
            self._pushing.cancel()
        self._pushing = None

    def push(self) -> Deferred[None]:
        """
        Send the registry to every worker; fires once each has applied it
        (or failed to answer in time: a worker that starts again gets it
        then).
        """
        if self.executing:
            # The next image pushes its registry to every worker it adopts.
            return succeed(None)
        registry = snapshot(self.live, self.text)
        sent = [self._send(slot, registry) for slot in self._alive()]
        done: Deferred[None] = Deferred()
        DeferredList(sent).addCallback(lambda _: done.callback(None))
        return done

    def reopenLogs(self) -> None:
        """
        Have every worker open its access-log files again (C{SIGHUP}, after
        a rotation): the workers write them, not the master.
        """
        for slot in self._alive():
            assert slot.channel is not None

            def failed(f: Failure, slot: WorkerSlot = slot) -> None:
                if not slot.ended and not f.check(ConnectionDone, ConnectionLost):
                    self.log.error("worker {index} did not reopen its access logs: {error}",
                                   index=slot.index, error=f.getErrorMessage())

            slot.channel.callRemote(ReopenLogs).addErrback(failed)

    def _alive(self) -> list[WorkerSlot]:
        return [s for s in [*self.slots, *self.retiring] if not s.ended and s.channel is not None]

    def _send(self, slot: WorkerSlot, registry: dict[str, Any]) -> Deferred[Any]:
        self.revision += 1
        assert slot.channel is not None
        slot.sent = self.revision
        d = slot.channel.callRemote(ApplyRegistry, revision=self.revision, registry=registry)
        d.addTimeout(ANSWER_TIMEOUT, self.reactor)

        def applied(answer: dict[str, Any]) -> None:
            slot.applied = max(slot.applied, answer["revision"])

        d.addCallback(applied)

        def failed(f: Failure) -> None:
            # A worker whose channel closed is exiting: nothing to say.
            if not slot.ended and not f.check(ConnectionDone, ConnectionLost):
                self.log.error("worker {index} did not apply the registry: {error}",
                               index=slot.index, error=f.getErrorMessage())

        return d.addErrback(failed)

    def passiveDown(self, slot: WorkerSlot, pool: str, backend: str, reason: str) -> None:
        """
        A worker's passive health marked a backend down: mark it down for
        the whole group (the master's probes bring it back).
        """
        live = self.live.pools.get(pool)
        found = live.get(backend) if live is not None else None
        if live is not None and found is not None and found.health is not Health.DOWN:
            # The worker counted the failures: the totals have them.
            live.setHealth(backend, Health.DOWN, f"worker {slot.index}: {reason}")
        else:
            # Tell that worker the master's view again.
            self.schedulePush()

    # -- the admin API's hooks ---------------------------------------------

    def settle(self) -> Deferred[None]:
        """
        Push the registry now; fires once every worker applied it (the
        admin API answers a change then).
        """
        self._cancelPush()
        self._observePools()
        return self.push()

    def refresh(self) -> Deferred[None]:
        """
        Collect every worker's counters and show their totals in the
        master's pools and listeners.
        """
        slots = [] if self.executing else [s for s in self._alive() if s.ready]

        def collect(slot: WorkerSlot) -> Deferred[Any]:
            assert slot.channel is not None
            d = slot.channel.callRemote(CollectStats)
            d.addTimeout(ANSWER_TIMEOUT, self.reactor)

            def got(answer: dict[str, Any]) -> None:
                slot.stats = answer["stats"]

            return d.addCallbacks(got, lambda f: None)

        done: Deferred[None] = Deferred()

        def show(_: object) -> None:
            self.mirror.show(addUp([self.retired, *(s.stats for s in self._alive())]))
            done.callback(None)

        DeferredList([collect(s) for s in slots]).addCallback(show)
        return done

    def view(self) -> list[dict[str, Any]]:
        """
        Each worker, current generation first: its number, generation, pid,
        whether it serves or retires, restarts, whether it applied the
        master's last change to the pools (C{registry}: C{applied}, or
        C{pending} while a push is on its way to it), and its own counters
        as last collected.
        """
        pushing = self._pushing is not None
        return [
            {"worker": slot.index, "generation": slot.generation, "pid": slot.pid,
             "state": ("retiring" if slot in self.retiring else
                       "serving" if slot.ready else "exited" if slot.ended else "starting"),
             "restarts": slot.restarts,
             "registry": "pending" if pushing or slot.applied < slot.sent else "applied",
             **perWorker(slot.stats)}
            for slot in [*self.slots, *self.retiring]
        ]

    def collector(self) -> Collector:
        """
        The per-worker series for C{/metrics}.
        """
        return WorkerCollector(self)


def perWorker(stats: dict[str, float]) -> dict[str, int]:
    """
    A worker's own totals: client connections accepted and open, and
    connections or requests sent to backends.
    """
    sums = {"accepted": 0, "active": 0, "requests": 0}
    for key, value in stats.items():
        path = key.split(SEP)
        field = path[-1]
        if path[0] == "listener" and field == "accepted":
            sums["accepted"] += int(value)
        elif path[0] == "listener" and field == "activeClients":
            sums["active"] += int(value)
        elif path[0] == "backend" and field == "total":
            sums["requests"] += int(value)
    return sums


def _widenPipe(fd: int) -> None:
    """
    Make the pipe of C{fd} hold L{PIPE_SIZE} bytes if the system lets it
    (a worker that fills it blocks on its next log line).
    """
    import fcntl

    try:
        fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except (OSError, AttributeError):
        pass


@attrs.frozen
class Upgraded:
    """
    An upgrade made, or under way.

    @ivar generation: the number of the new generation of workers.
    @ivar reexec: why the master re-executes itself to make it (then the
        new generation is not serving yet), or nothing.
    @ivar admin: where the admin API answers after the re-exec, when it
        moves there.
    """

    generation: int
    reexec: tuple[str, ...] = ()
    admin: str | None = None


def _url(port: Any) -> str | None:
    """
    The C{http://} address of the admin API on C{port}, a network port
    (else L{None}).
    """
    if port is None:
        return None
    address = port.getHost()
    host = getattr(address, "host", None)
    if host is None:
        return None
    return f"http://{hostPort(host, address.port)}"


class Bound:
    """
    A listening socket the master holds (it never accepts on it).

    @ivar port: the Twisted port.
    @ivar service: the master's listener service that made it, if any
        (else an upgrade bound it).
    """

    def __init__(self, port: Any, service: Any) -> None:
        self.port = port
        self.service = service

    @property
    def socket(self) -> tuple[int, int]:
        """
        Its file descriptor and address family.
        """
        return self.port.fileno(), int(self.port.socket.family)

    def pause(self) -> None:
        """
        Stop the socket listening, in every process that holds it, its
        address kept bound (Linux): an overlapping address may listen now.
        The clients in its accept queue are reset.
        """
        try:
            self.port.socket.shutdown(socket.SHUT_RD)
        except OSError:
            pass

    def resume(self) -> None:
        """
        Listen again, after L{pause}.

        @raise OSError: it cannot.
        """
        self.port.socket.listen(self.port.backlog)


@attrs.frozen
class Move:
    """
    A listener an upgrade binds where sockets of the running generation
    listen on overlapping addresses (see L{WorkerGroup._move}).

    @ivar listener: its new configuration.
    @ivar blocking: the keys (listener name, endpoint) of those sockets.
    """

    listener: Any
    blocking: tuple[tuple[str, str], ...]


def _holdSocket(reactor: Any, endpoint: str) -> tuple[Any, Any]:
    """
    Bind the server endpoint C{endpoint} now, for the workers (or the
    master's next image), never to accept on it here.

    @return: its port and L{None}; or L{None} and why it cannot listen.
    """
    from twisted.internet.endpoints import serverFromString

    got: list[Any] = []
    serverFromString(reactor, endpoint).listen(_NoClients()).addBoth(got.append)
    result: Any = got[0] if got else None
    if not hasattr(result, "stopReading"):
        return None, getattr(result, "value", result)
    result.stopReading()
    return result, None


class _NoClients(Factory):
    """
    The factory of a socket the master binds for its workers: it never
    accepts, so it never builds a protocol.
    """

    noisy = False

    def logPrefix(self) -> str:
        """
        How the socket's opening is logged (C{... starting on PORT}).
        """
        return "socket for the workers"


class ListenerTotals:
    """
    The counters of a listener an upgrade added, shown in the master
    (which has no factory for it) as the workers' totals.
    """

    def __init__(self) -> None:
        self.accepted = 0
        self.activeClients = 0
        self.refused = 0
        self.statuses: dict[str, int] = {}

    def setRoutes(self, routes: Any, default: Any) -> None:
        """
        Nothing: the workers route (the registry carries the routes).
        """

    def setClientTimeouts(self, listener: Any) -> None:
        """
        Nothing: the workers hold the clients (the registry carries the
        file, and they apply its listeners' timeouts).
        """


class UpgradeFailed(Exception):
    """
    An upgrade could not be made: the old generation serves on.

    @cvar underWay: it was refused because another one is under way (the
        admin API answers C{409}, not C{500}).
    """

    underWay = False


class UpgradeUnderWay(UpgradeFailed):
    """
    An upgrade was asked for while another is under way (a re-exec
    included, until its exec): refused, the first one goes on.
    """

    underWay = True


class WorkerFailed(Exception):
    """
    A worker exited before it was ready.
    """

    def __init__(self, index: int, why: str) -> None:
        super().__init__(f"worker {index} could not start: {why}")


class WorkerCollector(Collector):
    """
    Each worker's own numbers, labelled C{worker}: the totals are in the
    usual series.
    """

    def __init__(self, group: WorkerGroup) -> None:
        self.group = group

    def collect(self) -> Any:
        """
        The per-worker families, as last collected.
        """
        labels = ("worker",)
        up = GaugeMetricFamily("lbtwist_worker_up", "1 while the worker serves.", labels=labels)
        restarts = CounterMetricFamily(
            "lbtwist_worker_restarts", "Times the worker was started again.", labels=labels)
        accepted = CounterMetricFamily(
            "lbtwist_worker_accepted", "Client connections the worker accepted.", labels=labels)
        clients = GaugeMetricFamily(
            "lbtwist_worker_active", "Client connections open in the worker.", labels=labels)
        requests = CounterMetricFamily(
            "lbtwist_worker_requests",
            "Connections (TCP) or requests (HTTP) the worker sent to backends.", labels=labels)
        for slot in self.group.slots:
            label = (str(slot.index),)
            up.add_metric(label, 1.0 if slot.ready else 0.0)
            restarts.add_metric(label, slot.restarts)
            own = perWorker(slot.stats)
            accepted.add_metric(label, own["accepted"])
            clients.add_metric(label, own["active"])
            requests.add_metric(label, own["requests"])
        yield from (up, restarts, accepted, clients, requests)

