"""
Balancing policies: pure choices among the backends that take new clients.

A policy is given those backends (never empty, in configuration order, each
of effective weight 1 or more: the pool leaves out a backend of weight 0,
which takes no new clients under any policy) and an optional client key, and
returns one of them.  Every policy counts the effective weights: the pool's
scaled weights, lowered while slow start ramps a backend up.  Randomness is injected as a
L{random.Random} so every policy is deterministic under test.  Policies are
chosen by name through L{POLICIES}.

A choice is made for every connection (TCP) or request (HTTP), so each
policy walks the backends once or twice and allocates nothing per choice.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Callable, Iterable, Protocol, Sequence


class Balanced(Protocol):
    """
    What a policy reads of a backend.
    """

    name: str
    effectiveWeight: int
    active: int


class BalancingPolicy(Protocol):
    """
    The interface every policy implements.
    """

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        Pick one of C{backends} (never empty, weights above 0) for a client
        identified by C{key}.
        """


def _smoothTurn(current: dict[str, int], backends: Iterable[Balanced]) -> Balanced:
    """
    One step of nginx's smooth weighted round-robin over C{backends} (not
    empty): raise every backend's current weight (kept in C{current}, by
    name) by its weight, pick the highest (the first of equals), and lower
    it by the total.
    """
    total = 0
    best: Balanced | None = None
    bestWeight = 0
    for b in backends:
        weight = b.effectiveWeight
        w = current.get(b.name, 0) + weight
        current[b.name] = w
        total += weight
        if best is None or w > bestWeight:
            best, bestWeight = b, w
    assert best is not None
    current[best.name] = bestWeight - total
    return best


class SmoothWeighted:
    """
    Smooth weighted round-robin, as nginx does it: each backend in turn, as
    often as its weight says, interleaved rather than in bursts (weights
    5, 1, 1 give a a b a c a a).  With equal weights it is plain
    round-robin.  This is the C{roundrobin} policy; C{weighted} is another
    name for it.
    """

    def __init__(self, rng: random.Random) -> None:
        self._current: dict[str, int] = {}

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        The next backend in smooth weighted turn.
        """
        return _smoothTurn(self._current, backends)



class LeastConnections:
    """
    The backend with the fewest active connections for its weight (weight 2
    serves twice as many at once as weight 1).  Ties, as in an idle pool,
    are broken by smooth weighted round-robin among the tied backends, so
    an idle pool still spreads its load by weight.
    """

    def __init__(self, rng: random.Random) -> None:
        self._current: dict[str, int] = {}

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        Find the least load (active per weight, compared exactly without
        division), then take turns by weight among the backends that have it.
        """
        least = backends[0]
        leastActive, leastWeight = least.active, least.effectiveWeight
        for b in backends:
            # b.active / b.effectiveWeight < leastActive / leastWeight, in integers.
            if b.active * leastWeight < leastActive * b.effectiveWeight:
                least, leastActive, leastWeight = b, b.active, b.effectiveWeight
        return _smoothTurn(self._current, (
            b for b in backends if b.active * leastWeight == leastActive * b.effectiveWeight
        ))


def _draw(backends: Sequence[Balanced], rng: random.Random, total: int,
          skip: Balanced | None = None) -> Balanced:
    """
    One backend drawn at random in proportion to its weight, out of
    C{backends} without C{skip}, whose weights add up to C{total}.
    """
    point = rng.random() * total
    last = backends[0]
    for b in backends:
        if b is skip:
            continue
        last = b
        point -= b.effectiveWeight
        if point < 0:
            return b
    # Rounding left a sliver past the last backend: it is the last one's.
    return last


class WeightedRandom:
    """
    A random backend, in proportion to its weight.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        Draw one backend, weighted.
        """
        total = 0
        for b in backends:
            total += b.effectiveWeight
        return _draw(backends, self._rng, total)


class PowerOfTwoChoices:
    """
    Draw two distinct backends at random, each in proportion to its weight,
    and take the less loaded one (active connections per weight; the first
    drawn on a tie).  An idle pool is therefore spread by weight, and a
    busy one away from its most loaded backends.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        The lighter of two weighted random picks.
        """
        if len(backends) == 1:
            return backends[0]
        total = 0
        for b in backends:
            total += b.effectiveWeight
        first = _draw(backends, self._rng, total)
        second = _draw(backends, self._rng, total - first.effectiveWeight, skip=first)
        if second.active * first.effectiveWeight < first.active * second.effectiveWeight:
            return second
        return first


def _score(key: bytes, name: str, weight: int) -> float:
    """
    The weighted rendezvous score of a backend for a key (0 for weight 0).
    """
    if not weight:
        return 0.0
    digest = hashlib.blake2b(key + b"\0" + name.encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)
    return -weight / math.log(unit)


class SourceHash:
    """
    Consistent (rendezvous) hashing of the client key, weighted: a client
    keeps its backend while that backend is eligible, when one of N
    backends leaves only its own clients (about 1/N of them) move, and a
    backend of weight 2 gets twice the clients of one of weight 1.
    """

    def __init__(self, rng: random.Random) -> None:
        self._fallback = SmoothWeighted(rng)

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        The backend with the highest score for C{key}; weighted round-robin
        if there is no key.
        """
        if key is None:
            return self._fallback.choose(backends, key)
        return max(backends, key=lambda b: _score(key, b.name, b.effectiveWeight))


POLICIES: dict[str, Callable[[random.Random], BalancingPolicy]] = {
    "roundrobin": SmoothWeighted,
    "weighted": SmoothWeighted,
    "leastconn": LeastConnections,
    "random": WeightedRandom,
    "p2c": PowerOfTwoChoices,
    "source": SourceHash,
}
