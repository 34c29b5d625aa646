"""
Table tests of HTTP mode's pure functions (L{lbtwist.http._plan}): the
request plan (llhttp's parse included, as the client connection runs it),
the response plan, the 101 check and the retry decision.  No sockets, no
reactor: every request-smuggling shape of the loopback suite runs here too.
"""

from __future__ import annotations

from typing import Any

from httptools import HttpParserError, HttpParserUpgrade, HttpRequestParser, HttpResponseParser
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.http._errors import BadRequest
from lbtwist.http._plan import (
    _REQUEST_SPECIAL,
    AS_IS,
    CHUNKED,
    GIVE_UP,
    NO_BODY,
    RETRY_FRESH,
    RETRY_OTHER,
    UNTIL_CLOSE,
    BadResponse,
    CapturedRequestPlan,
    RequestPlan,
    RequestRules,
    declaredLength,
    interimHead,
    planRawResponse,
    planRequest,
    planResponse,
    planWholeRequest,
    rawResponseFields,
    retryAfterLoss,
    specialLines,
    switchingHead,
    websocketAccept,
)
from lbtwist.http._strict import LOOSE_REQUEST_HEADS, ReadFields, requestParser

from .test_http_errors import SMUGGLING

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


class _Head:
    """
    Collects what llhttp parses of one request and plans it, as the client
    connection does.
    """

    def __init__(self, rules: RequestRules) -> None:
        self.rules = rules
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.plan: RequestPlan | None = None
        self.parser = HttpRequestParser(self)
        self.parser.set_dangerous_leniencies(lenient_version=True)

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        p = self.parser
        self.plan = planRequest(
            p.get_method(), self.url, p.get_http_version(), self.headers,
            p.should_keep_alive(), p.should_upgrade(), b"10.0.0.9", b"127.0.0.1:8080",
            self.rules,
        )


def plan(raw: bytes, rules: RequestRules | None = None) -> RequestPlan | int:
    """
    Parse and plan C{raw}: the plan, or the status it is refused with.
    """
    head = _Head(rules or RequestRules())
    try:
        head.parser.feed_data(raw)
    except HttpParserUpgrade:
        pass
    except HttpParserError as e:
        cause = e.__context__
        return cause.status if isinstance(cause, BadRequest) else 400
    assert head.plan is not None
    return head.plan


def headerLines(head: bytes) -> list[bytes]:
    """
    The header lines of a head, without the first line.
    """
    return head.split(b"\r\n")[1:-2]


class RequestPlanTests(SynchronousTestCase):
    """
    L{planRequest}, after llhttp.
    """

    def planned(self, raw: bytes, rules: RequestRules | None = None) -> RequestPlan:
        result = plan(raw, rules)
        assert isinstance(result, RequestPlan), result
        return result

    def test_smuggling(self) -> None:
        """
        Every smuggling shape of the loopback suite is refused with 400
        before anything could be sent.
        """
        refused = {name: plan(raw) for name, raw in SMUGGLING.items()}
        self.assertEqual(refused, {name: 400 for name in SMUGGLING})

    def test_refusals(self) -> None:
        """
        What else is refused, and with which status.
        """
        cases = {
            b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n": 501,
            b"GET / HTTP/2.0\r\nHost: a\r\n\r\n": 505,
            b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n": 400,
            b"GET http://user@a/ HTTP/1.1\r\nHost: a\r\n\r\n": 400,
            b"GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n": 400,
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
             b"Sec-WebSocket-Version: 13\r\n\r\n"): 400,
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
             b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 8\r\n\r\n"): 400,
            (b"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: websocket\r\n"
             b"Sec-WebSocket-Key: " + KEY + b"\r\n\r\n"): 400,
            (b"POST / HTTP/1.1\r\nHost: a\r\nConnection: upgrade\r\nUpgrade: foo\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n"): 400,
        }
        self.assertEqual({raw: plan(raw) for raw in cases}, cases)

    def test_hopByHop(self) -> None:
        """
        Connection, Keep-Alive, TE, Trailer, Proxy-* and the headers the
        client's Connection names are removed; the framing and Host never
        are, whatever Connection names.
        """
        p = self.planned(
            b"POST / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret, "
            b"content-length, host\r\nKeep-Alive: 5\r\nTE: trailers\r\nTrailer: X\r\n"
            b"Proxy-Authorization: x\r\nX-Secret: s\r\nX-Kept: k\r\nContent-Length: 2\r\n\r\nab"
        )
        self.assertEqual(headerLines(p.head), [
            b"Host: a", b"X-Kept: k", b"Content-Length: 2",
            b"X-Forwarded-For: 10.0.0.9", b"X-Forwarded-Proto: http", b"X-Forwarded-Host: a",
        ])
        self.assertTrue(p.hasBody)
        self.assertFalse(p.replayable)

    def test_forwarded(self) -> None:
        """
        X-Forwarded-For is appended to (all of the client's joined), and
        X-Forwarded-Proto and -Host are set, never taken from the client.
        """
        p = self.planned(
            b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.1.1.1\r\n"
            b"X-Forwarded-For: 2.2.2.2\r\nX-Forwarded-Proto: https\r\n"
            b"X-Forwarded-Host: evil\r\n\r\n",
            RequestRules(forwardedProto=b"https"),
        )
        self.assertEqual(headerLines(p.head), [
            b"Host: a", b"X-Forwarded-For: 1.1.1.1, 2.2.2.2, 10.0.0.9",
            b"X-Forwarded-Proto: https", b"X-Forwarded-Host: a",
        ])

    def test_absoluteForm(self) -> None:
        """
        An absolute-form target's authority is the one authority: Host is
        replaced by it (RFC 9112 3.2.2), X-Forwarded-Host says it too.
        """
        p = self.planned(b"GET http://Hostname1:81/x?y HTTP/1.1\r\nHost: hostname2\r\n\r\n")
        self.assertEqual(p.authority, b"Hostname1:81")
        self.assertEqual(headerLines(p.head), [
            b"Host: Hostname1:81", b"X-Forwarded-For: 10.0.0.9", b"X-Forwarded-Proto: http",
            b"X-Forwarded-Host: Hostname1:81",
        ])
        self.assertTrue(p.head.startswith(b"GET http://Hostname1:81/x?y HTTP/1.1\r\n"))

    def test_hostHeaderSetting(self) -> None:
        """
        C{http.host-header} replaces Host; X-Forwarded-Host keeps the
        client's authority.
        """
        p = self.planned(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", RequestRules(hostHeader=b"app"))
        self.assertEqual(headerLines(p.head)[0::3], [b"Host: app", b"X-Forwarded-Host: a"])

    def test_http10(self) -> None:
        """
        An HTTP/1.0 request without Host is sent upstream as HTTP/1.1 with
        the Host of the address the client reached; its keep-alive is its
        own to ask for.
        """
        p = self.planned(b"GET / HTTP/1.0\r\n\r\n")
        self.assertTrue(p.head.startswith(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n"))
        self.assertFalse(p.keepAlive)
        self.assertTrue(self.planned(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keepAlive)

    def test_unknownMinorVersion(self) -> None:
        """
        HTTP/1.2 is handled as HTTP/1.1 (RFC 9110 2.5).
        """
        p = self.planned(b"GET / HTTP/1.2\r\nHost: a\r\n\r\n")
        self.assertTrue(p.head.startswith(b"GET / HTTP/1.1\r\n"))
        self.assertTrue(p.keepAlive)

    def test_websocket(self) -> None:
        """
        A WebSocket upgrade with its key and version 13 is forwarded with
        its Upgrade; the key is kept to check the 101 against.
        """
        p = self.planned(
            b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Key: " + KEY + b"\r\nSec-WebSocket-Version: 13\r\n\r\n"
        )
        self.assertTrue(p.upgrade)
        self.assertEqual(p.websocketKey, KEY)
        self.assertTrue(p.head.endswith(b"Connection: upgrade\r\nUpgrade: websocket\r\n\r\n"))
        self.assertFalse(p.replayable)

    def test_declaredLength(self) -> None:
        """
        L{declaredLength} finds a head's Content-Length however it is
        spelled, and is 0 without one.
        """
        cases = {
            ((b"Host", b"a"),): 0,
            ((b"Content-Length", b"5"),): 5,
            ((b"Host", b"a"), (b"content-LENGTH", b"12")): 12,
            ((b"X-Content-Length", b"5"),): 0,
        }
        self.assertEqual({h: declaredLength(list(h)) for h in cases}, cases)

    def test_bodies(self) -> None:
        """
        The body's framing, and what may be replayed.
        """
        cases: dict[bytes, tuple[bool, bool, bool, bool]] = {
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n": (False, False, True, False),
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n": (False, False, True, False),
            b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\n\r\nx": (True, False, False, False),
            b"PUT / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n": (
                True, True, False, False),
            b"POST / HTTP/1.1\r\nHost: a\r\n\r\n": (False, False, False, False),
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx": (
                True, False, False, True),
        }
        got = {}
        for raw in cases:
            p = self.planned(raw)
            got[raw] = (p.hasBody, p.chunked, p.replayable, p.expectContinue)
        self.assertEqual(got, cases)

    def test_sticky(self) -> None:
        """
        The sticky key: the cookie's value, the header's (else the client's
        address), or the client's address.
        """
        raw = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; SRV=abc; b=2\r\nX-User: u7\r\n\r\n"
        keys = {
            kind: self.planned(raw, RequestRules(stickyKind=kind, stickyName=name)).stickyKey
            for kind, name in (("cookie", b"SRV"), ("header", b"x-user"), ("source", b""))
        }
        self.assertEqual(keys, {"cookie": b"abc", "header": b"u7", "source": b"10.0.0.9"})
        noHeader = self.planned(
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", RequestRules(stickyKind="header", stickyName=b"X")
        )
        self.assertEqual(noHeader.stickyKey, b"10.0.0.9")

    def test_captureHeaders(self) -> None:
        """
        Rules that capture headers (a pool whose access log writes them)
        give plans with the request's first C{Referer} and C{User-Agent},
        spelled any way (HTTP/2 sends them lowercase), or L{None}; a plan
        of ordinary rules is a plain L{RequestPlan} with neither.  Either
        way the head sent upstream is the same.
        """
        capturing = RequestRules(captureHeaders=True)
        cases = [
            (b"Referer: https://a/\r\nUser-Agent: curl/8.5.0\r\n",
             (b"https://a/", b"curl/8.5.0")),
            (b"referer: r\r\nuser-agent: u\r\n", (b"r", b"u")),
            (b"REFERER: r1\r\nReferer: r2\r\nuSER-aGENT: u1\r\nUser-Agent: u2\r\n",
             (b"r1", b"u1")),
            (b"User-Agent: Mozilla/5.0 (X11; \"q\")\r\n", (None, b'Mozilla/5.0 (X11; "q")')),
            (b"Referrer: misspelt\r\nX-User-Agent: other\r\n", (None, None)),
            (b"", (None, None)),
        ]
        got = []
        for fields, _ in cases:
            raw = b"GET /p HTTP/1.1\r\nHost: a\r\n" + fields + b"\r\n"
            captured = self.planned(raw, capturing)
            ordinary = self.planned(raw)
            self.assertIs(type(captured), CapturedRequestPlan)
            self.assertIs(type(ordinary), RequestPlan)
            self.assertEqual((ordinary.referer, ordinary.userAgent), (None, None))
            self.assertEqual(captured.head, ordinary.head)
            got.append((fields, (captured.referer, captured.userAgent)))
        self.assertEqual(got, cases)

    def test_captureKeepsThePlan(self) -> None:
        """
        Rules capture nothing unless told; a captured plan is the plain
        plan's every field and the two headers.
        """
        self.assertFalse(RequestRules().captureHeaders)
        raw = (b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n"
               b"Cookie: SRV=s1\r\nTE: trailers\r\nUser-Agent: u\r\n\r\nhi")
        sticky = {"stickyKind": "cookie", "stickyName": b"SRV"}
        ordinary = self.planned(raw, RequestRules(**sticky))  # type: ignore[arg-type]
        captured = self.planned(raw, RequestRules(captureHeaders=True, **sticky))  # type: ignore[arg-type]
        fields = RequestPlan.__slots__
        self.assertEqual({n: getattr(captured, n) for n in fields},
                         {n: getattr(ordinary, n) for n in fields})
        self.assertEqual((ordinary.stickyKey, ordinary.hasBody, ordinary.expectContinue,
                          ordinary.trailers), (b"s1", True, True, True))
        self.assertEqual((captured.referer, captured.userAgent), (None, b"u"))


# Each special name of either plan in three spellings: the usual one (which
# the plans look up as it comes), lowercase (likewise), and one no table
# holds (lowered first).
_SPECIAL_SPELLINGS = {
    name: (name, name.lower(), name.swapcase())
    for name in (b"Connection", b"Keep-Alive", b"TE", b"Trailer", b"Transfer-Encoding",
                 b"Upgrade", b"Content-Length", b"Host", b"Expect", b"Cookie",
                 b"X-Forwarded-For", b"X-Forwarded-Proto", b"X-Forwarded-Host",
                 b"Proxy-Connection", b"Proxy-Authorization", b"Proxy-Authenticate",
                 b"Proxy-Anything")
}


class SpelledNameTests(SynchronousTestCase):
    """
    The plans look usual spellings of field names up as they come and lower
    the others: every spelling of a name means the same.
    """

    def test_request(self) -> None:
        """
        A request's head comes out the same whichever way its special
        fields are spelled.
        """
        def head(spelling: int) -> bytes:
            n = {name: spelled[spelling] for name, spelled in _SPECIAL_SPELLINGS.items()}
            raw = (b"POST / HTTP/1.1\r\n" + n[b"Host"] + b": a\r\n" + n[b"Connection"]
                   + b": keep-alive, X-Named\r\nX-Named: gone\r\n" + n[b"Keep-Alive"]
                   + b": 5\r\n" + n[b"TE"] + b": trailers\r\n" + n[b"Trailer"] + b": X\r\n"
                   + n[b"Proxy-Authorization"] + b": p\r\n" + n[b"Proxy-Anything"]
                   + b": p\r\n" + n[b"X-Forwarded-For"] + b": 1.2.3.4\r\n"
                   + n[b"X-Forwarded-Proto"] + b": https\r\n" + n[b"X-Forwarded-Host"]
                   + b": evil\r\n" + n[b"Cookie"] + b": SRV=s1\r\n" + n[b"Expect"]
                   + b": 100-continue\r\n" + n[b"Transfer-Encoding"] + b": chunked\r\n\r\n")
            result = plan(raw, RequestRules(stickyKind="cookie", stickyName=b"SRV"))
            assert isinstance(result, RequestPlan), result
            self.assertEqual((result.chunked, result.expectContinue, result.trailers,
                              result.stickyKey), (True, True, True, b"s1"))
            # Names as they came; the rest of each line as the plan made it.
            return b"\r\n".join(line.split(b":", 1)[-1] for line in result.head.split(b"\r\n"))

        usual, lowered, other = (head(i) for i in range(3))
        self.assertEqual(usual, lowered)
        self.assertEqual(usual, other)
        self.assertNotIn(b"gone", usual)
        kept = plan(b"GET / HTTP/1.1\r\nHost: a\r\nX-Named: kept\r\n\r\n")
        assert isinstance(kept, RequestPlan)
        self.assertIn(b"X-Named: kept", headerLines(kept.head))

    def test_response(self) -> None:
        """
        A response's head comes out the same whichever way its special
        fields are spelled, and a repeated Transfer-Encoding is refused in
        every spelling.
        """
        def head(spelling: int) -> tuple[bytes, int]:
            n = {name: spelled[spelling] for name, spelled in _SPECIAL_SPELLINGS.items()}
            headers = [(n[name], b"v") for name in (
                b"Connection", b"Keep-Alive", b"Trailer", b"Upgrade", b"Proxy-Connection",
                b"Proxy-Authenticate", b"Proxy-Anything")]
            headers += [(b"X-Kept", b"k"), (n[b"Content-Length"], b"3")]
            result = planResponse(200, b"OK", headers, b"GET", True, True)
            return result.head, result.length

        self.assertEqual(head(0), (b"HTTP/1.1 200 OK\r\nX-Kept: k\r\nContent-Length: 3\r\n\r\n", 3))
        self.assertEqual(head(1), (b"HTTP/1.1 200 OK\r\nX-Kept: k\r\ncontent-length: 3\r\n\r\n", 3))
        self.assertEqual(head(2), (b"HTTP/1.1 200 OK\r\nX-Kept: k\r\ncONTENT-lENGTH: 3\r\n\r\n", 3))
        for te in _SPECIAL_SPELLINGS[b"Transfer-Encoding"]:
            self.assertRaises(BadResponse, planResponse, 200, b"OK",
                              [(te, b"chunked"), (te, b"chunked")], b"GET", True, True)

    def test_stickyHeader(self) -> None:
        """
        The sticky header is found whichever way the request spells it, a
        name the plans look up as it comes (X-Real-IP) as much as one they
        lower first; a sticky header that is hop-by-hop or replaced by the
        balancer (X-Forwarded-For, Proxy-*) never keys the choice.
        """
        for configured in (b"X-Real-IP", b"x-real-ip", b"X-REAL-IP"):
            for sent in (b"X-Real-IP", b"x-real-ip", b"x-REAL-ip"):
                rules = RequestRules(stickyKind="header", stickyName=configured)
                result = plan(b"GET / HTTP/1.1\r\nHost: a\r\n" + sent + b": s7\r\n\r\n", rules)
                assert isinstance(result, RequestPlan), (configured, sent)
                self.assertEqual(result.stickyKey, b"s7", (configured, sent))
        for name in (b"X-Forwarded-For", b"Proxy-Session", b"Keep-Alive"):
            rules = RequestRules(stickyKind="header", stickyName=name)
            result = plan(b"GET / HTTP/1.1\r\nHost: a\r\n" + name.swapcase()
                          + b": s7\r\n\r\n", rules)
            assert isinstance(result, RequestPlan), name
            self.assertEqual(result.stickyKey, b"10.0.0.9", name)

    def test_responseTableAgreesWithFilter(self) -> None:
        """
        Every name the response plan looks up as it comes, in every
        spelling, is dropped from a final response exactly when the one
        hop-by-hop filter (used for interim responses) drops it.
        """
        from lbtwist.http._plan import _COMMON_RESPONSE_NAMES

        for usual in _COMMON_RESPONSE_NAMES.split():
            name = usual.encode("ascii")
            if name.lower() in (b"content-length", b"transfer-encoding"):
                continue
            for spelled in (name, name.lower(), name.swapcase(), name.upper()):
                final = planResponse(200, b"OK", [(spelled, b"v"), (b"Content-Length", b"0")],
                                     b"GET", True, True)
                interim = interimHead(103, b"Early Hints", [(spelled, b"v")])
                self.assertEqual(spelled + b": v" in final.head.split(b"\r\n"),
                                 spelled + b": v" in interim.split(b"\r\n"), spelled)


class ResponsePlanTests(SynchronousTestCase):
    """
    L{planResponse}, L{interimHead} and L{switchingHead}.
    """

    def respond(self, status: int = 200, headers: list[tuple[bytes, bytes]] | None = None,
                method: bytes = b"GET", http11: bool = True, keepAlive: bool = True,
                cookie: bytes | None = None) -> Any:
        return planResponse(status, b"OK", headers or [], method, http11, keepAlive, cookie)

    def test_oneHopByHopFilter(self) -> None:
        """
        Interim and final responses lose the same hop-by-hop headers,
        Proxy-* included.
        """
        headers = [(b"Connection", b"x"), (b"Keep-Alive", b"1"), (b"Proxy-Thing", b"p"),
                   (b"Upgrade", b"h2"), (b"X-Kept", b"k")]
        self.assertEqual(interimHead(103, b"Early Hints", headers),
                         b"HTTP/1.1 103 Early Hints\r\nX-Kept: k\r\n\r\n")
        final = self.respond(headers=headers + [(b"Content-Length", b"0")])
        self.assertEqual(final.head,
                         b"HTTP/1.1 200 OK\r\nX-Kept: k\r\nContent-Length: 0\r\n\r\n")

    def test_connectionNamedFields(self) -> None:
        """
        Fields a response's Connection header names are hop-by-hop as it
        is (RFC 9110 7.6.1), in interim and final responses alike, however
        either is spelled; the framing is never dropped that way, and the
        usual values name nothing.
        """
        cases = {
            b"X-Secret": b"X-Kept: k\r\n",
            b"keep-alive, x-SECRET": b"X-Kept: k\r\n",
            b"close": b"X-Secret: s\r\nX-Kept: k\r\n",
            b"Content-Length, X-Secret": b"X-Kept: k\r\n",
        }
        got = {}
        for value in cases:
            headers = [(b"connection", value), (b"X-Secret", b"s"), (b"X-Kept", b"k")]
            interim = interimHead(103, b"Early Hints", headers)
            final = self.respond(headers=headers + [(b"Content-Length", b"0")])
            self.assertEqual(final.head.replace(b"Content-Length: 0\r\n", b"")[17:],
                             interim[26:], value)
            self.assertIn(b"Content-Length: 0\r\n", final.head)
            got[value] = interim[26:-2]
        self.assertEqual(got, cases)

    def test_framing(self) -> None:
        """
        How each kind of response body goes to the client.
        """
        length = [(b"Content-Length", b"3")]
        chunked = [(b"Transfer-Encoding", b"chunked")]
        cases = {
            "length": (self.respond(headers=length), AS_IS, False, False),
            "chunked": (self.respond(headers=chunked), CHUNKED, False, False),
            "until close, 1.1": (self.respond(), CHUNKED, True, False),
            "until close, 1.0": (self.respond(http11=False), UNTIL_CLOSE, True, True),
            "HEAD": (self.respond(headers=length, method=b"HEAD"), NO_BODY, False, False),
            "204": (self.respond(204, length), NO_BODY, False, False),
            "304": (self.respond(304, length), NO_BODY, False, False),
        }
        got = {name: (r.framing, r.untilClose, r.closeAfter) for name, (r, *_) in cases.items()}
        self.assertEqual(got, {name: tuple(rest) for name, (_, *rest) in cases.items()})
        self.assertIn(b"Transfer-Encoding: chunked\r\n", cases["until close, 1.1"][0].head)
        self.assertIn(b"Connection: close\r\n", cases["until close, 1.0"][0].head)
        self.assertTrue(cases["HEAD"][0].skipBody)

    def test_204DropsContentLength(self) -> None:
        """
        A 204 goes on without its Content-Length (RFC 9110 8.6); a 304
        keeps its own.
        """
        length = [(b"Content-Length", b"3")]
        self.assertNotIn(b"Content-Length", self.respond(204, length).head)
        self.assertIn(b"Content-Length: 3", self.respond(304, length).head)

    def test_transferEncodings(self) -> None:
        """
        Any Transfer-Encoding but one C{chunked} is a bad response.
        """
        for te in ([b"chunked, chunked"], [b"chunked, gzip, chunked"], [b"chunked, gzip"],
                   [b"gzip"], [b"chunked", b"chunked"]):
            headers = [(b"Transfer-Encoding", v) for v in te]
            self.assertRaises(BadResponse, self.respond, headers=headers)
        self.assertEqual(self.respond(headers=[(b"Transfer-Encoding", b" Chunked ")]).framing,
                         CHUNKED)

    def test_keepAliveAndCookie(self) -> None:
        """
        Connection: close when the client connection will close; keep-alive
        said to HTTP/1.0 clients; the sticky cookie added.
        """
        length = [(b"Content-Length", b"0")]
        self.assertIn(b"Connection: close\r\n", self.respond(headers=length, keepAlive=False).head)
        self.assertIn(b"Connection: keep-alive\r\n",
                      self.respond(headers=length, http11=False).head)
        self.assertIn(b"Set-Cookie: SRV=1; Path=/\r\n",
                      self.respond(headers=length, cookie=b"SRV=1; Path=/").head)

    def test_websocketAccept(self) -> None:
        """
        A 101 to a WebSocket upgrade must carry the right accept value
        (RFC 6455's own example); other upgrades are not checked.
        """
        self.assertEqual(websocketAccept(KEY), b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        good = [(b"Upgrade", b"websocket"), (b"Sec-WebSocket-Accept", websocketAccept(KEY))]
        self.assertIn(b"Sec-WebSocket-Accept", switchingHead(b"Switching", good, KEY))
        self.assertRaises(BadResponse, switchingHead, b"S", [(b"Upgrade", b"websocket")], KEY)
        self.assertRaises(BadResponse, switchingHead, b"S",
                          [(b"Sec-WebSocket-Accept", b"wrong")], KEY)
        self.assertTrue(switchingHead(b"S", [(b"Upgrade", b"h2c")], None).startswith(
            b"HTTP/1.1 101 S\r\n"))


class _ResponseHead:
    """
    What llhttp's callbacks give of a response head.
    """

    def __init__(self, head: bytes) -> None:
        self.reason = b""
        self.fields: list[tuple[bytes, bytes]] = []
        self.status = 0
        parser = HttpResponseParser(self)
        parser.feed_data(head)
        self.status = parser.get_status_code()

    def on_status(self, reason: bytes) -> None:
        self.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self.fields.append((name, value))


# Response heads as backends send them (without the empty line that ends
# them), usual and not: spellings, spaces, repeated and empty fields,
# the framing and the hop-by-hop fields.
RAW_HEADS = [
    b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Length: 5\r\nConnection: keep-alive\r\n"
    b"ETag: \"x\"\r\n",
    b"HTTP/1.1 200 OK\r\ncontent-length:5\r\n",
    b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH: 5\t \r\nX-Empty:\r\nX-Colon: a:b: c\r\n",
    b"HTTP/1.1 404 Not Found Here\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n",
    b"HTTP/1.1 200 OK\r\nX-Only: 1\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection:  Keep-Alive \r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nConnection: close\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nKeep-Alive: timeout=5\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nProxy-Authenticate: x\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nUpgrade: h2c\r\nTrailer: x\r\nTE: trailers\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n",
    b"HTTP/1.1 200 OK\r\nTRANSFER-ENCODING: chunked\r\n",
    b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n",
    b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n",
    b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\n",
    b"HTTP/1.1 200\r\nContent-Length: 5\r\n",
    b"HTTP/1.1 200 \r\nContent-Length: 5\r\n",
    b"HTTP/1.1 500 Server Error\r\nX-Te: 1\r\nX-Connection: 2\r\nTEx: 3\r\nContent-Length: 5\r\n",
]


def connectionSays(head: bytes, http11: bool) -> bool:
    """
    Whether a response head keeps its connection open, as a client reads
    its Connection fields.
    """
    tokens = {t.strip().lower() for n, v in _ResponseHead(head + b"\r\n").fields
              if n.lower() == b"connection" for t in v.split(b",")}
    return b"close" not in tokens and (http11 or b"keep-alive" in tokens)


class RawResponsePlanTests(SynchronousTestCase):
    """
    L{planRawResponse}, L{specialLines} and L{rawResponseFields}: a usual
    response head goes on as its bytes, with what L{planResponse} would
    send of it.
    """

    def test_fieldsAsLlhttpGivesThem(self) -> None:
        """
        L{rawResponseFields} reads a head's reason and fields as llhttp's
        callbacks give them.
        """
        for head in RAW_HEADS:
            parsed = _ResponseHead(head + b"\r\n")
            self.assertEqual(rawResponseFields(head), (parsed.reason, parsed.fields), head)

    def test_specialLines(self) -> None:
        """
        The framing and hop-by-hop fields are found however they are
        spelled, and no other field, however alike its name.
        """
        self.assertEqual(
            [specialLines(head) for head in RAW_HEADS[1:3] + RAW_HEADS[6:8] + RAW_HEADS[9:14]
             + RAW_HEADS[19:]],
            [[(b"content-length", b"5")],
             [(b"content-length", b"5\t ")],
             [(b"content-length", b"5"), (b"connection", b"keep-alive ")],
             [(b"content-length", b"5"), (b"connection", b"keep-alive, x-a")],
             [(b"content-length", b"5"), (b"keep-alive", b"timeout=5")],
             [(b"content-length", b"5"), (b"proxy-authenticate", b"x")],
             [(b"content-length", b"5"), (b"upgrade", b"h2c"), (b"trailer", b"x"),
              (b"te", b"trailers")],
             [(b"transfer-encoding", b"chunked")],
             [(b"transfer-encoding", b"chunked")],
             [(b"content-length", b"5")]],
        )

    def test_unusualHeads(self) -> None:
        """
        A head with another hop-by-hop field, one whose Connection is not
        this response's, one whose framing or status line changes, is not
        planned as its bytes.
        """
        usual = {0, 1, 2, 3, 4, 6, 18, 19}
        for i, head in enumerate(RAW_HEADS):
            for method in (b"GET", b"HEAD"):
                plan = planRawResponse(parsedStatus(head), head, specialLines(head), method,
                                       True, True)
                self.assertEqual(plan is not None, i in usual, (head, method))
        # This response's own Connection: closing, a keep-alive is not kept.
        self.assertIsNone(planRawResponse(200, RAW_HEADS[0], specialLines(RAW_HEADS[0]),
                                          b"GET", True, False))
        self.assertIsNotNone(planRawResponse(200, RAW_HEADS[5], specialLines(RAW_HEADS[5]),
                                             b"GET", True, False))

    def test_sameAsFromFields(self) -> None:
        """
        A head planned as its bytes comes to what L{planResponse} makes of
        its fields: the same plan, and a head with the same status, reason
        and fields (but for the spaces before values, as sent), in the same
        order, and a Connection that says the same: the backend's, kept
        where it says what this response's does.
        """
        planned = 0
        for head in RAW_HEADS:
            status = parsedStatus(head)
            reason, fields = rawResponseFields(head)
            for method in (b"GET", b"HEAD"):
                for http11 in (True, False):
                    for keepAlive in (True, False):
                        for cookie in (None, b"s=b1; Path=/"):
                            raw = planRawResponse(status, head, specialLines(head), method,
                                                  http11, keepAlive, cookie)
                            if raw is None:
                                continue
                            planned += 1
                            case = (head, method, http11, keepAlive, cookie)
                            old = planResponse(status, reason, fields, method, http11,
                                               keepAlive, cookie)
                            self.assertEqual(
                                (raw.framing, raw.untilClose, raw.closeAfter, raw.skipBody,
                                 raw.length),
                                (old.framing, old.untilClose, old.closeAfter, old.skipBody,
                                 old.length), case)
                            self.assertTrue(raw.head.startswith(head), case)
                            self.assertTrue(raw.head.endswith(b"\r\n\r\n"), case)
                            sent, wanted = _ResponseHead(raw.head), _ResponseHead(old.head)
                            self.assertEqual(
                                (sent.status, sent.reason,
                                 [f for f in sent.fields if f[0].lower() != b"connection"]),
                                (wanted.status, wanted.reason,
                                 [f for f in wanted.fields if f[0].lower() != b"connection"]),
                                case)
                            self.assertEqual(
                                (connectionSays(raw.head[:-2], http11), raw.closeAfter),
                                (connectionSays(old.head[:-2], http11), old.closeAfter), case)
        self.assertGreater(planned, 50)


def parsedStatus(head: bytes) -> int:
    """
    A head's status, as llhttp reads it.
    """
    return _ResponseHead(head + b"\r\n").status


# Request heads, each all of a read: those WholeRequestPlanTests.usual
# counts are planned whole, the others from their fields.
WHOLE_HEADS = (
    b"GET /small HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n",
    b"GET /a?b=c&d=%20 HTTP/1.1\r\nhost:a.example\r\nAccept:  */* \r\n\r\n",
    b"HEAD / HTTP/1.1\r\nUser-Agent: x\r\nHOST: \tA.Example:81\t \r\nX-A:\r\n\r\n",
    (b"GET /page HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nAccept: text/html\r\n"
     b"User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 Safari/537.36\r\n"
     b"Accept-Encoding: gzip, deflate, br\r\nAccept-Language: en-US,en;q=0.9\r\n"
     b"Cookie: session=abc; theme=dark\r\nUpgrade-Insecure-Requests: 1\r\n"
     b"X-Forwarded-Fort: not one\r\nTE-X: 1\r\nHosts: 2\r\n\r\n"),
    b"DELETE /x HTTP/1.1\r\nConnection:Keep-Alive \t\r\nHost: a\r\n\r\n",
    b"OPTIONS /x HTTP/1.1\r\nHost: a\r\nconnection: keep-alive\r\nB: c\r\n\r\n",
    b"PROPFIND /form HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost:\r\n\r\n",
    b"GET /%C3%A9?q=%FF HTTP/1.1\r\nHost: a\r\nX: \xff\x80\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    b"GET / HTTP/1.1\r\nconnection:CLOSE\t \r\nHost: a\r\nClose: x\r\n\r\n",
    # Heads planned from their fields: a field a plan reads or drops...
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close, x-a\r\nX-A: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-a\r\nX-A: 1\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nConnection: keep-alive\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nKeep-Alive: 5\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTE: trailers\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nTrailer: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Key: k\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nx-forwarded-proto: https\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-Host: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nProxy-Authorization: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\nproxy-connection: keep-alive\r\n\r\n",
    # ... Host twice or not at all ...
    b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    b"GET / HTTP/1.1\r\nX: a\r\n\r\n",
    # ... a method whose requests nearly always have a body ...
    b"POST /form HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PUT /form HTTP/1.1\r\nHost: a\r\n\r\n",
    b"PATCH /form HTTP/1.1\r\nHost: a\r\n\r\n",
    # ... a line or a version other than an HTTP/1.1 one with an origin-form
    # target and one space each side of it ...
    b"GET / HTTP/1.0\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.2\r\nHost: a\r\n\r\n",
    b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
    b"CONNECT /a HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET  /a HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a  HTTP/1.1\r\nHost: a\r\n\r\n",
    b"\r\nGET /a HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /a#b HTTP/1.1\r\nHost: a\r\n\r\n",
    # ... (an HTTP/0.9 request line, which llhttp ends at a CR or a bare
    # LF: what follows is fields, whatever " HTTP/1.1" comes after them) ...
    b"GET /\r\n\r\n",
    b"GET /\r\nX:y\r\nb:c HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /\nX:y\r\nb:c HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET /\n\r\nb HTTP/1.1\r\nHost: a\r\n\r\n",
    # ... or more than a head in the read.
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: a\r\n\r\nX",
)


def wholePlan(raw: bytes, stickySource: bool = False) -> Any:
    """
    What a client connection's parser of whole heads makes of a read,
    C{raw}: L{planWholeRequest}'s answer at the end of its first head, as
    llhttp calls it; L{None} if llhttp refuses the read before that.
    """
    planned: list[Any] = []

    class Whole:
        def on_headers_complete(self) -> None:
            planned.append(planWholeRequest(
                raw, b"10.0.0.9", RequestRules(stickyKind="source" if stickySource else None)))
            if planned[0] is None:
                raise ReadFields()

    try:
        requestParser(Whole()).feed_data(raw)
    except HttpParserError as e:
        if planned and not isinstance(e.__context__, ReadFields):
            # (The plan was made, and llhttp refused what followed.)
            raise
        if e.__context__ is not None and not isinstance(e.__context__, ReadFields):
            # An error of the plan's own (a ValueError too, which this
            # helper must not take for its signal).
            raise e.__context__ from None
    except HttpParserUpgrade:
        pass
    return planned[0] if planned else None


def parsedRequest(head: bytes) -> tuple[bytes, bytes, str, list[tuple[bytes, bytes]]]:
    """
    The method, target, version and fields llhttp reads of a request head.
    """
    got = _Head(RequestRules())
    got.parser.feed_data(head)
    assert got.plan is not None
    return got.parser.get_method(), got.url, got.parser.get_http_version(), got.headers


class WholeRequestPlanTests(SynchronousTestCase):
    """
    L{planWholeRequest}: a usual request read whole goes to the backend as
    its bytes, planned as L{planRequest} plans it from its fields.
    """

    usual = set(range(11))

    def test_usual(self) -> None:
        """
        A usual head is planned whole; any other (a field a plan reads or
        drops, Host twice or not at all, a method whose requests nearly
        always have a body, another version or shape of request line, more
        than a head in the read) from its fields.
        """
        self.assertEqual({i for i, raw in enumerate(WHOLE_HEADS) if wholePlan(raw)},
                         self.usual)

    def test_sameAsFromFields(self) -> None:
        """
        A head planned whole comes to what L{planRequest} makes of its
        fields: the same plan, and a head with the same method, target,
        version and fields, in the same order (their spacing as sent), but
        the client's Connection, which a plan drops.
        """
        for raw in WHOLE_HEADS:
            whole = wholePlan(raw)
            if whole is None:
                continue
            method, target, planned = whole
            fromFields = plan(raw)
            assert isinstance(fromFields, RequestPlan), raw
            self.assertEqual(
                [getattr(planned, name) for name in RequestPlan.__slots__ if name != "head"],
                [getattr(fromFields, name) for name in RequestPlan.__slots__ if name != "head"],
                raw)
            self.assertEqual(parsedRequest(planned.head), parsedRequest(fromFields.head), raw)
            self.assertEqual((method, target, "1.1"), parsedRequest(raw)[:3], raw)
            # Relayed as it came: its lines, but the Connection one.
            self.assertTrue(planned.head.startswith(
                b"".join(line + b"\r\n" for line in raw.split(b"\r\n")[:-2]
                         if not line.lower().startswith(b"connection:"))), raw)

    def test_stickySource(self) -> None:
        """
        A pool sticky on the client's address gets that address as the
        request's sticky key.
        """
        whole = wholePlan(WHOLE_HEADS[0], stickySource=True)
        self.assertEqual(whole[2].stickyKey, b"10.0.0.9")
        self.assertIsNone(wholePlan(WHOLE_HEADS[0])[2].stickyKey)

    def test_everySpecialName(self) -> None:
        """
        A head with any field the fields' plan reads or drops (but Cookie,
        which only a sticky cookie reads: see L{RequestRules.wholeHeads}),
        however it is spelled, is not planned whole.
        """
        names = [name for name in _REQUEST_SPECIAL if name != b"cookie"] + [b"proxy-x"]
        for name in names:
            for spelled in (name, name.upper(), name.title()):
                # (A second Host; a Connection other than keep-alive.)
                raw = b"GET / HTTP/1.1\r\nHost: a\r\n" + spelled + b": 1\r\n\r\n"
                self.assertIsNone(wholePlan(raw), raw)

    def test_smugglingAndLoose(self) -> None:
        """
        No smuggling shape of the loopback suite, and no loose head, is
        planned whole: each is refused by llhttp, or planned from its
        fields (and refused there).
        """
        for raw in list(SMUGGLING.values()) + list(LOOSE_REQUEST_HEADS):
            self.assertIsNone(wholePlan(raw), raw)

    def test_rules(self) -> None:
        """
        Only a pool whose rules read no field a whole plan relays as it
        came plans whole: not one that sets Host, is sticky on a cookie or
        a header, or captures fields for its access log.
        """
        self.assertEqual(
            [RequestRules(**rules).wholeHeads for rules in (
                {}, {"stickyKind": "source"}, {"hostHeader": b"h"},
                {"stickyKind": "cookie", "stickyName": b"s"},
                {"stickyKind": "header", "stickyName": b"X-S"}, {"captureHeaders": True})],
            [True, True, False, False, False, False])


class RetryDecisionTests(SynchronousTestCase):
    """
    L{retryAfterLoss}.
    """

    def test_table(self) -> None:
        """
        A lost connection is retried only for a replayable request none of
        whose response reached the client: on a fresh connection if the
        lost one was pooled and the request had no such resend yet (once
        per request, whatever the policy), else on another backend if the
        policy allows.
        """
        cases = {
            # responded, replayable, reused, staleResent, mayTryAnother
            (False, True, False, False, True): RETRY_OTHER,
            (False, True, False, False, False): GIVE_UP,
            (False, True, True, False, False): RETRY_FRESH,
            (False, True, True, False, True): RETRY_FRESH,
            (False, True, False, True, True): RETRY_OTHER,
            (False, True, False, True, False): GIVE_UP,
            (False, True, True, True, True): RETRY_OTHER,
            (False, True, True, True, False): GIVE_UP,
            (True, True, False, False, True): GIVE_UP,
            (True, True, True, False, True): GIVE_UP,
            (False, False, False, False, True): GIVE_UP,
            (False, False, True, False, True): GIVE_UP,
        }
        self.assertEqual({case: retryAfterLoss(*case) for case in cases}, cases)
