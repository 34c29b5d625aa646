"""
Tests for L{lbtwist.basicauth}: header parsing, the 401 answer, and checks
that run bcrypt off the reactor thread once per credential.
"""

from __future__ import annotations

import base64
import queue
import threading
from typing import Any, Callable

import bcrypt
from twisted.internet.defer import Deferred
from twisted.python.threadpool import ThreadPool
from twisted.trial.unittest import SynchronousTestCase

from lbtwist.basicauth import (
    BasicAuthenticator,
    checkPassword,
    parseAuthorization,
    threadRunner,
    unauthorizedAnswer,
)
from lbtwist.routeconfig import BasicAuth

HASH = bcrypt.hashpw(b"secret", bcrypt.gensalt(4))


def basic(credentials: bytes) -> bytes:
    """
    An C{Authorization} value for C{user:password}.
    """
    return b"Basic " + base64.b64encode(credentials)


class QueuedRunner:
    """
    Stands in for a thread pool: keeps each job until told to run it.
    """

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], bool], Deferred[bool]]] = []

    def __call__(self, f: Callable[[], bool]) -> Deferred[bool]:
        d: Deferred[bool] = Deferred()
        self.jobs.append((f, d))
        return d

    def runAll(self) -> None:
        jobs, self.jobs = self.jobs, []
        for f, d in jobs:
            d.callback(f())


class ParseTests(SynchronousTestCase):
    """
    L{parseAuthorization} and L{unauthorizedAnswer}.
    """

    def test_parse(self) -> None:
        """
        Basic credentials are decoded; anything else is none.
        """
        cases = [
            (basic(b"alice:se:cret"), ("alice", b"se:cret")),
            (b"basic " + base64.b64encode(b"a:"), ("a", b"")),
            (None, None),
            (b"Bearer abc", None),
            (b"Basic !!!", None),
            (basic(b"nocolon"), None),
            (basic(b"\xff:x"), None),
        ]
        for value, expected in cases:
            self.assertEqual(parseAuthorization(value), expected, value)

    def test_unauthorized(self) -> None:
        """
        The 401 answer names the realm in C{WWW-Authenticate}.
        """
        status, headers, _ = unauthorizedAnswer("staff")
        self.assertEqual(status, 401)
        self.assertIn((b"WWW-Authenticate", b'Basic realm="staff", charset="UTF-8"'), headers)

    def test_checkPassword(self) -> None:
        """
        The real bcrypt check; an over-long password is refused, not raised.
        """
        self.assertTrue(checkPassword(b"secret", HASH))
        self.assertFalse(checkPassword(b"wrong", HASH))
        self.assertFalse(checkPassword(b"x" * 100, HASH))
        self.assertTrue(checkPassword(b"secret", b"$2y$" + HASH[4:]))


class AuthenticatorTests(SynchronousTestCase):
    """
    L{BasicAuthenticator.check}.
    """

    def setUp(self) -> None:
        self.runner = QueuedRunner()
        self.checked: list[tuple[bytes, bytes]] = []

        def check(password: bytes, hashed: bytes) -> bool:
            self.checked.append((password, hashed))
            return checkPassword(password, hashed)

        self.auth = BasicAuthenticator(
            BasicAuth("staff", "users", (("alice", HASH), ("bob", HASH))),
            self.runner, cacheSize=2, check=check)

    def test_noCredentials(self) -> None:
        """
        Missing or malformed credentials are refused at once, no check run.
        """
        self.assertIs(self.auth.check(None), False)
        self.assertIs(self.auth.check(b"Digest x"), False)
        self.assertEqual(self.runner.jobs, [])

    def test_firstThenCached(self) -> None:
        """
        A first credential is checked in the runner; the same one again is
        answered at once from the cache, right or wrong.
        """
        good, bad = basic(b"alice:secret"), basic(b"alice:wrong")
        d1, d2 = self.auth.check(good), self.auth.check(bad)
        assert isinstance(d1, Deferred) and isinstance(d2, Deferred)
        self.assertNoResult(d1)
        self.runner.runAll()
        self.assertIs(self.successResultOf(d1), True)
        self.assertIs(self.successResultOf(d2), False)
        self.assertIs(self.auth.check(good), True)
        self.assertIs(self.auth.check(bad), False)
        self.assertEqual(len(self.checked), 2)

    def test_concurrentOnce(self) -> None:
        """
        Checks of one credential in flight together run bcrypt once.
        """
        ds = [self.auth.check(basic(b"bob:secret")) for _ in range(3)]
        self.runner.runAll()
        self.assertEqual([self.successResultOf(d) for d in ds], [True] * 3)  # type: ignore[arg-type]
        self.assertEqual(len(self.checked), 1)

    def test_unknownUser(self) -> None:
        """
        An unknown user is refused after a check like any other (so timing
        tells nothing), even with a password that another user has.
        """
        d = self.auth.check(basic(b"mallory:secret"))
        self.runner.runAll()
        self.assertIs(self.successResultOf(d), False)  # type: ignore[arg-type]
        self.assertEqual(len(self.checked), 1)

    def test_cacheBounded(self) -> None:
        """
        The cache keeps C{cacheSize} refused credentials, the least recently
        used leaving first.
        """
        for password in (b"a", b"b", b"c"):
            self.auth.check(basic(b"alice:" + password))
        self.runner.runAll()
        self.assertEqual(len(self.auth.refused), 2)
        self.assertIsInstance(self.auth.check(basic(b"alice:a")), Deferred)
        self.assertIs(self.auth.check(basic(b"alice:c")), False)

    def test_floodKeepsVerified(self) -> None:
        """
        A flood of bad credentials does not push a verified one out of the
        cache: it still passes at once, with no new check.
        """
        good = basic(b"alice:secret")
        self.auth.check(good)
        self.runner.runAll()
        for i in range(5):
            self.auth.check(basic(b"alice:bad%d" % i))
            self.runner.runAll()
        checks = len(self.checked)
        self.assertIs(self.auth.check(good), True)
        self.assertEqual(len(self.checked), checks)

    def test_checksBounded(self) -> None:
        """
        At most C{maxChecks} checks of distinct credentials are in flight:
        past that a new credential gets L{None} (try later) and no check is
        queued, while one being checked still joins its check; once checks
        end, new ones are taken again.
        """
        auth = BasicAuthenticator(BasicAuth("staff", "users", (("alice", HASH),)),
                                  self.runner, maxChecks=3)
        first = [auth.check(basic(b"alice:p%d" % i)) for i in range(3)]
        self.assertTrue(all(isinstance(d, Deferred) for d in first))
        self.assertIsNone(auth.check(basic(b"alice:p3")))
        self.assertIsNone(auth.check(basic(b"alice:secret")))
        self.assertIsInstance(auth.check(basic(b"alice:p0")), Deferred)
        self.assertEqual(len(self.runner.jobs), 3)
        self.runner.runAll()
        d = auth.check(basic(b"alice:secret"))
        self.runner.runAll()
        self.assertIs(self.successResultOf(d), True)  # type: ignore[arg-type]


class CallsFromThreads:
    """
    The part of a reactor that threads hand results to: calls queue up
    until the test runs them on its own thread.
    """

    def __init__(self) -> None:
        self.calls: queue.Queue[tuple[Callable[..., object], tuple[Any, ...]]] = queue.Queue()

    def callFromThread(self, f: Callable[..., object], *args: Any) -> None:
        self.calls.put((f, args))


class ThreadRunnerTests(SynchronousTestCase):
    """
    L{threadRunner} with a real thread pool.
    """

    def test_checkInAThread(self) -> None:
        """
        The bcrypt check runs on a pool thread, not the caller's; its
        result arrives through the reactor's C{callFromThread}.
        """
        pool = ThreadPool(1, 1)
        pool.start()
        self.addCleanup(pool.stop)
        reactor = CallsFromThreads()
        threads: list[threading.Thread] = []

        def check(password: bytes, hashed: bytes) -> bool:
            threads.append(threading.current_thread())
            return checkPassword(password, hashed)

        auth = BasicAuthenticator(BasicAuth("r", "f", (("alice", HASH),)),
                                  threadRunner(reactor, pool), check=check)  # type: ignore[arg-type]
        d = auth.check(basic(b"alice:secret"))
        assert isinstance(d, Deferred)
        self.assertNoResult(d)
        f, args = reactor.calls.get(timeout=30)
        f(*args)
        self.assertIs(self.successResultOf(d), True)
        self.assertEqual(len(threads), 1)
        self.assertIsNot(threads[0], threading.current_thread())
