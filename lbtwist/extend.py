"""
Extending lbtwist: balancing policies, health-check kinds and access-log
sinks of your own, registered by name and chosen in the configuration as
the built-in ones are.

A module of yours registers what it provides when it is imported::

    from lbtwist.extend import registerPolicy

    class First:
        def __init__(self, rng):
            pass

        def choose(self, backends, key):
            return backends[0]

    registerPolicy("first", First)

and the configuration file names the module in its top-level
C{extensions} list (C{--extension} on the command line), so that every
process that reads the file (a balancer, a master and each of its workers,
C{python -m lbtwist.check}) imports it before it checks the rest::

    extensions: [mypackage.lbplugins]
    pools:
      web:
        policy: first

The interfaces are those the built-ins implement, and the built-ins are
registered here by the same functions:

  - a policy factory takes a L{random.Random} and returns a
    L{lbtwist.policies.BalancingPolicy};
  - a check factory takes the balancer's L{lbtwist.dial.Dialler} and
    returns a L{lbtwist.health.Probe} (C{health: {type: NAME}});
  - an access-log factory takes the options of C{access-log: {sink: NAME,
    ...}} and a clock, and returns an L{lbtwist.accesslog.IAccessLog}.

A factory may be given as the object itself or as C{"module:name"}, which
is imported the first time a balancer builds one: registering then costs
no import (the built-ins are registered so, which keeps this module, and the
configuration that reads its names, free of Twisted).

Nothing here is on the hot path: a pool builds its policy once, and then
calls its C{choose} directly, as it does a built-in one's.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Callable, Generic, TypeVar

if TYPE_CHECKING:
    import random

    from .accesslog import IAccessLog
    from .dial import Dialler
    from .health import Probe
    from .policies import BalancingPolicy

F = TypeVar("F")

PolicyFactory = Callable[["random.Random"], "BalancingPolicy"]
CheckFactory = Callable[["Dialler"], "Probe"]
AccessLogFactory = Callable[[Mapping[str, Any], Any], "IAccessLog"]

_NAME = re.compile(r"^[a-z][a-z0-9_.-]{0,63}$")
_REFERENCE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


class Registry(Mapping[str, F], Generic[F]):
    """
    Factories by name, for one kind of extension: a read-only mapping to
    the factories (a C{"module:name"} reference is imported on first
    look-up, and kept).

    @ivar what: what is registered, for messages (C{"policy"}).
    """

    def __init__(self, what: str) -> None:
        self.what = what
        self._factories: dict[str, F | str] = {}

    def register(self, name: str, factory: F | str) -> None:
        """
        Register C{factory} under C{name}.  Registering the same factory
        again (by object or by reference) does nothing.

        @raise ValueError: C{name} is not a lower-case name of 1-64 letters,
            digits or C{_.-}, C{factory} is neither callable nor
            C{"module:name"}, or another factory has that name already.
        """
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"cannot register {self.what} {name!r}: expected a lower-case "
                             "name of 1-64 letters, digits or '_.-', starting with a letter")
        if isinstance(factory, str):
            if not _REFERENCE.match(factory):
                raise ValueError(f"cannot register {self.what} {name!r}: expected a callable "
                                 f"or 'module:name', got {factory!r}")
        elif not callable(factory):
            raise ValueError(f"cannot register {self.what} {name!r}: "
                             f"{factory!r} is not callable")
        was = self._factories.get(name)
        if was is not None and was != factory and _resolve(was) is not _resolve(factory):
            raise ValueError(f"cannot register {self.what} {name!r}: "
                             f"{_describe(was)} has that name already")
        if was is None:
            self._factories[name] = factory

    def unregister(self, name: str) -> None:
        """
        Forget C{name} (a test's registration, say).

        @raise KeyError: nothing has that name.
        """
        del self._factories[name]

    def names(self) -> tuple[str, ...]:
        """
        The names registered, in order of registration (the built-ins first).
        """
        return tuple(self._factories)

    def __getitem__(self, name: str) -> F:
        """
        The factory registered as C{name}, imported if it was registered
        by reference.

        @raise KeyError: nothing has that name.
        """
        factory = self._factories[name]
        if isinstance(factory, str):
            self._factories[name] = factory = _resolve(factory)
        return factory

    def __iter__(self) -> Iterator[str]:
        """
        The names registered, as L{names} gives them.
        """
        return iter(self._factories)

    def __len__(self) -> int:
        """
        How many names are registered.
        """
        return len(self._factories)


def _resolve(factory: Any) -> Any:
    """
    The object a C{"module:name"} reference names (imported), or
    C{factory} itself if it is no reference.
    """
    if not isinstance(factory, str):
        return factory
    moduleName, _, attribute = factory.partition(":")
    found: Any = importlib.import_module(moduleName)
    for part in attribute.split("."):
        found = getattr(found, part)
    return found


def _describe(factory: object) -> str:
    """
    How a registered factory is named in a message.
    """
    if isinstance(factory, str):
        return factory
    return f"{getattr(factory, '__module__', '?')}:{getattr(factory, '__qualname__', factory)}"


POLICIES: Registry[PolicyFactory] = Registry("policy")
"""
Balancing policies by name (C{pools.NAME.policy}).
"""

CHECKS: Registry[CheckFactory] = Registry("check")
"""
Health-check kinds by name (C{pools.NAME.health.type}).
"""

ACCESS_LOGS: Registry[AccessLogFactory] = Registry("access-log sink")
"""
Access-log sinks by name (C{pools.NAME.access-log.sink}).
"""

FILE_FORMATS = ("text", "json", "combined")
"""
The formats of the built-in C{file} sink's lines (its option C{format},
C{text} by default; see L{lbtwist.accesslog}): here, with the sink's
registration, so that the configuration check names them without importing
Twisted.
"""


def registerPolicy(name: str, factory: PolicyFactory | str) -> None:
    """
    Make C{policy: NAME} build a policy with C{factory(rng)}: once per pool
    (and again when a reload changes the pool's policy), given the pool's
    L{random.Random}.  What it returns must provide
    L{lbtwist.policies.BalancingPolicy}: its C{choose} is called for every
    connection (TCP) or request (HTTP).

    @raise ValueError: see L{Registry.register}.
    """
    POLICIES.register(name, factory)


def registerCheck(name: str, factory: CheckFactory | str) -> None:
    """
    Make C{health: {type: NAME}} probe backends with C{factory(dialler)}:
    built once per balancer, given its L{lbtwist.dial.Dialler}; what it
    returns is called with each backend to check (see
    L{lbtwist.health.Probe}).

    @raise ValueError: see L{Registry.register}.
    """
    CHECKS.register(name, factory)


def registerAccessLog(name: str, factory: AccessLogFactory | str) -> None:
    """
    Make C{access-log: {sink: NAME, ...}} send the access log to
    C{factory(options, clock)}: built once per process that serves the
    listeners (each worker's own), for each distinct set of options, given
    the other keys of the mapping (an option named C{path} is a file name,
    made relative to the configuration file's directory) and the reactor.
    What it returns must provide L{lbtwist.accesslog.IAccessLog}; if it also
    provides L{twisted.application.service.IService} it is started before
    the listeners and stopped after them; if it has a C{reopen()} method,
    that is called on C{SIGHUP} (and C{POST /api/reload}), where the
    C{file} sink reopens its file for log rotation.  A factory raises L{ValueError}
    for bad options: the configuration check reports it under the key.

    @raise ValueError: see L{Registry.register}.
    """
    ACCESS_LOGS.register(name, factory)


# The built-ins, registered as an extension registers its own.
for _name, _reference in (
    ("roundrobin", "lbtwist.policies:SmoothWeighted"),
    ("weighted", "lbtwist.policies:SmoothWeighted"),
    ("leastconn", "lbtwist.policies:LeastConnections"),
    ("random", "lbtwist.policies:WeightedRandom"),
    ("p2c", "lbtwist.policies:PowerOfTwoChoices"),
    ("source", "lbtwist.policies:SourceHash"),
):
    registerPolicy(_name, _reference)
registerCheck("tcp", "lbtwist.health:TCPProbe")
registerCheck("http", "lbtwist.http:HTTPProbe")
registerAccessLog("events", "lbtwist.accesslog:eventsSink")
registerAccessLog("file", "lbtwist.accesslog:fileSink")
