"""
Tests of the etcd test harness itself (L{tests.etcdhelpers}): the servers
the cluster tests rely on start, answer, stop and come back.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from .etcdhelpers import b64, call, dump, startEtcd
from .support import inThread


class EtcdHarnessTests(TestCase):
    """
    L{startEtcd} starts real etcd members on loopback.
    """

    @inlineCallbacks
    def test_singleMemberStoresAndSurvivesRestart(self) -> Any:
        """
        A single member stores a key; killed, it refuses connections;
        started again on its data directory, it still has the key.
        """
        etcd = yield startEtcd(self)
        yield inThread(call, etcd.url, "/v3/kv/put", {"key": b64("/t/a"), "value": b64("1")})
        self.assertEqual(dump(etcd.url, "/t/"), {"/t/a": 1})
        member = etcd.members[0]
        member.kill()
        with self.assertRaises(OSError):
            call(etcd.url, "/v3/kv/range", {"key": b64("/t/a")})
        yield etcd.restart(member)
        self.assertEqual(dump(etcd.url, "/t/"), {"/t/a": 1})

    @inlineCallbacks
    def test_threeMembersElectOneLeader(self) -> Any:
        """
        Three members form one cluster: a write through one is read through
        another, and one member is the leader.
        """
        etcd = yield startEtcd(self, 3)
        yield inThread(call, etcd.urls[0], "/v3/kv/put", {"key": b64("/t/x"), "value": b64("2")})
        self.assertEqual(dump(etcd.urls[2], "/t/"), {"/t/x": 2})
        leader = yield inThread(etcd.leader)
        self.assertIn(leader, etcd.members)
