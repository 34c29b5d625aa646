"""
Tests for L{lbtwist.ctl}: the command-line client, as a real process
against a real admin API, and its pieces in isolation.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import urllib.error
from email.message import Message
from typing import Any

import attrs
from twisted.internet.defer import inlineCallbacks
from twisted.internet.utils import getProcessOutputAndValue
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.resource import Resource
from twisted.web.server import Site
from twisted.web.static import Data

from lbtwist.ctl import CtlError, _backendLine, _routeLine, backendBody, parser, run
from lbtwist.pool import Admin, BackendStats
from tests.support import reactor, sleep
from tests.test_admin import TOKEN, AdminHarness
from tests.test_admin_routes import BalancerHarness


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
        C{--json list} and C{list --json} print the API's answer.
        """
        h = AdminHarness(self)
        for args in (("--json", "list"), ("list", "--json")):
            out, err, code = yield ctl(h.admin, *args)
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
        Refusals exit non-zero with the API's message in one line: no token,
        an unknown backend or pool, a bad host, an ssl: endpoint (with what
        to give instead), an unreachable API.
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
        for args in (("add", "c", "127.0.0.1:9"), ("list",), ("drain", "a")):
            _, err, code = yield ctl(h.admin, "--pool", "nope", *args)
            self.assertEqual(code, 1)
            self.assertRegex(err.decode(), r"^lbtwist: error: [A-Z]+ /api/pools/nope\S*: 404 "
                             r"unknown pool 'nope' \(pools: web\)\n$")
        _, err, code = yield ctl(h.admin, "add", "c", "[::1:9")
        self.assertEqual(code, 1)
        self.assertIn(b"400 host: expected a host name or an IP address, like 'app.internal', "
                      b"'10.0.0.5', '::1' or '[::1]', got '[::1'\n", err)
        self.assertNotIn("c", h.pool)
        _, err, code = yield ctl(h.admin, "add", "s", "ssl:host=127.0.0.1:port=8443")
        self.assertEqual(code, 1)
        self.assertIn(b"400 endpoint: an ssl: backend endpoint does not verify the backend's "
                      b"certificate, and a backend added at run time speaks TLS as its pool's "
                      b"tls block says: pool 'web' has none;", err)
        self.assertIn(b"as 127.0.0.1:8443\n", err)
        self.assertNotIn("s", h.pool)
        _, err, code = yield ctl(1, "list")
        self.assertEqual(code, 1)
        self.assertIn(b"cannot reach the admin API", err)
        _, err, code = yield ctl(h.admin, "weight", "a", "many")
        self.assertEqual(code, 2)


class NotTheAdminAPITests(SynchronousTestCase):
    """
    An address that answers, but not as the admin API does (a listener,
    a backend, another program), is said in one line, never a traceback
    nor a whole page.
    """

    PAGE = b"<!DOCTYPE html><html><body>" + b"<p>hello</p>" * 50 + b"</body></html>"
    NOT_ADMIN = "http://127.0.0.1:9000: not an lbtwist admin API (answered {})"

    def answer(self, status: int, contentType: str | None, body: bytes) -> str:
        """
        What C{lbtwist ctl list} prints, or the error it fails with, when
        the address answers C{status} with C{body} of C{contentType}.
        """
        def opener(request: Any, timeout: float) -> Any:
            if status >= 400:
                headers = Message()
                if contentType is not None:
                    headers["Content-Type"] = contentType
                raise urllib.error.HTTPError(
                    request.full_url, status, "Not Found", headers, io.BytesIO(body))
            return _Answer(body, status, contentType)

        out = io.StringIO()
        try:
            run(["ctl", "list"], {}, out, opener)
        except CtlError as e:
            return f"error: {e}"
        return out.getvalue()

    def test_answers(self) -> None:
        """
        Only a JSON answer is taken: anything else is one line naming the
        address, the status and the content type.
        """
        table = [
            (200, "text/html; charset=utf-8", self.PAGE,
             "error: " + self.NOT_ADMIN.format("200 with text/html")),
            (200, "text/plain", b"hello from 8001\n",
             "error: " + self.NOT_ADMIN.format("200 with text/plain")),
            (200, None, b"ok", "error: " + self.NOT_ADMIN.format("200 with no content type")),
            (200, "application/json", b"<html>",
             "error: " + self.NOT_ADMIN.format("200 with invalid JSON")),
            (404, "text/html", self.PAGE,
             "error: " + self.NOT_ADMIN.format("404 with text/html")),
            (404, "application/json", b'{"error": "no such resource"}',
             "error: GET /api/pools: 404 no such resource"),
            (200, "application/json", b'{"pools": []}', "\n"),
            # Another program's JSON API.
            (200, "application/json", b'{"status": "ok"}',
             "error: " + self.NOT_ADMIN.format("JSON without 'pools'")),
            (200, "application/json", b'{"pools": 3}',
             "error: " + self.NOT_ADMIN.format("JSON of another shape")),
        ]
        for status, contentType, body, expected in table:
            with self.subTest(status=status, contentType=contentType, body=body[:20]):
                self.assertEqual(self.answer(status, contentType, body), expected)


class NotTheAdminAPIProcessTests(TestCase):
    """
    C{lbtwist ctl} as a process pointed at a web server that is not the
    admin API.
    """

    @inlineCallbacks
    def test_oneLineExitOne(self) -> Any:
        """
        It exits 1 with one line on standard error, for a 200 page as for
        a 404 page.
        """
        page = Data(b"<html><body>" + b"<p>a page</p>" * 100 + b"</body></html>", "text/html")
        page.isLeaf = True  # the page at every path: a 200 for /api/pools
        for root, status in [(page, 200), (Resource(), 404)]:
            port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
            self.addCleanup(port.stopListening)
            number = port.getHost().port
            out, err, code = yield ctl(number, "list")
            self.assertEqual((out, code), (b"", 1))
            self.assertEqual(err.decode(), f"lbtwist: error: http://127.0.0.1:{number}: not "
                                           f"an lbtwist admin API (answered {status} with "
                                           "text/html)\n")


class PieceTests(SynchronousTestCase):
    """
    The client's pieces without a network.
    """

    def test_backendBody(self) -> None:
        """
        A target is an endpoint string or C{HOST:PORT}, an IPv6 host in
        brackets.
        """
        self.assertEqual(backendBody("x", "tcp:host=h:port=1", None, None),
                         {"name": "x", "endpoint": "tcp:host=h:port=1"})
        self.assertEqual(backendBody("x", "[::1]:80", 2, "maint"),
                         {"name": "x", "host": "::1", "port": 80, "weight": 2,
                          "state": "maint"})
        self.assertRaises(CtlError, backendBody, "x", "nohost", None, None)
        # Only a matched pair of brackets is an IPv6 address's: the rest is
        # the API's to refuse, naming the host.
        self.assertEqual(backendBody("x", "[::1:80", None, None),
                         {"name": "x", "host": "[::1", "port": 80})

    def test_severalPools(self) -> None:
        """
        With several pools, adding a backend needs C{--pool}; the error
        lists the pools.
        """
        api = FakeAPI({"x": ["a"], "y": ["b"]})
        e = self.assertRaises(CtlError, run, ["ctl", "add", "c", "h:1"], {}, io.StringIO(),
                              api.open)
        self.assertEqual(str(e), "there are several pools (x, y): give --pool")

    def test_poolFoundByBackend(self) -> None:
        """
        With several pools, a command on a backend acts in the one pool that
        has a backend of that name.
        """
        api = FakeAPI({"x": ["a"], "y": ["b", "c"]})
        run(["ctl", "drain", "c"], {}, io.StringIO(), api.open)
        self.assertEqual(api.calls[-1], "PATCH http://127.0.0.1:9000/api/pools/y/backends/c")

    def test_backendAmbiguousOrMissing(self) -> None:
        """
        A backend name found in several pools, or in none, is an error that
        lists the pools.
        """
        api = FakeAPI({"x": ["a"], "y": ["a"], "z": []})
        e = self.assertRaises(CtlError, run, ["ctl", "drain", "a"], {}, io.StringIO(),
                              api.open)
        self.assertEqual(str(e), "backend 'a' is in several pools (x, y): give --pool")
        e = self.assertRaises(CtlError, run, ["ctl", "remove", "q"], {}, io.StringIO(),
                              api.open)
        self.assertEqual(str(e), "no backend 'q' in any pool (x, y, z)")
        self.assertNotIn("DELETE", " ".join(api.calls))

    def test_poolEitherSide(self) -> None:
        """
        C{--pool} may come before the command or after it.
        """
        for argv in (["ctl", "--pool", "web", "drain", "a"], ["ctl", "drain", "a", "--pool", "web"]):
            api = FakeAPI({"web": ["a"], "api": ["a"]})
            run(argv, {"LBTWIST_ADMIN_TOKEN": "t"}, io.StringIO(), api.open)
            self.assertEqual(api.calls, ["PATCH http://127.0.0.1:9000/api/pools/web/backends/a"])

    def test_globalOptionsEitherSide(self) -> None:
        """
        C{--json}, C{--admin}, C{--token} and C{--timeout} may follow the
        command; one left out after it keeps its value from before it.
        """
        for argv in (["ctl", "--json", "--admin", "h:1", "--token", "t", "--timeout", "3",
                      "list"],
                     ["ctl", "list", "--json", "--admin", "h:1", "--token", "t",
                      "--timeout", "3"],
                     ["ctl", "--json", "--timeout", "3", "list", "--admin", "h:1",
                      "--token", "t"]):
            api = FakeAPI({"web": ["a"]})
            out = io.StringIO()
            run(argv, {}, out, api.open)
            self.assertEqual(api.calls, ["GET http://h:1/api/pools"])
            self.assertEqual(api.timeouts, [3.0])
            self.assertEqual(json.loads(out.getvalue())["pools"][0]["name"], "web")

    def test_help(self) -> None:
        """
        The help names the pool option's value C{POOL}, and says the options
        may follow the command.
        """
        out = io.StringIO()
        with contextlib.redirect_stdout(out), self.assertRaises(SystemExit):
            parser().parse_args(["ctl", "--help"])
        text = out.getvalue()
        self.assertIn("--pool POOL", text)
        self.assertNotIn("GLOBALPOOL", text)
        self.assertIn("The options may also follow the command.", " ".join(text.split()))


    def test_backendLine(self) -> None:
        """
        A backend's line gives its weight, and the weight slow start gives
        it now while it ramps up (C{ctl ready} during a ramp).
        """
        base = {"name": "a", "state": "up", "weight": 10, "active": 1, "total": 7}
        cases = [
            ({**base, "effectiveWeight": None}, "a: up, weight 10, 1 active, 7 total"),
            ({**base, "effectiveWeight": 2.5},
             "a: up, weight 10 (2.5 while slow start ramps up), 1 active, 7 total"),
            (base, "a: up, weight 10, 1 active, 7 total"),
        ]
        for backend, line in cases:
            self.assertEqual(_backendLine(backend), line)

    def test_routeLine(self) -> None:
        """
        A route's line says who it lets through: its rate limit and its
        credentials' realm, whatever its action; a route with neither says
        nothing of them.
        """
        cases = [
            ({"name": "web", "pool": "web"}, "  web: everything -> pool web"),
            ({"name": "status", "match": {"path": "/status"},
              "respond": {"status": 200},
              "rate-limit": {"key": "source", "rate": "1/m", "burst": 1, "max-keys": 9},
              "auth": {"basic": {"realm": "staff", "users": "u"}}},
             "  status: path=/status -> respond "
             "[rate-limit 1/m burst 1 per source; auth realm staff]"),
            ({"name": "old", "redirect": {"scheme": "https"},
              "auth": {"basic": {"realm": "ops", "users": "u"}}},
             "  old: everything -> redirect [auth realm ops] (2 requests)"),
        ]
        for route, line in cases:
            counts = {"requests": 2} if route["name"] == "old" else None
            self.assertEqual(_routeLine(route, counts), line)


class UpgradeCommandTests(SynchronousTestCase):
    """
    C{lbtwist ctl upgrade}.
    """

    def test_upgrade(self) -> None:
        """
        It posts to C{/api/upgrade} with the token and says which
        generation serves.
        """
        seen: list[Any] = []

        def opener(request: Any, timeout: float) -> Any:
            seen.append((request.get_method(), request.full_url,
                         request.get_header("Authorization")))
            return _Answer(json.dumps({"status": "upgraded", "generation": 3}).encode())

        out = io.StringIO()
        run(["ctl", "upgrade", "--token", "t"], {}, out, opener)
        self.assertEqual(seen, [("POST", "http://127.0.0.1:9000/api/upgrade", "Bearer t")])
        self.assertEqual(out.getvalue(), "upgraded: generation 3 serves\n")

    def reexec(self, views: list[Any], answer: dict[str, Any] | None = None,
               ) -> tuple[list[str], list[float], Any]:
        """
        Run C{upgrade} against an API that answers the master re-executes
        itself, then gives C{views} of the workers in turn (an exception:
        the API does not answer); the requests made, the pauses, and the
        output or the error.
        """
        seen: list[str] = []
        pauses: list[float] = []
        answers = iter(views)

        def opener(request: Any, timeout: float) -> Any:
            seen.append(f"{request.get_method()} {request.full_url}")
            if request.get_method() == "POST":
                return _Answer(json.dumps(
                    answer or {"generation": 3, "master": "re-executing"}).encode())
            view = next(answers, views[-1])
            if isinstance(view, Exception):
                raise view
            return _Answer(json.dumps(view if isinstance(view, dict) else {"workers": view})
                           .encode())

        out = io.StringIO()
        try:
            run(["ctl", "upgrade", "--token", "t"], {}, out, opener, sleep=pauses.append)
        except CtlError as e:
            return seen, pauses, e
        return seen, pauses, out.getvalue()

    def test_reexecWaits(self) -> None:
        """
        When the master re-executes itself, it polls the workers (through a
        moment without an API) until every worker of the new generation
        serves, and says so.
        """
        old = {"worker": 1, "generation": 2, "state": "serving"}
        starting = {"worker": 1, "generation": 3, "state": "starting"}
        serving = {"worker": 1, "generation": 3, "state": "serving"}
        seen, pauses, output = self.reexec([
            [old], ConnectionRefusedError(), [{**old, "state": "retiring"}, starting],
            [serving, {**serving, "worker": 2}]])
        self.assertEqual(seen, ["POST http://127.0.0.1:9000/api/upgrade"]
                         + ["GET http://127.0.0.1:9000/api/workers"] * 4)
        self.assertEqual(pauses, [0.25] * 3)
        self.assertEqual(output, "upgraded: the master re-executed itself; generation 3 "
                                 "serves\n")

    def test_reexecFailed(self) -> None:
        """
        A master whose exec failed says so in C{/api/workers}: ctl reports
        it at once instead of waiting for the generation that will not
        come.
        """
        old = {"worker": 1, "generation": 2, "state": "serving"}
        seen, pauses, error = self.reexec([
            ConnectionRefusedError(),
            {"workers": [old], "upgrade-failed": {
                "generation": 3, "error": "the master cannot re-execute itself (gone)"}}])
        self.assertIsInstance(error, CtlError)
        self.assertEqual(str(error), "upgrade failed: the master cannot re-execute itself "
                                     "(gone); the master serves on as it was")
        self.assertEqual(len(seen), 3)
        self.assertEqual(pauses, [0.25])

    def test_reexecFailedAdminMoved(self) -> None:
        """
        An upgrade that was to move the admin API and whose exec failed:
        the new address does not answer, the old one says what failed.
        """
        seen, _, error = self.reexec([
            ConnectionRefusedError(),
            {"workers": [], "upgrade-failed": {"generation": 3, "error": "no hand-over"}}], {
            "generation": 3, "master": "re-executing", "admin": "http://127.0.0.1:9100"})
        self.assertEqual(str(error), "upgrade failed: no hand-over; the master serves on as "
                                     "it was")
        self.assertEqual(seen, ["POST http://127.0.0.1:9000/api/upgrade",
                                "GET http://127.0.0.1:9100/api/workers",
                                "GET http://127.0.0.1:9000/api/workers"])

    def test_reexecAdminMoved(self) -> None:
        """
        An upgrade that moves the admin API: the workers are polled at its
        new address, which is printed for the user to point ctl at.
        """
        serving = {"worker": 1, "generation": 3, "state": "serving"}
        seen, _, output = self.reexec([[serving]], {
            "generation": 3, "master": "re-executing", "admin": "http://127.0.0.1:9100",
            "reasons": ["admin", "status-interval"]})
        self.assertEqual(seen, ["POST http://127.0.0.1:9000/api/upgrade",
                                "GET http://127.0.0.1:9100/api/workers"])
        # It says why the master re-executed itself, and where the API went.
        self.assertEqual(output, "upgraded: the master re-executed itself (admin, "
                                 "status-interval); generation 3 serves\n"
                                 "the admin API now answers at http://127.0.0.1:9100: update "
                                 "LBTWIST_ADMIN (or --admin)\n")

    def test_reexecNeverServes(self) -> None:
        """
        A new generation that does not serve within 60 s is an error,
        after a bounded number of polls.
        """
        seen, pauses, error = self.reexec([[{"worker": 1, "generation": 2,
                                             "state": "serving"}]])
        self.assertIsInstance(error, CtlError)
        self.assertIn("generation 3 did not serve within 60s", str(error))
        self.assertEqual(len(pauses), 240)


class FakeAPI:
    """
    An opener for L{run} that answers as the admin API does for pools of
    the given backends, and records each request.

    @ivar calls: C{"METHOD URL"} of each request.
    @ivar timeouts: the timeout of each request.
    """

    def __init__(self, pools: dict[str, list[str]]) -> None:
        self.pools = [
            {"name": pool, "backends": [
                attrs.asdict(BackendStats(
                    b, "tcp:host=h:port=1", 1, "up", "up", "ready", 0, 0, 0, {}, 0, 0,
                    None, None, 0.0))
                for b in backends]}
            for pool, backends in pools.items()
        ]
        self.calls: list[str] = []
        self.timeouts: list[float] = []

    def open(self, request: Any, timeout: float) -> Any:
        """
        Answer C{request}: the pools for C{GET /api/pools}, else a backend.
        """
        self.calls.append(f"{request.get_method()} {request.full_url}")
        self.timeouts.append(timeout)
        if request.full_url.endswith("/api/pools"):
            return _Answer(json.dumps({"pools": self.pools}).encode())
        return _Answer(json.dumps({"name": "a", "state": "drain", "weight": 1, "active": 0,
                                   "total": 0, "draining": 0, "grace": 1}).encode())


class _Answer(io.BytesIO):
    """
    A response body, usable as a context manager as urlopen's answer is.

    @ivar status: its status.
    @ivar headers: its headers (a JSON content type unless given).
    """

    def __init__(self, body: bytes, status: int = 200,
                 contentType: str | None = "application/json") -> None:
        super().__init__(body)
        self.status = status
        self.headers = Message()
        if contentType is not None:
            self.headers["Content-Type"] = contentType

    def __enter__(self) -> _Answer:  # noqa: PYI034
        return self

    def __exit__(self, *a: object) -> None:
        pass


class RouteCommandTests(TestCase):
    """
    C{routes}, C{route-set}, C{pool-add} and C{pool-remove}, as a real
    process against a whole running balancer.
    """

    @inlineCallbacks
    def test_routesAndPools(self) -> Any:
        """
        A pool is created from a YAML file, a route list set from another
        (new clients follow it), both listed with their traffic, and the
        pool removed once no route uses it; errors exit non-zero naming the
        key.
        """
        h = BalancerHarness(self)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        poolFile = os.path.join(directory, "pool.yaml")
        with open(poolFile, "w") as f:
            f.write(f"policy: leastconn\nbackends:\n  - name: c\n"
                    f"    endpoint: '{h.backends.endpoint('c')}'\n")
        routesFile = os.path.join(directory, "routes.yaml")
        with open(routesFile, "w") as f:
            f.write("- name: local\n  match: {source: 127.0.0.1}\n  pool: c\n")
        badFile = os.path.join(directory, "bad.json")
        with open(badFile, "w") as f:
            f.write('[{"name": "x", "pool": "nope"}]')

        out, err, code = yield ctl(h.admin, "pool-add", "c", poolFile)
        self.assertEqual((code, out), (0, b"added pool c with 1 backend\n"), err)
        out, err, code = yield ctl(h.admin, "route-set", "front", routesFile)
        self.assertEqual((code, out), (0, b"listener front: 1 route set\n"), err)
        self.assertEqual((yield h.reached()), b"c")
        yield sleep(0.1)
        out, err, code = yield ctl(h.admin, "routes")
        self.assertEqual(code, 0, err)
        self.assertEqual(out.decode().splitlines(), [
            "front (tcp): 1 route",
            "  local: source=127.0.0.1/32 -> pool c (1 request)",
            "  default: everything -> pool b (0 requests)",
        ])
        out, err, code = yield ctl(h.admin, "routes", "front", "--json")
        self.assertEqual(json.loads(out), [
            {"name": "local", "match": {"source": ["127.0.0.1/32"]}, "pool": "c"}])
        out, err, code = yield ctl(h.admin, "pool-remove", "c")
        self.assertEqual(code, 1)
        self.assertIn(b"409 pool 'c' is in use by route front/local", err)
        out, err, code = yield ctl(h.admin, "route-set", "front", badFile)
        self.assertEqual(code, 1)
        self.assertIn(b"400 routes[0].pool: no pool named 'nope'", err)
        with open(routesFile, "w") as f:
            f.write("routes:\n  - name: local\n    match: {source: 127.0.0.1}\n    pool: a\n")
        out, err, code = yield ctl(h.admin, "route-set", "front", routesFile)
        self.assertEqual(code, 0, err)
        out, err, code = yield ctl(h.admin, "pool-remove", "c")
        self.assertEqual(code, 0, err)
        self.assertTrue(out.startswith(b"removed pool c; "), out)
        self.assertEqual(sorted(h.lb.pools), ["a", "b"])
        out, err, code = yield ctl(h.admin, "routes", "back")
        self.assertEqual((code, err), (1, b"lbtwist: error: no listener 'back'\n"))
