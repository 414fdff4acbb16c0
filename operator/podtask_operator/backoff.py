"""Retry delays, with Trigger.dev's formula (packages/core/src/v3/utils/retries.ts).

delay(n) = min(maxTimeout, minTimeout * factor^(n-1) * r), r in [1, 2) when
randomize is on, else 1; n is the attempt that just failed (1-based).
"""

from __future__ import annotations

import random

from podtask.api.durations import parse_duration
from podtask.api.v1alpha1 import RetryPolicy


def retry_delay(
    policy: RetryPolicy, failed_attempt: int, rng: random.Random | None = None
) -> float:
    base = parse_duration(policy.min_timeout).total_seconds()
    cap = parse_duration(policy.max_timeout).total_seconds()
    jitter = (1.0 + (rng or random).random()) if policy.randomize else 1.0
    return min(cap, base * policy.factor ** (failed_attempt - 1) * jitter)


def delay_bounds(policy: RetryPolicy, failed_attempt: int) -> tuple[float, float]:
    """The smallest and largest delay the policy allows after ``failed_attempt``."""
    base = parse_duration(policy.min_timeout).total_seconds()
    cap = parse_duration(policy.max_timeout).total_seconds()
    low = base * policy.factor ** (failed_attempt - 1)
    high = low * 2 if policy.randomize else low
    return min(cap, low), min(cap, high)
