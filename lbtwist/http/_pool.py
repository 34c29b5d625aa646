"""
Idle backend connections kept for reuse, per backend.

Connections are reused last-in first-out, so a steady load keeps a few warm
connections busy and lets the rest age out.  One timer per pool (armed only
while there are idle connections) closes those idle longer than the idle
timeout; there is no timer per connection.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, Protocol

from ..config import KeepAlive
from ..passtime import passClock


class Reusable(Protocol):
    """
    What the pool needs of a backend connection.
    """

    idleSince: float
    lost: bool
    reusable: bool
    transport: Any


class IdleConnections:
    """
    Bounded idle connections, grouped by a key (a backend, and the PROXY
    header they were opened with, if any).

    @ivar reused: how many were taken from the pool.
    """

    def __init__(self, clock: Any, keepAlive: KeepAlive) -> None:
        self.clock = clock
        # (Idle since the reactor's pass: the idle timeout is exact to one.)
        self._passClock = passClock(clock)
        self.keepAlive = keepAlive
        self._idle: dict[Hashable, list[Reusable]] = {}
        self._timer: Any = None
        self.reused = 0
        self.closed = False

    def __len__(self) -> int:
        return sum(len(v) for v in self._idle.values())

    def take(self, key: Hashable, maxAge: float | None = None) -> Reusable | None:
        """
        The most recently used idle connection for C{key}, if any.

        @param maxAge: only one idle for less than this many seconds (the
            others stay pooled): for requests that may not be retried.
        """
        stack = self._idle.get(key)
        while stack:
            conn = stack[-1]
            if conn.lost or not conn.reusable:
                stack.pop()
                continue
            if maxAge is not None and self.clock.seconds() - conn.idleSince > maxAge:
                return None
            stack.pop()
            self.reused += 1
            return conn
        return None

    def put(self, key: Hashable, conn: Reusable) -> bool:
        """
        Keep C{conn} for reuse.

        @return: C{False} if the pool for C{key} is full (the caller closes it).
        """
        if self.closed:
            return False
        stack = self._idle.get(key)
        if stack is None:
            stack = self._idle[key] = []
        if len(stack) >= self.keepAlive.idlePool:
            return False
        conn.idleSince = self._passClock.polledAt
        stack.append(conn)
        if self._timer is None:
            self._timer = self.clock.callLater(self.keepAlive.idleTimeout, self._sweep)
        return True

    def discard(self, key: Hashable, conn: Reusable) -> None:
        """
        Forget C{conn}, which closed while idle.
        """
        stack = self._idle.get(key)
        if stack and conn in stack:
            stack.remove(conn)

    def _sweep(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        timeout = self.keepAlive.idleTimeout
        oldest = now
        for key, stack in list(self._idle.items()):
            keep = []
            for conn in stack:
                if conn.lost:
                    continue
                if now - conn.idleSince >= timeout:
                    conn.transport.loseConnection()
                else:
                    keep.append(conn)
                    oldest = min(oldest, conn.idleSince)
            if keep:
                self._idle[key] = keep
            else:
                del self._idle[key]
        if self._idle:
            self._timer = self.clock.callLater(
                max(0.001, oldest + timeout - now), self._sweep
            )

    def closeKeys(self, keys: Any) -> None:
        """
        Close the idle connections kept under any of C{keys} (the private
        connections of a client that left).
        """
        for key in keys:
            for conn in self._idle.pop(key, []):
                if not conn.lost:
                    conn.transport.loseConnection()

    def close(self) -> None:
        """
        Close every idle connection and stop the timer; keep none after.
        """
        self.closed = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        idle, self._idle = self._idle, {}
        for stack in idle.values():
            for conn in stack:
                if not conn.lost:
                    conn.transport.loseConnection()
