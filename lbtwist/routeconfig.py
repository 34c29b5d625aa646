"""
The route model of a listener: frozen value types for C{routes:} and
C{default-route:}, and the small pure parsers they need (rates, htpasswd
files) that raise L{ValueError}; L{lbtwist.config} turns those into errors
naming the key path.

Nothing here touches the network; L{lbtwist.routing} compiles these values
into a table for the hot path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import attrs

# The statuses a redirect may use, and the one it uses unless told.
REDIRECT_CODES = (301, 302, 303, 307, 308)
DEFAULT_REDIRECT_CODE = 302

# Bcrypt's variants that the bcrypt package checks; htpasswd's other kinds
# (MD5-crypt "$apr1$", SHA-1 "{SHA}", crypt, plain text) are weak and refused.
BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")
_BCRYPT = re.compile(rb"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}")

_RATE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*/\s*(s|m|h)\s*")
_RATE_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


@attrs.frozen
class HeaderMatch:
    """
    A condition on a request header.

    @ivar name: the header name, lowercase.
    @ivar value: the exact value wanted, if that is the condition.
    @ivar regex: a pattern searched in the value, if that is the condition.
    @ivar present: with neither value nor regex: C{True} if the header must
        be there, C{False} if it must not.
    """

    name: str
    value: str | None = None
    regex: str | None = None
    present: bool = True


@attrs.frozen
class Match:
    """
    What a request must have for its route to be taken; every key given
    must match, and a match with no key matches everything.

    @ivar hosts: exact host names or C{*.}-wildcards, lowercase (HTTP).
    @ivar path: the exact path (without the query).
    @ivar pathPrefix: a prefix of the path.
    @ivar pathRegex: a pattern searched in the path.
    @ivar methods: request methods, uppercase.
    @ivar headers: conditions on request headers.
    @ivar query: C{(name, value)} pairs the query string must hold.
    @ivar sources: client networks, as normalised CIDR strings.
    @ivar sni: server names of the TLS ClientHello, exact or C{*.}
        wildcards, lowercase (TCP).
    """

    hosts: tuple[str, ...] = ()
    path: str | None = None
    pathPrefix: str | None = None
    pathRegex: str | None = None
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    sources: tuple[str, ...] = ()
    sni: tuple[str, ...] = ()

    @property
    def catchAll(self) -> bool:
        """
        Whether every request matches.
        """
        return self == Match()


@attrs.frozen
class Redirect:
    """
    Answer with a redirect.

    @ivar location: a fixed URL to send the client to; or
    @ivar scheme: the scheme to send it to on the same host, path and query.
    @ivar keepPath: with C{location}, append the request's path and query.
    @ivar port: with C{scheme}, the port to send it to (default: the
        scheme's own, no port written).
    """

    location: str | None = None
    scheme: str | None = None
    code: int = DEFAULT_REDIRECT_CODE
    keepPath: bool = False
    port: int | None = None


@attrs.frozen
class Respond:
    """
    Answer directly, with no backend.
    """

    status: int
    body: str = ""
    headers: tuple[tuple[str, str], ...] = ()


@attrs.frozen
class Rewrite:
    """
    How the request target is changed before it is sent to a backend:
    C{stripPrefix} is taken off the path (on a segment boundary), then
    C{prefix} is put in front.
    """

    stripPrefix: str | None = None
    prefix: str | None = None


@attrs.frozen
class TimeoutOverrides:
    """
    A route's or a listener's timeouts, overriding its pool's where given
    (seconds): a route's are what a request (HTTP) or connection (TCP)
    meets on its way to a backend, a listener's are its clients' own
    (C{idle} and C{request}).
    """

    connect: float | None = None
    idle: float | None = None
    response: float | None = None
    request: float | None = None


@attrs.frozen
class RateLimit:
    """
    A token bucket per key: C{burst} requests at once, refilled at C{rate}
    per second; past it a request is answered 429 with C{Retry-After}.

    @ivar key: C{"source"} (the client address) or C{"header"}.
    @ivar header: the header whose value is the key, lowercase, for C{header}.
    @ivar maxKeys: keys tracked at once; the least recently used goes first.
    """

    rate: float
    burst: int
    key: str = "source"
    header: str | None = None
    maxKeys: int = 100000


@attrs.frozen
class BasicAuth:
    """
    HTTP basic authentication against bcrypt htpasswd entries.

    @ivar users: C{(user, bcrypt hash)} pairs read from C{usersFile}.
    """

    realm: str
    usersFile: str
    users: tuple[tuple[str, bytes], ...]


@attrs.frozen
class HeaderActions:
    """
    Changes to a header list: C{remove} names first, then C{set} (replacing
    every header of that name), then C{add} (appending).
    """

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()


@attrs.frozen
class Route:
    """
    One route of a listener: a match, exactly one action (C{pool}, C{pools},
    C{redirect} or C{respond}) and modifiers.

    @ivar pools: C{(pool, weight)} pairs of a weighted split.
    @ivar retries: overrides the pool's C{retries}, if given.
    """

    name: str
    match: Match = Match()
    pool: str | None = None
    pools: tuple[tuple[str, int], ...] = ()
    redirect: Redirect | None = None
    respond: Respond | None = None
    rewrite: Rewrite | None = None
    timeouts: TimeoutOverrides | None = None
    retries: int | None = None
    rateLimit: RateLimit | None = None
    auth: BasicAuth | None = None
    requestHeaders: HeaderActions | None = None
    responseHeaders: HeaderActions | None = None

    @property
    def poolNames(self) -> tuple[str, ...]:
        """
        The pools this route sends requests to.
        """
        if self.pool is not None:
            return (self.pool,)
        return tuple(name for name, _ in self.pools)


def unmatchedPool(pool: str, routes: Sequence[Route], defaultRoute: Route | None) -> str | None:
    """
    The pool a listener sends what no route matches to, to show it: its
    C{pool} when it has no routes, or when its default route goes to a
    pool; L{None} when no route matching gets a 404 (HTTP) or a close, or
    the default route answers itself (the listener's C{pool} is then only a
    placeholder nothing is sent to).
    """
    if not routes:
        return pool
    if defaultRoute is not None and defaultRoute.poolNames:
        return pool
    return None


def parseRate(text: str) -> float:
    """
    A rate like C{100/s}, C{30/m} or C{1000/h}, in requests per second.

    @raise ValueError: it is not one, or it is 0.
    """
    m = _RATE.fullmatch(text)
    if not m:
        raise ValueError(f"expected a rate like '100/s' or '30/m', got {text!r}")
    rate = float(m.group(1)) / _RATE_UNITS[m.group(2)]
    if rate <= 0:
        raise ValueError(f"a rate must be more than 0, got {text!r}")
    return rate


def parseHtpasswd(data: bytes, source: str) -> tuple[tuple[str, bytes], ...]:
    """
    The C{user:hash} lines of an htpasswd file; blank lines and C{#}
    comments are skipped.

    @param source: the file's name, for errors.
    @raise ValueError: naming the file and line of an entry that is not
        C{user:bcrypt-hash}, or of a user given twice.
    """
    users: dict[str, bytes] = {}
    for number, raw in enumerate(data.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith(b"#"):
            continue
        user, sep, hashed = line.partition(b":")
        where = f"{source} line {number}"
        if not sep or not user:
            raise ValueError(f"{where}: expected user:hash")
        try:
            name = user.decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{where}: the user name is not UTF-8") from None
        if not hashed.startswith(BCRYPT_PREFIXES):
            raise ValueError(f"{where}: only bcrypt entries ($2a$, $2b$, $2y$) are "
                             f"accepted (make them with 'htpasswd -B')")
        if not _BCRYPT.fullmatch(hashed):
            raise ValueError(f"{where}: a malformed bcrypt hash")
        if name in users:
            raise ValueError(f"{where}: user {name!r} is given twice")
        users[name] = hashed
    return tuple(users.items())
