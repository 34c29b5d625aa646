"""
Tests for L{lbtwist.ctl}: the command-line client, as a real process
against a real admin API, and its pieces in isolation.
"""

from __future__ import annotations

import io
import json
import os
import sys
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase

from lbtwist.ctl import CtlError, backendBody, run
from lbtwist.pool import Admin
from tests.support import reactor
from tests.test_admin import TOKEN, AdminHarness


def ctl(admin: int, *args: str, token: str | None = TOKEN) -> Any:
    """
    Run C{python -m lbtwist.ctl ctl ARGS} against the admin port; fires with
    C{(out, err, code)}.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("LBTWIST_")}
    env["LBTWIST_ADMIN"] = f"127.0.0.1:{admin}"
    if token is not None:
        env["LBTWIST_ADMIN_TOKEN"] = token
    return getProcessOutputAndValue(
        sys.executable, ["-m", "lbtwist.ctl", "ctl", *args], env=env,
        path=os.getcwd(), reactor=reactor)


class CommandTests(TestCase):
    """
    Every command against a running admin API.
    """

    @inlineCallbacks
    def test_listTable(self) -> Any:
        """
        C{list} prints the status table of every pool.
        """
        h = AdminHarness(self)
        out, err, code = yield ctl(h.admin, "list")
        self.assertEqual(code, 0, err)
        text = out.decode()
        self.assertIn("pool web", text)
        self.assertIn("backend", text)
        self.assertIn("TOTAL (", text)
        self.assertRegex(text, r"\na\s+\w+")

    @inlineCallbacks
    def test_listJSON(self) -> Any:
        """
        C{--json list} prints the API's answer.
        """
        h = AdminHarness(self)
        out, err, code = yield ctl(h.admin, "--json", "list")
        self.assertEqual(code, 0, err)
        data = json.loads(out)
        self.assertEqual([b["name"] for b in data["pools"][0]["backends"]], ["a", "b"])

    @inlineCallbacks
    def test_changes(self) -> Any:
        """
        C{add}, C{weight}, C{drain}, C{maint}, C{ready} and C{remove} change
        the pool.
        """
        h = AdminHarness(self)
        out, err, code = yield ctl(h.admin, "add", "c", "127.0.0.1:9", "--weight", "2")
        self.assertEqual(code, 0, err)
        self.assertIn(b"added c", out)
        self.assertEqual(h.pool.get("c").endpoint,  # type: ignore[union-attr]
                         "tcp:host=127.0.0.1:port=9")
        out, err, code = yield ctl(h.admin, "weight", "c", "4")
        self.assertEqual((code, h.pool.get("c").weight), (0, 4))  # type: ignore[union-attr]
        for state in ("drain", "maint", "ready"):
            out, err, code = yield ctl(h.admin, state, "a")
            self.assertEqual(code, 0, err)
            self.assertIs(h.pool.get("a").admin, Admin(state))  # type: ignore[union-attr]
        out, err, code = yield ctl(h.admin, "remove", "c")
        self.assertEqual(code, 0, err)
        self.assertIn(b"removed c", out)
        self.assertNotIn("c", h.pool)

    @inlineCallbacks
    def test_errors(self) -> Any:
        """
        Refusals exit non-zero with the API's message: no token, an unknown
        backend, an unreachable API.
        """
        h = AdminHarness(self)
        _, err, code = yield ctl(h.admin, "drain", "a", token=None)
        self.assertEqual(code, 1)
        self.assertIn(b"401", err)
        self.assertIs(h.pool.get("a").admin, Admin.READY)  # type: ignore[union-attr]
        _, err, code = yield ctl(h.admin, "remove", "zz")
        self.assertEqual(code, 1)
        self.assertIn(b"404", err)
        self.assertIn(b"'zz'", err)
        _, err, code = yield ctl(1, "list")
        self.assertEqual(code, 1)
        self.assertIn(b"cannot reach the admin API", err)
        _, err, code = yield ctl(h.admin, "weight", "a", "many")
        self.assertEqual(code, 2)


class PieceTests(SynchronousTestCase):
    """
    The client's pieces without a network.
    """

    def test_backendBody(self) -> None:
        """
        A target is an endpoint string or C{HOST:PORT}.
        """
        self.assertEqual(backendBody("x", "tcp:host=h:port=1", None, None),
                         {"name": "x", "endpoint": "tcp:host=h:port=1"})
        self.assertEqual(backendBody("x", "[::1]:80", 2, "maint"),
                         {"name": "x", "host": "::1", "port": 80, "weight": 2,
                          "state": "maint"})
        self.assertRaises(CtlError, backendBody, "x", "nohost", None, None)

    def test_severalPools(self) -> None:
        """
        With several pools a change needs C{--pool}.
        """

        class Answer(io.BytesIO):
            def __enter__(self) -> Answer:  # noqa: PYI034
                return self

            def __exit__(self, *a: object) -> None:
                pass

        def opener(request: Any, timeout: float) -> Any:
            return Answer(json.dumps({"pools": [{"name": "x"}, {"name": "y"}]}).encode())

        e = self.assertRaises(CtlError, run, ["ctl", "drain", "a"], {}, io.StringIO(),
                              opener)
        self.assertIn("give --pool", str(e))

    def test_poolEitherSide(self) -> None:
        """
        C{--pool} may come before the command or after it.
        """
        calls: list[str] = []

        class Answer(io.BytesIO):
            def __enter__(self) -> Answer:  # noqa: PYI034
                return self

            def __exit__(self, *a: object) -> None:
                pass

        def opener(request: Any, timeout: float) -> Any:
            calls.append(f"{request.get_method()} {request.full_url}")
            return Answer(json.dumps({"name": "a", "state": "drain", "weight": 1,
                                      "active": 0, "total": 0}).encode())

        for argv in (["ctl", "--pool", "web", "drain", "a"], ["ctl", "drain", "a", "--pool", "web"]):
            calls.clear()
            run(argv, {"LBTWIST_ADMIN_TOKEN": "t"}, io.StringIO(), opener)
            self.assertEqual(calls, ["PATCH http://127.0.0.1:9000/api/pools/web/backends/a"])
