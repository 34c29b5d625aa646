"""
Tests for L{lbtwist.discovery}: DNS and SRV discovery against a real DNS
server (Twisted's own, on 127.0.0.1) whose records each test changes, and
the configuration keys that turn it on.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.logger import Logger
from twisted.names import authority, client, dns, server
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.admin._views import backendView
from lbtwist.app import Balancer
from lbtwist.config import (
    _NAME,
    BackendConfig,
    BackendTLS,
    ConfigError,
    Discovery,
    parseConfig,
)
from lbtwist.discovery import (
    Answer,
    Found,
    PoolDiscovery,
    backendConfigs,
    backendName,
    nextDelay,
    srvWeight,
)
from lbtwist.pool import BackendPool
from lbtwist.reload import LiveConfig
from tests.httphelpers import waitFor
from tests.support import NamedFactory, firstLine, inThread, reactor, sleep, startBalancer

INTERVAL = 0.2


class Zone(authority.FileAuthority):
    """
    An authority for C{internal} whose records the test sets.
    """

    def __init__(self) -> None:
        super().__init__(None)

    def loadFile(self, filename: object) -> None:
        """
        Start empty, with a one-second SOA minimum.
        """
        self.soa = (b"internal", dns.Record_SOA(
            mname=b"ns.internal", rname=b"root.internal", serial=1, refresh=1,
            retry=1, expire=1, minimum=1, ttl=1))
        self.records: dict[bytes, list[Any]] = {}

    def addresses(self, name: str, *addresses: str, ttl: int = 60) -> None:
        """
        Make C{name}'s A records C{addresses} (none: the name is gone).
        """
        self.records[name.encode()] = [dns.Record_A(a, ttl=ttl) for a in addresses]
        if not addresses:
            del self.records[name.encode()]

    def services(self, name: str, *records: tuple[int, int, int, str]) -> None:
        """
        Make C{name}'s SRV records C{(priority, weight, port, target)}.
        """
        self.records[name.encode()] = [
            dns.Record_SRV(p, w, port, t, ttl=60) for p, w, port, t in records]


class DNSServer:
    """
    Twisted's DNS server for a L{Zone}, on a UDP port of 127.0.0.1 that
    can be stopped and started again on the same number.
    """

    def __init__(self, case: TestCase) -> None:
        self.zone = Zone()
        self.factory = server.DNSServerFactory(authorities=[self.zone])
        self.port: Any = None
        self.number = 0
        self.start()
        case.addCleanup(self.stop)

    def start(self) -> None:
        """
        Answer on the port (a new one the first time).
        """
        self.port = reactor.listenUDP(
            self.number, dns.DNSDatagramProtocol(self.factory), interface="127.0.0.1")
        self.number = self.port.getHost().port

    def stop(self) -> Any:
        """
        Stop answering.
        """
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None

    @property
    def resolvers(self) -> list[str]:
        """
        The C{resolvers:} configuration for this server.
        """
        return [f"127.0.0.1:{self.number}"]


def listenOn(case: TestCase, addresses: list[str]) -> int:
    """
    Start a named backend (see L{NamedFactory}, named after its address)
    on each loopback address, all on one port; return the port.
    """
    for _ in range(20):
        first = reactor.listenTCP(0, NamedFactory(addresses[0]), interface=addresses[0])
        number = first.getHost().port
        ports = [first]
        try:
            for address in addresses[1:]:
                ports.append(reactor.listenTCP(number, NamedFactory(address),
                                               interface=address))
        except Exception:
            for port in ports:
                port.stopListening()
            continue
        for port in ports:
            case.addCleanup(port.stopListening)
        return int(number)
    raise RuntimeError("no port free on every address")


def discovered(pool: BackendPool) -> dict[str, int]:
    """
    The pool's discovered backends and their weights, by name.
    """
    return {b.name: b.weight for b in pool if b.config.discovered}


class LoadClients:
    """
    Clients in threads, each connecting through the balancer and reading
    the backend's name, over and over until stopped (at most C{limit}
    connections each and C{seconds} long).

    @ivar served: C{(when the client began connecting, the name it read)}.
    """

    def __init__(self, port: int, count: int = 3, limit: int = 5000,
                 seconds: float = 20.0) -> None:
        self.port = port
        self.served: list[tuple[float, bytes]] = []
        self.failures: list[str] = []
        self.stopping = threading.Event()
        self.done = [inThread(self._run, limit, seconds) for _ in range(count)]

    def _run(self, limit: int, seconds: float) -> None:
        end = time.monotonic() + seconds
        for _ in range(limit):
            if self.stopping.is_set() or time.monotonic() > end:
                return
            started = time.monotonic()
            try:
                line = firstLine(self.port, timeout=5.0)
            except OSError as e:
                self.failures.append(repr(e))
                continue
            if line:
                self.served.append((started, line))
            else:
                self.failures.append("closed without an answer")

    def stop(self) -> Any:
        """
        Stop the clients; fires when every one is done.
        """
        from twisted.internet.defer import gatherResults

        self.stopping.set()
        return gatherResults(self.done)


class AddressDiscoveryTests(TestCase):
    """
    C{discovery: {dns: ...}} through a real balancer and real backends.
    """

    timeout = 60

    @inlineCallbacks
    def test_followsTheAnswerUnderLoad(self) -> Any:
        """
        A name going from two addresses to three and then to one changes
        the pool within an interval or so each time, while clients keep
        connecting through the balancer: none of them fails, the added
        address gets clients and the vanished ones get none after.
        """
        dnsServer = DNSServer(self)
        addresses = ["127.0.0.1", "127.0.0.2", "127.0.0.3"]
        backendPort = listenOn(self, addresses)
        dnsServer.zone.addresses("app.internal", *addresses[:2])
        lb, port = startBalancer(self, {
            "resolvers": dnsServer.resolvers,
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1"}],
            "pools": {"web": {"discovery": {"dns": "app.internal", "port": backendPort,
                                            "interval": f"{INTERVAL}s"}}},
        })
        pool = lb.pools["web"]
        self.assertTrue((yield waitFor(lambda: len(pool) == 2)))
        self.assertEqual(sorted(discovered(pool)), [
            f"app.internal:127.0.0.1:{backendPort}", f"app.internal:127.0.0.2:{backendPort}"])
        load = LoadClients(port)
        self.addCleanup(load.stop)
        yield sleep(0.3)

        took = []
        for wanted in (addresses, addresses[2:]):
            dnsServer.zone.addresses("app.internal", *wanted)
            changed = time.monotonic()
            count = len(wanted)
            self.assertTrue((yield waitFor(lambda: len(pool) == count)))  # noqa: B023
            took.append(time.monotonic() - changed)
            self.assertEqual(
                sorted(discovered(pool)),
                sorted(f"app.internal:{a}:{backendPort}" for a in wanted))
            settled = time.monotonic()
            yield sleep(0.5)
        yield load.stop()

        self.assertEqual(load.failures, [])
        # Within an interval, and the time a lookup takes.
        for seconds in took:
            self.assertLess(seconds, INTERVAL + 0.3)
        self.assertIn(b"127.0.0.3", {name for _, name in load.served})
        # A client that connected before the pool changed may still be
        # served by a vanished address however late it reads its answer;
        # one that connected after it may not.
        after = {name for at, name in load.served if at > settled}
        self.assertEqual(after, {b"127.0.0.3"})
        self.assertGreater(len(load.served), 50)


class ServiceDiscoveryTests(TestCase):
    """
    C{discovery: {srv: ...}}: one backend per target address, on the
    record's port, weighted by the record's weight.
    """

    timeout = 30

    @inlineCallbacks
    def test_weightsArePortsAndWeightsOfTheRecords(self) -> Any:
        """
        Each SRV target's address becomes a backend on the record's port
        with its weight (clamped to 1-256); a record of a higher priority
        than the lowest gives a backup; a weight changed in DNS changes the
        backend's.  Clients are served by the backends so found.
        """
        dnsServer = DNSServer(self)
        ports = {a: listenOn(self, [a]) for a in ("127.0.0.1", "127.0.0.2", "127.0.0.3")}
        zone = dnsServer.zone
        for label, address in zip("abc", ports):
            zone.addresses(f"{label}.app.internal", address)
        name = "_app._tcp.app.internal"
        zone.services(name, (0, 5, ports["127.0.0.1"], "a.app.internal"),
                      (0, 300, ports["127.0.0.2"], "b.app.internal"),
                      (1, 0, ports["127.0.0.3"], "c.app.internal"))
        lb, port = startBalancer(self, {
            "resolvers": dnsServer.resolvers,
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1"}],
            "pools": {"web": {"policy": "weighted", "discovery": {
                "srv": name, "interval": f"{INTERVAL}s"}}},
        })
        pool = lb.pools["web"]
        self.assertTrue((yield waitFor(lambda: len(pool) == 3)))
        expected = {f"{name}:127.0.0.1:{ports['127.0.0.1']}": 5,
                    f"{name}:127.0.0.2:{ports['127.0.0.2']}": 256,
                    f"{name}:127.0.0.3:{ports['127.0.0.3']}": 1}
        self.assertEqual(discovered(pool), expected)
        self.assertEqual([b.backup for b in sorted(pool, key=lambda b: b.name)],
                         [False, False, True])
        served = set()
        for _ in range(6):
            served.add((yield inThread(firstLine, port)))
        self.assertLessEqual(served, {b"127.0.0.1", b"127.0.0.2"})

        zone.services(name, (0, 40, ports["127.0.0.1"], "a.app.internal"),
                      (0, 300, ports["127.0.0.2"], "b.app.internal"),
                      (1, 0, ports["127.0.0.3"], "c.app.internal"))
        first = f"{name}:127.0.0.1:{ports['127.0.0.1']}"
        self.assertTrue((yield waitFor(lambda: pool.get(first).weight == 40)))  # type: ignore[union-attr]


class KeepLastGoodSetTests(TestCase):
    """
    DNS trouble keeps the pool as it was and is logged once per change.
    """

    timeout = 30

    def discovery(self, dnsServer: DNSServer) -> tuple[BackendPool, PoolDiscovery, list[dict]]:
        """
        A pool discovering C{app.internal:8080} through C{dnsServer}, with
        lookups that time out quickly, and the events it logs.
        """
        config = parseConfig({
            "listeners": [{"listen": "tcp:0"}],
            "pools": {"web": {"discovery": {"dns": "app.internal", "port": 8080,
                                            "interval": f"{INTERVAL}s"}}},
        })
        pool = BackendPool(config.pools[0], clock=reactor.seconds)
        resolver = client.Resolver(servers=[("127.0.0.1", dnsServer.number)], reactor=reactor)
        service = PoolDiscovery(pool, config.pools[0].discovery,  # type: ignore[arg-type]
                                resolver, reactor, timeout=(0.2,))
        events: list[dict] = []
        service.log = Logger(observer=events.append)
        service.startService()
        self.addCleanup(service.stopService)
        return pool, service, events

    @inlineCallbacks
    def test_serverStoppedKeepsTheLastSet(self) -> Any:
        """
        With the DNS server stopped, lookups fail and the pool keeps its
        backends; the failure is logged once however many lookups fail, and
        the server's return (with a new answer) is logged and applied.
        """
        dnsServer = DNSServer(self)
        dnsServer.zone.addresses("app.internal", "127.0.0.1", "127.0.0.2")
        pool, service, events = self.discovery(dnsServer)
        self.assertTrue((yield waitFor(lambda: len(pool) == 2)))
        yield dnsServer.stop()
        self.assertTrue((yield waitFor(lambda: service.state == "failed")))
        answers = service.answers
        yield sleep(4 * (INTERVAL + 0.2))
        self.assertEqual(sorted(discovered(pool)),
                         ["app.internal:127.0.0.1:8080", "app.internal:127.0.0.2:8080"])
        self.assertEqual(service.answers, answers)
        warnings = [e for e in events if e["log_level"].name == "warn"]
        self.assertEqual(len(warnings), 1)
        self.assertIn("failed", warnings[0]["log_format"].format(**warnings[0]))

        dnsServer.zone.addresses("app.internal", "127.0.0.3")
        dnsServer.start()
        self.assertTrue((yield waitFor(lambda: list(discovered(pool)) == [
            "app.internal:127.0.0.3:8080"])))
        self.assertEqual(service.state, "ok")
        self.assertEqual(
            len([e for e in events if e["log_level"].name == "warn"]), 1)
        self.assertTrue(any("answers again" in e["log_format"] for e in events))

    @inlineCallbacks
    def test_emptyAnswerKeepsTheLastSet(self) -> Any:
        """
        A name that stops existing (NXDOMAIN) never empties the pool: the
        last set stays, with one warning.
        """
        dnsServer = DNSServer(self)
        dnsServer.zone.addresses("app.internal", "127.0.0.1")
        pool, service, events = self.discovery(dnsServer)
        self.assertTrue((yield waitFor(lambda: len(pool) == 1)))
        dnsServer.zone.addresses("app.internal")
        self.assertTrue((yield waitFor(lambda: service.state == "empty")))
        yield sleep(3 * INTERVAL)
        self.assertEqual(list(discovered(pool)), ["app.internal:127.0.0.1:8080"])
        self.assertEqual(len([e for e in events if e["log_level"].name == "warn"]), 1)


class DrainTests(TestCase):
    """
    With run-time control, a vanished backend is drained, not cut, and
    nothing discovered is saved to the state file.
    """

    timeout = 30

    @inlineCallbacks
    def test_vanishedBackendIsDrained(self) -> Any:
        """
        A client connected to a backend whose address leaves DNS keeps its
        connection (the backend is in L{LiveConfig.draining}), and the state
        file records nothing of it.
        """
        dnsServer = DNSServer(self)
        addresses = ["127.0.0.1", "127.0.0.2"]
        backendPort = listenOn(self, addresses)
        dnsServer.zone.addresses("app.internal", *addresses)
        statePath = self.mktemp()
        balancer = Balancer(parseConfig({
            "resolvers": dnsServer.resolvers,
            "listeners": [{"listen": "tcp:0:interface=127.0.0.1"}],
            "pools": {"web": {"discovery": {"dns": "app.internal", "port": backendPort,
                                            "interval": f"{INTERVAL}s"}}},
        }), reactor, statePath=statePath, signals=False, freezeHeap=False)
        balancer.startService()
        self.addCleanup(balancer.stopService)
        live = balancer.live
        assert live is not None
        self.addCleanup(live.closeEverything)
        pool = balancer.loadBalancer.pools["web"]
        self.assertTrue((yield waitFor(lambda: len(pool) == 2)))
        listener = balancer.loadBalancer.getServiceNamed("listener:listener0")
        port = listener._waitingForPort.result.getHost().port  # type: ignore[attr-defined]

        client = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.addCleanup(client.close)
        name = (yield inThread(client.recv, 100)).strip().decode()
        other = next(a for a in addresses if a != name)
        dnsServer.zone.addresses("app.internal", other)
        gone = f"app.internal:{name}:{backendPort}"
        self.assertTrue((yield waitFor(lambda: gone not in pool)))
        self.assertEqual([b.name for b in live.draining], [gone])
        client.sendall(b"still here")
        self.assertEqual((yield inThread(client.recv, 100)), b"still here")
        try:
            with open(statePath) as f:
                saved = f.read()
        except FileNotFoundError:
            saved = ""
        self.assertNotIn("app.internal", saved)


class UnitTests(SynchronousTestCase):
    """
    The pure parts: delays, weights, names, and reconcile leaving
    discovered backends alone.
    """

    def test_nextDelay(self) -> None:
        """
        The next lookup comes after the interval, or the TTL if shorter,
        but never under a second because of a TTL.
        """
        self.assertEqual(nextDelay(10.0, None), 10.0)
        self.assertEqual(nextDelay(10.0, 60), 10.0)
        self.assertEqual(nextDelay(10.0, 4), 4.0)
        self.assertEqual(nextDelay(10.0, 0), 1.0)
        self.assertEqual(nextDelay(0.2, 0), 0.2)

    def test_srvWeight(self) -> None:
        """
        SRV weights are clamped to the backend weights 1-256.
        """
        self.assertEqual([srvWeight(w) for w in (0, 1, 40, 256, 257, 65535)],
                         [1, 1, 40, 256, 256, 256])

    def test_namesAreValidBackendNames(self) -> None:
        """
        Discovered backend names pass the configuration's name rule, IPv6
        and long names included, and stay distinct per address.
        """
        long = "a" * 60 + ".internal"
        names = [
            backendName("app.internal", Found("10.0.0.5", 8080)),
            backendName("app.internal", Found("::1", 8080)),
            backendName(long, Found("10.0.0.5", 8080)),
            backendName(long, Found("10.0.0.6", 8080)),
        ]
        self.assertEqual(names[:2], ["app.internal:10.0.0.5:8080", "app.internal:[::1]:8080"])
        for name in names:
            self.assertRegex(name, _NAME)
        self.assertEqual(len(set(names)), 4)

    def test_configsAreDiscoveredWithEscapedEndpoints(self) -> None:
        """
        Found addresses become discovered backends; an IPv6 address is
        escaped in the endpoint string.
        """
        configs = backendConfigs(
            Discovery("dns", "app.internal", 80),
            Answer((Found("127.0.0.1", 80), Found("::1", 80, 3, True)), 5),
            BackendConfig("x", "tcp:host=x:port=1").health,
        )
        self.assertEqual(
            [(c.endpoint, c.weight, c.backup, c.discovered) for c in configs.values()],
            [("tcp:host=127.0.0.1:port=80", 1, False, True),
             (r"tcp:host=\:\:1:port=80", 3, True, True)])

    def test_discoveredTLS(self) -> None:
        """
        Discovered backends take their pool's TLS settings; found by an
        address lookup, their certificates must name the name looked up
        unless the pool names another (SRV targets are verified by address
        unless it does).
        """
        answer = Answer((Found("127.0.0.1", 443),), 5)
        health = BackendConfig("x", "tcp:host=x:port=1").health
        dns = Discovery("dns", "app.internal", 443)
        for discovery, tls, verified in [
            (dns, BackendTLS(ca="ca.pem"), BackendTLS(ca="ca.pem", verifyHost="app.internal")),
            (dns, BackendTLS(verifyHost="other"), BackendTLS(verifyHost="other")),
            (Discovery("srv", "_app._tcp.internal"), BackendTLS(), BackendTLS()),
            (dns, None, None),
        ]:
            configs = backendConfigs(discovery, answer, health, tls)
            self.assertEqual([c.tls for c in configs.values()], [verified], discovery)

    def test_reconcileLeavesDiscoveredBackends(self) -> None:
        """
        A reload's reconcile, which makes a pool match the file, keeps the
        discovered backends the file cannot name.
        """
        config = parseConfig({
            "listeners": [{"listen": "tcp:0"}],
            "pools": {"web": {"backends": ["127.0.0.1:81"],
                              "discovery": {"dns": "app.internal", "port": 80}}},
        })
        pool = BackendPool(config.pools[0])
        pool.add(BackendConfig("app.internal:127.0.0.2:80", "tcp:host=127.0.0.2:port=80",
                               discovered=True))
        live = LiveConfig({"web": pool}, config, reactor)
        live.reconcile()
        self.assertEqual(sorted(b.name for b in pool),
                         ["127.0.0.1:81", "app.internal:127.0.0.2:80"])
        view = backendView(pool, pool.get("app.internal:127.0.0.2:80"))  # type: ignore[arg-type]
        self.assertTrue(view["discovered"])
        self.assertFalse(backendView(pool, pool.get("127.0.0.1:81"))["discovered"])  # type: ignore[arg-type]


class ConfigTests(SynchronousTestCase):
    """
    The C{discovery:} and C{resolvers:} keys.
    """

    def config(self, discovery: object, **top: object) -> Any:
        return parseConfig({
            "listeners": [{"listen": "tcp:0"}],
            "pools": {"web": {"discovery": discovery}},
            **top,
        })

    def test_valid(self) -> None:
        """
        dns with a port, srv without, intervals with units, and resolvers
        as HOST:PORT strings (IPv6 in brackets).
        """
        c = self.config({"dns": "app.internal.", "port": 8080, "interval": "250ms"},
                        resolvers=["127.0.0.1:53", "[::1]:5353"])
        self.assertEqual(c.pools[0].discovery, Discovery("dns", "app.internal", 8080, 0.25))
        self.assertEqual(c.resolvers, (("127.0.0.1", 53), ("::1", 5353)))
        c = self.config({"srv": "_http._tcp.app.internal"})
        self.assertEqual(c.pools[0].discovery, Discovery("srv", "_http._tcp.app.internal"))
        self.assertEqual(c.resolvers, ())

    def test_errorsNameTheKey(self) -> None:
        """
        Each mistake is one line naming the key.
        """
        for discovery, top, path in [
            ({"dns": "a.internal"}, {}, "pools.web.discovery.port"),
            ({"srv": "_h._tcp.a", "port": 80}, {}, "pools.web.discovery.port"),
            ({"dns": "a", "srv": "b", "port": 1}, {}, "pools.web.discovery"),
            ({"port": 1}, {}, "pools.web.discovery"),
            ({"dns": "bad name!", "port": 1}, {}, "pools.web.discovery.dns"),
            ({"dns": "a", "port": 0}, {}, "pools.web.discovery.port"),
            ({"dns": "a", "port": 1, "interval": "soon"}, {}, "pools.web.discovery.interval"),
            ({"dns": "a", "port": 1, "ttl": 1}, {}, "pools.web.discovery.ttl"),
            ({"dns": "a", "port": 1}, {"resolvers": ["127.0.0.1"]}, "resolvers[0]"),
            ({"dns": "a", "port": 1}, {"resolvers": ["127.0.0.1:99999"]}, "resolvers[0]"),
            ({"dns": "a", "port": 1}, {"resolvers": "127.0.0.1:53"}, "resolvers"),
            ({"dns": "a", "port": 1}, {"resolvers": []}, "resolvers"),
        ]:
            with self.assertRaises(ConfigError, msg=repr(discovery)) as caught:
                self.config(discovery, **top)
            self.assertEqual(caught.exception.path, path, str(caught.exception))
            self.assertNotIn("\n", str(caught.exception))
