"""The operator console's request API: list, counts, detail, replay and bulk actions.

Scopes (http/auth.py): reading needs `read`; replay of a finished request and bulk actions need
`admin`. Client isolation as on the status route: an authenticated client sees its own requests
and those of no client; a key with the `admin` scope sees and acts on all.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request

from openhqm.bridge import Bridge
from openhqm.envelope import Envelope
from openhqm.errors import RequestRejected
from openhqm.http import console_params as params
from openhqm.http import paths  # noqa: F401 (registers the request_id path convertor)
from openhqm.http.auth import current_identity
from openhqm.http.openapi import ERRORS, problems
from openhqm.http.request_schemas import (
    DEFAULT_PAGE,
    MAX_PAGE,
    BulkRequest,
    BulkResponse,
    DeadLetterBulkRequest,
    RequestCountsResponse,
    RequestDetail,
    RequestPageResponse,
    RequestReplayResponse,
)
from openhqm.listener.console import BulkOutcome, Selection
from openhqm.redact import MASKED_HEADERS, SECRET_MASK, mask_secrets, secret_values
from openhqm.timefmt import rfc3339
from openhqm.views import attempt_history_json, item_json, result_json

request_router = APIRouter()
BAD_INPUT = problems(400, 413, 422, 503)


def viewer(request: Request) -> tuple[Bridge, str | None]:
    """The bridge, and the client whose requests alone may be seen (None: all of them)."""
    identity = current_identity(request)
    bridge: Bridge = request.app.state.bridge
    if identity is None or "admin" in identity.scopes:
        return bridge, None
    return bridge, identity.client_id


StatusQuery = Annotated[list[str] | None, Query(description="PENDING, SCHEDULED, PROCESSING, RETRY, COMPLETED, "
                                                "FAILED, CANCELLED or EXPIRED; repeat it or separate by commas")]
TimeQuery = Annotated[str | None, Query(description="on submitted_at: RFC 3339 or epoch seconds")]


@request_router.get("/api/v1/requests", response_model=RequestPageResponse, responses=BAD_INPUT)
async def list_requests(
    request: Request, status: StatusQuery = None, endpoint: str | None = None, handler: str | None = None,
    session_id: str | None = None, idempotency_key: str | None = None, since: TimeQuery = None,
    until: TimeQuery = None, id_prefix: str | None = None, cursor: str | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = DEFAULT_PAGE,
) -> dict[str, Any]:
    """Newest first (submitted_at, then correlation_id). Pages continue from `cursor`, so requests
    that arrive meanwhile neither repeat nor skip entries. Filters that no index covers (endpoint,
    handler, idempotency_key, id_prefix) examine a bounded number of requests per page: a page may
    then be short, even empty, with a `next_cursor` to go on."""
    bridge, client = viewer(request)
    where = params.request_filter(locals(), client)  # the query's values, by the names the filter reads
    page = await bridge.console.page(where, params.cursor(cursor), limit)
    return {"items": [item_json(r) for r in page.records],
            "next_cursor": page.next.encode() if page.next is not None else None}


@request_router.get("/api/v1/requests/counts", response_model=RequestCountsResponse, responses=BAD_INPUT)
async def count_requests(
    request: Request, status: StatusQuery = None, endpoint: str | None = None, handler: str | None = None,
    session_id: str | None = None, idempotency_key: str | None = None, since: TimeQuery = None,
    until: TimeQuery = None, id_prefix: str | None = None,
) -> dict[str, Any]:
    """Requests per status among those the filters cover (the list's filters)."""
    bridge, client = viewer(request)
    counts = await bridge.console.counts(params.request_filter(locals(), client))
    return {"counts": counts.counts, "exact": counts.exact}


@request_router.get("/api/v1/requests/{correlation_id:request_id}", response_model=RequestDetail,
                    responses={**ERRORS, **BAD_INPUT})
async def request_detail(correlation_id: str, request: Request) -> dict[str, Any]:
    """A request with its body as submitted (credentials masked) and the history of its attempts."""
    bridge, client = viewer(request)
    record, envelope = await bridge.console.detail(correlation_id, client)
    detail = {**item_json(record), "result": result_json(record)["result"],
              "attempt_history": attempt_history_json(record), "payload": None, "payload_encoding": None,
              "headers": {}, "metadata": {}, "method": None, "path": None}
    if envelope is not None:
        detail.update(body_json(envelope, secret_values(bridge.settings)))
    return detail


def body_json(envelope: Envelope, secrets: list[str]) -> dict[str, Any]:
    payload, encoding = payload_of(envelope)
    headers = {name: SECRET_MASK if name.lower() in MASKED_HEADERS else mask_secrets(value, secrets)
               for name, value in envelope.headers.items()}
    return {"payload": payload, "payload_encoding": encoding, "headers": headers,
            "metadata": envelope.metadata, "method": envelope.method, "path": envelope.path}


def payload_of(envelope: Envelope) -> tuple[Any, str]:
    body = envelope.body
    if envelope.content_type == "application/json":
        try:
            return orjson.loads(body), "json"
        except orjson.JSONDecodeError:
            pass
    try:
        return body.decode(), "text"
    except UnicodeDecodeError:
        return base64.b64encode(body).decode(), "base64"


@request_router.post("/api/v1/requests/{correlation_id:request_id}/replay", status_code=202,
                     response_model=RequestReplayResponse, responses={**ERRORS, **BAD_INPUT})
async def replay_request(correlation_id: str, request: Request) -> dict[str, Any]:
    """Queue a finished request again as a new request (admin); 409 while it is unfinished."""
    bridge, client = viewer(request)
    record = await bridge.console.replay(correlation_id, client)
    return {"correlation_id": record.correlation_id, "status": record.status,
            "submitted_at": rfc3339(record.submitted_at), "replayed_from": correlation_id}


def selection(body: BulkRequest | DeadLetterBulkRequest, client: str | None) -> Selection:
    if (body.ids is None) == (body.filter is None):
        raise RequestRejected("give exactly one of ids and filter", status=422)
    if body.ids is not None:
        return Selection(ids=body.ids, limit=body.limit)
    values = body.filter.model_dump() if body.filter is not None else {}
    if isinstance(body, DeadLetterBulkRequest):
        return Selection(dead_where=params.dead_letter_filter(values), limit=body.limit)
    return Selection(where=params.request_filter(values, client), limit=body.limit)


def bulk_json(outcome: BulkOutcome) -> dict[str, Any]:
    return {"matched": outcome.matched, "done": outcome.done,
            "skipped": [{"id": item, "reason": reason} for item, reason in outcome.skipped]}


@request_router.post("/api/v1/requests/cancel", response_model=BulkResponse, responses=BAD_INPUT)
async def cancel_requests(body: BulkRequest, request: Request) -> dict[str, Any]:
    """Cancel unfinished requests (admin): by `ids`, or the first `limit` unfinished ones the filter covers."""
    bridge, client = viewer(request)
    return bulk_json(await bridge.console.cancel_many(selection(body, client), client))


@request_router.post("/api/v1/dlq/replay", response_model=BulkResponse, responses=BAD_INPUT)
async def replay_dead_letters(body: DeadLetterBulkRequest, request: Request) -> dict[str, Any]:
    """Queue dead letters again, each as a new request (oldest first, at most `limit`)."""
    bridge, _ = viewer(request)
    return bulk_json(await bridge.console.replay_dead(selection(body, None)))


@request_router.post("/api/v1/dlq/delete", response_model=BulkResponse, responses=BAD_INPUT)
async def delete_dead_letters(body: DeadLetterBulkRequest, request: Request) -> dict[str, Any]:
    """Delete dead letters (oldest first, at most `limit`)."""
    bridge, _ = viewer(request)
    return bulk_json(await bridge.console.delete_dead(selection(body, None)))
