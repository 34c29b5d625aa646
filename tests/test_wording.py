"""
Tests for L{lbtwist.wording}: counts said in the right number.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.wording import counted


class CountedTests(SynchronousTestCase):
    """
    L{counted}.
    """

    def test_table(self) -> None:
        """
        One is singular; zero and more are plural, with the given plural
        when the noun's is not its C{s} form.
        """
        for args, expected in [
            ((1, "worker"), "1 worker"),
            ((0, "request"), "0 requests"),
            ((2, "attempt"), "2 attempts"),
            ((1, "client connection"), "1 client connection"),
            ((3, "route list"), "3 route lists"),
            ((1, "child", "children"), "1 child"),
            ((2, "child", "children"), "2 children"),
        ]:
            with self.subTest(args=args):
                self.assertEqual(counted(*args), expected)
