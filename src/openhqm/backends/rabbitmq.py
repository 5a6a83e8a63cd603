"""RabbitMQ (AMQP 0-9-1) through aio-pika's robust connection, which reconnects and resumes consumers.

URL: `queue.rabbitmq.url`, e.g. `amqp://user:password@host:5672/vhost` (`amqps://` for TLS; aio-pika
query options such as `?heartbeat=30` pass through). Options: `queue.rabbitmq.connect_timeout_s`,
`reconnect_interval_s`, `publish_timeout_s` (the broker's confirm, or a channel's reopen).
Queues are durable classic queues with `x-max-priority=15` (quorum queues reject it on 3.10).
Native: priority 1..15, publisher confirms on persistent messages, manual ack, prefetch (basic.qos).
Emulated: delay, through `<queue>.delay.<ms>`: one queue per delay rounded up to two significant
digits, with x-message-ttl, dead-lettering back into `<queue>`, and x-expires once unused, so a long
delay never holds up a shorter one. One hop lasts at most a day; a longer delay carries its
not-before time and hops again through `<queue>`, where the consumer sends it round once more.
`nack` publishes a copy with the next attempt (through a delay queue when delayed) and acks the
original; `dead_letter` publishes a copy with the reason to `<queue>.dlq` and acks the original.
Headers: `kit.Wire` (attempt, key, not-before in epoch seconds, reason). No ordering key. `depth`
adds the delay queues this process used (AMQP cannot list queues). While the connection is down,
publishes, declarations and health fail at once with BackendUnavailable (a 503, never a wait for the
reconnect), and so does a call under way when it drops; a publish cut off by a closed channel alone
is sent again once the channel reopens.
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
from aio_pika.abc import AbstractIncomingMessage, AbstractRobustChannel, AbstractRobustConnection, DeliveryMode
from pydantic import Field, SecretStr

from openhqm.backends.base import Backend, BackendOptions, Capabilities, Delivery, Support
from openhqm.backends.kit import Admit, Wire, admission, connected
from openhqm.backends.rabbitmq_consumer import (
    CLEANUP_TIMEOUT_S,
    Consumer,
    copied_headers,
    copy_of,
    errors,
    is_open,
    not_before,
)
from openhqm.constants import DEFAULT_PRIORITY, MAX_PRIORITY
from openhqm.envelope import new_id
from openhqm.errors import BackendError, BackendUnavailable

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator

    from openhqm.config import Settings

log = structlog.get_logger(__name__)

QUEUE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "classic", "x-max-priority": MAX_PRIORITY}
MAX_HOP_MS = 24 * 3600 * 1000
# A delay queue is deleted once unused for its TTL plus this margin; publishing does not count as
# use, so publishers re-declare it when their declaration is older than half the margin.
DELAY_EXPIRES_MARGIN_MS = 10 * 60 * 1000
DELAY_RENEW_S = DELAY_EXPIRES_MARGIN_MS / 2000
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


# What a call fails with when its channel or connection closes under it (aio-pika reopens both).
_CHANNEL_LOST = (aiormq.exceptions.AMQPConnectionError, aiormq.exceptions.ChannelInvalidStateError,
                 ConnectionError)


class RabbitMQOptions(BackendOptions):
    url: SecretStr = SecretStr("amqp://guest:guest@127.0.0.1:5672/")
    connect_timeout_s: float = Field(10.0, gt=0)
    # 1 s: /ready turns 200 again within about a second of the broker's return (issue 14 asks for 2 s).
    reconnect_interval_s: float = Field(1.0, gt=0, description="pause between reconnect attempts")
    publish_timeout_s: float = Field(
        10.0, gt=0, description="the broker's confirm, or a channel's reopen while the connection is up")


class RabbitMQBackend(Backend):
    name = "rabbitmq"
    options_model = RabbitMQOptions
    options: RabbitMQOptions
    capabilities = Capabilities(priority=Support.NATIVE, delay=Support.EMULATED, max_message_bytes=MAX_MESSAGE_BYTES)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self._connection: AbstractRobustConnection | None = None
        self._publisher: AbstractRobustChannel | None = None  # publisher confirms
        self._admin: AbstractRobustChannel | None = None  # declarations: a conflict closes only this one
        self._declared: dict[str, float] = {}  # queue name -> monotonic time of our last declare
        self._declare_locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        # queue -> {delay queue TTL (ms): monotonic time until which it may hold what we sent}
        self._delayed: defaultdict[str, dict[int, float]] = defaultdict(dict)
        self._consumers: set[Consumer] = set()
        self._changed = asyncio.Event()  # set (and replaced) when the connection or a channel goes or comes
        self._lost_at: float | None = None  # loop time the connection dropped; None while it is up
        self._bounded: set[asyncio.Timeout] = set()  # the calls under way in _unless_down

    async def connect(self) -> None:
        if self._connection is not None:
            return
        with errors(f"connect to {self.display_url}"):
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
                # Together: each closes its inbox at its first step, so a timeout cannot leave one open.
                await asyncio.gather(*(consumer.end() for consumer in self._consumers))
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
        for bound in self._bounded:  # calls under way fail now rather than wait for the reconnect
            bound.reschedule(self._lost_at)
        self._on_change()

    def _on_reconnect(self, *_: object) -> None:
        self._lost_at = None
        self._on_change()

    @contextlib.asynccontextmanager
    async def _unless_down(self) -> AsyncGenerator[None]:
        """Fails at once while the connection is down, and the moment it drops during the call:
        waiting for aio-pika's reconnect would turn a prompt 503 into a slow one, and a /ready into a
        hang (aio-pika keeps reconnecting meanwhile, every `reconnect_interval_s`)."""
        bound = asyncio.timeout_at(self._lost_at)  # a past time expires at once; None: no bound
        try:
            async with bound:
                self._bounded.add(bound)
                yield
        except TimeoutError as exc:
            if not bound.expired() or self._lost_at is None:
                raise
            down_s = asyncio.get_running_loop().time() - self._lost_at
            raise BackendUnavailable(f"rabbitmq: no connection to {self.display_url} for {down_s:.1f} s;"
                                     f" reconnecting every {self.options.reconnect_interval_s:g} s") from exc
        finally:
            self._bounded.discard(bound)

    def _channels(self) -> tuple[AbstractRobustChannel, AbstractRobustChannel]:
        return connected("rabbitmq", self._publisher), connected("rabbitmq", self._admin)

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
        with errors(f"publish to {queue!r} within {self.options.publish_timeout_s:g} s"):
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
        with errors(f"publish to {routing_key!r}"):
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
        with errors(f"declare durable classic queue {name!r} with {arguments}"):
            async with self._unless_down(), asyncio.timeout(self.options.publish_timeout_s):
                declared = await admin.declare_queue(name, durable=True, arguments=arguments, robust=False)
        self._declared[name] = time.monotonic()
        count = declared.declaration_result.message_count
        return count or 0

    def _queues_of(self, queue: str) -> list[tuple[str, dict[str, Any]]]:
        """`queue` and the delay queues of it that may still hold messages this process sent."""
        now = time.monotonic()
        known = self._delayed[queue]
        for ttl_ms in [t for t, until in known.items() if until < now]:
            del known[ttl_ms]
        delay_queues = [(delay_queue(queue, ttl_ms), _delay_arguments(queue, ttl_ms)) for ttl_ms in sorted(known)]
        return [(queue, QUEUE_ARGUMENTS), *delay_queues]

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]:
        consumer = await self._start_consumer(queue, prefetch)
        try:
            while (message := await consumer.inbox.get()) is not None:
                if not is_open(message):
                    continue  # its channel died before we got to it: the broker has requeued it
                due = not_before(message)
                # Never held here: a held message would take one of the consumer's prefetch slots.
                if due and admission(due, time.time(), max_hold_s=0).action is Admit.REPOST:
                    await self._hop(queue, message, due)
                    continue
                yield consumer.deliver(message)
        finally:
            self._consumers.discard(consumer)
            await consumer.stop()

    async def _start_consumer(self, queue: str, prefetch: int) -> Consumer:
        connection = connected("rabbitmq", self._connection)
        with errors(f"consume from {queue!r}"):
            channel = await connection.channel(publisher_confirms=False)
            try:
                await channel.set_qos(prefetch_count=prefetch)
                amqp_queue = await channel.declare_queue(queue, durable=True, arguments=QUEUE_ARGUMENTS)
                consumer = Consumer(channel, amqp_queue, prefetch, self._send)
                await consumer.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await channel.close()
                raise
        self._consumers.add(consumer)
        return consumer

    async def _hop(self, queue: str, message: AbstractIncomingMessage, due: float) -> None:
        """A delay longer than one hop came back early: send it round the delay queues again."""
        try:
            copy = copy_of(message, message.message_id or new_id(), copied_headers(message))
            await self._send(queue, copy, due - time.time())
            with errors(f"ack on {queue!r}"):
                await message.ack()
        except BackendError as exc:
            # Left unacked, it returns to the queue when this consumer's channel closes; requeueing it
            # now would spin while the broker refuses publishes.
            log.warning("rabbitmq.delay_hop_failed", queue=queue, error=str(exc))

    async def depth(self, queue: str) -> int:
        """Ready messages, plus those in the delay queues this process sent to (AMQP cannot list
        queues, and only this process knows which delay queues it used)."""
        return sum([await self._declare(name, arguments) for name, arguments in self._queues_of(queue)])

    async def purge(self, queue: str) -> int:
        _, admin = self._channels()
        total = 0
        for name, arguments in self._queues_of(queue):
            await self._declare(name, arguments)  # so the purge cannot fail with 404
            with errors(f"purge {name!r}"):
                channel = await admin.get_underlay_channel()
                purged = await channel.queue_purge(name)
            total += purged.message_count or 0
        return total

    async def ping(self) -> None:
        publisher, _ = self._channels()
        async with self._unless_down():
            channel = await publisher.get_underlay_channel()
            await channel.exchange_declare("amq.direct", passive=True)  # a round trip on the channel
