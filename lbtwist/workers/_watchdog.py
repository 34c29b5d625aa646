"""
The master's watchdog over its workers: which of them went silent for too
long, and so are wedged.

A worker alive but not running its reactor (a plugin or an access-log
sink in a busy loop, a deadlock, C{SIGSTOP}) still holds its clients,
which hang, and the master's questions to it wait for their timeouts; its
process does not exit, so nothing else replaces it.  Each worker's reactor
sends its master a heartbeat (L{lbtwist.workers._protocol.Heartbeat}) on a
timer, every L{beatInterval}; the master kills (C{SIGKILL}) a worker it has
not heard from for longer than the limit (C{worker-watchdog}), and starts
another in its place as it does for any worker that exits.

This is systemd's C{WatchdogSec=} between a master and its workers: the
keep-alive comes from the supervised process's own loop, the supervisor
acts on silence, and the clock starts once the process has started (here:
at its first heartbeat).  Not HAProxy's in-process watchdog, which counts
a thread's CPU time and so sees a spinning thread only, never a stopped or
blocked one; nginx's master replaces only a worker that exits.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import attrs

# A worker beats at least this often, and four times within the limit: a
# beat or two late (a burst of load) is still far from it.
MAX_BEAT = 1.0

W = TypeVar("W", bound=Hashable)


def beatInterval(limit: float) -> float:
    """
    Seconds between a worker's heartbeats under a watchdog of C{limit}
    seconds.
    """
    return min(MAX_BEAT, limit / 4)


@attrs.frozen
class Verdict(Generic[W]):
    """
    What one look at the workers found.

    @ivar wedged: each worker silent for longer than the limit, with how
        many seconds it was.
    @ivar stalled: seconds the master itself did not look (it was stopped
        or starved), if that was long enough to forgive every worker's
        silence; else 0.
    """

    wedged: tuple[tuple[W, float], ...]
    stalled: float = 0.0


class Watchdog(Generic[W]):
    """
    When each worker was last heard from, and which are silent too long.

    Only a worker heard from once is watched: one that has not started
    yet, or a worker from before heartbeats existed that a master adopted
    on an upgrade, is not.

    @ivar limit: seconds of silence after which a worker is wedged.
    @ivar heard: when each watched worker last sent a heartbeat.
    """

    def __init__(self, limit: float, now: Callable[[], float]) -> None:
        self.limit = limit
        self.now = now
        self.heard: dict[W, float] = {}
        self._looked: float | None = None

    def start(self) -> None:
        """
        Begin looking (every quarter of the limit at most, see L{look}).
        """
        self._looked = self.now()

    def beat(self, worker: W) -> None:
        """
        C{worker} sent a heartbeat.
        """
        self.heard[worker] = self.now()

    def forget(self, worker: W) -> None:
        """
        Watch C{worker} no more (it exited, or is being killed), until its
        next heartbeat.
        """
        self.heard.pop(worker, None)

    def look(self) -> Verdict[W]:
        """
        The workers silent for longer than the limit, forgotten (each is
        found wedged once).

        The master itself may have been stalled since it last looked
        (stopped, a long garbage collection, starved of CPU): the
        heartbeats sent meanwhile wait, unread, in its sockets, so
        silence is not the workers'.  After a gap of more than half the
        limit every worker starts a new period.  (Looking every quarter
        of the limit with a beat at least as often, a shorter stall
        leaves a healthy worker's silence within the limit.)
        """
        now = self.now()
        gap = now - (now if self._looked is None else self._looked)
        self._looked = now
        if gap > self.limit / 2:
            for worker in self.heard:
                self.heard[worker] = now
            return Verdict((), gap)
        wedged = tuple((worker, now - last) for worker, last in self.heard.items()
                       if now - last > self.limit)
        for worker, _ in wedged:
            del self.heard[worker]
        return Verdict(wedged)
