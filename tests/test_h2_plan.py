"""
The HTTP/2 request head's checks and its mapping to HTTP/1.1
(L{lbtwist.http._h2.requestHead}), the smuggling cases of the h2-to-h1
downgrade included, and the response's HTTP/2 header list; the C{http2}
listener settings.
"""

from __future__ import annotations

from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from lbtwist.config import ConfigError, HTTP2Settings, parseConfig
from lbtwist.http._errors import BadRequest
from lbtwist.http._h2 import MalformedRequest, localFields, requestHead, responseFields
from lbtwist.http._plan import RequestRules, askingTrailers, planRequest

BASE = [(b":method", b"GET"), (b":scheme", b"https"), (b":path", b"/p?q=1"),
        (b":authority", b"a.example")]


def head(*extra: tuple[bytes, bytes], base: list[tuple[bytes, bytes]] | None = None,
         end: bool = True) -> Any:
    """
    L{requestHead} of the base request with C{extra} fields, or the
    exception it raised.
    """
    try:
        return requestHead([*(BASE if base is None else base), *extra], end)
    except (MalformedRequest, BadRequest) as e:
        return e


class RequestHeadTests(SynchronousTestCase):
    """
    An HTTP/2 request head becomes an HTTP/1.1 one, or is refused.
    """

    def test_mapping(self) -> None:
        """
        C{:method} and C{:path} are the request line, C{:authority} the
        Host (first), cookies are joined with C{"; "}, other fields kept in
        order.
        """
        r = head((b"accept", b"*/*"), (b"cookie", b"a=1"), (b"x-y", b"z"), (b"cookie", b"b=2"))
        self.assertEqual((r.method, r.target, r.authority, r.scheme),
                         (b"GET", b"/p?q=1", b"a.example", b"https"))
        self.assertEqual(r.headers, [(b"host", b"a.example"), (b"accept", b"*/*"),
                                     (b"x-y", b"z"), (b"cookie", b"a=1; b=2")])
        self.assertIsNone(r.contentLength)

    def test_hostWithoutAuthority(self) -> None:
        """
        Without C{:authority}, Host is the authority; a Host equal to
        C{:authority} is taken once.
        """
        r = head((b"host", b"h.example"), base=BASE[:3])
        self.assertEqual(r.headers, [(b"host", b"h.example")])
        r = head((b"host", b"a.example"))
        self.assertEqual(r.headers, [(b"host", b"a.example")])

    def test_body(self) -> None:
        """
        A body with a length keeps it; one without is chunked for HTTP/1.1;
        a request that ends with its HEADERS has no body.
        """
        r = head((b"content-length", b"5"), end=False)
        self.assertEqual((r.contentLength, r.headers[-1]), (5, (b"content-length", b"5")))
        r = head(end=False)
        self.assertEqual(r.headers[-1], (b"transfer-encoding", b"chunked"))
        r = head(end=True)
        self.assertNotIn(b"transfer-encoding", dict(r.headers))
        r = head((b"content-length", b"0"), end=True)
        self.assertEqual(r.contentLength, 0)
        r = head((b"content-length", b"5"), (b"content-length", b"5"), end=False)
        self.assertEqual([n for n, _ in r.headers].count(b"content-length"), 1)

    def test_teTrailers(self) -> None:
        """
        C{te: trailers} is the one C{te} allowed; the request says it was
        sent, and its plan, which drops it as hop-by-hop, asks for
        trailers again through L{askingTrailers}, after the other fields.
        """
        r = head((b"te", b"trailers"))
        self.assertIn((b"te", b"trailers"), r.headers)
        self.assertEqual((r.trailers, head().trailers), (True, False))
        plan = planRequest(r.method, r.target, "1.1", r.headers, True, False, b"192.0.2.1",
                           b"l:80", RequestRules(b"https"))
        self.assertTrue(plan.trailers)
        self.assertEqual(askingTrailers(plan.head), (
            b"GET /p?q=1 HTTP/1.1\r\nhost: a.example\r\n"
            b"X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: https\r\n"
            b"X-Forwarded-Host: a.example\r\nTE: trailers\r\nConnection: TE\r\n\r\n"))

    def test_malformed(self) -> None:
        """
        Each smuggling shape and malformed head resets the stream.
        """
        cases = [
            head((b"x-a", b"1\r\nx-b: 2")),
            head((b"x-a", b"1\nx")),
            head((b"x-a", b"1\x00")),
            head((b"x-a\r\nx-b", b"1")),
            head((b"x a", b"1")),
            head((b"X-Upper", b"1")),
            head((b"x-a", b" padded")),
            head((b"x-a", b"padded\t")),
            head((b"connection", b"close")),
            head((b"keep-alive", b"timeout=5")),
            head((b"proxy-connection", b"keep-alive")),
            head((b"transfer-encoding", b"chunked"), end=False),
            head((b"upgrade", b"websocket")),
            head((b"te", b"gzip")),
            head((b"te", b"trailers, gzip")),
            head((b"content-length", b"5"), (b"content-length", b"6"), end=False),
            head((b"content-length", b"-1"), end=False),
            head((b"content-length", b"0x10"), end=False),
            head((b"content-length", b"5"), end=True),
            head((b"host", b"a.example"), (b"host", b"a.example")),
            head((b":protocol", b"websocket")),
            head((b"accept", b"*/*"), (b":method", b"POST"), base=BASE[1:]),
            head((b":path", b"/again")),
            head(base=BASE[1:]),
            head(base=[BASE[0], BASE[2], BASE[3]]),
            head(base=[*BASE[:2], (b":path", b""), BASE[3]]),
            head(base=[*BASE[:2], (b":path", b"p"), BASE[3]]),
            head(base=[*BASE[:2], (b":path", b"*"), BASE[3]]),
            head(base=[*BASE[:3], (b":authority", b"user@a.example")]),
            head(base=[*BASE[:3], (b":authority", b"")]),
        ]
        for case in cases:
            self.assertIsInstance(case, MalformedRequest)

    def test_refused(self) -> None:
        """
        Heads that parse but must be answered with an error status: a Host
        that conflicts with C{:authority} (400), no authority at all (400),
        a scheme other than http(s) (400), CONNECT (501).
        """
        for case, status in [
            (head((b"host", b"evil.example")), 400),
            (head(base=BASE[:3]), 400),
            (head(base=[BASE[0], (b":scheme", b"ftp"), *BASE[2:]]), 400),
            (head(base=[(b":method", b"CONNECT"), BASE[3]]), 501),
        ]:
            self.assertIsInstance(case, BadRequest)
            self.assertEqual(case.status, status)

    def test_optionsStar(self) -> None:
        """
        C{OPTIONS *} is the one target not starting with C{/}.
        """
        r = head(base=[(b":method", b"OPTIONS"), BASE[1], (b":path", b"*"), BASE[3]])
        self.assertEqual(r.target, b"*")

    def test_throughThePlan(self) -> None:
        """
        The mapped head goes through the HTTP/1.1 request plan: what the
        backend gets is a well-formed HTTP/1.1 head with one Host, the
        forwarded fields and the body's framing.
        """
        r = head((b"cookie", b"a=1"), (b"cookie", b"b=2"), end=False)
        plan = planRequest(r.method, r.target, "1.1", r.headers, True, False, b"192.0.2.1",
                           b"l:80", RequestRules(b"https"))
        self.assertEqual(plan.head, (
            b"GET /p?q=1 HTTP/1.1\r\nhost: a.example\r\ncookie: a=1; b=2\r\n"
            b"X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: https\r\n"
            b"X-Forwarded-Host: a.example\r\nTransfer-Encoding: chunked\r\n\r\n"))
        self.assertTrue(plan.chunked)


class ResponseFieldsTests(SynchronousTestCase):
    """
    A response head becomes an HTTP/2 header list.
    """

    def test_filtered(self) -> None:
        """
        Names are lowercased; hop-by-hop and connection-specific fields go;
        the sticky cookie is added last.
        """
        fields = responseFields(200, [
            (b"Content-Type", b"text/plain"), (b"Connection", b"keep-alive"),
            (b"Keep-Alive", b"timeout=5"), (b"Transfer-Encoding", b"chunked"),
            (b"Proxy-Authenticate", b"x"), (b"Upgrade", b"h2c"), (b"Set-Cookie", b"a=1"),
            (b"Content-Length", b"3"),
        ], b"s=b1")
        self.assertEqual(fields, [
            (b":status", b"200"), (b"content-type", b"text/plain"), (b"set-cookie", b"a=1"),
            (b"content-length", b"3"), (b"set-cookie", b"s=b1")])

    def test_204(self) -> None:
        """
        A 204 has no length.
        """
        self.assertEqual(responseFields(204, [(b"Content-Length", b"0")]), [(b":status", b"204")])

    def test_local(self) -> None:
        """
        A local answer is framed by its length.
        """
        self.assertEqual(localFields(302, [(b"Location", b"/x")], b"ab"), [
            (b":status", b"302"), (b"location", b"/x"), (b"content-length", b"2")])


class SettingsTests(SynchronousTestCase):
    """
    The listener's C{http2} key.
    """

    def parse(self, http2: Any, mode: str = "http", **listener: Any) -> Any:
        """
        The listener config of a listener with C{http2}.
        """
        return parseConfig({
            "listeners": [{"listen": "tcp:0", "mode": mode, "http2": http2, **listener}],
            "pools": {"web": {"backends": []}},
        }).listeners[0]

    def test_values(self) -> None:
        """
        C{true} turns h2c on with the default limits; a mapping sets them
        (and turns h2c on unless C{cleartext: false}).
        """
        self.assertEqual(self.parse(True).http2, HTTP2Settings(cleartext=True))
        self.assertTrue(self.parse(True).speaksHTTP2)
        self.assertFalse(self.parse(False).speaksHTTP2)
        self.assertEqual(
            self.parse({"max-concurrent-streams": 10, "max-resets": 5, "abuse-window": "2s",
                        "initial-window-size": 4096}).http2,
            HTTP2Settings(cleartext=True, maxConcurrentStreams=10, maxResets=5,
                          abuseWindow=2.0, initialWindowSize=4096))
        self.assertFalse(self.parse({"cleartext": False}).speaksHTTP2)

    def test_errors(self) -> None:
        """
        Bad values are refused with the key named.
        """
        for http2, mode, message in [
            (True, "tcp", "listeners[0].http2: HTTP/2 needs mode: http"),
            ({"max-concurrent-streams": 0}, "http",
             "listeners[0].http2.max-concurrent-streams: expected an integer 1-10000, got 0"),
            ({"streams": 1}, "http", "listeners[0].http2.streams: unknown key"),
            ({"cleartext": "yes"}, "http",
             "listeners[0].http2.cleartext: expected true or false, got 'yes'"),
        ]:
            with self.assertRaises(ConfigError) as e:
                self.parse(http2, mode)
            self.assertTrue(str(e.exception).startswith(message), str(e.exception))

    def test_alpn(self) -> None:
        """
        A TLS listener in http mode may offer C{h2} by ALPN, and then speaks
        HTTP/2.
        """
        listener = parseConfig({
            "listeners": [{"listen": "ssl:0:privateKey=k.pem:certKey=c.pem", "mode": "http",
                           "tls": {"alpn": ["h2", "http/1.1"]}}],
            "pools": {"web": {"backends": []}},
        }).listeners[0]
        self.assertEqual(listener.alpn, ("h2", "http/1.1"))
        self.assertTrue(listener.speaksHTTP2)

    def test_reloadNeedsRestart(self) -> None:
        """
        A reload that changes a listener's C{http2} says the listeners need
        a restart, and keeps them as they run.
        """
        from lbtwist.diff import runnable

        def config(http2: Any) -> Any:
            return parseConfig({
                "listeners": [{"listen": "tcp:0", "mode": "http", "http2": http2}],
                "pools": {"web": {"backends": []}}})

        running = config(True)
        kept, differ = runnable(config({"max-concurrent-streams": 5}), running)
        self.assertEqual(differ, ["listeners"])
        self.assertEqual(kept.listeners, running.listeners)
        self.assertEqual(runnable(config(True), running)[1], [])
