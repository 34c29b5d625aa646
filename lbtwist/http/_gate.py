"""
What an HTTP/2 stream's sending shares, on a client stream and a backend
stream alike: the next DATA piece a flow-control window allows
(L{takeWindow}), and the producer held back while DATA waits
(L{ProducerGate}).
"""

from __future__ import annotations

from collections import deque
from typing import Any


def takeWindow(out: deque[bytes], window: int) -> bytes:
    """
    The next piece of C{out} (not empty) to send in C{window} bytes: its
    first piece, or the part of it that fits (the rest stays first).
    """
    piece = out[0]
    if len(piece) > window:
        out[0] = piece[window:]
        return piece[:window]
    out.popleft()
    return piece


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
