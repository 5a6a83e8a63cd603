"""The API routes: parse, call the Bridge, shape the answer. No queue or store logic here."""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from sse_starlette import EventSourceResponse, ServerSentEvent

from openhqm import metrics, stages
from openhqm.bridge import Bridge, json_body
from openhqm.constants import DEFAULT_PRIORITY
from openhqm.envelope import Envelope
from openhqm.errors import RequestRejected
from openhqm.http import paths  # noqa: F401 (registers the request_id path convertor)
from openhqm.http.auth import current_identity
from openhqm.http.console_params import dead_letter_filter
from openhqm.http.health import readiness
from openhqm.http.openapi import ERRORS, RESPONSE_RESPONSES, SUBMIT_RESPONSES
from openhqm.http.prefer import parse_prefer
from openhqm.http.responses import JSONResponse, problem, raw_response
from openhqm.http.schemas import (
    DeadLetterEntry,
    ReplayResponse,
    ResultResponse,
    StatusResponse,
    SubmitRequest,
    SubmitResponse,
)
from openhqm.results.base import RequestRecord
from openhqm.timefmt import parse_rfc3339, rfc3339
from openhqm.views import callback_attempt_json, progress_json, result_json, status_json

router = APIRouter()
ops_router = APIRouter()


def context(request: Request) -> tuple[Bridge, str | None]:
    """The Bridge and the authenticated client (None when access control is off).

    A plain call, not a FastAPI dependency: resolving dependencies cost a fifth of each request's
    CPU under load (py-spy), and these two are only lookups."""
    identity = current_identity(request)
    bridge: Bridge = request.app.state.bridge
    return bridge, identity.client_id if identity else None


def accepted(request: Request, record: RequestRecord, bridge: Bridge) -> JSONResponse:
    """202 pointing at the result: the asynchronous request-reply pattern generic pollers follow."""
    location = str(request.url_for("get_response", correlation_id=record.correlation_id).path)
    return JSONResponse(
        {"correlation_id": record.correlation_id, "status": record.status,
         "submitted_at": rfc3339(record.submitted_at)},
        status_code=202,
        headers={"Location": location, "Retry-After": str(bridge.settings.server.retry_after_s)})


def finished(record: RequestRecord) -> JSONResponse:
    return JSONResponse(result_json(record), status_code=200)


def waited(record: RequestRecord, wait_s: float, bridge: Bridge) -> JSONResponse:
    """200 after `Prefer: wait`, stating the wait applied: the one asked for, at most server.max_wait_s."""
    response = finished(record)
    response.headers["Preference-Applied"] = f"wait={min(wait_s, bridge.settings.server.max_wait_s):g}"
    return response


def _schedule(meta: Any) -> tuple[float | None, float | None]:
    now = time.time()
    not_before = None
    if meta.delay_s is not None and meta.run_at is not None:
        raise RequestRejected("metadata.delay_s and metadata.run_at exclude each other")
    if meta.delay_s:
        not_before = now + meta.delay_s
    if meta.run_at is not None:
        try:
            not_before = parse_rfc3339(meta.run_at)
        except ValueError as exc:
            raise RequestRejected(f"metadata.run_at: {exc}") from None
    expires_at = None
    if meta.expires_at is not None:
        try:
            expires_at = parse_rfc3339(meta.expires_at)
        except ValueError as exc:
            raise RequestRejected(f"metadata.expires_at: {exc}") from None
    return not_before, expires_at


def build_submission(body: SubmitRequest, bridge: Bridge, *, session_header: str | None,
                     traceparent: str | None, client: str | None) -> Envelope:
    """The routed envelope for a JSON submit; any metadata key the API does not know goes to the
    handler as it came, and none of them can set what the listener alone knows (`Envelope.caller`)."""
    meta = body.metadata
    extra = dict(meta.model_extra or {})
    router_ = bridge.router
    if meta.fanout is not None:  # a fan-out parent: its children are routed to the group's members
        if meta.endpoint is not None or meta.handler is not None:
            raise RequestRejected("metadata.fanout excludes metadata.endpoint and metadata.handler")
        bridge.fanout_members(meta.fanout)
        endpoint, handler, extra["fanout"] = None, None, meta.fanout
    else:
        endpoint, handler = router_.choose(meta.endpoint, meta.handler, payload=body.payload,
                                           headers=body.headers)
    not_before, expires_at = _schedule(meta)
    if meta.callback_url is not None:
        bridge.check_callback_url(meta.callback_url)
    return Envelope(
        body=json_body(body.payload), content_type="application/json", headers=body.headers, handler=handler,
        endpoint=endpoint,
        priority=meta.priority if isinstance(meta.priority, int) else DEFAULT_PRIORITY,
        timeout_s=meta.timeout_s or meta.timeout, not_before=not_before, expires_at=expires_at,
        session_id=meta.session_id or session_header, client_id=client, callback_url=meta.callback_url,
        traceparent=traceparent, metadata=extra)


def _header(name: str, description: str) -> dict[str, Any]:
    return {"name": name, "in": "header", "required": False, "schema": {"type": "string"},
            "description": description}


# The headers are read from the request rather than declared as parameters: each declared
# parameter is resolved per request by FastAPI, and on this hottest route that showed in profiles.
SUBMIT_HEADERS = {"parameters": [
    _header("Prefer", "RFC 7240: `wait=N` answers inline when done within N s; `respond-async`"),
    _header("X-Session-ID", "the session (same as metadata.session_id)"),
    _header("traceparent", "W3C trace context, carried to the worker and the backend"),
    _header("Idempotency-Key", "repeats within idempotency.window_s return the original request"),
]}


@router.post("/api/v1/submit", status_code=202, response_model=SubmitResponse,
             responses=SUBMIT_RESPONSES, openapi_extra=SUBMIT_HEADERS)
async def submit(body: SubmitRequest, request: Request) -> Response:
    """Queue a request. `Prefer: wait=N` answers 200 with the result if it completes within N s.
    An `Idempotency-Key` repeat within `idempotency.window_s` returns the original request."""
    return await answer_submit(body, request)


async def answer_submit(body: SubmitRequest, request: Request) -> Response:
    """The submit route's work, shared with the fast path (http/fastpath.py)."""
    bridge, client = context(request)
    headers = request.headers
    x_session_id, traceparent = headers.get("x-session-id"), headers.get("traceparent")
    idempotency_key = headers.get("idempotency-key")
    if idempotency_key is not None and len(idempotency_key) > 256:
        raise RequestRejected("Idempotency-Key is longer than 256 characters", status=422)
    preferences = parse_prefer(headers.getlist("prefer"))
    submission = build_submission(body, bridge, session_header=x_session_id, traceparent=traceparent,
                                  client=client)
    replayed = False
    if idempotency_key:
        record, is_new = await bridge.submit_once(submission, idempotency_key, request_hash(body))
        replayed = not is_new
    elif preferences.wait_s and not preferences.respond_async:
        record = await bridge.submit_and_wait(submission, preferences.wait_s)
        if not record.terminal:
            return accepted(request, record, bridge)
        return waited(record, preferences.wait_s, bridge)
    else:
        record = await bridge.submit(submission)
    response = await _answer(request, bridge, record, preferences.wait_s, preferences.respond_async, client)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response


def request_hash(body: SubmitRequest) -> str:
    canonical = orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


async def _answer(request: Request, bridge: Bridge, record: RequestRecord, wait_s: float | None,
                  respond_async: bool, client: str | None) -> Response:
    if record.terminal:
        return finished(record)
    if wait_s and not respond_async:
        done = await bridge.wait(record.correlation_id, wait_s, client)
        if done.terminal:
            return waited(done, wait_s, bridge)
        record = done
    return accepted(request, record, bridge)


@router.get("/api/v1/status/{correlation_id}", response_model=StatusResponse, responses=ERRORS)
async def get_status(correlation_id: str, request: Request) -> dict[str, Any]:
    bridge, client = context(request)
    record = await bridge.get(correlation_id, client)
    shown = status_json(record)
    if record.children:
        shown["children"] = await bridge.children(record)
    return shown


@router.get("/api/v1/response/{correlation_id}", response_model=ResultResponse,
            responses=RESPONSE_RESPONSES)
async def get_response(
    correlation_id: str, request: Request,
    wait: Annotated[float | None, Query(ge=0, description="long-poll up to this many seconds")] = None,
    format: Annotated[str | None, Query(pattern="^(json|raw)$")] = None,
) -> Response:
    """202 (with Retry-After) until the request is terminal; then 200 with the result JSON."""
    return await answer_response(correlation_id, request, wait, format)


async def answer_response(correlation_id: str, request: Request, wait: float | None, format: str | None) -> Response:
    """The response route's work, shared with the fast path (http/fastpath.py)."""
    bridge, client = context(request)
    if wait:
        record = await bridge.wait(correlation_id, wait, client)
    else:
        record = await bridge.get(correlation_id, client)
    if not record.terminal:
        response = JSONResponse(status_json(record), status_code=202)
        response.headers["Retry-After"] = str(bridge.settings.server.retry_after_s)
        return response
    if format == "raw":
        return raw_response(record)
    return finished(record)


@router.delete("/api/v1/requests/{correlation_id:request_id}", response_model=StatusResponse, responses=ERRORS)
async def cancel(correlation_id: str, request: Request) -> dict[str, Any]:
    """Cancel a request that has not finished (a running one is stopped by its worker); 409 once finished."""
    bridge, client = context(request)
    return status_json(await bridge.cancel(correlation_id, client))


@router.get("/api/v1/sessions/{session_id}", responses=ERRORS)
async def get_session(session_id: str, request: Request,
                      limit: Annotated[int, Query(ge=1, le=10_000)] = 1000) -> dict[str, Any]:
    """A session's requests in submit order, with their states."""
    bridge, client = context(request)
    records = await bridge.session(session_id, client, limit)
    return {"session_id": session_id, "requests": [status_json(r) for r in records]}


@router.get("/api/v1/requests/{correlation_id:request_id}/events", responses=ERRORS,
            response_class=EventSourceResponse)
async def request_events(correlation_id: str, request: Request) -> EventSourceResponse:
    """Server-Sent Events: one `status` event per state change, until a terminal state. A client
    that reconnects with `Last-Event-ID` gets the current state only if it changed since."""
    bridge, client = context(request)
    current = await bridge.get(correlation_id, client)  # 404 before the stream starts
    seen = request.headers.get("last-event-id")
    # sse-starlette ends the stream when the client goes away or the server shuts down, and pings.
    return EventSourceResponse(event_stream(bridge, current, seen), ping=EVENTS_PING_S)


async def event_stream(bridge: Bridge, first: RequestRecord, seen: str | None
                       ) -> AsyncIterator[ServerSentEvent]:
    cid = first.correlation_id
    # Resumed at the state the client already has: send only what comes after it.
    sent = _shown(first) if event_id(first) == seen else None
    record: RequestRecord | None = first
    deadline = time.monotonic() + EVENTS_MAX_S
    with bridge.updates(cid) as updates:
        while record is not None and time.monotonic() < deadline:
            if _shown(record) != sent:
                sent = _shown(record)
                yield status_event(record)
            if record.terminal:
                return
            try:
                record = await asyncio.wait_for(updates.get(), EVENTS_RECHECK_S)
            except TimeoutError:
                # Changes made by another process (a separate worker) reach this one only
                # through the store, so re-read it now and then.
                record = await bridge.reread(cid)


EVENTS_RECHECK_S = 0.5
EVENTS_MAX_S = 3600.0
EVENTS_PING_S = 5.0  # a comment line this often: below the Python client's default read timeout (10 s)
EVENTS_RETRY_MS = 1000  # how long a client waits before it reconnects


def _shown(record: RequestRecord) -> tuple[object, ...]:
    """What an event tells: a change of any of it is worth an event (progress included)."""
    return record.status, record.attempts, record.progress


def event_id(record: RequestRecord) -> str:
    """The record's last update (or progress) time: compared for equality only, so clocks of other
    processes need not agree, and a resumed stream needs no history on the server."""
    progressed = record.progress.updated_at if record.progress is not None else 0.0
    return f"{max(record.updated_at, progressed):.6f}"


def status_event(record: RequestRecord) -> ServerSentEvent:
    data = {"correlation_id": record.correlation_id, "status": record.status,
            "at": rfc3339(record.updated_at), "attempts": record.attempts, "error": record.error,
            "progress": progress_json(record.progress)}
    return ServerSentEvent(orjson.dumps(data).decode(), event="status", id=event_id(record),
                           retry=EVENTS_RETRY_MS)


@router.get("/api/v1/stats")
async def get_stats(request: Request) -> dict[str, Any]:
    """Counts per state, queue depth, recent throughput and latency, oldest unfinished age."""
    bridge, _ = context(request)
    return await bridge.stats()


@router.get("/api/v1/stats/stages", include_in_schema=False)
async def get_stage_times(reset: bool = False) -> Response:
    """A diagnostic (OPENHQM_STAGE_SAMPLE, openhqm/stages.py): where this process's sampled requests
    waited; `reset` starts a new sample. 404 while tracing is off."""
    if not stages.enabled():
        return problem(404, f"stage tracing is off; set {stages.ENVIRONMENT_VARIABLE}=N to trace 1 in N submits")
    return JSONResponse(stages.summary(reset=reset))


@router.get("/api/v1/dlq", response_model=list[DeadLetterEntry])
async def list_dead_letters(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                            endpoint: str | None = None, handler: str | None = None, reason: str | None = None,
                            since: str | None = None, until: str | None = None) -> list[dict[str, Any]]:
    """Oldest first; `since`/`until` (RFC 3339 or epoch seconds) on dead_lettered_at."""
    bridge, _ = context(request)
    return [dead_letter_json(d) for d in await bridge.dead_letters(limit, dead_letter_filter(locals()))]


def dead_letter_json(d: Any) -> dict[str, Any]:
    return {"id": d.id, "correlation_id": d.correlation_id, "reason": d.reason, "attempts": d.attempts,
            "last_error": d.last_error, "dead_lettered_at": rfc3339(d.dead_lettered_at), "queue": d.queue,
            "target": d.target, "status_code": d.status_code, "traceback": d.traceback, "detail": d.detail}


@router.post("/api/v1/dlq/{dead_letter_id}/replay", response_model=ReplayResponse, status_code=202,
             responses=ERRORS)
async def replay_dead_letter(dead_letter_id: str, request: Request) -> dict[str, Any]:
    """Queue a dead letter again as a new request; the answer names the new correlation id."""
    bridge, _ = context(request)
    record, original = await bridge.replay(dead_letter_id)
    return {"id": dead_letter_id, "correlation_id": record.correlation_id, "status": record.status,
            "replayed_from": original.correlation_id}


@router.delete("/api/v1/dlq")
async def purge_dead_letters(request: Request) -> dict[str, int]:
    bridge, _ = context(request)
    return {"purged": await bridge.purge_dead_letters()}


@router.post("/api/v1/requests/{correlation_id:request_id}/callback", responses=ERRORS)
async def resend_callback(correlation_id: str, request: Request) -> dict[str, Any]:
    """Deliver a finished request's callback again (admin); answers with how that went. 409 while it
    is unfinished or when it has no callback_url."""
    bridge, client = context(request)
    outcome = await bridge.resend_callback(correlation_id, client)
    return {"correlation_id": correlation_id, "delivered": outcome.delivered, "error": outcome.error,
            "attempts": [callback_attempt_json(attempt) for attempt in outcome.attempts]}


@ops_router.get("/health")
async def health() -> dict[str, str]:
    """Alive: the process answers. Says nothing about the broker (see /ready)."""
    return {"status": "ok"}


@ops_router.get("/ready", responses={503: {"description": "Not ready: the same report, naming what is down"}})
async def ready(request: Request) -> Response:
    """Ready when the broker and the result store both answer within their timeouts."""
    bridge, _ = context(request)
    return readiness(*await bridge.health())


# Documented as text/plain (the Prometheus text format), not the default JSON.
@ops_router.get("/metrics", response_class=PlainTextResponse)
async def prometheus_metrics() -> Response:
    return Response(metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
