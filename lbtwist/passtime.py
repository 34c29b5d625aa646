"""
The time of the reactor's pass, read without a call where the reactor
keeps it.

A reactor that polls for events can note when each poll returned: every
event of that pass is handled within the pass, so that time is exact to
one pass for the stamps the hot path keeps (last activity, idle since, a
deadline), as HAProxy's C{now_ms} is.  Reading it is an attribute read;
reading the clock is a call.  L{passClock} gives the reactor itself when
it keeps that time (L{IReactorPassTime}: the lean reactor,
L{lbtwist.reactor.LeanEPollReactor}), else a L{PreciseClock} that reads
the reactor's clock each time (C{task.Clock} in tests, Twisted's own
reactors), so that code reading C{polledAt} works, and is tested, under
any clock.
"""

from __future__ import annotations

from typing import Any

from zope.interface import Attribute, Interface  # type: ignore[import-untyped]


class IReactorPassTime(Interface):
    """
    A reactor that keeps the time of its pass.
    """

    polledAt = Attribute(
        "When the last poll returned (the reactor's seconds()): the time of "
        "the pass whose events and timed calls are being handled."
    )


class PreciseClock:
    """
    The time of the pass for a reactor that keeps none: the clock's
    reading now, each time.
    """

    __slots__ = ("seconds",)

    def __init__(self, reactor: Any) -> None:
        self.seconds = reactor.seconds

    @property
    def polledAt(self) -> float:
        """
        The reactor's clock, read now.
        """
        seconds: float = self.seconds()
        return seconds


def passClock(reactor: Any) -> Any:
    """
    What to read C{polledAt} of for the time of C{reactor}'s pass: the
    reactor itself if it keeps it, else a L{PreciseClock} of it.
    """
    if IReactorPassTime.providedBy(reactor):
        return reactor
    return PreciseClock(reactor)
