"""Delay before a retry: fixed or exponential backoff, with optional full jitter."""

from __future__ import annotations

import math
import random

from tideflow.core.options import MAX_DURATION_SECONDS
from tideflow.errors import InvalidOptionError

__all__ = ["retry_delay"]


def retry_delay(
    retry_count: int,
    interval: float,
    backoff: str,
    max_interval: float,
    jitter: bool,
    rng: random.Random,
) -> float:
    """Seconds to wait before retry number ``retry_count`` (1 for the first retry).

    ``"fixed"`` waits ``interval``; ``"exponential"`` waits ``interval * 2**(retry_count-1)``
    capped at ``max_interval``, drawn uniformly from ``[0, that]`` when ``jitter`` is set.
    The result is never negative, never overflows and never exceeds
    :data:`~tideflow.core.options.MAX_DURATION_SECONDS` (a row written before that bound
    existed may hold a larger interval), so ``now + delay`` stays a representable time.
    """
    interval = min(float(max(interval, 0.0)), MAX_DURATION_SECONDS)
    if backoff == "fixed":
        return interval
    if backoff != "exponential":
        raise InvalidOptionError(f'retry_backoff must be "fixed" or "exponential", got {backoff!r}')
    try:
        delay = math.ldexp(interval, max(retry_count - 1, 0))
    except OverflowError:
        delay = math.inf
    delay = min(delay, float(max(max_interval, 0.0)), MAX_DURATION_SECONDS)
    return rng.uniform(0.0, delay) if jitter else delay
