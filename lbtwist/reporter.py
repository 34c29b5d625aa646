"""
The status table in the log: every C{status-interval} seconds, one event per
pool with the table (L{lbtwist.status.formatTable}) and the raw numbers.
"""

from __future__ import annotations

from typing import Iterable

import attrs
from twisted.application.internet import TimerService
from twisted.logger import Logger

from .pool import BackendPool
from .status import formatTable


class StatusReporter(TimerService):
    """
    Logs every pool's status table on an interval, as one structured event
    per pool carrying the table and the raw numbers.
    """

    log = Logger()

    def __init__(self, interval: float, pools: Iterable[BackendPool]) -> None:
        super().__init__(interval, self.report)
        self.pools = list(pools)

    def report(self) -> None:
        """
        Log the table of every pool now.
        """
        for pool in self.pools:
            stats = pool.stats()
            self.log.info(
                "status of pool {pool}:\n{table}",
                pool=pool.name,
                table=formatTable(pool.name, stats),
                backends=[attrs.asdict(s) for s in stats],
                noBackend=pool.noBackend,
            )
