"""
What HTTP mode does with a request head and a response head, as pure
functions: bytes and plain values in, a plan out, no I/O and no state.

L{planRequest} checks a parsed request head (the strict rules llhttp leaves
to a proxy), removes the hop-by-hop headers, sets C{X-Forwarded-*} and the
Host, finds the sticky key and the body's framing, and builds the head sent
to a backend.  L{planResponse} does the same for a response head: the one
hop-by-hop filter (used for interim and final responses alike), the
framing towards the client, keep-alive and the sticky cookie.
L{retryAfterLoss} decides what follows when a backend connection is lost
before the response is complete.

The protocols only translate bytes and parser callbacks; every decision
about what goes on the wire is here, and table-tested synchronously
(C{tests/test_http_plan.py}), the request-smuggling cases included.

llhttp (through C{httptools}) already refuses most request-smuggling shapes
(both Content-Length and Transfer-Encoding, repeated or malformed
Content-Length, bad chunk sizes, bare LF, NUL or CR in values, header lines
without a colon, whitespace before the colon, obsolete line folding).  What
it lets through and a proxy must still refuse is checked here: any
Transfer-Encoding but a single C{chunked}, a Transfer-Encoding in HTTP/1.0,
a missing or repeated Host in HTTP/1.1, an absolute-form target of another
scheme, a WebSocket handshake without its key and version.
"""

from __future__ import annotations

import base64
import hashlib
import re

from ._errors import BadRequest

IDEMPOTENT = frozenset((b"GET", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"TRACE"))

# Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
# Proxy-* is matched by prefix; Upgrade is forwarded for an upgrade only.
HOP_BY_HOP = frozenset(
    (b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade")
)

# Tokens a client's Connection header may name without the headers of those
# names being removed: the framing and Host are never hop-by-hop, or a
# client naming Content-Length would get its body read as a second request.
NEVER_NAMED = frozenset(
    (b"close", b"keep-alive", b"upgrade", b"content-length", b"transfer-encoding", b"host")
)

# The Connection values that name no other field (lowercased).
USUAL_CONNECTION = frozenset((b"keep-alive", b"close"))

# What a response header's (lowercased) name means to the response plan:
# nothing special (absent, or _PLAIN), hop-by-hop, the framing, or the length.
_PLAIN = 0
_HOP = 1
_FRAMING = 2
_LENGTH = 3
_RESPONSE_SPECIAL = {name: _HOP for name in HOP_BY_HOP}
_RESPONSE_SPECIAL[b"transfer-encoding"] = _FRAMING
_RESPONSE_SPECIAL[b"content-length"] = _LENGTH

# What a request header's (lowercased) name means to the request plan.
_CONNECTION = 4
_UPGRADE = 5
_HOST = 6
_FORWARDED_FOR = 7
_FORWARDED = 8
_EXPECT = 9
_WEBSOCKET_KEY = 10
_WEBSOCKET_VERSION = 11
_COOKIE = 12
_TE = 13
_REQUEST_SPECIAL = {
    **{name: _HOP for name in HOP_BY_HOP},
    b"te": _TE,
    b"transfer-encoding": _FRAMING,
    b"connection": _CONNECTION,
    b"upgrade": _UPGRADE,
    b"host": _HOST,
    b"x-forwarded-for": _FORWARDED_FOR,
    b"x-forwarded-proto": _FORWARDED,
    b"x-forwarded-host": _FORWARDED,
    b"content-length": _LENGTH,
    b"expect": _EXPECT,
    b"sec-websocket-key": _WEBSOCKET_KEY,
    b"sec-websocket-version": _WEBSOCKET_VERSION,
    b"cookie": _COOKIE,
}
# A response's Connection header may name further hop-by-hop headers.
_RESPONSE_SPECIAL[b"connection"] = _CONNECTION


def _kind(special: dict[bytes, int], name: bytes) -> int:
    """
    What a field name, spelled any way, means to a plan: its kind in
    C{special} (keyed by lowercased names), hop-by-hop for a C{Proxy-*}
    name, else L{_PLAIN}.
    """
    lname = name.lower()
    kind = special.get(lname, _PLAIN)
    if not kind and lname.startswith(b"proxy-"):
        return _HOP
    return kind


def _spelledKinds(special: dict[bytes, int], names: str) -> dict[bytes, int]:
    """
    The kinds of C{names} (field names as peers usually spell them, and of
    their lowercase forms, as HTTP/2 and some servers send them), worked
    out once by L{_kind}: the plans look most names up as they come, and
    lower only the others.
    """
    spelled = [n.encode("ascii") for n in names.split()]
    return {n: _kind(special, n) for name in spelled for n in (name, name.lower())}


# Header names seen on most responses and requests, with every special one.
_COMMON_RESPONSE_NAMES = """
    Server Date Content-Type Content-Length Last-Modified Connection Keep-Alive ETag Etag
    Accept-Ranges Cache-Control Expires Vary Set-Cookie Location Content-Encoding
    Content-Language Content-Disposition Content-Range Transfer-Encoding Age Pragma Via
    Link Alt-Svc Strict-Transport-Security X-Content-Type-Options X-Frame-Options
    X-XSS-Protection Content-Security-Policy Referrer-Policy Access-Control-Allow-Origin
    Access-Control-Allow-Credentials Access-Control-Allow-Methods
    Access-Control-Allow-Headers Access-Control-Expose-Headers Access-Control-Max-Age
    WWW-Authenticate Retry-After X-Powered-By X-Request-Id X-Cache Trailer Upgrade TE
    Proxy-Authenticate Proxy-Connection
"""
_COMMON_REQUEST_NAMES = """
    Host User-Agent Accept Accept-Encoding Accept-Language Accept-Charset Connection
    Keep-Alive Cookie Referer Origin Content-Type Content-Length Transfer-Encoding
    Authorization Cache-Control Pragma If-None-Match If-Modified-Since If-Match
    If-Unmodified-Since If-Range Range Upgrade Upgrade-Insecure-Requests Expect TE Trailer
    X-Forwarded-For X-Forwarded-Proto X-Forwarded-Host X-Real-IP X-Requested-With
    Forwarded Sec-WebSocket-Key Sec-WebSocket-Version Sec-WebSocket-Extensions
    Sec-WebSocket-Protocol Sec-Fetch-Site Sec-Fetch-Mode Sec-Fetch-Dest Sec-Fetch-User
    Sec-Ch-Ua Sec-Ch-Ua-Mobile Sec-Ch-Ua-Platform DNT Priority Proxy-Authorization
    Proxy-Connection
"""
_RESPONSE_KINDS = _spelledKinds(_RESPONSE_SPECIAL, _COMMON_RESPONSE_NAMES)
_REQUEST_KINDS = _spelledKinds(_REQUEST_SPECIAL, _COMMON_REQUEST_NAMES)

# The start of a final response's status line, by status: the line is
# this and the reason.
_STATUS_LINES = {status: b"HTTP/1.1 %d " % status for status in range(200, 600)}

# Statuses whose responses have no body whatever their head says.
NO_BODY_STATUSES = frozenset((204, 304))

_WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def forwarded(name: bytes) -> bool:
    """
    Whether a header (its lowercased name) may cross the proxy: the one
    hop-by-hop filter of requests, interim and final responses.
    """
    return name not in HOP_BY_HOP and not name.startswith(b"proxy-")


# Fields a trailer section never carries (RFC 9110 6.5.1), beside the
# hop-by-hop ones: the framing, routing, request modifiers (controls and
# conditionals), authentication, response control and content fields only a
# head may; a recipient that merged them into the head would be misled.
_NOT_TRAILERS = frozenset((
    b"content-length", b"host", b"proxy-connection",
    b"content-type", b"content-encoding", b"content-range", b"content-location",
    b"cache-control", b"expect", b"max-forwards", b"pragma", b"range",
    b"if-match", b"if-none-match", b"if-modified-since", b"if-unmodified-since",
    b"if-range", b"authorization", b"www-authenticate", b"set-cookie", b"cookie",
    b"age", b"expires", b"date", b"location", b"retry-after", b"vary", b"warning",
))
# A token (RFC 9110 5.6.2): a field name (5.1), a method (9.1).  A field
# value holds no CR, LF or NUL (RFC 9110 5.5): either would let a trailer
# written as HTTP/1.1 end its section early and smuggle what follows.
TOKEN = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_BAD_FIELD_VALUE = re.compile(rb"[\r\n\x00]")


def fieldsSize(fields: list[tuple[bytes, bytes]]) -> int:
    """
    What C{fields} count against C{max-header-size} (and a response's
    against C{max-response-header-size}): each its name and value and 4
    bytes, as C{Name: value} and its CRLF take.
    """
    return sum(len(n) + len(v) + 4 for n, v in fields)


def measuredAbove(limit: int) -> int:
    """
    The bytes under which a head read in one read is within C{limit}, and
    need not be measured: a field counts its name and value and 4 bytes, at
    most a byte more than it takes to read (C{Name:value} and CRLF, 4 bytes
    or more), so at most a fourth more; a head's start (a request's target,
    a response's reason) counts what it takes.
    """
    return limit * 4 // 5


def headBytesHeld(held: int, start: bytes, fields: list[tuple[bytes, bytes]], read: int) -> int:
    """
    What an unfinished head counts against the bound of what llhttp may
    hold, after a read of C{read} bytes: C{held}, what it counted before,
    and the read whole; or, in the read it began in (C{held} is -1), only
    what it surely holds of it, its C{start} (a request's target, a
    response's reason) and its C{fields} so far, not what came before it
    in that read (the end of a body, an interim response).
    """
    if held < 0:
        return len(start) + fieldsSize(fields)
    return held + read


class BadTrailer(ValueError):
    """
    A trailer field with an invalid name or value: the request is refused
    (the client's), or the trailers dropped (a backend's).
    """


def trailerFields(trailers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """
    C{trailers} as they may be relayed: lowercased, without pseudo-fields,
    hop-by-hop fields, or fields that only a head may carry.

    @raise BadTrailer: a field's name is not a token, or its value holds a
        CR, LF or NUL.
    """
    kept = []
    for name, value in trailers:
        lname = name.lower()
        if lname[:1] == b":":
            continue
        if not TOKEN.match(lname):
            raise BadTrailer(f"invalid trailer name {name[:40]!r}")
        if _BAD_FIELD_VALUE.search(value):
            raise BadTrailer(f"forbidden character in trailer {name[:40]!r}")
        if forwarded(lname) and lname not in _NOT_TRAILERS:
            kept.append((lname, value.strip(b" \t")))
    return kept


def trailerBlock(trailers: list[tuple[bytes, bytes]]) -> bytes:
    """
    The HTTP/1.1 trailer section of C{trailers} (filtered), ending with
    its empty line.
    """
    return b"".join(name + b": " + value + b"\r\n" for name, value in trailers) + b"\r\n"


class TrailerSection(list[tuple[bytes, bytes]]):
    """
    The trailer fields of a chunked body being parsed, and what bounds
    them.

    llhttp (through httptools) reports trailer fields with C{on_header} as
    it reports the head's: at the body's first chunk header a connection
    replaces its list of the head's fields (given to the exchange already)
    with one of these, which the trailers then fill.  llhttp ends the last
    chunk (C{on_chunk_complete}) as it ends each chunk: a chunk that
    relayed no body bytes is the last.  It also keeps an unfinished field
    until it ends, so a peer could send one endless trailer line: fed after
    each read, this counts the bytes read after the last chunk's size line,
    as the head's bound counts the head's.  A read with no body bytes after
    the last chunk header is all trailer (the read with the header itself
    is not counted, so the bound is the limit and one read).

    Made for chunked bodies only, and a list, so that the connections'
    other messages pay nothing for it, not even an attribute; its counts
    are set by L{chunkHeader}, called as soon as it is made (a list's own
    C{__init__}: it is made for each chunked body).

    @ivar mark: the body bytes relayed when the last chunk header was
        parsed.
    @ivar raw: trailer bytes counted so far (-1: the read that parsed the
        chunk header is not).
    @ivar head: a request's head fields, which its trailers count with
        against C{max-header-size} (set by the client connection).
    """

    __slots__ = ("head", "mark", "raw")
    mark: int
    raw: int
    head: list[tuple[bytes, bytes]]

    def chunkHeader(self, relayed: int) -> None:
        """
        A chunk's size line was parsed, C{relayed} body bytes in.
        """
        self.mark = relayed
        self.raw = -1

    def overAfter(self, read: int, relayed: int, limit: int) -> bool:
        """
        Whether, after a read of C{read} bytes that took the body to
        C{relayed} bytes, the trailer section is over C{limit}.
        """
        if relayed != self.mark:
            # Body bytes after the last chunk header: not the trailers.
            return False
        raw = self.raw
        if raw < 0:
            self.raw = 0
            return False
        raw += read
        self.raw = raw
        return raw > limit

    def chunkEnded(self, relayed: int) -> bool:
        """
        A chunk ended, C{relayed} body bytes in: whether it was the last
        (it relayed none): its fields are then all the trailers.
        """
        return relayed == self.mark


class RequestRules:
    """
    What the request plan follows for one listener and pool, worked out
    once when the listener's factory is built.

    @ivar hostHeader: the Host every request is given (replacing the
        client's), or L{None} to keep it.
    @ivar forwardedProto: C{X-Forwarded-Proto}'s value.
    @ivar stickyKind: C{"cookie"}, C{"header"}, C{"source"} or L{None}.
    @ivar stickyName: the sticky cookie's or header's name.
    @ivar captureHeaders: the pool's access log writes the request's
        C{Referer} and C{User-Agent}: the plan captures them
        (L{CapturedRequestPlan}).  Off unless its sink asks, so that no
        other request pays for it.
    @ivar wholeHeads: a usual request may be planned from its bytes
        (L{planWholeRequest}): no rule here reads or replaces a field that
        such a plan relays as it came.
    """

    __slots__ = (
        "captureHeaders", "forwardedProto", "hostHeader", "stickyHeader", "stickyKind",
        "stickyName", "wholeHeads",
    )

    def __init__(
        self,
        forwardedProto: bytes = b"http",
        hostHeader: bytes | None = None,
        stickyKind: str | None = None,
        stickyName: bytes = b"",
        captureHeaders: bool = False,
    ) -> None:
        self.forwardedProto = forwardedProto
        self.hostHeader = hostHeader
        self.stickyKind = stickyKind
        self.stickyName = stickyName
        self.stickyHeader = stickyName.lower() if stickyKind == "header" else None
        self.captureHeaders = captureHeaders
        self.wholeHeads = (
            hostHeader is None and stickyKind in (None, "source") and not captureHeaders)


class RequestPlan:
    """
    What a request head comes to.

    @ivar head: the head to send to a backend, whole.
    @ivar chunked: the body is chunked (it is relayed chunked).
    @ivar hasBody: a body follows the head.
    @ivar upgrade: an upgrade (WebSocket) request: a tunnel after a 101.
    @ivar websocketKey: its C{Sec-WebSocket-Key}, to check the 101 against.
    @ivar expectContinue: the client waits for a C{100 Continue}.
    @ivar authority: the request's one authority (the absolute-form
        target's, else Host's), as routing and C{X-Forwarded-Host} see it.
    @ivar stickyKey: what the sticky setting keys on (the cookie's value,
        the header's, or the client's address), if anything.
    @ivar keepAlive: the client wants the connection kept open after.
    @ivar replayable: the request may be sent again: idempotent, no body,
        no upgrade.
    @ivar trailers: the client takes trailers (C{TE: trailers}).
    """

    __slots__ = (
        "authority", "chunked", "expectContinue", "hasBody", "head", "keepAlive",
        "replayable", "stickyKey", "trailers", "upgrade", "websocketKey",
    )

    def __init__(
        self, head: bytes, chunked: bool, hasBody: bool, upgrade: bool,
        websocketKey: bytes | None, expectContinue: bool, authority: bytes | None,
        stickyKey: bytes | None, keepAlive: bool, replayable: bool, trailers: bool = False,
    ) -> None:
        self.head = head
        self.chunked = chunked
        self.hasBody = hasBody
        self.upgrade = upgrade
        self.websocketKey = websocketKey
        self.expectContinue = expectContinue
        self.authority = authority
        self.stickyKey = stickyKey
        self.keepAlive = keepAlive
        self.replayable = replayable
        self.trailers = trailers

    # What the access log is given of the request's head, captured only by
    # a L{CapturedRequestPlan}: class defaults here, so that an ordinary
    # plan pays nothing for them.
    referer: bytes | None = None
    userAgent: bytes | None = None


class CapturedRequestPlan(RequestPlan):
    """
    The plan of a request whose access log writes its C{Referer} and
    C{User-Agent} (see L{RequestRules.captureHeaders}).

    @ivar referer: the request's first C{Referer}, if any.
    @ivar userAgent: its first C{User-Agent}, if any.
    """

    __slots__ = ("referer", "userAgent")

    @classmethod
    def of(cls, plan: RequestPlan, headers: list[tuple[bytes, bytes]]) -> CapturedRequestPlan:
        """
        C{plan}, with the C{Referer} and C{User-Agent} of the request's
        C{headers} (see L{capture}).
        """
        captured = cls.__new__(cls)
        for name in RequestPlan.__slots__:
            setattr(captured, name, getattr(plan, name))
        captured.capture(headers)
        return captured

    def capture(self, headers: list[tuple[bytes, bytes]]) -> None:
        """
        Take the C{Referer} and C{User-Agent} of the request's C{headers}
        (the first of each; names in any case, as HTTP/1.1 and HTTP/2
        clients spell them).
        """
        referer = userAgent = None
        for name, value in headers:
            size = len(name)
            if size == 7 and referer is None and name.lower() == b"referer":
                referer = value
            elif size == 10 and userAgent is None and name.lower() == b"user-agent":
                userAgent = value
        self.referer = referer
        self.userAgent = userAgent


def checkTransferEncoding(value: bytes | None, version: str) -> bool:
    """
    Whether a request body is chunked, given its Transfer-Encoding (if any).

    @raise BadRequest: the only one accepted is a single C{chunked}, in
        HTTP/1.1; anything else would be read differently by some backend.
    """
    if value is None:
        return False
    if version != "1.1":
        raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
    if value.strip(b" \t").lower() != b"chunked":
        raise BadRequest(f"unsupported Transfer-Encoding {value!r}")
    return True


def withoutNamed(lines: list[bytes], named: set[bytes]) -> list[bytes]:
    """
    A head's lines (its first line, then C{Name: value} lines without
    their CRLF) without the fields C{named} (lowercased names) by its
    Connection header.
    """
    return [lines[0]] + [line for line in lines[1:]
                         if line.split(b":", 1)[0].lower() not in named]


def splitTokens(value: bytes) -> list[bytes]:
    """
    The lowercased, comma-separated tokens of a header value such as
    C{Connection}.
    """
    return [t.strip(b" \t").lower() for t in value.split(b",") if t.strip(b" \t")]


def declaredLength(headers: list[tuple[bytes, bytes]]) -> int:
    """
    The body length a request head declares (its C{Content-Length}, which
    llhttp has checked), 0 without one: what of an upgrade request's bytes
    after its head is its body, since llhttp parses none of them.
    """
    for name, value in headers:
        if len(name) == 14 and name.lower() == b"content-length":
            return int(value)
    return 0


def cookieValue(header: bytes, name: bytes) -> bytes | None:
    """
    The value of cookie C{name} in a C{Cookie} header, if present.
    """
    for part in header.split(b";"):
        key, sep, value = part.strip(b" \t").partition(b"=")
        if sep and key == name:
            return value.strip(b'"')
    return None


def absoluteAuthority(target: bytes) -> bytes | None:
    """
    The authority of an absolute-form request target, or L{None} for any
    other form.

    @raise BadRequest: an absolute form with a scheme other than http(s),
        or with no host.
    """
    scheme, sep, rest = target.partition(b"://")
    if not sep or b"/" in scheme or not scheme[:1].isalpha():
        return None
    if scheme.lower() not in (b"http", b"https"):
        raise BadRequest(f"unsupported scheme in request target {scheme!r}")
    end = len(rest)
    for stop in (b"/", b"?", b"#"):
        at = rest.find(stop)
        if at != -1 and at < end:
            end = at
    authority = rest[:end]
    if b"@" in authority:
        raise BadRequest("user information in the request target")
    if not authority or authority.startswith(b":"):
        raise BadRequest("no host in the request target")
    return authority


def planRequest(
    method: bytes,
    target: bytes,
    version: str,
    headers: list[tuple[bytes, bytes]],
    keepAlive: bool,
    upgrade: bool,
    clientHost: bytes,
    localAuthority: bytes,
    rules: RequestRules,
) -> RequestPlan:
    """
    Check a parsed request head and plan what goes to the backend.

    @param version: the HTTP version llhttp read (C{"1.1"}, C{"1.0"}; any
        other 1.x is handled as 1.1, RFC 9110 2.5).
    @param keepAlive: llhttp's reading of the client's wish.
    @param upgrade: llhttp saw an upgrade request.
    @param clientHost: the client's address, for C{X-Forwarded-For}.
    @param localAuthority: the address the client reached, the Host of an
        HTTP/1.0 request that names none.

    @raise BadRequest: the request must be refused, with its status.
    """
    if version == "1.1":
        http10 = False
    else:
        major, _, minor = version.partition(".")
        if major != "1":
            raise BadRequest(f"HTTP version {version} is not supported", 505)
        http10 = minor == "0"
    if method == b"CONNECT":
        raise BadRequest("CONNECT is not supported", 501)
    if 35 in target:  # 35: "#"
        # RFC 9112 3.2: a target has no fragment; a backend may cut it
        # where routing did not (as HAProxy, refused).  (An int is looked
        # for as a byte; a bytes needle costs a failed integer conversion,
        # an exception made and cleared, about 1,700 instructions.)
        raise BadRequest("fragment in the request target")
    authority = absoluteAuthority(target) if target[0] != 47 else None  # 47: "/"
    # Lines without their CRLF, joined by CRLF at the end (as planResponse's).
    # (Joins, not %-formats: a third of the cost, on every request.)
    parts = [b" ".join((method, target, b"HTTP/1.1"))]
    append = parts.append
    host = None
    te = None
    connection: list[bytes] | None = None
    xff = None
    upgradeValue = None
    websocketKey = None
    websocketVersion = None
    stickyKey = None
    stickyKind = rules.stickyKind
    stickyName = rules.stickyName
    stickyHeader = rules.stickyHeader
    hostHeader = rules.hostHeader
    hasLength = False
    expectContinue = False
    trailers = False
    kinds = _REQUEST_KINDS.get
    for field in headers:
        name, value = field
        kind = kinds(name)
        if kind is None:
            kind = _kind(_REQUEST_SPECIAL, name)
        if kind:
            # (Host first: every request has one.)
            if kind is _HOST:
                if host is not None:
                    raise BadRequest("repeated Host header")
                host = value
                # Replaced below: by the configured Host, or by the target's
                # authority (RFC 9112 3.2.2: one authority for all to see).
                if hostHeader is not None or authority is not None:
                    continue
            elif kind is _HOP:
                continue
            elif kind is _TE:
                # Hop-by-hop, but it says whether the client takes trailers.
                trailers = b"trailers" in splitTokens(value.lower())
                continue
            elif kind is _FRAMING:
                if te is not None:
                    raise BadRequest("repeated Transfer-Encoding")
                te = value
                continue
            elif kind is _CONNECTION:
                connection = (connection or []) + splitTokens(value)
                continue
            elif kind is _UPGRADE:
                upgradeValue = value
                continue
            elif kind is _FORWARDED_FOR:
                xff = value if xff is None else xff + b", " + value
                continue
            elif kind is _FORWARDED:
                continue
            elif kind is _LENGTH:
                hasLength = value.strip() != b"0"
            elif kind is _EXPECT:
                expectContinue = value.lower() == b"100-continue"
            elif kind is _WEBSOCKET_KEY:
                websocketKey = value
            elif kind is _WEBSOCKET_VERSION:
                websocketVersion = value
            elif kind is _COOKIE and stickyKind == "cookie":
                found = cookieValue(value, stickyName)
                if found is not None:
                    stickyKey = found
        if stickyHeader is not None and name.lower() == stickyHeader:
            stickyKey = value
        append(b": ".join(field))
    if host is None and not http10:
        raise BadRequest("HTTP/1.1 request without Host")
    if authority is None:
        authority = host
    elif hostHeader is None:
        append(b"Host: " + authority)
    chunked = te is not None and checkTransferEncoding(te, "1.0" if http10 else "1.1")
    if connection:
        named = set(connection) - NEVER_NAMED
        if named:
            parts = withoutNamed(parts, named)
            append = parts.append
    if hostHeader is not None:
        append(b"Host: " + hostHeader)
    elif authority is None:
        # An HTTP/1.0 request may name no Host; what goes upstream is
        # HTTP/1.1, which must.
        append(b"Host: " + localAuthority)
    forwardedFor = clientHost if xff is None else xff + b", " + clientHost
    if authority is not None:
        append(b"".join((b"X-Forwarded-For: ", forwardedFor, b"\r\nX-Forwarded-Proto: ",
                         rules.forwardedProto, b"\r\nX-Forwarded-Host: ", authority)))
    else:
        append(b"".join((b"X-Forwarded-For: ", forwardedFor, b"\r\nX-Forwarded-Proto: ",
                         rules.forwardedProto)))
    if chunked:
        append(b"Transfer-Encoding: chunked")
    upgrade = upgrade and upgradeValue is not None
    if upgrade:
        assert upgradeValue is not None
        if chunked:
            # llhttp parses nothing after an upgrade request's head: a
            # chunked body could not be told from what follows it.
            raise BadRequest("chunked body in an upgrade request")
        if b"websocket" in splitTokens(upgradeValue):
            if not websocketKey:
                raise BadRequest("WebSocket upgrade without Sec-WebSocket-Key")
            if websocketVersion is None or websocketVersion.strip() != b"13":
                raise BadRequest("WebSocket upgrade without Sec-WebSocket-Version: 13")
        else:
            websocketKey = None
        append(b"Connection: upgrade\r\nUpgrade: " + upgradeValue)
    else:
        websocketKey = None
    append(b"\r\n")
    if stickyKind == "header":
        stickyKey = stickyKey or clientHost
    elif stickyKind == "source":
        stickyKey = clientHost
    hasBody = chunked or hasLength
    plan = RequestPlan(
        b"\r\n".join(parts), chunked, hasBody, upgrade, websocketKey, expectContinue,
        authority, stickyKey, keepAlive,
        method in IDEMPOTENT and not hasBody and not upgrade, trailers,
    )
    if rules.captureHeaders:
        # Made again, with the headers: only for a pool whose access log
        # asked, so that the plan of every other request costs one test.
        return CapturedRequestPlan.of(plan, headers)
    return plan


# The fields of a request head that a plan reads or does not relay as they
# are (L{_REQUEST_SPECIAL}, and C{Proxy-*}), found in the head's bytes as
# L{_RESPONSE_SPECIAL_LINES} finds a response's (a line begins after a CRLF
# and its name ends at its colon, in a head llhttp parsed): Host and
# Connection each in a group of their own, any other in none; and an empty
# line with anything after it (a read that is more than the head), in none.
# (Not Cookie: only a sticky cookie reads it, and a pool with one plans
# from fields: see L{RequestRules.wholeHeads}.)
_WHOLE_REQUEST_LINES = re.compile(
    rb"\r\n(?:(host)|(connection)|(?:"
    + b"|".join(sorted(
        name for name in _REQUEST_SPECIAL if name not in (b"cookie", b"host", b"connection")))
    + rb"|proxy-[^:]*)):[ \t]*([^\r]*)|\r\n\r\n[\s\S]",
    re.IGNORECASE,
)
# The Connection line of a head planned whole (dropped from it).
_CONNECTION_LINE = re.compile(rb"\r\nconnection:[^\r]*", re.IGNORECASE)
# Methods whose requests nearly always have a body (not planned whole).
_BODY_METHODS = frozenset((b"POST", b"PUT", b"PATCH"))

# What follows the target of a head planned whole.
_VERSION11 = b"HTTP/1.1\r\n"


# A request read whole, as L{planWholeRequest} plans it: its method, its
# target and its plan.
WholeRequest = tuple[bytes, bytes, RequestPlan]


def planWholeRequest(
    data: bytes, clientHost: bytes, rules: RequestRules,
) -> WholeRequest | None:
    """
    Plan the usual request as L{planRequest} would, from its bytes: a read
    (C{data}) that is one request head and nothing after it, an HTTP/1.1
    request with an origin-form target and no body, with no field a plan
    reads or drops but one Host and a C{Connection} of C{keep-alive} or
    C{close}.  Its head
    goes to the backend as it came, without its Connection line, with the
    C{X-Forwarded-*} fields after it: no field is made again.

    @param data: a read that may be one request head, whole (it ends with
        an empty line): the plan holds only if llhttp then reads it as one
        head (so that one CRLF ends each of its lines and each field line
        is C{name:value}: see L{lbtwist.http._client}); a read with
        anything after a head, or a request line llhttp would end before
        C{HTTP/1.1}, is not one to plan whole.
    @param clientHost: the client's address, for C{X-Forwarded-For}.
    @param rules: the pool's rules, whose C{wholeHeads} the caller checked.

    @return: the request, or L{None} for any other head (L{planRequest}
        plans it from its fields).
    """
    # (llhttp skips empty lines before a request line and takes more than
    # one space after its method and target: only a line as it would make
    # it is split here; a bytes needle costs find() an exception.)
    if not 64 < data[0] < 91:  # "A".."Z"
        return None
    try:
        method, target, rest = data.split(b" ", 2)
    except ValueError:
        # An HTTP/0.9 line ("GET /"): planRequest refuses it.
        return None
    if method in _BODY_METHODS:
        # (Nearly always with a body, which a whole head has not: looking
        # for its Content-Length would cost as much as reading it as fields.)
        return None
    # A CR or LF in what the first spaces bound is no HTTP/1.1 target: llhttp
    # ends an HTTP/0.9 request line there and reads what follows as fields,
    # whatever " HTTP/1.1" they hold ("GET /\r\nX:y\r\nb:c HTTP/1.1").
    if (not rest.startswith(_VERSION11) or not target or target[0] != 47  # "/"
            or 35 in target or 13 in target or 10 in target  # "#", CR, LF
            or method == b"CONNECT"):  # planRequest refuses them
        return None
    authority = connection = None
    for host, named, value in _WHOLE_REQUEST_LINES.findall(data):
        if host and authority is None:
            authority = value
        elif named and connection is None:
            connection = value
        else:
            return None
    if authority is None:
        return None
    keepAlive = True
    if connection is None:
        kept = data[:-2]
    else:
        said = connection.rstrip(b" \t").lower()
        if said == b"close":
            keepAlive = False
        elif said != b"keep-alive":
            return None
        kept = _CONNECTION_LINE.sub(b"", data[:-2], 1)
    return method, target, RequestPlan(
        b"".join((kept, b"X-Forwarded-For: ", clientHost, b"\r\nX-Forwarded-Proto: ",
                  rules.forwardedProto, b"\r\nX-Forwarded-Host: ", authority, b"\r\n\r\n")),
        False, False, False, None, False, authority,
        clientHost if rules.stickyKind == "source" else None,
        keepAlive, method in IDEMPOTENT, False,
    )


def askingTrailers(head: bytes) -> bytes:
    """
    A planned request C{head} that asks the backend for trailers: with
    C{TE: trailers} and the C{Connection: TE} its sender must add (RFC
    9110 10.1.4), for a client that takes them but whose own C{TE} a plan
    drops with the other hop-by-hop fields (an HTTP/2 client's C{te}).
    """
    return head[:-2] + b"TE: trailers\r\nConnection: TE\r\n\r\n"


def websocketAccept(key: bytes) -> bytes:
    """
    The C{Sec-WebSocket-Accept} a server must answer C{key} with (RFC 6455).
    """
    return base64.b64encode(hashlib.sha1(key.strip() + _WEBSOCKET_GUID).digest())


class BadResponse(Exception):
    """
    A response head a proxy must not relay: the client gets a 502.
    """


# How a response body reaches the client.
NO_BODY = 0  # none, whatever the head says
AS_IS = 1  # a Content-Length body, relayed as it comes
CHUNKED = 2  # relayed as chunks (the backend's chunks or its close-delimited body)
UNTIL_CLOSE = 3  # an HTTP/1.0 client without a length: ended by closing


class ResponsePlan:
    """
    What a response head comes to.

    @ivar head: the head to send to the client.
    @ivar framing: how the body is sent on (L{NO_BODY}, L{AS_IS},
        L{CHUNKED}, L{UNTIL_CLOSE}).
    @ivar untilClose: the backend ends the body by closing its connection.
    @ivar closeAfter: the client connection closes after this response.
    @ivar skipBody: the backend will send a body that must not be relayed
        (a reply to HEAD that says how long the body would be).
    @ivar length: the body's length, for an L{AS_IS} body.
    """

    __slots__ = ("closeAfter", "framing", "head", "length", "skipBody", "untilClose")

    def __init__(
        self, head: bytes, framing: int, untilClose: bool, closeAfter: bool, skipBody: bool,
        length: int | None = None,
    ) -> None:
        self.head = head
        self.framing = framing
        self.untilClose = untilClose
        self.closeAfter = closeAfter
        self.skipBody = skipBody
        self.length = length


def interimHead(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    """
    The head of an interim (1xx) response to send on, filtered as final
    responses are.
    """
    parts = [b"HTTP/1.1 %d %s" % (status, reason)]
    parts.extend(n + b": " + v for n, v in headers if forwarded(n.lower()))
    named = set()
    for n, v in headers:
        if n.lower() == b"connection":
            named.update(splitTokens(v))
    named -= NEVER_NAMED
    if named:
        parts = withoutNamed(parts, named)
    parts.append(b"\r\n")
    return b"\r\n".join(parts)


def switchingHead(
    reason: bytes, headers: list[tuple[bytes, bytes]], websocketKey: bytes | None
) -> bytes:
    """
    The head of a backend's C{101 Switching Protocols}, sent on whole
    (its Connection and Upgrade headers are the tunnel's).

    @raise BadResponse: a WebSocket handshake without the right
        C{Sec-WebSocket-Accept}.
    """
    if websocketKey is not None:
        accept = [v for n, v in headers if n.lower() == b"sec-websocket-accept"]
        if accept != [websocketAccept(websocketKey)]:
            raise BadResponse("101 without a valid Sec-WebSocket-Accept")
    parts = [b"HTTP/1.1 101 %s\r\n" % reason]
    parts.extend(n + b": " + v + b"\r\n" for n, v in headers)
    parts.append(b"\r\n")
    return b"".join(parts)


def planResponse(
    status: int,
    reason: bytes,
    headers: list[tuple[bytes, bytes]],
    method: bytes,
    http11: bool,
    keepAlive: bool,
    cookie: bytes | None = None,
) -> ResponsePlan:
    """
    Plan a final response's way to the client.

    @param method: the request's method (a reply to HEAD has no body).
    @param http11: the client spoke HTTP/1.1 (it understands chunks).
    @param keepAlive: the client connection may stay open after this
        response (the client wants it, the request was read whole, the
        balancer is not stopping).
    @param cookie: a C{Set-Cookie} header line's value to add, if any.

    @raise BadResponse: a head that must not be relayed.
    """
    noBody = status in NO_BODY_STATUSES
    head = method == b"HEAD"
    # Header lines without their CRLF, joined by CRLF at the end: fewer
    # objects made than with each line's own CRLF (it is the hot path).
    line = _STATUS_LINES.get(status)
    parts = [b"HTTP/1.1 %d %s" % (status, reason) if line is None else line + reason]
    append = parts.append
    length = None
    te = None
    connection = None
    kinds = _RESPONSE_KINDS.get
    for field in headers:
        kind = kinds(field[0])
        if kind is None:
            kind = _kind(_RESPONSE_SPECIAL, field[0])
        if not kind:
            append(b": ".join(field))
            continue
        # (The kinds most responses have first.)
        if kind is _LENGTH:
            if noBody and status == 204:
                # RFC 9110 8.6: a 204 has no Content-Length.
                continue
            length = field[1]
            append(b": ".join(field))
            continue
        if kind is _CONNECTION:
            # Hop-by-hop, and so are the fields it names (RFC 9110 7.6.1).
            value = field[1]
            if (value != b"keep-alive" and value != b"close"
                    and value.lower() not in USUAL_CONNECTION):
                connection = (connection or []) + splitTokens(value)
            continue
        if kind is _HOP:
            continue
        # The framing.
        if te is not None:
            raise BadResponse("repeated Transfer-Encoding")
        te = field[1]
    if te is not None and te.strip(b" \t").lower() != b"chunked":
        raise BadResponse(f"unsupported Transfer-Encoding {te!r}")
    if connection:
        named = set(connection) - NEVER_NAMED
        if named:
            parts = withoutNamed(parts, named)
            append = parts.append
    untilClose = False
    if noBody or head:
        framing = NO_BODY
    elif length is not None:
        framing = AS_IS
    else:
        untilClose = te is None
        if http11:
            framing = CHUNKED
            append(b"Transfer-Encoding: chunked")
        else:
            framing = UNTIL_CLOSE
            keepAlive = False
    if cookie is not None:
        append(b"Set-Cookie: " + cookie)
    if not keepAlive:
        append(b"Connection: close")
    elif not http11:
        append(b"Connection: keep-alive")
    append(b"\r\n")
    return ResponsePlan(
        b"\r\n".join(parts), framing, untilClose, not keepAlive,
        # (AS_IS: a length was given.)
        head and not noBody, int(length) if framing is AS_IS else None,  # type: ignore[arg-type]
    )


# A response head's fields that the response plan does not relay as they
# are, in a lowercased head: the framing and the hop-by-hop ones (a field
# line begins after a CRLF, its name ends at its colon: llhttp refuses
# whitespace before a colon, a bare CR or LF, and folded lines; see
# L{lbtwist.http._backend}).  A name found is lowercased, its value as sent
# (without the spaces before it).
_RESPONSE_SPECIAL_LINES = re.compile(
    rb"\r\n(content-length|connection|keep-alive|te|trailer|transfer-encoding|upgrade"
    rb"|proxy-[^:]*):[ \t]*([^\r]*)"
)


# A response head as its bytes, with its special lines (see L{specialLines}).
RawHead = tuple[bytes, list[tuple[bytes, bytes]]]


def specialLines(head: bytes) -> list[tuple[bytes, bytes]]:
    """
    The fields of a response head (its bytes, status line first, each line
    with its CRLF, without the empty line that ends it) that the response
    plan does not relay as they are: the framing and the hop-by-hop ones,
    each as its lowercased name and its value (lowercased, without the
    spaces before it).  The head is one that llhttp parsed: one CRLF ends
    each line, and each field line is C{name:value}.
    """
    return _RESPONSE_SPECIAL_LINES.findall(head.lower())


def rawResponseFields(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    """
    The reason and the fields of a response head read by llhttp (see
    L{specialLines}), as llhttp's callbacks give them: each name as sent,
    each value without the spaces and tabs before it.
    """
    lines = head.split(b"\r\n")
    # (The status line: "HTTP/1.1 200 OK", or "HTTP/1.1 200" without a reason.)
    reason = lines[0][13:]
    fields = []
    for line in lines[1:-1]:
        name, _, value = line.partition(b":")
        fields.append((name, value.lstrip(b" \t")))
    return reason, fields


def planRawResponse(
    status: int,
    head: bytes,
    special: list[tuple[bytes, bytes]],
    method: bytes,
    http11: bool,
    keepAlive: bool,
    cookie: bytes | None = None,
) -> ResponsePlan | None:
    """
    Plan a final response's way to the client as L{planResponse} does, but
    from the head's bytes (see L{specialLines}) rather than its fields, for
    the usual head: one that names no hop-by-hop field, but for a
    C{Connection} that says what this response's own does (C{keep-alive}
    or C{close}), kept where it is (RFC 9110 7.6.1: an intermediary may
    replace the Connection field with its own options; here they are the
    same).  Such a head is relayed as it came, with the fields the plan
    adds after it; no field is made again.

    @param special: the head's L{specialLines}.

    @return: the plan, or L{None} for a head that is not usual (any other
        hop-by-hop field, a framing to change, an HTTP/1.0 status line):
        L{planResponse} then plans it from its fields.
    """
    if status in NO_BODY_STATUSES or head[:9] != b"HTTP/1.1 " or head[12] != 32:  # 32: " "
        # (A 204 loses its length; a status line gets its version, or its
        # space before an empty reason.)
        return None
    length = None
    connection = None
    for name, value in special:
        if name == b"content-length":
            length = value
        elif name == b"connection" and connection is None:
            connection = value
        else:
            return None
    replyToHead = method == b"HEAD"
    if replyToHead:
        framing = NO_BODY
    elif length is not None:
        framing = AS_IS
    elif http11:
        # A body until the backend closes, as chunks.
        framing = CHUNKED
    else:
        framing = UNTIL_CLOSE
        keepAlive = False
    # What follows the head's fields, in L{planResponse}'s order.
    extra = b"\r\n"
    if keepAlive:
        if connection is None:
            if not http11:
                extra = b"Connection: keep-alive\r\n\r\n"
        elif connection.rstrip(b" \t") != b"keep-alive":
            return None
    elif connection is None:
        extra = b"Connection: close\r\n\r\n"
    elif connection.rstrip(b" \t") != b"close":
        return None
    if cookie is not None:
        extra = b"Set-Cookie: " + cookie + b"\r\n" + extra
    if framing is CHUNKED:
        extra = b"Transfer-Encoding: chunked\r\n" + extra
    return ResponsePlan(
        head + extra, framing, not replyToHead and length is None, not keepAlive, replyToHead,
        int(length) if framing is AS_IS else None,  # type: ignore[arg-type]
    )


# What follows a backend connection lost before its response was complete.
GIVE_UP = 0  # 502, or a truncated response
RETRY_FRESH = 1  # a new connection to the same backend: the pooled one was stale
RETRY_OTHER = 2  # another backend


def retryAfterLoss(
    responded: bool, replayable: bool, reused: bool, staleResent: bool, mayTryAnother: bool
) -> int:
    """
    Decide what follows when a backend connection carrying a request is lost
    before the response is complete.

    A pooled connection lost before any response byte was most likely
    closed by the backend as it sat idle: the request is sent once more on
    a new connection to the same backend, outside the retries, so that a
    stale pooled connection never surfaces as a 502.  That allowance is
    once per request, not once per backend: any later loss is a failure,
    and another backend is tried only within the retries.

    @param responded: part of a response reached the client.
    @param replayable: the request may be sent again (L{RequestPlan}).
    @param reused: the connection was a pooled one, used before: its loss
        (the request's first such) is a stale connection, no fault of the
        backend's.
    @param staleResent: the request was already sent again after a pooled
        connection of its own was found closed.
    @param mayTryAnother: the retry policy allows another try.
    """
    if responded or not replayable:
        return GIVE_UP
    if reused and not staleResent:
        return RETRY_FRESH
    return RETRY_OTHER if mayTryAnother else GIVE_UP
