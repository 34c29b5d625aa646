"""
A worker process: the data plane over its master's listening sockets.

The master starts it as C{twistd lb ... --worker SPEC} (L{WorkerSpec}): the
same options as its own, so the worker reads the same configuration, plus
the file descriptors it inherited, the control channel's and one
listening socket per listener.  It builds the balancer without health
checks, discovery, admin API or signals of its own (the master runs
those), waits for the master's first registry, applies it, and only then
accepts clients and tells the master it is ready.  From its start to its
exit its reactor tells the master it runs, on a timer (see
L{lbtwist.workers._watchdog}).
"""

from __future__ import annotations

import json
import os
import socket
import sys
from typing import Any

import attrs
from twisted.application.service import MultiService
from twisted.internet.task import LoopingCall
from twisted.logger import FileLogObserver, ILogObserver, Logger, eventAsText

from ..config import Config
from ..lifecycle import GracefulStop
from ..pool import HealthChanged, PoolEvent
from ..service import LoadBalancer
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
from ._registry import RegistryApplier, WorkerLiveConfig, splitLimits
from ._stats import countersOf

# A retiring worker closes keep-alive clients idle this long (see
# L{WorkerNode.retire}); it looks at its clients this often.
QUIET = 1.0
RETIRE_POLL = 0.1


@attrs.frozen
class WorkerSpec:
    """
    What a master tells a worker on its command line.

    @ivar control: the file descriptor of its end of the control channel.
    @ivar listeners: each listener's inherited socket, as C{(file
        descriptor, address family)} by name.
    @ivar index: its number in the group (1, 2...), for logs and metrics.
    @ivar generation: its generation (1, then one more per upgrade).
    @ivar workers: how many workers share the sockets (the limits are
        shared out among them).
    @ivar heartbeat: seconds between its heartbeats to the master (0:
        none, the master has no watchdog).
    """

    control: int
    listeners: dict[str, tuple[int, int]]
    index: int
    generation: int
    workers: int
    heartbeat: float = 0.0

    def toJSON(self) -> str:
        """
        This spec as the C{--worker} option's value.
        """
        return json.dumps({
            "control": self.control, "index": self.index, "generation": self.generation,
            "workers": self.workers, "heartbeat": self.heartbeat,
            "listeners": {name: list(value) for name, value in self.listeners.items()},
        }, separators=(",", ":"))

    @classmethod
    def fromJSON(cls, text: str) -> WorkerSpec:
        """
        Read the C{--worker} option's value.

        @raise ValueError: it is not one a master writes.
        """
        try:
            data = json.loads(text)
            return cls(
                control=int(data["control"]), index=int(data["index"]),
                generation=int(data["generation"]), workers=int(data["workers"]),
                # (A master from before heartbeats gives none.)
                heartbeat=float(data.get("heartbeat", 0.0)),
                listeners={str(k): (int(v[0]), int(v[1])) for k, v in data["listeners"].items()},
            )
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise ValueError(f"--worker: not a worker specification from a master: {e}") from e


def workerLog() -> ILogObserver:
    """
    The log of a worker (C{twistd --logger}): each event as one line with
    no time stamp, on the standard output its master reads and logs again,
    naming the worker.
    """
    out = sys.__stdout__
    assert out is not None

    def format(event: dict[str, Any]) -> str | None:
        text = eventAsText(event, includeTimestamp=False, includeSystem=False)
        return text + "\n" if text else None

    return FileLogObserver(out, format)


class WorkerChannel(Channel):
    """
    The worker's end of the control channel.
    """

    def __init__(self, node: WorkerNode) -> None:
        super().__init__()
        self.node = node

    @ApplyRegistry.responder
    def applyRegistry(self, revision: int, registry: dict[str, Any]) -> dict[str, int]:
        """
        Apply the master's registry (the first one starts the listeners).
        """
        self.node.apply(revision, registry)
        return {"revision": revision}

    @CollectStats.responder
    def collectStats(self) -> dict[str, Any]:
        """
        This worker's counters.
        """
        lb = self.node.loadBalancer
        return {"stats": countersOf(lb.pools, lb.factories)}

    @ReopenLogs.responder
    def reopenLogs(self) -> dict[str, Any]:
        """
        Open the access-log files again, after a rotation.
        """
        self.node.loadBalancer.reopenAccessLogs()
        return {}

    @PauseListeners.responder
    def pauseListeners(self, names: list[str]) -> dict[str, Any]:
        """
        Stop accepting on the listeners C{names}, their sockets kept.
        """
        self.node.listening(names, False)
        return {}

    @ResumeListeners.responder
    def resumeListeners(self, names: list[str]) -> dict[str, Any]:
        """
        Accept again on the listeners C{names}.
        """
        self.node.listening(names, True)
        return {}

    @Retire.responder
    def retire(self, grace: float) -> dict[str, Any]:
        """
        Stop accepting, finish in-flight work within C{grace}, exit.
        """
        self.node.retire(grace)
        return {}

    def connectionLost(self, reason: Any = None) -> None:
        """
        The master is gone: stop as on C{SIGTERM}.
        """
        super().connectionLost(reason)
        self.node.masterGone()


class WorkerNode(MultiService):
    """
    A worker process's services: the data plane over inherited sockets,
    its graceful stop, and the control channel to its master.

    @ivar loadBalancer: the data plane, started once the first registry
        is applied.
    @ivar live: its pools' run-time control, driven by the master.
    """

    log = Logger()

    def __init__(self, config: Config, reactor: Any, spec: WorkerSpec, grace: float) -> None:
        super().__init__()
        self.reactor = reactor
        self.spec = spec
        self.loadBalancer = LoadBalancer(
            splitLimits(config, spec.workers), reactor, adopted=spec.listeners, monitors=False)
        self.loadBalancer.setName("balancer")
        self.live = WorkerLiveConfig(self.loadBalancer.pools, config, reactor, grace=grace,
                                     balancer=self.loadBalancer)
        self.live.workers = spec.workers
        self.applier = RegistryApplier(self.live, self.loadBalancer.reloadCertificates)
        lb = self.loadBalancer
        self.stopping = GracefulStop(
            self.live, reactor, grace,
            softStops=[f.softStop for f in lb.factories.values() if hasattr(f, "softStop")])
        self.stopping.setServiceParent(self)
        self.channel: WorkerChannel | None = None
        self.serving = False
        # Beats until the process exits, through a graceful stop too: a
        # worker draining its clients is not wedged.
        self.beating = LoopingCall(self._beat)
        self.beating.clock = reactor
        for pool in lb.pools.values():
            pool.observers.append(self._poolChanged)

    def startService(self) -> None:
        """
        Open the control channel; the listeners wait for the first registry.
        """
        super().startService()
        self.channel = WorkerChannel(self)
        self.reactor.adoptStreamConnection(
            self.spec.control, socket.AF_UNIX, GivenProtocol(self.channel))
        os.close(self.spec.control)
        if self.spec.heartbeat:
            self.beating.start(self.spec.heartbeat)

    def _beat(self) -> None:
        """
        Tell the master that this worker's reactor runs.
        """
        if self.channel is not None and self.channel.transport is not None:
            self.channel.callRemote(Heartbeat)

    def apply(self, revision: int, registry: dict[str, Any]) -> None:
        """
        Apply a registry; the first one starts the listeners, and the
        master hears that this worker is ready.  A worker that cannot apply
        its first one exits, saying why (its master logs it, and an
        upgrade fails with it).
        """
        try:
            self.applier.apply(revision, registry)
        except Exception as e:
            if self.serving:
                raise
            self.log.critical("worker {index} cannot start: {error}", index=self.spec.index,
                              error=str(e))
            self._stop()
            raise
        if not self.serving and self.running:
            self.serving = True
            self.loadBalancer.setServiceParent(self)
            self.log.info("worker {index} (generation {generation}, pid {pid}) serving",
                          index=self.spec.index, generation=self.spec.generation,
                          pid=os.getpid())
            assert self.channel is not None
            self.channel.callRemote(Ready, pid=os.getpid()).addErrback(lambda f: None)

    def _poolChanged(self, event: PoolEvent) -> None:
        """
        Report a backend this worker's passive health marked down to the
        master, which decides for every worker.
        """
        if (isinstance(event, HealthChanged) and event.new == "down"
                and not self.applier.applying and self.channel is not None):
            self.channel.callRemote(
                ReportHealth, pool=event.pool, backend=event.backend.name, reason=event.reason,
            ).addErrback(lambda f: None)

    def listening(self, names: list[str], accept: bool) -> None:
        """
        Stop or go on accepting on the listeners C{names} (the master moves
        their addresses in an upgrade).
        """
        from ..service import ListenerService

        for service in self.loadBalancer:
            if isinstance(service, ListenerService) and service.listener.name in names:
                if accept:
                    service.resume()
                else:
                    service.pause()

    def retire(self, grace: float) -> None:
        """
        Stop accepting and let the clients finish within C{grace} seconds,
        then exit: a newer generation serves the sockets.

        Unlike the stop on C{SIGTERM}, a keep-alive client that sent a
        request a moment ago is not closed while idle (its next request
        may be on the way, and would be cut): its next answer says
        C{Connection: close}.  Clients idle for L{QUIET} seconds are closed;
        tunnels (WebSockets) go on until they close or the grace ends.
        """
        from ..service import ListenerService

        self.log.info("worker {index} retiring: its clients get up to {grace}s",
                      index=self.spec.index, grace=grace)
        for service in list(self.loadBalancer):
            if isinstance(service, ListenerService):
                service.disownServiceParent()
        factories = list(self.loadBalancer.factories.values())
        deadline = self.reactor.seconds() + grace

        def check() -> None:
            for factory in factories:
                softStop = getattr(factory, "softStop", None)
                if softStop is not None:
                    softStop(QUIET)
            clients = sum(getattr(f, "activeClients", 0) for f in factories)
            if (not clients and not self.live.inFlight()) or self.reactor.seconds() >= deadline:
                # What is left (nothing, or what the grace ran out on) is
                # closed at once.
                self.stopping.grace = 0.0
                self._stop()
            else:
                self.reactor.callLater(RETIRE_POLL, check)

        check()

    def masterGone(self) -> None:
        """
        The control channel closed: the master exited, so stop.
        """
        if self.beating.running:
            self.beating.stop()
        if self.running:
            self.log.info("worker {index}: the master is gone, stopping", index=self.spec.index)
            self._stop()

    def _stop(self) -> None:
        if self.reactor.running:
            self.reactor.stop()
