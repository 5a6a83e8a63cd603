"""The JSON shapes of the operator console's request API (http/request_routes.py), for OpenAPI and
for validating bulk bodies."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from openhqm.http.schemas import StatusResponse

MAX_PAGE = 500
DEFAULT_PAGE = 50
MAX_BULK = 10_000
DEFAULT_BULK = 1000


class RequestItem(StatusResponse):
    endpoint: str | None = Field(None, description="the endpoint it is forwarded to (null: a handler's)")
    handler: str | None = Field(None, description="the handler that runs it (null: an endpoint's)")
    priority: int = 5


class RequestPageResponse(BaseModel):
    items: list[RequestItem]
    next_cursor: str | None = Field(description="pass as `cursor` for the next (older) page; null: no more. "
                                    "A page may be short, even empty, with a cursor when a filter that no "
                                    "index covers examined its scan budget: ask again with it")


class RequestCountsResponse(BaseModel):
    counts: dict[str, int] = Field(description="requests per status (statuses with none left out)")
    exact: bool = Field(True, description="false when the store stopped counting at its scan budget (Redis)")


class AttemptInfo(BaseModel):
    attempt: int
    started_at: str | None
    finished_at: str | None = Field(None, description="null while it runs")
    worker_id: str | None = None
    status_code: int | None = Field(None, description="the backend's HTTP status, for a forward")
    error: str | None = None
    duration_ms: float | None = None


class RequestDetail(RequestItem):
    payload: Any = Field(None, description="the request body: JSON as sent, or text/base64 (payload_encoding)")
    payload_encoding: str | None = Field(None, description="json, text or base64; null when no body was kept")
    headers: dict[str, str] = Field({}, description="as sent, Authorization/Cookie/Proxy-Authorization/"
                                    "X-Api-Key values and configured secrets masked")
    metadata: dict[str, Any] = {}
    method: str | None = Field(None, description="the HTTP method, for a proxied request")
    path: str | None = Field(None, description="the path, for a proxied request")
    attempt_history: list[AttemptInfo] = Field([], description="the latest 20 attempts, oldest first; "
                                               "one still running has no finished_at")
    result: Any = None


class RequestFilterBody(BaseModel):
    """The list's filters, for bulk actions."""

    model_config = ConfigDict(extra="forbid")

    status: list[str] | str | None = None
    endpoint: str | None = None
    handler: str | None = None
    session_id: str | None = None
    idempotency_key: str | None = None
    id_prefix: str | None = None
    since: str | float | None = None
    until: str | float | None = None


class DeadLetterFilterBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    endpoint: str | None = None
    handler: str | None = None
    reason: str | None = None
    since: str | float | None = None
    until: str | float | None = Field(None, description="on dead_lettered_at, like since")


class BulkRequest(BaseModel):
    """Either `ids`, or a `filter` with a `limit` (bounded, so one click cannot hold the store)."""

    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = Field(None, max_length=MAX_BULK)
    filter: RequestFilterBody | None = None
    limit: int = Field(DEFAULT_BULK, ge=1, le=MAX_BULK)


class DeadLetterBulkRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ids: list[str] | None = Field(None, max_length=MAX_BULK)
    filter: DeadLetterFilterBody | None = None
    limit: int = Field(DEFAULT_BULK, ge=1, le=MAX_BULK)


class Skipped(BaseModel):
    id: str
    reason: str


class BulkResponse(BaseModel):
    matched: int = Field(description="how many the ids or the filter selected (at most `limit`)")
    done: int
    skipped: list[Skipped]


class RequestReplayResponse(BaseModel):
    correlation_id: str
    status: str
    submitted_at: str | None = None
    replayed_from: str
