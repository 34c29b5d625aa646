"""
Tests for the C{cluster:} block of the configuration and C{twistd lb
--etcd}.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import ClusterConfig, ClusterTLS, ConfigError, parseConfig
from lbtwist.tap import BadConfiguration, Options

BASE: dict[str, Any] = {"listeners": [{"listen": "tcp:0"}],
                        "pools": {"p": {"backends": ["127.0.0.1:1"]}}}


class ClusterConfigTests(SynchronousTestCase):
    """
    C{cluster:} is validated with one-line errors naming the key.
    """

    def test_full(self) -> None:
        """
        Every key is read; one URL may be given as a string; the prefix
        loses a trailing slash; no block means no cluster.
        """
        config = parseConfig({**BASE, "cluster": {
            "etcd": ["http://127.0.0.1:2379", "https://etcd2:2379/"], "prefix": "/lbtwist/prod/",
            "username": "u", "password": "p", "tls": {"ca": "ca.pem", "cert": "c", "key": "k"}}})
        self.assertEqual(config.cluster, ClusterConfig(
            ("http://127.0.0.1:2379", "https://etcd2:2379"), "/lbtwist/prod", "u", "p",
            ClusterTLS("ca.pem", "c", "k")))
        self.assertEqual(parseConfig({**BASE, "cluster": {"etcd": "http://h:1"}}).cluster,
                         ClusterConfig(("http://h:1",)))
        self.assertIsNone(parseConfig(BASE).cluster)

    def test_errors(self) -> None:
        """
        Bad URLs, prefixes, half credentials and unknown keys are refused,
        naming the key.
        """
        for given, path in [
            ({"etcd": []}, "cluster.etcd"),
            ({}, "cluster.etcd"),
            ({"etcd": ["ftp://h:1"]}, "cluster.etcd[0]"),
            ({"etcd": "http://h:1/v3"}, "cluster.etcd[0]"),
            ({"etcd": "http://h"}, "cluster.etcd[0]"),
            ({"etcd": "http://h:1", "prefix": "rel"}, "cluster.prefix"),
            ({"etcd": "http://h:1", "username": "u"}, "cluster"),
            ({"etcd": "http://h:1", "tls": {"key": "k"}}, "cluster.tls"),
            ({"etcd": "http://h:1", "nodes": 3}, "cluster.nodes"),
        ]:
            with self.assertRaises(ConfigError, msg=given) as caught:
                parseConfig({**BASE, "cluster": given})
            self.assertEqual(caught.exception.path, path, given)


class EtcdOptionTests(SynchronousTestCase):
    """
    C{--etcd URL} (repeatable) makes a cluster, or replaces the file's
    member list.
    """

    def test_commandLine(self) -> None:
        """
        Without a file, C{--etcd} gives a cluster on those members with the
        default prefix.
        """
        options = Options()
        options.parseOptions(["--backend", "127.0.0.1:1", "--etcd", "http://127.0.0.1:2379",
                              "--etcd", "http://127.0.0.1:22379"])
        self.assertEqual(options["lbconfig"].cluster, ClusterConfig(
            ("http://127.0.0.1:2379", "http://127.0.0.1:22379")))

    def test_replacesFileMembers(self) -> None:
        """
        With a file's cluster block, C{--etcd} replaces its URLs and keeps
        the rest.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("listeners: [{listen: 'tcp:0'}]\npools: {p: {backends: ['127.0.0.1:1']}}\n"
                    "cluster: {etcd: 'http://a:1', prefix: /x}\n")
        options = Options()
        options.parseOptions(["--config", path, "--etcd", "http://b:2"])
        self.assertEqual(options["lbconfig"].cluster, ClusterConfig(("http://b:2",), "/x"))

    def test_badURL(self) -> None:
        """
        A bad C{--etcd} is a one-line configuration error naming it.
        """
        with self.assertRaises(BadConfiguration) as caught:
            Options().parseOptions(["--backend", "127.0.0.1:1", "--etcd", "etcd:2379"])
        self.assertIn("--etcd", str(caught.exception))
