"""
C{lbtwist ctl}: the command-line client of the admin API.

    lbtwist ctl list [--pool POOL]
    lbtwist ctl add NAME ENDPOINT|HOST:PORT [--weight N] [--state STATE]
    lbtwist ctl remove|drain|ready|maint NAME
    lbtwist ctl weight NAME N
    lbtwist ctl health | reload | upgrade
    lbtwist ctl routes [LISTENER]
    lbtwist ctl route-set LISTENER FILE
    lbtwist ctl pool-add NAME FILE
    lbtwist ctl pool-remove NAME
    lbtwist ctl instances              (the balancers sharing a cluster registry)

The admin API's address and token come from C{--admin} and C{--token}, or
the environment (C{LBTWIST_ADMIN}, C{LBTWIST_ADMIN_TOKEN}).  Tables are
printed for people, C{--json} prints the API's answer for scripts.  Any
error exits non-zero with a message on standard error.

This is a short-lived blocking program: it uses the standard library's
HTTP client, not Twisted.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any
from urllib.parse import quote

import attrs

from .endpoints import ENDPOINT_TYPES
from .pool import BackendStats
from .status import formatTable
from .wording import counted

DEFAULT_ADMIN = "http://127.0.0.1:9000"
ADMIN_VARIABLE = "LBTWIST_ADMIN"
TOKEN_VARIABLE = "LBTWIST_ADMIN_TOKEN"

Opener = Callable[[urllib.request.Request, float], Any]


class CtlError(Exception):
    """
    A command failed; the message says why, for people.
    """


# How long lbtwist ctl upgrade waits for a re-executed master's workers.
REEXEC_WAIT = 60.0
REEXEC_POLL = 0.25


class AdminClient:
    """
    Calls the admin API over HTTP.

    @ivar opener: opens a request with a timeout (L{urllib.request.urlopen}
        by default; injected by tests).
    """

    def __init__(self, base: str, token: str | None, timeout: float = 10.0,
                 opener: Opener | None = None) -> None:
        if "://" not in base:
            base = "http://" + base
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.opener: Opener = opener or (
            lambda request, timeout: urllib.request.urlopen(request, timeout=timeout))

    def call(self, method: str, path: str, body: object = None) -> Any:
        """
        Make one request; the decoded JSON answer.

        @raise CtlError: the API cannot be reached or refused the request.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.token and method != "GET":
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with self.opener(request, self.timeout) as response:
                raw = response.read()
                status, headers = getattr(response, "status", 200), response.headers
        except urllib.error.HTTPError as e:
            answer = self._decode(e.code, e.headers, e.read())
            message = answer.get("error") if isinstance(answer, dict) else None
            raise CtlError(f"{method} {path}: {e.code} {message or e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise CtlError(f"cannot reach the admin API at {self.base}: {reason}") from None
        return self._decode(status, headers, raw)

    def _decode(self, status: int, headers: Any, raw: bytes) -> Any:
        """
        The JSON of an answer: the admin API answers everything, errors
        included, in JSON.

        @raise CtlError: the answer is something else, so whatever answers
            there (a listener, a backend, another program) is not the admin
            API; said in one line.
        """
        contentType = (headers.get("Content-Type") if headers is not None else None) or ""
        mediaType = contentType.partition(";")[0].strip().lower() or "no content type"
        if mediaType == "application/json":
            try:
                return json.loads(raw)
            except ValueError:
                mediaType = "invalid JSON"
        raise CtlError(
            f"{self.base}: not an lbtwist admin API (answered {status} with {mediaType})")

    def poolName(self, given: str | None, backend: str | None = None) -> str:
        """
        The pool to act on: the one given, or the only one there is, or the
        one pool that has a backend named C{backend}.

        @raise CtlError: no pool, or several, would do; the message lists them.
        """
        if given:
            return given
        pools = self.call("GET", "/api/pools")["pools"]
        names = [p["name"] for p in pools]
        if len(names) == 1:
            return str(names[0])
        if backend is None:
            raise CtlError(f"there are several pools ({', '.join(names)}): give --pool")
        having = [p["name"] for p in pools
                  if any(b.get("name") == backend for b in p.get("backends", ()))]
        if len(having) == 1:
            return str(having[0])
        if not having:
            raise CtlError(f"no backend {backend!r} in any pool ({', '.join(names)})")
        raise CtlError(f"backend {backend!r} is in several pools ({', '.join(having)}): "
                       "give --pool")


def backendBody(name: str, target: str, weight: int | None, state: str | None
                ) -> dict[str, Any]:
    """
    The body that adds a backend given as an endpoint string or C{host:port}.
    """
    body: dict[str, Any] = {"name": name}
    if target.partition(":")[0] in ENDPOINT_TYPES:
        body["endpoint"] = target
    else:
        host, sep, port = target.rpartition(":")
        if not sep or not port.isdigit():
            raise CtlError(f"expected an endpoint string or HOST:PORT, got {target!r}")
        # An IPv6 address's brackets; anything else is the API's to judge.
        body["host"] = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        body["port"] = int(port)
    if weight is not None:
        body["weight"] = weight
    if state is not None:
        body["state"] = state
    return body


def _table(pools: Sequence[Mapping[str, Any]]) -> str:
    fields = {a.name for a in attrs.fields(BackendStats)}
    return "\n\n".join(
        formatTable(
            p["name"],
            [BackendStats(**{k: v for k, v in b.items() if k in fields})
             for b in p["backends"]],
        )
        for p in pools
    )


def _backendLine(b: Mapping[str, Any]) -> str:
    effective = b.get("effectiveWeight")
    ramp = "" if effective is None else f" ({effective:.3g} while slow start ramps up)"
    return (f"{b['name']}: {b['state']}, weight {b['weight']}{ramp}, "
            f"{b['active']} active, {b['total']} total")


def readData(path: str) -> Any:
    """
    The content of a YAML (or JSON) file, for C{route-set} and C{pool-add};
    C{-} is standard input.

    @raise CtlError: it cannot be read or is not YAML.
    """
    import yaml

    try:
        if path == "-":
            return yaml.safe_load(sys.stdin)
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise CtlError(f"cannot read {path!r}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise CtlError(f"{path!r} is not valid YAML or JSON: {e}") from None


def _routeLine(route: Mapping[str, Any], counts: Mapping[str, Any] | None) -> str:
    """
    One route for people: its name, what it matches, what it does, who
    it lets through (its rate limit and credentials), and what it did.
    """
    match = ", ".join(f"{k}={v if not isinstance(v, list) else ','.join(map(str, v))}"
                      for k, v in (route.get("match") or {}).items()) or "everything"
    if "pool" in route:
        action = f"pool {route['pool']}"
    elif "pools" in route:
        action = "pools " + ", ".join(f"{k} {v}" for k, v in route["pools"].items())
    else:
        action = next((k for k in ("redirect", "respond") if k in route), "?")
    line = f"  {route.get('name', 'default')}: {match} -> {action}"
    guards = []
    limit = route.get("rate-limit")
    if limit is not None:
        guards.append(f"rate-limit {limit['rate']} burst {limit['burst']} per {limit['key']}")
    auth = route.get("auth")
    if auth is not None:
        guards.append(f"auth realm {auth['basic']['realm']}")
    if guards:
        line += f" [{'; '.join(guards)}]"
    if counts is not None:
        line += f" ({counted(counts['requests'], 'request')})"
    return line


def _routes(client: AdminClient, listener: str | None) -> tuple[Any, str]:
    """
    The routes of one listener (or of every one), as JSON and as text.
    """
    listeners = client.call("GET", "/api/listeners")
    if listener is not None:
        listeners = [x for x in listeners if x["name"] == listener]
        if not listeners:
            raise CtlError(f"no listener {listener!r}")
    result, lines = {}, []
    for x in listeners:
        routes = client.call("GET", f"/api/listeners/{quote(x['name'], safe='')}/routes")
        result[x["name"]] = routes
        counts = {c["name"]: c for c in x.get("routes", ())}
        lines.append(f"{x['name']} ({x['mode']}): {counted(len(routes), 'route')}")
        lines.extend(_routeLine(r, counts.get(r["name"])) for r in routes)
        if x.get("defaultRoute") is not None:
            lines.append(_routeLine(x["defaultRoute"], counts.get("default")))
    return (result[listener] if listener is not None else result), "\n".join(lines)


def _removedLine(what: str, result: Mapping[str, Any]) -> str:
    """
    What a removal (of a backend or a pool) says: the grace its draining
    connections get.
    """
    return (f"removed {what}; {result['grace']:g}s for "
            f"{counted(result['draining'], 'connection')} to finish")


def _instanceLine(i: Mapping[str, Any]) -> str:
    return (f"{i.get('name', '?')}  admin {i.get('address') or '-'}  "
            f"lbtwist {i.get('version', '?')}  revision {i.get('revision', '?')}")


def _globalOptions(p: argparse.ArgumentParser, after: bool) -> None:
    """
    The options that may come before the command or after it.  After it
    their defaults are suppressed, so that one left out there does not undo
    the same option given before the command.
    """
    unset: dict[str, Any] = {"default": argparse.SUPPRESS} if after else {}
    p.add_argument("--admin", metavar="URL", help=f"admin API address (${ADMIN_VARIABLE}, "
                   f"default {DEFAULT_ADMIN})", **unset)
    p.add_argument("--token", help=f"bearer token (${TOKEN_VARIABLE})", **unset)
    p.add_argument("--json", action="store_true", help="print JSON for scripts", **unset)
    p.add_argument("--timeout", type=float, metavar="SECONDS", help="seconds (default 10)",
                   **({"default": 10.0} if not after else unset))
    p.add_argument("--pool", help="the pool (default: the only one, or the one that "
                   "has the backend named)", **unset)


def parser() -> argparse.ArgumentParser:
    """
    The command line of C{lbtwist}.  The options of C{ctl} may come before
    its command or after it (C{lbtwist ctl list --json}).
    """
    top = argparse.ArgumentParser(prog="lbtwist", description="lbtwist tools.")
    commands = top.add_subparsers(dest="command", required=True)
    ctl = commands.add_parser("ctl", help="control a running balancer",
                              description="Control a running lbtwist through its "
                              "admin API. The options may also follow the command.")
    _globalOptions(ctl, after=False)
    actions = ctl.add_subparsers(dest="action", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=text, description=text)
        _globalOptions(p, after=True)
        return p

    command("list", "list pools and backends")
    add = command("add", "add a backend")
    add.add_argument("name")
    add.add_argument("target", metavar="ENDPOINT|HOST:PORT")
    add.add_argument("--weight", type=int)
    add.add_argument("--state", choices=("ready", "drain", "maint"))
    for action, text in (("remove", "remove a backend (drained first)"),
                         ("drain", "let a backend's clients finish, send no new ones"),
                         ("ready", "put a backend back in rotation"),
                         ("maint", "take a backend out of rotation, pause checks")):
        command(action, text).add_argument("name")
    weight = command("weight", "set a backend's weight")
    weight.add_argument("name")
    weight.add_argument("weight", type=int)
    command("health", "the balancer's health")
    command("reload", "reload the configuration file")
    command("routes", "list a listener's routes (or every listener's) and their "
            "traffic").add_argument("listener", nargs="?")
    routeSet = command("route-set", "replace a listener's whole route list with the "
                       "one in FILE (YAML or JSON, - for standard input)")
    routeSet.add_argument("listener")
    routeSet.add_argument("file")
    poolAdd = command("pool-add", "create a pool from FILE (the configuration's pool "
                      "keys, YAML or JSON)")
    poolAdd.add_argument("name")
    poolAdd.add_argument("file")
    command("pool-remove", "remove a pool no route uses (its connections drained)"
            ).add_argument("name")
    command("upgrade", "start new workers from the code and configuration on disk")
    command("instances", "the balancers registered in the cluster store")
    return top


def waitGeneration(client: AdminClient, generation: int,
                   sleep: Callable[[float], None] = time.sleep,
                   before: AdminClient | None = None) -> dict[str, Any]:
    """
    Wait (polling C{/api/workers}, at most L{REEXEC_WAIT} seconds) until
    the workers of C{generation} serve, after the master re-executed
    itself; the API may not answer for a moment meanwhile.

    @param before: the API's address before the upgrade, if it moves: a
        master whose exec failed answers there, not at the new one.

    @return: the generation and its workers.
    @raise CtlError: they did not all serve in time, or the master says
        the exec failed.
    """
    last: Any = None
    for _ in range(int(REEXEC_WAIT / REEXEC_POLL)):
        answer = _workers(client)
        if answer is None and before is not None:
            answer = _workers(before)
        last = answer.get("workers") if answer is not None else None
        failed = answer.get("upgrade-failed") if answer is not None else None
        if isinstance(failed, dict) and failed.get("generation") == generation:
            raise CtlError(f"upgrade failed: {failed.get('error')}; the master serves on "
                           f"as it was")
        if last:
            mine = [w for w in last if w["generation"] == generation]
            if mine and all(w["state"] == "serving" for w in mine):
                return {"generation": generation, "workers": mine}
        sleep(REEXEC_POLL)
    raise CtlError(f"the master re-executed itself, but generation {generation} did not "
                   f"serve within {REEXEC_WAIT:g}s (see its log); workers: {last}")


def _workers(client: AdminClient) -> dict[str, Any] | None:
    """
    C{GET /api/workers}, or L{None} if the API does not answer.
    """
    try:
        answer = client.call("GET", "/api/workers")
    except CtlError:
        return None
    return answer if isinstance(answer, dict) else None


def run(argv: Sequence[str], environ: Mapping[str, str], out: IO[str],
        opener: Opener | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
    """
    Run one command.

    @raise CtlError: it failed.
    """
    args = parser().parse_args(argv)
    client = AdminClient(
        args.admin or environ.get(ADMIN_VARIABLE) or DEFAULT_ADMIN,
        args.token or environ.get(TOKEN_VARIABLE),
        args.timeout,
        opener,
    )
    try:
        result, text = _act(args, client, sleep)
    except (KeyError, TypeError, IndexError) as e:
        # JSON, but not of the admin API's shape: another program's API.
        what = f"without {e.args[0]!r}" if isinstance(e, KeyError) and e.args else "of another shape"
        raise CtlError(f"{client.base}: not an lbtwist admin API (answered JSON {what})") from e
    out.write((json.dumps(result, indent=2) if args.json else text) + "\n")


def _act(args: argparse.Namespace, client: AdminClient,
         sleep: Callable[[float], None]) -> tuple[Any, str]:
    """
    Carry out C{args.action} through C{client}: its result, and the text
    that says it.
    """
    action = args.action
    if action == "list":
        if args.pool:
            pools = [client.call("GET", f"/api/pools/{quote(args.pool, safe='')}")]
        else:
            pools = client.call("GET", "/api/pools")["pools"]
        result: Any = {"pools": pools}
        text = _table(pools)
    elif action == "upgrade":
        result = client.call("POST", "/api/upgrade")
        if result.get("master") == "re-executing":
            moved = result.get("admin")
            before = None
            if moved:
                # The admin API moves with the upgrade.
                before = client
                client = AdminClient(moved, client.token, client.timeout, client.opener)
            why = ", ".join(result.get("reasons") or ())
            result = {**result, **waitGeneration(client, result["generation"], sleep, before)}
            text = (f"upgraded: the master re-executed itself"
                    f"{f' ({why})' if why else ''}; generation {result['generation']} serves")
            if moved:
                result["admin"] = client.base
                text += (f"\nthe admin API now answers at {client.base}: update "
                         f"{ADMIN_VARIABLE} (or --admin)")
        else:
            text = f"upgraded: generation {result['generation']} serves"
    elif action == "instances":
        result = client.call("GET", "/api/instances")
        text = "\n".join(_instanceLine(i) for i in result.get("instances", [])) or "none"
    elif action in ("health", "reload"):
        path = "/api/health" if action == "health" else "/api/reload"
        try:
            result = client.call("GET" if action == "health" else "POST", path)
        except CtlError as e:
            if action == "health" and " 503 " in str(e):
                raise CtlError("the balancer is degraded: a pool has no eligible "
                               "backend") from None
            raise
        text = result.get("status", "") if isinstance(result, dict) else str(result)
    elif action == "routes":
        result, text = _routes(client, args.listener)
    elif action == "route-set":
        data = readData(args.file)
        if isinstance(data, dict) and "routes" in data:
            data = data["routes"]
        result = client.call(
            "PUT", f"/api/listeners/{quote(args.listener, safe='')}/routes", data)
        text = f"listener {args.listener}: {counted(len(result), 'route')} set"
    elif action == "pool-add":
        data = readData(args.file)
        if not isinstance(data, dict):
            raise CtlError(f"{args.file}: expected a pool (a mapping of its keys)")
        result = client.call("POST", "/api/pools", {**data, "name": args.name})
        text = f"added pool {result['name']} with {counted(len(result['backends']), 'backend')}"
    elif action == "pool-remove":
        result = client.call("DELETE", f"/api/pools/{quote(args.name, safe='')}")
        text = _removedLine(f"pool {result['name']}", result)
    else:
        pool = quote(
            client.poolName(args.pool, None if action == "add" else args.name), safe="")
        if action == "add":
            result = client.call(
                "POST", f"/api/pools/{pool}/backends",
                backendBody(args.name, args.target, args.weight, args.state))
            text = "added " + _backendLine(result)
        else:
            path = f"/api/pools/{pool}/backends/{quote(args.name, safe='')}"
            if action == "remove":
                result = client.call("DELETE", path)
                text = _removedLine(result["name"], result)
            elif action == "weight":
                result = client.call("PATCH", path, {"weight": args.weight})
                text = _backendLine(result)
            else:
                result = client.call("PATCH", path, {"state": action})
                text = _backendLine(result)
    return result, text


def main(argv: Sequence[str] | None = None) -> None:
    """
    The C{lbtwist} console script.
    """
    try:
        run(sys.argv[1:] if argv is None else argv, os.environ, sys.stdout)
    except CtlError as e:
        sys.stderr.write(f"lbtwist: error: {e}\n")
        sys.exit(1)


if __name__ == "__main__":
    main()
