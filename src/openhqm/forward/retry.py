"""Retry-After parsing and the backoff an endpoint asks for; the retry loop itself is the caller's."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

_MAX_EXPONENT = 32


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date (RFC 9110 10.2.3).

    None when absent or unreadable; never negative.
    """
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if seconds == seconds else None  # NaN is unreadable
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`max_attempts` counts every call. Delays grow exponentially with jitter, capped at max_delay_s."""

    max_attempts: int = 3
    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    max_age_s: float | None = None
    on_status: frozenset[int] = frozenset()

    def allows_another(self, attempts_made: int, age_s: float = 0.0) -> bool:
        """Whether another call may follow `attempts_made` calls for a request `age_s` old."""
        if attempts_made >= self.max_attempts:
            return False
        return self.max_age_s is None or age_s < self.max_age_s

    def delay_s(self, attempts_made: int, retry_after_s: float | None = None) -> float:
        """Wait before the next call; a server's Retry-After wins over the backoff, within max_delay_s."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_delay_s)
        exponent = min(max(attempts_made - 1, 0), _MAX_EXPONENT)
        ceiling = min(self.max_delay_s, self.base_delay_s * 2.0**exponent)
        # "Equal jitter": at least half the backoff, so retries never bunch up near zero.
        return ceiling / 2 + random.uniform(0, ceiling / 2)
