"""Generated configuration files and payloads for nginx and HAProxy.

Everything is written into the harness's temporary directory; nothing under
/etc is read or changed.  All listeners bind to 127.0.0.1 only.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SMALL_PATH = "/small"
BIG_PATH = "/big"
SMALL_BODY_BYTES = 100
BIG_BODY_BYTES = 1024 * 1024
LOOPBACK = "127.0.0.1"

# Long idle timeouts so that keep-alive and idle connections are never cut by a
# proxy or backend during a run; the harness stops everything itself.
IDLE_TIMEOUT_S = 300


def write_payloads(www_dir: Path) -> None:
    """Create the static files served by the backend nginx (``/small``, ``/big``)."""
    www_dir.mkdir(parents=True, exist_ok=True)
    www_dir.chmod(0o755)
    line = b"lbtwist benchmark payload 0123456789abcdefghijklmnopqrstuvwxyz\n"
    (www_dir / SMALL_PATH.lstrip("/")).write_bytes((line * 2)[: SMALL_BODY_BYTES - 1] + b"\n")
    big = (line * (BIG_BODY_BYTES // len(line) + 1))[:BIG_BODY_BYTES]
    (www_dir / BIG_PATH.lstrip("/")).write_bytes(big)
    for path in www_dir.iterdir():
        path.chmod(0o644)


def _nginx_common(work_dir: Path, name: str, nofile: int) -> str:
    """Main-context and shared http-context directives for a generated nginx."""
    temp = work_dir / f"{name}-temp"
    temp.mkdir(parents=True, exist_ok=True)
    temp.chmod(0o777)
    connections = max(1024, nofile - 64)
    return f"""\
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {work_dir / (name + ".pid")};
error_log {work_dir / (name + "-error.log")} warn;
events {{
    worker_connections {connections};
    multi_accept on;
}}
"""


def _nginx_http_common(work_dir: Path, name: str) -> str:
    """http-context directives shared by the backend and the proxy nginx."""
    temp = work_dir / f"{name}-temp"
    return f"""\
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout {IDLE_TIMEOUT_S}s;
    keepalive_requests 10000000;
    client_body_temp_path {temp}/client;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
"""


def nginx_backend_config(work_dir: Path, www_dir: Path, ports: Sequence[int], nofile: int) -> Path:
    """Write the backend nginx config (one server block per port); return its path."""
    name = "backend-nginx"
    servers = "".join(
        f"""
    server {{
        listen {LOOPBACK}:{port} backlog=4096;
        root {www_dir};
        location / {{ }}
    }}
"""
        for port in ports
    )
    text = (
        _nginx_common(work_dir, name, nofile)
        + "http {\n"
        + _nginx_http_common(work_dir, name)
        + "    open_file_cache max=16 inactive=600s;\n    open_file_cache_valid 600s;\n"
        + servers
        + "}\n"
    )
    path = work_dir / f"{name}.conf"
    path.write_text(text)
    return path


def nginx_proxy_config(
    work_dir: Path, listen_port: int, backend_ports: Sequence[int], nofile: int
) -> Path:
    """Write the reverse-proxy nginx config (upstream keep-alive pool); return its path."""
    name = "proxy-nginx"
    servers = "".join(f"        server {LOOPBACK}:{port};\n" for port in backend_ports)
    text = (
        _nginx_common(work_dir, name, nofile)
        + "http {\n"
        + _nginx_http_common(work_dir, name)
        + f"""
    upstream backends {{
{servers}        keepalive 128;
        keepalive_requests 10000000;
        keepalive_timeout {IDLE_TIMEOUT_S}s;
    }}
    server {{
        listen {LOOPBACK}:{listen_port} backlog=4096;
        location / {{
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffer_size 64k;
            proxy_buffers 16 64k;
            proxy_max_temp_file_size 0;
        }}
    }}
}}
"""
    )
    path = work_dir / f"{name}.conf"
    path.write_text(text)
    return path


def haproxy_config(
    work_dir: Path,
    name: str,
    mode: str,
    listen_port: int,
    backend_ports: Sequence[int],
    maxconn: int,
    threads: int = 1,
    bind_options: str = "",
) -> Path:
    """Write an HAProxy config (``mode`` is "tcp" or "http"), roundrobin, ``threads``
    threads, ``bind_options`` after the listening address (``proto h2``, ``ssl crt ...``);
    return its path."""
    http_options = "    option http-keep-alive\n" if mode == "http" else ""
    servers = "".join(
        f"    server s{index} {LOOPBACK}:{port}\n" for index, port in enumerate(backend_ports, 1)
    )
    text = f"""\
global
    nbthread {threads}
    maxconn {maxconn}

defaults
    mode {mode}
    maxconn {maxconn}
    timeout connect 5s
    timeout client {IDLE_TIMEOUT_S}s
    timeout server {IDLE_TIMEOUT_S}s
    timeout http-keep-alive {IDLE_TIMEOUT_S}s
{http_options}
frontend fe
    bind {LOOPBACK}:{listen_port}{" " + bind_options if bind_options else ""}
    default_backend be

backend be
    balance roundrobin
{servers}"""
    path = work_dir / f"{name}.cfg"
    path.write_text(text)
    return path


@dataclass(frozen=True)
class Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost: ``cert`` and ``key`` as
    separate PEM files (lbtwist) and ``combined`` holding both (HAProxy's ``crt``)."""

    cert: Path
    key: Path
    combined: Path


def self_signed_certificate(work_dir: Path, openssl: str = "openssl") -> Certificate:
    """
    The run's certificate in ``work_dir``, made with ``openssl`` on first use (a new
    P-256 key per run; h2load does not verify it).  Raises ``OSError`` or
    ``subprocess.CalledProcessError`` if openssl cannot make it.
    """
    certificate = Certificate(
        work_dir / "bench-cert.pem", work_dir / "bench-key.pem", work_dir / "bench-combined.pem"
    )
    if not certificate.combined.exists():
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-days", "2", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
             "-keyout", str(certificate.key), "-out", str(certificate.cert)],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        certificate.combined.write_bytes(
            certificate.cert.read_bytes() + certificate.key.read_bytes()
        )
    return certificate


def lbtwist_h2_config(
    work_dir: Path, name: str, port: int, backends: Sequence[int], tls: Certificate | None
) -> Path:
    """
    Write an lbtwist config with one HTTP listener speaking HTTP/2 to clients,
    in cleartext by prior knowledge (``http2: true``) or, given ``tls``, over TLS
    with ALPN ``h2`` (``tls: {certificates, alpn}``), over the same backends and
    policy as the ``lbtwist-http`` target (HTTP/1.1 to the backends).
    """
    import yaml

    listener: dict[str, object] = {
        "name": "front", "mode": "http", "listen": f"tcp:{port}:interface={LOOPBACK}",
        "pool": "web",
    }  # fmt: skip
    if tls is None:
        listener["http2"] = True
    else:
        listener["tls"] = {
            "certificates": [{"cert": str(tls.cert), "key": str(tls.key)}],
            "alpn": ["h2", "http/1.1"],
        }
    config = {
        "listeners": [listener],
        "pools": {"web": {
            "policy": "roundrobin",
            "backends": [f"tcp:host={LOOPBACK}:port={b}" for b in backends],
        }},
    }
    path = work_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# The routing case: this many routes before the one that matches.
ROUTES_BEFORE_MATCH = 49


def lbtwist_routes_config(work_dir: Path, port: int, backends: Sequence[int]) -> Path:
    """
    Write an lbtwist config whose HTTP listener has 50 routes, the one
    every request matches last (49 path prefixes it misses, then ``/``),
    over the same backends and policy as the ``lbtwist-http`` target.
    """
    import yaml

    routes: list[dict[str, object]] = [
        {"name": f"app{i}", "match": {"path-prefix": f"/app{i}/"}, "pool": "web"}
        for i in range(ROUTES_BEFORE_MATCH)
    ]
    routes.append({"name": "last", "match": {"path-prefix": "/"}, "pool": "web"})
    config = {
        "listeners": [{
            "name": "front", "mode": "http", "routes": routes,
            "listen": f"tcp:{port}:interface={LOOPBACK}",
        }],
        "pools": {"web": {
            "policy": "roundrobin",
            "backends": [f"tcp:host={LOOPBACK}:port={b}" for b in backends],
        }},
    }
    path = work_dir / "lbtwist-routes.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
