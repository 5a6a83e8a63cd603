"""The listener's operations on requests, independent of HTTP: submit, read, wait, cancel, replay.

A submit writes the store record first and publishes second; if the broker refuses, the record is
removed again, so a client that gets 503 leaves nothing half-written behind.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from starlette.responses import Response

from openhqm import metrics
from openhqm.app import OpenHQM
from openhqm.backends.base import Backend
from openhqm.config import ResultsSettings
from openhqm.constants import Status
from openhqm.envelope import Caller, Envelope, Reply, decode_envelope, decode_reply, encode, new_id
from openhqm.errors import (
    AlreadyExists,
    BackendUnavailable,
    Conflict,
    NotFound,
    OpenHQMError,
    RequestRejected,
    UndecodableMessage,
)
from openhqm.forward import CallbackSender, check_callback_url
from openhqm.logging import get_logger
from openhqm.results.base import DeadLetterRecord, RequestRecord, ResultStore
from openhqm.routing import Routing
from openhqm.stats import RollingStats
from openhqm.views import result_json

log = get_logger("openhqm.listener")

_CANCELLABLE = (Status.PENDING, Status.SCHEDULED, Status.RETRY)
_RECOMPUTED = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection"})


@dataclass
class Submission:
    """A validated request to queue (built by the HTTP layer from JSON or a raw sidecar request)."""

    body: bytes
    content_type: str | None = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    handler: str | None = None
    endpoint: str | None = None
    method: str | None = None
    path: str | None = None
    query: str | None = None
    priority: int = 5
    timeout_s: float | None = None
    not_before: float | None = None
    expires_at: float | None = None
    session_id: str | None = None
    client_id: str | None = None
    callback_url: str | None = None
    traceparent: str | None = None
    caller: Caller | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    request_hash: str | None = None


class Bridge:
    def __init__(self, app: OpenHQM, backend: Backend, store: ResultStore, router: Routing,
                 callbacks: CallbackSender | None = None) -> None:
        self.app = app
        self.router = router
        self.callbacks = callbacks
        self._callback_tasks: set[asyncio.Task[None]] = set()
        self.settings = app.settings
        self.backend = backend
        self.store = store
        self.request_queue = self.settings.queue.request_queue
        self.response_queue = self.settings.queue.response_queue
        self.rolling = RollingStats()

    async def submit(self, sub: Submission) -> RequestRecord:
        envelope = Envelope(
            id=sub.correlation_id or new_id(), session_id=sub.session_id, client_id=sub.client_id,
            reply_to=self.response_queue,
            priority=sub.priority, not_before=sub.not_before, expires_at=sub.expires_at, timeout_s=sub.timeout_s,
            handler=sub.handler, endpoint=sub.endpoint, method=sub.method, path=sub.path, query=sub.query,
            headers=sub.headers, body=sub.body, content_type=sub.content_type, traceparent=sub.traceparent,
            callback_url=sub.callback_url, caller=sub.caller, metadata=sub.metadata)
        now = time.time()
        scheduled = sub.not_before is not None and sub.not_before > now
        record = RequestRecord(
            correlation_id=envelope.correlation_id, status=Status.SCHEDULED if scheduled else Status.PENDING,
            submitted_at=now, updated_at=now, session_id=sub.session_id, client_id=sub.client_id,
            target=sub.endpoint or sub.handler, not_before=sub.not_before, callback_url=sub.callback_url,
            request_hash=sub.request_hash)
        await self.store.create(record)
        try:
            await self.backend.publish(
                self.request_queue, encode(envelope), priority=sub.priority,
                delay_s=max(0.0, sub.not_before - now) if scheduled and sub.not_before else None,
                key=sub.session_id if self.ordered else None, message_id=envelope.id)
        except Exception as exc:
            with contextlib.suppress(Exception):
                await self.store.delete(record.correlation_id)
            if isinstance(exc, OpenHQMError) and not isinstance(exc, BackendUnavailable):
                raise
            raise BackendUnavailable(f"the queue did not accept the request: {exc}") from exc
        self.store.emit(record)
        metrics.child(metrics.SUBMITTED, self.request_queue).inc()
        log.info("request queued", correlation_id=record.correlation_id, session_id=sub.session_id,
                 endpoint=sub.endpoint or sub.handler)
        return record

    async def submit_and_wait(self, sub: Submission, wait_s: float) -> RequestRecord:
        """Submit, then wait up to `wait_s` for the result (Prefer: wait). The waiter is registered
        before the message is published, so the record just written needs no second read."""
        sub.correlation_id = sub.correlation_id or new_id()
        with self.store.waiting(sub.correlation_id) as finished:
            record = await self.submit(sub)
            done = await self.store.until_terminal(record.correlation_id, finished, record,
                                                   min(wait_s, self.settings.server.max_wait_s))
        return done or record

    async def submit_once(self, sub: Submission, idempotency_key: str) -> tuple[RequestRecord, bool]:
        """Submit at most once per (client, key) within `idempotency.window_s`: (record, is_new).

        The correlation id is derived from the key, so the store's unique id settles concurrent
        repeats: exactly one create wins and only its message reaches the queue.
        """
        digest = hashlib.sha256(f"{sub.client_id or ''}\0{idempotency_key}".encode()).digest()
        sub.correlation_id = "idem_" + base64.urlsafe_b64encode(digest[:18]).decode()
        for _ in range(2):
            try:
                return await self.submit(sub), True
            except AlreadyExists:
                existing = await self.store.get(sub.correlation_id)
            if existing is None:
                continue  # its submit failed and was undone meanwhile: try ours
            if time.time() - existing.submitted_at > self.settings.idempotency.window_s and existing.terminal:
                await self.store.delete(existing.correlation_id)  # the key's window is over: a new request
                continue
            if existing.request_hash != sub.request_hash:
                raise RequestRejected("Idempotency-Key was already used with a different request body",
                                      status=422)
            return existing, False
        raise Conflict("Idempotency-Key is being used by a concurrent request; retry")

    @property
    def ordered(self) -> bool:
        return self.settings.ordering == "session"

    async def get(self, correlation_id: str, client_id: str | None = None) -> RequestRecord:
        record = await self.store.get(correlation_id)
        return self._visible(record, correlation_id, client_id)

    async def wait(self, correlation_id: str, timeout_s: float, client_id: str | None = None) -> RequestRecord:
        record = await self.store.wait(correlation_id, min(timeout_s, self.settings.server.max_wait_s))
        return self._visible(record, correlation_id, client_id)

    @staticmethod
    def _visible(record: RequestRecord | None, correlation_id: str, client_id: str | None) -> RequestRecord:
        # Another client's request answers exactly like a missing one: no existence leak.
        if record is None or (client_id is not None and record.client_id not in (None, client_id)):
            raise NotFound(f"no request with id {correlation_id!r}")
        return record

    async def cancel(self, correlation_id: str, client_id: str | None = None) -> RequestRecord:
        await self.get(correlation_id, client_id)
        record = await self.store.transition(correlation_id, Status.CANCELLED, allowed_from=_CANCELLABLE,
                                             error="cancelled by the client")
        if record is not None:
            log.info("request cancelled", correlation_id=correlation_id)
            return record
        current = await self.get(correlation_id, client_id)
        raise Conflict(f"request {correlation_id} cannot be cancelled: it is {current.status}")

    async def apply_reply(self, reply: Reply) -> RequestRecord | None:
        status = Status(reply.status)
        record = await self.store.transition(
            reply.correlation_id, status, result=reply.result, error=reply.error, attempts=reply.attempts,
            processing_time_ms=reply.processing_time_ms, raw_response=reply.raw_response,
            completed_at=reply.completed_at)
        if record is not None and record.terminal:
            self._deliver_callback(record)
        return record

    async def consume_replies(self) -> None:
        """Store each worker reply and wake whoever waits for it; ack only after it is stored."""
        backoff_s = 0.1
        while True:
            try:
                async for delivery in self.backend.consume(self.response_queue, prefetch=64):
                    backoff_s = 0.1
                    try:
                        reply = decode_reply(delivery.body)
                    except UndecodableMessage as exc:
                        log.warning("undecodable reply dead-lettered", error=str(exc))
                        await delivery.dead_letter(str(exc))
                        continue
                    await self.apply_reply(reply)
                    await delivery.ack()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("reply consumer failed; retrying", error=str(exc), retry_in_s=backoff_s)
                await asyncio.sleep(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)

    async def replay(self, dead_letter_id: str) -> tuple[RequestRecord, DeadLetterRecord]:
        """Queue a dead letter again as a new request: (the new request, the entry it came from)."""
        entry = await self.store.take_dead_letter(dead_letter_id)
        if entry is None:
            raise NotFound(f"no dead letter with id {dead_letter_id!r}")
        try:
            original = decode_envelope(entry.body)
        except UndecodableMessage:
            original = Envelope(body=entry.body, raw=True)
        sub = Submission(body=original.body, content_type=original.content_type, headers=original.headers,
                         handler=original.handler, endpoint=original.endpoint, method=original.method,
                         path=original.path, query=original.query, priority=original.priority,
                         timeout_s=original.timeout_s, session_id=original.session_id,
                         client_id=original.client_id, callback_url=original.callback_url,
                         metadata={**original.metadata, "replay_of": entry.correlation_id or entry.id})
        try:
            return await self.submit(sub), entry
        except Exception:
            await self.store.add_dead_letter(entry)  # put it back: replay is all or nothing
            raise

    def check_callback_url(self, url: str) -> None:
        """Refuse at submit what can be refused without DNS: callbacks off, or an unsafe literal address."""
        check_callback_url(url, self.settings.callbacks)

    def _deliver_callback(self, record: RequestRecord) -> None:
        if self.callbacks is None or not record.callback_url:
            return
        task = asyncio.create_task(self._callback(record))
        self._callback_tasks.add(task)
        task.add_done_callback(self._callback_tasks.discard)

    async def _callback(self, record: RequestRecord) -> None:
        assert self.callbacks is not None and record.callback_url is not None
        try:
            await self.callbacks.send(record.callback_url, result_json(record), webhook_id=record.correlation_id)
            log.info("callback delivered", correlation_id=record.correlation_id)
        except Exception as exc:  # CallbackFailed, or a refused address found at delivery
            log.warning("callback failed", correlation_id=record.correlation_id, error=str(exc))
            await self.store.transition(record.correlation_id, Status(record.status), allowed_from=[record.status],
                                        callback_error=str(exc), completed_at=record.completed_at)

    def raw_response(self, record: RequestRecord) -> Response:
        """The backend's own status, headers and body, for `?format=raw`."""
        result = record.result if isinstance(record.result, dict) else {}
        if record.raw_response is None or "status_code" not in result:
            raise RequestRejected(f"request {record.correlation_id} has no raw HTTP response "
                                  "(it was not forwarded to an HTTP endpoint)", status=406)
        headers = {k: v for k, v in (result.get("headers") or {}).items() if k.lower() not in _RECOMPUTED}
        return Response(record.raw_response, status_code=int(result["status_code"]), headers=headers)

    async def dead_letters(self, limit: int = 100) -> list[DeadLetterRecord]:
        return await self.store.list_dead_letters(limit)

    async def purge_dead_letters(self) -> int:
        return await self.store.purge_dead_letters()

    async def queue_depths(self) -> dict[str, int | None]:
        depths: dict[str, int | None] = {}
        for queue in (self.request_queue, self.response_queue):
            try:
                depths[queue] = await self.backend.depth(queue)
            except NotImplementedError:
                depths[queue] = None  # the broker cannot count (documented per backend)
        return depths

    async def oldest_unfinished_age_s(self) -> float | None:
        oldest = await self.store.oldest_unfinished()
        return round(time.time() - oldest, 3) if oldest else None

    async def stats(self) -> dict[str, Any]:
        return {
            "requests": await self.store.counts(),
            "queues": {name: {"depth": depth} for name, depth in (await self.queue_depths()).items()},
            "oldest_unfinished_age_s": await self.oldest_unfinished_age_s(),
            "dead_letters": len(await self.store.list_dead_letters(10_000)),
            **self.rolling.summary(),
        }

    async def sample_metrics_forever(self, interval_s: float = 5.0) -> None:
        """Gauges that need a query (depth, oldest age, store counts), sampled off the hot path."""
        while True:
            try:
                for queue, depth in (await self.queue_depths()).items():
                    if depth is not None:
                        metrics.QUEUE_DEPTH.labels(queue).set(depth)
                metrics.QUEUE_OLDEST_AGE.labels(self.request_queue).set(await self.oldest_unfinished_age_s() or 0)
                counts = await self.store.counts()
                for status in Status:
                    metrics.RESULTS.labels(status.value).set(counts.get(status.value, 0))
            except Exception as exc:
                log.warning("metrics sampling failed", error=str(exc))
            await asyncio.sleep(interval_s)

    async def cleanup_forever(self) -> None:
        interval = self.settings.results.cleanup_interval_s
        while True:
            await asyncio.sleep(interval)
            try:
                removed = await cleanup(self.store, self.settings.results, time.time())
                if removed:
                    log.info("expired results removed", count=removed)
            except Exception as exc:
                log.warning("cleanup failed", error=str(exc))


async def cleanup(store: ResultStore, results: ResultsSettings, now: float, older_than_s: float | None = None) -> int:
    """Remove finished requests past their retention (`results.ttl_s`, `results.ttl_by_status`), or
    past `older_than_s` for every state when given."""
    if older_than_s is not None:
        return await store.cleanup(now - older_than_s)
    return sum([await store.cleanup(now - ttl_s, statuses) for ttl_s, statuses in results.retention()])


def json_body(payload: Any) -> bytes:
    """The payload as the JSON body a handler or backend receives; 422 for what JSON cannot carry
    on (integers beyond 64 bits, which neither the queue envelope nor most consumers can hold)."""
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        raise RequestRejected(f"payload cannot be forwarded as JSON: {exc}", status=422) from None


__all__ = ["Bridge", "Submission", "json_body"]
