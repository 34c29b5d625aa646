"""
Rate limits: a token bucket per key (a client address, a header's value),
O(1) per request, with a cap on the keys tracked at once; the least
recently used key is forgotten first, which costs it nothing but a fresh
full bucket.

Sans-IO: the clock is a callable returning seconds, injected.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from typing import Callable, Hashable, Sequence

from .routeconfig import RateLimit

# A header value longer than this is tracked as its digest: a key costs a
# bounded number of bytes however long the values a client sends.
MAX_KEY_BYTES = 64


class TokenBuckets:
    """
    One token bucket per key: a key may send C{burst} requests at once,
    then C{rate} per second.

    @ivar tracked: the buckets, least recently used first, as C{key:
        [tokens, time of the last refill]}.
    """

    def __init__(self, rate: float, burst: int, maxKeys: int,
                 clock: Callable[[], float]) -> None:
        if rate <= 0 or burst < 1 or maxKeys < 1:
            raise ValueError("rate, burst and maxKeys must be positive")
        self.rate = rate
        self.burst = float(burst)
        self.maxKeys = maxKeys
        self.clock = clock
        self.tracked: OrderedDict[Hashable, list[float]] = OrderedDict()

    @classmethod
    def fromConfig(cls, limit: RateLimit, clock: Callable[[], float]) -> TokenBuckets:
        """
        The buckets of a route's C{rate-limit}.
        """
        return cls(limit.rate, limit.burst, limit.maxKeys, clock)

    def take(self, key: Hashable) -> float:
        """
        Take a token for a request of C{key}.

        @return: 0 if the request may go on; else the seconds until a token
            is there (the C{Retry-After}), and no token is taken.
        """
        now = self.clock()
        bucket = self.tracked.get(key)
        if bucket is None:
            if len(self.tracked) >= self.maxKeys:
                self.tracked.popitem(last=False)
            self.tracked[key] = [self.burst - 1.0, now]
            return 0.0
        self.tracked.move_to_end(key)
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens >= 1.0:
            bucket[0] = tokens - 1.0
            return 0.0
        bucket[0] = tokens
        return (1.0 - tokens) / self.rate


def requestKey(limit: RateLimit, source: str,
               headers: Sequence[tuple[bytes, bytes]]) -> Hashable:
    """
    The key a request is counted under: its source address, or the value
    of the configured header (lowercase names).  A request without that
    header is counted under its source address, so leaving the header out
    neither escapes the limit nor shares one bucket with every other such
    request.  A value over L{MAX_KEY_BYTES} counts under its digest.
    """
    if limit.header is not None:
        name = limit.header.encode("ascii")
        for n, v in headers:
            if n == name:
                if len(v) > MAX_KEY_BYTES:
                    return (b"d", hashlib.blake2b(v, digest_size=20).digest())
                return (b"h", v)
    return source


def retryAfter(wait: float) -> bytes:
    """
    A C{Retry-After} value: whole seconds, rounded up, at least 1.
    """
    return b"%d" % max(1, math.ceil(wait))
