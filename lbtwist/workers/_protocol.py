"""
The control channel between the master and its workers: AMP commands over
a socket pair, each carrying JSON.

Master to worker: L{ApplyRegistry} (the whole registry: the configuration
text, the operator's overrides, health and discovered backends, with a
revision number; answered once applied), L{CollectStats} (the worker's
counters), L{Retire} (stop accepting, finish in-flight work within the
grace, exit) and L{PauseListeners} and L{ResumeListeners} (an upgrade
moving listeners).  Worker to master: L{Ready} (serving), L{ReportHealth} (a
backend the worker saw fail, for the master to decide on) and L{Heartbeat}
(its reactor runs; see L{lbtwist.workers._watchdog}).
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.protocol import Factory
from twisted.protocols import amp

# AMP caps one value at 65,535 bytes: longer JSON goes in numbered parts.
_PART = 60_000


class JSON(amp.Argument):
    """
    Any JSON value, split over as many AMP keys as it needs (a large
    configuration file does not fit in one).
    """

    def toBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any],
              proto: Any) -> None:
        """
        Put C{objects[name]} as JSON in C{name}, C{name.1}, C{name.2}...
        """
        data = json.dumps(objects[name.decode()], separators=(",", ":")).encode()
        parts = [data[i:i + _PART] for i in range(0, len(data), _PART)] or [b""]
        strings[name] = parts[0]
        for index, part in enumerate(parts[1:], 1):
            strings[name + b".%d" % index] = part

    def fromBox(self, name: bytes, strings: dict[bytes, bytes], objects: dict[str, Any],
                proto: Any) -> None:
        """
        Read back what L{toBox} wrote.
        """
        parts = [strings[name]]
        index = 1
        while name + b".%d" % index in strings:
            parts.append(strings[name + b".%d" % index])
            index += 1
        objects[name.decode()] = json.loads(b"".join(parts))


class ApplyRegistry(amp.Command):
    """
    Master to worker: run with this registry (see
    L{lbtwist.workers._registry}); answered once it is applied.
    """

    arguments = [(b"revision", amp.Integer()), (b"registry", JSON())]
    response = [(b"revision", amp.Integer())]
    requiresAnswer = True


class CollectStats(amp.Command):
    """
    Master to worker: the worker's counters, by pool, backend and listener.
    """

    arguments = []
    response = [(b"stats", JSON())]


class Retire(amp.Command):
    """
    Master to worker: stop accepting now (a new generation serves the
    sockets), let in-flight requests and tunnels finish within C{grace}
    seconds, then exit.
    """

    arguments = [(b"grace", amp.Float())]
    response = []


class PauseListeners(amp.Command):
    """
    Master to worker: stop accepting on the listeners C{names}, their
    sockets kept (an upgrade moves them to overlapping addresses: see
    L{lbtwist.workers._master.WorkerGroup._move}); answered once done.
    """

    arguments = [(b"names", amp.ListOf(amp.Unicode()))]
    response = []


class ResumeListeners(amp.Command):
    """
    Master to worker: accept again on the listeners C{names} (the move
    was not made).
    """

    arguments = [(b"names", amp.ListOf(amp.Unicode()))]
    response = []


class ReopenLogs(amp.Command):
    """
    Master to worker: open the access-log files again (C{SIGHUP}: a
    rotation renamed them); the workers are the ones writing them.
    """

    arguments = []
    response = []


class Ready(amp.Command):
    """
    Worker to master: the worker has applied its first registry and
    accepts on every listener.
    """

    arguments = [(b"pid", amp.Integer())]
    response = []


class ReportHealth(amp.Command):
    """
    Worker to master: passive health checks in the worker marked a
    backend down (C{reason} says why); the master decides for everyone.
    """

    arguments = [(b"pool", amp.Unicode()), (b"backend", amp.Unicode()),
                 (b"reason", amp.Unicode())]
    response = []


class Heartbeat(amp.Command):
    """
    Worker to master, every few hundred milliseconds: its reactor runs.
    Not answered: it costs one small write a beat.
    """

    arguments = []
    response = []
    requiresAnswer = False


class Channel(amp.AMP):
    """
    An end of the control channel: AMP, without AMP's log lines at
    connection and disconnection (the master logs the workers' lives).
    """

    def makeConnection(self, transport: Any) -> None:
        """
        Start talking over C{transport}.
        """
        amp.BinaryBoxProtocol.makeConnection(self, transport)

    def connectionLost(self, reason: Any = None) -> None:
        """
        The other end is gone.
        """
        amp.BinaryBoxProtocol.connectionLost(self, reason)
        self.transport = None


class GivenProtocol(Factory):
    """
    Builds the one protocol it was given: the end of a control channel,
    made before its socket is adopted.
    """

    noisy = False

    def __init__(self, given: amp.AMP) -> None:
        self.given = given

    def buildProtocol(self, addr: Any) -> amp.AMP:
        """
        The protocol given.
        """
        return self.given
