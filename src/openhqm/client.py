"""Python client for the OpenHQM HTTP API: `Client` (sync) and `AsyncClient`, both on httpx.

Each operation is built once (`_Call`) and parsed once; the two classes only send. Its exceptions
(ClientError and below) are in openhqm.errors with every other, and importable from here too;
`raise_for_answer` is the one place that maps HTTP statuses to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import msgspec
from httpx_sse import EventSource, ServerSentEvent

from openhqm.constants import TERMINAL, Status
from openhqm.errors import ClientError, Forbidden, RequestFailed, RequestNotFound, RequestTimeout, Unauthorized

DEFAULT_TIMEOUT_S = 10.0
LONG_POLL_S = 30.0  # one long-poll in wait(); below the server's default max_wait_s (60 s)
MIN_POLL_INTERVAL_S = 1.0
USER_AGENT = "openhqm-python-client"
DEFAULT_SSE_RETRY_S = 1.0  # before resuming an event stream, until the server's `retry:` says otherwise


class SubmitResult(msgspec.Struct, frozen=True):
    """The 202 answer: the request is queued."""

    correlation_id: str
    status: str
    submitted_at: datetime | None = None


class RequestResult(msgspec.Struct, frozen=True):
    correlation_id: str
    status: str
    result: Any = None
    error: str | None = None
    submitted_at: datetime | None = None
    completed_at: datetime | None = None
    processing_time_ms: float | None = None
    attempts: int = 0

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


class Progress(msgspec.Struct, frozen=True):
    """What the handler last reported (`job.progress()`)."""

    fraction: float
    message: str | None = None
    updated_at: datetime | None = None


class RequestStatus(msgspec.Struct, frozen=True):
    correlation_id: str
    status: str
    submitted_at: datetime | None = None
    updated_at: datetime | None = None
    completed_at: datetime | None = None
    attempts: int = 0
    error: str | None = None
    session_id: str | None = None
    waiting_on: str | None = None
    next_attempt_at: datetime | None = None
    progress: Progress | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


class RequestEvent(msgspec.Struct, frozen=True):
    """One Server-Sent Event: a state change of the request."""

    correlation_id: str
    status: str
    at: datetime | None = None
    attempts: int = 0
    error: str | None = None
    progress: Progress | None = None

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


_ERRORS: dict[int, type[ClientError]] = {401: Unauthorized, 403: Forbidden, 404: RequestNotFound}


def raise_for_answer(response: httpx.Response) -> None:
    """The one place an HTTP error answer becomes an exception, carrying the server's `detail`."""
    if response.is_success:
        return
    detail = _problem_detail(response)
    kind = _ERRORS.get(response.status_code, ClientError)
    raise kind(f"{response.request.method} {response.request.url.path} answered {response.status_code}: {detail}",
               status_code=response.status_code, detail=detail)


def _problem_detail(response: httpx.Response) -> str:
    """The `detail` of the server's problem details (RFC 9457, every error it answers); the body as
    text from anything else on the way (a proxy's own error page)."""
    try:
        body = response.json()
    except ValueError:
        return response.text
    detail = body.get("detail") if isinstance(body, dict) else None
    return detail if isinstance(detail, str) else response.text


@contextlib.contextmanager
def _transport_errors(call: _Call) -> Iterator[None]:
    try:
        yield
    except httpx.HTTPError as exc:
        raise ClientError(f"{call.method} {call.path} failed: {type(exc).__name__}: {exc}") from exc


@dataclass(frozen=True)
class _Call:
    """One API request, independent of sync or async sending."""

    method: str
    path: str
    json: Any = None
    params: dict[str, str] | None = None
    headers: dict[str, str] | None = None
    wait_s: float = 0.0  # the server may hold the answer this long: added to the read timeout

    def timeout(self, timeout_s: float) -> httpx.Timeout:
        return httpx.Timeout(timeout_s, read=timeout_s + self.wait_s)


def _id(correlation_id: str) -> str:
    return quote(correlation_id, safe="")


def _submit_call(payload: Any, *, handler: str | None, endpoint: str | None, priority: int | str | None,
                 session_id: str | None, delay_s: float | None, idempotency_key: str | None,
                 metadata: dict[str, Any] | None, headers: dict[str, str] | None, wait_s: float | None) -> _Call:
    named = {"handler": handler, "endpoint": endpoint, "priority": priority, "session_id": session_id,
             "delay_s": delay_s}
    body = {"payload": payload, "headers": headers or {},
            "metadata": {**(metadata or {}), **{k: v for k, v in named.items() if v is not None}}}
    http_headers = {}
    if idempotency_key is not None:
        http_headers["Idempotency-Key"] = idempotency_key
    if wait_s:
        http_headers["Prefer"] = f"wait={wait_s:g}"
    return _Call("POST", "/api/v1/submit", json=body, headers=http_headers, wait_s=wait_s or 0.0)


def _result_call(correlation_id: str, wait_s: float | None) -> _Call:
    params = {"wait": f"{wait_s:g}"} if wait_s else None
    return _Call("GET", f"/api/v1/response/{_id(correlation_id)}", params=params, wait_s=wait_s or 0.0)


def _status_call(correlation_id: str) -> _Call:
    return _Call("GET", f"/api/v1/status/{_id(correlation_id)}")


def _cancel_call(correlation_id: str) -> _Call:
    return _Call("DELETE", f"/api/v1/requests/{_id(correlation_id)}")


def _events_call(correlation_id: str) -> _Call:
    return _Call("GET", f"/api/v1/requests/{_id(correlation_id)}/events",
                 headers={"Accept": "text/event-stream"})


T = TypeVar("T")


def _decode(response: httpx.Response, kind: type[T]) -> T:
    return msgspec.json.decode(response.content, type=kind)


def _finished(result: RequestResult) -> RequestResult:
    """Results are handed out only when COMPLETED (or not yet done); any other ending raises."""
    if result.done and result.status != Status.COMPLETED:
        raise RequestFailed(result)
    return result


def _submit_answer(response: httpx.Response) -> SubmitResult | RequestResult:
    # 200: finished inline (Prefer: wait, or an idempotent repeat of a finished request); 202: queued.
    if response.status_code == 200:
        return _finished(_decode(response, RequestResult))
    return _decode(response, SubmitResult)


class _Deadline:
    """wait()'s clock: how long the next long-poll may be and how long to pause after a short one."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.end = time.monotonic() + timeout_s

    def remaining_s(self) -> float:
        return self.end - time.monotonic()

    def next_poll_s(self) -> float:
        return min(self.remaining_s(), LONG_POLL_S)

    def pause_s(self, poll_started: float) -> float:
        # A server whose max_wait_s is below what was asked answers early; pausing makes that
        # case poll at a modest rate instead of spinning.
        elapsed = time.monotonic() - poll_started
        return max(0.0, min(MIN_POLL_INTERVAL_S - elapsed, self.remaining_s()))


class _EventCursor:
    """How far a stream of events got: a stream the server ends before the terminal event (its time
    limit, a restart) is resumed with the last event's id as `Last-Event-ID`, after the server's `retry`."""

    def __init__(self, call: _Call) -> None:
        self.call = call
        self.last_id: str | None = None
        self.retry_s = DEFAULT_SSE_RETRY_S

    def headers(self) -> dict[str, str]:
        resume = {"Last-Event-ID": self.last_id} if self.last_id else {}
        return {**(self.call.headers or {}), **resume}

    def read(self, sse: ServerSentEvent) -> RequestEvent | None:
        if sse.id:
            self.last_id = sse.id
        if sse.retry is not None:
            self.retry_s = sse.retry / 1000
        if sse.data and sse.event in ("message", "status"):
            return msgspec.json.decode(sse.data, type=RequestEvent)
        return None


def _options(base_url: str, api_key: str | None, timeout_s: float) -> dict[str, Any]:
    headers = {"User-Agent": USER_AGENT}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    return {"base_url": base_url, "headers": headers, "timeout": timeout_s}


class Client:
    """Synchronous client. `api_key` may be an API key or a JWT; both are sent as a Bearer token."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._http = httpx.Client(**_options(base_url, api_key, timeout_s))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> httpx.Response:
        with _transport_errors(call):
            response = self._http.request(call.method, call.path, json=call.json, params=call.params,
                                          headers=call.headers, timeout=call.timeout(self.timeout_s))
        raise_for_answer(response)
        return response

    def submit(self, payload: Any, *, handler: str | None = None, endpoint: str | None = None,
               priority: int | str | None = None, session_id: str | None = None, delay_s: float | None = None,
               idempotency_key: str | None = None, metadata: dict[str, Any] | None = None,
               headers: dict[str, str] | None = None, wait_s: float | None = None) -> SubmitResult | RequestResult:
        """Queue `payload`. With `wait_s`, a request that finishes in time comes back as its result.
        `headers` are passed to the handler/endpoint (they are not HTTP headers of this call)."""
        return _submit_answer(self._send(_submit_call(
            payload, handler=handler, endpoint=endpoint, priority=priority, session_id=session_id,
            delay_s=delay_s, idempotency_key=idempotency_key, metadata=metadata, headers=headers, wait_s=wait_s)))

    def status(self, correlation_id: str) -> RequestStatus:
        return _decode(self._send(_status_call(correlation_id)), RequestStatus)

    def result(self, correlation_id: str, wait_s: float | None = None) -> RequestResult:
        """The result; `.done` is False if it has not finished (after long-polling up to `wait_s`)."""
        return _finished(_decode(self._send(_result_call(correlation_id, wait_s)), RequestResult))

    def wait(self, correlation_id: str, timeout_s: float) -> RequestResult:
        """Long-poll until the request finishes; RequestTimeout after `timeout_s`."""
        deadline, last = _Deadline(timeout_s), None
        while deadline.remaining_s() > 0:
            started = time.monotonic()
            last = self.result(correlation_id, wait_s=deadline.next_poll_s())
            if last.done:
                return last
            time.sleep(deadline.pause_s(started))
        raise RequestTimeout(correlation_id, timeout_s, last)

    def cancel(self, correlation_id: str) -> RequestStatus:
        """Cancel a request that has not started; ClientError with status_code 409 once it has."""
        return _decode(self._send(_cancel_call(correlation_id)), RequestStatus)

    def events(self, correlation_id: str) -> Iterator[RequestEvent]:
        """Each state change as it happens, ending after the terminal one (a stream the server ends
        early is resumed where it stopped)."""
        cursor = _EventCursor(_events_call(correlation_id))
        while True:
            with _transport_errors(cursor.call), self._http.stream(cursor.call.method, cursor.call.path,
                                                                   headers=cursor.headers()) as response:
                if not response.is_success:
                    response.read()
                    raise_for_answer(response)
                for sse in EventSource(response).iter_sse():
                    event = cursor.read(sse)
                    if event is not None:
                        yield event
                        if event.done:
                            return
            time.sleep(cursor.retry_s)  # SSE reconnection: the pause the server asked for with `retry:`


class AsyncClient:
    """Asynchronous twin of `Client`; the same calls, awaited."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._http = httpx.AsyncClient(**_options(base_url, api_key, timeout_s))

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> httpx.Response:
        with _transport_errors(call):
            response = await self._http.request(call.method, call.path, json=call.json, params=call.params,
                                                headers=call.headers, timeout=call.timeout(self.timeout_s))
        raise_for_answer(response)
        return response

    async def submit(self, payload: Any, *, handler: str | None = None, endpoint: str | None = None,
                     priority: int | str | None = None, session_id: str | None = None,
                     delay_s: float | None = None, idempotency_key: str | None = None,
                     metadata: dict[str, Any] | None = None, headers: dict[str, str] | None = None,
                     wait_s: float | None = None) -> SubmitResult | RequestResult:
        return _submit_answer(await self._send(_submit_call(
            payload, handler=handler, endpoint=endpoint, priority=priority, session_id=session_id,
            delay_s=delay_s, idempotency_key=idempotency_key, metadata=metadata, headers=headers, wait_s=wait_s)))

    async def status(self, correlation_id: str) -> RequestStatus:
        return _decode(await self._send(_status_call(correlation_id)), RequestStatus)

    async def result(self, correlation_id: str, wait_s: float | None = None) -> RequestResult:
        return _finished(_decode(await self._send(_result_call(correlation_id, wait_s)), RequestResult))

    async def wait(self, correlation_id: str, timeout_s: float) -> RequestResult:
        deadline, last = _Deadline(timeout_s), None
        while deadline.remaining_s() > 0:
            started = time.monotonic()
            last = await self.result(correlation_id, wait_s=deadline.next_poll_s())
            if last.done:
                return last
            await asyncio.sleep(deadline.pause_s(started))
        raise RequestTimeout(correlation_id, timeout_s, last)

    async def cancel(self, correlation_id: str) -> RequestStatus:
        return _decode(await self._send(_cancel_call(correlation_id)), RequestStatus)

    async def events(self, correlation_id: str) -> AsyncIterator[RequestEvent]:
        """Close it early with `contextlib.aclosing(...)` if you stop before the terminal event."""
        cursor = _EventCursor(_events_call(correlation_id))
        while True:
            with _transport_errors(cursor.call):
                async with self._http.stream(cursor.call.method, cursor.call.path,
                                             headers=cursor.headers()) as response:
                    if not response.is_success:
                        await response.aread()
                        raise_for_answer(response)
                    async with contextlib.aclosing(EventSource(response).aiter_sse()) as stream:
                        async for sse in stream:
                            event = cursor.read(sse)
                            if event is not None:
                                yield event
                                if event.done:
                                    return
            await asyncio.sleep(cursor.retry_s)  # SSE reconnection: the pause the server asked for with `retry:`


__all__ = ["AsyncClient", "Client", "ClientError", "Forbidden", "Progress", "RequestEvent", "RequestFailed",
           "RequestNotFound", "RequestResult", "RequestStatus", "RequestTimeout", "SubmitResult", "Unauthorized",
           "raise_for_answer"]
