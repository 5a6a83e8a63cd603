"""Replies: a worker's result is stored (waking whoever waits), then its callback is sent.

A reply is acked only after it is stored: in the same transaction where the queue and the store share
a SQLite file (listener/settle.py), else right after. Every HTTP attempt of the callback is kept on the request
(`callbacks`, the latest 20) and a failed delivery's reason in `callback_error`; it is never retried
beyond the callback policy, but an operator can deliver it again (`resend_callback`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from openhqm import stages
from openhqm.backends.base import Backend, Delivery
from openhqm.background import Background
from openhqm.envelope import Reply, decode_reply
from openhqm.errors import Conflict, UndecodableMessage
from openhqm.forward import CallbackSender, CallbackTry
from openhqm.listener.settle import Settled, settle_for
from openhqm.logging import get_logger
from openhqm.policies import Reconnect
from openhqm.results.base import (
    MAX_CALLBACK_ATTEMPTS_KEPT,
    CallbackAttempt,
    DeadLetterRecord,
    RequestRecord,
    ResultStore,
)
from openhqm.views import result_json

log = get_logger("openhqm.listener")
REPLIES_AT_ONCE = 64  # replies being stored concurrently (and fetched ahead) by one listener


class Replies:
    def __init__(self, backend: Backend, store: ResultStore, response_queue: str,
                 callbacks: CallbackSender | None) -> None:
        self.backend = backend
        self.store = store
        self.response_queue = response_queue
        self.callbacks = callbacks
        self.settle = settle_for(backend, store)
        self.deliveries = Background()  # callbacks on their way
        # Settles a fan-out parent once its child ended (listener/fanout.py; the bridge plugs it in).
        self.child_finished: Callable[[str, RequestRecord | None], Awaitable[None]] | None = None

    async def apply(self, reply: Reply) -> RequestRecord | None:
        """Store a reply that no delivery brought (a dead letter the bridge found)."""
        return (await self.finish(reply)).record

    async def finish(self, reply: Reply, delivery: Delivery | None = None,
                     dead_letter: DeadLetterRecord | None = None) -> Settled:
        """Store `reply` (after the attempt's `dead_letter`, when given) and ack `delivery`: the one place a
        reply ends its request, whether a worker beside the listener or the response queue brought it."""
        settled = await self.settle(reply, delivery, dead_letter)
        if not settled.stored:
            return settled
        record = settled.record
        stages.mark(reply.correlation_id, "stored")
        if record is not None and record.terminal:
            self._deliver_callback(record)
        if self.child_finished is not None and (record is None or record.parent_id is not None):
            await self.child_finished(reply.correlation_id, record)
        return settled

    async def consume(self) -> None:
        """Store each worker reply and wake whoever waits for it; ack only after it is stored.

        Up to REPLIES_AT_ONCE replies are stored concurrently: one after the other, each reply's write
        and ack waited for a commit of their own, which capped a listener at ~600 replies/s behind
        separate worker processes (docs/benchmarks.md, "Where a request waits")."""
        reconnect = Reconnect()
        slots = asyncio.Semaphore(REPLIES_AT_ONCE)
        storing = Background()
        try:
            while True:
                try:
                    async for delivery in self.backend.consume(self.response_queue, prefetch=REPLIES_AT_ONCE):
                        reconnect.reset()
                        await slots.acquire()
                        storing.spawn(self._store(delivery), on_done=lambda _: slots.release())
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning("reply consumer failed; retrying", error=str(exc),
                                retry_in_s=round(reconnect.next_delay_s, 3))
                    await reconnect.wait()
        finally:
            await storing.wait()  # the replies taken finish storing (or fail) before the store closes

    async def _store(self, delivery: Delivery) -> None:
        try:
            try:
                reply = decode_reply(delivery.body)
            except UndecodableMessage as exc:
                log.warning("undecodable reply dead-lettered", error=str(exc))
                await delivery.dead_letter(str(exc))
                return
            await self.finish(reply, delivery)
        except Exception as exc:  # not settled: the broker hands it out again after its lease
            log.warning("reply not stored; it is delivered again", message_id=delivery.message_id, error=str(exc))

    def deliver_callback(self, record: RequestRecord) -> None:
        """Send a finished request's callback (a fan-out parent's, which no reply ends)."""
        self._deliver_callback(record)

    def _deliver_callback(self, record: RequestRecord) -> None:
        if self.callbacks is None or not record.callback_url:
            return
        self.deliveries.spawn(self._callback(self.callbacks, record, record.callback_url))

    async def resend_callback(self, record: RequestRecord) -> CallbackOutcome:
        """Deliver a finished request's callback again (an operator's redelivery), now."""
        if not record.terminal:
            raise Conflict(f"request {record.correlation_id} is not finished (it is {record.status}): "
                           "its callback is sent when it is")
        if not record.callback_url:
            raise Conflict(f"request {record.correlation_id} has no callback_url")
        if self.callbacks is None:
            raise Conflict("callbacks are disabled (callbacks.enabled: false)")
        return await self._callback(self.callbacks, record, record.callback_url)

    async def _callback(self, callbacks: CallbackSender, record: RequestRecord, url: str) -> CallbackOutcome:
        tries: list[CallbackTry] = []
        error: str | None = None
        try:
            await callbacks.send(url, result_json(record), webhook_id=record.correlation_id, on_try=tries.append)
            log.info("callback delivered", correlation_id=record.correlation_id)
        except Exception as exc:  # CallbackFailed, or a refused address found at delivery
            error = str(exc)
            log.warning("callback failed", correlation_id=record.correlation_id, error=error)
        return CallbackOutcome(error is None, error, await self._keep(record, tries, error))

    async def _keep(self, record: RequestRecord, tries: list[CallbackTry], error: str | None) -> list[CallbackAttempt]:
        """Add this delivery's attempts to the record (the latest MAX_CALLBACK_ATTEMPTS_KEPT)."""
        current = await self.store.get(record.correlation_id) or record
        done = current.callbacks[-1].attempt if current.callbacks else 0
        attempts = [CallbackAttempt(attempt=done + n, at=t.at, status_code=t.status_code, error=t.error)
                    for n, t in enumerate(tries, start=1)]
        kept = [*current.callbacks, *attempts][-MAX_CALLBACK_ATTEMPTS_KEPT:]
        await self.store.amend(record.correlation_id, record.status, callbacks=kept, callback_error=error)
        return attempts


@dataclass(frozen=True)
class CallbackOutcome:
    delivered: bool
    error: str | None
    attempts: list[CallbackAttempt]
