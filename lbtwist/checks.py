"""
Checking a configuration against the world before anything starts: every
endpoint string built by Twisted's own parsers (certificates read, unknown
arguments refused), every TLS certificate, key and CA file read, every
access-log sink built (its options checked) and every access-log file
writable.  A problem is a
L{ConfigError} naming the key, and nothing starts.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.task import Clock

from .backendtls import clientOptions
from .certificates import CertificateError, loadCertificates, loadChain, loadKey
from .config import BackendTLS, Config, ConfigError
from .extend import ACCESS_LOGS
from .tlslisten import ListenerCertificates


def checkConfig(config: Config) -> None:
    """
    Everything below.

    @raise ConfigError: naming the key path of the first problem.
    """
    checkEndpoints(config)
    checkTLS(config)
    checkAccessLogs(config)
    checkFiles(config)


def checkEndpoints(config: Config) -> None:
    """
    Parse every endpoint string of C{config} as Twisted will, without
    listening or connecting, so a bad one is refused before anything starts.

    @raise ConfigError: naming the endpoint's key path.
    """
    checks = [
        (f"listeners[{i}].listen", listener.endpoint, True)
        for i, listener in enumerate(config.listeners)
    ]
    if config.admin:
        checks.append(("admin", config.admin, True))
    for p in config.pools:
        checks.extend(
            (f"pools.{p.name}.backends[{i}].endpoint", b.endpoint, False)
            for i, b in enumerate(p.backends)
        )
    for path, text, server in checks:
        try:
            checkEndpoint(text, server)
        except (IndexError, KeyError) as e:
            if not text.startswith("systemd:"):
                raise ConfigError(path, f"invalid endpoint {text!r}: {e}") from e
            raise ConfigError(path, f"systemd passed no such socket for {text!r} (started "
                                    "without its socket unit?)") from e
        except Exception as e:
            raise ConfigError(path, f"invalid endpoint {text!r}: {e}") from e


def checkTLS(config: Config) -> None:
    """
    Read every certificate, key and CA file of C{config}: those each TLS
    listener serves (each key matching its certificate, each cipher string
    known to OpenSSL) and those TLS to backends uses.

    @raise ConfigError: naming the key path and the file.
    """
    for i, listener in enumerate(config.listeners):
        if listener.terminatesTLS:
            ListenerCertificates(listener, f"listeners[{i}]", time.time).build()
    for p in config.pools:
        seen = set()
        poolFiles = {key: name for key, name, _ in _tlsFiles(p.tls)} if p.tls else {}
        for i, b in enumerate(p.backends):
            if b.tls is None or b.tls in seen:
                continue
            seen.add(b.tls)
            where = f"pools.{p.name}.backends[{i}].tls"
            for key, name, load in _tlsFiles(b.tls):
                # Named where it was written: the pool's block, unless the
                # backend's own block gave another file.
                owner = f"pools.{p.name}.tls" if poolFiles.get(key) == name else where
                try:
                    load(name)
                except CertificateError as e:
                    raise ConfigError(f"{owner}.{key}", str(e)) from None
            try:
                clientOptions(b.tls, b.endpoint)
            except CertificateError as e:
                raise ConfigError(where, str(e)) from None
            except Exception as e:
                raise ConfigError(where, f"cannot set up TLS: {e}") from e


def _tlsFiles(tls: BackendTLS) -> list[tuple[str, str, Callable[[str], object]]]:
    """
    The files TLS to a backend reads, each with its key and the reader that
    checks it: the C{ca} file (unless the system's, or not verifying), the
    client certificate and its key.
    """
    files: list[tuple[str, str, Callable[[str], object]]] = []
    if tls.verify and tls.ca != "system":
        files.append(("ca", tls.ca, loadCertificates))
    if tls.clientCert is not None and tls.clientKey is not None:
        files += [("client-cert", tls.clientCert, loadChain), ("client-key", tls.clientKey, loadKey)]
    return files


def checkFiles(config: Config) -> None:
    """
    Make sure every access-log file of C{config} can be written, so that a
    bad path stops the start with its key path rather than a traceback.

    @raise ConfigError: naming the key.
    """
    for p in config.pools:
        sink = p.accessLogSink
        if sink is None or sink.name != "file":
            continue
        path = str(dict(sink.options)["path"])
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise ConfigError(f"pools.{p.name}.access-log", f"no such directory {directory!r}")
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise ConfigError(f"pools.{p.name}.access-log", f"cannot write {path!r}")
        if not os.path.exists(path) and not os.access(directory, os.W_OK | os.X_OK):
            raise ConfigError(f"pools.{p.name}.access-log", f"cannot write in {directory!r}")


def checkAccessLogs(config: Config) -> None:
    """
    Build every access-log sink of C{config} as the balancer will (which
    opens nothing: a sink opens its files or connections when it starts),
    so that options its factory refuses stop the start with the key.

    @raise ConfigError: naming the pool's C{access-log} and the reason.
    """
    clock = Clock()
    for p in config.pools:
        sink = p.accessLogSink
        if sink is None:
            continue
        try:
            ACCESS_LOGS[sink.name](dict(sink.options), clock)
        except ValueError as e:
            raise ConfigError(f"pools.{p.name}.access-log", f"{sink.name} sink: {e}") from e
        except Exception as e:
            raise ConfigError(f"pools.{p.name}.access-log",
                              f"{sink.name} sink: {type(e).__name__}: {e}") from e


def checkEndpoint(text: str, server: bool) -> None:
    """
    Build the Twisted endpoint for C{text} with Twisted's own parsers,
    without listening or connecting: certificate files are read, unknown
    arguments refused.

    @raise Exception: whatever Twisted raises for a bad string.
    """
    # Building an endpoint only keeps the reactor for later: there is
    # nothing to run yet, and no reactor is needed to read the string.
    reactor: Any = None
    (serverFromString if server else clientFromString)(reactor, text)
