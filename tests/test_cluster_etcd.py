"""
Tests for L{lbtwist.cluster._etcd}: lbtwist's etcd client, each call
against a real etcd, and the watch stream's line splitting with a fake
body.
"""

from __future__ import annotations

import json
import os
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.error import ConnectionLost
from twisted.python.failure import Failure
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.client import ResponseDone

from lbtwist.cluster import Compacted, EtcdClient, EtcdError, Event, Unavailable, tlsPolicy
from lbtwist.cluster._etcd import (
    WatchEnded,
    WatchStream,
    deleteOperation,
    encode,
    modRevisionIs,
    prefixEnd,
    putOperation,
)
from lbtwist.config import ClusterTLS

from .etcdhelpers import call, startEtcd
from .support import freePort, inThread, reactor, sleep
from .test_tls import selfSigned


def line(result: dict[str, Any]) -> bytes:
    """
    One watch response as the gateway streams it.
    """
    return json.dumps({"result": result}).encode() + b"\n"


def put(key: str, value: str, revision: int) -> dict[str, Any]:
    """
    A PUT event as the gateway writes it (the type of a PUT is left out).
    """
    return {"kv": {"key": encode(key), "value": encode(value), "mod_revision": str(revision)}}


class WatchStreamTests(SynchronousTestCase):
    """
    L{WatchStream} splits the streamed body into JSON lines and hands on
    each revision's events as one unit.
    """

    def setUp(self) -> None:
        self.seen: list[tuple[int, list[Event]]] = []
        self.stream = WatchStream(lambda rev, events: self.seen.append((rev, events)))
        self.transport = StringTransport()
        self.stream.makeConnection(self.transport)

    def test_partialLinesAreBuffered(self) -> None:
        """
        A line that arrives in pieces is parsed once it is whole; two lines
        in one piece are both parsed.
        """
        created = line({"created": True})
        first = line({"events": [put("/p/a", "1", 5)]})
        second = line({"events": [{"type": "DELETE", "kv": {"key": encode("/p/a"),
                                                             "mod_revision": "6"}}]})
        data = created + first + second
        for i in range(0, len(data), 7):
            self.stream.dataReceived(data[i:i + 7])
        self.assertIsNone(self.successResultOf(self.stream.created))
        self.assertEqual([(rev, [(e.type, e.kv.key, e.kv.value) for e in events])
                          for rev, events in self.seen],
                         [(5, [("PUT", "/p/a", b"1")]), (6, [("DELETE", "/p/a", b"")])])

    def test_eventsGroupedByRevision(self) -> None:
        """
        One watch response holding three events of two revisions gives two
        units, in revision order.
        """
        self.stream.dataReceived(line({"events": [
            put("/p/a", "1", 7), put("/p/b", "2", 7), put("/p/c", "3", 8)]}))
        self.assertEqual([(rev, [e.kv.key for e in events]) for rev, events in self.seen],
                         [(7, ["/p/a", "/p/b"]), (8, ["/p/c"])])

    def test_compactionCancelIsDistinct(self) -> None:
        """
        A watch cancelled for compaction fails C{done} with L{Compacted}
        carrying the compact revision, and closes the stream.
        """
        self.stream.dataReceived(line({"created": True}))
        self.stream.dataReceived(line({"canceled": True, "compact_revision": "42"}))
        failure = self.failureResultOf(self.stream.done, Compacted)
        self.assertEqual(failure.value.compactRevision, 42)
        self.assertEqual(self.transport.producerState, "stopped")

    def test_lostConnectionEndsWatch(self) -> None:
        """
        A connection lost mid-stream fails C{done} with L{WatchEnded}; a
        cancel by the owner fires it with L{None}.
        """
        self.stream.dataReceived(b'{"result": {"crea')
        self.stream.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(self.stream.done, WatchEnded)
        self.failureResultOf(self.stream.created, WatchEnded)
        self.assertEqual(self.seen, [])
        other = WatchStream(lambda rev, events: None)
        other.makeConnection(StringTransport())
        other.cancel()
        other.connectionLost(Failure(ResponseDone()))
        self.assertIsNone(self.successResultOf(other.done))

    def test_notJSONEndsWatch(self) -> None:
        """
        A line that is not JSON ends the watch (and its creation) with
        L{WatchEnded}, never an exception out of C{dataReceived}.
        """
        self.stream.dataReceived(b"<html>\n")
        self.failureResultOf(self.stream.done, WatchEnded)
        self.failureResultOf(self.stream.created, WatchEnded)

    def test_prefixEnd(self) -> None:
        """
        The range end of a prefix is the prefix with its last byte
        incremented.
        """
        self.assertEqual(prefixEnd("/a/"), encode("/a0"))


class EtcdClientTests(TestCase):
    """
    L{EtcdClient} against a real single-member etcd.
    """

    timeout = 30

    @inlineCallbacks
    def setUp(self) -> Any:
        self.etcd = yield startEtcd(self)
        self.client = self.makeClient([self.etcd.url])

    def makeClient(self, urls: list[str], **kw: Any) -> EtcdClient:
        client = EtcdClient(reactor, urls, timeout=2.0, **kw)
        self.addCleanup(client.close)
        return client

    @inlineCallbacks
    def test_putRangeDelete(self) -> Any:
        """
        Values put are read back by key and by prefix, and at an older
        revision; a deleted key is gone; keys and values round-trip through
        base64.
        """
        r1 = yield self.client.put("/p/a", b"\x00one")
        r2 = yield self.client.put("/p/b", b"two")
        yield self.client.put("/q/c", b"other")
        self.assertEqual(r2, r1 + 1)
        found = yield self.client.range("/p/", prefix=True)
        self.assertEqual([(kv.key, kv.value) for kv in found.kvs],
                         [("/p/a", b"\x00one"), ("/p/b", b"two")])
        self.assertEqual(found.revision, r2 + 1)
        old = yield self.client.range("/p/", prefix=True, revision=r1)
        self.assertEqual([kv.key for kv in old.kvs], ["/p/a"])
        yield self.client.delete("/p/a")
        one = yield self.client.range("/p/a")
        self.assertEqual(one.kvs, ())

    @inlineCallbacks
    def test_rangeAtCompactedRevision(self) -> Any:
        """
        A range at a compacted revision fails with L{Compacted}.
        """
        r1 = yield self.client.put("/p/a", b"1")
        r2 = yield self.client.put("/p/a", b"2")
        yield self.client.compact(r2)
        with self.assertRaises(Compacted):
            yield self.client.range("/p/", prefix=True, revision=r1)

    @inlineCallbacks
    def test_txnConflict(self) -> Any:
        """
        A transaction conditioned on a key's mod revision succeeds once;
        the same one again (now stale) does not, and changes nothing.
        """
        rev = yield self.client.put("/p/k", b"v1")
        first = yield self.client.txn([modRevisionIs("/p/k", rev)],
                                      [putOperation("/p/k", b"v2")])
        second = yield self.client.txn([modRevisionIs("/p/k", rev)],
                                       [putOperation("/p/k", b"v3")])
        self.assertTrue(first.succeeded)
        self.assertFalse(second.succeeded)
        found = yield self.client.range("/p/k")
        self.assertEqual(found.kvs[0].value, b"v2")
        self.assertEqual(found.kvs[0].modRevision, first.revision)
        create = yield self.client.txn([modRevisionIs("/p/new", 0)],
                                       [putOperation("/p/new", b"x"), deleteOperation("/p/k")])
        self.assertTrue(create.succeeded)
        gone = yield self.client.range("/p/k")
        self.assertEqual(gone.kvs, ())

    @inlineCallbacks
    def test_watchDeliversRevisionsInOrder(self) -> Any:
        """
        A watch from a revision delivers the changes made since, then the
        new ones, one unit per revision (a transaction's two puts in one).
        """
        seen: list[tuple[int, list[tuple[str, str]]]] = []
        r1 = yield self.client.put("/w/a", b"1")
        stream = yield self.client.watch(
            "/w/", r1, lambda rev, events: seen.append(
                (rev, [(e.type, e.kv.key) for e in events])))
        r2 = yield self.client.txn([], [putOperation("/w/b", b"2"), putOperation("/w/c", b"3")])
        r3 = yield self.client.delete("/w/a")
        yield self.client.put("/other", b"x")
        for _ in range(100):
            if len(seen) >= 3:
                break
            yield sleep(0.02)
        self.assertEqual(seen, [
            (r1, [("PUT", "/w/a")]),
            (r2.revision, [("PUT", "/w/b"), ("PUT", "/w/c")]),
            (r3, [("DELETE", "/w/a")]),
        ])
        stream.cancel()
        yield stream.done

    @inlineCallbacks
    def test_watchFromCompactedRevision(self) -> Any:
        """
        A watch from a compacted revision ends with L{Compacted} saying the
        compact revision.
        """
        yield self.client.put("/w/a", b"1")
        r2 = yield self.client.put("/w/a", b"2")
        yield self.client.compact(r2)
        try:
            stream = yield self.client.watch("/w/", 1, lambda rev, events: None)
            yield stream.done
        except Compacted as e:
            self.assertEqual(e.compactRevision, r2)
        else:
            self.fail("the watch did not end with Compacted")

    @inlineCallbacks
    def test_watchEndsWhenEtcdDies(self) -> Any:
        """
        A watch whose member is killed ends with L{WatchEnded}.
        """
        stream = yield self.client.watch("/w/", 1, lambda rev, events: None)
        self.etcd.members[0].kill()
        with self.assertRaises(WatchEnded):
            yield stream.done

    @inlineCallbacks
    def test_lease(self) -> Any:
        """
        A key put with a lease lives while the lease is kept alive and is
        deleted when it is revoked; a revoked lease's keep-alive says 0.
        """
        lease = yield self.client.grantLease(30)
        self.assertEqual(lease.ttl, 30)
        yield self.client.put("/l/me", b"here", lease=lease.id)
        ttl = yield self.client.keepAlive(lease.id)
        self.assertEqual(ttl, 30)
        found = yield self.client.range("/l/me")
        self.assertEqual(found.kvs[0].lease, lease.id)
        yield self.client.revokeLease(lease.id)
        gone = yield self.client.range("/l/me")
        self.assertEqual(gone.kvs, ())
        expired = yield self.client.keepAlive(lease.id)
        self.assertEqual(expired, 0)

    @inlineCallbacks
    def test_failover(self) -> Any:
        """
        With a dead member listed first, calls go to the live one; with
        every member dead, a call fails with L{Unavailable} naming them.
        """
        dead = f"http://127.0.0.1:{freePort()}"
        client = self.makeClient([dead, self.etcd.url])
        yield client.put("/f/a", b"1")
        self.assertEqual(client.current, 1)
        nobody = self.makeClient([dead])
        with self.assertRaises(Unavailable) as caught:
            yield nobody.range("/f/a")
        self.assertIn(dead, str(caught.exception))

    @inlineCallbacks
    def test_authentication(self) -> Any:
        """
        With authentication on, a client without credentials is refused
        and one with a user name and password gets a token and works.
        """
        url = self.etcd.url
        for path, body in [
            ("/v3/auth/user/add", {"name": "root", "password": "rootpw"}),
            ("/v3/auth/user/grant", {"user": "root", "role": "root"}),
            ("/v3/auth/enable", {}),
        ]:
            answer = yield inThread(call, url, path, body)
            self.assertNotIn("error", answer)
        with self.assertRaises(EtcdError):
            yield self.makeClient([url]).put("/a/x", b"1")
        client = self.makeClient([url], username="root", password="rootpw")
        yield client.put("/a/x", b"1")
        self.assertIsNotNone(client.token)
        client.token = "expired.token"
        found = yield client.range("/a/x")
        self.assertEqual(found.kvs[0].value, b"1")


class EtcdTLSTests(TestCase):
    """
    L{EtcdClient} with the C{cluster.tls} policy against an etcd that
    serves TLS and demands a client certificate.
    """

    timeout = 30

    @inlineCallbacks
    def test_clientCertificate(self) -> Any:
        """
        With the CA, certificate and key, calls work; without the client
        certificate, the member is unreachable.
        """
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        cert, key = selfSigned(directory)
        etcd = yield startEtcd(self, tls=(cert, key))
        self.assertTrue(etcd.url.startswith("https://"))
        client = EtcdClient(reactor, [etcd.url], timeout=2.0,
                            contextFactory=tlsPolicy(ClusterTLS(ca=cert, cert=cert, key=key)))
        self.addCleanup(client.close)
        yield client.put("/t/a", b"1")
        found = yield client.range("/t/a")
        self.assertEqual(found.kvs[0].value, b"1")
        anonymous = EtcdClient(reactor, [etcd.url], timeout=2.0,
                               contextFactory=tlsPolicy(ClusterTLS(ca=cert)))
        self.addCleanup(anonymous.close)
        with self.assertRaises(Unavailable):
            yield anonymous.range("/t/a")
