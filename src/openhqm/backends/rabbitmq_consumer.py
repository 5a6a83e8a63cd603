"""The receiving side of the RabbitMQ backend: one consumer per consume() call (its own channel and
inbox), the deliveries it yields, and the copies they publish to settle.

AMQP 0-9-1 has no "nack with a delay" and classic queues do not count deliveries, so `nack` and
`dead_letter` publish a copy (through the backend's `send`, confirmed) and then ack the original.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import aiormq.exceptions
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustQueue, DeliveryMode

from openhqm.backends.base import Delivery
from openhqm.backends.kit import ErrorMap, PrefetchBuffer, Wire
from openhqm.constants import dead_letter_queue
from openhqm.envelope import new_id
from openhqm.errors import BackendError, BackendUnavailable

# Publishes a message to a queue, after an optional delay; returns after the broker's confirm.
Send = Callable[[str, aio_pika.Message, "float | None"], Awaitable[None]]

# Epoch ms, written before the kit's Wire.NOT_BEFORE: still read, so a multi-day delay queued by an
# older version is not cut short; never copied.
LEGACY_DUE_MS = "openhqm-due-ms"
_NOT_COPIED = ("x-death", "x-first-death-", "x-last-death-", LEGACY_DUE_MS)  # broker history, legacy
CLEANUP_TIMEOUT_S = 2.0

errors = ErrorMap("rabbitmq", [
    (aiormq.exceptions.PublishError, BackendError),  # unroutable: the queue is gone
    (aiormq.exceptions.DeliveryError, BackendUnavailable),  # the broker nacked: it may take it later
    (aiormq.exceptions.AMQPChannelError, BackendError),  # 404, 403, PRECONDITION_FAILED: not transient
    ((aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, OSError), BackendUnavailable),
])


def is_open(message: AbstractIncomingMessage) -> bool:
    """False once the channel that delivered `message` is gone (the broker has requeued it then)."""
    try:
        message.channel  # noqa: B018 - the property raises when the channel is closed
    except aiormq.exceptions.ChannelInvalidStateError:
        return False
    return True


def copy_of(message: AbstractIncomingMessage, message_id: str, headers: dict[str, Any]) -> aio_pika.Message:
    """A persistent copy for re-publishing. `expiration` is dropped (it would silently expire a retry),
    and so is `user_id` (the broker checks it against the publishing user)."""
    return aio_pika.Message(
        message.body, headers=headers, message_id=message_id, priority=message.priority,
        delivery_mode=DeliveryMode.PERSISTENT, content_type=message.content_type,
        content_encoding=message.content_encoding, correlation_id=message.correlation_id,
        reply_to=message.reply_to, timestamp=message.timestamp, type=message.type, app_id=message.app_id)


def copied_headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    return {k: v for k, v in (message.headers or {}).items() if not k.startswith(_NOT_COPIED)}


def not_before(message: AbstractIncomingMessage) -> float | None:
    headers = message.headers or {}
    legacy_ms = Wire.number(headers.get(LEGACY_DUE_MS))
    return Wire.number(headers.get(Wire.NOT_BEFORE)) or (legacy_ms / 1000 if legacy_ms else None)


def _attempt(message: AbstractIncomingMessage) -> int:
    # Classic queues do not count deliveries: the header counts our re-publishes, and the redelivered
    # flag adds one for a return after a dead consumer (two such returns in a row still add only one).
    return Wire.attempt((message.headers or {}).get(Wire.ATTEMPT)) + (1 if message.redelivered else 0)


async def _requeue(message: AbstractIncomingMessage) -> None:
    with contextlib.suppress(Exception):  # a closed channel has requeued it already
        await message.reject(requeue=True)


class Consumer:
    """One consume() call: its own channel (so prefetch applies to it alone), fed by the broker."""

    def __init__(self, channel: AbstractRobustChannel, queue: AbstractRobustQueue, prefetch: int,
                 send: Send) -> None:
        self.channel = channel
        self.queue = queue
        self.send = send
        # basic.qos bounds what the broker pushes; arrivals after close() go straight back.
        self.inbox = PrefetchBuffer[AbstractIncomingMessage](prefetch, _requeue)
        self.unsettled = 0
        self.detached = False
        self.tag: str | None = None

    async def start(self) -> None:
        # The robust queue re-consumes with this callback after a reconnect.
        self.tag = await self.queue.consume(self.inbox.put)

    def deliver(self, message: AbstractIncomingMessage) -> RabbitMQDelivery:
        self.unsettled += 1
        return RabbitMQDelivery(self, message)

    async def end(self) -> None:
        """The backend is closing its connection, which returns every unacked message by itself."""
        self.detached = True
        await self.inbox.close()

    async def stop(self) -> None:
        """Stop intake, hand back what was prefetched but never yielded, keep the channel while
        yielded deliveries are unsettled (they must stay settle-able), then close it."""
        if self.detached:
            return
        await self.inbox.close()
        if self.tag is not None and not self.channel.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                    await self.queue.cancel(self.tag)
        await self._close_if_done()

    async def settled(self) -> None:
        self.unsettled -= 1
        await self._close_if_done()

    async def _close_if_done(self) -> None:
        if self.inbox.closed and self.unsettled == 0 and not self.detached and not self.channel.is_closed:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                    await self.channel.close()


class RabbitMQDelivery(Delivery):
    def __init__(self, consumer: Consumer, message: AbstractIncomingMessage) -> None:
        key = (message.headers or {}).get(Wire.KEY)
        super().__init__(consumer.queue.name, message.body, attempt=_attempt(message),
                         message_id=message.message_id or new_id(), key=key if isinstance(key, str) else None)
        self._consumer = consumer
        self._message = message

    def _require_open(self) -> None:
        if not is_open(self._message):
            raise BackendUnavailable(
                f"rabbitmq: the channel that delivered message {self.message_id} is closed;"
                f" the broker has returned it to {self.queue!r}")

    async def _ack(self) -> None:
        await self._move(None, {}, None)

    async def _nack(self, delay_s: float | None) -> None:
        headers = Wire.retried(copied_headers(self._message), self.attempt, delay_s, time.time())
        await self._move(self.queue, headers, delay_s)

    async def _dead_letter(self, reason: str) -> None:
        await self._move(dead_letter_queue(self.queue), Wire.dead_lettered(copied_headers(self._message), reason), None)

    async def _move(self, queue: str | None, headers: dict[str, Any], delay_s: float | None) -> None:
        """Publish a copy to `queue` (confirmed; none for an ack), then ack the original: a crash in
        between duplicates, never loses."""
        try:
            self._require_open()
            if queue is not None:
                await self._consumer.send(queue, copy_of(self._message, self.message_id, headers), delay_s)
            with errors(f"ack on {self.queue!r}"):
                await self._message.ack()
        finally:
            await self._consumer.settled()
