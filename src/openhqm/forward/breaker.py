"""Per-endpoint circuit breaker: closed -> open -> half-open -> closed.

Closed: calls pass; `failure_threshold` consecutive failures open it. Open: calls are refused with
CircuitOpen(retry_after_s=remaining cool-down), so the worker delays the message back onto the
queue instead of failing it or spinning. After `reset_timeout_s` it is half-open: up to
`half_open_max_calls` trial calls pass at once; a success closes it, a failure opens it again.
State is per process (each worker process learns on its own).

Why our own code (checked 2026-12 against pybreaker 1.4, purgatory 3.0, aiobreaker 1.2,
circuitbreaker 2.1): none caps half-open trial calls (pybreaker and purgatory let every caller through
once the cool-down ends, so all workers hit a recovering backend at once), none has a "neutral"
outcome (a 4xx says nothing about health) other than by exception type, none hands back the remaining
cool-down the worker defers by, and pybreaker's async path needs tornado; aiobreaker is unmaintained.
pybreaker and purgatory do keep state in Redis: the candidates if the flow-control issue wants one
circuit shared by all processes, at the price of a Redis round trip per call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from enum import StrEnum
from typing import Literal

from openhqm.errors import CircuitOpen
from openhqm.forward.settings import CircuitSettings

log = logging.getLogger(__name__)

Outcome = Literal["success", "failure", "neutral"]


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self, endpoint: str, settings: CircuitSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._endpoint = endpoint
        self._settings = settings
        self._clock = clock
        self._state = State.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._trials = 0

    @property
    def state(self) -> State:
        if self._state is State.OPEN and self._remaining_s() <= 0:
            return State.HALF_OPEN
        return self._state

    def _remaining_s(self) -> float:
        return self._opened_at + self._settings.reset_timeout_s - self._clock()

    def acquire(self) -> bool:
        """Let a call through or raise CircuitOpen; True when the call is a half-open trial."""
        if not self._settings.enabled:
            return False
        if self._state is State.OPEN and self._remaining_s() <= 0:
            self._state, self._trials = State.HALF_OPEN, 0
            log.info("circuit of endpoint %r is half-open", self._endpoint)
        if self._state is State.CLOSED:
            return False
        if self._state is State.HALF_OPEN and self._trials < self._settings.half_open_max_calls:
            self._trials += 1
            return True
        retry_after = self._remaining_s() if self._state is State.OPEN else self._settings.reset_timeout_s
        raise CircuitOpen(
            f"endpoint {self._endpoint!r}: circuit is {self._state.value}; not calling it for now",
            retry_after_s=max(retry_after, 0.0),
            endpoint=self._endpoint,
        )

    def release(self, trial: bool, outcome: Outcome) -> None:
        """Record how a call let through by acquire() ended ("neutral": it says nothing about health)."""
        if not self._settings.enabled:
            return
        if trial:
            self._trials = max(self._trials - 1, 0)
        if outcome == "success" and (trial or self._state is State.CLOSED):
            if self._state is not State.CLOSED:
                log.info("circuit of endpoint %r is closed again", self._endpoint)
            self._state, self._failures = State.CLOSED, 0
        elif outcome == "failure" and (trial or self._state is State.CLOSED):
            self._failures += 1
            if trial or self._failures >= self._settings.failure_threshold:
                self._open()

    def _open(self) -> None:
        self._state, self._opened_at, self._trials = State.OPEN, self._clock(), 0
        log.warning(
            "circuit of endpoint %r opened after %d consecutive failures; cool-down %.1f s",
            self._endpoint,
            self._failures,
            self._settings.reset_timeout_s,
        )
