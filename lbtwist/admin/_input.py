"""
The admin API's error: a request refused, with its status and message.
The checks of what a client sent are L{lbtwist.control}'s.
"""

from __future__ import annotations


class APIError(Exception):
    """
    A request is refused: an HTTP status and a message for the client.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
