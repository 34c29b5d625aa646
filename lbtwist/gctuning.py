"""
Keeping Python's cyclic garbage collector off the request path.

Every object the balancer allocates per connection is freed by reference
counting the moment the connection closes; none of it needs the cyclic
collector.  The collector still runs every few hundred allocations, and
every so often it walks every object in the process, a few hundred thousand
of them (most from importing Twisted): tens of milliseconds during which no
connection moves.  That is what set lbtwist's 99th-percentile latency with
short connections (39 ms, against 10 ms with the collector off).

L{FrozenStartupHeap} moves everything that exists once the balancer has
started into the collector's permanent generation (L{gc.freeze}), so the
full collections that remain only walk what was allocated since, and makes
young collections rarer.  Cycles made later are still collected.
"""

from __future__ import annotations

import gc
from typing import Any

from twisted.application.service import Service
from twisted.logger import Logger

# Collections of the youngest generation cost in proportion to the young
# objects still alive (the connections in flight), not to the threshold, so
# a higher threshold means less collecting for the same garbage.
YOUNG_THRESHOLD = 10_000


class FrozenStartupHeap(Service):
    """
    Once the reactor runs, freeze the objects made at start-up out of the
    garbage collector's way and raise its youngest generation's threshold.

    @param collector: the C{gc} module, or a double of it in tests.
    """

    log = Logger()

    def __init__(self, reactor: Any, collector: Any = gc) -> None:
        self._reactor = reactor
        self._collector = collector

    def startService(self) -> None:
        super().startService()
        self._reactor.callWhenRunning(self.freeze)

    def freeze(self) -> None:
        """
        Collect what start-up left for the collector, then freeze the rest.
        """
        collector = self._collector
        collector.collect()
        collector.freeze()
        young, middle, old = collector.get_threshold()
        collector.set_threshold(max(young, YOUNG_THRESHOLD), middle, old)
        self.log.debug(
            "{frozen} objects frozen out of the garbage collector's way",
            frozen=collector.get_freeze_count(),
        )
