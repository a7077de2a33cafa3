"""Intervals for polling something that usually finishes soon but may take hours (a job, an export).

Starting short and doubling up to a cap answers a short job within milliseconds of its end and costs a
long one no more than a fixed interval would (as Google's long-running-operation pollers do).
"""

from __future__ import annotations

from collections.abc import Iterator

FIRST_SECONDS = 0.01


def intervals(cap: float, first: float = FIRST_SECONDS) -> Iterator[float]:
    """first, 2*first, 4*first, ... then `cap` forever."""
    wait = min(first, cap)
    while True:
        yield wait
        wait = min(wait * 2, cap)
