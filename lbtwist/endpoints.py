"""
Endpoint strings, parsed once into values: the one place that reads them.

Listeners, backends and the admin API are Twisted endpoint strings
(C{tcp:8080:interface=127.0.0.1}, C{tcp:host=10.0.0.5:port=80},
C{unix:/run/app.sock}, C{ssl:8443:privateKey=...}).  L{parseEndpoint}
splits one as Twisted does (a backslash escapes the next character, an
unescaped C{=} makes a keyword argument) into an L{Endpoint}, from which the
host, port, path, HTTP authority, default backend name, Go-API URL and
loopback test are derived.  (L{lbtwist.checks.checkEndpoint} builds the
Twisted endpoint with Twisted's own parsers, before anything starts.)

Only the standard library here: C{lbtwist ctl} reads endpoint strings too,
and loads no Twisted.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

ENDPOINT_TYPES = ("tcp", "tcp6", "unix", "ssl", "tls", "systemd")

# Kinds whose client endpoints name a host and a port.
_NETWORK = ("tcp", "tcp6", "ssl", "tls")


def hostPort(host: str, port: object) -> str:
    """
    C{host:port} as a URL or a Host header writes it: an IPv6 address in
    brackets (C{[::1]:80}).
    """
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _split(text: str) -> list[str]:
    """
    Split at unescaped colons, keeping the escapes (as Twisted's parser
    does before it reads each part).
    """
    parts = [""]
    escaped = False
    for c in text:
        if escaped:
            parts[-1] += "\\" + c
            escaped = False
        elif c == "\\":
            escaped = True
        elif c == ":":
            parts.append("")
        else:
            parts[-1] += c
    if escaped:
        parts[-1] += "\\"
    return parts


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def _keyword(part: str) -> tuple[str, str] | None:
    # An argument is a keyword when an unescaped "=" is in it.
    m = re.match(r"((?:[^=\\]|\\.)*)=(.*)", part, re.DOTALL)
    if m is None:
        return None
    return _unescape(m.group(1)), _unescape(m.group(2))


@dataclass(frozen=True)
class Endpoint:
    """
    An endpoint string, parsed.

    @ivar text: the string as given.
    @ivar kind: C{tcp}, C{tcp6}, C{unix}, C{ssl} or C{tls}.
    @ivar server: whether it is read as a server (listening) endpoint.
    @ivar args: its positional arguments, unescaped.
    @ivar options: its keyword arguments, unescaped, in order.
    """

    text: str
    kind: str
    server: bool
    args: tuple[str, ...]
    options: tuple[tuple[str, str], ...]

    def option(self, name: str) -> str | None:
        """
        The value of keyword argument C{name}, if given.
        """
        for key, value in self.options:
            if key == name:
                return value
        return None

    @property
    def host(self) -> str | None:
        """
        A client's host (or a listener's interface), if it names one.
        """
        if self.kind == "unix":
            return None
        if self.server:
            return self.option("interface")
        return self.option("host") or (self.args[0] if self.args else None)

    @property
    def port(self) -> str | None:
        """
        The port, as written, if it names one.
        """
        if self.kind == "unix":
            return None
        given = self.option("port")
        if given is not None:
            return given
        at = 0 if self.server else 1
        return self.args[at] if len(self.args) > at else None

    @property
    def path(self) -> str | None:
        """
        A UNIX socket's path.
        """
        if self.kind != "unix":
            return None
        return self.option("address") or self.option("path") or (
            self.args[0] if self.args else None
        )

    @property
    def authority(self) -> str | None:
        """
        C{host:port} as an HTTP Host header writes it (C{[::1]:80} for
        IPv6), for a client endpoint of the network; else L{None}.
        """
        host, port = self.host, self.port
        if self.server or self.kind not in _NETWORK or not host or not port:
            return None
        return hostPort(host, port)

    @property
    def defaultName(self) -> str:
        """
        A readable name for a backend given by this endpoint, always a valid
        backend name: C{tcp:host=10.0.0.5:port=80} gives C{10.0.0.5:80},
        C{unix:/run/app.sock} gives C{app.sock}.
        """
        name = self.authority
        if name is None:
            path = self.path
            name = path.rstrip("/").rpartition("/")[2] if path else self.text
        return re.sub(r"[^A-Za-z0-9_.:\[\]\-]", "_", name)[:64]

    @property
    def url(self) -> str:
        """
        The C{http://host:port} form of a plain TCP backend, as the Go
        design's API shows it; other endpoints as they are written.
        """
        if self.kind in ("tcp", "tcp6") and self.authority is not None:
            return f"http://{self.authority}"
        return self.text

    @property
    def slug(self) -> str:
        """
        A file-name fragment: the values, without the argument names,
        joined by dashes (C{tcp:8080:interface=127.0.0.1} gives
        C{tcp-8080-127.0.0.1}).
        """
        values = [self.kind, *self.args, *(value for _, value in self.options)]
        slug = re.sub(r"[^A-Za-z0-9.]+", "-", "-".join(values)).strip("-.")
        return slug[:60] or "listener"

    @property
    def loopback(self) -> bool:
        """
        Whether a listener only accepts local clients: a UNIX socket, or
        TCP bound to a loopback interface.
        """
        if self.kind == "unix":
            return True
        interface = self.host or ""
        return interface.startswith("127.") or interface in (
            "::1", "localhost", "0:0:0:0:0:0:0:1"
        )

    @property
    def tls(self) -> bool:
        """
        Whether clients speak TLS to this endpoint (or it to its server).
        """
        return self.kind in ("ssl", "tls")

    def withOption(self, name: str, value: str) -> str:
        """
        The string with C{name=value} added, unless it gives C{name}.
        """
        if self.option(name) is not None:
            return self.text
        return f"{self.text}:{name}={value}"


def parseEndpoint(text: str, server: bool) -> Endpoint:
    """
    Parse an endpoint string.

    @param server: read it as a listener's (C{tcp:PORT}) rather than a
        client's (C{tcp:HOST:PORT}).
    @raise ValueError: it does not start with a known kind.
    """
    parts = _split(text)
    kind = parts[0]
    if kind not in ENDPOINT_TYPES:
        raise ValueError(f"unknown endpoint kind {kind!r}")
    args: list[str] = []
    options: list[tuple[str, str]] = []
    for part in parts[1:]:
        if not part:
            continue
        keyword = _keyword(part)
        if keyword is None:
            args.append(_unescape(part))
        else:
            options.append(keyword)
    return Endpoint(text, kind, server, tuple(args), tuple(options))


def listenAddress(text: str) -> tuple[str, int] | None:
    """
    The address a listener's endpoint string binds, as C{(host, port)}
    with the host written one way (C{0.0.0.0}, or C{::} for C{tcp6}, when
    it names no interface); L{None} when it binds no fixed TCP address (a
    UNIX socket, systemd's, port 0, an interface given by name).
    """
    try:
        parsed = parseEndpoint(text, server=True)
        port = int(parsed.port or "")
        host = parsed.host or ("::" if parsed.kind == "tcp6" else "0.0.0.0")
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if parsed.kind not in _NETWORK or port == 0:
        return None
    return str(address), port


def addressesOverlap(one: tuple[str, int], other: tuple[str, int]) -> bool:
    """
    Whether two listening addresses cannot listen at once (Linux, with
    C{SO_REUSEADDR}): the same port, and the same host, or a host and its
    family's wildcard (C{::}, dual-stack, covers IPv4's too).
    """
    (host, port), (otherHost, otherPort) = one, other
    if port != otherPort:
        return False
    a, b = ipaddress.ip_address(host), ipaddress.ip_address(otherHost)
    if a == b:
        return True
    if a.version == b.version:
        return a.is_unspecified or b.is_unspecified
    return any(x.version == 6 and x.is_unspecified for x in (a, b))


_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+):([0-9]{1,5})$")


def expandAddress(text: str) -> str:
    """
    Accept C{HOST:PORT} (or C{[IPV6]:PORT}) where a backend's endpoint
    string is expected, as HAProxy's C{server} lines do: it means
    C{tcp:host=HOST:port=PORT}.  Anything else is returned unchanged.
    """
    m = _HOST_PORT.match(text)
    if m is None or text.partition(":")[0] in ENDPOINT_TYPES:
        return text
    host, port = m.groups()
    if host.startswith("["):
        return f"tcp:host={host[1:-1].replace(':', chr(92) + ':')}:port={port}"
    return f"tcp:host={host}:port={port}"
