"""
Read by mypy (C{make test}), never run: an application that embeds lbtwist
sees the real types of the public names in C{lbtwist.__all__}, not C{Any}
(C{lbtwist} loads them lazily; its C{py.typed} marker lets a type checker
read it once installed).  C{assert_type} fails the check where a name's
type is not the one given.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from typing_extensions import assert_type

import lbtwist
from lbtwist.app import Balancer
from lbtwist.config import Config, ConfigError
from lbtwist.control import BalancerControl
from lbtwist.pool import Backend
from lbtwist.service import CannotStart, LoadBalancer


def embedded(reactor: Any) -> None:
    """
    The README's recipe, as an application's type checker reads it.
    """
    assert_type(lbtwist.Balancer, type[Balancer])
    assert_type(lbtwist.Config, type[Config])
    assert_type(lbtwist.ConfigError, type[ConfigError])
    assert_type(lbtwist.CannotStart, type[CannotStart])
    assert_type(lbtwist.LoadBalancer, type[LoadBalancer])
    assert_type(lbtwist.parseConfig({}), Config)
    config = lbtwist.loadConfigFile("lb.yaml")
    assert_type(config, Config)
    balancer = lbtwist.Balancer(config, reactor, configPath="lb.yaml")
    assert_type(balancer, Balancer)
    assert_type(lbtwist.BalancerControl, type[BalancerControl])
    control = balancer.control
    assert_type(control, BalancerControl | None)
    assert control is not None
    assert_type(control.addBackend("web", {"endpoint": "127.0.0.1:8080"}), Deferred[Backend])
    assert_type(control.change("web", "a", weight=3, state="drain"), Deferred[Backend])
    assert_type(control.reload(config), Deferred[list[str]])
