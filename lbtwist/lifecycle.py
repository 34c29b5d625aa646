"""
The balancer's life as signals drive it: reload on C{SIGHUP}
(L{ReloadOnSignal}), and the graceful stop on C{SIGTERM} (L{GracefulStop}),
which lets in-flight connections and requests finish within the grace; and
what it tells systemd (L{ReadyNotice}).
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ReactorNotRunning
from twisted.logger import Logger

from .reload import UPGRADES_NEED_WORKERS, LiveConfig
from .wording import counted

SignalHandler = Callable[[int, Any], None]


class SignalHandlers:
    """
    The handlers of signals in one process, any number per signal: one
    real handler per signal calls each in the order they were added.  So
    two balancers embedded in one process, each asking for signals, both
    reload on C{SIGHUP}, and either may stop first.

    @ivar installHandler: installs a signal's real handler and returns the
        one before it (L{signal.signal}, or a test's).
    """

    def __init__(self, installHandler: Callable[[int, Any], Any] = signal.signal) -> None:
        self.installHandler = installHandler
        self._handlers: dict[int, list[SignalHandler]] = {}
        self._previous: dict[int, Any] = {}

    def add(self, signum: int, handler: SignalHandler) -> None:
        """
        Call C{handler(signum, frame)} on C{signum}, after those added before.
        """
        handlers = self._handlers.setdefault(signum, [])
        if not handlers:
            self._previous[signum] = self.installHandler(signum, self._dispatch)
        handlers.append(handler)

    def remove(self, signum: int, handler: SignalHandler) -> None:
        """
        Stop calling C{handler} on C{signum}; once none is left, the real
        handler is the one there was before the first was added.
        """
        handlers = self._handlers.get(signum, [])
        if handler in handlers:
            handlers.remove(handler)
            if not handlers:
                previous = self._previous.pop(signum)
                self.installHandler(signum, signal.SIG_DFL if previous is None else previous)

    def _dispatch(self, signum: int, frame: Any) -> None:
        for handler in list(self._handlers.get(signum, ())):
            handler(signum, frame)


#: This process's signal handlers, which every L{ReloadOnSignal} shares
#: unless given its own way to install them.
PROCESS_SIGNALS = SignalHandlers()


def reactorShuttingDown(reactor: Any) -> bool:
    """
    Whether C{reactor} is shutting down: stopped (by a signal or anyone's
    C{reactor.stop()}), its shutdown not over yet.  (Twisted's reactors say
    so only in C{_stopped}, true from C{stop()} on, and before the first
    run, when C{running} is false.)
    """
    return bool(getattr(reactor, "running", False) and getattr(reactor, "_stopped", False))


class ReloadOnSignal(Service):
    """
    Reloads the configuration on C{SIGHUP}, and stops gracefully on
    C{SIGTERM}.

    The reactor's own C{SIGTERM} handler makes twistd end by killing itself
    with the signal; ours stops the reactor the same way (the services, and
    L{GracefulStop}, get to finish) but lets the process exit 0, since a
    graceful stop is a normal end.  It is installed once the reactor runs,
    after the reactor's own.

    On C{SIGUSR2} it starts an upgrade (see L{lbtwist.workers}), given
    C{upgrade}; without one (a single process) it says that upgrades need
    worker processes, rather than die of the signal.

    Several in one process (balancers embedded side by side) each get
    every signal: they share the process's L{SignalHandlers}.

    @ivar signals: where its handlers are added (L{PROCESS_SIGNALS}, unless
        an C{installHandler} other than L{signal.signal} is injected).
    """

    log = Logger()

    def __init__(
        self,
        live: LiveConfig,
        reactor: Any,
        installHandler: Callable[[int, Any], Any] = signal.signal,
        reopenLogs: Callable[[], None] | None = None,
        upgrade: Callable[[], Deferred[Any]] | None = None,
        signals: SignalHandlers | None = None,
    ) -> None:
        """
        @param installHandler: installs a signal handler and returns the
            old one (L{signal.signal} by default); another gives this
            service handlers of its own, unless C{signals} is given.
        @param signals: the handlers to share with other services.
        """
        self.upgrade = upgrade
        self.live = live
        self.reactor = reactor
        if signals is None:
            signals = (PROCESS_SIGNALS if installHandler is signal.signal
                       else SignalHandlers(installHandler))
        self.signals = signals
        self.reopenLogs = reopenLogs
        self._added: list[tuple[int, SignalHandler]] = []
        self._stopping = False

    def startService(self) -> None:
        super().startService()
        self._install(signal.SIGHUP, self._hangup)
        self._install(signal.SIGUSR2, self._user2)
        self.reactor.callWhenRunning(self._installTerm)

    def _installTerm(self) -> None:
        if self.running:
            self._install(signal.SIGTERM, self._terminate)

    def _install(self, signum: int, handler: SignalHandler) -> None:
        self.signals.add(signum, handler)
        self._added.append((signum, handler))

    def stopService(self) -> Deferred[None]:
        super().stopService()
        if self._stopping or reactorShuttingDown(self.reactor):
            # The stop SIGTERM (or SIGINT, or anyone's reactor.stop())
            # began goes on for up to the grace: the old handlers would
            # turn a second SIGTERM into a traceback and an exit by the
            # signal (Twisted's stops a stopping reactor), and a SIGHUP
            # into the process's death (the default's), clients and all.
            # Ours only log until the reactor has shut down.
            self._stopping = True
            self.reactor.addSystemEventTrigger("after", "shutdown", self._restore)
        else:
            self._restore()
        return succeed(None)

    def _restore(self) -> None:
        for signum, handler in self._added:
            self.signals.remove(signum, handler)
        self._added.clear()

    def _hangup(self, signum: int, frame: Any) -> None:
        # A signal handler may run between any two bytecodes of the reactor:
        # only hand the work to the reactor's thread.
        self.reactor.callFromThread(self._reload)

    def _reload(self) -> None:
        if self._stopping:
            self.log.info("SIGHUP received while stopping: no reload")
            if self.reopenLogs is not None:
                self.reopenLogs()
            return
        self.log.info("SIGHUP received: reloading the configuration")
        if self.reopenLogs is not None:
            self.reopenLogs()
        self.live.reload()

    def _user2(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._upgrade)

    def _upgrade(self) -> None:
        if self._stopping:
            # A new generation (or the master's re-execution) would turn
            # the stop into a restart.
            self.log.info("SIGUSR2 received while stopping: no upgrade")
            return
        if self.upgrade is None:
            self.log.warn(  # noqa: G010
                "SIGUSR2 received, but {why}; nothing done", why=UPGRADES_NEED_WORKERS)
            return
        self.log.info("SIGUSR2 received: upgrading the workers")
        # The group logs why an upgrade failed.
        self.upgrade().addErrback(lambda f: None)

    def _terminate(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._stop)

    def _stop(self) -> None:
        if self._stopping:
            self.log.info("SIGTERM received again: the graceful stop goes on")
            return
        self._stopping = True
        self.log.info("SIGTERM received: stopping gracefully")
        try:
            self.reactor.stop()
        except ReactorNotRunning:
            # Another balancer in this process got the signal first.
            pass


class GracefulStop(Service):
    """
    On stop (C{SIGTERM}), waits for in-flight connections and requests to
    finish, up to C{grace} seconds, then closes what is left.  The listeners
    stop accepting at the same time, as their own services stop.
    """

    log = Logger()

    def __init__(self, live: LiveConfig, clock: Any, grace: float,
                 poll: float = 0.05, softStops: Iterable[Callable[[], None]] = ()) -> None:
        self.live = live
        self.clock = clock
        self.grace = grace
        self.poll = poll
        self.softStops = list(softStops)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for softStop in self.softStops:
            softStop()
        done: Deferred[None] = Deferred()
        deadline = self.clock.seconds() + self.grace
        left = self.live.inFlight()
        if left:
            self.log.info(
                "stopping: up to {grace}s for {activeCount} to finish",
                active=left, grace=self.grace, activeCount=counted(left, "connection"),
            )

        def check() -> None:
            if self.live.inFlight() and self.clock.seconds() < deadline:
                self.clock.callLater(self.poll, check)
                return
            closed = self.live.closeEverything()
            if closed:
                self.log.warn(  # noqa: G010
                    "stopping: closed {closedCount} still open after "
                    "the {grace}s grace period", closed=closed, grace=self.grace,
                    closedCount=counted(closed, "connection"),
                )
            done.callback(None)

        check()
        return done


def sdNotify(message: str, environ: Mapping[str, str]) -> bool:
    """
    Send C{message} (C{READY=1}, C{STOPPING=1}...) to systemd's notification
    socket, as C{sd_notify(3)} does, if C{NOTIFY_SOCKET} names one.

    @return: whether it was sent.
    """
    address = environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        # An abstract socket: its name begins with a NUL byte.
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.connect(address)
            s.sendall(message.encode())
    except OSError:
        return False
    return True


class ReadyNotice(Service):
    """
    Tells systemd (C{Type=notify}) when the balancer serves: C{READY=1}
    once the reactor runs and C{ready} fires (with worker processes, once
    every one of them accepts), and C{STOPPING=1} when it stops.  Nothing
    is sent without C{NOTIFY_SOCKET}.
    """

    log = Logger()

    def __init__(self, reactor: Any, ready: Callable[[], Deferred[None]],
                 environ: Mapping[str, str] | None = None) -> None:
        self.reactor = reactor
        self.ready = ready
        self.environ = os.environ if environ is None else environ

    def startService(self) -> None:
        super().startService()
        if self.environ.get("NOTIFY_SOCKET"):
            self.reactor.callWhenRunning(
                lambda: self.ready().addCallback(lambda _: self._notify("READY=1")))

    def _notify(self, message: str) -> None:
        if self.running and sdNotify(f"{message}\nMAINPID={os.getpid()}", self.environ):
            self.log.info("told systemd: {message}", message=message)

    def stopService(self) -> Deferred[None]:
        if self.running and self.environ.get("NOTIFY_SOCKET"):
            sdNotify("STOPPING=1", self.environ)
        super().stopService()
        return succeed(None)
