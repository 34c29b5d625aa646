"""
What the admin API accepts: its errors, and the checks of what a client
sent, each a 400 naming the field.
"""

from __future__ import annotations

import json

from ..checks import checkEndpoint
from ..config import MAX_WEIGHT, ConfigError
from ..pool import Admin


class APIError(Exception):
    """
    A request is refused: an HTTP status and a message for the client.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _checkEndpoint(endpoint: str, path: str) -> None:
    try:
        checkEndpoint(endpoint, server=False)
    except Exception as e:
        raise ConfigError(path, f"invalid endpoint {endpoint!r}: {e}") from e


def _shown(value: object) -> str:
    """
    A value as the client sent it, in JSON's spelling (true, null, "x").
    """
    return json.dumps(value)


def _state(value: object, path: str) -> Admin:
    try:
        return Admin(value)
    except ValueError:
        raise APIError(
            400, f"{path}: expected one of ready, drain, maint, got {_shown(value)}") from None


def _weight(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_WEIGHT:
        raise APIError(400, f"{path}: expected an integer 0-{MAX_WEIGHT}, got {_shown(value)}")
    return value


# -- the resource -------------------------------------------------------------
