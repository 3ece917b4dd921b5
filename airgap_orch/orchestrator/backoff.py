"""Retry delays: capped exponential backoff with jitter; a worker's explicit retry_after wins."""

from __future__ import annotations

import random

BASE_SECONDS = 1.0
CAP_SECONDS = 300.0


def retry_delay(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1`. Jitter is 'equal jitter': half fixed, half random."""
    if retry_after is not None:
        return max(0.0, float(retry_after))
    ceiling = min(CAP_SECONDS, BASE_SECONDS * (2 ** max(0, attempt - 1)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def hint(attempt: int) -> float:
    """The ceiling of the delay that a failure of `attempt` would get: shown to workers as a hint."""
    return min(CAP_SECONDS, BASE_SECONDS * (2 ** max(0, attempt - 1)))
