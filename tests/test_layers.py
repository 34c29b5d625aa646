"""
The shape of the house, checked: lbtwist's modules import one way, with no
cycle; the sans-IO core imports no Twisted networking; composition happens
at the top only; C{lbtwist ctl} and C{import lbtwist} load no Twisted; and
the private Twisted names lbtwist depends on still exist.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import lbtwist

PACKAGE = Path(lbtwist.__file__).parent

# The sans-IO core: plain values in and out, no reactor, no sockets.
SANS_IO = {
    "lbtwist.config", "lbtwist.endpoints", "lbtwist.policies", "lbtwist.pool",
    "lbtwist.state", "lbtwist.status", "lbtwist.diff", "lbtwist.http._plan",
    "lbtwist.http._errors", "lbtwist.routeconfig", "lbtwist.routing", "lbtwist.ratelimit",
    "lbtwist.sni", "lbtwist.wording", "lbtwist.extend",
}

# Modules only the entry points (the plugin, lb.tac) may import;
# lbtwist.check is an entry point itself (python -m lbtwist.check).
TOP = {"lbtwist.tap", "lbtwist.app", "lbtwist.check"}


def moduleName(path: Path) -> str:
    """
    The dotted name of a module of the package.
    """
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _typeCheckingOnly(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(path: Path) -> set[str]:
    """
    Every module a module of the package imports, at the top or inside a
    function (a lazy import is a dependency too), except under
    C{TYPE_CHECKING}.
    """
    name = moduleName(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _typeCheckingOnly(child):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                found.add(target)
                for alias in child.names:
                    found.add(f"{target}.{alias.name}")
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def graph() -> dict[str, set[str]]:
    """
    lbtwist's own import graph: module to the lbtwist modules it imports.
    """
    paths = {moduleName(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imports(path) if m in paths and m != name}
        for name, path in paths.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """
    The strongly connected components of more than one module (Tarjan).
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))
    for v in sorted(edges):
        if v not in index:
            strong(v)
    return found


class LayerTests(SynchronousTestCase):
    """
    Imports go one way.
    """

    def test_cycleFinder(self) -> None:
        """
        The cycle finder finds a cycle (so that finding none means
        something).
        """
        self.assertEqual(cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}),
                         [["a", "b", "c"]])

    def test_noCycles(self) -> None:
        """
        No two lbtwist modules import each other, however indirectly.
        """
        self.assertEqual(cycles(graph()), [])

    def test_sansIO(self) -> None:
        """
        The core imports neither Twisted's networking nor the layers above.
        """
        edges = graph()
        for name in SANS_IO:
            path = PACKAGE.parent.joinpath(*name.split(".")).with_suffix(".py")
            twisted = {m for m in imports(path) if m.startswith("twisted")}
            self.assertEqual(twisted, set(), name)
            self.assertEqual(edges[name] - SANS_IO, set(), name)

    def test_compositionAtTheTop(self) -> None:
        """
        Nothing in lbtwist imports the composition but the twistd options
        (and the check of them, an entry point of its own).
        """
        importers = {
            name: sorted(m for m in edges if m in TOP)
            for name, edges in graph().items()
            if name not in TOP and edges & TOP
        }
        self.assertEqual(importers, {})

    def test_noTestDoubles(self) -> None:
        """
        No product module imports a test double (a memory reactor, a string
        transport) to do its work.
        """
        users = sorted(
            moduleName(p) for p in PACKAGE.rglob("*.py")
            if "lbtwist/testing" not in str(p)
            and any(m.startswith("twisted.internet.testing") or m.startswith("twisted.test")
                    for m in imports(p))
        )
        self.assertEqual(users, [])


class NoTwistedTests(SynchronousTestCase):
    """
    What must load no Twisted module.
    """

    def loaded(self, statement: str) -> list[str]:
        """
        The Twisted and zope modules a fresh interpreter has loaded after
        C{statement}.
        """
        code = (f"import sys\n{statement}\n"
                "print(' '.join(m for m in sys.modules if m.startswith(('twisted', 'zope'))))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
        return out.stdout.decode().split()

    def test_ctl(self) -> None:
        """
        C{lbtwist ctl}, a short-lived client of the admin API, loads no
        Twisted, as its docstring says.
        """
        self.assertEqual(self.loaded("import lbtwist.ctl"), [])

    def test_package(self) -> None:
        """
        Importing lbtwist (for its version, say) loads no Twisted: the
        public names are loaded on first use.
        """
        self.assertEqual(self.loaded("import lbtwist; lbtwist.__version__"), [])
        self.assertIn("twisted.internet", self.loaded("import lbtwist; lbtwist.Balancer"))


class TwistedPrivateNamesTests(SynchronousTestCase):
    """
    The private Twisted names lbtwist depends on (for its lean transports,
    write-through, reactor loop, listener start-up, TLS handshake log and
    timeout), and the h2 library's it counts frames with, still exist:
    Twisted may rename them in any release, and this turns a silent break
    into a failing test.
    """

    def test_modulesAndClasses(self) -> None:
        """
        Functions and class attributes.
        """
        from h2.connection import H2Connection
        from twisted.application.internet import StreamServerEndpointService
        from twisted.internet import abstract, tcp
        from twisted.internet.epollreactor import EPollReactor
        from twisted.protocols.tls import TLSMemoryBIOProtocol

        needed: dict[object, tuple[str, ...]] = {
            tcp: ("_resolveIPv6", "_getsockname"),
            tcp.Connection: ("_closeSocket", "_getLogPrefix", "_shouldShutdown",
                             "_closeWriteConnection"),
            tcp.Client: ("_commonConnection",),
            tcp.Port: ("_realPortNumber",),
            EPollReactor: ("_add", "_remove", "_disconnectSelectable"),
            abstract.FileDescriptor: ("_writeDisconnecting", "_writeDisconnected"),
            TLSMemoryBIOProtocol: ("_tlsShutdownFinished", "_handshakeDone", "_aborted",
                                   "_checkHandshakeStatus"),
            StreamServerEndpointService: ("_raiseSynchronously",),
            # (The h2 library's: each received frame, counted by lbtwist;
            # the connection error, whose code lbtwist corrects.)
            H2Connection: ("_receive_frame", "_terminate_connection"),
        }
        missing = [f"{getattr(owner, '__name__', owner)}.{name}"
                   for owner, names in needed.items() for name in names
                   if not hasattr(owner, name)]
        self.assertEqual(missing, [])

    def test_instances(self) -> None:
        """
        Attributes set on instances.
        """
        from h2.frame_buffer import FrameBuffer
        from twisted.application.internet import StreamServerEndpointService
        from twisted.internet import abstract, epollreactor

        reactor = epollreactor.EPollReactor()
        self.addCleanup(reactor._poller.close)
        needed: dict[object, tuple[str, ...]] = {
            reactor: ("_selectables", "_reads", "_writes", "_poller", "_continuousPolling",
                      "_stopped"),
            StreamServerEndpointService(None, None): ("_waitingForPort",),
            abstract.FileDescriptor(): ("_tempDataLen", "_tempDataBuffer"),
            FrameBuffer(): ("_data",),
        }
        missing = [f"{type(owner).__name__}.{name}"
                   for owner, names in needed.items() for name in names
                   if not hasattr(owner, name)]
        self.assertEqual(missing, [])
