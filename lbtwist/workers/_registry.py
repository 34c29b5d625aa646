"""
The registry a master gives its workers: everything that decides where a
client goes, as JSON, and how a worker applies it.

A registry is a whole snapshot, not a change: the configuration file's
text as the master last read it, the operator's overrides (the state
file's form), each backend's health, and the backends DNS discovery found.
A worker applies one through the same entry point as every external change
(L{lbtwist.reload.LiveConfig.reconcile}), so a worker that missed one, or
starts late, catches up with the next.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import attrs
from twisted.logger import Logger

from ..config import BackendConfig, Config, PoolConfig, parseConfigText
from ..diff import runnable
from ..pool import Health
from ..reload import LiveConfig
from ..state import Overrides


class ConfigText:
    """
    Reads the configuration file for reloads, keeping the text it read:
    the master sends its workers that text, so that they run what it runs
    whatever the file holds by then.

    @ivar text: the text last read (L{None} until the first read).
    @ivar config: the configuration it held.
    @ivar reads: how many times it was read and valid.
    """

    def __init__(self, path: str,
                 overrides: Callable[[Config], Config] | None = None) -> None:
        """
        @param overrides: applied to what the file says (the command
            line's options, which win over the file).
        """
        self.path = path
        self.overrides = overrides
        self.text: str | None = None
        self.config: Config | None = None
        self.reads = 0

    def __call__(self) -> Config:
        """
        Read, parse and check the file (see L{lbtwist.reload.configLoader}).

        @raise lbtwist.config.ConfigError: it is not valid.
        """
        from ..config import ConfigError

        try:
            with open(self.path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise ConfigError("", f"cannot read config file {self.path!r}: {e.strerror}") from e
        config = parseText(text, self.path)
        if self.overrides is not None:
            config = self.overrides(config)
        self.text = text
        self.config = config
        self.reads += 1
        return config


def parseText(text: str, path: str, check: bool = True) -> Config:
    """
    Parse and check a configuration file's text, as a reload does.

    @param check: build its endpoints and read its TLS files; a worker
        leaves that to its master, which read the text (and holds the
        sockets systemd passed).
    @raise lbtwist.config.ConfigError: it is not valid.
    """
    from ..checks import checkEndpoints, checkTLS

    config = parseConfigText(text, path)
    if check:
        checkEndpoints(config)
        checkTLS(config)
    return config


def snapshot(live: LiveConfig, text: ConfigText | None) -> dict[str, Any]:
    """
    The registry of the master whose run-time control is C{live}.
    """
    return {
        "config": {"reads": text.reads, "text": text.text} if text is not None else None,
        "overrides": live.overrides.toJSON(),
        "health": {
            pool.name: {b.name: [b.health.value, b.lastChange] for b in pool}
            for pool in live.pools.values()
        },
        "discovered": {
            pool.name: [
                {"name": b.name, "endpoint": b.endpoint, "weight": b.config.weight,
                 "backup": b.config.backup}
                for b in pool if b.config.discovered
            ]
            for pool in live.pools.values()
        },
    }


def splitLimits(config: Config, workers: int) -> Config:
    """
    C{config} with its connection limits shared out among C{workers}
    processes: the global C{maxconn} and each backend's C{maxconn} divided
    evenly (rounded up, so that no limit becomes 0), so that together
    the workers keep each limit within C{workers - 1} of what it says.
    """
    if workers <= 1:
        return config

    def share(limit: int) -> int:
        return math.ceil(limit / workers) if limit else 0

    def pool(p: PoolConfig) -> PoolConfig:
        return attrs.evolve(p, backends=tuple(
            attrs.evolve(b, maxconn=share(b.maxconn)) if b.maxconn else b
            for b in p.backends))

    return attrs.evolve(config, maxconn=share(config.maxconn),
                        pools=tuple(pool(p) for p in config.pools))


class WorkerLiveConfig(LiveConfig):
    """
    A worker's run-time control: no state file, no reload of its own; its
    effective configuration is its master's, with the connection limits
    shared out (see L{splitLimits}).
    """

    workers = 1

    @property
    def config(self) -> Config:
        """
        The master's effective configuration, the limits shared out.
        """
        return splitLimits(self.overrides.apply(self.fileConfig), self.workers)


class RegistryApplier:
    """
    Applies registries from the master to a worker's pools.

    @ivar reads: the master's count of file reads last applied.
    @ivar applying: true while a registry is being applied, so that a
        health change it makes is not reported back as the worker's own.
    """

    log = Logger()

    def __init__(self, live: LiveConfig, reloaded: Any = None) -> None:
        self.live = live
        self.reloaded = reloaded
        self.reads = -1
        self.applying = False
        self.revision = 0

    def apply(self, revision: int, registry: dict[str, Any]) -> None:
        """
        Make the pools what C{registry} says.

        @raise lbtwist.config.ConfigError: its configuration text is not
            valid (the master read it as valid: another version of lbtwist?).
        """
        self.applying = True
        try:
            self._apply(registry)
        finally:
            self.applying = False
        self.revision = revision

    def _apply(self, registry: dict[str, Any]) -> None:
        live = self.live
        config = registry.get("config")
        if config is not None and config["text"] is not None and config["reads"] != self.reads:
            new = parseText(config["text"], "(from the master)", check=False)
            live.fileConfig = runnable(new, live.fileConfig,
                                       poolsLive=live.balancer is not None)[0]
            self.reads = config["reads"]
            if self.reloaded is not None:
                self.reloaded(live.fileConfig)
        health = {p.name: p.health for p in live.fileConfig.pools}
        live.overrides = Overrides.fromJSON(
            registry["overrides"], lambda pool: health.get(pool) or next(iter(health.values())))
        live.reconcile()
        for name, found in registry.get("discovered", {}).items():
            self._discovered(name, found)
        for name, backends in registry.get("health", {}).items():
            pool = live.pools.get(name)
            if pool is None:
                continue
            for backend, (state, reason) in backends.items():
                pool.setHealth(backend, Health(state), reason or "health checks in the master")

    def _discovered(self, name: str, found: list[dict[str, Any]]) -> None:
        """
        Give pool C{name} the backends discovery found in the master, and
        drain those it no longer finds.
        """
        pool = self.live.pools.get(name)
        if pool is None:
            return
        wanted = {item["name"]: item for item in found}
        for backend in [b for b in pool if b.config.discovered and b.name not in wanted]:
            self.live.drain(name, pool.remove(backend.name))
        from ..discovery import discoveredTLS

        pc = pool.config
        tls = pc.tls if pc.discovery is None else discoveredTLS(pc.discovery, pc.tls)
        for backendName, item in wanted.items():
            if backendName not in pool:
                pool.add(BackendConfig(
                    name=backendName, endpoint=item["endpoint"], weight=item["weight"],
                    health=pc.health, backup=item.get("backup", False), discovered=True,
                    tls=tls))
