"""
The configuration model: frozen value types, and their validation from plain data.

Both the YAML file and the command line are turned into the same plain
dictionary shape and validated here, so that a mistake is reported the same
way wherever it was made: one line naming the key path and the problem, e.g.
C{pools.web.backends[2].port: expected an integer 1-65535, got '80x'}.

Nothing here touches the network.
"""

from __future__ import annotations

import difflib
import importlib
import ipaddress
import math
import os
import re
from typing import Any, Callable, Mapping, Sequence, TypeVar
from urllib.parse import urlsplit

import attrs
import yaml

from .endpoints import ENDPOINT_TYPES, expandAddress, parseEndpoint
from .extend import ACCESS_LOGS, CHECKS, FILE_FORMATS, POLICIES
from .routeconfig import (
    DEFAULT_REDIRECT_CODE,
    REDIRECT_CODES,
    BasicAuth,
    HeaderActions,
    HeaderMatch,
    Match,
    RateLimit,
    Redirect,
    Respond,
    Rewrite,
    Route,
    TimeoutOverrides,
    parseHtpasswd,
    parseRate,
)

# A backend's weight is 0 (no new clients) to this; one place says so.
MAX_WEIGHT = 256
# Seconds a worker may send no heartbeat before its master takes it for
# wedged: far over the longest stall a healthy worker shows (a garbage
# collection, a large registry applied, a burst of load on a busy core).
WORKER_WATCHDOG = 30.0

T = TypeVar("T")

MODES = ("tcp", "http")
# The built-in policies (L{lbtwist.extend.POLICIES} has those registered too).
POLICY_NAMES = POLICIES.names()
_NAME = re.compile(r"^[A-Za-z0-9_.:\[\]\-]{1,64}$")


class ConfigError(ValueError):
    """
    A configuration is invalid.

    @ivar path: the key path of the offending value, e.g. C{pools.web.policy}.
    @ivar problem: what is wrong with it.
    """

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


# The bytes of a check's response body kept to look for C{expect-body} and
# C{expect-body-regex}; the rest is read and dropped.
MAX_PROBE_BODY = 65536


@attrs.frozen
class HealthCheck:
    """
    How a backend is probed and when its health state flips.

    @ivar kind: C{"tcp"} (connect only), C{"http"} (send a request), or a
        kind registered with L{lbtwist.extend.registerCheck}.
    @ivar expectStatus: inclusive ranges of acceptable HTTP statuses.
    @ivar expectBody: text the body must contain (within its first
        L{MAX_PROBE_BODY} bytes).
    @ivar expectBodyRegex: a pattern searched in the body (within its
        first L{MAX_PROBE_BODY} bytes), compiled once, here.
    @ivar expectHeaders: headers the response must carry, each with a
        value one of its fields (or one of their comma-separated elements)
        must be exactly; the names as written, compared case-insensitively.
    @ivar h2: the http check speaks HTTP/2 (the backends of a pool with
        C{protocol: h2}).
    """

    interval: float = 2.0
    timeout: float = 1.0
    rise: int = 2
    fall: int = 3
    kind: str = "tcp"
    method: str = "GET"
    path: str = "/"
    host: str | None = None
    expectStatus: tuple[tuple[int, int], ...] = ((200, 399),)
    expectBody: str | None = None
    expectBodyRegex: re.Pattern[bytes] | None = None
    expectHeaders: tuple[tuple[str, str], ...] = ()
    h2: bool = False


@attrs.frozen
class BackendTLS:
    """
    How lbtwist speaks TLS to a backend: the certificate it must present is
    verified unless C{verify} is C{False}.

    @ivar ca: a PEM file of the certificates that may issue the backend's,
        or C{"system"} for the platform's trust store.
    @ivar verifyHost: the name the backend's certificate must carry (and
        the SNI sent), or L{None} for the backend's host.
    @ivar clientCert: a PEM certificate (or chain) lbtwist presents to the
        backend, with C{clientKey} its private key.
    @ivar verify: C{False} turns verification off (an explicit opt-out).
    @ivar sni: the server name sent, if not C{verifyHost} or the host.
    @ivar alpn: the protocols offered by ALPN (C{("h2",)} for a pool with
        C{protocol: h2}; none otherwise).
    """

    ca: str = "system"
    verifyHost: str | None = None
    clientCert: str | None = None
    clientKey: str | None = None
    verify: bool = True
    sni: str | None = None
    alpn: tuple[str, ...] = ()


@attrs.frozen
class BackendConfig:
    """
    One backend server: a name, a Twisted client endpoint string and a weight.

    @ivar maxconn: connections (TCP mode) or requests (HTTP mode) it is
        given at once; more wait in the pool's queue (0: no limit).
    @ivar backup: it takes new clients only while no other (non-backup)
        backend of its pool is eligible.
    @ivar slowStart: seconds over which its weight ramps up to full after
        it comes back (health down to up, or maint/drain to ready); L{None}
        takes the pool's C{slow-start}, 0 turns it off.
    @ivar tls: how TLS is spoken to it (its pool's block with its own
        keys over it), or L{None} for none.
    """

    name: str
    endpoint: str
    weight: int = 1
    health: HealthCheck = HealthCheck()
    maxconn: int = 0
    backup: bool = False
    slowStart: float | None = None
    discovered: bool = False
    tls: BackendTLS | None = None


@attrs.frozen
class Discovery:
    """
    Where a pool finds backends in DNS, re-resolved every C{interval}
    seconds (sooner when the answer's TTL is shorter).

    @ivar kind: C{"dns"} (one backend per A/AAAA address, on C{port}) or
        C{"srv"} (one per SRV target address, on its port and weight).
    @ivar name: the name looked up.
    @ivar port: the backends' port (C{dns} only; an SRV record gives its own).
    """

    kind: str
    name: str
    port: int | None = None
    interval: float = 10.0


@attrs.frozen
class Timeouts:
    """
    Timeouts of a pool, in seconds.

    @ivar connect: to establish a backend connection.
    @ivar idle: a joined pair with no traffic either way is closed after this.
    @ivar response: HTTP only, for the backend's response head.
    @ivar request: HTTP only, for a client to send its request head.
    """

    connect: float = 5.0
    idle: float = 300.0
    response: float = 60.0
    request: float = 10.0


# What may be retried (retry-on): a failed connect, a connection lost before
# the response, no response in time, or one of these answers.  Only requests
# safe to send again are ever retried.
RETRY_CAUSES = ("connect-failure", "refused-stream", "reset", "timeout")
RETRY_STATUSES = (502, 503, 504)
# What HTTP mode may speak to a pool's backends.
BACKEND_PROTOCOLS = ("http/1.1", "h2")

DEFAULT_RETRY_ON: tuple[str | int, ...] = ("connect-failure", "refused-stream", "reset")


@attrs.frozen
class RetryBudget:
    """
    A cap on retries in flight: at most C{percent} of a pool's active
    requests (or C{minConcurrency}, whichever is more) may be retries at
    once, so a failing pool is not met with a retry storm (Envoy's retry
    budget).
    """

    percent: float = 20.0
    minConcurrency: int = 3


@attrs.frozen
class Queue:
    """
    Where clients wait when every eligible backend is at its C{maxconn}.

    @ivar size: clients that may wait at once; past it they are refused
        at once (HTTP: 503; TCP: closed).
    @ivar timeout: a client waits this long at most, in seconds, then is
        refused.
    """

    size: int = 1024
    timeout: float = 5.0


@attrs.frozen
class KeepAlive:
    """
    HTTP mode: how idle backend connections are kept for reuse.

    @ivar idlePool: idle connections kept per backend (0: no reuse).
    @ivar idleTimeout: an idle connection is closed after this, in seconds.
    @ivar maxRequests: a connection is closed after serving this many requests.
    """

    idlePool: int = 64
    idleTimeout: float = 15.0
    maxRequests: int = 1000


# The SameSite values a sticky cookie may carry, as browsers spell them.
SAME_SITE = ("Strict", "Lax", "None")
# Browsers cap a cookie's lifetime at 400 days (RFC 6265bis).
MAX_COOKIE_AGE = 400 * 86400


@attrs.frozen
class Sticky:
    """
    HTTP mode: keep a client on one backend.

    @ivar kind: C{"cookie"} (a cookie the balancer inserts), C{"header"}
        (a consistent hash of a request header) or C{"source"} (of the
        client address).
    @ivar name: the cookie or header name.
    @ivar sameSite: the inserted cookie's C{SameSite} (one of
        L{SAME_SITE}), or L{None} for none.
    @ivar maxAge: its lifetime in whole seconds, or L{None} for a session
        cookie.
    @ivar domain: its C{Domain}, or L{None} for the host the client asked.
    @ivar path: its C{Path}.
    @ivar httpOnly: it is hidden from scripts.
    @ivar secure: it is C{Secure} (C{True}), never (C{False}), or, with
        L{None}, to clients that came over TLS (and always with C{SameSite=None},
        which browsers refuse without it).
    """

    kind: str
    name: str | None = None
    sameSite: str | None = None
    maxAge: int | None = None
    domain: str | None = None
    path: str = "/"
    httpOnly: bool = True
    secure: bool | None = None

    def cookieAttributes(self, overTLS: bool) -> str:
        """
        What follows C{NAME=VALUE} in the inserted cookie's C{Set-Cookie},
        for clients that came over TLS (C{overTLS}) or not: built once,
        when a listener takes the pool, never per request.
        """
        parts = [f"Path={self.path}"]
        if self.domain is not None:
            parts.append(f"Domain={self.domain}")
        if self.maxAge is not None:
            parts.append(f"Max-Age={self.maxAge}")
        if self.httpOnly:
            parts.append("HttpOnly")
        secure = self.secure if self.secure is not None else overTLS
        if secure or self.sameSite == "None":
            parts.append("Secure")
        if self.sameSite is not None:
            parts.append(f"SameSite={self.sameSite}")
        return "; " + "; ".join(parts)


@attrs.frozen
class HTTPSettings:
    """
    HTTP mode settings of a pool.

    @ivar maxHeaderSize: bytes of request head (line and headers) accepted.
    @ivar maxRequestLine: bytes of request line accepted.
    @ivar maxResponseHeaderSize: bytes of response head accepted from a
        backend (else 502).
    @ivar hostHeader: replaces the client's C{Host} header, if set.
    @ivar errorLimit: consecutive 5xx responses or failed exchanges that mark
        a backend down (0: only connection failures count, through C{fall}).
    @ivar abortOnClose: a client that shuts its side (FIN) before an
        idempotent request of its was answered at all is taken as gone, and
        the request dropped, as HAProxy's C{abortonclose}; C{False} answers
        half-closed clients.
    """

    maxHeaderSize: int = 16384
    maxRequestLine: int = 8192
    maxResponseHeaderSize: int = 65536
    hostHeader: str | None = None
    keepAlive: KeepAlive = KeepAlive()
    errorLimit: int = 0
    abortOnClose: bool = True


@attrs.frozen
class Outlier:
    """
    Outlier ejection, as Envoy's: a backend that fails too many requests
    in a row is taken out of rotation for a while, then comes back by
    itself.  Health checks go on while it is out.

    @ivar consecutive5xx: 5xx answers and failed exchanges in a row that
        eject a backend (0: this rule is off).
    @ivar consecutiveGatewayErrors: 502, 503 and 504 answers, failed
        connects, timeouts and resets in a row that eject a backend (0:
        this rule is off).
    @ivar baseEjection: an ejection lasts this many seconds times the
        number of ejections of that backend so far...
    @ivar maxEjection: ...but never longer than this, in seconds.
    @ivar maxEjectedPercent: at most this share of a pool's backends is out
        at once, rounded down; but one may be out in any pool of two or
        more backends (unless it is 0: then none ever is).
    """

    consecutive5xx: int = 5
    consecutiveGatewayErrors: int = 3
    baseEjection: float = 30.0
    maxEjection: float = 300.0
    maxEjectedPercent: int = 50


@attrs.frozen
class AccessLogSink:
    """
    A sink of the access log chosen by name: C{access-log: {sink: NAME,
    ...}}, built by the factory registered under that name in
    L{lbtwist.extend.ACCESS_LOGS}.

    @ivar name: the sink's registered name.
    @ivar options: the mapping's other keys, sorted, with their values (a
        string, number or boolean each), compared with their types: C{1},
        C{1.0} and C{true} are different options (Python holds them equal),
        so two pools given them get a sink each, and a reload from one to
        another is a change.
    """

    name: str
    options: tuple[tuple[str, str | int | float | bool], ...] = attrs.field(
        default=(), eq=lambda options: tuple((k, type(v), v) for k, v in options))


@attrs.frozen
class PoolConfig:
    """
    A named group of backends balanced by one policy.

    @ivar proxyProtocol: C{"v1"} or C{"v2"} to send a PROXY protocol header
        to backends, or L{None}.
    @ivar retryOn: what is retried (L{RETRY_CAUSES} and L{RETRY_STATUSES}).
    @ivar retryBudget: the cap on retries in flight, if any.
    @ivar accessLog: C{True} for one structured log event per connection
        (TCP mode) or request (HTTP mode), the path of a file to write lines
        straight to, a sink chosen by name, or C{False} for none (see
        L{accessLogSink}).
    @ivar allBackups: while no primary backend is eligible, spread clients
        over every eligible backup rather than only the first (HAProxy's
        C{option allbackups}).
    @ivar slowStart: seconds over which a backend's weight ramps up to full
        after it comes back (0: at once); a backend may say otherwise.
    @ivar discovery: where more backends are found in DNS, if anywhere.
    @ivar protocol: what HTTP mode speaks to the backends: C{"http/1.1"},
        or C{"h2"} (HTTP/2: over TLS with ALPN C{h2}, else cleartext h2c by
        prior knowledge), one multiplexed connection per backend.
    @ivar tls: the pool's C{tls} block, which every backend takes (a
        backend's own keys win), or L{None}.
    """

    name: str
    backends: tuple[BackendConfig, ...]
    policy: str = "roundrobin"
    retries: int = 2
    timeouts: Timeouts = Timeouts()
    health: HealthCheck = HealthCheck()
    http: HTTPSettings = HTTPSettings()
    sticky: Sticky | None = None
    proxyProtocol: str | None = None
    queue: Queue = Queue()
    accessLog: bool | str | AccessLogSink = False
    retryOn: tuple[str | int, ...] = DEFAULT_RETRY_ON
    retryBudget: RetryBudget | None = None
    outlier: Outlier | None = None
    allBackups: bool = False
    slowStart: float = 0.0
    discovery: Discovery | None = None
    tls: BackendTLS | None = None
    protocol: str = "http/1.1"

    @property
    def accessLogSink(self) -> AccessLogSink | None:
        """
        The access-log sink to build, by the name it is registered under:
        C{events} for C{True}, C{file} for a path, none for C{False}.
        """
        log = self.accessLog
        if isinstance(log, AccessLogSink):
            return log
        if isinstance(log, str):
            return AccessLogSink("file", (("path", log),))
        return AccessLogSink("events") if log else None

    def backend(self, name: str) -> BackendConfig | None:
        """
        The backend of that name, if any.
        """
        for b in self.backends:
            if b.name == name:
                return b
        return None


# The protocols a TLS listener offers over ALPN unless C{tls.alpn} says:
# HTTP mode speaks HTTP/1.1; TCP mode knows nothing of what it relays, so it
# offers none and the handshake goes on without ALPN.
DEFAULT_ALPN = {"tcp": (), "http": ("http/1.1",)}
# What HTTP mode can speak over ALPN: HTTP/2 (its streams are exchanges, as
# HTTP/1.1 requests are) and HTTP/1.x.
HTTP_MODE_ALPN = ("h2", "http/1.1", "http/1.0")


# The TLS versions a listener's min-version may name.
TLS_VERSIONS = ("1.2", "1.3")


@attrs.frozen
class CertificateFiles:
    """
    One certificate a TLS listener serves: a PEM file with the certificate
    (and any intermediates after it), and one with its private key.
    """

    cert: str
    key: str


@attrs.frozen
class ListenerTLS:
    """
    The TLS settings of a listener.

    @ivar alpn: the protocols offered over ALPN, most preferred first, or
        L{None} for the mode's default (L{DEFAULT_ALPN}).
    @ivar certificates: the certificates served, chosen by the name the
        client asks for (SNI); the first (after an C{ssl:} endpoint's own)
        is the default.
    @ivar minVersion: the oldest TLS version accepted, C{"1.2"} or C{"1.3"}.
    @ivar ciphers: an OpenSSL cipher string for TLS 1.2, or L{None} for
        Twisted's defaults.
    @ivar handshakeTimeout: seconds a client has to finish its handshake
        before its connection (and a TCP-mode listener's backend connection
        for it) is cut.
    """

    alpn: tuple[str, ...] | None = None
    certificates: tuple[CertificateFiles, ...] = ()
    minVersion: str = "1.2"
    ciphers: str | None = None
    handshakeTimeout: float = 10.0


@attrs.frozen
class HTTP2Settings:
    """
    HTTP/2 from clients on an HTTP listener (its C{http2} key), and the
    limits that keep one client from using up the balancer.

    @ivar cleartext: h2c by prior knowledge: the connection preface is
        sniffed, so HTTP/1.1 and h2c share the port (TLS listeners speak
        HTTP/2 when ALPN picks C{h2}, whatever this says).
    @ivar maxConcurrentStreams: streams in flight at once per connection
        (advertised; streams beyond it are refused with C{REFUSED_STREAM}).
    @ivar maxHeaderListSize: bytes of a request's decoded header list
        (advertised; more is a connection error), which also bounds the
        header block a client can spread over CONTINUATION frames.
    @ivar initialWindowSize: bytes of request body a stream may send
        before the backend took some: the memory one stream can hold.
    @ivar connectionWindowSize: the same over all the streams of a
        connection.
    @ivar maxResets: streams a client may reset (or have refused) before
        their response was complete, within C{abuseWindow} seconds; more
        is a rapid-reset attack (CVE-2023-44487): GOAWAY
        C{ENHANCE_YOUR_CALM} and close.
    @ivar maxControlFrames: SETTINGS, PING, PRIORITY frames and empty DATA
        frames a client may send within C{abuseWindow} seconds; more is a
        flood: GOAWAY C{ENHANCE_YOUR_CALM} and close.
    @ivar abuseWindow: the period those counts are taken over, in seconds.
    """

    cleartext: bool = False
    maxConcurrentStreams: int = 100
    maxHeaderListSize: int = 65536
    initialWindowSize: int = 65535
    connectionWindowSize: int = 1048576
    maxResets: int = 200
    maxControlFrames: int = 1000
    abuseWindow: float = 10.0


@attrs.frozen
class ListenerConfig:
    """
    A server endpoint that accepts clients and sends them to pools.

    @ivar pool: the one pool of a listener without routes.  With routes, it
        is the pool of C{pool:} if given, else the default route's (first)
        pool, else the first pool a route names, else the first pool of
        the configuration: code that knows no routes yet keeps working.
    @ivar tls: the listener's C{tls} block, if given.
    @ivar routes: the routes, in order: the first that matches is taken.
    @ivar defaultRoute: what a request no route matches gets (a C{pool:}
        given beside C{routes:} is one); L{None}: a 404 (HTTP) or a close.
    @ivar http2: its C{http2} settings (h2c, and the HTTP/2 limits, also
        those of C{h2} over TLS).
    @ivar timeouts: its clients' own C{idle} and C{request} timeouts, over
        those of its pool (see L{clientTimeouts}); the others are L{None}.
    """

    name: str
    endpoint: str
    pool: str
    mode: str = "tcp"
    tls: ListenerTLS | None = None
    routes: tuple[Route, ...] = ()
    defaultRoute: Route | None = None
    http2: HTTP2Settings = HTTP2Settings()
    timeouts: TimeoutOverrides = TimeoutOverrides()

    def clientTimeouts(self, pool: PoolConfig) -> tuple[float, float]:
        """
        The C{idle} and C{request} timeouts of this listener's clients: its
        own where it gives them, else those of C{pool} (its pool's, for a
        listener with routes its first route's).
        """
        own = self.timeouts
        return (pool.timeouts.idle if own.idle is None else own.idle,
                pool.timeouts.request if own.request is None else own.request)

    @property
    def speaksHTTP2(self) -> bool:
        """
        Whether its clients may speak HTTP/2: h2c by prior knowledge, or
        C{h2} offered over ALPN by a listener that terminates TLS.
        """
        if self.mode != "http":
            return False
        return self.http2.cleartext or ("h2" in self.alpn and self.terminatesTLS)

    @property
    def alpn(self) -> tuple[str, ...]:
        """
        The protocols this listener offers over ALPN if it speaks TLS, most
        preferred first.
        """
        if self.tls is not None and self.tls.alpn is not None:
            return self.tls.alpn
        return DEFAULT_ALPN[self.mode]

    @property
    def terminatesTLS(self) -> bool:
        """
        Whether its clients speak TLS: an C{ssl:} endpoint, or certificates
        in its C{tls} block.
        """
        return parseEndpoint(self.endpoint, True).tls or (
            self.tls is not None and bool(self.tls.certificates))


@attrs.frozen
class ClusterTLS:
    """
    TLS to the etcd members: the CA that signed their certificates, and
    this balancer's client certificate and key (PEM files).
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@attrs.frozen
class ClusterConfig:
    """
    The etcd cluster several balancers share their registry through (see
    L{lbtwist.cluster}).

    @ivar etcd: the members' client URLs, tried in turn.
    @ivar prefix: the keys of this cluster of balancers start with it.
    """

    etcd: tuple[str, ...]
    prefix: str = "/lbtwist"
    username: str | None = None
    password: str | None = None
    tls: ClusterTLS | None = None


@attrs.frozen
class Config:
    """
    The whole configuration of a balancer.

    @ivar maxconn: client connections open at once over every listener;
        at the limit the listeners stop accepting until one closes (0: no
        limit).
    @ivar resolvers: the DNS servers discovery asks, as C{(host, port)};
        none: the system's (C{/etc/resolv.conf}).
    @ivar workers: processes that serve the listeners (1: this process
        alone, unless C{master}; more: a master and that many workers, see
        L{lbtwist.workers}).
    @ivar master: run a master and its workers even with one worker (for
        upgrades that drop nothing, on a one-core machine too).
    @ivar workerWatchdog: seconds a worker may go without a heartbeat
        before its master kills and replaces it as wedged (0: never).
    @ivar extensions: the modules imported before the rest was checked
        (see L{lbtwist.extend}).
    """

    listeners: tuple[ListenerConfig, ...]
    pools: tuple[PoolConfig, ...]
    statusInterval: float = 30.0
    admin: str | None = None
    adminToken: str | None = None
    state: str | None = None
    maxconn: int = 0
    resolvers: tuple[tuple[str, int], ...] = ()
    workers: int = 1
    master: bool = False
    workerWatchdog: float = WORKER_WATCHDOG
    cluster: ClusterConfig | None = None
    extensions: tuple[str, ...] = ()

    @property
    def runsMaster(self) -> bool:
        """
        Whether a master process runs, with C{workers} worker processes.
        """
        return self.master or self.workers > 1

    def pool(self, name: str) -> PoolConfig:
        """
        The pool of that name.

        @raise KeyError: there is none.
        """
        for p in self.pools:
            if p.name == name:
                return p
        raise KeyError(name)


# -- validation helpers ------------------------------------------------------


def _describe(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return f"a {type(value).__name__}"


# HAProxy's and nginx's spellings of keys, with what each is here: the
# first of its keys that the mapping allows is named (C{server} is a
# backend's endpoint in a backend, the response timeout in C{timeouts}).
_FOREIGN_KEYS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "balance": (("HAProxy's balance", "policy", ""),),
    "slowstart": (("HAProxy's slowstart", "slow-start", ""),),
    "bind": (("HAProxy's bind", "listen", ""),),
    "default_backend": (("HAProxy's default_backend", "pool", ""),),
    "use_backend": (("HAProxy's use_backend", "pool", ""),),
    "backend": (("HAProxy's backend", "pool", ""),),
    "upstream": (("nginx's upstream", "pool", ""),),
    "servers": (("HAProxy's server lines", "backends", ""),),
    "server": (("HAProxy's server ADDRESS", "endpoint", " (or host and port)"),
               ("HAProxy's timeout server", "response",
                " (and idle, for a body or tunnel that stalls)")),
    "client": (("HAProxy's timeout client", "idle", " (and request, for a request head)"),),
    "timeout": (("HAProxy's timeout", "timeouts", ""),),
    "inter": (("HAProxy's check inter", "interval", ""),),
    "uri": (("HAProxy's option httpchk URI", "path", ""),),
    "expect": (("HAProxy's http-check expect status", "expect-status", ""),),
    "check": (("HAProxy's check", "health", " (checks are on unless it is set to tcp)"),),
    "httpchk": (("HAProxy's option httpchk", "health", ""),),
    "cookie": (("HAProxy's cookie NAME insert", "sticky", " ({cookie: NAME})"),),
    "expires": (("nginx's sticky cookie expires", "max-age", ""),),
    "maxlife": (("HAProxy's cookie maxlife", "max-age", " (the browser's lifetime of it)"),),
    "attr": (("HAProxy's cookie attr", "samesite", " (and max-age)"),),
    "max_conns": (("nginx's max_conns", "maxconn", ""),),
    "ssl": (("HAProxy's bind ... ssl", "tls", ""),),
    "crt": (("HAProxy's crt", "cert", " (and key: the same file if it holds the key)"),
            ("HAProxy's crt", "certificates", ""),),
    "path_beg": (("HAProxy's path_beg", "path-prefix", ""),),
    "path_reg": (("HAProxy's path_reg", "path-regex", ""),),
    "hdr": (("HAProxy's hdr", "header", ""),),
    "src": (("HAProxy's src", "source", ""),),
    "replace-path": (("HAProxy's replace-path", "strip-prefix", " (or prefix)"),),
    "add_header": (("nginx's add_header", "response-headers", " ({set: {NAME: VALUE}})"),),
    "http-response": (("HAProxy's http-response set-header", "response-headers", ""),),
    "http-request": (("HAProxy's http-request set-header", "request-headers", ""),),
}


# The same for the names of policies and check kinds.
_FOREIGN_NAMES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "least_conn": (("nginx's least_conn", "leastconn", ""),),
    "ip_hash": (("nginx's ip_hash", "source", ""),),
    "static-rr": (("HAProxy's static-rr", "roundrobin", ""),),
    "random_two": (("nginx's random two", "p2c", ""),),
    "httpchk": (("HAProxy's option httpchk", "http", ""),),
    "tcp-check": (("HAProxy's option tcp-check", "tcp", ""),),
}


def _spellingHint(word: str, allowed: Sequence[str],
                  foreign: Mapping[str, tuple[tuple[str, str, str], ...]] = _FOREIGN_KEYS) -> str:
    """
    What to add to the refusal of an unknown key or name C{word}: what
    HAProxy's or nginx's spelling of it is here (from C{foreign}), else the
    allowed one it is nearest (another case, underscores for dashes, a slip
    of one or two letters), else nothing.
    """
    for spelling in (word, word.replace("-", "_"), word.replace("_", "-")):
        for whose, ours, more in foreign.get(spelling, ()):
            if ours in allowed:
                return f"; {whose} is {ours} here{more}"
    normal = word.lower().replace("_", "-")
    near = [normal] if normal in allowed else difflib.get_close_matches(
        normal, list(allowed), n=1, cutoff=0.8)
    return f"; did you mean {near[0]}?" if near else ""


def _mapping(data: object, path: str, allowed: Sequence[str]) -> Mapping[str, Any]:
    if not isinstance(data, Mapping):
        raise ConfigError(path, f"expected a mapping, got {_describe(data)}")
    for key in data:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(
                where, f"unknown key (expected one of: {', '.join(allowed)})"
                       f"{_spellingHint(str(key), allowed)}"
            )
    return data


def _integer(value: object, path: str, low: int, high: int) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(
            path, f"expected an integer {low}-{high}, got {_describe(value)}"
        )
    return value


def parseSeconds(value: object, path: str, low: float = 0.001, high: float = 86400.0) -> float:
    """
    A duration: a number of seconds, or a string with a unit (C{250ms}, C{5s}, C{2m},
    C{1h}, C{7d}).
    """
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)?\s*", value)
        if m:
            scale = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}[
                m.group(2) or "s"]
            value = float(m.group(1)) * scale
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
        low <= value <= high
    ):
        raise ConfigError(
            path,
            f"expected a duration from {low:g} to {high:g} seconds "
            f"(a number, or a string like '250ms' or '5s'), got {_describe(value)}",
        )
    return float(value)


def _string(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(path, f"expected a non-empty string, got {_describe(value)}")
    return value


def _choice(value: object, path: str, choices: Sequence[str], extensible: bool = False) -> str:
    """
    One of C{choices}; those of a registry of L{lbtwist.extend} are
    C{extensible}, which the error says.
    """
    if value not in choices:
        more = " (or one a module in extensions registers)" if extensible else ""
        hint = _spellingHint(value, choices, _FOREIGN_NAMES) if isinstance(value, str) else ""
        raise ConfigError(
            path, f"expected one of {', '.join(choices)}{more}, got {_describe(value)}{hint}"
        )
    assert isinstance(value, str)
    return value


def _name(value: object, path: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(
            path,
            "expected a name of 1-64 letters, digits or '_.:-[]', "
            f"got {_describe(value)}",
        )
    return value


def _list(value: object, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise ConfigError(path, f"expected a list, got {_describe(value)}")
    return value


def _unique(items: Sequence[T], key: Callable[[T], str], path: str, what: str) -> None:
    seen: dict[str, int] = {}
    for i, item in enumerate(items):
        k = key(item)
        if k in seen:
            raise ConfigError(
                f"{path}[{i}].name", f"duplicate {what} name {k!r} (also at [{seen[k]}])"
            )
        seen[k] = i


# What a route that needs HTTP on a tcp listener is told.
_GIVE_HTTP = " (give the listener mode: http; tcp is the default)"

_LISTEN_ADDRESS = re.compile(r"^(?:(\*|\[[0-9A-Fa-f:.]*\]|[A-Za-z0-9.]*):)?([0-9]{1,5})$")


def _listenAddress(text: str) -> str | None:
    """
    The server endpoint string for an address written as HAProxy's C{bind}
    or nginx's C{listen} write it (C{127.0.0.1:8443}, C{:80}, C{*:80},
    C{[::1]:443}, C{8080}), or L{None} if C{text} is no such address.
    """
    m = _LISTEN_ADDRESS.match(text)
    if m is None:
        return None
    host, port = m.groups()
    if host in (None, "", "*", "0.0.0.0"):
        return f"tcp:{port}"
    if host.startswith("["):
        address = host[1:-1]
        if address in ("", "::"):
            return f"tcp6:{port}"
        return f"tcp6:{port}:interface={address.replace(':', chr(92) + ':')}"
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return None  # udp:53 is no address of HAProxy's
    return f"tcp:{port}:interface={host}"


def validateEndpoint(value: object, path: str, server: bool) -> str:
    """
    Check the shape of a Twisted endpoint string (see L{lbtwist.endpoints}).

    A client endpoint needs a host and a port (TCP, TLS) or a path (UNIX); a
    server endpoint needs a port or a path.  Twisted's parsers read it whole
    when the configuration is checked (L{lbtwist.checks}); this catches the
    common mistakes early with the key path attached.
    """
    text = _string(value, path)
    try:
        endpoint = parseEndpoint(text, server)
    except ValueError:
        written = _listenAddress(text) if server else None
        raise ConfigError(
            path,
            f"expected an endpoint string starting with one of "
            f"{', '.join(t + ':' for t in ENDPOINT_TYPES)}"
            f"{'' if server else ', or HOST:PORT'}, got {text!r}"
            f"{'' if written is None else f'; write {written}'}",
        ) from None
    if endpoint.kind == "systemd":
        # A socket systemd passes (socket activation), as Twisted names it.
        if not server:
            raise ConfigError(path, f"systemd: endpoints are for listeners, got {text!r}")
        if endpoint.option("domain") is None or (
                endpoint.option("name") is None) == (endpoint.option("index") is None):
            raise ConfigError(path, "a systemd listener needs domain= (INET, INET6 or UNIX) "
                                    f"and one of name= or index=, got {text!r}")
        return text
    if endpoint.kind == "unix":
        if not endpoint.path:
            raise ConfigError(path, f"a unix endpoint needs a path, got {text!r}")
        return text
    port = endpoint.port
    if server:
        if port is None:
            raise ConfigError(path, f"a {endpoint.kind} listener needs a port, got {text!r}")
        _integer(port, path + " (port)", 0, 65535)
    else:
        if "host=[" in text:
            # Twisted's parser splits an unescaped IPv6 address at its colons.
            raise ConfigError(path, "an IPv6 address in an endpoint string has its colons "
                                    "escaped (tcp:host=\\:\\:1:port=80), or give [::1]:80; "
                                    f"got {text!r}")
        if not endpoint.host or port is None:
            raise ConfigError(
                path, f"a {endpoint.kind} backend needs a host and a port, got {text!r}"
            )
        _integer(port, path + " (port)", 1, 65535)
    return text


# -- the sections ------------------------------------------------------------

_HEALTH_KEYS = (
    "interval", "timeout", "rise", "fall", "type", "method", "path", "host",
    "expect-status", "expect-body", "expect-body-regex", "expect-header",
)


def _statusRanges(value: object, path: str) -> tuple[tuple[int, int], ...]:
    """
    Parse C{"200-399"}, C{"200,204"} or a single integer into status ranges.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    text = _string(value, path)
    ranges = []
    for part in text.split(","):
        m = re.fullmatch(r"\s*([1-5][0-9][0-9])\s*(?:-\s*([1-5][0-9][0-9]))?\s*", part)
        if not m:
            raise ConfigError(
                path, f"expected statuses like '200-399' or '200,204', got {text!r}"
            )
        low = int(m.group(1))
        high = int(m.group(2) or low)
        if high < low:
            raise ConfigError(path, f"empty status range {part.strip()!r}")
        ranges.append((low, high))
    return tuple(ranges)


def parseHealth(data: object, path: str, base: HealthCheck) -> HealthCheck:
    """
    Overlay the health-check settings in C{data} on C{base}.
    """
    if data is None:
        return base
    d = _mapping(data, path, _HEALTH_KEYS)
    changes: dict[str, Any] = {}
    if "interval" in d:
        changes["interval"] = parseSeconds(d["interval"], f"{path}.interval", 0.01)
    if "timeout" in d:
        changes["timeout"] = parseSeconds(d["timeout"], f"{path}.timeout", 0.001)
    if "rise" in d:
        changes["rise"] = _integer(d["rise"], f"{path}.rise", 1, 100)
    if "fall" in d:
        changes["fall"] = _integer(d["fall"], f"{path}.fall", 1, 100)
    if "type" in d:
        changes["kind"] = _choice(d["type"], f"{path}.type", CHECKS.names(), True)
    if "method" in d:
        changes["method"] = _choice(
            d["method"], f"{path}.method", ("GET", "HEAD", "OPTIONS")
        )
    if "path" in d:
        p = _string(d["path"], f"{path}.path")
        if not p.startswith("/") or any(c in p for c in " \r\n\0"):
            raise ConfigError(
                f"{path}.path", f"expected a path starting with '/', got {p!r}"
            )
        changes["path"] = p
    if "host" in d:
        changes["host"] = _string(d["host"], f"{path}.host")
    if "expect-status" in d:
        changes["expectStatus"] = _statusRanges(
            d["expect-status"], f"{path}.expect-status"
        )
    if "expect-body" in d:
        changes["expectBody"] = _string(d["expect-body"], f"{path}.expect-body")
    if "expect-body-regex" in d:
        changes["expectBodyRegex"] = re.compile(
            _regex(d["expect-body-regex"], f"{path}.expect-body-regex").encode("utf-8"))
    if "expect-header" in d:
        changes["expectHeaders"] = _expectHeaders(d["expect-header"], f"{path}.expect-header")
    check = attrs.evolve(base, **changes)
    if check.method == "HEAD" and (check.expectBody is not None or check.expectBodyRegex is not None):
        # Named where this block made the clash: its body expectation, or
        # its method over a block (the pool's) that expects a body.
        key = next((k for k in ("expect-body", "expect-body-regex") if k in d), "method")
        raise ConfigError(f"{path}.{key}", "a HEAD check's response has no body to look in; "
                                           "use method: GET (or drop the body expectation)")
    return check


def _expectHeaders(value: object, path: str) -> tuple[tuple[str, str], ...]:
    """
    C{{NAME: VALUE, ...}}: header names (tokens, each once whatever its
    case) and the values they must carry.
    """
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(path, f"expected a mapping of header names to values, like "
                                f"{{X-Ready: yes}}, got {_describe(value)}")
    headers: list[tuple[str, str]] = []
    for name, wanted in value.items():
        if not isinstance(name, str) or not _TOKEN.fullmatch(name):
            raise ConfigError(path, f"expected a header name, got {_describe(name)}")
        if any(name.lower() == seen.lower() for seen, _ in headers):
            raise ConfigError(f"{path}.{name}", "the header is named twice (names are "
                                                "case-insensitive)")
        text = _headerValue(wanted, f"{path}.{name}").strip()
        if not text:
            raise ConfigError(f"{path}.{name}", "expected the value the header must have, "
                                                "got an empty one")
        if "," in text:
            # The probe compares each element alone: this would never match.
            raise ConfigError(f"{path}.{name}", "expected one element of the header's value "
                                                "(each comma-separated element is compared "
                                                f"alone), got {text!r}")
        headers.append((name, text))
    return tuple(headers)


_BACKEND_TLS_KEYS = ("ca", "verify-host", "client-cert", "client-key", "verify", "sni")

# What an ssl: backend endpoint is refused with: Twisted's parser builds it
# with no trust roots and no host name, so it verifies nothing.
_SSL_BACKEND = (
    "an ssl: backend endpoint does not verify the backend's certificate; "
    "give it as tcp:host=HOST:port=PORT with tls: {ca: FILE} (or ca: system) to verify it, "
    "or with tls: {verify: false} to opt out explicitly"
)


# The C{directory} of a definition sent through the admin API: it has no
# configuration file for a relative file name to be relative to (and the
# balancer's working directory is nothing its sender can know).
NO_DIRECTORY = ""


def configFile(value: object, path: str, directory: str | None) -> str:
    """
    A file the configuration names (a certificate, key, CA or htpasswd
    file, an access log, the state file): a relative name is relative to
    C{directory}, the configuration file's, so that it is the same file
    whatever the working directory (under twistd, a .tac or systemd); with
    no directory (a configuration not read from a file), as given; with
    L{NO_DIRECTORY}, refused.
    """
    name = _string(value, path)
    if directory is None or os.path.isabs(name):
        return name
    if directory == NO_DIRECTORY:
        raise ConfigError(path, f"{name!r} is a relative file name, and a definition sent "
                                "through the admin API has no configuration file for it to be "
                                "relative to: give an absolute path")
    return os.path.join(directory, name)


def _hostName(value: object, path: str) -> str:
    """
    A host name or an IP address, as a certificate names it.
    """
    name = _string(value, path)
    if not isHostName(name):
        raise ConfigError(path, f"expected a host name like 'app.internal', got {name!r}")
    return name.rstrip(".")


def parseBackendTLS(data: object, path: str, base: BackendTLS | None,
                    directory: str | None = None) -> BackendTLS | None:
    """
    Overlay a C{tls} block (of a pool, or of a backend over its pool's) on
    C{base}.  C{ca} is a file or C{system}; C{client-cert} and
    C{client-key} go together; C{verify: false} is the explicit opt-out.

    @param directory: what relative file names are relative to (see
        L{configFile}).
    """
    if data is None:
        return base
    d = _mapping(data, path, _BACKEND_TLS_KEYS)
    changes: dict[str, Any] = {}
    if "ca" in d:
        ca = _string(d["ca"], f"{path}.ca")
        changes["ca"] = ca if ca == "system" else configFile(ca, f"{path}.ca", directory)
    if "verify-host" in d:
        changes["verifyHost"] = _hostName(d["verify-host"], f"{path}.verify-host")
    if "sni" in d:
        changes["sni"] = _hostName(d["sni"], f"{path}.sni")
    for key, attribute in (("client-cert", "clientCert"), ("client-key", "clientKey")):
        if key in d:
            changes[attribute] = configFile(d[key], f"{path}.{key}", directory)
    if "verify" in d:
        changes["verify"] = _boolean(d["verify"], f"{path}.verify")
        if not changes["verify"] and ("ca" in d or "verify-host" in d):
            raise ConfigError(f"{path}.verify",
                              "verify: false with ca or verify-host: give one or the other")
    tls = attrs.evolve(base or BackendTLS(), **changes)
    if (tls.clientCert is None) != (tls.clientKey is None):
        missing = "client-key" if tls.clientKey is None else "client-cert"
        raise ConfigError(f"{path}.{missing}", "client-cert and client-key go together")
    return tls


def _backendHost(value: object, path: str) -> str:
    """
    A backend's C{host} as an endpoint string writes it: a host name, an
    IPv4 address, or an IPv6 address bare or in brackets as a URL writes it
    (C{::1}, C{[::1]}), its colons escaped.
    """
    host = _string(value, path)
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        address = ipaddress.ip_address(bare)
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv6Address):
        return bare.replace(":", r"\:")
    if bare == host and isHostName(host):
        return host
    raise ConfigError(path, "expected a host name or an IP address, like 'app.internal', "
                            f"'10.0.0.5', '::1' or '[::1]', got {host!r}")


def parseBackend(
    data: object, path: str, health: HealthCheck, tls: BackendTLS | None = None,
    directory: str | None = None,
) -> BackendConfig:
    """
    One backend: C{name}, and either C{endpoint} or C{host} and C{port};
    C{tls} is its pool's TLS block, which its own C{tls} keys overlay (its
    files relative to C{directory}, see L{configFile}).
    """
    if isinstance(data, str):
        data = {"endpoint": expandAddress(data)}
    d = _mapping(
        data, path, ("name", "endpoint", "host", "port", "weight", "health", "maxconn",
                     "backup", "slow-start", "tls")
    )
    if "endpoint" in d:
        if "host" in d or "port" in d:
            raise ConfigError(path, "give either endpoint, or host and port, not both")
        given = d["endpoint"]
        endpoint = validateEndpoint(
            expandAddress(given) if isinstance(given, str) else given,
            f"{path}.endpoint",
            server=False,
        )
    elif "host" in d or "port" in d:
        host = _backendHost(d.get("host"), f"{path}.host")
        port = _integer(d.get("port"), f"{path}.port", 1, 65535)
        endpoint = f"tcp:host={host}:port={port}"
    else:
        raise ConfigError(path, "a backend needs an endpoint, or a host and a port")
    kind = parseEndpoint(endpoint, False).kind
    if kind == "ssl":
        raise ConfigError(f"{path}.endpoint", _SSL_BACKEND)
    tls = parseBackendTLS(d.get("tls"), f"{path}.tls", tls, directory)
    if tls is not None and kind == "tls":
        raise ConfigError(f"{path}.tls", "a tls: endpoint speaks TLS itself; give the backend "
                                         "a tcp: endpoint for its tls block")
    name = (
        _name(d["name"], f"{path}.name") if "name" in d else parseEndpoint(endpoint, False).defaultName
    )
    weight = _integer(d.get("weight", 1), f"{path}.weight", 0, MAX_WEIGHT)
    return BackendConfig(
        name=name,
        endpoint=endpoint,
        weight=weight,
        health=parseHealth(d.get("health"), f"{path}.health", health),
        maxconn=_integer(d.get("maxconn", 0), f"{path}.maxconn", 0, MAX_CONNECTIONS),
        backup=_boolean(d.get("backup", False), f"{path}.backup"),
        slowStart=(
            None if "slow-start" not in d
            else parseSlowStart(d["slow-start"], f"{path}.slow-start")
        ),
        tls=tls,
    )


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {_describe(value)}")
    return value


def parseSlowStart(value: object, path: str) -> float:
    """
    A slow-start duration: 0 (off) up to an hour.
    """
    return parseSeconds(value, path, 0.0, 3600.0)


_POOL_KEYS = (
    "policy", "retries", "timeouts", "health", "backends", "http", "sticky",
    "proxy-protocol", "queue", "access-log", "retry-on", "retry-budget", "outlier",
    "all-backups", "slow-start", "discovery", "tls", "protocol",
)

# The most a maxconn may say: far above what one process can hold open.
MAX_CONNECTIONS = 10_000_000


def parseQueue(data: object, path: str) -> Queue:
    """
    The C{queue:} mapping of a pool: C{size} and C{timeout}.
    """
    if data is None:
        return Queue()
    d = _mapping(data, path, ("size", "timeout"))
    changes: dict[str, Any] = {}
    if "size" in d:
        changes["size"] = _integer(d["size"], f"{path}.size", 0, MAX_CONNECTIONS)
    if "timeout" in d:
        changes["timeout"] = parseSeconds(d["timeout"], f"{path}.timeout")
    return Queue(**changes)


def parseOutlier(data: object, path: str) -> Outlier | None:
    """
    The C{outlier:} mapping of a pool (every key optional; an empty
    mapping turns ejection on with the defaults), or L{None} without it.
    """
    if data is None:
        return None
    d = _mapping(data, path, (
        "consecutive-5xx", "consecutive-gateway-errors", "base-ejection",
        "max-ejection", "max-ejected-percent",
    ))
    changes: dict[str, Any] = {}
    for key, name in (("consecutive-5xx", "consecutive5xx"),
                      ("consecutive-gateway-errors", "consecutiveGatewayErrors")):
        if key in d:
            changes[name] = _integer(d[key], f"{path}.{key}", 0, 1000)
    for key, name in (("base-ejection", "baseEjection"), ("max-ejection", "maxEjection")):
        if key in d:
            changes[name] = parseSeconds(d[key], f"{path}.{key}")
    if "max-ejected-percent" in d:
        changes["maxEjectedPercent"] = _integer(
            d["max-ejected-percent"], f"{path}.max-ejected-percent", 0, 100)
    outlier = Outlier(**changes)
    if outlier.maxEjection < outlier.baseEjection:
        raise ConfigError(
            f"{path}.max-ejection",
            f"{outlier.maxEjection:g}s is shorter than base-ejection "
            f"({outlier.baseEjection:g}s)",
        )
    return outlier


# The keys of a sticky cookie's attributes (beside C{cookie: NAME}).
_COOKIE_KEYS = ("samesite", "max-age", "domain", "path", "httponly", "secure")
# What may go in a cookie's Path (RFC 6265 5.2.4: no control characters,
# no ';'; no spaces, which no path needs).
_COOKIE_PATH = re.compile(r"/[!-:<-~]*")


def parseSticky(data: object, path: str) -> Sticky | None:
    """
    C{source}, or a mapping C{{cookie: NAME}} (with the cookie's
    attributes, L{_COOKIE_KEYS}, beside it) or C{{header: NAME}}.
    """
    if data is None:
        return None
    if data == "source":
        return Sticky("source")
    if isinstance(data, str):
        shape = f" (write {{{data}: NAME}})" if data in ("cookie", "header") else ""
        raise ConfigError(path, "expected {cookie: NAME}, {header: NAME} or source, "
                                f"got {data!r}{shape}")
    d = _mapping(data, path, ("cookie", "header", "source", *_COOKIE_KEYS))
    kinds = [k for k in d if k in ("cookie", "header", "source")]
    if len(kinds) != 1:
        raise ConfigError(path, "expected exactly one of cookie, header, source")
    kind = kinds[0]
    attributes = {k: v for k, v in d.items() if k in _COOKIE_KEYS}
    if kind != "cookie" and attributes:
        key = next(iter(attributes))
        raise ConfigError(f"{path}.{key}", f"a cookie attribute, but this pool's sticky "
                                           f"is {kind}: no cookie is set")
    if kind == "source":
        return Sticky("source")
    name = _string(d[kind], f"{path}.{kind}")
    if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}", name):
        raise ConfigError(f"{path}.{kind}", f"expected a {kind} name token, got {name!r}")
    return Sticky(kind, name, **_cookieAttributes(attributes, path))


def _cookieAttributes(d: Mapping[str, Any], path: str) -> dict[str, Any]:
    """
    The L{Sticky} fields a sticky cookie's attribute keys give.
    """
    changes: dict[str, Any] = {}
    if "samesite" in d:
        value = d["samesite"]
        spelled = {s.lower(): s for s in SAME_SITE}
        if not isinstance(value, str) or value.lower() not in spelled:
            raise ConfigError(f"{path}.samesite",
                              f"expected Strict, Lax or None, got {_describe(value)}")
        changes["sameSite"] = spelled[value.lower()]
    if "max-age" in d:
        try:
            seconds = parseSeconds(d["max-age"], f"{path}.max-age", 1, MAX_COOKIE_AGE)
        except ConfigError:
            raise ConfigError(f"{path}.max-age", "expected a lifetime from 1s to 400d (a number "
                                                 "of seconds, or a string like '12h' or '30d'), "
                                                 f"got {_describe(d['max-age'])}") from None
        if seconds != int(seconds):
            raise ConfigError(f"{path}.max-age",
                              f"expected whole seconds (a cookie's Max-Age), got {seconds:g}")
        changes["maxAge"] = int(seconds)
    if "domain" in d:
        domain = _string(d["domain"], f"{path}.domain")
        if not _DNS_NAME.fullmatch(domain.removeprefix(".")) or domain.endswith("."):
            raise ConfigError(f"{path}.domain",
                              f"expected a domain name like 'example.com', got {domain!r}")
        changes["domain"] = domain
    if "path" in d:
        cookiePath = _string(d["path"], f"{path}.path")
        if not _COOKIE_PATH.fullmatch(cookiePath):
            raise ConfigError(f"{path}.path", "expected a path starting with '/', without "
                                              f"spaces, control characters or ';', got "
                                              f"{cookiePath!r}")
        changes["path"] = cookiePath
    for key, field in (("httponly", "httpOnly"), ("secure", "secure")):
        if key in d:
            changes[field] = _boolean(d[key], f"{path}.{key}")
    if changes.get("sameSite") == "None" and changes.get("secure") is False:
        raise ConfigError(f"{path}.secure", "samesite None needs Secure (browsers refuse "
                                            "the cookie without it): drop secure: false, "
                                            "or choose Lax or Strict")
    return changes


_HTTP_KEYS = (
    "max-header-size", "max-request-line", "max-response-header-size", "host-header",
    "keepalive", "error-limit", "access-log", "abort-on-close",
)


# Words that read as a boolean. YAML already turns the unquoted ones
# (yes, on, off, True...) into booleans; quoted, or sent as JSON strings
# through the admin API, they would otherwise name a file: refused as
# ambiguous rather than guessed.
_BOOLEAN_WORDS = frozenset({
    "true", "false", "yes", "no", "on", "off", "y", "n", "enable", "enabled",
    "disable", "disabled", "none", "null", "0", "1",
})


def parseAccessLogSink(value: Mapping[str, Any], path: str,
                       directory: str | None = None) -> AccessLogSink:
    """
    C{{sink: NAME, OPTION: VALUE, ...}}: a sink registered in
    L{lbtwist.extend.ACCESS_LOGS}, and its options (strings, numbers or
    booleans; an option named C{path} is a file name, relative to
    C{directory} as in L{configFile}; the C{file} sink's C{format} is one of
    L{lbtwist.extend.FILE_FORMATS}).
    """
    name = _choice(value.get("sink"), f"{path}.sink", ACCESS_LOGS.names(), True)
    options: list[tuple[str, str | int | float | bool]] = []
    for key in sorted(k for k in value if k != "sink"):
        option = value[key]
        if not isinstance(key, str) or not isinstance(option, (str, int, float, bool)):
            raise ConfigError(f"{path}.{key}",
                              f"expected a string, number or boolean, got {_describe(option)}")
        if key == "path":
            option = configFile(option, f"{path}.path", directory)
        elif key == "format" and name == "file":
            option = _choice(option, f"{path}.format", FILE_FORMATS)
            if option == "text":
                # The default: the same sink (one file, one buffer) as
                # access-log: PATH.
                continue
        options.append((key, option))
    return AccessLogSink(name, tuple(options))


def parseAccessLog(value: object, path: str,
                   directory: str | None = None) -> bool | str | AccessLogSink:
    """
    C{false}, C{true} (structured events, to twistd's log), the path of
    a file the lines go straight to (C{access.log} and C{./access.log} are
    the same file), or a sink by name (see L{parseAccessLogSink}). A string
    that reads as a boolean (C{"yes"}, C{"off"}) is refused as ambiguous;
    C{./yes} names such a file.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, Mapping):
        return parseAccessLogSink(value, path, directory)
    if isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS:
        raise ConfigError(
            path,
            f"{value!r} reads as a boolean but is a string: write true or false "
            f"unquoted, or ./{value} for a file of that name",
        )
    if isinstance(value, str) and value.strip() and "\0" not in value:
        return value
    raise ConfigError(
        path,
        "expected true, false, a file path (like access.log, relative to the "
        "configuration file's directory) or {sink: NAME, ...}, "
        f"got {_describe(value)}",
    )


def parseHTTP(data: object, path: str) -> HTTPSettings:
    """
    The C{http:} mapping of a pool.
    """
    if data is None:
        return HTTPSettings()
    d = _mapping(data, path, _HTTP_KEYS)
    changes: dict[str, Any] = {}
    if "max-header-size" in d:
        changes["maxHeaderSize"] = _integer(
            d["max-header-size"], f"{path}.max-header-size", 256, 1048576
        )
    if "max-request-line" in d:
        changes["maxRequestLine"] = _integer(
            d["max-request-line"], f"{path}.max-request-line", 64, 1048576
        )
    if "max-response-header-size" in d:
        changes["maxResponseHeaderSize"] = _integer(
            d["max-response-header-size"], f"{path}.max-response-header-size", 256, 16777216
        )
    if "host-header" in d:
        host = _string(d["host-header"], f"{path}.host-header")
        if any(c in host for c in " \t\r\n\0/"):
            raise ConfigError(f"{path}.host-header", f"expected a host name, got {host!r}")
        changes["hostHeader"] = host
    if "abort-on-close" in d:
        value = d["abort-on-close"]
        if not isinstance(value, bool):
            raise ConfigError(f"{path}.abort-on-close",
                              f"expected true or false, got {_describe(value)}")
        changes["abortOnClose"] = value
    if "error-limit" in d:
        changes["errorLimit"] = _integer(d["error-limit"], f"{path}.error-limit", 0, 1000)
    if "keepalive" in d:
        kpath = f"{path}.keepalive"
        k = _mapping(d["keepalive"], kpath, ("idle-pool", "idle-timeout", "max-requests"))
        kchanges: dict[str, Any] = {}
        if "idle-pool" in k:
            kchanges["idlePool"] = _integer(k["idle-pool"], f"{kpath}.idle-pool", 0, 100000)
        if "idle-timeout" in k:
            kchanges["idleTimeout"] = parseSeconds(k["idle-timeout"], f"{kpath}.idle-timeout")
        if "max-requests" in k:
            kchanges["maxRequests"] = _integer(
                k["max-requests"], f"{kpath}.max-requests", 1, 10**9
            )
        changes["keepAlive"] = KeepAlive(**kchanges)
    return HTTPSettings(**changes)


def _speakingH2(backend: BackendConfig) -> BackendConfig:
    """
    C{backend} as an h2 pool's: its TLS (if any) offers h2 alone by ALPN,
    so that a backend that does not pick it fails its connection rather
    than speak HTTP/1.1; its http checks speak HTTP/2.
    """
    tls = backend.tls
    return attrs.evolve(
        backend, tls=attrs.evolve(tls, alpn=("h2",)) if tls is not None else None,
        health=attrs.evolve(backend.health, h2=True))


def underPool(pool: PoolConfig, backend: BackendConfig) -> BackendConfig:
    """
    C{backend} as a backend of C{pool}, as the file's backends are made: one
    given at run time (the admin API, the state file, a registry) with no
    C{tls} of its own speaks TLS as the pool says, never plain TCP to a
    pool's TLS backends; an h2 pool's speaks h2 (L{_speakingH2}).
    """
    if backend.tls is None and pool.tls is not None:
        backend = attrs.evolve(backend, tls=pool.tls)
    return _speakingH2(backend) if pool.protocol == "h2" else backend


def parsePool(name: str, data: object, path: str, directory: str | None = None) -> PoolConfig:
    """
    One pool of backends; the files its C{tls} blocks name are relative to
    C{directory} (see L{configFile}).
    """
    d = _mapping(data, path, _POOL_KEYS)
    health = parseHealth(d.get("health"), f"{path}.health", HealthCheck())
    tls = parseBackendTLS(d.get("tls"), f"{path}.tls", None, directory)
    protocol = _choice(d.get("protocol", "http/1.1"), f"{path}.protocol", BACKEND_PROTOCOLS)
    if protocol == "h2":
        # TLS backends of an h2 pool offer h2 alone: one that does not
        # pick it fails its connection rather than speak HTTP/1.1; their
        # http checks speak HTTP/2 too.  The pool's own settings say so as
        # well: the backends it finds at run time (discovery, the workers'
        # registry) are made from them.
        tls = attrs.evolve(tls, alpn=("h2",)) if tls is not None else None
        health = attrs.evolve(health, h2=True)
    backends = tuple(
        parseBackend(b, f"{path}.backends[{i}]", health, tls, directory)
        for i, b in enumerate(_list(d.get("backends", []), f"{path}.backends"))
    )
    _unique(backends, lambda b: b.name, f"{path}.backends", "backend")
    if protocol == "h2":
        # (A backend's own tls block, over none of the pool's, too.)
        backends = tuple(_speakingH2(b) for b in backends)
    http = parseHTTP(d.get("http"), f"{path}.http")
    # One line per connection (TCP) or request (HTTP): a pool's setting,
    # which http.access-log (its older place) also gives.
    accessLog: bool | str | AccessLogSink = False
    httpData = d.get("http")
    if isinstance(httpData, dict) and "access-log" in httpData:
        if "access-log" in d:
            raise ConfigError(f"{path}.http.access-log",
                              f"give the access log once, as {path}.access-log")
        accessLog = parseAccessLog(httpData["access-log"], f"{path}.http.access-log", directory)
    elif "access-log" in d:
        accessLog = parseAccessLog(d["access-log"], f"{path}.access-log", directory)
    if isinstance(accessLog, str):
        accessLog = configFile(accessLog, f"{path}.access-log", directory)
    t = _mapping(d.get("timeouts", {}), f"{path}.timeouts",
                 ("connect", "idle", "response", "request"))
    timeouts = Timeouts(
        **{
            key: parseSeconds(t[key], f"{path}.timeouts.{key}")
            for key in ("connect", "idle", "response", "request")
            if key in t
        }
    )
    return PoolConfig(
        name=name,
        backends=backends,
        policy=_choice(d.get("policy", "roundrobin"), f"{path}.policy", POLICIES.names(),
                       True),
        retries=_integer(d.get("retries", 2), f"{path}.retries", 0, 100),
        timeouts=timeouts,
        health=health,
        http=http,
        sticky=parseSticky(d.get("sticky"), f"{path}.sticky"),
        proxyProtocol=(
            None if d.get("proxy-protocol") is None
            else _choice(d["proxy-protocol"], f"{path}.proxy-protocol", ("v1", "v2"))
        ),
        queue=parseQueue(d.get("queue"), f"{path}.queue"),
        accessLog=accessLog,
        retryOn=(
            parseRetryOn(d["retry-on"], f"{path}.retry-on") if "retry-on" in d
            else DEFAULT_RETRY_ON
        ),
        retryBudget=parseRetryBudget(d.get("retry-budget"), f"{path}.retry-budget"),
        outlier=parseOutlier(d.get("outlier"), f"{path}.outlier"),
        allBackups=_boolean(d.get("all-backups", False), f"{path}.all-backups"),
        slowStart=parseSlowStart(d.get("slow-start", 0), f"{path}.slow-start"),
        discovery=parseDiscovery(d.get("discovery"), f"{path}.discovery"),
        tls=tls,
        protocol=protocol,
    )


# A DNS name: dot-separated labels of letters, digits, '-' and '_' (SRV
# names start with '_service._proto'), 253 characters at most.
_DNS_NAME = re.compile(r"(?=.{1,253}\.?$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)*"
                       r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.?")


def isHostName(name: str) -> bool:
    """
    Whether C{name} is a DNS name or an IP address (a backend's host).
    """
    if _DNS_NAME.fullmatch(name):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _dnsName(value: object, path: str) -> str:
    name = _string(value, path)
    if not _DNS_NAME.fullmatch(name):
        raise ConfigError(path, f"expected a DNS name like 'app.internal', got {name!r}")
    return name.rstrip(".")


def parseDiscovery(data: object, path: str) -> Discovery | None:
    """
    The C{discovery:} mapping of a pool: C{{dns: NAME, port: PORT}} or
    C{{srv: NAME}}, each with an optional C{interval}; or L{None}.
    """
    if data is None:
        return None
    d = _mapping(data, path, ("dns", "srv", "port", "interval"))
    kinds = [k for k in ("dns", "srv") if k in d]
    if len(kinds) != 1:
        raise ConfigError(path, "expected exactly one of dns, srv")
    (kind,) = kinds
    name = _dnsName(d[kind], f"{path}.{kind}")
    interval = parseSeconds(d.get("interval", 10.0), f"{path}.interval", 0.01, 86400.0)
    if kind == "srv":
        if "port" in d:
            raise ConfigError(f"{path}.port", "an SRV record gives the port; leave port out")
        return Discovery("srv", name, None, interval)
    if "port" not in d:
        raise ConfigError(f"{path}.port", "required with dns (the backends' port)")
    return Discovery("dns", name, _integer(d["port"], f"{path}.port", 1, 65535), interval)


def parseResolvers(data: object, path: str) -> tuple[tuple[str, int], ...]:
    """
    The top-level C{resolvers:} list of C{HOST:PORT} strings (C{[::1]:53}
    for IPv6); empty when left out, for the system's.
    """
    if data is None:
        return ()
    resolvers = []
    for i, item in enumerate(_list(data, path)):
        text = _string(item, f"{path}[{i}]")
        m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:([0-9]+)|([^:\[\]\s]+):([0-9]+)", text)
        if not m:
            raise ConfigError(f"{path}[{i}]",
                              f"expected HOST:PORT like '127.0.0.1:53', got {text!r}")
        host = m.group(1) or m.group(3)
        port = _integer(m.group(2) or m.group(4), f"{path}[{i}]", 1, 65535)
        resolvers.append((host, port))
    if not resolvers:
        raise ConfigError(path, "expected at least one HOST:PORT (leave it out for the system's)")
    return tuple(resolvers)


def parseRetryOn(data: object, path: str) -> tuple[str | int, ...]:
    """
    The C{retry-on} list: causes by name, statuses as numbers.
    """
    items: list[str | int] = []
    for i, item in enumerate(_list(data, path)):
        if isinstance(item, int) and not isinstance(item, bool):
            if item not in RETRY_STATUSES:
                raise ConfigError(f"{path}[{i}]", f"expected one of "
                                  f"{', '.join(map(str, RETRY_STATUSES))}, got {item}")
        elif item not in RETRY_CAUSES:
            raise ConfigError(f"{path}[{i}]", f"expected one of {', '.join(RETRY_CAUSES)} "
                              f"or a status {', '.join(map(str, RETRY_STATUSES))}, "
                              f"got {_describe(item)}")
        if item in items:
            raise ConfigError(f"{path}[{i}]", f"{item} is given twice")
        items.append(item)
    return tuple(items)


def parseRetryBudget(data: object, path: str) -> RetryBudget | None:
    """
    The C{retry-budget} mapping: C{percent} and C{min-concurrency}.
    """
    if data is None:
        return None
    d = _mapping(data, path, ("percent", "min-concurrency"))
    changes: dict[str, Any] = {}
    if "percent" in d:
        value = d["percent"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value <= 100
        ):
            raise ConfigError(f"{path}.percent",
                              f"expected a number 0-100, got {_describe(value)}")
        changes["percent"] = float(value)
    if "min-concurrency" in d:
        changes["minConcurrency"] = _integer(
            d["min-concurrency"], f"{path}.min-concurrency", 0, MAX_CONNECTIONS)
    return RetryBudget(**changes)


def parseCertificates(data: object, path: str,
                      directory: str | None = None) -> tuple[CertificateFiles, ...]:
    """
    A listener's C{certificates}: a non-empty list of C{{cert: FILE, key: FILE}}
    (relative to C{directory}, see L{configFile}).
    """
    items = _list(data, path)
    if not items:
        raise ConfigError(path, "expected at least one {cert: FILE, key: FILE}")
    files = []
    for j, item in enumerate(items):
        where = f"{path}[{j}]"
        d = _mapping(item, where, ("cert", "key"))
        for key in ("cert", "key"):
            if key not in d:
                raise ConfigError(f"{where}.{key}", "required (a PEM file; the cert file "
                                                    "again if it holds the key too, as "
                                                    "HAProxy's crt file does)")
        files.append(CertificateFiles(configFile(d["cert"], f"{where}.cert", directory),
                                      configFile(d["key"], f"{where}.key", directory)))
    return tuple(files)


def parseALPN(data: object, path: str, mode: str) -> tuple[str, ...]:
    """
    A listener's C{alpn}: protocol names, most preferred first, each one
    the mode can speak.
    """
    names: list[str] = []
    for j, item in enumerate(_list(data, path)):
        where = f"{path}[{j}]"
        name = _string(item, where)
        if not name.isascii() or not name.isprintable() or len(name) > 255:
            raise ConfigError(where, f"expected a protocol name like 'h2' or 'http/1.1', got {name!r}")
        if name in names:
            raise ConfigError(where, f"{name!r} is listed twice")
        if mode == "http" and name not in HTTP_MODE_ALPN:
            raise ConfigError(
                where,
                f"http mode speaks {', '.join(HTTP_MODE_ALPN)} only, not {name!r} "
                "(offer it from a tcp mode listener)",
            )
        names.append(name)
    return tuple(names)


_HTTP2_KEYS = (
    "cleartext", "max-concurrent-streams", "max-header-list-size", "initial-window-size",
    "connection-window-size", "max-resets", "max-control-frames", "abuse-window",
)


def parseHTTP2(data: object, path: str, mode: str) -> HTTP2Settings:
    """
    A listener's C{http2}: C{true} (h2c by prior knowledge, default limits),
    C{false}, or a mapping of limits (C{cleartext} says whether h2c is
    spoken too; a mapping without it means yes).
    """
    if data is None or data is False:
        return HTTP2Settings()
    if mode != "http":
        raise ConfigError(path, "HTTP/2 needs mode: http")
    if data is True:
        return HTTP2Settings(cleartext=True)
    d = _mapping(data, path, _HTTP2_KEYS)
    changes: dict[str, Any] = {"cleartext": True}
    if "cleartext" in d:
        if not isinstance(d["cleartext"], bool):
            raise ConfigError(f"{path}.cleartext",
                              f"expected true or false, got {_describe(d['cleartext'])}")
        changes["cleartext"] = d["cleartext"]
    # (key, attribute, lowest, highest): RFC 9113's bounds for the windows.
    for key, name, low, high in (
        ("max-concurrent-streams", "maxConcurrentStreams", 1, 10000),
        ("max-header-list-size", "maxHeaderListSize", 1024, 1048576),
        ("initial-window-size", "initialWindowSize", 1024, 2**31 - 1),
        ("connection-window-size", "connectionWindowSize", 65535, 2**31 - 1),
        ("max-resets", "maxResets", 1, 10**6),
        ("max-control-frames", "maxControlFrames", 1, 10**6),
    ):
        if key in d:
            changes[name] = _integer(d[key], f"{path}.{key}", low, high)
    if "abuse-window" in d:
        changes["abuseWindow"] = parseSeconds(d["abuse-window"], f"{path}.abuse-window")
    return HTTP2Settings(**changes)


def parseListenerTLS(data: object, path: str, endpoint: str, mode: str,
                     directory: str | None = None) -> ListenerTLS:
    """
    Validate a listener's C{tls} block: C{certificates}, C{alpn},
    C{min-version}, C{ciphers} and C{handshake-timeout}.  An C{ssl:} listener may have one (its
    own certificate is then the default); a C{tcp:} listener needs
    C{certificates} in it, and lbtwist then terminates TLS itself.
    """
    kind = parseEndpoint(endpoint, True).kind
    d = _mapping(data, path, ("certificates", "alpn", "min-version", "ciphers",
                              "handshake-timeout"))
    if kind != "ssl":
        if kind not in ("tcp", "tcp6"):
            raise ConfigError(path, f"only a tcp: or ssl: listener has TLS settings, not {endpoint!r}")
        if "certificates" not in d:
            raise ConfigError(f"{path}.certificates",
                              f"required on a {kind}: listener (or listen on ssl:)")
    changes: dict[str, Any] = {}
    if "certificates" in d:
        changes["certificates"] = parseCertificates(d["certificates"], f"{path}.certificates",
                                                    directory)
    if "alpn" in d:
        changes["alpn"] = parseALPN(d["alpn"], f"{path}.alpn", mode)
    if "min-version" in d:
        value = d["min-version"]
        changes["minVersion"] = _choice(
            str(value) if isinstance(value, float) else value, f"{path}.min-version",
            TLS_VERSIONS)
    if "ciphers" in d:
        changes["ciphers"] = _string(d["ciphers"], f"{path}.ciphers")
    if "handshake-timeout" in d:
        changes["handshakeTimeout"] = parseSeconds(d["handshake-timeout"],
                                                   f"{path}.handshake-timeout")
    return ListenerTLS(**changes)


# -- routes ------------------------------------------------------------------

_HTTP_MATCH_KEYS = ("host", "path", "path-prefix", "path-regex", "method", "header",
                    "query", "source")
_TCP_MATCH_KEYS = ("sni", "source")
_ACTIONS = ("pool", "pools", "redirect", "respond")
_HTTP_ROUTE_KEYS = ("name", "match", *_ACTIONS, "rewrite", "timeouts", "retries",
                    "rate-limit", "auth", "request-headers", "response-headers")
_TCP_ROUTE_KEYS = ("name", "match", "pool", "pools", "timeouts", "retries")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_HOST_PATTERN = re.compile(r"(\*\.)?[a-z0-9_]([a-z0-9_.-]{0,252})")
MAX_ROUTE_WEIGHT = 1_000_000


def _oneOrList(value: object, path: str) -> list[tuple[str, object]]:
    """
    A value given as one item or a list of items, with each item's key path.
    """
    if isinstance(value, list):
        if not value:
            raise ConfigError(path, "expected at least one value")
        return [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    return [(path, value)]


def _anyMapping(value: object, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a mapping, got {_describe(value)}")
    return value


def _headerName(value: object, path: str) -> str:
    name = _string(value, path)
    if not _TOKEN.fullmatch(name):
        raise ConfigError(path, f"expected a header name, got {name!r}")
    return name


# Headers that frame a message or belong to one connection: the balancer
# writes them itself, so a route may not set, add or remove them (a length
# changed beside a body read by the old one would desynchronise a
# connection: a smuggled request to the backend, a split response).
_FRAMING_HEADERS = frozenset((
    "content-length", "transfer-encoding", "connection", "keep-alive", "te", "trailer",
    "upgrade", "proxy-connection",
))


def _changeableHeader(value: object, path: str) -> str:
    name = _headerName(value, path)
    if name.lower() in _FRAMING_HEADERS:
        raise ConfigError(path, f"{name} may not be changed: the balancer frames each "
                                f"message itself")
    return name


def _headerValue(value: object, path: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a string, got {_describe(value)}")
    if any(c in value for c in "\r\n\0"):
        raise ConfigError(path, "a header value may not hold CR, LF or NUL")
    return value


def _regex(value: object, path: str) -> str:
    text = _string(value, path)
    try:
        re.compile(text)
        re.compile(text.encode("utf-8"))  # the router matches bytes
    except re.error as e:
        raise ConfigError(path, f"the regular expression {text!r} does not compile: {e}") from None
    return text


def _urlPath(value: object, path: str) -> str:
    text = _string(value, path)
    if not text.startswith("/") or any(c in text for c in " \t\r\n\0?#"):
        raise ConfigError(path, f"expected a path starting with '/', got {text!r}")
    return text


def _hostPatterns(value: object, path: str, what: str) -> tuple[str, ...]:
    hosts = []
    for where, item in _oneOrList(value, path):
        host = _string(item, where).lower().rstrip(".")
        if not _HOST_PATTERN.fullmatch(host):
            raise ConfigError(where, f"expected a {what} like 'app.example.com' or "
                                     f"'*.example.com' (no port), got {item!r}")
        hosts.append(host)
    return tuple(hosts)


def _sources(value: object, path: str) -> tuple[str, ...]:
    nets = []
    for where, item in _oneOrList(value, path):
        try:
            nets.append(str(ipaddress.ip_network(_string(item, where), strict=False)))
        except ValueError:
            raise ConfigError(where, f"expected an address or CIDR like '10.0.0.0/8', "
                                     f"got {_describe(item)}") from None
    return tuple(nets)


def _headerMatches(value: object, path: str) -> tuple[HeaderMatch, ...]:
    d = _anyMapping(value, path)
    found = []
    for name, cond in d.items():
        where = f"{path}.{name}"
        lower = _headerName(name, where).lower()
        if isinstance(cond, Mapping):
            c = _mapping(cond, where, ("regex", "present"))
            if len(c) != 1:
                raise ConfigError(where, "expected one of regex, present")
            if "regex" in c:
                found.append(HeaderMatch(lower, regex=_regex(c["regex"], f"{where}.regex")))
            else:
                found.append(HeaderMatch(lower, present=_boolean(c["present"],
                                                                 f"{where}.present")))
        else:
            found.append(HeaderMatch(lower, value=_headerValue(cond, where)))
    return tuple(found)


def parseMatch(data: object, path: str, mode: str) -> Match:
    """
    A route's C{match:} mapping, for a listener of C{mode}.
    """
    if data is None:
        return Match()
    allowed = _HTTP_MATCH_KEYS if mode == "http" else _TCP_MATCH_KEYS
    if isinstance(data, Mapping):
        for key in data:
            if key == "sni" and mode == "http":
                raise ConfigError(f"{path}.sni", "an http listener routes on the Host "
                                  "header: use host")
            if key in _HTTP_MATCH_KEYS and key not in _TCP_MATCH_KEYS and mode == "tcp":
                raise ConfigError(f"{path}.{key}", "a tcp listener sees no HTTP request: "
                                  f"it matches on sni and source only{_GIVE_HTTP}")
    d = _mapping(data, path, allowed)
    changes: dict[str, Any] = {}
    if "host" in d:
        changes["hosts"] = _hostPatterns(d["host"], f"{path}.host", "host name")
    if "sni" in d:
        changes["sni"] = _hostPatterns(d["sni"], f"{path}.sni", "server name")
    if "path" in d:
        changes["path"] = _urlPath(d["path"], f"{path}.path")
    if "path-prefix" in d:
        changes["pathPrefix"] = _urlPath(d["path-prefix"], f"{path}.path-prefix")
    if "path-regex" in d:
        changes["pathRegex"] = _regex(d["path-regex"], f"{path}.path-regex")
    if "method" in d:
        methods = []
        for where, item in _oneOrList(d["method"], f"{path}.method"):
            method = _string(item, where)
            if not _TOKEN.fullmatch(method):
                raise ConfigError(where, f"expected a method like GET, got {method!r}")
            methods.append(method.upper())
        changes["methods"] = tuple(methods)
    if "header" in d:
        changes["headers"] = _headerMatches(d["header"], f"{path}.header")
    if "query" in d:
        q = _anyMapping(d["query"], f"{path}.query")
        changes["query"] = tuple(
            (_string(k, f"{path}.query"), _headerValue(v, f"{path}.query.{k}"))
            for k, v in q.items())
    if "source" in d:
        changes["sources"] = _sources(d["source"], f"{path}.source")
    return Match(**changes)


def _redirect(data: object, path: str) -> Redirect:
    d = _mapping(data, path, ("location", "scheme", "code", "keep-path", "port"))
    given = [k for k in ("location", "scheme") if k in d]
    if len(given) != 1:
        raise ConfigError(path, "expected exactly one of location, scheme")
    code = _integer(d.get("code", DEFAULT_REDIRECT_CODE), f"{path}.code", 300, 399)
    if code not in REDIRECT_CODES:
        raise ConfigError(f"{path}.code",
                          f"expected one of {', '.join(map(str, REDIRECT_CODES))}, got {code}")
    keepPath = _boolean(d.get("keep-path", False), f"{path}.keep-path")
    if "scheme" in d:
        if "keep-path" in d:
            raise ConfigError(f"{path}.keep-path",
                              "a scheme redirect always keeps the path and query")
        port = d.get("port")
        return Redirect(scheme=_choice(d["scheme"], f"{path}.scheme", ("http", "https")),
                        code=code,
                        port=None if port is None else _integer(port, f"{path}.port", 1, 65535))
    if "port" in d:
        raise ConfigError(f"{path}.port", "only a scheme redirect takes a port (a location "
                                          "writes its own)")
    location = _string(d["location"], f"{path}.location")
    if any(c in location for c in " \t\r\n\0") or not re.match(r"(https?://[^/?#]+|/)",
                                                               location):
        raise ConfigError(f"{path}.location", "expected a URL like "
                          f"'https://new.example.com/' or a path like '/new/', got {location!r}")
    if keepPath and any(c in location for c in "?#"):
        raise ConfigError(f"{path}.keep-path", "the request's path cannot be appended "
                          f"to a location with a query or fragment ({location!r})")
    return Redirect(location=location, code=code, keepPath=keepPath)


def _respond(data: object, path: str) -> Respond:
    d = _mapping(data, path, ("status", "body", "headers"))
    if "status" not in d:
        raise ConfigError(f"{path}.status", "required (an HTTP status like 403)")
    body = d.get("body", "")
    if not isinstance(body, str):
        raise ConfigError(f"{path}.body", f"expected a string, got {_describe(body)}")
    h = _anyMapping(d.get("headers", {}), f"{path}.headers")
    return Respond(
        status=_integer(d["status"], f"{path}.status", 200, 599),
        body=body,
        headers=tuple((_changeableHeader(k, f"{path}.headers.{k}"),
                       _headerValue(v, f"{path}.headers.{k}")) for k, v in h.items()),
    )


def _pools(data: object, path: str, poolNames: Sequence[str]) -> tuple[tuple[str, int], ...]:
    if not isinstance(data, Mapping) or not data:
        raise ConfigError(path, f"expected a mapping of pool names to weights, "
                                f"got {_describe(data)}")
    split = []
    for name, weight in data.items():
        where = f"{path}.{name}"
        if name not in poolNames:
            raise ConfigError(where, f"no pool named {name!r}")
        split.append((name, _integer(weight, where, 0, MAX_ROUTE_WEIGHT)))
    if sum(w for _, w in split) == 0:
        raise ConfigError(path, "the weights add up to 0: no pool would be chosen")
    return tuple(split)


def _rewrite(data: object, path: str) -> Rewrite:
    d = _mapping(data, path, ("strip-prefix", "prefix"))
    if not d:
        raise ConfigError(path, "expected strip-prefix or prefix")
    strip = None
    if "strip-prefix" in d:
        strip = _urlPath(d["strip-prefix"], f"{path}.strip-prefix").rstrip("/")
        if not strip:
            raise ConfigError(f"{path}.strip-prefix", "stripping '/' changes nothing")
    prefix = None
    if "prefix" in d:
        prefix = _urlPath(d["prefix"], f"{path}.prefix").rstrip("/") or None
    return Rewrite(stripPrefix=strip, prefix=prefix)


def _rateLimit(data: object, path: str) -> RateLimit:
    d = _mapping(data, path, ("key", "rate", "burst", "max-keys"))
    if "rate" not in d:
        raise ConfigError(f"{path}.rate", "required (like '100/s' or '30/m')")
    try:
        rate = parseRate(_string(d["rate"], f"{path}.rate"))
    except ValueError as e:
        raise ConfigError(f"{path}.rate", str(e)) from None
    key = _string(d.get("key", "source"), f"{path}.key")
    header = None
    if key.startswith("header:"):
        header = _headerName(key[len("header:"):], f"{path}.key").lower()
        key = "header"
    elif key != "source":
        raise ConfigError(f"{path}.key", f"expected source or header:NAME, got {key!r}")
    return RateLimit(
        rate=rate,
        burst=_integer(d.get("burst", max(1, math.ceil(rate))), f"{path}.burst", 1, 10**9),
        key=key,
        header=header,
        maxKeys=_integer(d.get("max-keys", 100000), f"{path}.max-keys", 1, 10**8),
    )


def _auth(data: object, path: str, readFile: Callable[[str], bytes],
          directory: str | None) -> BasicAuth:
    d = _mapping(data, path, ("basic",))
    if "basic" not in d:
        raise ConfigError(f"{path}.basic", "required (realm and users)")
    b = _mapping(d["basic"], f"{path}.basic", ("realm", "users"))
    realm = _headerValue(b.get("realm", "lbtwist"), f"{path}.basic.realm")
    if '"' in realm or "\\" in realm:
        raise ConfigError(f"{path}.basic.realm", "a realm may not hold '\"' or '\\'")
    usersFile = configFile(b.get("users"), f"{path}.basic.users", directory)
    try:
        data = readFile(usersFile)
    except OSError as e:
        raise ConfigError(f"{path}.basic.users",
                          f"cannot read htpasswd file {usersFile!r}: {e.strerror}") from None
    try:
        users = parseHtpasswd(data, usersFile)
    except ValueError as e:
        raise ConfigError(f"{path}.basic.users", str(e)) from None
    if not users:
        raise ConfigError(f"{path}.basic.users", f"htpasswd file {usersFile!r} has no users")
    return BasicAuth(realm=realm, usersFile=usersFile, users=users)


def _headerActions(data: object, path: str) -> HeaderActions:
    d = _mapping(data, path, ("set", "add", "remove"))

    def pairs(key: str) -> tuple[tuple[str, str], ...]:
        m = d.get(key) or {}
        if not isinstance(m, Mapping):
            raise ConfigError(f"{path}.{key}", f"expected a mapping, got {_describe(m)}")
        return tuple((_changeableHeader(k, f"{path}.{key}.{k}"),
                      _headerValue(v, f"{path}.{key}.{k}")) for k, v in m.items())

    remove = d.get("remove") or []
    return HeaderActions(
        set=pairs("set"), add=pairs("add"),
        remove=tuple(_changeableHeader(n, where)
                     for where, n in _oneOrList(remove, f"{path}.remove")) if remove else (),
    )


def _requestHeaderActions(data: object, path: str) -> HeaderActions:
    """
    A route's C{request-headers}: as any header actions, and Host may be
    set (replaced) but not removed or added (an HTTP/1.1 request has
    exactly one).
    """
    actions = _headerActions(data, path)
    for key, names in (("add", [n for n, _ in actions.add]), ("remove", actions.remove)):
        for name in names:
            if name.lower() == "host":
                raise ConfigError(f"{path}.{key}", "a request has exactly one Host: set it "
                                  "to replace it, never remove or add one")
    return actions


def parseListenerTimeouts(data: object, path: str) -> TimeoutOverrides:
    """
    A listener's C{timeouts}: its clients' C{idle} and C{request}, each
    optional (its pool's where not given).  The backend side's timeouts
    (C{connect}, C{response}) are its pools' and routes', and are refused
    here saying so.
    """
    if data is None:
        return TimeoutOverrides()
    if isinstance(data, Mapping):
        for key in ("connect", "response"):
            if key in data:
                raise ConfigError(f"{path}.{key}", "a backend-side timeout: give it in the "
                                                   "pool's timeouts (or a route's); a "
                                                   "listener's are its clients' idle and "
                                                   "request")
    t = _mapping(data, path, ("idle", "request"))
    return TimeoutOverrides(**{k: parseSeconds(t[k], f"{path}.{k}")
                               for k in ("idle", "request") if k in t})


def _routeTimeouts(data: object, path: str, mode: str) -> TimeoutOverrides:
    # HTTP: what a request meets on its way to a backend (the client
    # connection's own timeouts are its listener's pool's).
    keys = ("connect", "response") if mode == "http" else ("connect", "idle")
    t = _mapping(data, path, keys)
    return TimeoutOverrides(**{k: parseSeconds(t[k], f"{path}.{k}") for k in keys if k in t})


# The parts of a route parsed from their value and key path alone, by key,
# with the Route attribute each gives.
_ROUTE_PARTS: dict[str, tuple[str, Callable[[object, str], object]]] = {
    "redirect": ("redirect", _redirect),
    "respond": ("respond", _respond),
    "rewrite": ("rewrite", _rewrite),
    "rate-limit": ("rateLimit", _rateLimit),
    "request-headers": ("requestHeaders", _requestHeaderActions),
    "response-headers": ("responseHeaders", _headerActions),
}


def parseRoute(data: object, path: str, mode: str, poolNames: Sequence[str],
               readFile: Callable[[str], bytes], name: str | None = None,
               directory: str | None = None) -> Route:
    """
    One route of a listener of C{mode}; C{name} is its name unless it gives
    one.  A default route (C{name} given) has no C{match}.
    """
    allowed = _HTTP_ROUTE_KEYS if mode == "http" else _TCP_ROUTE_KEYS
    if isinstance(data, Mapping) and mode == "tcp":
        for key in data:
            if key in _HTTP_ROUTE_KEYS and key not in allowed:
                raise ConfigError(f"{path}.{key}", "only an http listener has this; a tcp "
                                  f"route sends to pool or pools{_GIVE_HTTP}")
    d = _mapping(data, path, allowed if name is None else tuple(
        k for k in allowed if k != "match"))
    actions = [k for k in _ACTIONS if k in d]
    if len(actions) != 1:
        raise ConfigError(path, f"expected exactly one of {', '.join(a for a in _ACTIONS if a in allowed)}"
                          + (f" (got {', '.join(actions)})" if actions else ""))
    changes: dict[str, Any] = {}
    if "pool" in d:
        pool = _string(d["pool"], f"{path}.pool")
        if pool not in poolNames:
            raise ConfigError(f"{path}.pool", f"no pool named {pool!r}")
        changes["pool"] = pool
    if "pools" in d:
        changes["pools"] = _pools(d["pools"], f"{path}.pools", poolNames)
    for key, (attr, parse) in _ROUTE_PARTS.items():
        if key in d:
            changes[attr] = parse(d[key], f"{path}.{key}")
    if "timeouts" in d:
        changes["timeouts"] = _routeTimeouts(d["timeouts"], f"{path}.timeouts", mode)
    if "retries" in d:
        changes["retries"] = _integer(d["retries"], f"{path}.retries", 0, 100)
    if "auth" in d:
        changes["auth"] = _auth(d["auth"], f"{path}.auth", readFile, directory)
    return Route(
        name=_name(d.get("name", name), f"{path}.name"),
        match=parseMatch(d.get("match"), f"{path}.match", mode),
        **changes,
    )


def readFileBytes(path: str) -> bytes:
    """
    The whole content of a file (htpasswd files are read with this unless
    another reader is given).
    """
    with open(path, "rb") as f:
        return f.read()


def parseRoutes(data: object, path: str, mode: str, poolNames: Sequence[str],
                readFile: Callable[[str], bytes] = readFileBytes,
                directory: str | None = None) -> tuple[Route, ...]:
    """
    A listener's C{routes:} list, checked whole: names unique, no route
    after one that matches everything (it could never be taken).  The admin
    API validates a replacement list with this too.
    """
    routes: list[Route] = []
    for i, item in enumerate(_list(data, path)):
        where = f"{path}[{i}]"
        if isinstance(item, Mapping) and "name" not in item:
            item = {**item, "name": f"route{i}"}
        route = parseRoute(item, where, mode, poolNames, readFile, directory=directory)
        if route.name == "default":
            raise ConfigError(f"{where}.name", "'default' is the default route's name (in the "
                                               "counters and metrics): choose another")
        for j, earlier in enumerate(routes):
            if earlier.match.catchAll:
                raise ConfigError(where, f"unreachable: route {earlier.name!r} at "
                                  f"{path}[{j}] matches every request before it")
        routes.append(route)
    _unique(routes, lambda r: r.name, path, "route")
    return tuple(routes)


def parseEtcdURL(value: object, path: str) -> str:
    """
    One etcd member's client URL: C{http://} or C{https://}, a host and a
    port, no path.
    """
    url = _string(value, path).rstrip("/")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        port = None
        parts = urlsplit("")
    if parts.scheme not in ("http", "https") or not parts.hostname or port is None or (
            parts.path or parts.query or parts.fragment):
        raise ConfigError(path, f"expected an etcd URL like http://127.0.0.1:2379, got {url!r}")
    return url


def parseCluster(data: object, path: str, directory: str | None = None) -> ClusterConfig | None:
    """
    The C{cluster} block: C{etcd} (a URL or a list of them), C{prefix},
    C{username}, C{password}, C{tls} (C{ca}, C{cert}, C{key}: files
    relative to C{directory}, see L{configFile}).
    """
    if data is None:
        return None
    d = _mapping(data, path, ("etcd", "prefix", "username", "password", "tls"))
    given = d.get("etcd")
    items = [given] if isinstance(given, str) else _list(given, f"{path}.etcd")
    if not items:
        raise ConfigError(f"{path}.etcd", "at least one etcd URL is needed")
    urls = tuple(parseEtcdURL(u, f"{path}.etcd[{i}]") for i, u in enumerate(items))
    prefix = _string(d.get("prefix", "/lbtwist"), f"{path}.prefix").rstrip("/")
    if not prefix.startswith("/") or "//" in prefix:
        raise ConfigError(f"{path}.prefix", f"expected a key prefix like /lbtwist/prod, got {prefix!r}")
    username = None if d.get("username") is None else _string(d["username"], f"{path}.username")
    password = None if d.get("password") is None else _string(d["password"], f"{path}.password")
    if (username is None) != (password is None):
        raise ConfigError(path, "give both username and password, or neither")
    tls = None
    if d.get("tls") is not None:
        t = _mapping(d["tls"], f"{path}.tls", ("ca", "cert", "key"))
        files = {k: configFile(t[k], f"{path}.tls.{k}", directory)
                 for k in ("ca", "cert", "key") if k in t}
        if ("cert" in files) != ("key" in files):
            raise ConfigError(f"{path}.tls", "give both cert and key, or neither")
        tls = ClusterTLS(**files)
    if tls is None and any(u.startswith("https:") for u in urls):
        tls = ClusterTLS()
    return ClusterConfig(urls, prefix, username, password, tls)


TOP_KEYS = (
    "listeners", "pools", "status-interval", "admin", "admin-token", "state", "maxconn",
    "resolvers", "workers", "master", "worker-watchdog", "cluster", "extensions",
)


def importExtensions(value: object, path: str = "extensions",
                     load: Callable[[str], object] = importlib.import_module) -> tuple[str, ...]:
    """
    Import each module of the C{extensions} list (dotted names), so that
    what they register with L{lbtwist.extend} is known to the rest of the
    configuration.  A module imported already is not imported again: a
    changed module takes a restart.

    @param load: imports a module by name.
    @raise ConfigError: the list is not a list of module names, or a module
        cannot be imported (naming it and why).
    """
    if value is None:
        return ()
    names = []
    for i, item in enumerate(_list(value, path)):
        where = f"{path}[{i}]"
        name = _string(item, where)
        if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
            raise ConfigError(where, f"expected a dotted module name, got {name!r}")
        try:
            load(name)
        except Exception as e:
            raise ConfigError(where, f"cannot import {name}: {type(e).__name__}: {e}") from e
        names.append(name)
    return tuple(names)


def _listenerRoutes(ld: Mapping[str, Any], path: str, mode: str, poolNames: Sequence[str],
                    readFile: Callable[[str], bytes],
                    directory: str | None) -> tuple[tuple[Route, ...], Route | None]:
    """
    A listener's routes and default route; a C{pool:} beside C{routes:} is
    the default route's pool.
    """
    routes = (parseRoutes(ld["routes"], f"{path}.routes", mode, poolNames, readFile, directory)
              if "routes" in ld else ())
    if "default-route" in ld:
        if "pool" in ld:
            raise ConfigError(f"{path}.default-route",
                              "give pool or default-route, not both (pool is the default "
                              "route's pool)")
        if routes and routes[-1].match.catchAll:
            raise ConfigError(f"{path}.default-route", f"unreachable: route "
                              f"{routes[-1].name!r} matches every request before it")
        return routes, parseRoute(ld["default-route"], f"{path}.default-route", mode,
                                  poolNames, readFile, name="default", directory=directory)
    if routes and "pool" in ld:
        pool = _string(ld["pool"], f"{path}.pool")
        if pool not in poolNames:
            raise ConfigError(f"{path}.pool", f"no pool named {pool!r}")
        return routes, Route(name="default", pool=pool)
    return routes, None


def _oneFormatPerFile(pools: Sequence[PoolConfig]) -> None:
    """
    Refuse pools whose C{file} access-log sinks write one file in two
    formats: their lines would be mixed in it, and no log shipper could
    read it.

    @raise ConfigError: naming the second pool's C{access-log.format}.
    """
    formats: dict[object, tuple[str, object]] = {}
    for p in pools:
        sink = p.accessLogSink
        if sink is None or sink.name != "file":
            continue
        options = dict(sink.options)
        path, format = options.get("path"), options.get("format", "text")
        first, firstFormat = formats.setdefault(path, (p.name, format))
        if firstFormat != format:
            raise ConfigError(f"pools.{p.name}.access-log.format",
                              f"pool {first} writes {path} as {firstFormat}, this pool as "
                              f"{format}: one file takes one format")


def parseConfig(data: object, readFile: Callable[[str], bytes] = readFileBytes,
                directory: str | None = None) -> Config:
    """
    Validate plain data (as loaded from YAML) into a L{Config}.

    @param readFile: reads a file a route names (an htpasswd file).
    @param directory: the configuration file's directory, which the
        relative names of the files it reads are relative to (see
        L{configFile}); L{None} keeps them as given.
    @raise ConfigError: naming the first problem found.
    """
    if data is None:
        data = {}
    elif isinstance(data, Mapping):
        # The user's own (YAML anchors to merge), as docker-compose's are.
        data = {k: v for k, v in data.items() if not (isinstance(k, str) and k.startswith("x-"))}
    d = _mapping(data, "", TOP_KEYS)
    # First: the modules register the names the rest may use.
    extensions = importExtensions(d.get("extensions"))
    poolData = d.get("pools", {})
    if not isinstance(poolData, Mapping):
        raise ConfigError("pools", f"expected a mapping of pool names, got {_describe(poolData)}")
    pools = tuple(
        parsePool(_name(name, f"pools.{name}"), body, f"pools.{name}", directory)
        for name, body in poolData.items()
    )
    if not pools:
        raise ConfigError("pools", "at least one pool is needed")
    _oneFormatPerFile(pools)
    listeners = []
    for i, item in enumerate(_list(d.get("listeners", []), "listeners")):
        path = f"listeners[{i}]"
        ld = _mapping(item, path, ("name", "listen", "pool", "mode", "tls", "routes",
                                   "default-route", "http2", "timeouts"))
        endpoint = validateEndpoint(ld.get("listen"), f"{path}.listen", server=True)
        mode = _choice(ld.get("mode", "tcp"), f"{path}.mode", MODES)
        poolNames = [p.name for p in pools]
        routes, defaultRoute = _listenerRoutes(ld, path, mode, poolNames, readFile, directory)
        if "pool" in ld:
            poolName = _string(ld["pool"], f"{path}.pool")
        elif defaultRoute is not None:
            poolName = defaultRoute.poolNames[0] if defaultRoute.poolNames else poolNames[0]
        elif routes:
            named = [n for r in routes for n in r.poolNames]
            poolName = named[0] if named else poolNames[0]
        elif len(pools) == 1:
            poolName = pools[0].name
        else:
            raise ConfigError(f"{path}.pool", "required when there are several pools")
        if poolName not in poolNames:
            raise ConfigError(f"{path}.pool", f"no pool named {poolName!r}")
        listeners.append(
            ListenerConfig(
                name=_name(ld.get("name", f"listener{i}"), f"{path}.name"),
                endpoint=endpoint,
                pool=poolName,
                mode=mode,
                routes=routes,
                defaultRoute=defaultRoute,
                tls=(
                    None if ld.get("tls") is None
                    else parseListenerTLS(ld["tls"], f"{path}.tls", endpoint, mode, directory)
                ),
                http2=parseHTTP2(ld.get("http2"), f"{path}.http2", mode),
                timeouts=parseListenerTimeouts(ld.get("timeouts"), f"{path}.timeouts"),
            )
        )
    if not listeners:
        raise ConfigError("listeners", "at least one listener is needed")
    _unique(listeners, lambda x: x.name, "listeners", "listener")
    byName = {p.name: p for p in pools}
    for listener in listeners:
        used = {listener.pool} | {
            n for r in (*listener.routes, *filter(None, [listener.defaultRoute]))
            for n in r.poolNames}
        for poolName in sorted(used):
            sticky = byName[poolName].sticky
            if listener.mode == "tcp" and sticky is not None:
                # A TCP listener sees no cookies or headers: say so rather
                # than ignore the setting.
                raise ConfigError(
                    f"pools.{poolName}.sticky",
                    f"{sticky.kind} stickiness needs http mode, but listener "
                    f"{listener.name!r} is tcp (for TCP, use policy: source)",
                )
    admin = d.get("admin")
    return Config(
        listeners=tuple(listeners),
        pools=pools,
        statusInterval=parseSeconds(
            d.get("status-interval", 30.0), "status-interval", 0.1, 86400.0
        ),
        admin=None if admin is None else validateEndpoint(admin, "admin", server=True),
        adminToken=(
            None if d.get("admin-token") is None
            else _string(d["admin-token"], "admin-token")
        ),
        state=None if d.get("state") is None else configFile(d["state"], "state", directory),
        maxconn=_integer(d.get("maxconn", 0), "maxconn", 0, MAX_CONNECTIONS),
        resolvers=parseResolvers(d.get("resolvers"), "resolvers"),
        workers=parseWorkers(d.get("workers", 1), "workers"),
        master=parseMaster(d.get("master", False), "master"),
        workerWatchdog=parseWatchdog(d.get("worker-watchdog", WORKER_WATCHDOG),
                                     "worker-watchdog"),
        cluster=parseCluster(d.get("cluster"), "cluster", directory),
        extensions=extensions,
    )


MAX_WORKERS = 1024
# The worker watchdog's bounds: under two seconds, a worker's ordinary
# stalls (a garbage collection, a large registry applied) would look wedged,
# and a worker adopted across a re-exec beats only every second.
MIN_WATCHDOG = 2.0
MAX_WATCHDOG = 3600.0


def parseMaster(value: object, path: str) -> bool:
    """
    Whether to run a master with a single worker: C{true} or C{false}.

    @raise ConfigError: anything else.
    """
    if not isinstance(value, bool):
        raise ConfigError(path, f"expected true or false, got {_describe(value)}")
    return value


def parseWatchdog(value: object, path: str) -> float:
    """
    Seconds a worker may go without a heartbeat before its master kills
    it as wedged: a duration (C{10s}, C{2m}), or C{off} (YAML's C{false})
    or C{0} for never.

    @raise ConfigError: anything else.
    """
    if value is False or (isinstance(value, str) and value.strip() in ("off", "0")) or (
            isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0):
        return 0.0
    problem = ConfigError(path, f"expected a duration from {MIN_WATCHDOG:g} to {MAX_WATCHDOG:g} "
                                f"seconds (like 10s or 2m) or off, got {_describe(value)}")
    if value is True or (isinstance(value, str) and value.strip().lower() in _BOOLEAN_WORDS):
        raise problem
    try:
        return parseSeconds(value, path, MIN_WATCHDOG, MAX_WATCHDOG)
    except ConfigError:
        raise problem from None


def usableCPUs() -> int:
    """
    The CPUs this process may run on (its affinity mask, as C{taskset} and
    container limits set it), else every CPU the machine has.
    """
    affinity = getattr(os, "sched_getaffinity", None)
    if affinity is not None:
        return len(affinity(0))
    return os.cpu_count() or 1


def parseWorkers(value: object, path: str, cpus: Callable[[], int] = usableCPUs) -> int:
    """
    The number of worker processes: a positive integer, or C{auto} for
    one per usable CPU.

    @raise ConfigError: anything else (0, negative, not a number).
    """
    if value == "auto":
        return cpus()
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_WORKERS:
        raise ConfigError(
            path, f"expected a number of processes 1-{MAX_WORKERS} or auto, got {_describe(value)}")
    return value


class _StrictLoader(yaml.SafeLoader):
    """
    YAML's safe loader, refusing a key given twice in one mapping (plain
    YAML keeps the last silently, which hides a pasted-over pool).  Merge
    keys (C{<<: *defaults}) are YAML's: a key written beside one wins over
    the merged one, as YAML says.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for keyNode, _ in node.value:
            if keyNode.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(keyNode, deep=deep)  # type: ignore[no-untyped-call]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"found the key {key!r} twice", keyNode.start_mark,
                )
            seen[key] = True
        return super().construct_mapping(node, deep)


def loadConfigFile(path: str) -> Config:
    """
    Read and validate a YAML configuration file.

    @raise ConfigError: the file cannot be read, is not YAML, or is invalid.
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError("", f"cannot read config file {path!r}: {e.strerror}") from e
    return parseConfigText(text, path)


def parseConfigText(text: str, path: str) -> Config:
    """
    Validate the YAML text of configuration file C{path}; the files it
    names are relative to C{path}'s directory.

    @raise ConfigError: it is not YAML, or is invalid.
    """
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as e:
        raise ConfigError("", f"config file {path!r} is not valid YAML: {e}") from e
    return parseConfig(data, directory=os.path.dirname(os.path.abspath(path)))
