"""
Tests for L{lbtwist.config}.
"""

from __future__ import annotations

import os
import re
from typing import Any

import yaml
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import (
    AccessLogSink,
    BackendTLS,
    CertificateFiles,
    ConfigError,
    HealthCheck,
    ListenerTLS,
    Outlier,
    importExtensions,
    loadConfigFile,
    parseConfig,
)
from lbtwist.routeconfig import Redirect
from lbtwist.state import defaultStatePath


def minimal(**pool: Any) -> dict[str, Any]:
    """
    A valid configuration with one listener and a pool with the given keys.
    """
    body: dict[str, Any] = {"backends": [{"host": "127.0.0.1", "port": 8001}]}
    body.update(pool)
    return {"listeners": [{"listen": "tcp:8080"}], "pools": {"web": body}}


class ParseTests(SynchronousTestCase):
    """
    Valid configurations are parsed into the model.
    """

    def test_full(self) -> None:
        """
        Every key maps onto the model, with durations in any unit.
        """
        config = parseConfig(
            {
                "status-interval": "5s",
                "admin": "tcp:9000:interface=127.0.0.1",
                "listeners": [
                    {"name": "front", "listen": "tcp:8080", "pool": "web", "mode": "http"}
                ],
                "pools": {
                    "web": {
                        "policy": "leastconn",
                        "retries": 1,
                        "timeouts": {"connect": "250ms", "idle": 60},
                        "health": {"interval": 1, "rise": 3, "fall": 2,
                                   "type": "http", "path": "/health",
                                   "expect-status": "200-299,304"},
                        "backends": [
                            {"name": "app1", "host": "10.0.0.5", "port": 80, "weight": 3,
                             "health": {"fall": 5}},
                            {"endpoint": "unix:/run/app.sock"},
                            "tcp:host=10.0.0.6:port=81",
                        ],
                    }
                },
            }
        )
        pool = config.pool("web")
        self.assertEqual(config.statusInterval, 5.0)
        self.assertEqual(config.listeners[0].mode, "http")
        self.assertEqual(pool.timeouts.connect, 0.25)
        self.assertEqual(pool.timeouts.idle, 60.0)
        self.assertEqual(pool.policy, "leastconn")
        app1, unix, tcp = pool.backends
        self.assertEqual(app1.endpoint, "tcp:host=10.0.0.5:port=80")
        self.assertEqual(app1.weight, 3)
        # Pool-wide health settings, overridden per backend.
        self.assertEqual(app1.health.fall, 5)
        self.assertEqual(app1.health.rise, 3)
        self.assertEqual(app1.health.expectStatus, ((200, 299), (304, 304)))
        self.assertEqual(unix.health.fall, 2)
        self.assertEqual(unix.name, "app.sock")
        self.assertEqual(tcp.name, "10.0.0.6:81")

    def test_defaultNamesAreNames(self) -> None:
        """
        A backend given without a name gets one that is itself valid (so it
        survives the state file), also for IPv6, UNIX sockets and long
        host names.
        """
        from lbtwist.config import _NAME
        from lbtwist.endpoints import parseEndpoint

        for endpoint, expected in [
            ("tcp:host=10.0.0.5:port=80", "10.0.0.5:80"),
            ("tcp:host=\\:\\:1:port=8080", "[::1]:8080"),
            ("unix:/run/app.sock", "app.sock"),
            ("unix:path=/run/x.sock:timeout=3", "x.sock"),
            ("tcp:host=" + "a" * 80 + ":port=1", "a" * 64),
        ]:
            name = parseEndpoint(endpoint, False).defaultName
            self.assertEqual(name, expected)
            self.assertTrue(_NAME.match(name), name)

    def test_backendHostIPv6(self) -> None:
        """
        A backend's C{host} may be an IPv6 address bare or in brackets, as a
        URL writes it: both mean the same endpoint and name.
        """
        for host in ("::1", "[::1]"):
            config = parseConfig(minimal(backends=[{"host": host, "port": 8080}]))
            [backend] = config.pool("web").backends
            self.assertEqual((backend.endpoint, backend.name),
                             ("tcp:host=\\:\\:1:port=8080", "[::1]:8080"), host)

    def test_defaults(self) -> None:
        """
        Defaults follow HAProxy: rise 2, fall 3; the one pool is used by
        listeners that name none.
        """
        config = parseConfig(minimal())
        self.assertEqual(config.listeners[0].pool, "web")
        self.assertEqual(config.pool("web").health, HealthCheck())
        self.assertEqual((HealthCheck().rise, HealthCheck().fall), (2, 3))


class ErrorTests(SynchronousTestCase):
    """
    Every invalid configuration is refused with the key path and the problem.
    """

    def assertError(self, data: Any, message: str) -> None:
        """
        Parsing C{data} fails with exactly C{message}.
        """
        with self.assertRaises(ConfigError) as e:
            parseConfig(data)
        self.assertEqual(str(e.exception), message)

    def test_badPort(self) -> None:
        """
        The issue's own example.
        """
        data = minimal()
        data["pools"]["web"]["backends"] = [
            {"host": "a", "port": 1}, {"host": "b", "port": 2}, {"host": "c", "port": "80x"}
        ]
        self.assertError(
            data, "pools.web.backends[2].port: expected an integer 1-65535, got '80x'"
        )

    def test_unknownTopKey(self) -> None:
        """
        Unknown keys are refused, with the keys that are allowed.
        """
        data = minimal()
        data["listners"] = []
        with self.assertRaises(ConfigError) as e:
            parseConfig(data)
        self.assertEqual(e.exception.path, "listners")
        self.assertIn("unknown key", e.exception.problem)

    def test_unknownNestedKey(self) -> None:
        """
        Unknown keys deep inside are named by their full path.
        """
        data = minimal()
        data["pools"]["web"]["backends"][0]["wieght"] = 2
        with self.assertRaises(ConfigError) as e:
            parseConfig(data)
        self.assertEqual(e.exception.path, "pools.web.backends[0].wieght")

    def test_unknownPolicy(self) -> None:
        """
        Policies are checked by name.
        """
        self.assertError(
            minimal(policy="fastest"),
            "pools.web.policy: expected one of roundrobin, weighted, leastconn, "
            "random, p2c, source (or one a module in extensions registers), got 'fastest'",
        )

    def test_choiceNamesItsSpellingHere(self) -> None:
        """
        A policy or check kind given as HAProxy or nginx name it, or spelt
        near a name, is refused with the names, then the one meant.
        """
        names = ("pools.web.policy: expected one of roundrobin, weighted, leastconn, random, "
                 "p2c, source (or one a module in extensions registers), got ")
        self.assertError(minimal(policy="least_conn"),
                         names + "'least_conn'; nginx's least_conn is leastconn here")
        self.assertError(minimal(policy="ip_hash"),
                         names + "'ip_hash'; nginx's ip_hash is source here")
        self.assertError(minimal(policy="lestconn"), names + "'lestconn'; did you mean leastconn?")
        self.assertError(minimal(health={"type": "httpchk"}),
                         "pools.web.health.type: expected one of tcp, http (or one a module "
                         "in extensions registers), got 'httpchk'; HAProxy's option httpchk "
                         "is http here")

    def test_duplicateBackend(self) -> None:
        """
        Two backends of one pool cannot share a name.
        """
        self.assertError(
            minimal(backends=[{"name": "x", "host": "a", "port": 1},
                              {"name": "x", "host": "b", "port": 2}]),
            "pools.web.backends[1].name: duplicate backend name 'x' (also at [0])",
        )

    def test_wrongTypes(self) -> None:
        """
        Wrong types name what was expected and what was found.
        """
        self.assertError(minimal(retries="many"),
                         "pools.web.retries: expected an integer 0-100, got 'many'")
        self.assertError(minimal(backends="a"),
                         "pools.web.backends: expected a list, got 'a'")
        self.assertError(minimal(timeouts={"connect": -1}),
                         "pools.web.timeouts.connect: expected a duration from 0.001 "
                         "to 86400 seconds (a number, or a string like '250ms' or "
                         "'5s'), got -1")
        self.assertError(minimal(health={"rise": True}),
                         "pools.web.health.rise: expected an integer 1-100, got true")
        self.assertError([], "expected a mapping, got a list")

    def test_outOfRange(self) -> None:
        """
        Numbers outside their range are refused.
        """
        data = minimal()
        data["pools"]["web"]["backends"][0]["weight"] = 1000
        self.assertError(
            data, "pools.web.backends[0].weight: expected an integer 0-256, got 1000"
        )
        self.assertError(minimal(health={"fall": 0}),
                         "pools.web.health.fall: expected an integer 1-100, got 0")

    def test_listenAsHAProxyOrNginxWritesIt(self) -> None:
        """
        A listener given as HAProxy's C{bind} or nginx's C{listen} writes its
        address (C{HOST:PORT}, C{:PORT}, C{*:PORT}, C{[IPV6]:PORT}, a bare
        port) is refused with the endpoint string that says the same.
        """
        kinds = "tcp:, tcp6:, unix:, ssl:, tls:, systemd:"
        for given, endpoint in [("127.0.0.1:8443", "tcp:8443:interface=127.0.0.1"),
                                (":8080", "tcp:8080"), ("*:8080", "tcp:8080"),
                                ("0.0.0.0:8080", "tcp:8080"), ("8080", "tcp:8080"),
                                ("localhost:8080", "tcp:8080:interface=127.0.0.1"),
                                ("[::1]:8443", "tcp6:8443:interface=\\:\\:1"),
                                ("[::]:80", "tcp6:80")]:
            data = minimal()
            data["listeners"][0]["listen"] = given
            self.assertError(data, f"listeners[0].listen: expected an endpoint string "
                                   f"starting with one of {kinds}, got {given!r}; "
                                   f"write {endpoint}")
        data = minimal()
        data["listeners"][0]["listen"] = "udp:53"
        self.assertError(data, f"listeners[0].listen: expected an endpoint string starting "
                               f"with one of {kinds}, got 'udp:53'")

    def test_badEndpoints(self) -> None:
        """
        Endpoint strings are checked for their kind and address.
        """
        data = minimal()
        data["listeners"][0]["listen"] = "udp:53"
        with self.assertRaises(ConfigError) as e:
            parseConfig(data)
        self.assertEqual(e.exception.path, "listeners[0].listen")
        data = minimal(backends=[{"endpoint": "tcp:host=a"}])
        with self.assertRaises(ConfigError) as e:
            parseConfig(data)
        self.assertEqual(e.exception.path, "pools.web.backends[0].endpoint")

    def test_backendShape(self) -> None:
        """
        A backend needs an address, given one way only.
        """
        self.assertError(minimal(backends=[{"name": "x"}]),
                         "pools.web.backends[0]: a backend needs an endpoint, "
                         "or a host and a port")
        self.assertError(
            minimal(backends=[{"endpoint": "tcp:host=a:port=1", "host": "a"}]),
            "pools.web.backends[0]: give either endpoint, or host and port, not both",
        )

    def test_backendHost(self) -> None:
        """
        A backend's C{host} that is neither a host name nor an IP address
        (bare, or an IPv6 one in brackets) is refused saying the forms it
        takes; so is an endpoint string with an IPv6 address in brackets,
        which Twisted's parser splits at its colons, saying how to write it.
        """
        forms = "expected a host name or an IP address, like 'app.internal', " \
                "'10.0.0.5', '::1' or '[::1]', got "
        for host in ("[::1", "[foo]", "[]", "[127.0.0.1]", "bad_host!", "a b", "[::1]:80",
                     "app:80"):
            self.assertError(minimal(backends=[{"host": host, "port": 80}]),
                             f"pools.web.backends[0].host: {forms}{host!r}")
        self.assertError(
            minimal(backends=[{"endpoint": "tcp:host=[::1]:port=80"}]),
            "pools.web.backends[0].endpoint: an IPv6 address in an endpoint string has its "
            "colons escaped (tcp:host=\\:\\:1:port=80), or give [::1]:80; got "
            "'tcp:host=[::1]:port=80'")

    def test_listeners(self) -> None:
        """
        Listeners need a known pool (or a single one to default to) and mode.
        """
        data = minimal()
        data["listeners"][0]["pool"] = "api"
        self.assertError(data, "listeners[0].pool: no pool named 'api'")
        data = minimal()
        data["listeners"][0]["mode"] = "udp"
        self.assertError(data, "listeners[0].mode: expected one of tcp, http, got 'udp'")
        data = minimal()
        data["pools"]["api"] = data["pools"]["web"]
        self.assertError(data, "listeners[0].pool: required when there are several pools")
        self.assertError({"pools": minimal()["pools"]},
                         "listeners: at least one listener is needed")
        self.assertError({"listeners": [{"listen": "tcp:1"}]},
                         "pools: at least one pool is needed")

    def test_listenerTLS(self) -> None:
        """
        A TLS listener's C{tls} block is a mapping of known keys; C{alpn}
        lists protocol names, only those HTTP mode speaks in HTTP mode;
        C{certificates} lists C{cert} and C{key} files, and a C{tcp:}
        listener needs them; C{min-version} is 1.2 or 1.3; no other
        endpoint kind takes a block.
        """
        def tls(value: Any, listen: str = "ssl:8443:privateKey=k.pem", mode: str = "tcp") -> Any:
            data = minimal()
            data["listeners"][0].update(listen=listen, mode=mode, tls=value)
            return data

        cases = [
            (tls({"alpn": ["h2"]}, listen="tcp:8080"),
             "listeners[0].tls.certificates: required on a tcp: listener (or listen on ssl:)"),
            (tls({"alpn": ["h2"]}, listen="unix:/run/lb.sock"),
             "listeners[0].tls: only a tcp: or ssl: listener has TLS settings, "
             "not 'unix:/run/lb.sock'"),
            (tls({"certificates": []}),
             "listeners[0].tls.certificates: expected at least one {cert: FILE, key: FILE}"),
            (tls({"certificates": [{"cert": "a.pem"}]}, listen="tcp:8443"),
             "listeners[0].tls.certificates[0].key: required (a PEM file; the cert file "
             "again if it holds the key too, as HAProxy's crt file does)"),
            (tls({"certificates": [{"cert": "a.pem", "key": "a.key", "chain": "c.pem"}]}),
             "listeners[0].tls.certificates[0].chain: unknown key (expected one of: cert, key)"),
            (tls({"certificates": [{"cert": "", "key": "a.key"}]}),
             "listeners[0].tls.certificates[0].cert: expected a non-empty string, got ''"),
            (tls({"min-version": "1.1"}),
             "listeners[0].tls.min-version: expected one of 1.2, 1.3, got '1.1'"),
            (tls({"ciphers": 3}), "listeners[0].tls.ciphers: expected a non-empty string, got 3"),
            (tls({"sni": True}),
             "listeners[0].tls.sni: unknown key (expected one of: certificates, alpn, "
             "min-version, ciphers, handshake-timeout)"),
            (tls(["h2"]), "listeners[0].tls: expected a mapping, got a list"),
            (tls({"alpn": "h2"}), "listeners[0].tls.alpn: expected a list, got 'h2'"),
            (tls({"alpn": ["h2", 2]}),
             "listeners[0].tls.alpn[1]: expected a non-empty string, got 2"),
            (tls({"alpn": ["h2", "h2"]}), "listeners[0].tls.alpn[1]: 'h2' is listed twice"),
            (tls({"alpn": ["h\u00e9"]}),
             "listeners[0].tls.alpn[0]: expected a protocol name like 'h2' or 'http/1.1', "
             "got 'h\u00e9'"),
            (tls({"alpn": ["x" * 256]}),
             "listeners[0].tls.alpn[0]: expected a protocol name like 'h2' or 'http/1.1', "
             f"got '{'x' * 256}'"),
            (tls({"alpn": ["spdy/3", "http/1.1"]}, mode="http"),
             "listeners[0].tls.alpn[0]: http mode speaks h2, http/1.1, http/1.0 only, not "
             "'spdy/3' (offer it from a tcp mode listener)"),
        ]
        for data, message in cases:
            self.assertError(data, message)
        parsed = [
            (tls({"alpn": ["h2", "http/1.1"]}), ("h2", "http/1.1")),
            (tls({}), ()),
            (tls(None), ()),
            (tls({"alpn": []}, mode="http"), ()),
            (tls(None, mode="http"), ("http/1.1",)),
            (tls({}, mode="http"), ("http/1.1",)),
            (tls(None, listen="tcp:8080", mode="http"), ("http/1.1",)),
        ]
        for data, alpn in parsed:
            self.assertEqual(parseConfig(data).listeners[0].alpn, alpn, data)
        listener = parseConfig(tls({
            "certificates": [{"cert": "a.pem", "key": "a.key"}, {"cert": "b.pem", "key": "b.key"}],
            "min-version": 1.3, "ciphers": "ECDHE+AESGCM"}, listen="tcp:8443")).listeners[0]
        self.assertEqual(listener.tls, ListenerTLS(
            certificates=(CertificateFiles("a.pem", "a.key"), CertificateFiles("b.pem", "b.key")),
            minVersion="1.3", ciphers="ECDHE+AESGCM"))
        self.assertTrue(listener.terminatesTLS)
        self.assertEqual(parseConfig(tls({}, listen="ssl:8443:privateKey=k.pem")).listeners[0].tls,
                         ListenerTLS(minVersion="1.2"))
        self.assertFalse(parseConfig(minimal()).listeners[0].terminatesTLS)

    def test_backendTLS(self) -> None:
        """
        A pool's C{tls} block applies to each of its backends, a backend's
        own keys over it; an C{ssl:} backend endpoint, which would not be
        verified, is refused with how to verify it or opt out.
        """
        def pool(tls: Any = None, backend: Any = None, endpoint: str = "tcp:host=app:port=443") -> Any:
            data = minimal()
            entry: dict[str, Any] = {"name": "a", "endpoint": endpoint}
            if backend is not None:
                entry["tls"] = backend
            data["pools"]["web"]["backends"] = [entry]
            if tls is not None:
                data["pools"]["web"]["tls"] = tls
            return data

        cases = [
            (pool(endpoint="ssl:host=app:port=443"),
             "pools.web.backends[0].endpoint: an ssl: backend endpoint does not verify the "
             "backend's certificate; give it as tcp:host=HOST:port=PORT with tls: {ca: FILE} "
             "(or ca: system) to verify it, or with tls: {verify: false} to opt out explicitly"),
            (pool(backend={"ca": "ca.pem"}, endpoint="tls:app:443"),
             "pools.web.backends[0].tls: a tls: endpoint speaks TLS itself; give the backend a "
             "tcp: endpoint for its tls block"),
            (pool({"verify": "no"}), "pools.web.tls.verify: expected true or false, got 'no'"),
            (pool({"verify": False, "ca": "ca.pem"}),
             "pools.web.tls.verify: verify: false with ca or verify-host: give one or the other"),
            (pool({"client-cert": "c.pem"}),
             "pools.web.tls.client-key: client-cert and client-key go together"),
            (pool(backend={"client-key": "c.key"}),
             "pools.web.backends[0].tls.client-cert: client-cert and client-key go together"),
            (pool({"verify-host": "a b"}),
             "pools.web.tls.verify-host: expected a host name like 'app.internal', got 'a b'"),
            (pool({"ca": ""}), "pools.web.tls.ca: expected a non-empty string, got ''"),
            (pool({"cafile": "x"}),
             "pools.web.tls.cafile: unknown key (expected one of: ca, verify-host, client-cert, "
             "client-key, verify, sni)"),
        ]
        for data, message in cases:
            self.assertError(data, message)
        web = parseConfig(pool({"ca": "ca.pem", "verify-host": "app.internal"},
                               {"verify-host": "other.internal", "sni": "front.internal"})).pool("web")
        self.assertEqual(web.tls, BackendTLS(ca="ca.pem", verifyHost="app.internal"))
        self.assertEqual(web.backends[0].tls, BackendTLS(
            ca="ca.pem", verifyHost="other.internal", sni="front.internal"))
        self.assertEqual(parseConfig(pool({"verify": False})).pool("web").backends[0].tls,
                         BackendTLS(verify=False))
        self.assertEqual(parseConfig(pool(backend={})).pool("web").backends[0].tls, BackendTLS())
        self.assertIsNone(parseConfig(pool()).pool("web").backends[0].tls)

    def test_stickyNeedsHTTP(self) -> None:
        """
        Sticky sessions on a pool a TCP listener uses are refused, not ignored.
        """
        self.assertError(
            minimal(sticky={"cookie": "SRV"}),
            "pools.web.sticky: cookie stickiness needs http mode, but listener "
            "'listener0' is tcp (for TCP, use policy: source)",
        )
        data = minimal(sticky={"cookie": "SRV"})
        data["listeners"][0]["mode"] = "http"
        self.assertEqual(parseConfig(data).pool("web").sticky.kind, "cookie")  # type: ignore[union-attr]

    def test_healthKeys(self) -> None:
        """
        HTTP health-check settings are checked too.
        """
        self.assertError(minimal(health={"path": "health"}),
                         "pools.web.health.path: expected a path starting with '/', "
                         "got 'health'")
        self.assertError(minimal(health={"expect-status": "2xx"}),
                         "pools.web.health.expect-status: expected statuses like "
                         "'200-399' or '200,204', got '2xx'")
        self.assertError(minimal(health={"type": "icmp"}),
                         "pools.web.health.type: expected one of tcp, http (or one a module "
                         "in extensions registers), got 'icmp'")


    def test_healthExpectations(self) -> None:
        """
        C{expect-body-regex} is compiled when the configuration is read (a
        bad pattern names the key); C{expect-header} takes header names
        with the values they must have.
        """
        health = parseConfig(minimal(health={
            "type": "http", "expect-body-regex": r"ready: \d+",
            "expect-header": {"X-Ready": "yes", "Cache-Control": " private "}})).pool("web").health
        self.assertEqual(health.expectBodyRegex, re.compile(rb"ready: \d+"))
        self.assertEqual(health.expectHeaders, (("X-Ready", "yes"), ("Cache-Control", "private")))
        for block, message in [
            ({"expect-body-regex": "ready: ("},
             "pools.web.health.expect-body-regex: the regular expression 'ready: (' does not "
             "compile: missing ), unterminated subpattern at position 7"),
            ({"expect-body-regex": ""},
             "pools.web.health.expect-body-regex: expected a non-empty string, got ''"),
            ({"expect-header": "X-Ready: yes"},
             "pools.web.health.expect-header: expected a mapping of header names to values, "
             "like {X-Ready: yes}, got 'X-Ready: yes'"),
            ({"expect-header": {"X Ready": "yes"}},
             "pools.web.health.expect-header: expected a header name, got 'X Ready'"),
            ({"expect-header": {"X-Ready": "yes\r\nX-Evil: 1"}},
             "pools.web.health.expect-header.X-Ready: a header value may not hold CR, LF or NUL"),
            ({"expect-header": {"X-Ready": " "}},
             "pools.web.health.expect-header.X-Ready: expected the value the header must "
             "have, got an empty one"),
            ({"expect-header": {"X-Ready": "yes", "x-ready": "no"}},
             "pools.web.health.expect-header.x-ready: the header is named twice (names are "
             "case-insensitive)"),
            ({"expect-header": {"X-Ready": ["yes"]}},
             "pools.web.health.expect-header.X-Ready: expected a string, got a list"),
            # (Each comma-separated element is compared: it never matches.)
            ({"expect-header": {"Cache-Control": "no-cache, private"}},
             "pools.web.health.expect-header.Cache-Control: expected one element of the "
             "header's value (each comma-separated element is compared alone), got "
             "'no-cache, private'"),
        ]:
            self.assertError(minimal(health={"type": "http", **block}), message)

    def test_headCheckReadsNoBody(self) -> None:
        """
        A C{HEAD} check with C{expect-body} or C{expect-body-regex} is
        refused (a response to C{HEAD} has no body, so such a check could
        never pass), naming the body expectation, or the method when a
        backend's block sets only it over a pool's that expects a body;
        either alone, or a body expectation with C{GET}, is accepted.
        """
        why = ("a HEAD check's response has no body to look in; use method: GET "
               "(or drop the body expectation)")
        for block, message in [
            ({"method": "HEAD", "expect-body": "ok"},
             f"pools.web.health.expect-body: {why}"),
            ({"method": "HEAD", "expect-body-regex": "ok"},
             f"pools.web.health.expect-body-regex: {why}"),
        ]:
            self.assertError(minimal(health={"type": "http", **block}), message)
        backend = {"host": "127.0.0.1", "port": 8001, "health": {"method": "HEAD"}}
        self.assertError(minimal(health={"type": "http", "expect-body": "ok"}, backends=[backend]),
                         f"pools.web.backends[0].health.method: {why}")
        backend["health"] = {"expect-body": "ok"}
        self.assertError(minimal(health={"type": "http", "method": "HEAD"}, backends=[backend]),
                         f"pools.web.backends[0].health.expect-body: {why}")
        backend["health"] = {"method": "GET", "expect-body": "ok"}
        self.assertEqual(parseConfig(minimal(
            health={"type": "http", "method": "HEAD"}, backends=[backend],
        )).pool("web").backends[0].health.expectBody, "ok")
        self.assertEqual(parseConfig(minimal(health={"type": "http", "method": "HEAD"}))
                         .pool("web").health.method, "HEAD")

    def test_listenerTimeouts(self) -> None:
        """
        A listener's C{timeouts} take C{idle} and C{request} (its clients'),
        each over its pool's; the backend side's are refused, saying where
        they go.
        """
        data = minimal(timeouts={"idle": "30s", "request": "7s"})
        data["listeners"][0]["timeouts"] = {"idle": "5s"}
        listener, pool = parseConfig(data).listeners[0], parseConfig(data).pool("web")
        self.assertEqual(listener.timeouts.idle, 5.0)
        self.assertIsNone(listener.timeouts.request)
        self.assertEqual(listener.clientTimeouts(pool), (5.0, 7.0))
        self.assertEqual(parseConfig(minimal()).listeners[0].clientTimeouts(pool), (30.0, 7.0))
        for block, message in [
            ({"idle": "soon"}, "listeners[0].timeouts.idle: expected a duration from 0.001 to "
                               "86400 seconds (a number, or a string like '250ms' or '5s'), "
                               "got 'soon'"),
            ({"response": "5s"}, "listeners[0].timeouts.response: a backend-side timeout: give "
                                 "it in the pool's timeouts (or a route's); a listener's are "
                                 "its clients' idle and request"),
            ({"client": "5s"}, "listeners[0].timeouts.client: unknown key (expected one of: "
                               "idle, request); HAProxy's timeout client is idle here (and "
                               "request, for a request head)"),
            ("5s", "listeners[0].timeouts: expected a mapping, got '5s'"),
        ]:
            data = minimal()
            data["listeners"][0]["timeouts"] = block
            self.assertError(data, message)

    def test_stickyAsAWord(self) -> None:
        """
        C{sticky} given as a word other than C{source} is refused with the
        shapes it takes, the word's own first.
        """
        self.assertError(minimal(sticky="cookie"),
                         "pools.web.sticky: expected {cookie: NAME}, {header: NAME} or "
                         "source, got 'cookie' (write {cookie: NAME})")
        self.assertError(minimal(sticky="header"),
                         "pools.web.sticky: expected {cookie: NAME}, {header: NAME} or "
                         "source, got 'header' (write {header: NAME})")
        self.assertError(minimal(sticky="ip"),
                         "pools.web.sticky: expected {cookie: NAME}, {header: NAME} or "
                         "source, got 'ip'")

    def test_httpRouteOnTCPListenerNamesTheMode(self) -> None:
        """
        A route that needs HTTP on a listener left in the default tcp mode
        is refused with the key, and the mode to give the listener.
        """
        redirect = minimal()
        redirect["listeners"][0]["routes"] = [{"redirect": {"scheme": "https"}}]
        self.assertError(redirect, "listeners[0].routes[0].redirect: only an http listener "
                                   "has this; a tcp route sends to pool or pools (give the "
                                   "listener mode: http; tcp is the default)")
        host = minimal()
        host["listeners"][0]["routes"] = [{"match": {"host": "a.example"}, "pool": "web"}]
        self.assertError(host, "listeners[0].routes[0].match.host: a tcp listener sees no "
                               "HTTP request: it matches on sni and source only (give the "
                               "listener mode: http; tcp is the default)")

    def test_unknownKeyNamesItsSpellingHere(self) -> None:
        """
        An unknown key that is HAProxy's or nginx's spelling of a key of that
        mapping is refused with the allowed keys, then the key it is here.
        """
        pools = ("policy, retries, timeouts, health, backends, http, sticky, "
                 "proxy-protocol, queue, access-log, retry-on, retry-budget, outlier, "
                 "all-backups, slow-start, discovery, tls, protocol")
        self.assertError(minimal(balance="leastconn"),
                         f"pools.web.balance: unknown key (expected one of: {pools}); "
                         "HAProxy's balance is policy here")
        self.assertError(minimal(slowstart="30s"),
                         f"pools.web.slowstart: unknown key (expected one of: {pools}); "
                         "HAProxy's slowstart is slow-start here")
        self.assertError(minimal(timeouts={"client": "30s"}),
                         "pools.web.timeouts.client: unknown key (expected one of: connect, "
                         "idle, response, request); HAProxy's timeout client is idle here "
                         "(and request, for a request head)")
        self.assertError(minimal(timeouts={"server": "30s"}),
                         "pools.web.timeouts.server: unknown key (expected one of: connect, "
                         "idle, response, request); HAProxy's timeout server is response "
                         "here (and idle, for a body or tunnel that stalls)")
        self.assertError(minimal(health={"uri": "/health"}),
                         "pools.web.health.uri: unknown key (expected one of: interval, "
                         "timeout, rise, fall, type, method, path, host, expect-status, "
                         "expect-body, expect-body-regex, expect-header); HAProxy's option "
                         "httpchk URI is path here")
        data = minimal()
        data["listeners"] = [{"bind": "tcp:8080"}]
        self.assertError(data,
                         "listeners[0].bind: unknown key (expected one of: name, listen, pool, "
                         "mode, tls, routes, default-route, http2, timeouts); HAProxy's bind is "
                         "listen here")

    def test_unknownKeyNamesTheNearKey(self) -> None:
        """
        An unknown key spelt near an allowed one (another case, underscores
        for dashes, a typing slip) is refused with the allowed keys, then
        the near one.
        """
        self.assertError(minimal(health={"expect_status": "200"}),
                         "pools.web.health.expect_status: unknown key (expected one of: "
                         "interval, timeout, rise, fall, type, method, path, host, "
                         "expect-status, expect-body, expect-body-regex, expect-header); did you "
                         "mean expect-status?")
        self.assertError(minimal(queue={"timout": "5s"}),
                         "pools.web.queue.timout: unknown key (expected one of: size, "
                         "timeout); did you mean timeout?")
        self.assertError(minimal(queue={"depth": 5}),
                         "pools.web.queue.depth: unknown key (expected one of: size, timeout)")


class ExtensionTests(SynchronousTestCase):
    """
    C{extensions}: modules imported before the rest is checked, whose
    registered names the rest may use.
    """

    def setUp(self) -> None:
        from .test_extend import useSample

        self.imported: list[str] = []
        useSample(self)

    def test_importedFirst(self) -> None:
        """
        Each module is imported, in order, before the pools are checked,
        and the configuration lists them.
        """
        def load(name: str) -> None:
            self.imported.append(name)

        self.assertEqual(importExtensions(["a.b", "c"], load=load), ("a.b", "c"))
        self.assertEqual(self.imported, ["a.b", "c"])
        config = parseConfig({"extensions": ["tests.extension_sample"],
                              **minimal(policy="first", health={"type": "banner"})})
        self.assertEqual(config.extensions, ("tests.extension_sample",))
        self.assertEqual((config.pools[0].policy, config.pools[0].health.kind),
                         ("first", "banner"))
        self.assertEqual(parseConfig(minimal()).extensions, ())

    def test_unknownNamesListRegistered(self) -> None:
        """
        An unknown policy, check or sink is refused with every name
        registered, the extensions' too.
        """
        for pool, message in [
            (minimal(policy="fastest"),
             "pools.web.policy: expected one of roundrobin, weighted, leastconn, random, p2c, "
             "source, first (or one a module in extensions registers), got 'fastest'"),
            (minimal(health={"type": "icmp"}),
             "pools.web.health.type: expected one of tcp, http, banner (or one a module in "
             "extensions registers), got 'icmp'"),
            (minimal(**{"access-log": {"sink": "kafka"}}),
             "pools.web.access-log.sink: expected one of events, file, jsonlines (or one a "
             "module in extensions registers), got 'kafka'"),
        ]:
            with self.assertRaises(ConfigError) as e:
                parseConfig(pool)
            self.assertEqual(str(e.exception), message)

    def test_importFails(self) -> None:
        """
        A module that cannot be imported is refused, naming the key, the
        module and the exception, before anything else is checked.
        """
        def broken(name: str) -> None:
            raise RuntimeError("no database driver")

        for value, load, message in [
            (["tests.no_such_extension"], __import__,
             "extensions[0]: cannot import tests.no_such_extension: ModuleNotFoundError: "
             "No module named 'tests.no_such_extension'"),
            (["ok", "bad"], lambda n: broken(n) if n == "bad" else None,
             "extensions[1]: cannot import bad: RuntimeError: no database driver"),
            ("tests.extension_sample", __import__, "extensions: expected a list, got "
             "'tests.extension_sample'"),
            (["tests/extension_sample.py"], __import__,
             "extensions[0]: expected a dotted module name, got 'tests/extension_sample.py'"),
        ]:
            with self.assertRaises(ConfigError) as e:
                importExtensions(value, load=load)
            self.assertEqual(str(e.exception), message)
        with self.assertRaises(ConfigError) as e:
            # (The listeners' error would come later.)
            parseConfig({"extensions": ["tests.no_such_extension"], "listeners": 3})
        self.assertEqual(e.exception.path, "extensions[0]")

    def test_sinkOptions(self) -> None:
        """
        A sink's options are its mapping's other keys: scalars, C{path}
        relative to the configuration's directory.
        """
        def sink(value: Any) -> Any:
            return parseConfig(minimal(**{"access-log": value}), directory="/etc/lb").pools[0]

        self.assertEqual(sink({"sink": "jsonlines", "path": "a.json", "level": 2}).accessLog,
                         AccessLogSink("jsonlines", (("level", 2), ("path", "/etc/lb/a.json"))))
        with self.assertRaises(ConfigError) as e:
            sink({"sink": "jsonlines", "tags": ["a"]})
        self.assertEqual(str(e.exception), "pools.web.access-log.tags: expected a string, "
                                           "number or boolean, got a list")


class FileTests(SynchronousTestCase):
    """
    Tests for L{loadConfigFile}.
    """

    def test_loads(self) -> None:
        """
        A YAML file is loaded and validated.
        """
        path = FilePath(self.mktemp())
        path.setContent(yaml.safe_dump(minimal()).encode())
        self.assertEqual(loadConfigFile(path.path).pool("web").backends[0].name,
                         "127.0.0.1:8001")

    def test_missing(self) -> None:
        """
        A missing file is a clear error.
        """
        with self.assertRaises(ConfigError) as e:
            loadConfigFile("/nonexistent/lb.yaml")
        self.assertIn("cannot read config file '/nonexistent/lb.yaml'", str(e.exception))

    def test_notYaml(self) -> None:
        """
        A file that is not YAML is a clear error.
        """
        path = FilePath(self.mktemp())
        path.setContent(b"pools: [unclosed\n")
        with self.assertRaises(ConfigError) as e:
            loadConfigFile(path.path)
        self.assertIn("is not valid YAML", str(e.exception))

    def test_duplicateKey(self) -> None:
        """
        A key given twice in one mapping (say, two pools of one name) is an
        error, not a silent last-one-wins.
        """
        path = FilePath(self.mktemp())
        path.setContent(
            b"listeners: [{listen: 'tcp:8080'}]\n"
            b"pools:\n  web: {backends: ['tcp:host=a:port=1']}\n"
            b"  web: {backends: ['tcp:host=b:port=2']}\n"
        )
        with self.assertRaises(ConfigError) as e:
            loadConfigFile(path.path)
        self.assertIn("found the key 'web' twice", str(e.exception))
        self.assertIn("line 3", str(e.exception))

    def test_anchorsAndMergeKeys(self) -> None:
        """
        Settings shared through YAML anchors and merge keys (C{<<: *name})
        apply, a key written beside the merge wins over the merged one, and
        top-level keys that begin with C{x-} hold the anchors (as
        docker-compose's do) and are otherwise ignored; anywhere else an
        C{x-} key is still unknown.
        """
        path = FilePath(self.mktemp())
        path.setContent(
            b"x-defaults: &defaults\n"
            b"  health: {type: http, path: /health}\n"
            b"  timeouts: {connect: 2s}\n"
            b"listeners: [{listen: 'tcp:8080', mode: http, pool: web}]\n"
            b"pools:\n"
            b"  web:\n    <<: *defaults\n    backends: ['tcp:host=a:port=1']\n"
            b"  api:\n    <<: *defaults\n    timeouts: {connect: 3s}\n"
            b"    backends: ['tcp:host=b:port=2']\n"
        )
        config = loadConfigFile(path.path)
        self.assertEqual(
            [(p.name, p.health.kind, p.health.path, p.timeouts.connect) for p in config.pools],
            [("web", "http", "/health", 2.0), ("api", "http", "/health", 3.0)])
        for data, where in [
            ({"x-": 1, "pools": {"web": {"x-note": 1, "backends": ["a:1"]}}}, "pools.web.x-note"),
            ({"xdefaults": 1}, "xdefaults"),
        ]:
            data = {"listeners": [{"listen": "tcp:8080"}],
                    "pools": {"web": {"backends": ["a:1"]}}, **data}
            with self.assertRaises(ConfigError) as e:
                parseConfig(data)
            self.assertEqual(e.exception.path, where)

    def test_exampleConfig(self) -> None:
        """
        The example lb.yaml shipped with the project is valid.
        """
        example = FilePath(__file__).parent().parent().child("lb.yaml")
        config = loadConfigFile(example.path)
        self.assertTrue(config.pools)

    def test_exampleDefaults(self) -> None:
        """
        lb.yaml says it shows every option with its default: the settings
        it gives are the defaults (a pool's, the top level's), and its
        commented C{state:} names the file the state goes to by default.
        """
        example = FilePath(__file__).parent().parent().child("lb.yaml")
        config = loadConfigFile(example.path)
        web = config.pool("web")
        defaults = parseConfig({"listeners": [{"listen": "tcp:0"}],
                                "pools": {"web": {"backends": ["127.0.0.1:1"]}}})
        default = defaults.pools[0]
        for name in ["policy", "retries", "retryOn", "accessLog", "timeouts", "http",
                     "queue", "health", "allBackups", "slowStart", "retryBudget", "outlier"]:
            self.assertEqual(getattr(web, name), getattr(default, name), name)
        for name in ["statusInterval", "maxconn", "workers", "master", "admin", "state"]:
            self.assertEqual(getattr(config, name), getattr(defaults, name), name)
        self.assertEqual(web.backends[0].weight, default.backends[0].weight)
        self.assertEqual(web.backends[0].maxconn, default.backends[0].maxconn)
        self.assertIn(f"# state: {os.path.basename(defaultStatePath(example.path))}\n",
                      example.getContent().decode())


class RelativeFileTests(SynchronousTestCase):
    """
    The files a configuration file names (certificates, keys, CA files,
    htpasswd files, access logs, the state file) are relative to its
    directory, whatever the working directory; absolute names and C{ca:
    system} stay as they are.
    """

    def data(self) -> dict[str, Any]:
        """
        A configuration naming every kind of file, some relative, some not.
        """
        return {
            "listeners": [{"listen": "tcp:8443", "mode": "http", "tls": {"certificates": [
                {"cert": "pki/www.pem", "key": "/abs/www.key"}]}, "routes": [
                {"pool": "web", "auth": {"basic": {"users": "users.htpasswd"}}}]}],
            "pools": {
                "web": {"tls": {"ca": "pki/ca.pem", "client-cert": "pki/me.pem",
                                "client-key": "pki/me.key"},
                        "backends": ["127.0.0.1:1", {"name": "b", "endpoint": "tcp:host=b:port=1",
                                                     "tls": {"ca": "../other/ca.pem"}}]},
                "sys": {"tls": {"ca": "system"}, "backends": ["127.0.0.1:2"],
                        "access-log": "./logs/sys.log"},
            },
            "state": "run/lb.state.json",
            "cluster": {"etcd": "https://127.0.0.1:2379", "tls": {"ca": "etcd/ca.pem"}},
        }

    def test_relativeToDirectory(self) -> None:
        """
        Each relative file name is joined to the configuration's directory,
        the htpasswd file read from there.
        """
        read: list[str] = []

        def readFile(path: str) -> bytes:
            read.append(path)
            return b"alice:" + HASH + b"\n"

        config = parseConfig(self.data(), readFile, directory="/etc/lb")
        self.assertEqual(config.listeners[0].tls, ListenerTLS(
            certificates=(CertificateFiles("/etc/lb/pki/www.pem", "/abs/www.key"),)))
        web = config.pool("web")
        self.assertEqual(web.backends[0].tls, BackendTLS(
            ca="/etc/lb/pki/ca.pem", clientCert="/etc/lb/pki/me.pem",
            clientKey="/etc/lb/pki/me.key"))
        self.assertEqual(web.backends[1].tls, BackendTLS(
            ca="/etc/lb/../other/ca.pem", clientCert="/etc/lb/pki/me.pem",
            clientKey="/etc/lb/pki/me.key"))
        self.assertEqual(config.pool("sys").backends[0].tls, BackendTLS(ca="system"))
        self.assertEqual(config.pool("sys").accessLog, "/etc/lb/./logs/sys.log")
        self.assertEqual(config.state, "/etc/lb/run/lb.state.json")
        self.assertEqual(read, ["/etc/lb/users.htpasswd"])
        route = config.listeners[0].routes[0]
        self.assertEqual(route.auth.usersFile if route.auth else None, "/etc/lb/users.htpasswd")
        assert config.cluster is not None and config.cluster.tls is not None
        self.assertEqual(config.cluster.tls.ca, "/etc/lb/etcd/ca.pem")

    def test_noDirectory(self) -> None:
        """
        A configuration not read from a file (the command line's) keeps
        the names as given.
        """
        config = parseConfig(self.data(), lambda path: b"alice:" + HASH + b"\n")
        self.assertEqual(config.pool("web").backends[0].tls,
                         BackendTLS(ca="pki/ca.pem", clientCert="pki/me.pem",
                                    clientKey="pki/me.key"))

    def test_configFile(self) -> None:
        """
        A configuration file given by a relative name, in a directory that
        is not the working one, reads its htpasswd file from beside it and
        names its certificates there.
        """
        directory = FilePath(self.mktemp())
        directory.makedirs()
        directory.child("users.htpasswd").setContent(b"alice:" + HASH + b"\n")
        path = directory.child("lb.yaml")
        path.setContent(yaml.safe_dump(self.data()).encode())
        relative = os.path.relpath(path.path)
        config = loadConfigFile(relative)
        route = config.listeners[0].routes[0]
        self.assertEqual(route.auth.usersFile if route.auth else None,
                         directory.child("users.htpasswd").path)
        self.assertEqual(config.pool("web").backends[0].tls,
                         BackendTLS(ca=directory.descendant(["pki", "ca.pem"]).path,
                                    clientCert=directory.descendant(["pki", "me.pem"]).path,
                                    clientKey=directory.descendant(["pki", "me.key"]).path))


class AccessLogPlaceTests(SynchronousTestCase):
    """
    The access log is a pool's setting, in either mode; http.access-log,
    its older place, gives the same.
    """

    def pool(self, **body: Any) -> Any:
        return parseConfig({
            "listeners": [{"listen": "tcp:0"}],
            "pools": {"web": {"backends": ["tcp:host=h:port=1"], **body}},
        }).pools[0]

    def test_places(self) -> None:
        """
        Either place gives the pool's setting; giving both is an error that
        names the key.
        """
        self.assertIs(self.pool(**{"access-log": True}).accessLog, True)
        self.assertEqual(self.pool(http={"access-log": "./a.log"}).accessLog, "./a.log")
        self.assertIs(self.pool().accessLog, False)
        e = self.assertRaises(ConfigError, self.pool, **{"access-log": True,
                                                         "http": {"access-log": True}})
        self.assertIn("pools.web.http.access-log", str(e))

    def test_bareFileName(self) -> None:
        """
        C{access-log: access.log}, a file name with no C{/}, is the file
        beside the configuration file, as C{./access.log} is; read from no
        file, it is kept as given.
        """
        directory = FilePath(self.mktemp())
        directory.makedirs()
        path = directory.child("lb.yaml")
        path.setContent(b"listeners: [{listen: 'tcp:0', pool: web}]\n"
                        b"pools: {web: {backends: ['tcp:host=h:port=1'], access-log: access.log},\n"
                        b"        dot: {backends: ['tcp:host=h:port=2'], access-log: ./access.log}}\n")
        config = loadConfigFile(os.path.relpath(path.path))
        self.assertEqual(config.pool("web").accessLog, directory.child("access.log").path)
        self.assertEqual(os.path.normpath(str(config.pool("dot").accessLog)),
                         directory.child("access.log").path)
        self.assertEqual(self.pool(**{"access-log": "access.log"}).accessLog, "access.log")

    def test_booleanWords(self) -> None:
        """
        A string that reads as a boolean (quoted in YAML, or a JSON string)
        is refused with an error naming the key and saying how to name such
        a file; C{./yes} is that file.
        """
        for word in ["yes", "off", "True", "enabled", "0"]:
            e = self.assertRaises(ConfigError, self.pool, **{"access-log": word})
            self.assertEqual(e.path, "pools.web.access-log")
            self.assertIn(f"./{word}", str(e))
        self.assertEqual(self.pool(**{"access-log": "./yes"}).accessLog, "./yes")
        for bad in ["", 3, None]:
            e = self.assertRaises(ConfigError, self.pool, **{"access-log": bad})
            self.assertEqual(e.path, "pools.web.access-log")


class OutlierConfigTests(SynchronousTestCase):
    """
    A pool's C{outlier} block: every key optional, each error naming it.
    """

    def outlierOf(self, block: Any) -> Outlier | None:
        """
        The outlier settings of a pool with C{block} as its C{outlier}.
        """
        return parseConfig(minimal(outlier=block)).pools[0].outlier

    def assertError(self, block: Any, message: str) -> None:
        """
        A pool with C{block} as its C{outlier} is refused with C{message}.
        """
        with self.assertRaises(ConfigError) as e:
            parseConfig(minimal(outlier=block))
        self.assertEqual(str(e.exception), message)

    def test_absent(self) -> None:
        """
        Without the block (or with it empty in YAML, C{outlier:}) there is
        no ejection.
        """
        self.assertIsNone(parseConfig(minimal()).pools[0].outlier)
        self.assertIsNone(self.outlierOf(None))

    def test_defaults(self) -> None:
        """
        An empty mapping turns ejection on with Envoy-like defaults.
        """
        self.assertEqual(
            self.outlierOf({}),
            Outlier(consecutive5xx=5, consecutiveGatewayErrors=3, baseEjection=30.0,
                    maxEjection=300.0, maxEjectedPercent=50),
        )

    def test_full(self) -> None:
        """
        Every key maps onto the model, durations in any unit.
        """
        self.assertEqual(
            self.outlierOf(yaml.safe_load(
                "{consecutive-5xx: 7, consecutive-gateway-errors: 0, base-ejection: 500ms,"
                " max-ejection: 2m, max-ejected-percent: 100}"
            )),
            Outlier(consecutive5xx=7, consecutiveGatewayErrors=0, baseEjection=0.5,
                    maxEjection=120.0, maxEjectedPercent=100),
        )

    def test_errors(self) -> None:
        """
        Bad values, unknown keys and a maximum below the base are refused
        with the key named.
        """
        where = "pools.web.outlier"
        self.assertError([], f"{where}: expected a mapping, got a list")
        self.assertError({"consecutive-5xx": -1},
                         f"{where}.consecutive-5xx: expected an integer 0-1000, got -1")
        self.assertError({"consecutive-gateway-errors": "x"},
                         f"{where}.consecutive-gateway-errors: expected an integer 0-1000, got 'x'")
        self.assertError({"max-ejected-percent": 101},
                         f"{where}.max-ejected-percent: expected an integer 0-100, got 101")
        with self.assertRaises(ConfigError) as e:
            parseConfig(minimal(outlier={"base-ejection": "soon"}))
        self.assertEqual(e.exception.path, f"{where}.base-ejection")
        self.assertError({"base-ejection": "60s", "max-ejection": "10s"},
                         f"{where}.max-ejection: 10s is shorter than base-ejection (60s)")
        with self.assertRaises(ConfigError) as e:
            parseConfig(minimal(outlier={"consecutive-500": 5}))
        self.assertEqual(e.exception.path, f"{where}.consecutive-500")


class BackupAndSlowStartTests(SynchronousTestCase):
    """
    The C{backup} and C{slow-start} keys of a backend and the
    C{all-backups} and C{slow-start} keys of a pool.
    """

    assertError = ErrorTests.assertError  # type: ignore[misc]  # the same check

    def test_defaults(self) -> None:
        """
        Without the keys no backend is a backup, only the first backup
        serves, and there is no slow start.
        """
        pool = parseConfig(minimal()).pools[0]
        self.assertEqual((pool.allBackups, pool.slowStart), (False, 0.0))
        self.assertEqual((pool.backends[0].backup, pool.backends[0].slowStart), (False, None))

    def test_parsed(self) -> None:
        """
        The keys map onto the model; a backend's slow start overrides the
        pool's, and 0 turns it off for that backend.
        """
        pool = parseConfig(minimal(**{
            "all-backups": True,
            "slow-start": "30s",
            "backends": [
                {"host": "127.0.0.1", "port": 8001, "slow-start": "1m"},
                {"host": "127.0.0.1", "port": 8002, "backup": True, "slow-start": 0},
                {"host": "127.0.0.1", "port": 8003, "backup": False},
            ],
        })).pools[0]
        self.assertEqual((pool.allBackups, pool.slowStart), (True, 30.0))
        self.assertEqual(
            [(b.backup, b.slowStart) for b in pool.backends],
            [(False, 60.0), (True, 0.0), (False, None)],
        )

    def test_errors(self) -> None:
        """
        A bad value is refused in one line naming its key.
        """
        self.assertError(
            minimal(backends=[{"host": "127.0.0.1", "port": 8001, "backup": "yes"}]),
            "pools.web.backends[0].backup: expected true or false, got 'yes'",
        )
        self.assertError(
            minimal(**{"all-backups": 1}),
            "pools.web.all-backups: expected true or false, got 1",
        )
        self.assertError(
            minimal(**{"slow-start": "soon"}),
            "pools.web.slow-start: expected a duration from 0 to 3600 seconds "
            "(a number, or a string like '250ms' or '5s'), got 'soon'",
        )
        self.assertError(
            minimal(backends=[{"host": "127.0.0.1", "port": 8001, "slow-start": "2h"}]),
            "pools.web.backends[0].slow-start: expected a duration from 0 to 3600 "
            "seconds (a number, or a string like '250ms' or '5s'), got 7200.0",
        )


HASH = b"$2b$04$5bk1BJ9KnRgQjwO/U0PIkuLg6bdG9NbEjkfUC0BxqQ9z3RUxb2lrC"


def routed(routes: Any, mode: str = "http", **listener: Any) -> dict[str, Any]:
    """
    A configuration of two pools and one listener with C{routes}.
    """
    return {
        "pools": {"api": {"backends": ["127.0.0.1:1"]}, "web": {"backends": ["127.0.0.1:2"]}},
        "listeners": [{"listen": "tcp:8080", "mode": mode, "routes": routes, **listener}],
    }


def readFile(path: str) -> bytes:
    """
    A fake file system holding one htpasswd file.
    """
    if path == "users.htpasswd":
        return b"# staff\nalice:" + HASH + b"\n\n"
    if path == "md5.htpasswd":
        return b"alice:" + HASH + b"\nbob:$apr1$abc$def\n"
    raise FileNotFoundError(2, "No such file or directory")


class RouteConfigTests(SynchronousTestCase):
    """
    A listener's C{routes:} and C{default-route:}.
    """

    def test_issueExample(self) -> None:
        """
        The routes of the issue's example parse into their values.
        """
        config = parseConfig(routed([
            {"name": "api", "match": {"host": "API.example.com", "path-prefix": "/v1/"},
             "pool": "api", "timeouts": {"response": "5s"}, "retries": 1},
            {"name": "static", "match": {"host": "*.example.com", "path-regex": "^/static/",
                                         "method": ["GET", "head"]},
             "pool": "web", "rewrite": {"strip-prefix": "/static/"}},
            {"name": "old", "match": {"path-prefix": "/old/"},
             "redirect": {"location": "https://new.example.com/", "code": 308}},
            {"name": "internal", "match": {"source": ["10.0.0.0/8", "::1"],
                                           "header": {"X-Admin": "1"}},
             "respond": {"status": 403, "body": "forbidden\n"}},
            {"name": "web", "pools": {"web": 95, "api": 5},
             "rate-limit": {"key": "header:X-Key", "rate": "30/m", "burst": 5},
             "auth": {"basic": {"realm": "staff", "users": "users.htpasswd"}},
             "request-headers": {"set": {"X-Env": "prod"}, "add": {}, "remove": ["X-Debug"]},
             "response-headers": {"set": {"Strict-Transport-Security": "max-age=63072000"}}},
        ]), readFile)
        (listener,) = config.listeners
        api, static, old, internal, web = listener.routes
        self.assertEqual(api.match.hosts, ("api.example.com",))
        self.assertEqual((api.timeouts.response, api.retries), (5.0, 1))  # type: ignore[union-attr]
        self.assertEqual(static.match.methods, ("GET", "HEAD"))
        self.assertEqual(static.rewrite.stripPrefix, "/static")  # type: ignore[union-attr]
        self.assertEqual(old.redirect.code, 308)  # type: ignore[union-attr]
        (https,) = parseConfig(routed([{"redirect": {"scheme": "https", "port": 8443}}]),
                               readFile).listeners[0].routes
        self.assertEqual(https.redirect, Redirect(scheme="https", port=8443))
        self.assertEqual(internal.match.sources, ("10.0.0.0/8", "::1/128"))
        self.assertEqual(web.pools, (("web", 95), ("api", 5)))
        self.assertEqual((web.rateLimit.rate, web.rateLimit.header),  # type: ignore[union-attr]
                         (0.5, "x-key"))
        self.assertEqual(web.auth.users, (("alice", HASH),))  # type: ignore[union-attr]
        self.assertEqual(listener.pool, "api")
        self.assertIsNone(listener.defaultRoute)

    def test_poolIsDefault(self) -> None:
        """
        A pool beside routes is the default route's pool; a default-route
        may be any action.
        """
        config = parseConfig(routed([{"match": {"path": "/a"}, "pool": "api"}], pool="web"))
        self.assertEqual(config.listeners[0].defaultRoute.pool, "web")  # type: ignore[union-attr]
        self.assertEqual(config.listeners[0].routes[0].name, "route0")
        config = parseConfig(routed([{"match": {"path": "/a"}, "pool": "api"}],
                                    **{"default-route": {"respond": {"status": 410}}}))
        self.assertEqual(config.listeners[0].defaultRoute.respond.status,  # type: ignore[union-attr]
                         410)

    def test_tcp(self) -> None:
        """
        A TCP listener routes on sni and source.
        """
        config = parseConfig(routed([{"match": {"sni": "DB.example.com"}, "pool": "api"}],
                                    mode="tcp", pool="web"))
        self.assertEqual(config.listeners[0].routes[0].match.sni, ("db.example.com",))

    def test_errors(self) -> None:
        """
        Each mistake is refused with the key path named.
        """
        r = "listeners[0].routes"
        cases: list[tuple[Any, str, dict[str, Any]]] = [
            ([{"match": {"path-regex": "(["}, "pool": "api"}], f"{r}[0].match.path-regex", {}),
            ([{"pool": "nope"}], f"{r}[0].pool", {}),
            ([{"pools": {"api": 1, "nope": 1}}], f"{r}[0].pools.nope", {}),
            ([{"pool": "api"}, {"pool": "web"}], f"{r}[1]", {}),
            ([{"match": {"paths": "/"}, "pool": "api"}], f"{r}[0].match.paths", {}),
            ([{"pool": "api", "rate-limit": {"rate": "0/s"}}], f"{r}[0].rate-limit.rate", {}),
            ([{"pools": {"api": 0, "web": 0}}], f"{r}[0].pools", {}),
            ([{"name": "a", "match": {"path": "/a"}, "pool": "api"},
              {"name": "a", "match": {"path": "/b"}, "pool": "api"}], f"{r}[1].name", {}),
            ([{"match": {"sni": "a.example.com"}, "pool": "api"}], f"{r}[0].match.sni", {}),
            ([{"match": {"path": "/a"}, "pool": "api"}], f"{r}[0].match.path",
             {"mode": "tcp"}),
            ([{"redirect": {"scheme": "https"}}], f"{r}[0].redirect", {"mode": "tcp"}),
            ([{"pool": "api", "auth": {"basic": {"users": "missing.htpasswd"}}}],
             f"{r}[0].auth.basic.users", {}),
            ([{"pool": "api", "auth": {"basic": {"users": "md5.htpasswd"}}}],
             f"{r}[0].auth.basic.users", {}),
            ([{"pool": "api", "redirect": {"scheme": "https"}}], f"{r}[0]", {}),
            ([{"match": {}}], f"{r}[0]", {}),
            ([{"redirect": {"scheme": "https", "code": 300}}], f"{r}[0].redirect.code", {}),
            ([{"redirect": {"scheme": "https", "port": 0}}], f"{r}[0].redirect.port", {}),
            ([{"redirect": {"location": "https://a/", "port": 8443}}],
             f"{r}[0].redirect.port", {}),
            ([{"redirect": {"location": "https://a/?x=1", "keep-path": True}}],
             f"{r}[0].redirect.keep-path", {}),
            ([{"redirect": {"location": "new.example.com"}}], f"{r}[0].redirect.location", {}),
            ([{"pool": "api", "request-headers": {"set": {"X-A": "a\r\nb"}}}],
             f"{r}[0].request-headers.set.X-A", {}),
            ([{"pool": "api", "request-headers": {"set": {"X A": "a"}}}],
             f"{r}[0].request-headers.set.X A", {}),
            ([{"match": {"source": "10.0.0.0/33"}, "pool": "api"}], f"{r}[0].match.source", {}),
            ([{"match": {"host": "a.example.com:80"}, "pool": "api"}],
             f"{r}[0].match.host", {}),
            ([{"pool": "api"}], "listeners[0].default-route",
             {"default-route": {"pool": "web"}}),
            ([{"match": {"path": "/a"}, "pool": "api"}], "listeners[0].default-route.match",
             {"default-route": {"match": {"path": "/b"}, "pool": "web"}}),
        ]
        for routes, where, extra in cases:
            mode = extra.pop("mode", "http")
            with self.assertRaises(ConfigError, msg=where) as e:
                parseConfig(routed(routes, mode=mode, **extra), readFile)
            self.assertEqual(e.exception.path, where, str(e.exception))
        with self.assertRaises(ConfigError) as e:
            parseConfig(routed([{"pool": "api", "auth": {"basic": {"users": "md5.htpasswd"}}}]),
                        readFile)
        self.assertIn("md5.htpasswd line 2", str(e.exception))
        with self.assertRaises(ConfigError) as e:
            parseConfig(routed([{"match": {"sni": "a"}, "pool": "api"}]))
        self.assertIn("use host", str(e.exception))

    def test_defaultNameReserved(self) -> None:
        """
        No route may be named C{default}: that is the default route's name
        (or the 404's) in the counters, the metrics' C{route} label and the
        admin API, where two would be one series.
        """
        with self.assertRaises(ConfigError) as e:
            parseConfig(routed([{"name": "default", "match": {"path": "/x"}, "pool": "api"}]))
        self.assertEqual(e.exception.path, "listeners[0].routes[0].name")
        self.assertIn("default route", str(e.exception))

    def test_framingHeadersRefused(self) -> None:
        """
        A route may not change a message's framing or hop-by-hop headers
        (Content-Length, Transfer-Encoding, Connection...): the balancer
        frames each message itself, and a length changed beside a body read
        by the old one would desynchronise the backend or client connection
        (a smuggled request or a split response).  The error names the key.
        """
        r = "listeners[0].routes[0]"
        cases: list[tuple[dict[str, Any], str]] = [
            ({"pool": "api", "request-headers": {"remove": ["Content-Length"]}},
             f"{r}.request-headers.remove[0]"),
            ({"pool": "api", "request-headers": {"set": {"Transfer-Encoding": "chunked"}}},
             f"{r}.request-headers.set.Transfer-Encoding"),
            ({"pool": "api", "request-headers": {"add": {"content-length": "0"}}},
             f"{r}.request-headers.add.content-length"),
            ({"pool": "api", "request-headers": {"set": {"Connection": "close"}}},
             f"{r}.request-headers.set.Connection"),
            ({"pool": "api", "response-headers": {"set": {"Content-Length": "5"}}},
             f"{r}.response-headers.set.Content-Length"),
            ({"pool": "api", "response-headers": {"remove": ["X-A", "Transfer-Encoding"]}},
             f"{r}.response-headers.remove[1]"),
            ({"respond": {"status": 200, "body": "ok",
                          "headers": {"Content-Length": "100"}}},
             f"{r}.respond.headers.Content-Length"),
            ({"respond": {"status": 200, "headers": {"Transfer-Encoding": "chunked"}}},
             f"{r}.respond.headers.Transfer-Encoding"),
        ]
        for route, where in cases:
            with self.assertRaises(ConfigError, msg=where) as e:
                parseConfig(routed([route]))
            self.assertEqual(e.exception.path, where, str(e.exception))
            self.assertIn("frames", str(e.exception))

    def test_hostKeptOne(self) -> None:
        """
        A route's request headers may set Host (replacing it) but not remove
        or add one: every request would then be refused by the backend or
        the request plan.
        """
        r = "listeners[0].routes[0].request-headers"
        for actions, where in (({"remove": ["Host"]}, f"{r}.remove"),
                               ({"add": {"host": "a"}}, f"{r}.add")):
            with self.assertRaises(ConfigError) as e:
                parseConfig(routed([{"pool": "api", "request-headers": actions}]))
            self.assertEqual(e.exception.path, where)
            self.assertIn("exactly one Host", str(e.exception))
        parseConfig(routed([{"pool": "api", "request-headers": {"set": {"Host": "b"}}}]))
