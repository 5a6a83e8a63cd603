"""Backoff with full jitter, and the retry-or-dead-letter decision."""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryDecision:
    retry: bool
    delay_s: float = 0.0


def backoff_s(attempt: int, base_delay_s: float, max_delay_s: float) -> float:
    """Exponential backoff with jitter: up to base * 2**(attempt-1), capped, never below half of it."""
    ceiling = min(max_delay_s, base_delay_s * 2.0 ** max(0, attempt - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def decide(attempt: int, *, max_attempts: int, base_delay_s: float, max_delay_s: float,
           retry_after_s: float | None = None, age_s: float | None = None,
           max_age_s: float | None = None) -> RetryDecision:
    """`attempt` is the try that just failed; `max_attempts` counts every try, the first included."""
    if attempt >= max_attempts:
        return RetryDecision(False)
    delay = backoff_s(attempt, base_delay_s, max_delay_s)
    if retry_after_s is not None:
        delay = max(delay, retry_after_s)  # the backend said when; honour it
    if max_age_s is not None and age_s is not None and age_s + delay > max_age_s:
        return RetryDecision(False)
    return RetryDecision(True, delay)
