"""
Balancing policies: pure choices among eligible backends.

A policy is given the eligible backends (never empty, in configuration order)
and an optional client key, and returns one of them.  Randomness is injected
as a L{random.Random} so every policy is deterministic under test.  Policies
are chosen by name through L{POLICIES}.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Callable, Protocol, Sequence


class Balanced(Protocol):
    """
    What a policy reads of a backend.
    """

    name: str
    weight: int
    active: int


class BalancingPolicy(Protocol):
    """
    The interface every policy implements.
    """

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        Pick one of C{backends} (never empty) for a client identified by C{key}.
        """


class RoundRobin:
    """
    Each backend in turn, whatever its weight.
    """

    def __init__(self, rng: random.Random) -> None:
        self._next = 0

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        The backend after the one chosen last time.
        """
        chosen = backends[self._next % len(backends)]
        self._next += 1
        return chosen


class SmoothWeighted:
    """
    Smooth weighted round-robin, as nginx does it: a backend of weight 5
    beside one of weight 1 is chosen five times in six, interleaved rather
    than in a burst.
    """

    def __init__(self, rng: random.Random) -> None:
        self._current: dict[str, int] = {}

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        Raise every backend's current weight by its weight, pick the highest,
        and lower it by the total.
        """
        total = 0
        best = None
        bestWeight = 0
        current = self._current
        for b in backends:
            w = current.get(b.name, 0) + b.weight
            current[b.name] = w
            total += b.weight
            if best is None or w > bestWeight:
                best, bestWeight = b, w
        assert best is not None
        current[best.name] = bestWeight - total
        return best


def _load(b: Balanced) -> float:
    """
    Active connections per unit of weight (a weight of 0 counts as tiny).
    """
    return b.active / (b.weight or 0.001)


class LeastConnections:
    """
    The backend with the fewest active connections for its weight; ties are
    broken round-robin so that an idle pool still spreads its load.
    """

    def __init__(self, rng: random.Random) -> None:
        self._next = 0

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        Rotate among the least loaded backends.
        """
        least = min(_load(b) for b in backends)
        tied = [b for b in backends if _load(b) == least]
        chosen = tied[self._next % len(tied)]
        self._next += 1
        return chosen


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
        weights = [b.weight for b in backends]
        if not any(weights):
            return self._rng.choice(backends)
        return self._rng.choices(backends, weights=weights)[0]


class PowerOfTwoChoices:
    """
    Draw two distinct backends at random and take the less loaded one.
    """

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        The lighter of two random picks.
        """
        if len(backends) == 1:
            return backends[0]
        a, b = self._rng.sample(backends, 2)
        return b if _load(b) < _load(a) else a


def _score(key: bytes, name: str, weight: int) -> float:
    """
    The weighted rendezvous score of a backend for a key.
    """
    digest = hashlib.blake2b(key + b"\0" + name.encode(), digest_size=8).digest()
    unit = (int.from_bytes(digest, "big") + 1) / (2**64 + 1)
    return -(weight or 0.001) / math.log(unit)


class SourceHash:
    """
    Consistent (rendezvous) hashing of the client key: a client keeps its
    backend while that backend is eligible, and when one of N backends leaves
    only its own clients (about 1/N of them) move.
    """

    def __init__(self, rng: random.Random) -> None:
        self._fallback = RoundRobin(rng)

    def choose(self, backends: Sequence[Balanced], key: bytes | None) -> Balanced:
        """
        The backend with the highest score for C{key}; round-robin if no key.
        """
        if key is None:
            return self._fallback.choose(backends, key)
        return max(backends, key=lambda b: _score(key, b.name, b.weight))


POLICIES: dict[str, Callable[[random.Random], BalancingPolicy]] = {
    "roundrobin": RoundRobin,
    "weighted": SmoothWeighted,
    "leastconn": LeastConnections,
    "random": WeightedRandom,
    "p2c": PowerOfTwoChoices,
    "source": SourceHash,
}
