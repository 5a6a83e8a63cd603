"""Policies as values (as httpx's `Timeout` and `Limits`): one backoff, one retry policy.

Every loop that waits before trying again uses these: worker retries, endpoint retries, callback
deliveries, and the reconnect loops of the pool, the reply consumer, the result stores' change
feeds and the backends. A server's `Retry-After` is honoured the same way everywhere: it replaces
the computed backoff, capped by the policy's `max_delay_s` (a misbehaving server cannot park a
request for a day).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass, field

_MAX_EXPONENT = 32


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with "equal jitter": at least half the ceiling, so retries never bunch
    up near zero, and never more than `max_delay_s`."""

    base_delay_s: float = 1.0
    max_delay_s: float = 60.0
    jitter: bool = True

    def delay_s(self, attempts_made: int, retry_after_s: float | None = None) -> float:
        """Wait after `attempts_made` failed tries (1 = the first failed); Retry-After wins, capped."""
        if retry_after_s is not None:
            return min(max(retry_after_s, 0.0), self.max_delay_s)
        exponent = min(max(attempts_made - 1, 0), _MAX_EXPONENT)
        ceiling = min(self.max_delay_s, self.base_delay_s * 2.0**exponent)
        return ceiling / 2 + random.uniform(0, ceiling / 2) if self.jitter else ceiling


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """`max_attempts` counts every try, the first included; `max_age_s` bounds a request's whole life."""

    max_attempts: int = 3
    backoff: Backoff = field(default_factory=Backoff)
    max_age_s: float | None = None

    def next_delay_s(self, attempts_made: int, *, retry_after_s: float | None = None,
                     age_s: float = 0.0) -> float | None:
        """Seconds until the next try, or None when the policy gives up."""
        if attempts_made >= self.max_attempts:
            return None
        delay = self.backoff.delay_s(attempts_made, retry_after_s)
        if self.max_age_s is not None and age_s + delay > self.max_age_s:
            return None
        return delay


# Reconnect loops (consume, reply consumer, change feeds, broker sessions): fast first, never idle long.
RECONNECT_BACKOFF = Backoff(base_delay_s=0.1, max_delay_s=5.0)
# Reconnect loops whose state /ready reports (a result store's change feed): capped at 1 s, so that
# /ready turns 200 within about a second of the server's return, however long it was away.
READINESS_RECONNECT_BACKOFF = Backoff(base_delay_s=0.1, max_delay_s=1.0)


class Reconnect:
    """The state of one reconnect loop: `await wait()` after a failure, `reset()` after a success."""

    def __init__(self, backoff: Backoff = RECONNECT_BACKOFF) -> None:
        self.backoff = backoff
        self.failures = 0
        self._next_delay_s: float | None = None

    @property
    def next_delay_s(self) -> float:
        """What the next `wait()` sleeps (drawn once, so a log line can name it truthfully)."""
        if self._next_delay_s is None:
            self._next_delay_s = self.backoff.delay_s(self.failures + 1)
        return self._next_delay_s

    async def wait(self, until: asyncio.Event | None = None) -> float:
        """Sleep the next delay, or less once `until` is set (a backend's close: a stopping loop must
        not sit out its backoff). Returns the delay drawn, for a log line after the fact."""
        delay_s = self.next_delay_s
        self.failures += 1
        self._next_delay_s = None
        if until is None:
            await asyncio.sleep(delay_s)
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay_s):
                    await until.wait()
        return delay_s

    def reset(self) -> None:
        self.failures = 0
        self._next_delay_s = None
