"""Intake: a routed envelope becomes a store record and a queued message, at most once per key.

Both are written together or not at all (listener/enqueue.py), so a client that gets 503 leaves
nothing half-written behind. In `openhqm serve` a request may go to a free worker slot of this
process at once (eager dispatch, wired by the runtime): written already leased, handed over in memory.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import msgspec
import orjson

from openhqm import metrics, stages
from openhqm.backends.base import Backend
from openhqm.config import Settings
from openhqm.constants import Status
from openhqm.envelope import Envelope, encode
from openhqm.errors import AlreadyExists, BackendUnavailable, Conflict, RequestRejected
from openhqm.listener.admission import PendingLimit
from openhqm.listener.enqueue import Leased, Message, writes_for
from openhqm.logging import get_logger
from openhqm.results.base import RequestRecord, ResultStore

log = get_logger("openhqm.listener")


class LocalWorkers(Protocol):
    """The worker pool beside the listener (worker/pool.py), for eager dispatch."""

    async def reserve_slot(self) -> bool:
        """Take a free slot now, or False (none free, or the pool takes no new work: paused, stopping)."""

    def claimed(self, record: RequestRecord) -> RequestRecord:
        """`record` as this process's worker claims it (PROCESSING, first attempt)."""

    def fill_slot(self, leased: Leased | None) -> None:
        """Run the delivery in the reserved slot; None gives the slot back."""


class Intake:
    def __init__(self, settings: Settings, backend: Backend, store: ResultStore) -> None:
        self.settings = settings
        self.backend = backend
        self.store = store
        self.request_queue = settings.queue.request_queue
        self.response_queue = settings.queue.response_queue
        self.ordered = settings.ordering == "session"
        max_pending = settings.queue.max_pending
        self.limit = None if max_pending is None else PendingLimit(backend, self.request_queue, max_pending)
        self.writes = writes_for(backend, store)
        # Set by the runtime for eager dispatch (`openhqm serve` on a backend that supports it).
        self.local_workers: LocalWorkers | None = None
        # A routed envelope names its endpoint or handler; one naming neither is a fan-out parent
        # (metadata.fanout), submitted by listener/fanout.py, which the bridge plugs in here.
        self.fan_out: Callable[[Envelope, str | None, str | None], Awaitable[RequestRecord]] | None = None

    async def submit(self, envelope: Envelope, *, request_hash: str | None = None,
                     idempotency_key: str | None = None, replayed_from: str | None = None) -> RequestRecord:
        """The record of a request the broker accepted; BackendUnavailable (or its QueueFull, StoreFull)
        when it did not, with nothing left behind, counted by its reason."""
        try:
            if self.limit is not None:
                await self.limit.admit()
            if envelope.endpoint is None and envelope.handler is None and self.fan_out is not None:
                return await self.fan_out(envelope, request_hash, idempotency_key)
            record = new_record(envelope, time.time(), request_hash)
            if idempotency_key is not None or replayed_from is not None:
                record = msgspec.structs.replace(record, idempotency_key=idempotency_key,
                                                 replayed_from=replayed_from)
            return await self._submit(envelope, record)
        except BackendUnavailable as exc:
            metrics.child(metrics.SUBMITS_REFUSED, self.request_queue, exc.reason).inc()
            raise

    async def submit_child(self, envelope: Envelope, parent_id: str, member: str,
                           replayed_from: str | None = None) -> RequestRecord:
        """A fan-out child: an ordinary request that names its parent (admitted with the parent)."""
        record = msgspec.structs.replace(new_record(envelope, time.time(), None), parent_id=parent_id,
                                         member=member, replayed_from=replayed_from)
        return await self._submit(envelope, record)

    async def _submit(self, envelope: Envelope, record: RequestRecord) -> RequestRecord:
        envelope = msgspec.structs.replace(envelope, reply_to=self.response_queue)
        try:  # the request's own fault, so before anything is written and never a 503
            message = encode(envelope)
        except (TypeError, OverflowError, UnicodeEncodeError, ValueError) as exc:
            raise RequestRejected(f"the request cannot be queued: {exc}", status=422) from None
        now = record.submitted_at
        delay_s = envelope.not_before - now if record.status == Status.SCHEDULED and envelope.not_before else None
        queued = Message(self.request_queue, message, envelope.id, envelope.priority, delay_s,
                         key=envelope.session_id if self.ordered else None)
        local = self.local_workers if delay_s is None else None
        reserved = local if local is not None and await local.reserve_slot() else None  # a slot for eager dispatch
        claimed = reserved.claimed(record) if reserved is not None else None
        try:
            leased = await self.writes.put(record, queued, claimed=claimed)
        except BaseException:
            if reserved is not None:
                reserved.fill_slot(None)
            raise
        stages.mark(record.correlation_id, "written")  # record and message: one transaction or two
        stages.mark(record.correlation_id, "published")
        self.store.emit(record)
        if leased is not None and leased.claimed and claimed is not None:
            self.store.emit(claimed)  # written so: hooks and watchers see both steps, as with a claim
        if reserved is not None:
            reserved.fill_slot(leased)
        metrics.child(metrics.SUBMITTED, self.request_queue).inc()
        log.info("request queued", correlation_id=record.correlation_id, session_id=envelope.session_id,
                 endpoint=record.target)
        return record

    async def submit_and_wait(self, envelope: Envelope, wait_s: float) -> RequestRecord:
        """Submit, then wait up to `wait_s` for the result (Prefer: wait). The waiter is registered
        before the message is published, so the record just written needs no second read."""
        with self.store.waiting(envelope.correlation_id) as finished:
            record = await self.submit(envelope)
            done = await self.store.until_terminal(record.correlation_id, finished, record,
                                                   min(wait_s, self.settings.server.max_wait_s))
        return done or record

    async def submit_once(self, envelope: Envelope, idempotency_key: str,
                          request_hash: str | None = None) -> tuple[RequestRecord, bool]:
        """Submit at most once per (client, key) within `idempotency.window_s`: (record, is_new).

        The correlation id is derived from the key, so the store's unique id settles concurrent
        repeats: exactly one create wins and only its message reaches the queue.
        """
        digest = hashlib.sha256(f"{envelope.client_id or ''}\0{idempotency_key}".encode()).digest()
        correlation_id = "idem_" + base64.urlsafe_b64encode(digest[:18]).decode()
        envelope = msgspec.structs.replace(envelope, id=correlation_id, correlation_id=correlation_id)
        for _ in range(2):
            try:
                return await self.submit(envelope, request_hash=request_hash, idempotency_key=idempotency_key), True
            except AlreadyExists:
                existing = await self.store.get(correlation_id)
            if existing is None:
                continue  # its submit failed and was undone meanwhile: try ours
            if time.time() - existing.submitted_at > self.settings.idempotency.window_s and existing.terminal:
                await self.store.delete(existing.correlation_id)  # the key's window is over: a new request
                continue
            if existing.request_hash != request_hash:
                raise RequestRejected("Idempotency-Key was already used with a different request body",
                                      status=422)
            return existing, False
        raise Conflict("Idempotency-Key is being used by a concurrent request; retry")


def new_record(envelope: Envelope, now: float, request_hash: str | None) -> RequestRecord:
    """The store's view of a request just accepted (a different shape from the wire envelope)."""
    scheduled = envelope.not_before is not None and envelope.not_before > now
    return RequestRecord(
        correlation_id=envelope.correlation_id, status=Status.SCHEDULED if scheduled else Status.PENDING,
        submitted_at=now, updated_at=now, session_id=envelope.session_id, client_id=envelope.client_id,
        target=envelope.endpoint or envelope.handler, not_before=envelope.not_before,
        target_kind="endpoint" if envelope.endpoint else ("handler" if envelope.handler else None),
        priority=envelope.priority,
        callback_url=envelope.callback_url, request_hash=request_hash,
        waiting_on="schedule" if scheduled else None, next_attempt_at=envelope.not_before if scheduled else None)


def json_body(payload: Any) -> bytes:
    """The payload as the JSON body a handler or backend receives; 422 for what JSON cannot carry
    on (integers beyond 64 bits, which neither the queue envelope nor most consumers can hold)."""
    try:
        return orjson.dumps(payload)
    except orjson.JSONEncodeError as exc:
        raise RequestRejected(f"payload cannot be forwarded as JSON: {exc}", status=422) from None
