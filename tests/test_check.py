"""
Tests for L{lbtwist.check}: C{python -m lbtwist.check} checks C{twistd lb}
options as a start would, starting nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from twisted.trial.unittest import SynchronousTestCase

CONFIG = {
    "listeners": [{"name": "front", "listen": "systemd:domain=INET:name=front"}],
    "pools": {"web": {"backends": [{"name": "a", "endpoint": "tcp:host=127.0.0.1:port=9"}]}},
}


class CheckTests(SynchronousTestCase):
    """
    The check's exit status and its one line.
    """

    def runCheck(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        """
        Run the check with C{args}; its exit status, standard output and
        standard error.
        """
        environ = {k: v for k, v in os.environ.items() if not k.startswith("LISTEN_")}
        result = subprocess.run([sys.executable, "-m", "lbtwist.check", *args],
                                capture_output=True, timeout=60, env={**environ, **(env or {})})
        return result.returncode, result.stdout.decode(), result.stderr.decode()

    def check(self, config: dict[str, object], *args: str,
              env: dict[str, str] | None = None) -> tuple[int, str]:
        """
        Run the check on C{config} written to a file, with C{args} after
        C{--config FILE}; its exit status and output.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            yaml.safe_dump(config, f)
        code, out, err = self.runCheck("--config", path, *args, env=env)
        return code, out + err

    def test_good(self) -> None:
        """
        A configuration that would start: status 0, and one line on the
        standard output saying what it holds.  Sockets systemd passed
        another process are checked by their names.
        """
        self.assertEqual(self.check(CONFIG, env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "front"}),
                         (0, "lbtwist: configuration OK: 1 listener, 1 pool, 1 backend\n"))
        self.assertEqual(self.runCheck("--listen", "tcp:0:interface=127.0.0.1", "--backend",
                                  "127.0.0.1:9", "--backend", "127.0.0.1:10"),
                         (0, "lbtwist: configuration OK: 1 listener, 1 pool, 2 backends\n", ""))

    def test_help(self) -> None:
        """
        C{--help} prints the usage naming this program, not a bare option
        list, and exits 0 with no verdict.
        """
        code, out, err = self.runCheck("--help")
        self.assertEqual((code, err), (0, ""))
        self.assertTrue(out.startswith("Usage: python -m lbtwist.check [--config FILE | "), out)
        self.assertIn("--access-log-file=", out)
        self.assertNotIn("configuration OK", out)

    def test_namesItself(self) -> None:
        """
        A usage error names this program, not C{twistd lb}.
        """
        self.assertEqual(
            self.runCheck("lb.yaml"),
            (1, "", "python -m lbtwist.check: unexpected argument 'lb.yaml' (give a "
                    "configuration file as --config FILE) (see python -m lbtwist.check "
                    "--help)\n"))

    def test_bad(self) -> None:
        """
        One that would not: status 1 and one line naming the key (here a
        socket systemd did not pass, then a bad option).
        """
        code, output = self.check(CONFIG)
        self.assertEqual(code, 1)
        self.assertEqual(output, "lbtwist: invalid configuration: listeners[0].listen: systemd "
                                 "passed no such socket for 'systemd:domain=INET:name=front' "
                                 "(started without its socket unit?)\n")
        code, output = self.check(CONFIG, "--workers", "0",
                                  env={"LISTEN_FDS": "1", "LISTEN_FDNAMES": "front"})
        self.assertEqual(code, 1)
        self.assertIn("--workers: expected a number of processes", output)
        self.assertEqual(output.count("\n"), 1)
