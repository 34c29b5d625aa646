"""
Tests for L{lbtwist.passtime}.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject  # type: ignore[import-untyped]

from lbtwist.passtime import IReactorPassTime, PreciseClock, passClock
from lbtwist.reactor import LeanEPollReactor


class PassClockTests(SynchronousTestCase):
    """
    L{passClock} gives what to read the time of a reactor's pass from.
    """

    def test_leanReactorKeepsIt(self) -> None:
        """
        The lean reactor keeps the time of its pass: it is its own pass
        clock, and provides L{IReactorPassTime}.
        """
        reactor = LeanEPollReactor()
        self.addCleanup(reactor._poller.close)
        self.assertTrue(verifyObject(IReactorPassTime, reactor))
        self.assertIs(passClock(reactor), reactor)

    def test_otherClocksReadNow(self) -> None:
        """
        For a clock that keeps no pass time (C{task.Clock}), the pass clock
        reads the clock each time: code that reads C{polledAt} sees time
        move as the clock does.
        """
        clock = Clock()
        clock.advance(5)
        passed = passClock(clock)
        self.assertIsInstance(passed, PreciseClock)
        self.assertTrue(verifyObject(IReactorPassTime, passed, tentative=True))
        self.assertEqual(passed.polledAt, 5.0)
        clock.advance(2.5)
        self.assertEqual(passed.polledAt, 7.5)
