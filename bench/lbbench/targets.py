"""The targets under test: what they are, how to start them, what they compare to."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lbbench import configs
from lbbench.processes import (
    ManagedProcess,
    ProcessManager,
    StartError,
    process_tree,
    wait_listening,
)


@dataclass
class BenchContext:
    """Everything a target needs to build its command line."""

    work_dir: Path
    repo_root: Path
    twistd: Path
    haproxy: str
    nginx: str
    nofile: int
    proxy_cpu: int | None
    start_timeout: float
    lbtwist_args: list[str] = field(default_factory=list)

    @property
    def max_proxy_connections(self) -> int:
        """Client connections a proxy can hold: each uses 2 fds (client + backend)."""
        return max(256, (self.nofile - 128) // 2)

    def twistd_env(self) -> dict[str, str]:
        """Environment for twistd: the repository root on PYTHONPATH (for the lb plugin)."""
        env = dict(os.environ)
        paths = [str(self.repo_root), env.get("PYTHONPATH", "")]
        env["PYTHONPATH"] = os.pathsep.join(path for path in paths if path)
        return env


CommandBuilder = Callable[[BenchContext, str, int, Sequence[int]], list[str]]


# What a target's clients speak: HTTP/1.1 (wrk; TCP proxies relay it), HTTP/2 in
# cleartext by prior knowledge, HTTP/2 over TLS chosen by ALPN (both h2load).
HTTP1 = "http/1.1"
H2C = "h2c"
H2_TLS = "h2"


@dataclass(frozen=True)
class TargetSpec:
    """A target: ``mode`` is "direct", "tcp" or "http"; ``reference`` names its HAProxy peer;
    ``cores``: the proxy's processes or threads (1: pinned to the proxy CPU; more: not pinned,
    and sharing the machine with wrk and the backends); ``protocol``: what its clients speak
    (:data:`HTTP1`, :data:`H2C` or :data:`H2_TLS`)."""

    name: str
    mode: str
    reference: str | None
    description: str
    build: CommandBuilder | None = None
    cores: int = 1
    protocol: str = HTTP1

    @property
    def scheme(self) -> str:
        """The URL scheme its clients use: ``https`` for TLS, else ``http``."""
        return "https" if self.protocol == H2_TLS else "http"

    @property
    def is_twisted(self) -> bool:
        """True for targets run with twistd (they need the repository on PYTHONPATH)."""
        return self.name.startswith(("lbtwist", "portforward", "floor"))


def _haproxy(mode: str, threads: int = 1, protocol: str = HTTP1) -> CommandBuilder:
    def build(ctx: BenchContext, name: str, port: int, backends: Sequence[int]) -> list[str]:
        bind = ""
        if protocol == H2C:
            bind = "proto h2"
        elif protocol == H2_TLS:
            certificate = configs.self_signed_certificate(ctx.work_dir)
            bind = f"ssl crt {certificate.combined} alpn h2,http/1.1"
        path = configs.haproxy_config(
            ctx.work_dir, name, mode, port, backends, ctx.max_proxy_connections, threads, bind
        )
        return [ctx.haproxy, "-db", "-f", str(path)]

    return build


def _nginx_proxy(ctx: BenchContext, name: str, port: int, backends: Sequence[int]) -> list[str]:
    path = configs.nginx_proxy_config(ctx.work_dir, port, backends, ctx.nofile)
    stderr_log = ctx.work_dir / f"{name}-startup.log"
    return [ctx.nginx, "-p", str(ctx.work_dir), "-e", str(stderr_log), "-c", str(path)]


def _portforward(ctx: BenchContext, name: str, port: int, backends: Sequence[int]) -> list[str]:
    listen = f"tcp:{port}:interface={configs.LOOPBACK}"
    return [
        str(ctx.twistd), "-n", "--pidfile=", "portforward",
        "-p", listen, "-h", configs.LOOPBACK, "-d", str(backends[0]),
    ]  # fmt: skip


def _floor(mode: str) -> CommandBuilder:
    def build(ctx: BenchContext, name: str, port: int, backends: Sequence[int]) -> list[str]:
        python = ctx.twistd.parent / "python"
        script = ctx.repo_root / "bench" / "lbbench" / "floor.py"
        return [str(python), str(script), mode, str(port), *map(str, backends)]

    return build


def _lbtwist(mode: str, workers: int = 1) -> CommandBuilder:
    def build(ctx: BenchContext, name: str, port: int, backends: Sequence[int]) -> list[str]:
        argv = [
            str(ctx.twistd), "-n", "--pidfile=", "lb",
            "--mode", mode,
            "--listen", f"tcp:{port}:interface={configs.LOOPBACK}",
        ]  # fmt: skip
        if workers > 1:
            argv += ["--workers", str(workers)]
        for backend in backends:
            argv += ["--backend", f"tcp:host={configs.LOOPBACK}:port={backend}"]
        return [*argv, "--policy", "roundrobin", *ctx.lbtwist_args]

    return build


def _lbtwistRoutes(ctx: BenchContext, name: str, port: int, backends: Sequence[int]) -> list[str]:
    path = configs.lbtwist_routes_config(ctx.work_dir, port, backends)
    return [str(ctx.twistd), "-n", "--pidfile=", "lb", "--config", str(path)]


def _lbtwistH2(protocol: str) -> CommandBuilder:
    def build(ctx: BenchContext, name: str, port: int, backends: Sequence[int]) -> list[str]:
        tls = configs.self_signed_certificate(ctx.work_dir) if protocol == H2_TLS else None
        path = configs.lbtwist_h2_config(ctx.work_dir, name, port, backends, tls)
        return [str(ctx.twistd), "-n", "--pidfile=", "lb", "--config", str(path)]

    return build


TARGETS: list[TargetSpec] = [
    TargetSpec("direct", "direct", None, "backend nginx, no proxy"),
    TargetSpec("haproxy-tcp", "tcp", "haproxy-tcp", "HAProxy mode tcp", _haproxy("tcp")),
    TargetSpec("haproxy-http", "http", "haproxy-http", "HAProxy mode http", _haproxy("http")),
    TargetSpec("nginx", "http", "haproxy-http", "nginx reverse proxy", _nginx_proxy),
    TargetSpec(
        "portforward", "tcp", "haproxy-tcp", "twisted portforward (1 backend)", _portforward
    ),
    # What a relay on Twisted costs with no feature at all (lbbench/floor.py).
    TargetSpec("floor-tcp", "tcp", "haproxy-tcp", "floor: bare Twisted TCP relay", _floor("tcp")),
    TargetSpec("floor-http", "http", "haproxy-http", "floor: bare Twisted HTTP relay",
               _floor("http")),
    TargetSpec("lbtwist-tcp", "tcp", "haproxy-tcp", "lbtwist --mode tcp", _lbtwist("tcp")),
    TargetSpec("lbtwist-http", "http", "haproxy-http", "lbtwist --mode http", _lbtwist("http")),
    TargetSpec(
        "lbtwist-routes", "http", "haproxy-http",
        "lbtwist --mode http, 50 routes, the match last", _lbtwistRoutes,
    ),
    # The multi-core case: two processes or threads, not pinned.
    TargetSpec("haproxy-tcp-2t", "tcp", "haproxy-tcp-2t", "HAProxy mode tcp, nbthread 2",
               _haproxy("tcp", 2), cores=2),
    TargetSpec("haproxy-http-2t", "http", "haproxy-http-2t", "HAProxy mode http, nbthread 2",
               _haproxy("http", 2), cores=2),
    TargetSpec("lbtwist-tcp-2w", "tcp", "haproxy-tcp-2t", "lbtwist --mode tcp --workers 2",
               _lbtwist("tcp", 2), cores=2),
    TargetSpec("lbtwist-http-2w", "http", "haproxy-http-2t", "lbtwist --mode http --workers 2",
               _lbtwist("http", 2), cores=2),
    # HTTP/2 from clients (h2load), HTTP/1.1 to the same backends.
    TargetSpec("haproxy-h2c", "http", "haproxy-h2c", "HAProxy mode http, bind proto h2",
               _haproxy("http", protocol=H2C), protocol=H2C),
    TargetSpec("haproxy-h2tls", "http", "haproxy-h2tls", "HAProxy mode http, ssl alpn h2",
               _haproxy("http", protocol=H2_TLS), protocol=H2_TLS),
    TargetSpec("lbtwist-h2c", "http", "haproxy-h2c", "lbtwist http2: true (h2c)",
               _lbtwistH2(H2C), protocol=H2C),
    TargetSpec("lbtwist-h2tls", "http", "haproxy-h2tls", "lbtwist tls, alpn [h2, http/1.1]",
               _lbtwistH2(H2_TLS), protocol=H2_TLS),
]
TARGETS_BY_NAME = {spec.name: spec for spec in TARGETS}


@dataclass
class RunningTarget:
    """A started target: the port to load and the process to measure (none for direct)."""

    spec: TargetSpec
    port: int
    process: ManagedProcess | None

    def measured_pids(self) -> list[int]:
        """The proxy process and its workers (nginx), or nothing for ``direct``."""
        if self.process is None:
            return []
        return process_tree(self.process.pid)

    def command(self) -> list[str]:
        """The full command line used to start the target."""
        return self.process.argv if self.process else []


def launch(
    spec: TargetSpec,
    ctx: BenchContext,
    manager: ProcessManager,
    port: int,
    backends: Sequence[int],
    instance_name: str | None = None,
) -> RunningTarget:
    """Start ``spec`` listening on ``port`` in front of ``backends``; wait until it listens.

    Raises :class:`lbbench.processes.StartError` if it exits or does not listen in time.
    """
    if spec.build is None:
        return RunningTarget(spec, backends[0], None)
    name = instance_name or spec.name
    try:
        argv = spec.build(ctx, name, port, backends)
    except (OSError, subprocess.SubprocessError) as exc:
        raise StartError(f"{name}: its configuration could not be made", str(exc)) from exc
    try:
        process = manager.start(
            name,
            argv,
            cpu=ctx.proxy_cpu if spec.cores == 1 else None,
            raise_nofile=True,
            env=ctx.twistd_env() if spec.is_twisted else None,
            cwd=ctx.repo_root,
        )
    except OSError as exc:
        raise StartError(f"{name} could not be started", str(exc)) from exc
    try:
        wait_listening(process, port, ctx.start_timeout)
    except BaseException:
        manager.stop(process)
        raise
    return RunningTarget(spec, port, process)
