"""
The dashboard of a balancer in a cluster, in Chromium: it lists the
balancers sharing the registry and says the state of the store.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks

from . import test_dashboard
from .etcdhelpers import ClusterCase, dump, eventually


class ClusterDashboardTests(ClusterCase):
    """
    The cluster section of the dashboard.
    """

    timeout = 120
    # The page is loaded as the dashboard's own tests load it (imported as a
    # module, so that trial does not run those tests here too).
    chromium = test_dashboard.DashboardTests.chromium
    dump = test_dashboard.DashboardTests.dump

    @inlineCallbacks
    def setUp(self) -> Any:
        if test_dashboard.CHROMIUM is None:
            self.skipTest("chromium is not installed (make test-deps as root)")
        yield super().setUp()

    @inlineCallbacks
    def test_instancesAndStore(self) -> Any:
        """
        With etcd up, the page lists the three balancers, this one marked,
        and says the store is connected; with etcd gone, it says the store
        is unreachable and changes are refused.
        """
        nodes = [self.node(f"n{i}", ["a"]) for i in range(3)]
        yield eventually(lambda: all(n.sync.connected for n in nodes))
        yield eventually(lambda: len(dump(self.etcd.url, "/lbt/instances/")) == 3, 5.0)
        url = f"http://127.0.0.1:{nodes[0].adminPort}/"
        page = yield self.dump(url)
        self.assertIn('<section id="cluster">', page)
        for name in ("n0 (this one)", "n1", "n2"):
            self.assertIn(f"<td>{name}</td>", page)
        self.assertIn("store connected since", page)
        self.etcd.members[0].kill()
        yield eventually(lambda: not nodes[0].sync.connected, 3.0)
        page = yield self.dump(url)
        self.assertIn("store unreachable since", page)
        self.assertIn("changes refused", page)
