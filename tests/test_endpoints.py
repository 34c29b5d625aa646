"""
Tests of L{lbtwist.endpoints}: endpoint strings parsed once, and what is
derived from them, table by table.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.checks import checkEndpoint
from lbtwist.endpoints import (
    addressesOverlap,
    expandAddress,
    hostPort,
    listenAddress,
    parseEndpoint,
)


class ParseTests(SynchronousTestCase):
    """
    L{parseEndpoint} and the values derived from an L{Endpoint}.
    """

    def test_clients(self) -> None:
        """
        Client strings: host, port, path, authority, default name and the
        Go API's URL, escapes and IPv6 included.
        """
        cases = {
            "tcp:host=10.0.0.5:port=80": ("10.0.0.5", "80", None, "10.0.0.5:80",
                                          "10.0.0.5:80", "http://10.0.0.5:80"),
            "tcp:10.0.0.5:80": ("10.0.0.5", "80", None, "10.0.0.5:80", "10.0.0.5:80",
                                "http://10.0.0.5:80"),
            "tcp:host=\\:\\:1:port=8080": ("::1", "8080", None, "[::1]:8080", "[::1]:8080",
                                           "http://[::1]:8080"),
            "ssl:host=app:port=443:caCertsDir=/etc/ssl": (
                "app", "443", None, "app:443", "app:443",
                "ssl:host=app:port=443:caCertsDir=/etc/ssl"),
            "unix:/run/app.sock": (None, None, "/run/app.sock", None, "app.sock",
                                   "unix:/run/app.sock"),
            "unix:path=/run/x.sock:timeout=3": (None, None, "/run/x.sock", None, "x.sock",
                                                "unix:path=/run/x.sock:timeout=3"),
            "tcp:host=" + "a" * 80 + ":port=1": ("a" * 80, "1", None, "a" * 80 + ":1",
                                                 "a" * 64, "http://" + "a" * 80 + ":1"),
        }
        got = {}
        for text in cases:
            e = parseEndpoint(text, server=False)
            got[text] = (e.host, e.port, e.path, e.authority, e.defaultName, e.url)
        self.assertEqual(got, cases)

    def test_servers(self) -> None:
        """
        Listener strings: the port, the interface, whether only local
        clients can reach it, a file-name slug, and an option added unless
        given.
        """
        cases = {
            "tcp:9000:interface=127.0.0.1": ("9000", "127.0.0.1", True, "tcp-9000-127.0.0.1"),
            "tcp:port=0:interface=127.0.0.2": ("0", "127.0.0.2", True, "tcp-0-127.0.0.2"),
            "tcp6:9000:interface=\\:\\:1": ("9000", "::1", True, "tcp6-9000-1"),
            "unix:/tmp/admin.sock": (None, None, True, "unix-tmp-admin.sock"),
            "tcp:9000": ("9000", None, False, "tcp-9000"),
            "tcp:9000:interface=0.0.0.0": ("9000", "0.0.0.0", False, "tcp-9000-0.0.0.0"),
            "tcp6:9000:interface=\\:\\:": ("9000", "::", False, "tcp6-9000"),
        }
        got = {}
        for text in cases:
            e = parseEndpoint(text, server=True)
            got[text] = (e.port, e.host, e.loopback, e.slug)
        self.assertEqual(got, cases)
        self.assertEqual(parseEndpoint("tcp:80", True).withOption("backlog", "9"),
                         "tcp:80:backlog=9")
        self.assertEqual(parseEndpoint("tcp:80:backlog=5", True).withOption("backlog", "9"),
                         "tcp:80:backlog=5")
        self.assertTrue(parseEndpoint("ssl:443:privateKey=k", True).tls)

    def test_unknownKind(self) -> None:
        """
        A string of no known kind is refused.
        """
        self.assertRaises(ValueError, parseEndpoint, "udp:53", True)
        self.assertRaises(ValueError, parseEndpoint, "10.0.0.1:80", False)

    def test_expandAddress(self) -> None:
        """
        C{HOST:PORT} means a TCP endpoint; anything else is kept.
        """
        cases = {
            "10.0.0.5:80": "tcp:host=10.0.0.5:port=80",
            "app.local:8080": "tcp:host=app.local:port=8080",
            "[::1]:80": "tcp:host=\\:\\:1:port=80",
            "tcp:80": "tcp:80",
            "unix:/x": "unix:/x",
        }
        self.assertEqual({t: expandAddress(t) for t in cases}, cases)

    def test_hostPort(self) -> None:
        """
        L{hostPort} writes C{host:port}, an IPv6 address in brackets.
        """
        cases = {
            ("10.0.0.5", 80): "10.0.0.5:80",
            ("app.local", "8080"): "app.local:8080",
            ("::1", 80): "[::1]:80",
            ("fe80::1%eth0", 443): "[fe80::1%eth0]:443",
        }
        self.assertEqual({c: hostPort(*c) for c in cases}, cases)


class ListenAddressTests(SynchronousTestCase):
    """
    What address a listener binds, and which two cannot listen at once
    (an upgrade that moves a listener decides by them).
    """

    def test_listenAddress(self) -> None:
        """
        The same address however the endpoint writes it; none for what
        binds no fixed TCP address.
        """
        cases = {
            "tcp:8080": ("0.0.0.0", 8080),
            "tcp:8080:interface=127.0.0.1": ("127.0.0.1", 8080),
            "tcp:port=8080:interface=127.0.0.1:backlog=50": ("127.0.0.1", 8080),
            "tcp6:8080": ("::", 8080),
            "tcp6:8080:interface=0\\:0\\:\\:1": ("::1", 8080),
            "ssl:8443:privateKey=key.pem": ("0.0.0.0", 8443),
            "tcp:0:interface=127.0.0.1": None,
            "tcp:80:interface=localhost": None,
            "unix:/run/lb.sock": None,
            "systemd:domain=INET:index=0": None,
        }
        self.assertEqual({t: listenAddress(t) for t in cases}, cases)

    def test_overlap(self) -> None:
        """
        The same port and the same host, or a host and its family's
        wildcard (IPv6's covering IPv4's too), overlap; two hosts of a
        family, or two ports, do not.
        """
        cases = [
            (("127.0.0.1", 80), ("127.0.0.1", 80), True),
            (("0.0.0.0", 80), ("127.0.0.1", 80), True),
            (("127.0.0.1", 80), ("0.0.0.0", 80), True),
            (("::", 80), ("127.0.0.1", 80), True),
            (("0.0.0.0", 80), ("::1", 80), False),
            (("127.0.0.1", 80), ("127.0.0.2", 80), False),
            (("::1", 80), ("127.0.0.1", 80), False),
            (("0.0.0.0", 80), ("0.0.0.0", 81), False),
        ]
        for one, other, overlap in cases:
            self.assertEqual(addressesOverlap(one, other), overlap, (one, other))


class CheckTests(SynchronousTestCase):
    """
    L{checkEndpoint} builds the endpoint with Twisted's parsers.
    """

    def test_good(self) -> None:
        """
        Good strings pass, without listening or connecting.
        """
        checkEndpoint("tcp:0:interface=127.0.0.1", server=True)
        checkEndpoint("unix:/nonexistent/x.sock", server=True)
        checkEndpoint("tcp:host=10.0.0.5:port=80", server=False)

    def test_bad(self) -> None:
        """
        Unknown arguments, missing ports and missing certificate files are
        refused.
        """
        for text, server in (("tcp:80:bogus=1", True), ("tcp:host=a", False),
                             ("ssl:443:privateKey=/nonexistent.pem", True)):
            self.assertRaises((TypeError, OSError), checkEndpoint, text, server)
