"""
The C{twistd lb} command: options, and the service they describe.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING, Any

import attrs
from twisted.application.service import IService, MultiService
from twisted.python import usage

from .config import (
    MODES,
    POLICY_NAMES,
    ClusterConfig,
    Config,
    ConfigError,
    HealthCheck,
    PoolConfig,
    Timeouts,
    loadConfigFile,
    parseConfig,
    parseEtcdURL,
    parseSeconds,
    parseWorkers,
    validateEndpoint,
)

if TYPE_CHECKING:
    from .workers import MasterImage

DEFAULT_LISTEN = "tcp:8080"
DEMO_LISTEN = "tcp:8080:interface=127.0.0.1"
# Kept here, not imported from lbtwist.admin, so that --help stays fast.
DEFAULT_ADMIN = "tcp:9000:interface=127.0.0.1"
DEFAULT_GRACE = 30.0

_timeouts, _health = Timeouts(), HealthCheck()
_pool, _config = attrs.fields(PoolConfig), attrs.fields(Config)


# Options that describe a pool or listener: the config file says these.
POOL_OPTIONS = (
    "listen", "backend", "policy", "mode", "retries", "connect-timeout", "idle-timeout",
    "check-interval", "rise", "fall", "request-timeout", "response-timeout", "access-log",
    "access-log-file", "demo", "extension",
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
    (r"^extensions\[\d+\]", "--extension"),
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


class BadCommandLine(SystemExit):
    """
    The command line is wrong: twistd exits with the reason and a pointer to
    C{--help}, on one line, instead of the whole usage text followed by the
    reason.
    """


def _seconds(value: float) -> str:
    return f"{value:g}s"


class Options(usage.Options):
    """
    Options of C{twistd lb}.  Either C{--config FILE}, or C{--listen} and
    C{--backend} (each repeatable) with the other options; C{--demo} adds
    three demo backends on loopback.

    Every default is L{None} here, so that an option given can be told from
    one left out (and refused beside C{--config}); the help texts say the
    defaults the configuration fills in.
    """

    synopsis = "[--config FILE | --listen ENDPOINT --backend ENDPOINT|HOST:PORT ...] [options]"
    # Who is speaking in a usage error (python -m lbtwist.check says itself).
    program = "twistd lb"
    # Without it, Twisted ends the help with the docstring of whatever
    # __main__ is (a test runner's, an embedding script's).
    longdesc = "A configuration file (--config) sets all of this and more: see lb.yaml."

    optParameters = [
        ["config", "c", None, "YAML configuration file (see README.rst)."],
        ["policy", "p", None,
         f"Balancing policy: {', '.join(POLICY_NAMES)}, or one an --extension registers "
         f"(default {_pool.policy.default})."],
        ["mode", "m", None, f"Listener mode: {' or '.join(MODES)} (default tcp)."],
        ["admin", None, None,
         f"Admin API, metrics and dashboard endpoint (default {DEFAULT_ADMIN}; "
         "if that port is taken the balancer runs without it)."],
        ["status-interval", None, None,
         f"Seconds between status tables in the log (default {_config.statusInterval.default:g})."],
        ["retries", None, None,
         f"Other backends to try when a connect fails or an HTTP request is lost "
         f"(default {_pool.retries.default})."],
        ["connect-timeout", None, None,
         f"Backend connect timeout (default {_seconds(_timeouts.connect)})."],
        ["idle-timeout", None, None,
         f"Close a connection idle this long (default {_seconds(_timeouts.idle)})."],
        ["check-interval", None, None,
         f"Time between health checks (default {_seconds(_health.interval)})."],
        ["rise", None, None, f"Good checks that mark a backend up (default {_health.rise})."],
        ["fall", None, None,
         f"Failed checks that mark a backend down (default {_health.fall})."],
        ["state", None, None,
         "State file for changes made at run time (default: named after the config "
         "file, beside it, e.g. lb.state.json; else lbtwist-LISTENER.state.json, or "
         "lbtwist-demo.state.json with --demo, lbtwist-demo-LISTENER.state.json on "
         "another listener, in the working directory)."],
        ["grace", None, None,
         f"Seconds in-flight connections get to finish (default {DEFAULT_GRACE:g})."],
        ["request-timeout", None, None,
         "HTTP mode: time a client gets to send a request head "
         f"(default {_seconds(_timeouts.request)})."],
        ["response-timeout", None, None,
         f"HTTP mode: time a backend gets to answer (default {_seconds(_timeouts.response)})."],
        ["access-log-file", None, None,
         "Write the access log (a line per request or connection) straight to this file."],
        ["workers", None, None,
         "Worker processes serving the listeners: a number, or auto for one per usable "
         "CPU (default 1: this process alone). More than 1 runs a master with the admin "
         "API and health checks, and that many workers."],
        ["worker", None, None,
         "(internal) run as a worker of a master, as it says in this JSON."],
    ]
    optFlags = [
        ["demo", None,
         "Also run three demo backends on free ports of 127.0.0.1, and listen on "
         f"{DEMO_LISTEN} (loopback only) unless --listen is given."],
        ["access-log", None, "Log one structured event per request (HTTP) or connection (TCP)."],
        ["master", None,
         "Run a master with the admin API and health checks even with one worker (as "
         "--workers over 1 does): upgrades then apply every setting and drop nothing."],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []
        self["backend"] = []
        self["etcd"] = []
        self["extension"] = []

    def opt_version(self) -> None:
        """
        Display lbtwist's version (and Twisted's) and exit.
        """
        from twisted import version as twistedVersion

        from . import __version__

        print(f"lbtwist {__version__} (Twisted {twistedVersion.short()})")
        sys.exit(0)

    def opt_listen(self, endpoint: str) -> None:
        """
        Accept clients on this server endpoint (repeatable; default tcp:8080, which is every interface; tcp:8080:interface=127.0.0.1 for loopback only).
        """  # noqa: E501 (usage.Options shows a docstring's line breaks)
        self["listen"].append(endpoint)

    def opt_backend(self, endpoint: str) -> None:
        """
        Balance across this client endpoint or HOST:PORT (repeatable), e.g. tcp:host=10.0.0.5:port=80 or 10.0.0.5:80.
        """  # noqa: E501 (usage.Options shows a docstring's line breaks)
        self["backend"].append(endpoint)

    def opt_etcd(self, url: str) -> None:
        """
        Share the run-time registry with other balancers through this etcd member, e.g. http://127.0.0.1:2379 (repeatable; replaces the config file's cluster.etcd list).
        """  # noqa: E501 (usage.Options shows a docstring's line breaks)
        self["etcd"].append(url)

    def opt_extension(self, module: str) -> None:
        """
        Import this Python module first (repeatable), for the policies, health-check kinds and access-log sinks it registers (see lbtwist.extend); a config file says extensions: [MODULE, ...] instead.
        """  # noqa: E501 (usage.Options shows a docstring's line breaks)
        self["extension"].append(module)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """
        Parse the command line; a usage error is raised as L{BadCommandLine},
        the reason first and a pointer to C{--help}, instead of twistd's
        whole usage text followed by the reason.
        """
        self.argv = list(sys.argv[1:] if options is None else options)
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            raise BadCommandLine(f"{self.program}: {e} (see {self.program} --help)") from e

    def parseArgs(self, *args: str) -> None:
        """
        Refuse arguments that are no option: a configuration file given
        without C{--config}, say (twistd's own words would be "Wrong number
        of arguments").
        """
        if args:
            hint = (" (give a configuration file as --config FILE)"
                    if args[0].endswith((".yaml", ".yml")) else "")
            raise usage.UsageError(f"unexpected argument {args[0]!r}{hint}")

    def _commandLineData(self) -> dict[str, Any]:
        """
        The command line's options as configuration data, in the file's shape.
        """
        backends: list[Any] = list(self["backend"])
        if self["demo"]:
            from .demo import demoEndpoints, demoNames

            backends += [
                {"name": name, "endpoint": e}
                for name, e in zip(demoNames(), demoEndpoints())
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
        extensions = {"extensions": list(self["extension"])} if self["extension"] else {}
        return {
            **extensions,
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
        # What --state said, for the overrides of every reload too: not the
        # demo's default set below, which is no setting of the file's.
        self.stateGiven: str | None = self["state"]
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
            config = self.overrides(config)
            config = self._workers(config)
            from .checks import checkConfig

            if self["worker"] is None:
                # A worker's master checked this configuration; its
                # listeners' sockets (systemd's, say) are the master's.
                checkConfig(config)
            from .admin import checkAdmin

            config = checkAdmin(config, os.environ)
            self["grace-seconds"] = parseSeconds(self["grace"] or DEFAULT_GRACE, "--grace", 0.0)
        except ConfigError as e:
            if not self["config"]:
                e = ConfigError(optionFor(e.path), e.problem)
            raise BadConfiguration(f"lbtwist: invalid configuration: {e}") from e
        self["lbconfig"] = config
        self._keepImage()
        if self["demo"] and self["state"] is None:
            # The demo's changes stay the demo's: they never come back in a
            # balancer started otherwise in the same directory, nor in a
            # demo on another port.
            from .state import demoStatePath

            self["state"] = demoStatePath(self["listen"], DEMO_LISTEN)

    def _keepImage(self) -> None:
        """
        In a master that re-executed itself (see L{lbtwist.workers}), keep
        twistd's process as it is: a daemon already, it must not fork away
        from its PID again (and logs where it logged).
        """
        from .workers import HANDOVER_VARIABLE

        parent = getattr(self, "parent", None)
        if HANDOVER_VARIABLE in os.environ and parent is not None and not parent["nodaemon"]:
            parent["nodaemon"] = True
            parent["logfile"] = parent["logfile"] or "twistd.log"

    def image(self) -> MasterImage:
        """
        How this master runs its own image again (see
        L{lbtwist.workers.MasterImage}): the interpreter's command line, the
        options of C{lb}, and twistd's PID file.
        """
        from .workers import MasterImage

        parent = getattr(self, "parent", None)
        pidfile = parent.get("pidfile") if parent is not None else None
        return MasterImage(sys.executable, (sys.executable, *sys.orig_argv[1:]),
                           tuple(self.argv), pidfile or None)

    def _workers(self, config: Config) -> Config:
        """
        Apply C{--workers}, and check that the workers can run: as many as
        the file-descriptor limit allows, and not with the demo's
        backends (which live in one process).
        """
        if self["worker"] is not None:
            from .workers import WorkerSpec

            try:
                self["worker-spec"] = WorkerSpec.fromJSON(self["worker"])
            except ValueError as e:
                raise ConfigError("--worker", str(e).removeprefix("--worker: ")) from e
            return config
        if self["workers"] is not None:
            config = attrs.evolve(config, workers=parseWorkers(self["workers"], "--workers"))
        option = ("--workers" if self["workers"] is not None else
                  "workers" if config.workers > 1 else
                  "--master" if self["master"] else "master")
        if config.runsMaster:
            import resource

            from .workers import checkFileLimit

            problem = checkFileLimit(config.workers, len(config.listeners),
                                     resource.getrlimit(resource.RLIMIT_NOFILE)[0])
            if problem is not None:
                raise ConfigError(option, problem)
            if self["demo"]:
                raise ConfigError(option, "the demo runs in one process: leave out --workers "
                                          "(and --master) or --demo")
        return config

    def workerCommand(self) -> list[str]:
        """
        The options this command was given, for a worker to read the same
        configuration: without C{--workers} or C{--master}.
        """
        command: list[str] = []
        skip = False
        for arg in self.argv:
            if skip:
                skip = False
            elif arg == "--workers":
                skip = True
            elif arg != "--master" and not arg.startswith("--workers="):
                command.append(arg)
        return command

    def overrides(self, config: Config) -> Config:
        """
        C{config} (as read from the file), with the options that override
        the file.

        @raise ConfigError: an option's value is not valid.
        """
        changes: dict[str, Any] = {}
        if self["admin"] is not None:
            changes["admin"] = validateEndpoint(self["admin"], "--admin", server=True)
        if self["status-interval"] is not None:
            changes["statusInterval"] = parseSeconds(
                self["status-interval"], "--status-interval", 0.1
            )
        if self.stateGiven is not None:
            changes["state"] = self.stateGiven
        if self["master"]:
            changes["master"] = True
        if self["etcd"]:
            urls = tuple(parseEtcdURL(u, "--etcd") for u in self["etcd"])
            changes["cluster"] = (ClusterConfig(urls) if config.cluster is None
                                  else attrs.evolve(config.cluster, etcd=urls))
        return attrs.evolve(config, **changes)


def makeService(options: Options) -> IService:
    """
    Compose the balancer's services (and the demo backends, if asked).
    """
    from .reactor import installIfUnchosen

    installIfUnchosen()
    from twisted.internet import reactor

    from .app import Balancer

    config: Config = options["lbconfig"]
    if options["worker"] is not None:
        from .workers import WorkerNode, releaseSignals

        # Spawned by a master's new image, it may hold them blocked.
        releaseSignals(reactor)
        return WorkerNode(config, reactor, options["worker-spec"], options["grace-seconds"])
    from .workers import takeHandover

    try:
        # A master that re-executed itself: read once, and out of the
        # environment its workers get.
        handover = takeHandover(os.environ)
    except ValueError as e:
        raise BadCommandLine(f"twistd lb: {e}") from e
    if handover is not None:
        from .workers import releaseSignals

        releaseSignals(reactor)
    top = MultiService()
    if options["demo"]:
        from .demo import demoBackends

        demo = demoBackends(reactor)
        demo.setServiceParent(top)
        config = demo.listen(config)
    Balancer(
        config, reactor, configPath=options["config"],
        statePath=options["state"], grace=options["grace-seconds"],
        workerCommand=options.workerCommand(),
        workersOption=config.workers if options["workers"] is not None else None,
        overrides=options.overrides,
        image=options.image() if config.runsMaster else None,
        handover=handover,
    ).setServiceParent(top)
    return top
