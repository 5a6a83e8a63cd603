"""Request and response models: they validate input and give the OpenAPI document at /docs."""

from __future__ import annotations

from typing import Any, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from openhqm.constants import MAX_PRIORITY, PRIORITY_NAMES


def queueable(value: Any, what: str) -> None:
    """Refuse (422) what JSON text can spell but the queue envelope cannot carry: integers beyond
    64 bits and strings with unpaired surrogates (`"\\ud800"`). Found by the API fuzz test: they
    used to fail at publish and answer 503 as if the queue were down."""
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"{what} cannot be queued: {exc}") from None


class Metadata(BaseModel):
    """Known keys are typed; any other key is kept and handed to the handler unchanged."""

    model_config = ConfigDict(extra="allow")

    endpoint: str | None = None
    handler: str | None = None
    priority: int | str | None = None
    timeout_s: float | None = Field(None, gt=0)
    timeout: float | None = Field(None, gt=0, description="the original OpenHQM name of timeout_s")
    session_id: str | None = Field(None, max_length=256)
    delay_s: float | None = Field(None, ge=0)
    run_at: str | None = None
    expires_at: str | None = None
    callback_url: str | None = Field(None, max_length=2048)
    fanout: str | None = Field(None, description="a fan-out group (`fanout.<group>`): one child request per "
                               "member, this request ends when they all have")

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: int | str | None) -> int | None:
        if value is None:
            return None
        if isinstance(value, str):
            if value.upper() in PRIORITY_NAMES:
                return PRIORITY_NAMES[value.upper()]
            if not value.strip().lstrip("-").isdigit():
                names = ", ".join(PRIORITY_NAMES)
                raise ValueError(f"priority {value!r} is neither a number 0-{MAX_PRIORITY} nor one of {names}")
            value = int(value)
        if not 0 <= value <= MAX_PRIORITY:
            raise ValueError(f"priority {value} is outside 0-{MAX_PRIORITY}")
        return value

    @model_validator(mode="after")
    def _queueable(self) -> Self:
        queueable([self.__dict__, self.model_extra], "metadata")
        return self


class SubmitRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    payload: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    metadata: Metadata = Field(default_factory=Metadata)

    @field_validator("headers")
    @classmethod
    def _queueable_headers(cls, value: dict[str, str]) -> dict[str, str]:
        queueable(value, "headers")
        return value


class SubmitResponse(BaseModel):
    correlation_id: str
    status: str
    submitted_at: str | None


class ResultResponse(BaseModel):
    correlation_id: str
    status: str
    result: Any = None
    error: str | None = None
    submitted_at: str | None = None
    completed_at: str | None = None
    processing_time_ms: float | None = None
    attempts: int = 0


class CallbackAttemptEntry(BaseModel):
    attempt: int = Field(description="counts on across redeliveries")
    at: str | None
    status_code: int | None = None
    error: str | None = None


class ProgressInfo(BaseModel):
    fraction: float = Field(description="how far the handler is, from 0 to 1")
    message: str | None = None
    updated_at: str | None = None


class FanoutChildStatus(BaseModel):
    member: str
    correlation_id: str
    status: str | None = Field(description="null when the child's record is gone (retention)")


class StatusResponse(BaseModel):
    correlation_id: str
    status: str
    submitted_at: str | None = None
    updated_at: str | None = None
    completed_at: str | None = None
    attempts: int = 0
    error: str | None = None
    session_id: str | None = None
    callback_error: str | None = Field(None, description="why the result callback could not be delivered")
    waiting_on: str | None = Field(None, description='what a request not running waits for: "circuit:<endpoint>", '
                                   '"retry", "schedule" or "limit:<name>" (null: a free worker, or nothing)')
    next_attempt_at: str | None = Field(None, description="when it is tried next (RFC 3339), while waiting_on is set")
    callbacks: list[CallbackAttemptEntry] = Field([], description="the latest 20 attempts to deliver its callback")
    progress: ProgressInfo | None = Field(None, description="what the handler last reported (job.progress)")
    replayed_from: str | None = Field(None, description="the correlation id of the request this one replays")
    parent_id: str | None = Field(None, description="a fan-out child's parent request")
    member: str | None = Field(None, description='the fan-out member a child answers for ("endpoint:<name>" or '
                               '"handler:<name>")')
    children: list[FanoutChildStatus] | None = Field(None, description="a fan-out parent's children")


class DeadLetterEntry(BaseModel):
    id: str
    correlation_id: str
    reason: str = Field(description="why, as a code: max_attempts, handler, expired, broker_redrive or "
                        "reconciled_missing (entries written before these codes hold free text)")
    attempts: int
    last_error: str | None
    dead_lettered_at: str | None
    queue: str
    target: str | None = Field(None, description="the handler or endpoint it was for")
    status_code: int | None = Field(None, description="the backend's last HTTP status (forwards)")
    traceback: str | None = Field(None, description="of the last error; at most 8 KiB, configured secrets masked")
    detail: str | None = Field(None, description="the reason in words, naming the limit or the error that ended it")


class ReplayResponse(BaseModel):
    id: str
    correlation_id: str
    status: str
    replayed_from: str


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: `body`, `query`, `path` or `header`, then the field path")
    msg: str
    type: str


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every 4xx and 5xx (`application/problem+json`)."""

    type: str = Field("about:blank", description="about:blank: the status code says what kind of error")
    title: str = Field(description="the status code's phrase")
    status: int
    detail: str = Field(description="what was wrong, naming the field, header or setting")
    errors: list[FieldError] | None = Field(None, description="each invalid field, for 422 validation errors")
    reason: str | None = Field(None, description="a 503's cause: unavailable (broker or store), queue_full "
                                                 "(queue.max_pending), store_full (disk full); retry after Retry-After")

