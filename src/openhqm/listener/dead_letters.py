"""Dead letters: list, purge, replay one as a new request (all or nothing), and take in those the
bridge did not write itself: what the broker moved to its own dead-letter queue after its delivery
limit (`sweep`), and requests reconciliation found with their message gone (`fail`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import msgspec

from openhqm import metrics
from openhqm.backends.base import Backend, Delivery
from openhqm.constants import Status, dead_letter_queue
from openhqm.envelope import Envelope, Reply, decode_envelope, new_id
from openhqm.errors import NotFound, UndecodableMessage
from openhqm.listener.intake import Intake
from openhqm.listener.replies import Replies
from openhqm.logging import get_logger
from openhqm.policies import Reconnect
from openhqm.results.base import DeadLetterReason, DeadLetterRecord, RequestRecord, ResultStore
from openhqm.routing import Routing

log = get_logger("openhqm.listener")

# The broker's own delivery limit, by backend name: past it the broker (or, for NATS, the backend)
# moves the message to the queue's dead-letter queue without the worker seeing a last attempt.
BROKER_DELIVERY_LIMITS = {"sqs": "max_receive_count", "pubsub": "max_delivery_attempts", "nats": "max_deliver"}
SWEEP_RETRY_S = 5.0  # a broker dead letter the store could not take yet is tried again after this
DLQ_SCAN = 10_000  # dead letters a filtered listing or bulk action examines at most (the oldest)


class DeadLetters:
    def __init__(self, store: ResultStore, intake: Intake, routing: Routing, replies: Replies) -> None:
        self.store = store
        self.intake = intake
        self.routing = routing
        self.replies = replies
        # Re-opens a fan-out parent when its failed child is replayed (listener/fanout.py, plugged in
        # by the bridge): None when the request is no fan-out child its parent counts on.
        self.replay_child: Callable[[str, Envelope], Awaitable[RequestRecord | None]] | None = None

    async def purge(self) -> int:
        return await self.store.purge_dead_letters()

    async def replay(self, dead_letter_id: str) -> tuple[RequestRecord, DeadLetterRecord]:
        """Queue a dead letter again as a new request: (the new request, the entry it came from)."""
        entry = await self.store.take_dead_letter(dead_letter_id)
        if entry is None:
            raise NotFound(f"no dead letter with id {dead_letter_id!r}")
        try:
            envelope = self._again(entry)
            if self.replay_child is not None and entry.correlation_id:
                child = await self.replay_child(entry.correlation_id, envelope)
                if child is not None:
                    return child, entry
            return await self.intake.submit(envelope, replayed_from=entry.correlation_id or None), entry
        except Exception:
            await self.store.add_dead_letter(entry)  # put it back: replay is all or nothing
            raise

    def _again(self, entry: DeadLetterRecord) -> Envelope:
        try:
            original = decode_envelope(entry.body)
        except UndecodableMessage:
            original = Envelope(body=entry.body)  # another system's raw message
        return fresh_copy(original, entry.correlation_id or entry.id, self.routing)

    async def list_matching(self, where: DeadLetterFilter, limit: int) -> list[DeadLetterRecord]:
        """Oldest first, those `where` covers among the oldest DLQ_SCAN entries."""
        if where == DeadLetterFilter():
            return await self.store.list_dead_letters(limit)
        return [d for d in await self.store.list_dead_letters(DLQ_SCAN) if where.matches(d)][:limit]

    async def fail(self, entry: DeadLetterRecord) -> bool:
        """Record `entry` and end its request FAILED (callback and all), unless the request finished
        meanwhile; idempotent, as the entry's id is derived from what it is about. True if recorded."""
        await self.store.add_dead_letter(entry)  # first: a crash after it leaves the request to fail again
        if entry.correlation_id:  # else another system's raw message: listed, with no request to end
            # (as is a message whose request this store does not know)
            record = await self.replies.apply(Reply(
                correlation_id=entry.correlation_id, status=Status.FAILED, error=entry.last_error or entry.detail,
                attempts=entry.attempts))
            if record is None and await self.store.get(entry.correlation_id) is not None:
                await self.store.take_dead_letter(entry.id)  # it finished meanwhile: that outcome stands
                return False
        log.warning("dead-lettered", correlation_id=entry.correlation_id, reason=entry.reason, detail=entry.detail)
        metrics.FOUND_DEAD_LETTERS.labels(entry.queue, entry.reason).inc()
        return True

    async def sweep(self, backend: Backend, queue: str) -> None:
        """Take in what the broker dead-lettered from `queue` by its own delivery limit, for ever;
        nothing to do on brokers without one (the bridge writes every other dead letter itself)."""
        option = BROKER_DELIVERY_LIMITS.get(backend.name)
        if option is None:
            return
        limit = f"queue.{backend.name}.{option} is {getattr(backend.options, option)}"
        reconnect = Reconnect()
        while True:
            try:
                async for delivery in backend.consume(dead_letter_queue(queue), prefetch=16):
                    reconnect.reset()
                    await self._take_in(delivery, queue, limit)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("broker dead-letter sweep failed; retrying", queue=queue, error=str(exc),
                            retry_in_s=round(reconnect.next_delay_s, 3))
                await reconnect.wait()

    async def _take_in(self, delivery: Delivery, queue: str, limit: str) -> None:
        try:
            correlation_id = decode_envelope(delivery.body).correlation_id
        except UndecodableMessage:
            correlation_id = ""
        try:
            record = await self.store.get(correlation_id) if correlation_id else None
            if record is None or not record.terminal:
                await self.fail(DeadLetterRecord(
                    id=f"{correlation_id or delivery.message_id}.broker", correlation_id=correlation_id,
                    queue=queue, reason=DeadLetterReason.BROKER_REDRIVE, body=delivery.body,
                    attempts=record.attempts if record else 0,
                    last_error=record.error if record else None, dead_lettered_at=time.time(),
                    target=record.target if record else None,
                    detail=f"the broker moved it to its dead-letter queue after its delivery limit ({limit})"))
        except Exception as exc:  # the store is down: the broker keeps it until the store is back
            log.warning("broker dead letter not recorded yet", queue=queue, error=str(exc))
            await delivery.nack(delay_s=SWEEP_RETRY_S)
            return
        await delivery.ack()


def fresh_copy(original: Envelope, replay_of: str, routing: Routing) -> Envelope:
    """A message as a fresh request (a replay): a new id, a first attempt, no schedule of its own."""
    if original.endpoint is None and original.handler is None:
        endpoint, handler = routing.choose(None, None)
        original = msgspec.structs.replace(original, endpoint=endpoint, handler=handler)
    fresh = new_id()
    return msgspec.structs.replace(
        original, id=fresh, correlation_id=fresh, attempt=1, created_at=time.time(), not_before=None,
        deadline=None, expires_at=None, traceparent=None, raw=False,
        metadata={**original.metadata, "replay_of": replay_of})


@dataclass(frozen=True)
class DeadLetterFilter:
    """Which dead letters a listing or bulk action covers (None: any); times on dead_lettered_at."""

    endpoint: str | None = None
    handler: str | None = None
    reason: str | None = None
    since: float | None = None
    until: float | None = None

    def matches(self, entry: DeadLetterRecord) -> bool:
        if self.reason is not None and entry.reason != self.reason:
            return False
        if (self.since is not None and entry.dead_lettered_at < self.since) or (
                self.until is not None and entry.dead_lettered_at > self.until):
            return False
        if self.endpoint is None and self.handler is None:
            return True
        try:  # the entry names its target; its message says which kind
            message = decode_envelope(entry.body)
        except UndecodableMessage:
            return False
        return ((self.endpoint is None or message.endpoint == self.endpoint)
                and (self.handler is None or message.handler == self.handler))
