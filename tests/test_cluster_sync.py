"""
Unit tests of L{lbtwist.cluster.RegistrySync} on a fake etcd and a
L{task.Clock}: when it lists, from which revision it watches, how long it
waits between reconnects, and what it does with a compaction.  (The same
behaviour against a real etcd is in C{test_cluster_registry}.)
"""

from __future__ import annotations

import base64
import json
import random
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.test.proto_helpers import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.cluster import Identity, RegistrySync, SnapshotFile, Unavailable
from lbtwist.cluster._etcd import KeyValue, Lease, RangeResult, TxnResult, WatchStream
from lbtwist.config import parseConfig
from lbtwist.reload import LiveConfig
from lbtwist.service import LoadBalancer

from .support import reactor


class FakeEtcd:
    """
    An etcd in memory with the client's interface: keys with revisions, a
    compaction point, watches fed through the real L{WatchStream} in the
    gateway's line format, and a switch that makes every call fail as an
    unreachable cluster does.
    """

    urls = ["http://fake:2379"]

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.attempts: list[float] = []
        self.kvs: dict[str, KeyValue] = {}
        self.revision = 1
        self.compacted = 0
        self.down = False
        self.watches: list[tuple[str, WatchStream]] = []
        self.watchedFrom: list[int] = []
        self.ranges = 0

    def _unreachable(self) -> Deferred[Any]:
        return fail(Unavailable("no etcd member answered: fake: connection refused"))

    def range(self, key: str, prefix: bool = False, revision: int = 0) -> Deferred[Any]:
        if self.down:
            return self._unreachable()
        self.ranges += 1
        found = [kv for k, kv in sorted(self.kvs.items())
                 if (k.startswith(key) if prefix else k == key)]
        return succeed(RangeResult(self.revision, tuple(found)))

    def txn(self, compare: Any, success: Any, failure: Any = ()) -> Deferred[Any]:
        if self.down:
            return self._unreachable()
        ok = True
        for c in compare:
            key = base64.b64decode(c["key"]).decode()
            if "range_end" in c:
                ok = ok and not any(k.startswith(key) for k in self.kvs)
            else:
                kv = self.kvs.get(key)
                ok = ok and (kv.modRevision if kv else 0) == int(c["mod_revision"])
        if ok:
            self.commit([(base64.b64decode(op["request_put"]["key"]).decode(),
                          base64.b64decode(op["request_put"]["value"])) for op in success])
        return succeed(TxnResult(ok, self.revision))

    def commit(self, changes: list[tuple[str, bytes | None]]) -> int:
        """
        Make one revision of puts (and deletes, value L{None}) and stream
        it to the watches.
        """
        self.revision += 1
        events = []
        for key, value in changes:
            if value is None:
                self.kvs.pop(key, None)
                events.append({"type": "DELETE", "kv": {
                    "key": _b64(key), "mod_revision": str(self.revision)}})
            else:
                self.kvs[key] = KeyValue(key, value, self.revision)
                events.append({"kv": {"key": _b64(key), "value": _b64(value),
                                      "mod_revision": str(self.revision)}})
        for prefix, stream in self.watches:
            mine = [e for e in events
                    if base64.b64decode(e["kv"]["key"]).decode().startswith(prefix)]
            if mine:
                stream.dataReceived(_line({"events": mine}))
        return self.revision

    def watch(self, prefix: str, start: int, onRevision: Any) -> Deferred[Any]:
        self.attempts.append(self.clock.seconds())
        if self.down:
            return self._unreachable()
        self.watchedFrom.append(start)
        stream = WatchStream(onRevision)
        stream.makeConnection(StringTransport())
        stream.dataReceived(_line({"created": True}))
        if start <= self.compacted:
            stream.dataReceived(_line({"canceled": True,
                                       "compact_revision": str(self.compacted + 1)}))
            return succeed(stream)
        self.watches.append((prefix, stream))
        stream.done.addBoth(lambda r: (self.watches.remove((prefix, stream)), r)[1])
        return succeed(stream)

    def die(self) -> None:
        """
        Become unreachable: every watch's connection is lost.
        """
        self.down = True
        for _, stream in list(self.watches):
            stream.connectionLost()

    def grantLease(self, ttl: int) -> Deferred[Any]:
        return self._unreachable() if self.down else succeed(Lease(7, ttl))

    def keepAlive(self, lease: int) -> Deferred[Any]:
        return self._unreachable() if self.down else succeed(10)

    def revokeLease(self, lease: int) -> Deferred[Any]:
        return self._unreachable() if self.down else succeed(self.revision)

    def put(self, key: str, value: bytes, lease: int = 0) -> Deferred[Any]:
        return self._unreachable() if self.down else succeed(self.revision)

    def close(self) -> Deferred[None]:
        return succeed(None)


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _line(result: dict[str, Any]) -> bytes:
    return json.dumps({"result": result}).encode() + b"\n"


class CountingSnapshot(SnapshotFile):
    """
    A snapshot file that remembers the revision of each save.
    """

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.saved: list[int] = []

    def save(self, registry: Any) -> None:
        self.saved.append(registry.revision)
        super().save(registry)


class HighJitter(random.Random):
    """
    Jitter that always takes the longest wait allowed.
    """

    def uniform(self, a: float, b: float) -> float:
        return b


class RegistrySyncUnitTests(SynchronousTestCase):
    """
    L{RegistrySync} against L{FakeEtcd}, in virtual time.
    """

    def setUp(self) -> None:
        config = parseConfig({
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1"}],
            "pools": {"web": {"backends": [{"name": "a", "endpoint": "127.0.0.1:1"}]}}})
        self.clock = Clock()
        lb = LoadBalancer(config, reactor)
        self.live = LiveConfig(lb.pools, config, self.clock)
        self.etcd = FakeEtcd(self.clock)
        self.snapshot = CountingSnapshot(self.mktemp())
        self.fatal: list[str] = []
        self.sync = RegistrySync(self.etcd, "/t", self.live, self.clock,  # type: ignore[arg-type]
                                 self.snapshot, Identity("me", "", "0"), rng=HighJitter(),
                                 fatal=self.fatal.append)

    def backends(self) -> dict[str, int]:
        return {b.name: b.weight for b in self.live.pools["web"]}

    def test_seedListWatch(self) -> None:
        """
        An empty store is seeded from the file, listed at R and watched
        from R+1; a change then reaches the pool.
        """
        self.sync.startService()
        self.assertTrue(self.sync.connected)
        self.assertEqual(list(self.etcd.kvs), ["/t/pools/web/backends/a"])
        self.assertEqual(self.etcd.watchedFrom, [self.etcd.revision + 1])
        self.etcd.commit([("/t/pools/web/backends/b",
                           b'{"endpoint": "127.0.0.1:2", "weight": 4}')])
        self.assertEqual(self.backends(), {"a": 1, "b": 4})
        self.assertEqual(self.sync.registry.revision, self.etcd.revision)

    def test_backOffThenResume(self) -> None:
        """
        With etcd gone the backends stay; reconnects are tried after
        0.2, 0.4, 0.8... seconds (the longest the jitter allows); when etcd
        is back, the watch resumes from the next revision, without a new
        listing.
        """
        self.sync.startService()
        revision = self.sync.registry.revision
        ranges = self.etcd.ranges
        self.etcd.die()
        self.assertFalse(self.sync.connected)
        self.assertEqual(self.backends(), {"a": 1})
        self.assertEqual(self.sync.status()["store"], "unreachable")
        lost = self.clock.seconds()
        before = len(self.etcd.attempts)
        self.clock.pump([0.01] * 310)
        after = [t - lost for t in self.etcd.attempts[before:]]
        self.assertEqual(len(after), 4, after)
        for got, wanted in zip(after, [0.2, 0.6, 1.4, 3.0]):
            self.assertLess(abs(got - wanted), 0.015, after)
        self.etcd.down = False
        self.clock.pump([0.01] * 330)  # the next attempt: 3.2 s after the last
        self.assertTrue(self.sync.connected)
        self.assertEqual(self.etcd.watchedFrom[-1], revision + 1)
        self.assertEqual(self.etcd.ranges, ranges)

    def test_compactionRelists(self) -> None:
        """
        A watch cancelled for compaction makes a new listing, then a watch
        from after it.
        """
        self.sync.startService()
        self.etcd.die()
        self.etcd.down = False
        self.etcd.commit([("/t/pools/web/backends/b", b'{"endpoint": "127.0.0.1:2"}')])
        self.etcd.compacted = self.etcd.revision
        self.clock.advance(0.2)
        self.assertEqual(self.sync.relists, 1)
        self.assertEqual(self.backends(), {"a": 1, "b": 1})
        self.assertEqual(self.etcd.watchedFrom[-1], self.etcd.revision + 1)
        self.assertTrue(self.sync.connected)

    def test_snapshotWhenUnreachable(self) -> None:
        """
        A sync that saved a snapshot starts from it when etcd cannot be
        reached; one with no snapshot calls C{fatal} with the URLs.
        """
        self.sync.startService()
        self.etcd.commit([("/t/pools/web/backends/b", b'{"endpoint": "127.0.0.1:2"}')])
        self.sync.stopService()
        self.etcd.down = True
        again = RegistrySync(self.etcd, "/t", self.live, self.clock,  # type: ignore[arg-type]
                             self.snapshot, Identity("me", "", "0"), fatal=self.fatal.append)
        again.startService()
        self.assertEqual(again.registry.revision, self.etcd.revision)
        self.assertEqual(self.backends(), {"a": 1, "b": 1})
        self.assertEqual(self.fatal, [])
        fresh = RegistrySync(self.etcd, "/t", self.live, self.clock,  # type: ignore[arg-type]
                             SnapshotFile(self.mktemp()), Identity("me", "", "0"),
                             fatal=self.fatal.append)
        fresh.startService()
        self.assertEqual(len(self.fatal), 1)
        self.assertIn("http://fake:2379", self.fatal[0])

    def test_snapshotOncePerTurn(self) -> None:
        """
        Two revisions in one watch response are applied one after the
        other but saved to the snapshot once, at the later revision, on the
        next reactor turn; a stop saves what is pending.
        """
        self.sync.startService()
        self.clock.advance(0)
        before = list(self.snapshot.saved)
        _, stream = self.etcd.watches[0]
        stream.dataReceived(_line({"events": [
            {"kv": {"key": _b64("/t/pools/web/backends/b"),
                    "value": _b64('{"endpoint": "127.0.0.1:2"}'), "mod_revision": "50"}},
            {"kv": {"key": _b64("/t/pools/web/backends/c"),
                    "value": _b64('{"endpoint": "127.0.0.1:3"}'), "mod_revision": "51"}}]}))
        self.assertEqual(self.backends(), {"a": 1, "b": 1, "c": 1})
        self.assertEqual(self.snapshot.saved, before)
        self.clock.advance(0)
        self.assertEqual(self.snapshot.saved, before + [51])
        stream.dataReceived(_line({"events": [
            {"type": "DELETE", "kv": {"key": _b64("/t/pools/web/backends/b"),
                                      "mod_revision": "52"}}]}))
        self.sync.stopService()
        self.assertEqual(self.snapshot.saved, before + [51, 52])
