"""The load cases: wrk against the HTTP/1.1 and TCP targets, h2load against the HTTP/2 ones."""

from __future__ import annotations

from dataclasses import dataclass

from lbbench.configs import BIG_PATH, SMALL_PATH
from lbbench.targets import H2_TLS, H2C, HTTP1, TargetSpec


@dataclass(frozen=True)
class CaseSpec:
    """A load case; ``primary`` is the metric used for ratios ("requests_per_s" or "mib_per_s");
    ``protocols``: the target protocols it loads (HTTP/1.1 with wrk, HTTP/2 with h2load)."""

    name: str
    description: str
    path: str
    close_connections: bool
    primary: str
    protocols: tuple[str, ...] = (HTTP1,)

    @property
    def uses_h2load(self) -> bool:
        """True for the HTTP/2 cases, loaded with h2load instead of wrk."""
        return HTTP1 not in self.protocols

    def applies_to(self, target: TargetSpec) -> bool:
        """True if this case loads ``target`` (its clients speak the target's protocol)."""
        return target.protocol in self.protocols


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
    CaseSpec(
        "h2-small",
        "~100 B responses over HTTP/2, many streams per connection (h2load; h2c and TLS)",
        SMALL_PATH,
        False,
        "requests_per_s",
        (H2C, H2_TLS),
    ),
]
CASES_BY_NAME = {case.name: case for case in CASES}
