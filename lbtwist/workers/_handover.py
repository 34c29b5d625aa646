"""
The master re-executing itself (HAProxy's master re-exec): what one image of
the master hands the next across C{os.execve}, and when it must.

An upgrade that changes the master itself (its code on disk, or a setting
only the master runs: C{admin}, C{state}, C{status-interval}, C{resolvers},
C{cluster}, a pool's C{discovery} or C{protocol}, the number of C{workers}) cannot be done by new
workers alone.  The master checks the code and file now on disk in a child
process (L{lbtwist.check}), then replaces its own image, same PID, same
arguments: the listening sockets, the admin API's socket and each worker's
control channel and output pipes stay open across the exec, described in
one environment variable (L{Handover}).  The new image adopts them: the
old workers serve on, never seeing their master gone, until the new
image's workers serve and it retires them.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any

import attrs

# The environment variable that carries the hand-over into the new image.
HANDOVER_VARIABLE = "LBTWIST_HANDOVER"

# What a master runs itself, which new workers cannot change: the keys a
# reload lists as needing a restart (see L{lbtwist.diff.runnable}).
MASTER_KEYS = ("admin", "state", "status-interval", "resolvers", "workers", "master",
               "worker-watchdog", "cluster")
# A pool's DNS discovery runs in the master too, and its protocol decides
# its backends' health checks (a reload keeps them as they run).
MASTER_POOL_KEYS = ("discovery", "protocol")
CODE = "code"
# The signals a master handles (reload, upgrade, stop, log rotation): held
# across the exec, and until the new image handles them, where each would
# otherwise find its default action, which ends the process.
HELD_SIGNALS = frozenset({signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1,
                          signal.SIGUSR2})


def masterChanges(restartNeeded: Iterable[str], codeChanged: bool) -> list[str]:
    """
    Why the master must re-execute itself to apply an upgrade: the code on
    disk differs from the code it runs (C{"code"}), and the settings of
    C{restartNeeded} (what a reload of the file could not apply) that the
    master itself runs.  Nothing: new workers apply the rest.
    """
    reasons = [CODE] if codeChanged else []
    for key in restartNeeded:
        if key in MASTER_KEYS or (key.startswith("pools.")
                                  and key.rpartition(".")[2] in MASTER_POOL_KEYS):
            reasons.append(key)
    return reasons


def codeFingerprint(root: str | None = None) -> str:
    """
    A cheap fingerprint of the lbtwist code under C{root} (default: this
    package's): each source or static file's path, size and modification
    time, hashed.  Compiled files are left out (importing the code writes
    them).
    """
    if root is None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    seen: list[tuple[str, int, int]] = []
    for directory, subdirectories, files in os.walk(root):
        subdirectories[:] = sorted(d for d in subdirectories if d != "__pycache__")
        for name in sorted(files):
            if name.endswith((".pyc", ".pyo")):
                continue
            path = os.path.join(directory, name)
            try:
                info = os.stat(path)
            except OSError:
                continue
            seen.append((os.path.relpath(path, root), info.st_size, info.st_mtime_ns))
    return hashlib.sha256(repr(seen).encode()).hexdigest()


@attrs.frozen
class InheritedSocket:
    """
    A listening socket the previous image of the master held.

    @ivar name: the listener's name (C{"admin"} for the admin API's).
    @ivar endpoint: the endpoint string it was bound for.
    @ivar fd: its file descriptor.
    @ivar family: its address family.
    """

    name: str
    endpoint: str
    fd: int
    family: int


@attrs.frozen
class InheritedWorker:
    """
    A worker the previous image of the master ran: it serves on until the
    new image's workers do.

    @ivar index: its number in the group.
    @ivar generation: its generation.
    @ivar pid: its process ID (still this process's child).
    @ivar control: the master's end of its control channel.
    @ivar output: the read ends of its output pipes, by the worker's file
        descriptor number (1, 2).
    @ivar restarts: how many times a worker of its number was restarted.
    @ivar retiring: it was told to retire already (an older generation).
    """

    index: int
    generation: int
    pid: int
    control: int
    output: Mapping[int, int]
    restarts: int = 0
    retiring: bool = False


@attrs.frozen
class Handover:
    """
    What one image of the master gives the next.

    @ivar generation: the generation of workers the previous image ran (the
        new image starts the next).
    @ivar listeners: the listening sockets of the listeners to serve.
    @ivar admin: the admin API's listening socket, if it listened.
    @ivar workers: the workers serving.
    @ivar reads: how many times the configuration file was read so far:
        the new image counts on from there, so that the old workers take
        its first reading as a new one.
    @ivar health: what the health checks had found (C{"up"} or
        C{"down"}), by backend name by pool: the new image starts from it,
        not from C{unknown}.
    @ivar pid: the process ID of the master that wrote it, which is the
        new image's (an exec keeps it): any other process that finds it in
        its environment (inherited, or set by hand) must not take the file
        descriptors it names for its own.
    """

    generation: int
    listeners: tuple[InheritedSocket, ...] = ()
    admin: InheritedSocket | None = None
    workers: tuple[InheritedWorker, ...] = ()
    reads: int = 0
    health: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict)
    pid: int = 0

    def descriptors(self) -> list[int]:
        """
        Every file descriptor this hand-over names (each must stay open
        across the exec).
        """
        fds = [s.fd for s in self.listeners]
        if self.admin is not None:
            fds.append(self.admin.fd)
        for worker in self.workers:
            fds.append(worker.control)
            fds.extend(worker.output.values())
        return fds

    def socketsFor(self, listeners: Iterable[Any]) -> dict[str, tuple[int, int]]:
        """
        The sockets of C{listeners} (each with its C{name} and C{endpoint})
        as L{lbtwist.service.LoadBalancer} adopts them: C{(file descriptor,
        address family)} by listener name, for those of the same name and
        endpoint here.  The other sockets here are closed.
        """
        wanted = {(x.name, x.endpoint) for x in listeners}
        sockets = {}
        for s in self.listeners:
            if (s.name, s.endpoint) in wanted:
                sockets[s.name] = (s.fd, s.family)
            else:
                os.close(s.fd)
        return sockets

    def toJSON(self) -> str:
        """
        This hand-over as the environment variable's value.
        """
        def sock(s: InheritedSocket) -> dict[str, Any]:
            return {"name": s.name, "endpoint": s.endpoint, "fd": s.fd, "family": s.family}

        return json.dumps({
            "generation": self.generation,
            "pid": self.pid,
            "reads": self.reads,
            "health": {pool: dict(sorted(found.items()))
                       for pool, found in sorted(self.health.items())},
            "listeners": [sock(s) for s in self.listeners],
            "admin": None if self.admin is None else sock(self.admin),
            "workers": [{"index": w.index, "generation": w.generation, "pid": w.pid,
                         "control": w.control, "restarts": w.restarts,
                         "retiring": w.retiring,
                         "output": {str(k): v for k, v in sorted(w.output.items())}}
                        for w in self.workers],
        }, separators=(",", ":"))

    @classmethod
    def fromJSON(cls, text: str) -> Handover:
        """
        Read what L{toJSON} wrote.

        @raise ValueError: it is not a hand-over from a master.
        """
        def sock(data: Any) -> InheritedSocket:
            return InheritedSocket(_text(data["name"]), _text(data["endpoint"]),
                                   _fd(data["fd"]), _int(data["family"]))

        try:
            data = json.loads(text)
            admin = data["admin"]
            return cls(
                generation=_int(data["generation"]),
                pid=_int(data["pid"]),
                reads=_int(data.get("reads", 0)),
                health={_text(pool): {_text(name): _health(value)
                                      for name, value in found.items()}
                        for pool, found in data.get("health", {}).items()},
                listeners=tuple(sock(s) for s in data["listeners"]),
                admin=None if admin is None else sock(admin),
                workers=tuple(
                    InheritedWorker(
                        index=_int(w["index"]), generation=_int(w["generation"]),
                        pid=_int(w["pid"]), control=_fd(w["control"]),
                        restarts=_int(w.get("restarts", 0)),
                        retiring=_bool(w.get("retiring", False)),
                        output={int(k): _fd(v) for k, v in w["output"].items()})
                    for w in data["workers"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"{HANDOVER_VARIABLE}: not a hand-over from a master: "
                             f"{e!r}") from e


def _int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return value


def _health(value: Any) -> str:
    if value not in ("up", "down"):
        raise ValueError(f"expected up or down, got {value!r}")
    return str(value)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _fd(value: Any) -> int:
    number = _int(value)
    if number < 0:
        raise ValueError(f"expected a file descriptor, got {value!r}")
    return number


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {value!r}")
    return value


def takeHandover(environ: MutableMapping[str, str], pid: int | None = None) -> Handover | None:
    """
    The hand-over this image was started with, if any, taken out of
    C{environ} (the workers and the next exec never see it).

    @param pid: this process's ID (default: the real one).
    @raise ValueError: the variable is not a hand-over from a master, or
        one from another process than C{pid}: its descriptors are not
        this process's to adopt.
    """
    text = environ.pop(HANDOVER_VARIABLE, None)
    if text is None:
        return None
    handover = Handover.fromJSON(text)
    here = os.getpid() if pid is None else pid
    if handover.pid != here:
        raise ValueError(f"{HANDOVER_VARIABLE}: a hand-over to the master of pid {handover.pid}, "
                         f"not to this process (pid {here}): only a master re-executing "
                         f"itself sets it; unset it")
    return handover


def passedSockets(environ: Mapping[str, str]) -> dict[str, str]:
    """
    The variables that describe the sockets systemd passed this process
    (socket activation), as a process they are passed to again reads them
    (with its own C{LISTEN_PID}): Twisted removes C{LISTEN_FDS} and
    C{LISTEN_PID} once it has read them, leaving C{LISTEN_FDNAMES}, one
    name per socket.  Nothing if systemd passed none.
    """
    names = environ.get("LISTEN_FDNAMES")
    if not names:
        return {}
    return {"LISTEN_FDS": str(len(names.split(":"))), "LISTEN_FDNAMES": names}


@attrs.frozen
class MasterImage:
    """
    How to run this master's image again: what C{twistd lb} was started
    with.

    @ivar executable: the interpreter.
    @ivar argv: the interpreter's whole command line.
    @ivar options: the options of C{lb} (the pre-flight check parses them).
    @ivar pidfile: twistd's PID file, given up before the exec (the new
        image writes it again, the same PID in it), or L{None}.
    """

    executable: str
    argv: tuple[str, ...]
    options: tuple[str, ...]
    pidfile: str | None = None

    def checkCommand(self) -> list[str]:
        """
        The command that checks the code and configuration now on disk as
        this image would start with them (see L{lbtwist.check}).
        """
        return [self.executable, "-m", "lbtwist.check", *self.options]

    def execute(self, handover: Handover, environ: Mapping[str, str],
                execve: Callable[[str, list[str], dict[str, str]], None] = os.execve) -> None:
        """
        Replace this process's image with a new one, same PID, given
        C{handover}: its file descriptors are left open across the exec,
        and L{HELD_SIGNALS} blocked (a signal mask survives an exec: the
        new image receives them once it handles them, see
        L{releaseSignals}).  Returns only if the exec failed.

        @raise OSError: the exec failed (the PID file is written again, the
            descriptors are closed on the next exec again).
        """
        fds = handover.descriptors()
        environment = {**environ, HANDOVER_VARIABLE: handover.toJSON()}
        passed = passedSockets(environ)
        if passed:
            # The new image checks its systemd: endpoints' names as a start
            # does (it adopts the sockets from the hand-over).
            environment.update(passed, LISTEN_PID=str(os.getpid()))
        for fd in fds:
            os.set_inheritable(fd, True)
        if self.pidfile:
            # The new image's twistd refuses to start beside a PID file
            # naming a live process: this one.
            try:
                os.remove(self.pidfile)
            except OSError:
                pass
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            if stream is not None:
                stream.flush()
        held = signal.pthread_sigmask(signal.SIG_BLOCK, HELD_SIGNALS)
        try:
            execve(self.executable, list(self.argv), environment)
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            for fd in fds:
                os.set_inheritable(fd, False)
            if self.pidfile:
                with open(self.pidfile, "w") as f:
                    f.write(f"{os.getpid()}\n")
            raise


def releaseSignals(reactor: Any) -> None:
    """
    Unblock L{HELD_SIGNALS} on the reactor's first turn, once every
    service has started and installed its handlers: in a master's new
    image (see L{MasterImage.execute}), and in a worker, which inherits
    the mask when that image spawns it.  One received meanwhile is
    handled then.
    """
    reactor.callLater(0, signal.pthread_sigmask, signal.SIG_UNBLOCK, HELD_SIGNALS)
