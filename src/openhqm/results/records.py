"""The records a result store keeps: one per request, one per dead letter."""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Any

import msgspec

from openhqm.constants import DEFAULT_PRIORITY, TERMINAL, Status
from openhqm.envelope import AttemptEntry

MAX_CALLBACK_ATTEMPTS_KEPT = 20  # per request: the latest attempts to deliver its callback


class CallbackAttempt(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One HTTP attempt to deliver a request's callback; `attempt` counts on across redeliveries."""

    attempt: int
    at: float
    status_code: int | None = None
    error: str | None = None


class Progress(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a running handler last reported (`job.progress()`); `fraction` is in [0, 1]."""

    fraction: float
    message: str | None = None
    updated_at: float


class FanoutChild(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One member of a fan-out parent (listener/fanout.py): the request currently answering for it
    (a replayed dead letter replaces the one that failed)."""

    member: str
    correlation_id: str


class RequestRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    correlation_id: str
    status: str = Status.PENDING
    submitted_at: float = msgspec.field(default_factory=time.time)
    updated_at: float = msgspec.field(default_factory=time.time)
    completed_at: float | None = None
    attempts: int = 0
    processing_time_ms: float | None = None
    result: Any = None
    error: str | None = None
    raw_response: bytes | None = None
    session_id: str | None = None
    client_id: str | None = None
    target: str | None = None
    not_before: float | None = None
    callback_url: str | None = None
    callback_error: str | None = None
    request_hash: str | None = None
    # What a request that is not running waits for, other than a free worker ("circuit:<endpoint>",
    # "retry", "schedule", "limit:<name>"), and when it is next tried; cleared when it runs or ends.
    waiting_on: str | None = None
    next_attempt_at: float | None = None
    callbacks: list[CallbackAttempt] = msgspec.field(default_factory=list)
    progress: Progress | None = None
    # Written once at create (defaults are not stored): what the console lists and filters by.
    target_kind: str | None = None  # "endpoint" or "handler": what `target` names
    priority: int = DEFAULT_PRIORITY
    idempotency_key: str | None = None
    replayed_from: str | None = None  # the correlation id this request is a replay of
    # Set by the claim of each attempt, and its history appended by the write that ends it (the
    # retry's transition or the reply), so keeping it costs no write of its own.
    worker_id: str | None = None
    started_at: float | None = None
    attempt_history: list[AttemptEntry] = msgspec.field(default_factory=list)
    # Fan-out (listener/fanout.py): a child names its parent and the member it answers for; a parent
    # lists its children and is never queued itself.
    parent_id: str | None = None
    member: str | None = None
    children: list[FanoutChild] = msgspec.field(default_factory=list)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class DeadLetterReason(StrEnum):
    """Why a request was dead-lettered: the machine-readable `reason` of its entry (public values)."""

    MAX_ATTEMPTS = "max_attempts"  # the retry policy's attempts ran out
    HANDLER = "handler"  # it cannot succeed: DeadLetter, a non-retryable error, undecodable or unroutable
    EXPIRED = "expired"  # the retry policy's max_age_s passed before another attempt could start
    BROKER_REDRIVE = "broker_redrive"  # the broker moved it to its dead-letter queue (its delivery limit)
    RECONCILED_MISSING = "reconciled_missing"  # unfinished for far too long with its message nowhere


class DeadLetterRecord(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    correlation_id: str
    queue: str
    reason: str  # a DeadLetterReason value (entries older versions wrote hold free text)
    attempts: int
    last_error: str | None
    dead_lettered_at: float
    body: bytes = b""
    target: str | None = None  # the handler or endpoint it was for
    status_code: int | None = None  # the backend's last HTTP status, for a forward
    traceback: str | None = None  # of the last error: bounded, configured secrets masked
    detail: str | None = None  # the reason in words, naming the limit or the error that ended it

