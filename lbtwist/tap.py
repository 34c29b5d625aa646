"""
The C{twistd lb} command: options, and the service they describe.
"""

from __future__ import annotations

import os
import re
from typing import Any

import attrs
from twisted.application.service import IService, MultiService
from twisted.python import usage

from .config import (
    MODES,
    POLICY_NAMES,
    Config,
    ConfigError,
    loadConfigFile,
    parseConfig,
    parseSeconds,
    validateEndpoint,
)

DEFAULT_LISTEN = "tcp:8080"
DEMO_LISTEN = "tcp:8080:interface=127.0.0.1"


# Options that describe a pool or listener: the config file says these.
POOL_OPTIONS = (
    "listen", "backend", "policy", "mode", "retries", "connect-timeout", "idle-timeout",
    "check-interval", "rise", "fall", "request-timeout", "response-timeout", "access-log",
    "access-log-file", "demo",
)

# Where the command line's options land in the configuration, so that an
# error names the option the user typed.
_OPTION_PATHS = (
    (r"^listeners\[\d+\]\.listen", "--listen"),
    (r"^listeners\[\d+\]\.mode", "--mode"),
    (r"^pools\.default\.backends\[(\d+)\](\.endpoint)?", "--backend"),
    (r"^pools\.default\.policy", "--policy"),
    (r"^pools\.default\.retries", "--retries"),
    (r"^pools\.default\.timeouts\.connect", "--connect-timeout"),
    (r"^pools\.default\.timeouts\.idle", "--idle-timeout"),
    (r"^pools\.default\.timeouts\.request", "--request-timeout"),
    (r"^pools\.default\.timeouts\.response", "--response-timeout"),
    (r"^pools\.default\.health\.interval", "--check-interval"),
    (r"^pools\.default\.health\.rise", "--rise"),
    (r"^pools\.default\.health\.fall", "--fall"),
    (r"^pools\.default\.access-log", "--access-log-file"),
)


def optionFor(path: str) -> str:
    """
    The command-line option behind a configuration key path built from it.
    """
    for pattern, option in _OPTION_PATHS:
        m = re.match(pattern, path)
        if m:
            return option + path[m.end():]
    return path


class BadConfiguration(SystemExit):
    """
    The configuration is invalid: twistd exits with this one line, not with
    its usage text, and nothing starts.
    """


class Options(usage.Options):
    """
    Options of C{twistd lb}.  Either C{--config FILE}, or C{--listen} and
    C{--backend} (each repeatable) with the other options; C{--demo} adds
    three demo backends on loopback.
    """

    synopsis = "[--config FILE | --listen ENDPOINT --backend ENDPOINT ...] [options]"

    optParameters = [
        ["config", "c", None, "YAML configuration file (see README.rst)."],
        ["policy", "p", None, f"Balancing policy: {', '.join(POLICY_NAMES)} (default roundrobin)."],
        ["mode", "m", None, "Listener mode: tcp or http (default tcp)."],
        ["admin", None, None, "Admin API endpoint, e.g. tcp:9000:interface=127.0.0.1."],
        ["status-interval", None, None, "Seconds between status tables in the log."],
        ["retries", None, None, "Other backends to try when a connect fails."],
        ["connect-timeout", None, None, "Backend connect timeout, seconds."],
        ["idle-timeout", None, None, "Close a connection idle this long, seconds."],
        ["check-interval", None, None, "Seconds between health checks."],
        ["rise", None, None, "Good checks that mark a backend up."],
        ["fall", None, None, "Failed checks that mark a backend down."],
        ["state", None, None, "State file for changes made at run time."],
        ["grace", None, None, "Seconds in-flight connections get to finish (default 30)."],
        ["request-timeout", None, None, "HTTP mode: seconds a client gets to send a request head."],
        ["response-timeout", None, None, "HTTP mode: seconds a backend gets to answer."],
        ["access-log-file", None, None,
         "Write the access log (a line per request or connection) straight to this file."],
    ]
    optFlags = [
        ["demo", None, "Also run three demo backends on 127.0.0.1:8001-8003."],
        ["access-log", None, "Log one structured event per request (HTTP) or connection (TCP)."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["backend"] = []

    def opt_version(self) -> None:
        """
        Display lbtwist's version (and Twisted's) and exit.
        """
        import sys

        from twisted import version as twistedVersion

        from . import __version__

        print(f"lbtwist {__version__} (Twisted {twistedVersion.short()})")
        sys.exit(0)

    def opt_listen(self, endpoint: str) -> None:
        """
        Accept clients on this server endpoint (repeatable), e.g. tcp:8080.
        """
        self["listen"].append(endpoint)

    def opt_backend(self, endpoint: str) -> None:
        """
        Balance across this client endpoint (repeatable), e.g.
        tcp:host=10.0.0.5:port=80.
        """
        self["backend"].append(endpoint)

    def _commandLineData(self) -> dict[str, Any]:
        """
        The command line's options as configuration data, in the file's shape.
        """
        backends: list[Any] = list(self["backend"])
        if self["demo"]:
            from .demo import demoEndpoints

            backends += [
                {"name": f"demo-{i}", "endpoint": e}
                for i, e in enumerate(demoEndpoints(), 1)
            ]
        if not backends:
            raise usage.UsageError(
                "give --config FILE, or at least one --backend, or --demo"
            )
        listen = self["listen"] or [DEMO_LISTEN if self["demo"] else DEFAULT_LISTEN]
        pool: dict[str, Any] = {"policy": self["policy"] or "roundrobin", "backends": backends}
        health = {
            key: self[opt]
            for key, opt in (("interval", "check-interval"), ("rise", "rise"),
                             ("fall", "fall"))
            if self[opt] is not None
        }
        if health:
            pool["health"] = health
        timeouts = {
            key: self[opt]
            for key, opt in (("connect", "connect-timeout"), ("idle", "idle-timeout"),
                             ("request", "request-timeout"), ("response", "response-timeout"))
            if self[opt] is not None
        }
        if timeouts:
            pool["timeouts"] = timeouts
        if self["retries"] is not None:
            pool["retries"] = self["retries"]
        if self["access-log-file"]:
            # An option's value is a path whatever it looks like.
            path = self["access-log-file"]
            pool["access-log"] = path if "/" in path else f"./{path}"
        elif self["access-log"]:
            pool["access-log"] = True
        return {
            "listeners": [
                {"name": f"listener{i}" if i else "main", "listen": e,
                 "mode": self["mode"] or "tcp"}
                for i, e in enumerate(listen)
            ],
            "pools": {"default": pool},
        }

    def postOptions(self) -> None:
        """
        Build and validate the configuration; any problem is a usage error.
        """
        if self["config"]:
            given = [f"--{o}" for o in POOL_OPTIONS if self[o]]
            if given:
                raise usage.UsageError(
                    f"{', '.join(given)} cannot be combined with --config: "
                    "put the setting in the file"
                )
        try:
            if self["config"]:
                config = loadConfigFile(self["config"])
            else:
                if self["mode"] is not None and self["mode"] not in MODES:
                    raise ConfigError(
                        "--mode", f"expected one of {', '.join(MODES)}, got {self['mode']!r}"
                    )
                config = parseConfig(self._commandLineData())
            config = self._overrides(config)
            from .service import checkEndpoints, checkFiles

            checkEndpoints(config)
            checkFiles(config)
            from .admin import checkAdmin

            config = checkAdmin(config, os.environ)
            self["grace-seconds"] = parseSeconds(self["grace"] or 30.0, "--grace", 0.0)
        except ConfigError as e:
            if not self["config"]:
                e = ConfigError(optionFor(e.path), e.problem)
            raise BadConfiguration(f"lbtwist: invalid configuration: {e}") from e
        self["lbconfig"] = config

    def _overrides(self, config: Config) -> Config:
        """
        Apply the options that may also override a config file.
        """
        changes: dict[str, Any] = {}
        if self["admin"] is not None:
            changes["admin"] = validateEndpoint(self["admin"], "--admin", server=True)
        if self["status-interval"] is not None:
            changes["statusInterval"] = parseSeconds(
                self["status-interval"], "--status-interval", 0.1
            )
        if self["state"] is not None:
            changes["state"] = self["state"]
        return attrs.evolve(config, **changes)


def makeService(options: Options) -> IService:
    """
    Compose the balancer's services (and the demo backends, if asked).
    """
    from .reactor import installIfUnchosen

    installIfUnchosen()
    from twisted.internet import reactor

    from .app import Balancer

    top = MultiService()
    if options["demo"]:
        from .demo import demoBackends

        demoBackends(reactor).setServiceParent(top)
    Balancer(
        options["lbconfig"], reactor, configPath=options["config"],
        statePath=options["state"], grace=options["grace-seconds"],
    ).setServiceParent(top)
    return top
