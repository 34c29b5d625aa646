"""
Balancing policies: pure choices among the backends that take new clients.

A policy is given those backends (never empty, in configuration order, each
of effective weight 1 or more: the pool leaves out a backend of weight 0,
which takes no new clients under any policy) and an optional client key, and
returns one of them.  Every policy counts the effective weights: the pool's
scaled weights, lowered while slow start ramps a backend up.  Randomness is injected as a
L{random.Random} so every policy is deterministic under test.  Policies are
chosen by name through L{POLICIES}, the registry of L{lbtwist.extend}, where
a policy of one's own is registered as these are.

A choice is made for every connection (TCP) or request (HTTP), so each
policy walks the backends once or twice and allocates nothing per choice.
The pool passes the same list again while none of its backends changed
(rotation or weight), and a new one after any change: round-robin over
equal weights, the common case, then takes one step instead of a walk.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Callable, Iterable, Protocol, Sequence

from .extend import POLICIES as _REGISTERED
from .extend import Registry


class Balanced(Protocol):
    """
    What a policy reads of a backend (a L{lbtwist.pool.Backend}, which has
    more, read-only to a policy).

    @ivar name: the backend's name, unique in its pool.
    @ivar effectiveWeight: its weight now (1-256 scaled, lowered while slow
        start ramps it up); never 0 in what a policy is given.
    @ivar active: its connections (TCP) or requests (HTTP) in flight.
    """

    name: str
    effectiveWeight: int
    active: int


class BalancingPolicy(Protocol):
    """
    The interface every policy implements, the built-in ones and those
    registered with L{lbtwist.extend.registerPolicy}: one object per pool,
    made by its factory from the pool's L{random.Random}.
    """

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        Pick one of C{backends} for a client identified by C{key}.

        Called for every connection (TCP) or request (HTTP), and again for
        each retry: the hot path.  It must return at once, without I/O or
        allocation it can avoid, and never raise.

        @param backends: the backends that take new clients, in
            configuration order: never empty, each of effective weight 1 or
            more.  The same list object comes again while none of them
            changed (so a policy may keep state about it, compared with
            C{is}); a retry's leaves out the backends tried.  Read only.
        @param key: what identifies the client, for policies that hash
            it: its IP address as ASCII bytes (C{b"10.0.0.7"}), or L{None}
            when it has none (a client over a UNIX socket).
        @return: one of C{backends} (the object itself).
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

    A turn walks every backend.  But a list given again and again (the
    pool's, while nothing changes) soon repeats itself: once a round of as
    many choices as it has backends leaves the weights as they were, the
    same round follows forever, and it is replayed a step at a time, with
    the weights brought up to date only when another list comes (a retry's,
    without the backends it tried).  The choices are exactly the walk's.
    """

    def __init__(self, rng: random.Random) -> None:
        self._current: dict[str, int] = {}
        # The list of the round under way, the weights before it, and its
        # choices so far.
        self._seen: Sequence[Balanced] | None = None
        self._before: list[int] = []
        self._round: list[Balanced] = []
        # The list whose round repeats (its weights as in _before at each
        # round's start), that round, the backends' weights it was played
        # with, and the index of its next choice.
        self._even: Sequence[Balanced] | None = None
        self._order: list[Balanced] = []
        self._weights: list[int] = []
        self._next = 0

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        The next backend in smooth weighted turn.
        """
        if backends is self._even:
            i = self._next
            order = self._order
            if i >= len(order):
                i = 0
            self._next = i + 1
            return order[i]
        if self._even is not None:
            self._catchUp()
        current = self._current
        if backends is not self._seen:
            # A list seen once may never come again (a retry's, or a pool's
            # with a maxconn, which leaves out the full backends each time):
            # a round is watched from its second choice on.
            self._seen = backends
            self._round = []
            return _smoothTurn(current, backends)
        if not self._round:
            self._before = [current.get(b.name, 0) for b in backends]
        chosen = _smoothTurn(current, backends)
        played = self._round
        played.append(chosen)
        if len(played) == len(backends):
            if [current[b.name] for b in backends] == self._before:
                self._even, self._order, self._next = backends, played, 0
                # (A weight may change before the next list comes.)
                self._weights = [b.effectiveWeight for b in backends]
            self._round = []
        return chosen

    def _catchUp(self) -> None:
        """
        Leave the repeated round: set the weights to what the walk would
        have left after its steps so far, taken with the weights the round
        was played with (a backend's may have changed since: the change is
        why another list came).
        """
        even = self._even
        assert even is not None
        steps = self._next % len(self._order)
        current = self._current
        total = 0
        for b, before, weight in zip(even, self._before, self._weights):
            current[b.name] = before + steps * weight
            total += weight
        for b in self._order[:steps]:
            current[b.name] -= total
        self._even = self._seen = None


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


POLICIES: Registry[Callable[[random.Random], BalancingPolicy]] = _REGISTERED
"""
The policies by name: the built-in ones (see L{lbtwist.extend}) and those
registered.
"""
