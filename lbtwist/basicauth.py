"""
HTTP basic authentication against bcrypt htpasswd entries, keeping the
reactor free.

A bcrypt check costs about 50-250 ms by design, so it never runs on the
reactor thread: L{BasicAuthenticator.check} answers at once when it can (no
or malformed credentials, a credential seen before) and otherwise returns a
L{Deferred} of a check run in a thread pool.  Verified credentials are
remembered, as a keyed hash of the whole header value, in bounded LRUs
(verified and refused apart, so a flood of bad credentials cannot push the
good ones out), so only a first or changed credential pays for bcrypt;
checks of one credential in flight at once are run once, and checks of
distinct credentials in flight at once are bounded: past the bound a new
credential is not checked (the request is answered 503), so a flood of
distinct credentials cannot queue work without end in the thread pool
that the reactor's name lookups share.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections import OrderedDict
from typing import Callable

import bcrypt
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

from .routeconfig import BasicAuth

# Credentials remembered per route, verified and refused (each).
CACHE_SIZE = 1024

# Checks of distinct credentials in flight at once per route: fewer than
# the reactor's thread pool has threads (10), which name lookups share.
MAX_CHECKS = 8


def parseAuthorization(value: bytes | None) -> tuple[str, bytes] | None:
    """
    The user and password of an C{Authorization: Basic} header value, or
    L{None} if it is missing or not one.
    """
    if value is None:
        return None
    scheme, _, encoded = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    try:
        return user.decode("utf-8"), password
    except UnicodeDecodeError:
        return None


def unauthorizedAnswer(realm: str) -> tuple[int, tuple[tuple[bytes, bytes], ...], bytes]:
    """
    The 401 answer asking for credentials of C{realm} (status, headers,
    body).
    """
    return (401, (
        (b"WWW-Authenticate", b'Basic realm="%s", charset="UTF-8"' % (realm.encode("utf-8"),)),
        (b"Content-Type", b"text/plain; charset=utf-8"),
    ), b"401 Unauthorized: credentials are needed.\n")


def checkPassword(password: bytes, hashed: bytes) -> bool:
    """
    Whether C{password} is the one bcrypt C{hashed}; slow by design.
    """
    try:
        return bcrypt.checkpw(password, hashed)
    except ValueError:  # e.g. a password over bcrypt's 72 bytes
        return False


class BasicAuthenticator:
    """
    Checks C{Authorization} header values against a route's users.

    @ivar known: keyed digests of header values verified, least recently
        used first.
    @ivar refused: keyed digests of header values refused, least recently
        used first.
    @ivar pending: the checks in flight, by digest.
    """

    def __init__(self, auth: BasicAuth, runInThread: Callable[[Callable[[], bool]],
                                                              Deferred[bool]],
                 cacheSize: int = CACHE_SIZE,
                 check: Callable[[bytes, bytes], bool] = checkPassword,
                 maxChecks: int = MAX_CHECKS) -> None:
        """
        @param runInThread: runs a callable away from the reactor thread and
            gives a Deferred of its result (see L{threadRunner}).
        @param check: checks a password against a bcrypt hash.
        @param maxChecks: checks of distinct credentials in flight at once.
        """
        self.auth = auth
        self.users = dict(auth.users)
        self.runInThread = runInThread
        self.cacheSize = cacheSize
        self.checkPassword = check
        self.maxChecks = maxChecks
        self.known: OrderedDict[bytes, None] = OrderedDict()
        self.refused: OrderedDict[bytes, None] = OrderedDict()
        self.pending: dict[bytes, list[Deferred[bool]]] = {}
        # Digests are keyed per process so the cache holds nothing a
        # memory dump could replay elsewhere.
        self._key = os.urandom(16)

    def check(self, authorization: bytes | None) -> bool | Deferred[bool] | None:
        """
        Whether a request with this C{Authorization} value may pass: a bool
        when known at once, else a Deferred of one (never failing); or
        L{None} when it would need a check and C{maxChecks} are in flight
        already (it may be tried again shortly).
        """
        credentials = parseAuthorization(authorization)
        if credentials is None:
            return False
        assert authorization is not None
        digest = hashlib.blake2b(authorization.strip(), key=self._key, digest_size=20).digest()
        for cache, answer in ((self.known, True), (self.refused, False)):
            if digest in cache:
                cache.move_to_end(digest)
                return answer
        waiting = self.pending.get(digest)
        if waiting is not None:
            d: Deferred[bool] = Deferred()
            waiting.append(d)
            return d
        if len(self.pending) >= self.maxChecks:
            return None
        waiters: list[Deferred[bool]] = []
        self.pending[digest] = waiters
        user, password = credentials
        hashed = self.users.get(user)
        # An unknown user pays for a check too, against some entry: no
        # timing tells which users exist.
        def verify() -> bool:
            ok = self.checkPassword(password, hashed or self.auth.users[0][1])
            return ok and hashed is not None

        def done(ok: object) -> bool:
            passed = ok is True
            del self.pending[digest]
            cache = self.known if passed else self.refused
            cache[digest] = None
            if len(cache) > self.cacheSize:
                cache.popitem(last=False)
            for w in waiters:
                w.callback(passed)
            return passed

        return self.runInThread(verify).addBoth(done)


def threadRunner(reactor: IReactorFromThreads,
                 pool: ThreadPool) -> Callable[[Callable[[], bool]], Deferred[bool]]:
    """
    Run callables in C{pool}, with results delivered on C{reactor}'s thread.
    """
    def run(f: Callable[[], bool]) -> Deferred[bool]:
        return deferToThreadPool(reactor, pool, f)
    return run
