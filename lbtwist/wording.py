"""
Words for people: a count with its noun in the right number, for log lines
and messages (C{"1 backend"}, C{"2 backends"}).  Plain strings, no imports:
the core, the services and C{lbtwist ctl} all use it.
"""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """
    C{n} and C{noun}, plural unless C{n} is 1: C{"1 pool"}, C{"2 pools"},
    C{"0 pools"}.

    @param plural: the plural when it is not C{noun} and an C{s}.
    """
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {plural if plural is not None else noun + 's'}"
