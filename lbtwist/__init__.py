"""
lbtwist: an event-driven TCP and HTTP load balancer on Twisted.

Run it with C{twistd lb}; embed it with L{Balancer}, and change it while
it runs through its L{BalancerControl} (C{balancer.control}).  The names in
C{__all__} are the public API, with L{lbtwist.extend} (extensions register
there); every other module is lbtwist's own and may change between
releases.  They are loaded on first use, so that importing
C{lbtwist} (as C{lbtwist ctl} does) loads no Twisted module.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    # What a type checker reads (L{__getattr__} loads them at run time).
    from .app import Balancer as Balancer
    from .config import Config as Config
    from .config import ConfigError as ConfigError
    from .config import loadConfigFile as loadConfigFile
    from .config import parseConfig as parseConfig
    from .control import BalancerControl as BalancerControl
    from .service import CannotStart as CannotStart
    from .service import LoadBalancer as LoadBalancer

__version__ = "0.1.0"

_PUBLIC = {
    "Balancer": "lbtwist.app",
    "BalancerControl": "lbtwist.control",
    "CannotStart": "lbtwist.service",
    "Config": "lbtwist.config",
    "ConfigError": "lbtwist.config",
    "LoadBalancer": "lbtwist.service",
    "loadConfigFile": "lbtwist.config",
    "parseConfig": "lbtwist.config",
}

__all__ = ["__version__", *sorted(_PUBLIC)]


def __getattr__(name: str) -> Any:
    """
    Load a public name from its module on first use.
    """
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'lbtwist' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
