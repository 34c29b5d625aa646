"""
A producer held back by a wish (L{ProducerGate}): an HTTP/2 stream pauses
the side that feeds it while its DATA waits for flow-control window, on a
client stream and a backend stream alike.
"""

from __future__ import annotations

from typing import Any


class ProducerGate:
    """
    The producer that feeds a stream, paused and resumed as the stream
    wishes, each change passed on once.

    @ivar producer: the producer, if one is registered.
    @ivar paused: whether it was told to pause.
    """

    __slots__ = ("paused", "producer")

    def __init__(self) -> None:
        self.producer: Any = None
        self.paused = False

    def register(self, producer: Any) -> None:
        """
        Feed from C{producer} (running).
        """
        self.producer = producer
        self.paused = False

    def unregister(self) -> None:
        """
        No producer feeds the stream any more.
        """
        self.producer = None
        self.paused = False

    def hold(self, paused: bool) -> None:
        """
        Pause the producer if C{paused}, else resume it (if it was paused).
        """
        producer = self.producer
        if producer is not None and paused != self.paused:
            self.paused = paused
            if paused:
                producer.pauseProducing()
            else:
                producer.resumeProducing()
