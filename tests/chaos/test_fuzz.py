"""
Fuzzing a live HTTP listener with random and mutated requests (hypothesis):
every input gets well-formed responses or a closed connection, the balancer
stays up, and nothing malformed is forwarded (the backend, parsing with
llhttp, sees only well-formed requests).
"""

from __future__ import annotations

import collections
import os
import socket
import time
from typing import Any

from httptools import HttpParserError, HttpResponseParser
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from lbtwist.testing.backend import ScriptedBackend
from tests.chaos.tools import fetch, inThread, report
from tests.httphelpers import TIMED_OUT, rawExchange, waitFor
from tests.support import poolConfig, reactor, startBalancer

EXAMPLES = int(os.environ.get("LBTWIST_FUZZ_EXAMPLES", "300"))
# Seconds of silence after which a connection that stays open is left.
QUIET = 0.15

def mostly(plausible: Any, hostile: Any, odds: int = 5) -> Any:
    """
    A strategy drawing from C{plausible}, and one time in C{odds} from
    C{hostile}: many inputs then get through the parser, so its edges are
    tested and not just its first byte.
    """
    return st.integers(1, odds).flatmap(lambda i: hostile if i == 1 else plausible)


_methods = mostly(
    st.sampled_from([b"GET", b"GET", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"PATCH"]),
    st.sampled_from([b"TRACE", b"CONNECT", b"get", b"G\x00T", b"", b"GET GET", b"\xffGET"]),
)
_targets = mostly(
    st.text("abcxyz019/?=&%.-_~", max_size=30).map(lambda t: b"/" + t.encode()),
    st.sampled_from([b"/", b"/a?b=c", b"*", b"http://x/y", b"/%00", b"//", b"/a b",
                     b"/" + b"a" * 9000, b"/\r\nX: y"])
    | st.binary(max_size=40).map(lambda b: b"/" + b),
)
_versions = mostly(
    st.just(b"HTTP/1.1") | st.just(b"HTTP/1.0"),
    st.sampled_from([b"HTTP/2.0", b"HTTP/1.", b"HTTX/1.1", b"", b"HTTP/1.1 extra",
                     b"HTTP/0.9"]),
    odds=8,
)
_names = mostly(
    st.sampled_from([b"X-Test", b"Accept", b"User-Agent", b"Cookie"]),
    st.sampled_from([b"Host", b"Content-Length", b"Transfer-Encoding", b"Connection",
                     b"Upgrade", b"Expect", b"X-Forwarded-For", b"TE", b"Trailer",
                     b"Content-Length ", b" Host", b"Transfer-Encoding\x00"])
    | st.binary(max_size=12),
)
_values = mostly(
    st.text("abcdefgh0123 ,;=/", max_size=20).map(str.encode),
    st.sampled_from([b"chunked", b"close", b"keep-alive", b"10", b"-1", b"0", b"1, 2",
                     b"chunked, identity", b" chunked", b"identity, chunked",
                     b"100-continue", b"websocket", b"x\r\nInjected: 1", b"9" * 30,
                     b"x\n y"])
    | st.binary(max_size=30),
)
_bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=100),
    st.sampled_from([
        b"5\r\nhello\r\n0\r\n\r\n", b"zz\r\nhi\r\n0\r\n\r\n", b"5\r\nhello",
        b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        b"ffffffffffffffffff\r\n", b"5;ext=1\r\nhello\r\n0\r\nTrailer: x\r\n\r\n",
    ]),
)


@st.composite
def requests(draw: Any) -> bytes:
    """
    A request built from plausible and hostile parts, then mutated.
    """
    line = draw(_methods) + b" " + draw(_targets) + b" " + draw(_versions)
    headers = draw(st.lists(st.tuples(_names, _values), max_size=6))
    if draw(st.sampled_from([True] * 9 + [False])):
        headers.insert(draw(st.integers(0, len(headers))), (b"Host", b"chaos"))
    if draw(st.integers(0, 3)):
        headers.append((b"Connection", b"close"))
    sep = draw(st.sampled_from([b"\r\n"] * 6 + [b"\n", b"\r"]))
    data = line + sep + b"".join(n + b": " + v + sep for n, v in headers) + sep + draw(_bodies)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2, 3]))):
        at = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = draw(st.binary(min_size=1, max_size=4))
        if op == "insert":
            data = data[:at] + piece + data[at:]
        elif op == "delete":
            data = data[:at] + data[at + len(piece):]
        else:
            data = data[:at] + piece + data[at + len(piece):]
    return data


class _Responses:
    """
    Counts complete responses from llhttp's callbacks.
    """

    def __init__(self) -> None:
        self.complete = 0
        self.inMessage = False

    def on_message_begin(self) -> None:
        self.inMessage = True

    def on_message_complete(self) -> None:
        self.complete += 1
        self.inMessage = False


def exchange(port: int, data: bytes) -> str:
    """
    Send C{data} on a new connection and read what comes back.

    @return: C{closed} (closed after whole responses, or none), C{open}
        (still open after whole responses, or waiting for more input).
    @raise AssertionError: a response was malformed or cut short.
    """
    responses = _Responses()
    parser = HttpResponseParser(responses)
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return "closed"
        s.settimeout(QUIET)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                if responses.inMessage and b"HEAD" not in data:
                    raise AssertionError(f"response cut short: {received[:300]!r}")
                return "closed"
            received += chunk
            if b"HEAD" in data:
                # A response to HEAD has no body whatever its head says, and
                # a parser that did not see the request cannot know that.
                if not received.startswith(b"HTTP/1.1 "):
                    raise AssertionError(f"malformed response: {received[:300]!r}")
                continue
            try:
                parser.feed_data(chunk)
            except HttpParserError as e:
                raise AssertionError(f"malformed response ({e}): {received[:300]!r}") from e
        else:
            raise AssertionError("the balancer kept sending for 5 seconds")
    return "open"


def runFuzz(port: int, examples: int) -> dict[str, int]:
    """
    Run both strategies against the listener on C{port}.

    @return: outcomes counted by kind.
    """
    outcomes: collections.Counter[str] = collections.Counter()
    common = settings(max_examples=examples, deadline=None, database=None,
                      derandomize=True, phases=[Phase.generate, Phase.shrink],
                      suppress_health_check=list(HealthCheck))

    @common
    @given(st.binary(max_size=512))
    def randomBytes(data: bytes) -> None:
        outcomes["random:" + exchange(port, data)] += 1

    @common
    @given(requests())
    def mutated(data: bytes) -> None:
        outcomes["mutated:" + exchange(port, data)] += 1

    randomBytes()
    mutated()
    return dict(outcomes)


class FuzzTests(TestCase):
    """
    Hostile input to a live HTTP listener.
    """

    timeout = 180

    @inlineCallbacks
    def test_fuzz(self) -> Any:
        """
        Random bytes and mutated requests: every answer is well-formed or
        the connection closes; the backend never sees a malformed request;
        the balancer still serves normal requests afterwards.
        """
        backend = ScriptedBackend("fuzzed", reactor)
        port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(backend.closeAll)
        lb, lbPort = startBalancer(self, poolConfig(
            [("fuzzed", f"tcp:host=127.0.0.1:port={port.getHost().port}")], "http",
            timeouts={"request": "1s", "idle": "1s"},
        ))
        factory = lb.factories["listener0"]
        outcomes = yield inThread(runFuzz, lbPort, EXAMPLES)
        after = yield inThread(fetch, lbPort, "/after")
        # Every connection ends within the request and idle timeouts: none
        # is left hanging by what it sent.
        settled = yield waitFor(lambda: factory.activeClients == 0, 4.0)
        report(self, "fuzz", inputs=sum(outcomes.values()), outcomes=outcomes,
               forwarded=backend.received, malformedAtBackend=backend.malformed,
               refusedByBalancer=factory.refused)
        self.assertTrue(settled, f"{factory.activeClients} client connections never ended")
        self.assertEqual(backend.malformed, 0)
        self.assertEqual((after.kind, after.status), ("ok", 200))
        self.assertEqual(sum(outcomes.values()), 2 * EXAMPLES)
        self.assertGreater(factory.refused, EXAMPLES // 2)
        self.assertGreater(backend.received, EXAMPLES // 10)
        for r in backend.requests:
            self.assertFalse(set(r.path) & set("\r\n\0 "), r)

    @inlineCallbacks
    def test_completeRequestThenGarbage(self) -> Any:
        """
        A complete request followed by garbage in the same read is served,
        then the garbage gets a 400 and the connection closes.  (Found by
        the fuzzer: the request was never dispatched and the connection
        hung until the client gave up.)
        """
        backend = ScriptedBackend("fuzzed", reactor)
        port = reactor.listenTCP(0, backend, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        self.addCleanup(backend.closeAll)
        lb, lbPort = startBalancer(self, poolConfig(
            [("fuzzed", f"tcp:host=127.0.0.1:port={port.getHost().port}")], "http"))
        answer = yield rawExchange(
            lbPort, b"POST /p HTTP/1.1\r\nHost: x\r\n\r\n5\r\nhello\r\n0\r\n\r\n", timeout=3)
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer)
        self.assertIn(b"HTTP/1.1 400 ", answer)
        self.assertFalse(answer.endswith(TIMED_OUT), answer)
        self.assertEqual([r.path for r in backend.requests], ["/p"])
