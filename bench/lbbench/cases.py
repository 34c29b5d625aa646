"""The load cases run with wrk against every target."""

from __future__ import annotations

from dataclasses import dataclass

from lbbench.configs import BIG_PATH, SMALL_PATH


@dataclass(frozen=True)
class CaseSpec:
    """A wrk case; ``primary`` is the metric used for ratios ("requests_per_s" or "mib_per_s")."""

    name: str
    description: str
    path: str
    close_connections: bool
    primary: str


CASES: list[CaseSpec] = [
    CaseSpec("small", "~100 B responses, keep-alive", SMALL_PATH, False, "requests_per_s"),
    CaseSpec(
        "small-close",
        "~100 B responses, 'Connection: close' (new connection per request)",
        SMALL_PATH,
        True,
        "requests_per_s",
    ),
    CaseSpec("big", "1 MiB responses, keep-alive", BIG_PATH, False, "mib_per_s"),
]
CASES_BY_NAME = {case.name: case for case in CASES}
