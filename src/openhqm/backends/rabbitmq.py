"""RabbitMQ (AMQP 0-9-1) through aio-pika's robust connection, which reconnects and resumes consumers.

URL: `queue.rabbitmq.url`, e.g. `amqp://user:password@host:5672/vhost` (`amqps://` for TLS; aio-pika
query options such as `?heartbeat=30` pass through). Options: `queue.rabbitmq.connect_timeout_s`,
`reconnect_interval_s`, `publish_timeout_s` (waiting for a reconnect plus the broker's confirm).
Queues are durable classic queues with `x-max-priority=15` (quorum queues reject it on 3.10).
Native: priority 1..15, publisher confirms on persistent messages, manual ack, prefetch (basic.qos).
Emulated: delay, through `<queue>.delay.<ms>`: one queue per delay rounded up to two significant
digits, with x-message-ttl, dead-lettering back into `<queue>`, and x-expires once unused, so a long
delay never holds up a shorter one. One hop lasts at most a day; a longer delay carries its
not-before time and hops again through `<queue>`, where the consumer sends it round once more.
`nack` publishes a copy with the next attempt (through a delay queue when delayed) and acks the
original; `dead_letter` publishes a copy with the reason to `<queue>.dlq` and acks the original.
Headers: `kit.Wire` (attempt, key, not-before in epoch seconds, reason). No ordering key. `depth`
adds the delay queues this process used (AMQP cannot list queues). A publish cut off by a dropped
connection is sent again once the channel reopens; once the connection has been down for two
`reconnect_interval_s`, publishes fail at once with BackendUnavailable until it is back.
See docs/backends/rabbitmq.md.
On a crash: the broker requeues every unacked message of a closed connection at once (redelivered
flag, counted as one more attempt). A crash between a copy's confirm and the original's ack leaves
a duplicate, never a loss.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq.exceptions
import structlog
from aio_pika.abc import (
    AbstractIncomingMessage,
    AbstractRobustChannel,
    AbstractRobustConnection,
    AbstractRobustQueue,
    DeliveryMode,
)
from pydantic import Field, SecretStr

from openhqm.backends.base import Backend, BackendOptions, Capabilities, Delivery, Support
from openhqm.backends.kit import Admit, ErrorMap, PrefetchBuffer, Wire, admission, redelivery
from openhqm.constants import DEFAULT_PRIORITY, MAX_PRIORITY, dead_letter_queue
from openhqm.envelope import new_id
from openhqm.errors import BackendError, BackendUnavailable
from openhqm.redact import mask_url

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from openhqm.config import Settings

log = structlog.get_logger(__name__)

# Epoch ms, written before the kit's Wire.NOT_BEFORE: still read, so a multi-day delay queued by an
# older version is not cut short; never copied.
LEGACY_DUE_MS = "openhqm-due-ms"
_NOT_COPIED = ("x-death", "x-first-death-", "x-last-death-", LEGACY_DUE_MS)  # broker history, legacy

QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic", "x-max-priority": MAX_PRIORITY}
MAX_HOP_MS = 24 * 3600 * 1000
# A delay queue is deleted once unused for its TTL plus this margin; publishing does not count as
# use, so publishers re-declare it when their declaration is older than half the margin.
DELAY_EXPIRES_MARGIN_MS = 10 * 60 * 1000
DELAY_RENEW_S = DELAY_EXPIRES_MARGIN_MS / 2000
CLEANUP_TIMEOUT_S = 2.0
MAX_MESSAGE_BYTES = 128 * 1024 * 1024  # the broker's default max_message_size


def delay_queue(queue: str, ttl_ms: int) -> str:
    return f"{queue}.delay.{ttl_ms}"


def _delay_arguments(queue: str, ttl_ms: int) -> dict[str, Any]:
    return {"x-queue-type": "classic", "x-message-ttl": ttl_ms, "x-expires": ttl_ms + DELAY_EXPIRES_MARGIN_MS,
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": queue}


def bucket_ms(delay_ms: int) -> int:
    """The delay queue's TTL: rounded up to two significant digits (at most 10% late), at most a hop."""
    step: int = 10 ** max(0, len(str(delay_ms)) - 2)
    return min(MAX_HOP_MS, -(-delay_ms // step) * step)


_errors = ErrorMap("rabbitmq", [
    (aiormq.exceptions.PublishError, BackendError),  # unroutable: the queue is gone
    (aiormq.exceptions.DeliveryError, BackendUnavailable),  # the broker nacked: it may take it later
    (aiormq.exceptions.AMQPChannelError, BackendError),  # 404, 403, PRECONDITION_FAILED: not transient
    ((aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, OSError), BackendUnavailable),
])

# What a call fails with when its channel or connection closes under it (aio-pika reopens both).
_CHANNEL_LOST = (aiormq.exceptions.AMQPConnectionError, aiormq.exceptions.ChannelInvalidStateError,
                 ConnectionError)


def _is_open(message: AbstractIncomingMessage) -> bool:
    """False once the channel that delivered `message` is gone (the broker has requeued it then)."""
    try:
        message.channel  # noqa: B018 - the property raises when the channel is closed
    except aiormq.exceptions.ChannelInvalidStateError:
        return False
    return True


def _copy(message: AbstractIncomingMessage, message_id: str, headers: dict[str, Any]) -> aio_pika.Message:
    """A persistent copy for re-publishing. `expiration` is dropped (it would silently expire a retry),
    and so is `user_id` (the broker checks it against the publishing user)."""
    return aio_pika.Message(
        message.body, headers=headers, message_id=message_id, priority=message.priority,
        delivery_mode=DeliveryMode.PERSISTENT, content_type=message.content_type,
        content_encoding=message.content_encoding, correlation_id=message.correlation_id,
        reply_to=message.reply_to, timestamp=message.timestamp, type=message.type, app_id=message.app_id)


def _headers(message: AbstractIncomingMessage) -> dict[str, Any]:
    return {k: v for k, v in (message.headers or {}).items() if not k.startswith(_NOT_COPIED)}


def _attempt(message: AbstractIncomingMessage) -> int:
    # Classic queues do not count deliveries: the header counts our re-publishes, and the redelivered
    # flag adds one for a return after a dead consumer (two such returns in a row still add only one).
    return Wire.attempt((message.headers or {}).get(Wire.ATTEMPT)) + (1 if message.redelivered else 0)


def _not_before(message: AbstractIncomingMessage) -> float | None:
    headers = message.headers or {}
    legacy_ms = Wire.number(headers.get(LEGACY_DUE_MS))
    return Wire.number(headers.get(Wire.NOT_BEFORE)) or (legacy_ms / 1000 if legacy_ms else None)


async def _requeue(message: AbstractIncomingMessage) -> None:
    with contextlib.suppress(Exception):  # a closed channel has requeued it already
        await message.reject(requeue=True)


class RabbitMQOptions(BackendOptions):
    url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    connect_timeout_s: float = Field(10.0, gt=0)
    reconnect_interval_s: float = Field(2.0, gt=0, description="pause between reconnect attempts")
    publish_timeout_s: float = Field(10.0, gt=0, description="wait for a reconnect plus the broker's confirm")


class _Consumer:
    """One consume() call: its own channel (so prefetch applies to it alone), fed by the broker."""

    def __init__(self, channel: AbstractRobustChannel, queue: AbstractRobustQueue, prefetch: int) -> None:
        self.channel = channel
        self.queue = queue
        # basic.qos bounds what the broker pushes; arrivals after close() go straight back.
        self.inbox = PrefetchBuffer[AbstractIncomingMessage](prefetch, _requeue)
        self.unsettled = 0
        self.detached = False
        self.tag: str | None = None

    async def start(self) -> None:
        # The robust queue re-consumes with this callback after a reconnect.
        self.tag = await self.queue.consume(self.inbox.put)

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
    def __init__(self, backend: RabbitMQBackend, consumer: _Consumer, queue: str,
                 message: AbstractIncomingMessage) -> None:
        key = (message.headers or {}).get(Wire.KEY)
        super().__init__(queue, message.body, attempt=_attempt(message),
                         message_id=message.message_id or new_id(), key=key if isinstance(key, str) else None)
        self._backend = backend
        self._consumer = consumer
        self._message = message

    def _require_open(self) -> None:
        if not _is_open(self._message):
            raise BackendUnavailable(
                f"rabbitmq: the channel that delivered message {self.message_id} is closed;"
                f" the broker has returned it to {self.queue!r}")

    async def _ack(self) -> None:
        try:
            self._require_open()
            with _errors(f"ack on {self.queue!r}"):
                await self._message.ack()
        finally:
            await self._consumer.settled()

    async def _nack(self, delay_s: float | None) -> None:
        headers = _headers(self._message) | redelivery(self.attempt, delay_s, time.time())
        await self._move(self.queue, headers, delay_s)

    async def _dead_letter(self, reason: str) -> None:
        headers = _headers(self._message)
        headers.pop(Wire.ATTEMPT, None)  # a replayed dead letter starts over at attempt 1
        headers[Wire.REASON] = Wire.reason(reason)
        await self._move(dead_letter_queue(self.queue), headers, None)

    async def _move(self, queue: str, headers: dict[str, Any], delay_s: float | None) -> None:
        """Publish a copy (confirmed), then ack the original: a crash in between duplicates, never loses."""
        try:
            self._require_open()
            await self._backend._send(queue, _copy(self._message, self.message_id, headers), delay_s)
            with _errors(f"ack on {self.queue!r}"):
                await self._message.ack()
        finally:
            await self._consumer.settled()


class RabbitMQBackend(Backend):
    name = "rabbitmq"
    options_model = RabbitMQOptions
    options: RabbitMQOptions
    capabilities = Capabilities(
        priority=Support.NATIVE, delay=Support.EMULATED, ordering_key=Support.NONE,
        dead_letter=Support.EMULATED, lease_extension=False, durable=True, shared_between_processes=True,
        max_message_bytes=MAX_MESSAGE_BYTES, max_delay_s=None,
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None  # publisher confirms
        self._admin: AbstractRobustChannel | None = None  # declarations: a conflict closes only this one
        self._declared: dict[str, float] = {}  # queue name -> monotonic time of our last declare
        self._declare_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # queue -> {delay queue TTL (ms): monotonic time until which it may hold what we sent}
        self._delayed: defaultdict[str, dict[int, float]] = defaultdict(dict)
        self._consumers: set[_Consumer] = set()
        self._changed = asyncio.Event()  # set (and replaced) when the connection or a channel goes or comes
        self._lost_at: float | None = None  # loop time the connection dropped; None while it is up

    @property
    def display_url(self) -> str:
        return mask_url(self.options.url.get_secret_value())

    async def connect(self) -> None:
        if self._connection is not None:
            return
        with _errors(f"connect to {self.display_url}"):
            connection = await aio_pika.connect_robust(
                self.options.url.get_secret_value(), timeout=self.options.connect_timeout_s,
                reconnect_interval=self.options.reconnect_interval_s)
            try:
                self._publisher = await connection.channel(publisher_confirms=True, on_return_raises=True)
                self._admin = await connection.channel(publisher_confirms=False)
            except BaseException:
                await connection.close()
                raise
        self._publisher.reopen_callbacks.add(self._on_change)
        self._admin.reopen_callbacks.add(self._on_change)
        connection.close_callbacks.add(self._on_lost)
        connection.reconnect_callbacks.add(self._on_reconnect)
        self._lost_at = None
        self._connection = connection

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        # Stop intake first (every consume iterator ends at its next step), then close the connection,
        # which returns every unacked message to its queue.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLEANUP_TIMEOUT_S):
                for consumer in self._consumers:
                    await consumer.end()
        self._consumers.clear()
        self._publisher = self._admin = None
        self._declared.clear()
        self._delayed.clear()
        self._on_change()  # a publish waiting for a reopen finds the backend closed instead
        with contextlib.suppress(Exception):
            # Calls still in flight fail with this (aio-pika's default would cancel their tasks).
            await connection.close(aiormq.exceptions.ConnectionClosed(320, "openhqm backend closed"))

    def _on_change(self, *_: object) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _on_lost(self, *_: object) -> None:
        if self._lost_at is None:
            self._lost_at = asyncio.get_running_loop().time()
        self._on_change()

    def _on_reconnect(self, *_: object) -> None:
        self._lost_at = None
        self._on_change()

    @contextlib.asynccontextmanager
    async def _unless_down(self) -> AsyncGenerator[None]:
        """Bounds a wait on a lost connection. aio-pika's first reconnect attempt starts within one
        `reconnect_interval_s` of the drop, so a connection still down after two has failed an attempt:
        it is known to be down, and waiting would only turn a prompt 503 into a slow one (aio-pika
        keeps reconnecting meanwhile)."""
        lost_at = self._lost_at
        deadline = None if lost_at is None else lost_at + 2 * self.options.reconnect_interval_s
        bound = asyncio.timeout_at(deadline)
        try:
            async with bound:
                yield
        except TimeoutError as exc:
            if not bound.expired() or lost_at is None:
                raise
            down_s = asyncio.get_running_loop().time() - lost_at
            raise BackendUnavailable(f"rabbitmq: no connection to {self.display_url} for {down_s:.1f} s;"
                                     f" reconnecting every {self.options.reconnect_interval_s:g} s") from exc

    def _channels(self) -> tuple[AbstractRobustChannel, AbstractRobustChannel]:
        if self._publisher is None or self._admin is None:
            raise BackendUnavailable("rabbitmq backend is not connected (call connect() first)")
        return self._publisher, self._admin

    async def publish(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                      delay_s: float | None = None, key: str | None = None,
                      message_id: str | None = None) -> None:
        headers: dict[str, Any] = {} if key is None else {Wire.KEY: key}
        message = aio_pika.Message(body, headers=headers, message_id=message_id or new_id(),
                                   priority=priority, delivery_mode=DeliveryMode.PERSISTENT)
        await self._send(queue, message, delay_s)

    async def _send(self, queue: str, message: aio_pika.Message, delay_s: float | None) -> None:
        """Publish to `queue` (through a delay queue when delayed); returns after the broker's confirm.

        A publish cut off by a dropped connection or channel is sent again once aio-pika has reopened
        it: the broker may hold the first copy already (a duplicate, never a loss)."""
        redeclared = False
        with _errors(f"publish to {queue!r} within {self.options.publish_timeout_s:g} s"):
            async with asyncio.timeout(self.options.publish_timeout_s):
                while True:
                    changed = self._changed
                    try:
                        async with self._unless_down():
                            await self._publish(await self._route(queue, message, delay_s), message)
                        return
                    except BackendError as exc:
                        if isinstance(exc.__cause__, _CHANNEL_LOST):
                            async with self._unless_down():
                                await changed.wait()
                        elif isinstance(exc.__cause__, aiormq.exceptions.PublishError) and not redeclared:
                            # Unroutable: a queue was deleted behind our back (by hand, or x-expires).
                            redeclared = True
                            self._declared.clear()
                        else:
                            raise

    async def _publish(self, routing_key: str, message: aio_pika.Message) -> None:
        publisher, _ = self._channels()
        with _errors(f"publish to {routing_key!r}"):
            await publisher.ready()
            await publisher.default_exchange.publish(message, routing_key=routing_key, mandatory=True)

    async def _route(self, queue: str, message: aio_pika.Message, delay_s: float | None) -> str:
        """Declare what the message passes through; the routing key to publish it with."""
        await self._ensure(queue, QUEUE_ARGUMENTS)  # also where its delay queues dead-letter to
        delay_ms = math.ceil(round((delay_s or 0) * 1000, 3))
        # A delay queue's TTL enforces one hop; only a longer delay needs its not-before time.
        if delay_ms > MAX_HOP_MS:
            message.headers[Wire.NOT_BEFORE] = Wire.time(time.time() + delay_ms / 1000)
        else:
            message.headers.pop(Wire.NOT_BEFORE, None)
        if delay_ms <= 0:
            return queue
        ttl_ms = bucket_ms(delay_ms)
        name = delay_queue(queue, ttl_ms)
        await self._ensure(name, _delay_arguments(queue, ttl_ms), renew_after_s=DELAY_RENEW_S)
        self._delayed[queue][ttl_ms] = time.monotonic() + (ttl_ms + DELAY_EXPIRES_MARGIN_MS) / 1000
        return name

    async def _ensure(self, name: str, arguments: dict[str, Any], renew_after_s: float | None = None) -> None:
        """Declare `name` once per process (delay queues again when their x-expires lease runs down)."""
        limit_s = math.inf if renew_after_s is None else renew_after_s
        async with self._declare_locks[name]:
            if time.monotonic() - self._declared.get(name, -math.inf) < limit_s:
                return
            await self._declare(name, arguments)

    async def _declare(self, name: str, arguments: dict[str, Any]) -> int:
        """Declare (idempotent; creates it when missing) and return how many messages are ready."""
        _, admin = self._channels()
        with _errors(f"declare durable classic queue {name!r} with {arguments}"):
            async with self._unless_down(), asyncio.timeout(self.options.publish_timeout_s):
                declared = await admin.declare_queue(name, durable=True, arguments=arguments, robust=False)
        self._declared[name] = time.monotonic()
        count = declared.declaration_result.message_count
        return count or 0

    def _delay_queues(self, queue: str) -> list[tuple[str, dict[str, Any]]]:
        """The delay queues of `queue` that may still hold messages this process sent."""
        now = time.monotonic()
        known = self._delayed[queue]
        for ttl_ms in [t for t, until in known.items() if until < now]:
            del known[ttl_ms]
        return [(delay_queue(queue, ttl_ms), _delay_arguments(queue, ttl_ms)) for ttl_ms in sorted(known)]

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]:
        consumer = await self._start_consumer(queue, prefetch)
        try:
            while (message := await consumer.inbox.get()) is not None:
                if not _is_open(message):
                    continue  # its channel died before we got to it: the broker has requeued it
                not_before = _not_before(message)
                # No holding here: a held message would block the consumer's prefetch slot for a day.
                if not_before and admission(not_before, time.time(), max_hold_s=0).action is Admit.REPOST:
                    await self._hop(queue, message, not_before)
                    continue
                consumer.unsettled += 1
                yield RabbitMQDelivery(self, consumer, queue, message)
        finally:
            self._consumers.discard(consumer)
            await consumer.stop()

    async def _start_consumer(self, queue: str, prefetch: int) -> _Consumer:
        if self._connection is None:
            raise BackendUnavailable("rabbitmq backend is not connected (call connect() first)")
        with _errors(f"consume from {queue!r}"):
            channel = await self._connection.channel(publisher_confirms=False)
            try:
                await channel.set_qos(prefetch_count=prefetch)
                amqp_queue = await channel.declare_queue(queue, durable=True, arguments=QUEUE_ARGUMENTS)
                consumer = _Consumer(channel, amqp_queue, prefetch)
                await consumer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await channel.close()
                raise
        self._consumers.add(consumer)
        return consumer

    async def _hop(self, queue: str, message: AbstractIncomingMessage, not_before: float) -> None:
        """A delay longer than one hop came back early: send it round the delay queues again."""
        try:
            copy = _copy(message, message.message_id or new_id(), _headers(message))
            await self._send(queue, copy, not_before - time.time())
            with _errors(f"ack on {queue!r}"):
                await message.ack()
        except BackendError as exc:
            # Left unacked, it returns to the queue when this consumer's channel closes; requeueing it
            # now would spin while the broker refuses publishes.
            log.warning("rabbitmq.delay_hop_failed", queue=queue, error=str(exc))

    async def depth(self, queue: str) -> int:
        """Ready messages, plus those in the delay queues this process sent to (AMQP cannot list
        queues, and only this process knows which delay queues it used)."""
        count = await self._declare(queue, QUEUE_ARGUMENTS)
        for name, arguments in self._delay_queues(queue):
            count += await self._declare(name, arguments)
        return count

    async def purge(self, queue: str) -> int:
        _, admin = self._channels()
        total = 0
        for name, arguments in [(queue, QUEUE_ARGUMENTS), *self._delay_queues(queue)]:
            await self._declare(name, arguments)  # so the purge cannot fail with 404
            with _errors(f"purge {name!r}"):
                channel = await admin.get_underlay_channel()
                purged = await channel.queue_purge(name)
            total += purged.message_count or 0
        return total

    async def ping(self) -> None:
        publisher, _ = self._channels()
        async with self._unless_down():
            channel = await publisher.get_underlay_channel()
            await channel.exchange_declare("amq.direct", passive=True)  # a round trip on the channel
