"""
Tests for L{lbtwist.tap} and the twistd plugin.
"""

from __future__ import annotations

import os
import re

import yaml
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.tap import BadCommandLine, BadConfiguration, Options


class PluginTests(SynchronousTestCase):
    """
    The plugin is found by twistd.
    """

    def test_discovered(self) -> None:
        """
        C{lb} is among the service makers twistd finds, and loads L{lbtwist.tap}.
        """
        import twisted.plugins

        makers = {p.tapname: p for p in getPlugins(IServiceMaker, twisted.plugins)}
        self.assertIn("lb", makers)
        self.assertIs(makers["lb"].options, Options)


class OptionsTests(SynchronousTestCase):
    """
    Tests for L{Options}.
    """

    def parse(self, *args: str) -> Options:
        options = Options()
        options.parseOptions(list(args))
        return options

    def test_repeatable(self) -> None:
        """
        C{--listen} and C{--backend} may be given several times; the policy
        and mode apply to the one pool and every listener.
        """
        options = self.parse(
            "--listen", "tcp:8080", "--listen", "tcp:8081",
            "--backend", "tcp:host=10.0.0.5:port=80",
            "--backend", "tcp:host=10.0.0.6:port=80",
            "--policy", "leastconn", "--mode", "http",
        )
        config = options["lbconfig"]
        self.assertEqual([l.endpoint for l in config.listeners], ["tcp:8080", "tcp:8081"])
        self.assertEqual({l.mode for l in config.listeners}, {"http"})
        pool = config.pool("default")
        self.assertEqual(pool.policy, "leastconn")
        self.assertEqual([b.name for b in pool.backends], ["10.0.0.5:80", "10.0.0.6:80"])

    def test_defaults(self) -> None:
        """
        Without C{--listen} the balancer listens on port 8080, round-robin.
        """
        config = self.parse("--backend", "tcp:host=127.0.0.1:port=80")["lbconfig"]
        self.assertEqual(config.listeners[0].endpoint, "tcp:8080")
        self.assertEqual(config.pool("default").policy, "roundrobin")

    def test_tuning(self) -> None:
        """
        Timeouts and health settings from the command line reach the pool.
        """
        pool = self.parse(
            "--backend", "tcp:host=127.0.0.1:port=80", "--connect-timeout", "0.5",
            "--check-interval", "250ms", "--rise", "1", "--fall", "4", "--retries", "0",
        )["lbconfig"].pool("default")
        self.assertEqual(pool.timeouts.connect, 0.5)
        self.assertEqual(pool.health.interval, 0.25)
        self.assertEqual((pool.health.rise, pool.health.fall), (1, 4))
        self.assertEqual(pool.retries, 0)

    def test_accessLog(self) -> None:
        """
        C{--access-log} sends events to twistd's log; C{--access-log-file}
        names a file for the lines (a path is made to look like one).
        """
        args = ("--backend", "127.0.0.1:80")
        self.assertFalse(self.parse(*args)["lbconfig"].pool("default").accessLog)
        self.assertIs(self.parse(*args, "--access-log")["lbconfig"].pool("default").accessLog,
                      True)
        config = self.parse(*args, "--access-log-file", "./access.log")["lbconfig"]
        self.assertEqual(config.pool("default").accessLog, "./access.log")
        config = self.parse(*args, "--access-log-file", "access.log")["lbconfig"]
        self.assertEqual(config.pool("default").accessLog, "./access.log")

    def test_accessLogFileDirectory(self) -> None:
        """
        An access-log file in a directory that does not exist stops the start
        with the option named.
        """
        with self.assertRaises(BadConfiguration) as e:
            self.parse("--backend", "127.0.0.1:80", "--access-log-file", "/nonexistent/a.log")
        self.assertIn("--access-log-file", str(e.exception))
        self.assertIn("no such directory '/nonexistent'", str(e.exception))

    def test_demo(self) -> None:
        """
        C{--demo} balances over three demo backends on loopback, and keeps
        its changes in a state file of its own in the working directory,
        named after its listener when that is not the demo's usual one.
        """
        options = self.parse("--demo")
        config = options["lbconfig"]
        self.assertEqual([b.name for b in config.pool("default").backends],
                         ["demo-1", "demo-2", "demo-3"])
        self.assertIn("interface=127.0.0.1", config.listeners[0].endpoint)
        self.assertEqual(options["state"], os.path.abspath("lbtwist-demo.state.json"))
        self.assertIsNone(config.state)
        self.assertEqual(self.parse("--demo", "--listen", "tcp:8080:interface=127.0.0.1")["state"],
                         os.path.abspath("lbtwist-demo.state.json"))
        self.assertEqual(self.parse("--demo", "--listen", "tcp:8081:interface=127.0.0.1")["state"],
                         os.path.abspath("lbtwist-demo-tcp-8081-127.0.0.1.state.json"))
        self.assertEqual(self.parse("--demo", "--state", "s.json")["state"], "s.json")
        self.assertIsNone(options.overrides(config).state)

    def test_overrides(self) -> None:
        """
        What the command line says over the file is said over every
        reading of it (a reload's, an upgrade's), so that a reload does
        not take the option's value for a change of the file.
        """
        from lbtwist.config import loadConfigFile
        from lbtwist.diff import runnable

        path = self.mktemp()
        with open(path, "w") as f:
            yaml.safe_dump({"admin": "tcp:9001:interface=127.0.0.1", "status-interval": 60,
                            "listeners": [{"name": "main", "listen": "tcp:0"}],
                            "pools": {"web": {"backends": ["127.0.0.1:9"]}}}, f)
        options = self.parse("--config", path, "--admin", "tcp:9100:interface=127.0.0.1",
                             "--status-interval", "5", "--state", "s.json")
        read = options.overrides(loadConfigFile(path))
        self.assertEqual((read.admin, read.statusInterval, read.state),
                         ("tcp:9100:interface=127.0.0.1", 5.0, "s.json"))
        self.assertEqual(runnable(read, options["lbconfig"])[1], [])

    def test_noBackend(self) -> None:
        """
        Nothing to balance across is a usage error: one line, the reason
        first, then where the help is (not twistd's whole usage text).
        """
        with self.assertRaises(BadCommandLine) as e:
            self.parse("--listen", "tcp:8080")
        self.assertEqual(
            str(e.exception),
            "twistd lb: give --config FILE, or at least one --backend, or --demo "
            "(see twistd lb --help)")

    def test_unknownOption(self) -> None:
        """
        An option twistd lb does not have, or one missing its value, is
        refused the same way.
        """
        for args, reason in [(("--bogus",), "option --bogus not recognized"),
                             (("--backend",), "option --backend requires argument")]:
            with self.assertRaises(BadCommandLine) as e:
                self.parse(*args)
            self.assertEqual(str(e.exception), f"twistd lb: {reason} (see twistd lb --help)")

    def test_fileAsArgument(self) -> None:
        """
        A configuration file given without C{--config} is refused with the
        way to give it (twistd's own words are "Wrong number of arguments").
        """
        for args, reason in [
            (("lb.yaml",), "unexpected argument 'lb.yaml' (give a configuration file "
                           "as --config FILE)"),
            (("--backend", "127.0.0.1:9", "extra"), "unexpected argument 'extra'"),
        ]:
            with self.assertRaises(BadCommandLine) as e:
                self.parse(*args)
            self.assertEqual(str(e.exception), f"twistd lb: {reason} (see twistd lb --help)")

    def test_badValues(self) -> None:
        """
        Bad values stop twistd with one line that names the option typed
        and the problem (not twistd's whole usage text).
        """
        for args, message in [
            (("--policy", "fastest"), "--policy: expected one of"),
            (("--mode", "udp"), "--mode: expected one of tcp, http"),
            (("--rise", "0"), "--rise: expected an integer 1-100"),
            (("--check-interval", "0"), "--check-interval: expected a duration"),
            (("--retries", "-1"), "--retries: expected an integer 0-100"),
            (("--listen", "nope"), "--listen: expected an endpoint"),
            (("--admin", "tcp:x"), "--admin (port): expected an integer"),
        ]:
            with self.assertRaises(BadConfiguration) as e:
                self.parse("--backend", "tcp:host=127.0.0.1:port=80", *args)
            self.assertTrue(str(e.exception).startswith("lbtwist: invalid configuration: "))
            self.assertIn(message, str(e.exception))
            self.assertNotIn("\n", str(e.exception))

    def test_hostPort(self) -> None:
        """
        C{--backend HOST:PORT} is short for a TCP endpoint, as in HAProxy.
        """
        pool = self.parse("--backend", "10.0.0.5:80", "--backend", "[::1]:81")["lbconfig"].pool(
            "default")
        self.assertEqual([b.endpoint for b in pool.backends],
                         ["tcp:host=10.0.0.5:port=80", "tcp:host=\\:\\:1:port=81"])

    def test_badEndpointArguments(self) -> None:
        """
        Endpoint strings are parsed as Twisted will before anything starts.
        """
        with self.assertRaises(BadConfiguration) as e:
            self.parse("--backend", "tcp:host=127.0.0.1:port=80:bogus=1")
        self.assertIn("--backend: invalid endpoint", str(e.exception))

    def test_config(self) -> None:
        """
        C{--config} loads a file; C{--admin} may override it but C{--backend}
        may not be mixed in.
        """
        path = FilePath(self.mktemp())
        path.setContent(yaml.safe_dump({
            "listeners": [{"listen": "tcp:8080"}],
            "pools": {"web": {"backends": ["tcp:host=127.0.0.1:port=81"]}},
        }).encode())
        config = self.parse("--config", path.path, "--admin", "tcp:9100:interface=127.0.0.1")["lbconfig"]
        self.assertEqual(config.admin, "tcp:9100:interface=127.0.0.1")
        self.assertEqual(config.pool("web").backends[0].name, "127.0.0.1:81")
        for args in (("--backend", "tcp:host=a:port=1"), ("--mode", "http"),
                     ("--policy", "leastconn"), ("--retries", "7")):
            with self.assertRaises(BadCommandLine) as e:
                self.parse("--config", path.path, *args)
            self.assertTrue(str(e.exception).startswith(
                f"twistd lb: {args[0]} cannot be combined with --config"))

    def test_badConfigFile(self) -> None:
        """
        A bad config file stops twistd with one line naming the key.
        """
        path = FilePath(self.mktemp())
        path.setContent(b"listeners: [{listen: 'tcp:8080'}]\npools: {web: {policy: x}}\n")
        with self.assertRaises(BadConfiguration) as e:
            self.parse("--config", path.path)
        self.assertIn("pools.web.policy", str(e.exception))


class HelpTests(SynchronousTestCase):
    """
    What C{twistd lb --help} says.
    """

    def help(self) -> dict[str, str]:
        """
        The help text of each option, by option, its lines joined.
        """
        texts: dict[str, str] = {}
        option = ""
        # (At a fixed width: at some, a wrapped line of one option's text
        # starts with another's name, and reads as that option here.)
        usage = Options().getUsage(width=80)
        for line in usage.split("\n\n")[0].splitlines()[1:]:
            m = re.match(r"\s*(?:-\w, )?(--[\w-]+)=?\s+(.*)$", line)
            if m:
                option = m.group(1)
                texts[option] = m.group(2)
            elif line.strip():
                texts[option] += " " + line.strip()
        return texts

    def test_defaults(self) -> None:
        """
        Every option with a default says it.
        """
        texts = self.help()
        for option, default in [
            ("--listen", "default tcp:8080, which is every interface"),
            ("--admin", "default tcp:9000:interface=127.0.0.1"),
            ("--retries", "default 2"), ("--connect-timeout", "default 5s"),
            ("--idle-timeout", "default 300s"), ("--request-timeout", "default 10s"),
            ("--response-timeout", "default 60s"), ("--check-interval", "default 2s"),
            ("--rise", "default 2"), ("--fall", "default 3"),
            ("--status-interval", "default 30"), ("--grace", "default 30"),
            ("--policy", "default roundrobin"), ("--mode", "default tcp"),
            ("--state", "lb.state.json"),
        ]:
            self.assertIn(default, texts[option], option)

    def test_backendForms(self) -> None:
        """
        The help shows both forms of a backend: an endpoint string and
        C{HOST:PORT}.
        """
        text = self.help()["--backend"]
        self.assertIn("tcp:host=10.0.0.5:port=80", text)
        self.assertIn("HOST:PORT", text)
        self.assertIn("10.0.0.5:80", text)
        self.assertIn("--backend ENDPOINT|HOST:PORT", str(Options()).splitlines()[0])

    def test_ownDescription(self) -> None:
        """
        The help ends with its own words, not the docstring of whatever
        module runs it (a test runner's here).
        """
        import __main__

        self.patch(__main__, "__doc__", "A runner of tests.")
        usage = Options().getUsage(width=80)
        self.assertNotIn("runner of tests", usage)
        self.assertIn("see lb.yaml", usage)

    def test_spacing(self) -> None:
        """
        No help text has a run of spaces inside it (a docstring's line break
        shown as is).
        """
        for option, text in self.help().items():
            self.assertNotIn("  ", text, option)
