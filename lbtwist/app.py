"""
The whole balancer, composed from one configuration: what C{twistd lb}
runs, and what an application embeds.

L{Balancer} is the one place that puts the parts together: the data plane
(L{lbtwist.service.LoadBalancer}: listeners, pools, health checks, status
table) and its run-time control (the state file, the admin API with metrics
and dashboard, reload on C{SIGHUP}, the graceful stop on C{SIGTERM}).  Each
part of the control can be left out by name, for an application that has
its own.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import attrs
from twisted.internet.defer import succeed

from .admin import AdminService
from .config import ClusterConfig, Config
from .control import BalancerControl
from .gctuning import FrozenStartupHeap
from .lifecycle import GracefulStop, ReadyNotice, ReloadOnSignal
from .pool import Backend
from .reload import DEFAULT_GRACE, LiveConfig, loadState
from .service import AllOrNothingService, CannotStart, LoadBalancer
from .state import StateError, StateFile, defaultStatePath, legacyStatePath
from .workers import ConfigText, Handover, MasterImage, WorkerGroup


class Balancer(AllOrNothingService):
    """
    The whole balancer as one service.

    Start it as any Twisted service: under twistd (C{setServiceParent} of an
    C{Application}), or from a script with C{startService()} before
    C{reactor.run()}.  Listening happens in C{startService}, which raises
    L{lbtwist.service.CannotStart} when a listener cannot listen, leaving
    nothing started (the ports it opened are closed once the reactor has
    turned).

    @ivar loadBalancer: the data plane: its C{pools}, C{factories} (one per
        listener) and the services that run them.
    @ivar control: how to change the running balancer (backends, pools,
        routes, reloads), checked as the admin API checks, and through the
        cluster store when there is one; L{None} without C{control}.
    @ivar live: the local layer under C{control}: changes to this process's
        pools alone, saved to the state file.  In a cluster, the registry
        undoes what it changes.
    """

    def __init__(
        self,
        config: Config,
        reactor: Any,
        *,
        configPath: str | None = None,
        statePath: str | None = None,
        grace: float = DEFAULT_GRACE,
        control: bool = True,
        signals: bool = True,
        freezeHeap: bool = True,
        workerCommand: Sequence[str] = (),
        workersOption: int | None = None,
        instanceName: str | None = None,
        overrides: Callable[[Config], Config] | None = None,
        image: MasterImage | None = None,
        handover: Handover | None = None,
    ) -> None:
        """
        @param config: what to run (see L{lbtwist.config.loadConfigFile}).
        @param reactor: the reactor everything runs on.
        @param configPath: the file C{config} was read from: C{SIGHUP} and
            C{POST /api/reload} read it again, and the default state file
            lies next to it.  Without it, reloads are refused.
        @param statePath: where run-time changes are saved (default: the
            configuration's C{state}, else next to C{configPath}).
        @param grace: seconds in-flight connections get on stop or removal.
        @param control: run the state file, admin API, metrics, dashboard,
            reload and graceful stop.  Without it, only the data plane runs.
        @param signals: with C{control}, reload on C{SIGHUP} and stop
            gracefully (exit status 0) on C{SIGTERM}; leave it out when the
            application handles signals itself.
        @param freezeHeap: once running, freeze the start-up heap out of the
            garbage collector's way (see L{lbtwist.gctuning}): the
            application's start-up objects are frozen with the balancer's.
        @param workerCommand: with C{config.workers} over 1 (and
            C{control}), the options of C{twistd lb} each worker runs with
            (see L{lbtwist.workers}; default: C{--config configPath}): this
            process becomes their master, its listeners bound but served by
            the workers.
        @param workersOption: the number of workers the command line gave
            (C{--workers}), which a reload of the file keeps, as it won over
            the file at start.
        @param instanceName: with a C{cluster} in C{config}, the name this
            balancer registers under (default: host name and process ID).
        @param overrides: what the command line says over the file
            (applied to each reload's reading of it).
        @param image: with workers, how this master runs its own image
            again, so that an upgrade also applies what only the master
            runs (see L{lbtwist.workers.MasterImage}).
        @param handover: what the previous image of this master left it:
            its listening sockets (adopted instead of bound) and workers.

        @raise lbtwist.service.CannotStart: the state file is invalid or
            cannot be written.
        """
        super().__init__()
        self.live: LiveConfig | None = None
        self.control: BalancerControl | None = None
        self.workers: WorkerGroup | None = None
        self.workerCommand = list(workerCommand)
        self.workersOption = workersOption
        self.overrides = overrides
        self.image = image
        self.handover = handover
        self.cluster: Any = None
        self.instanceName = instanceName
        # Backends DNS discovery finds gone are drained as removed ones are.
        self.loadBalancer = LoadBalancer(
            config, reactor, drain=self._drainDiscovered if control else None,
            adopted=None if handover is None else handover.socketsFor(config.listeners))
        self.loadBalancer.setName("balancer")
        self.loadBalancer.setServiceParent(self)
        if freezeHeap:
            FrozenStartupHeap(reactor).setServiceParent(self)
        if control:
            self.live = self._control(reactor, configPath, statePath, grace, signals)

    def _drainDiscovered(self, pool: str, backend: Backend) -> None:
        """
        Drain a backend DNS discovery removed, through the run-time control
        (which exists by the time discovery runs).
        """
        if self.live is not None:
            self.live.drain(pool, backend)

    def _commandLine(self, config: Config) -> Config:
        """
        C{config} as read from the file, with what the command line said
        over it (its options, and its number of workers).
        """
        if self.overrides is not None:
            config = self.overrides(config)
        if self.workersOption is not None:
            config = attrs.evolve(config, workers=self.workersOption)
        return config

    def _control(self, reactor: Any, configPath: str | None, statePath: str | None,
                 grace: float, signals: bool) -> LiveConfig:
        """
        Compose run-time control around the data plane: the saved state
        (loaded now), the admin API, metrics and dashboard, reload on
        C{SIGHUP}, and the graceful stop.

        The state file is C{statePath}, else the configuration's C{state},
        else one named after the configuration file or the first listener
        (see L{lbtwist.state.defaultStatePath}); an old-named
        C{lbtwist-state.json} beside a default one is read while the default
        one does not exist.
        """
        lb = self.loadBalancer
        given = statePath or lb.config.state
        path = given or defaultStatePath(
            configPath, listeners=[listener.endpoint for listener in lb.config.listeners])
        multi = lb.config.runsMaster
        # Reads the file with the command line's options over it; a
        # master also sends its workers the text it read.
        load = ConfigText(configPath, self._commandLine) if configPath else None
        text = load if multi else None
        live = LiveConfig(
            lb.pools, lb.config, reactor,
            StateFile(path, legacy=None if given else legacyStatePath(path)),
            loadConfig=load, grace=grace,
            balancer=lb,
            reloaded=[lb.reloadCertificates],
        )
        try:
            live.stateFile.checkWritable()  # type: ignore[union-attr]
            loadState(live)
        except StateError as e:
            raise CannotStart(f"lbtwist: {e}") from e
        control = AllOrNothingService()
        control.setName("control")
        control.setServiceParent(self)
        GracefulStop(
            live, reactor, grace,
            softStops=[f.softStop for f in lb.factories.values() if hasattr(f, "softStop")],
        ).setServiceParent(control)
        if lb.config.cluster is not None:
            # The registry in etcd is the run-time state now: the state
            # file's overrides only seed an empty store.
            live.stateFile = None
            self.cluster = self._clusterSync(lb.config.cluster, live, reactor, path)
            self.cluster.setServiceParent(control)
        if multi:
            # Under twistd lb the workers get its options; embedded (a .tac),
            # the configuration file.
            command = self.workerCommand or (["--config", configPath] if configPath else [])
            if not command:
                raise CannotStart("lbtwist: workers: worker processes read the configuration "
                                  "file: give its path (configPath), or run twistd lb")
            self.workers = WorkerGroup(lb, live, reactor, count=lb.config.workers,
                                       command=command, grace=grace, text=text,
                                       image=self.image, handover=self.handover,
                                       admin=lambda: admin,
                                       watchdog=lb.config.workerWatchdog)
            live.upgradeLeaves = self.workers.upgradeLeaves
        self.control = BalancerControl(live, self.cluster, reloadsFromCode=not multi)
        inherited = None if self.handover is None else self.handover.admin
        admin = AdminService(
            lb, live, reactor, group=self.workers, cluster=self.cluster, control=self.control,
            adopted=None if inherited is None else (inherited.endpoint, inherited.fd,
                                                    inherited.family))
        admin.setServiceParent(control)
        if self.workers is not None:
            self.workers.setServiceParent(control)
        ReadyNotice(
            reactor, self.workers.whenServing if self.workers is not None else lambda: succeed(None),
        ).setServiceParent(control)
        if signals:
            ReloadOnSignal(
                live, reactor, reopenLogs=self._reopenLogs,
                upgrade=self.workers.upgrade if self.workers is not None else None,
            ).setServiceParent(control)
        return live

    def _reopenLogs(self) -> None:
        """
        Open the access-log files again (C{SIGHUP}, after a rotation): this
        process's, and its workers', which are the ones writing them.
        """
        self.loadBalancer.reopenAccessLogs()
        if self.workers is not None:
            self.workers.reopenLogs()

    def _clusterSync(self, cluster: ClusterConfig, live: LiveConfig, reactor: Any,
                     statePath: str) -> Any:
        """
        The registry sync with etcd: its client, the snapshot beside the
        state file, and this balancer's identity.
        """
        from . import __version__
        from .cluster import EtcdClient, Identity, RegistrySync, SnapshotFile, defaultName, tlsPolicy

        client = EtcdClient(
            reactor, cluster.etcd, username=cluster.username, password=cluster.password,
            contextFactory=None if cluster.tls is None else tlsPolicy(cluster.tls))
        snapshot = SnapshotFile(statePath.removesuffix(".json") + ".registry.json")
        identity = Identity(self.instanceName or defaultName(),
                            self.loadBalancer.config.admin or "", __version__)

        def fatal(message: str) -> None:
            RegistrySync.log.critical("{message}", message=message)
            if reactor.running:
                # twistd has no exit status of its own to give: a balancer
                # that could not start exits 1, so that a supervisor sees
                # the failure.
                reactor.addSystemEventTrigger("after", "shutdown", _exitFailed)
                reactor.stop()

        return RegistrySync(client, cluster.prefix, live, reactor, snapshot, identity,
                            fatal=fatal)


def _exitFailed() -> None:
    """
    End the process with status 1, once the reactor has shut down.
    """
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)

