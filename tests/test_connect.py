"""
The connect engine (L{lbtwist.connect}) with a caller's idle lookup
(C{reuse}): each backend chosen is looked up once before a connection is
dialled to it (the module's invariant 7), on the kept-alive fast path and
after a failed dial alike.
"""

from __future__ import annotations

import errno
from typing import Any, Callable

from twisted.internet.error import ConnectBindError, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import parseConfig
from lbtwist.connect import BackendConnector
from lbtwist.dial import BackendProtocol
from lbtwist.pool import Backend, BackendPool


class RecordingDialler:
    """
    A dialler that connects nothing: it records each dial (the endpoint,
    and what reports it failed), for the test to end.
    """

    def __init__(self) -> None:
        self.dials: list[tuple[str, Callable[[Failure], None]]] = []

    def dial(self, text: str, build: Callable[[], BackendProtocol], timeout: float,
             connected: Callable[[Any], None], failed: Callable[[Failure], None],
             tls: Any = None) -> Any:
        """
        Record the dial (its protocol built, as the real dialler does).
        """
        build()
        self.dials.append((text, failed))
        return self


class ReuseTests(SynchronousTestCase):
    """
    L{BackendConnector.connect} with C{reuse}, over two backends.
    """

    def setUp(self) -> None:
        data = {"listeners": [{"listen": "tcp:0", "mode": "http"}], "pools": {"web": {
            "policy": "roundrobin", "retries": 2,
            "backends": [{"name": "a", "endpoint": "tcp:host=10.0.0.1:port=80"},
                         {"name": "b", "endpoint": "tcp:host=10.0.0.2:port=80"}]}}}
        self.pool = BackendPool(parseConfig(data).pools[0])
        self.dialler = RecordingDialler()
        self.connector = BackendConnector(
            self.pool, MemoryReactorClock(), self.dialler)  # type: ignore[arg-type]
        self.lookedUp: list[str] = []
        self.joined: list[tuple[str, Any, int]] = []
        # What the lookup finds, by backend name.
        self.idle: dict[str, Any] = {}

    def reuse(self, backend: Backend) -> Any:
        """
        The idle lookup: records the backend, returns what L{idle} has.
        """
        self.lookedUp.append(backend.name)
        return self.idle.get(backend.name)

    def connect(self) -> Any:
        """
        Ask for a connection, with L{reuse}; the attempt.
        """
        return self.connector.connect(
            "client", None, lambda backend: BackendProtocol(),
            lambda backend, protocol, failures: self.joined.append(
                (backend.name, protocol, failures)),
            self.fail, reuse=self.reuse)

    def test_fastPath(self) -> None:
        """
        The first choice's idle connection is used: nothing is dialled.
        """
        self.idle = {"a": "idle-a", "b": "idle-b"}
        self.assertIsNone(self.connect())
        self.assertEqual(len(self.lookedUp), 1)
        self.assertEqual(self.dialler.dials, [])
        [(name, protocol, failures)] = self.joined
        self.assertEqual((protocol, failures), (f"idle-{name}", 0))

    def test_lookedUpAfterFailedDial(self) -> None:
        """
        The first choice had nothing idle and its dial failed: the next
        choice is looked up before any dial, and its connection (one made
        meanwhile) used; each backend was looked up once.
        """
        attempt = self.connect()
        self.assertIsNotNone(attempt)
        [first] = self.lookedUp
        self.assertEqual(len(self.dialler.dials), 1)
        other = "b" if first == "a" else "a"
        self.idle = {other: "shared"}
        self.dialler.dials[0][1](Failure(ConnectionRefusedError()))
        self.assertEqual(self.lookedUp, [first, other])
        self.assertEqual(len(self.dialler.dials), 1)
        self.assertEqual(self.joined, [(other, "shared", 1)])
        self.assertEqual({b.name: b.slots for b in self.pool}, {first: 0, other: 1})

    def test_balancerShortageNotCounted(self) -> None:
        """
        A dial that failed because the balancer had no file descriptor left
        (C{EMFILE}, as the dialler reports it) is not counted against the
        backend's passive health, which a refused one is; the client still
        gets its other tries.
        """
        gaveUp: list[Failure] = []
        self.connector.connect("client", None, lambda backend: BackendProtocol(),
                               lambda *joined: None, gaveUp.append, reuse=self.reuse)
        [first] = self.lookedUp
        self.dialler.dials[0][1](Failure(ConnectBindError(errno.EMFILE, "Too many open files")))
        self.assertEqual(len(self.dialler.dials), 2)
        second = self.lookedUp[1]
        self.dialler.dials[1][1](Failure(ConnectionRefusedError()))
        byName = {b.name: (b.failures, b.consecutiveFailures) for b in self.pool}
        self.assertEqual(byName[first], ({}, 0))
        self.assertEqual(byName[second], ({"refused": 1}, 1))
        self.assertEqual(len(gaveUp), 1)
