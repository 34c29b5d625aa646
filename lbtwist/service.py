"""
The balancer as a Twisted service: pools, listeners, health monitors and
the status reporter, composed from one L{Config}.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any, Callable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import maybeDeferred, succeed
from twisted.internet.endpoints import AdoptedStreamServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from .accesslog import AccessLogFile, IAccessLog, poolView
from .config import AccessLogSink, Config, ListenerConfig, PoolConfig
from .connect import BackendConnector
from .dial import Dialler
from .discovery import PoolDiscovery, makeResolver
from .endpoints import parseEndpoint
from .extend import ACCESS_LOGS
from .health import HealthMonitor, Probes
from .listener import ConnectionLimit
from .pool import Backend, BackendPool
from .reporter import StatusReporter
from .routeconfig import unmatchedPool
from .tcp import TCPProxyFactory, describe
from .tlslisten import ListenerCertificates, TLSListeningReactor, listenerReactor
from .wording import counted

FactoryBuilder = Callable[["LoadBalancer", ListenerConfig, BackendPool], ServerFactory]


def _tcpFactory(lb: LoadBalancer, listener: ListenerConfig, pool: BackendPool) -> ServerFactory:
    factory = TCPProxyFactory(
        pool,
        lb.reactor,
        BackendConnector(pool, lb.reactor, lb.dialler),
        pool.config.timeouts.idle,
        pools=lb.pools,
    )
    factory.setClientTimeouts(listener)
    if listener.routes or listener.defaultRoute is not None:
        factory.setRoutes(listener.routes, listener.defaultRoute)
    return factory


def _httpFactory(lb: LoadBalancer, listener: ListenerConfig, pool: BackendPool) -> ServerFactory:
    from .http import HTTPProxyFactory

    return HTTPProxyFactory(pool, lb.reactor, lb.dialler, listener, lb.pools)


MODES: dict[str, FactoryBuilder] = {"tcp": _tcpFactory, "http": _httpFactory}


LISTEN_BACKLOG = 1024


def withBacklog(endpoint: str) -> str:
    """
    Give a listener endpoint a deep accept queue unless it names its own.

    Twisted's default of 50 overflows when clients connect faster than one
    reactor pass accepts them, and the kernel then drops SYNs, which costs
    those clients a one-second retransmit.  HAProxy and nginx listen with
    deeper queues for the same reason.
    """
    parsed = parseEndpoint(endpoint, True)
    if parsed.kind == "systemd":
        # systemd listened already, with the socket unit's Backlog=.
        return endpoint
    return parsed.withOption("backlog", str(LISTEN_BACKLOG))


# What twistd's daemon parent shows of a start failure: it reads 100 bytes
# from the status pipe, "1 " and the exception's line, class name included.
STATUS_PIPE_BYTES = 100


class CannotStart(SystemExit, Exception):
    """
    The balancer cannot start, for the reason given.

    An ordinary exception, so that twistd reports it to the process that
    launched a daemon (which waits for a word from it) and removes the pid
    file; and a L{SystemExit}, so that in the foreground Python ends with
    its message alone, not with a traceback.

    Its C{str} is the short form, which twistd writes to the daemon's parent
    through a pipe that carries 100 bytes; its C{code} is the whole line,
    which is what Python prints on exit.
    """

    def __init__(self, line: str, short: str | None = None) -> None:
        super().__init__(short or line)
        self.code = line


def shortest(candidates: list[str], limit: int) -> str:
    """
    The first of C{candidates} (longest and most telling first) whose ASCII
    form fits in C{limit} bytes; else the last one cut to fit, marked so.
    """
    for text in candidates:
        if len(text.encode("ascii", "backslashreplace")) <= limit:
            return text
    cut = candidates[-1].encode("ascii", "backslashreplace")[: limit - 3]
    return cut.decode("ascii") + "..."


def cannotListen(what: str, endpointText: str, error: CannotListenError) -> CannotStart:
    """
    The start failure of a port that could not listen: the whole line names
    the endpoint string, the short one only the address, so that it fits in
    what twistd's daemon parent shows.
    """
    reason = getattr(error.socketError, "strerror", None) or str(error.socketError)
    address = f"{error.interface or '*'}:{error.port}"
    line = f"{what} cannot listen on {endpointText}: {reason}"
    room = STATUS_PIPE_BYTES - len(f"1 {CannotStart.__module__}.{CannotStart.__qualname__}: ")
    short = shortest(
        [line, f"{what} cannot listen on {address}: {reason}",
         f"cannot listen on {address}: {reason}"],
        room,
    )
    return CannotStart(line, short)


class AllOrNothingService(MultiService):
    """
    Services that start together or not at all: when a child's start
    raises, the children already started (the one that raised too) are
    stopped, in reverse order, and the error is raised, so that the
    application can try again or exit cleanly.  The listening ports they
    opened are closed by the time the reactor has turned once.
    """

    log = Logger()

    def startService(self) -> None:
        try:
            super().startService()
        except BaseException:
            self._undoStart()
            raise

    def _undoStart(self) -> None:
        """
        Stop what a failed start started; a stop that fails is logged, not
        raised over the start's error.
        """
        for service in reversed(list(self)):
            if service.running:
                maybeDeferred(service.stopService).addErrback(self._stopFailed, service.name)
        Service.stopService(self)

    def _stopFailed(self, failure: Failure, name: str | None) -> None:
        self.log.failure("stopping {service} after a failed start", failure, service=name)


class PortService(StreamServerEndpointService):
    """
    Listens on an endpoint; failing to listen stops the process from
    starting, with one line that says what could not listen where and why.
    """

    log = Logger()

    def __init__(self, what: str, endpointText: str, endpoint: Any, factory: Any) -> None:
        super().__init__(endpoint, factory)
        self.what = what
        self.endpointText = endpointText
        self._raiseSynchronously = True

    def privilegedStartService(self) -> None:
        """
        Listen now; a port that cannot listen is raised as L{CannotStart}.
        Its one line is the process's last word: twistd sends standard
        error to its log (the terminal, or a daemon's log file), and a
        daemon's parent prints the short form.
        """
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            raise cannotListen(self.what, self.endpointText, e) from None

    def stopService(self) -> Any:
        """
        Stop listening; a later start listens again (Twisted's service
        would not), so that a balancer whose start failed can be started
        once the cause is gone.
        """
        if self._waitingForPort is None:
            # Stopped already (or never started): nothing listens.
            Service.stopService(self)
            return succeed(None)
        stopped = super().stopService()
        self._waitingForPort = None
        self._raiseSynchronously = True
        return stopped


def addressScope(host: str | None) -> str:
    """
    Who can reach a listener on C{host}, for the start-up log: a wildcard
    address serves every interface, a loopback one this machine only.  It
    comes before the address, which stays last on the line for the tools
    that read the port from there.
    """
    if host in ("0.0.0.0", "::", ""):
        return "all interfaces, "
    if host is not None and (host.startswith("127.") or host == "::1"):
        return "loopback only, "
    return ""


class ListenerService(PortService):
    """
    A listener of the balancer.

    @ivar port: the listening port once started (L{None} before, or if the
        endpoint gave no port).
    """

    port: Any = None

    def __init__(self, listener: ListenerConfig, endpoint: Any, factory: ServerFactory) -> None:
        super().__init__(f"listener {listener.name}", listener.endpoint, endpoint, factory)
        self.listener = listener
        self.setName(f"listener:{listener.name}")

    def startService(self) -> None:
        super().startService()
        port = self._waitingForPort.result if self._waitingForPort is not None else None
        self.port = port
        address = port.getHost() if port is not None and hasattr(port, "getHost") else None
        limit = getattr(self.factory, "limit", None)
        if limit is not None and hasattr(port, "stopReading"):
            limit.addPort(port)
            self._limitedPort = port
        listener = self.listener
        pool = unmatchedPool(listener.pool, listener.routes, listener.defaultRoute)
        self.log.info(
            "listener {listener} ({mode} mode, {sendsTo}) accepting on {scope}{address}",
            listener=listener.name,
            mode=listener.mode,
            sendsTo="routes only" if pool is None else f"pool {pool}",
            pool=pool,
            address=describe(address) if address is not None else self.listener.endpoint,
            scope=addressScope(getattr(address, "host", None)),
        )

    def pause(self) -> None:
        """
        Stop accepting, the socket kept open (the global maxconn forgets
        this port until L{resume}).
        """
        port = getattr(self, "_limitedPort", None)
        limit = getattr(self.factory, "limit", None)
        if port is not None and limit is not None:
            limit.removePort(port)
        if hasattr(self.port, "stopReading"):
            self.port.stopReading()

    def resume(self) -> None:
        """
        Accept again, after L{pause}.
        """
        port = getattr(self, "_limitedPort", None)
        limit = getattr(self.factory, "limit", None)
        if hasattr(self.port, "startReading"):
            self.port.startReading()
        if port is not None and limit is not None:
            limit.addPort(port)

    def stopService(self) -> Any:
        """
        Stop listening; the global maxconn forgets this port.
        """
        port = getattr(self, "_limitedPort", None)
        limit = getattr(self.factory, "limit", None)
        if port is not None and limit is not None:
            limit.removePort(port)
        return super().stopService()


# What is logged when a sink's optional method raises, by method.
_SINK_FAILED = {
    "reopen": "cannot reopen access-log sink {sink}: {error}",
    "close": "cannot close access-log sink {sink}: {error}",
}


class LoadBalancer(AllOrNothingService):
    """
    Everything one configuration describes, as a tree of services; a
    start that raises leaves none of them started.

    @ivar pools: the backend pools, by name.
    @ivar factories: each listener's protocol factory, by listener name.
    @ivar limit: the global maxconn over every listener, if set.
    @ivar accessFiles: the access-log files, by path.
    """

    log = Logger()

    def __init__(
        self,
        config: Config,
        reactor: Any,
        rng: random.Random | None = None,
        *,
        resolver: Any = None,
        drain: Callable[[str, Backend], None] | None = None,
        adopted: Mapping[str, tuple[int, int]] | None = None,
        monitors: bool = True,
    ) -> None:
        """
        @param resolver: the C{twisted.names} resolver DNS discovery asks
            (default: one for the configuration's C{resolvers}).
        @param drain: given each backend discovery finds gone, once removed
            from its pool (see L{lbtwist.discovery.PoolDiscovery}).
        @param adopted: listening sockets to serve instead of binding, as
            C{(file descriptor, address family)} by listener name: a worker
            process (L{lbtwist.workers}) serves its master's sockets, and a
            master that re-executed itself takes its previous image's (the
            listeners not named are bound).
        @param monitors: run the health checks, DNS discovery and the status
            table in the log; a worker leaves them to its master, which
            tells it what they found and logs the totals.
        """
        super().__init__()
        self.config = config
        self.reactor = reactor
        self.dialler = Dialler(reactor)
        self._rng = rng
        self.pools = {p.name: BackendPool(p, rng, reactor.seconds) for p in config.pools}
        self.factories: dict[str, ServerFactory] = {}
        self.limit = ConnectionLimit(config.maxconn) if config.maxconn else None
        # Access-log sinks, one per sink and options (so one per file),
        # started before the listeners.
        self.accessLogs: dict[AccessLogSink, IAccessLog] = {}
        self.accessFiles: dict[str, AccessLogFile] = {}
        # Each pool's sink by pool name, which every listener reads: a
        # request is logged by the pool that served it.
        self.poolAccessLogs: dict[str, IAccessLog] = {}
        for p in config.pools:
            self._accessLog(p)
        # The certificates of each listener that terminates TLS, by name.
        self.certificates: dict[str, ListenerCertificates] = {}
        for index, listener in enumerate(config.listeners):
            pool = self.pools[listener.pool]
            factory = MODES[listener.mode](self, listener, pool)
            if self.limit is not None:
                factory.limit = self.limit  # type: ignore[attr-defined]
            factory.accessLogs = self.poolAccessLogs  # type: ignore[attr-defined]
            factory.alpn = tuple(p.encode("ascii") for p in listener.alpn)  # type: ignore[attr-defined]
            sink = pool.config.accessLogSink
            if sink is not None:
                factory.accessLog = self.accessLogs[sink]  # type: ignore[attr-defined]
            self.factories[listener.name] = factory
            # A TLS listener's endpoint is built with a reactor that wraps the
            # factory in lbtwist's TLS (see tlslisten), every other with the
            # reactor.
            endpointReactor = listenerReactor(reactor, listener, f"listeners[{index}]")
            if isinstance(endpointReactor, TLSListeningReactor):
                self.certificates[listener.name] = endpointReactor.certificates
            if adopted is not None and listener.name in adopted:
                fd, family = adopted[listener.name]
                endpoint: Any = AdoptedStreamServerEndpoint(endpointReactor, fd, family)
            else:
                endpoint = serverFromString(endpointReactor, withBacklog(listener.endpoint))
            ListenerService(listener, endpoint, factory).setServiceParent(self)
        for p in config.pools:
            self._warnUnverified(p)
        # Built on first use, from the factory each kind is registered with.
        self.probes = Probes(self.dialler)
        self.monitors: dict[str, HealthMonitor] = {}
        self.discoveries: dict[str, PoolDiscovery] = {}
        self._resolver = resolver
        self._drain = drain
        # A worker process probes nothing: its master does, for the group.
        self._probing = monitors
        for pool in self.pools.values():
            self._monitor(pool)
        self.reporter = StatusReporter(config.statusInterval, self.pools.values())
        self.reporter.clock = reactor
        if monitors:
            self.reporter.setServiceParent(self)

    def _accessLog(self, p: PoolConfig) -> None:
        """
        Build the access-log sink of C{p} (unless one with the same options
        is built already) from the factory registered under its name; one
        that is a service starts and stops with the balancer.
        """
        spec = p.accessLogSink
        if spec is None:
            return
        if spec in self.accessLogs:
            self.poolAccessLogs[p.name] = poolView(self.accessLogs[spec], p.name)
            return
        sink = self.accessLogs[spec] = ACCESS_LOGS[spec.name](dict(spec.options), self.reactor)
        self.poolAccessLogs[p.name] = poolView(sink, p.name)
        if IService.providedBy(sink):
            sink.setServiceParent(self)
        if isinstance(sink, AccessLogFile):
            self.accessFiles[sink.path] = sink

    def _closeAccessLog(self, spec: AccessLogSink | None) -> None:
        """
        Stop (if a service) and close (if it has C{close}, as the C{file}
        sink has) the access-log sink of C{spec}, a removed pool's, unless
        a pool left shares it (the removed pool's requests in flight look
        its sink up by name, and find none now).  What C{close} raises is
        logged.
        """
        if spec is None or any(p.config.accessLogSink == spec for p in self.pools.values()):
            return
        sink = self.accessLogs.pop(spec, None)
        if sink is None:
            return
        if isinstance(sink, AccessLogFile) and self.accessFiles.get(sink.path) is sink:
            del self.accessFiles[sink.path]
        if IService.providedBy(sink):
            # Stopping a service sink flushes it.
            sink.disownServiceParent()
        self._callSink(spec, sink, "close")

    def _warnUnverified(self, p: PoolConfig) -> None:
        """
        Say so when TLS to some of C{p}'s backends is not verified.
        """
        unverified = [b.name for b in p.backends if b.tls is not None and not b.tls.verify]
        if unverified or (p.tls is not None and not p.tls.verify):
            self.log.warn(
                "pool {pool}: TLS to {backends} is not verified (verify: false): "
                "whoever sits between lbtwist and them can read and change the traffic",
                pool=p.name, backends=", ".join(unverified) or "its discovered backends")

    def _monitor(self, pool: BackendPool) -> None:
        """
        Start checking C{pool}'s backends (now if the balancer is running,
        else when it starts), and discovering them if it says how; in a
        worker process, nothing (its master does both).
        """
        if not self._probing:
            return
        self.monitors[pool.name] = HealthMonitor(pool, self.probes, self.reactor)
        self.monitors[pool.name].setServiceParent(self)
        # After the monitor, so that it sees the first discovered backends.
        discovery = pool.config.discovery
        if discovery is not None:
            if self._resolver is None:
                self._resolver = makeResolver(self.config.resolvers, self.reactor)
            self.discoveries[pool.name] = PoolDiscovery(
                pool, discovery, self._resolver, self.reactor, self._drain)
            self.discoveries[pool.name].setServiceParent(self)

    def addPool(self, config: PoolConfig) -> BackendPool:
        """
        Add a pool at run time: routes may send to it at once; its health
        checks (and discovery) start now.

        @raise KeyError: there is a pool of that name already.
        """
        if config.name in self.pools:
            raise KeyError(config.name)
        self._warnUnverified(config)
        self._accessLog(config)
        pool = self.pools[config.name] = BackendPool(config, self._rng, self.reactor.seconds)
        self._monitor(pool)
        self.log.info("pool {pool} added with {backendCount}", pool=config.name,
                      backendCount=counted(len(pool), "backend"), count=len(pool))
        return pool

    def removePool(self, name: str) -> BackendPool:
        """
        Remove a pool no listener or route uses any more: its health checks
        and discovery stop and the listeners close their idle connections to
        it.  Its connections in flight are the caller's to drain.

        @raise KeyError: there is no pool of that name.
        """
        pool = self.pools.pop(name)
        self.poolAccessLogs.pop(name, None)
        self._closeAccessLog(pool.config.accessLogSink)
        for services in (self.monitors, self.discoveries):
            service = services.pop(name, None)
            if service is not None:
                service.disownServiceParent()
        for factory in self.factories.values():
            forget = getattr(factory, "forgetPool", None)
            if forget is not None:
                forget(name)
        self.log.info("pool {pool} removed", pool=name)
        return pool

    def reloadCertificates(self, config: Config) -> None:
        """
        Read every TLS listener's certificates again, for the handshakes to
        come (C{config} is the configuration now running); a listener whose
        new certificates cannot be served keeps its own, and says why.  The
        CA and client certificate files of TLS to backends are read again
        for the connections to come.
        """
        for listener in config.listeners:
            certificates = self.certificates.get(listener.name)
            if certificates is not None:
                certificates.reload(listener)
        self.dialler.forgetTLS()

    def reopenAccessLogs(self) -> None:
        """
        Reopen the access-log sinks that have a C{reopen} method (after a
        rotation renamed their files): the C{file} sink's, and any
        registered sink's that has one.  One that fails is logged, and the
        others are reopened all the same.
        """
        for spec, sink in self.accessLogs.items():
            self._callSink(spec, sink, "reopen")

    def _callSink(self, spec: AccessLogSink, sink: IAccessLog, method: str) -> None:
        """
        Call C{sink}'s optional C{method} (C{reopen}, C{close}), if it has
        one; what it raises is logged with the sink's name.
        """
        call = getattr(sink, method, None)
        if call is None:
            return
        try:
            call()
        except Exception as e:
            self.log.error(_SINK_FAILED[method], method=method,
                           sink=spec.name, error=f"{type(e).__name__}: {e}")
