"""
Tests for L{lbtwist.demo}: the demo backends listen on free ports of
loopback, the pool is pointed at them, and the hint names real addresses.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.application.service import MultiService, Service
from twisted.internet.defer import inlineCallbacks
from twisted.logger import ILogObserver, Logger, formatEvent
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.demo import DemoBackends, howToTry
from lbtwist.tap import Options
from tests.support import inThread, reactor
from tests.test_twistd import _get


class DemoBackendsTests(TestCase):
    """
    The demo backends on a real reactor.
    """

    @inlineCallbacks
    def test_freePorts(self) -> Any:
        """
        L{DemoBackends.listen} listens on three distinct free ports of
        127.0.0.1 and points the demo backends of the default pool at them;
        each answers with its name; stopping closes them.
        """
        options = Options()
        options.parseOptions(["--demo", "--state", self.mktemp()])
        demo = DemoBackends(reactor)
        config = demo.listen(options["lbconfig"])
        demo.startService()
        try:
            backends = config.pool("default").backends
            ports = [int(b.endpoint.rpartition("port=")[2]) for b in backends]
            self.assertEqual(len(set(ports)), 3)
            self.assertNotIn(0, ports)
            self.assertEqual([b.endpoint for b in backends],
                             [f"tcp:host=127.0.0.1:port={p}" for p in ports])
            for b, port in zip(backends, ports):
                self.assertEqual((yield inThread(_get, port)), f"hello from {b.name}".encode())
        finally:
            yield demo.stopService()
        self.assertEqual(demo.ports, {})


class HintTests(SynchronousTestCase):
    """
    The demo's hint for people.
    """

    def test_howToTry(self) -> None:
        """
        The hint names the listener and the admin API's addresses, or says
        the admin API is not running.
        """
        self.assertEqual(
            howToTry(["http://127.0.0.1:8080/"], "127.0.0.1:9000"),
            "try 'curl http://127.0.0.1:8080/' a few times, and open "
            "http://127.0.0.1:9000/ for the dashboard")
        self.assertEqual(
            howToTry(["http://127.0.0.1:8080/"], None),
            "try 'curl http://127.0.0.1:8080/' a few times; the admin API is not running, "
            "so there is no dashboard")
        self.assertTrue(howToTry(["https://127.0.0.1:8443/"], None).startswith(
            "try 'curl -k https://127.0.0.1:8443/'"))

    def test_listenerURL(self) -> None:
        """
        A listener on every interface is tried on loopback; a TLS one with
        https.
        """
        from twisted.internet.address import IPv4Address, IPv6Address

        from lbtwist.demo import listenerURL

        self.assertEqual(listenerURL(IPv4Address("TCP", "0.0.0.0", 8080), False),
                         "http://127.0.0.1:8080/")
        self.assertEqual(listenerURL(IPv4Address("TCP", "127.0.0.2", 8443), True),
                         "https://127.0.0.2:8443/")
        self.assertEqual(listenerURL(IPv6Address("TCP", "::", 80), False), "http://[::1]:80/")

    def test_noAdmin(self) -> None:
        """
        When the admin service did not get its port (the default one was
        taken), the logged hint says the admin API is not running.
        """
        from twisted.internet.testing import MemoryReactorClock

        events: list[dict[str, Any]] = []
        top = MultiService()
        demo = DemoBackends(MemoryReactorClock())
        demo.log = Logger(observer=cast(ILogObserver, events.append))
        demo.setServiceParent(top)
        admin = Service()
        admin.setName("admin")
        admin.port = None  # type: ignore[attr-defined]
        admin.setServiceParent(top)
        demo.sayHowToTry()
        [line] = [formatEvent(e) for e in events]
        self.assertIn("the admin API is not running", line)
        self.assertNotIn("9000", line)
