"""
The README's embedding recipes, run as written: lbtwist installed by a plain
C{pip install} into a directory of its own, the recipe copied out of
README.rst and run in a fresh interpreter, giving the whole balancer
(traffic, admin API, state file, reload on SIGHUP, graceful stop on SIGTERM).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from typing import Any

import yaml
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.testing import MemoryReactorClock
from twisted.python.filepath import FilePath
from twisted.trial.unittest import SynchronousTestCase, TestCase

import lbtwist

from .support import Backends, firstLine, freePort, inThread, sleep, spawn

ROOT = FilePath(__file__).parent().parent()
TOKEN = "embedded-secret"
_installed: dict[str, str] = {}


def recipe(introduction: str) -> str:
    """
    The literal block of README.rst that follows the line ending with
    C{introduction}.
    """
    text = ROOT.child("README.rst").getContent().decode()
    at = text.index(introduction)
    block = re.match(r"[^\n]*::\n\n((?:    [^\n]*\n|\n)+)", text[at:])
    assert block is not None, introduction
    lines = block.group(1).splitlines()
    return "\n".join(line[4:] for line in lines).strip() + "\n"


def pipInstall(target: str) -> str:
    """
    Install lbtwist from a copy of the source tree (what a clean clone
    holds) into C{target} with pip, dependencies aside (they are this
    interpreter's); return C{target}.
    """
    source = os.path.join(target + "-src")
    os.makedirs(source)
    for name in ("setup.py", "README.rst"):
        shutil.copy(ROOT.child(name).path, source)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "dropin.cache")
    for name in ("lbtwist", "twisted"):
        shutil.copytree(ROOT.child(name).path, os.path.join(source, name), ignore=ignore)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
         "--disable-pip-version-check", "--target", target, source],
        check=True, capture_output=True,
    )
    return target


class EmbeddingTests(TestCase):
    """
    The recipes of the README's Embedding section.
    """

    timeout = 180

    @inlineCallbacks
    def setUp(self) -> Any:
        if "path" not in _installed:
            target = os.path.abspath(self.mktemp())
            _installed["path"] = yield inThread(pipInstall, target)
        self.site = _installed["path"]
        self.work = FilePath(self.mktemp())
        self.work.makedirs()
        self.env = {**os.environ, "PYTHONPATH": self.site}
        self.backends = Backends(self)
        self.backends.start("a")
        self.backends.start("b")
        self.port = freePort()
        self.admin = freePort()

    def writeConfig(self, *names: str) -> None:
        """
        Write C{lb.yaml}: one TCP listener over the named backends, the
        admin API with a token.
        """
        self.work.child("lb.yaml").setContent(yaml.safe_dump({
            "admin": f"tcp:{self.admin}:interface=127.0.0.1",
            "admin-token": TOKEN,
            "listeners": [{"listen": f"tcp:{self.port}:interface=127.0.0.1"}],
            "pools": {"web": {"backends": [
                {"name": n, "endpoint": self.backends.endpoint(n)} for n in names
            ]}},
        }).encode())

    def spawn(self, *argv: str) -> subprocess.Popen[bytes]:
        """
        Run C{argv} in the work directory with the pip-installed lbtwist
        first on the path.
        """
        return spawn(self, list(argv), self.work.path, self.env)

    @inlineCallbacks
    def waitFor(self, port: int, process: subprocess.Popen[bytes]) -> Any:
        """
        Wait until C{port} answers, or fail with the process's output.
        """
        for _ in range(150):
            if process.poll() is not None:
                break
            try:
                yield inThread(firstLine, port, 1.0)
                return
            except OSError:
                yield sleep(0.1)
        process.kill()
        assert process.stdout is not None
        self.fail(f"nothing listens on {port}:\n{process.stdout.read().decode()}")

    @inlineCallbacks
    def exitCode(self, process: subprocess.Popen[bytes]) -> Any:
        """
        Fire with C{process}'s exit status, waiting up to 15 seconds.
        """
        for _ in range(150):
            if process.poll() is not None:
                return process.returncode
            yield sleep(0.1)
        self.fail("the process did not exit")

    def api(self, method: str, path: str, body: object = None) -> Deferred[Any]:
        """
        Call the admin API; fire with the decoded JSON answer.
        """

        def call() -> Any:
            request = urllib.request.Request(
                f"http://127.0.0.1:{self.admin}{path}", method=method,
                data=None if body is None else json.dumps(body).encode(),
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            with urllib.request.urlopen(request, timeout=5) as answer:
                return json.loads(answer.read())

        return inThread(call)

    def test_installedCopy(self) -> None:
        """
        The tests below run the pip-installed copy, not this source tree.
        """
        out = subprocess.run(
            [sys.executable, "-c", "import lbtwist.app; print(lbtwist.app.__file__)"],
            cwd=self.work.path, env=self.env, capture_output=True, check=True,
        ).stdout.decode()
        self.assertTrue(out.startswith(self.site), out)

    def test_everyFileInstalled(self) -> None:
        """
        C{pip install} installs every module and data file of the package
        (every subpackage, the dashboard's files), and the C{py.typed}
        marker that lets a type checker read lbtwist's annotations.
        """
        source = ROOT.child("lbtwist")
        wanted = sorted(
            "/".join(f.segmentsFrom(source)) for f in source.walk()
            if f.isfile() and "__pycache__" not in f.segmentsFrom(source)
            and not f.path.endswith(".pyc")
        )
        self.assertIn("py.typed", wanted)
        installed = FilePath(self.site).child("lbtwist")
        missing = [name for name in wanted if not installed.preauthChild(name).isfile()]
        self.assertEqual(missing, [])

    @inlineCallbacks
    def test_script(self) -> Any:
        """
        The script recipe gives the whole balancer: it balances, answers the
        admin API, saves a change to the state file, reloads on SIGHUP
        (and stays up), stops gracefully on SIGTERM with status 0, and logs
        all of it.
        """
        self.writeConfig("a")
        self.work.child("embed.py").setContent(recipe("in a script of your own").encode())
        process = self.spawn(sys.executable, "embed.py")
        yield self.waitFor(self.port, process)
        self.assertEqual((yield inThread(firstLine, self.port)), b"a")

        pools = yield self.api("GET", "/api/pools")
        self.assertEqual([b["name"] for b in pools["pools"][0]["backends"]], ["a"])
        yield self.api("PATCH", "/api/pools/web/backends/a", {"weight": 3})
        saved = [p for p in self.work.listdir() if "state" in p and p.endswith(".json")]
        self.assertEqual(len(saved), 1, self.work.listdir())
        self.assertIn(b'"a"', self.work.child(saved[0]).getContent())

        self.writeConfig("a", "b")
        process.send_signal(signal.SIGHUP)
        for _ in range(50):
            pools = yield self.api("GET", "/api/pools")
            if len(pools["pools"][0]["backends"]) == 2:
                break
            yield sleep(0.1)
        self.assertEqual(
            sorted(b["name"] for b in pools["pools"][0]["backends"]), ["a", "b"]
        )
        self.assertIsNone(process.poll())

        process.send_signal(signal.SIGTERM)
        self.assertEqual((yield self.exitCode(process)), 0)
        assert process.stdout is not None
        output = process.stdout.read().decode()
        self.assertNotIn("Traceback", output)
        # The recipe logs, so the balancer says what it does.
        for said in ("admin API listening", "configuration reloaded", "stopping gracefully"):
            self.assertIn(said, output)

    @inlineCallbacks
    def test_tac(self) -> Any:
        """
        The C{.tac} recipe runs under C{twistd -ny} and serves.
        """
        self.writeConfig("b")
        self.work.child("myapp.tac").setContent(recipe("in a ``.tac`` file of your own").encode())
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        process = self.spawn(twistd, "--nodaemon", "--pidfile=", "-y", "myapp.tac")
        yield self.waitFor(self.port, process)
        self.assertEqual((yield inThread(firstLine, self.port)), b"b")
        process.send_signal(signal.SIGTERM)
        self.assertEqual((yield self.exitCode(process)), 0)


class ControlRecipeTests(SynchronousTestCase):
    """
    The README's example of C{balancer.control}.
    """

    def test_recipe(self) -> None:
        """
        The example runs as written on a balancer whose pool C{web} has
        backend C{a}: C{c} is added with weight 2, C{a} drains, the bad
        name is refused with its field named and not added, and the
        configuration built in code (adding C{d}) is applied.
        """
        def settingsWith(*names: str) -> dict[str, Any]:
            return {
                "listeners": [{"listen": "tcp:8080"}],
                "pools": {"web": {"backends": [
                    {"name": n, "endpoint": f"tcp:host=127.0.0.1:port={8080 + i}"}
                    for i, n in enumerate(names, 1)]}},
            }

        balancer = lbtwist.Balancer(
            lbtwist.parseConfig(settingsWith("a")), MemoryReactorClock(), signals=False,
            freezeHeap=False, statePath=os.path.abspath(self.mktemp()))
        printed: list[str] = []
        exec(recipe("or because etcd cannot be reached)"), {
            "balancer": balancer, "lbtwist": lbtwist, "settings": settingsWith("a", "b", "d"),
            "print": lambda *args: printed.append(" ".join(map(str, args))),
        })
        pool = balancer.loadBalancer.pools["web"]
        self.assertEqual({b.name: (b.weight, b.admin.value) for b in pool}, {
            "a": (1, "drain"), "b": (1, "ready"), "c": (2, "ready"), "d": (1, "ready")})
        self.assertEqual(printed[0], "added c")
        self.assertTrue(printed[1].startswith("refused: name: expected a name"), printed)
