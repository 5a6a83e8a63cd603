"""NATS JetStream through nats-py: one work-queue stream, one shared durable pull consumer per queue.

URL: `queue.nats.url`, e.g. `nats://user:password@host:4222` (`tls://` for TLS; comma-separated for a
cluster). Options: `queue.nats.stream` (OPENHQM), `subject_prefix` (openhqm), `ack_wait_s` (the lease),
`max_deliver`. The stream takes `<prefix>.>` (work-queue retention; created when missing); queue `a.b`
is the subject `<prefix>.a.b` (`queue_subject`), read by one durable shared by all its workers.
Native: ack, nack with delay (`nak(delay)`), lease extension (`in_progress()` restarts ack_wait_s,
whatever the seconds asked), attempt (num_delivered), publish dedup (Nats-Msg-Id, per subject).
Emulated: publish delay: the message waits on `<subject>.$delayed` with `openhqm-not-before`; each
consume() runs a mover that holds it there with `nak(delay)` until due, then publishes it to the queue
(attempt 1) and acks it. Dead letters: a copy with `openhqm-reason` to `<queue>.dlq`, then ack; also
for a message delivered more than `max_deliver` times (the server's own limit would strand it).
None: priority, ordering key. Headers are the `kit.Wire` names, read whatever their case (so the
`Openhqm-Id`-style headers of earlier versions still read).
On a crash: unacked messages come back after ack_wait_s; pulled but unhanded ones are nak'ed when
consume() ends. Delayed messages move only while a consumer of their queue runs. nats-py reconnects
by itself; a pull request lost meanwhile is sent again (nats_pull.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING

import nats.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from pydantic import Field, SecretStr

from openhqm.backends.base import Backend, BackendOptions, Capabilities, Delivery, Support
from openhqm.backends.kit import Admit, Closing, Wire, admission, connected, percent_encoded, within_limit
from openhqm.backends.nats_pull import JetStreamMissing, Puller, errors
from openhqm.constants import DEAD_LETTER_SUFFIX, DEFAULT_PRIORITY, dead_letter_queue
from openhqm.errors import BackendError, BackendUnavailable
from openhqm.policies import Reconnect
from openhqm.redact import mask_url

if TYPE_CHECKING:
    from openhqm.config import Settings

log = structlog.get_logger(__name__)

MSG_ID_HEADER = "Nats-Msg-Id"
DELAYED_TOKEN = "$delayed"  # `$` never survives queue_subject's escaping, so no queue maps here

API_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
MOVER_BATCH = 64
MAX_MESSAGE_BYTES = 1_000_000  # the server's default max_payload is 1 MiB, headers included

_TOKEN_SAFE = re.compile(r"[A-Za-z0-9_-]")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def subject_token(part: str) -> str:
    if not part:
        return "%"
    return percent_encoded(part, _TOKEN_SAFE)


def queue_subject(prefix: str, queue: str) -> str:
    return ".".join([prefix, *(subject_token(part) for part in queue.split("."))])


def durable_name(subject: str) -> str:
    return f"{_NAME_UNSAFE.sub('_', subject)[:48]}-{hashlib.sha256(subject.encode()).hexdigest()[:10]}"


class NATSOptions(BackendOptions):
    url: SecretStr = SecretStr("nats://127.0.0.1:4222")
    ack_wait_s: float = Field(30.0, gt=0)
    max_deliver: int = Field(20, gt=0)
    stream: str = Field("OPENHQM", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    subject_prefix: str = Field("openhqm", pattern=r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


def _copied_headers(msg: Msg, *dropped: str) -> dict[str, str]:
    """`Wire.carried`, less the server's own Nats-* headers (a copy gets fresh ones)."""
    return Wire.carried({k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}, *dropped)


def _message_id(msg: Msg) -> str:
    """Ours, else the publisher's dedup id, else the message's place in the stream."""
    meta = msg.metadata
    return (Wire.get(msg.headers, Wire.ID) or (msg.headers or {}).get(MSG_ID_HEADER)
            or f"{meta.stream}:{meta.sequence.stream}")


class NATSDelivery(Delivery):
    def __init__(self, backend: NATSJetStreamBackend, queue: str, msg: Msg) -> None:
        super().__init__(queue, msg.data, attempt=msg.metadata.num_delivered, message_id=_message_id(msg),
                         key=Wire.get(msg.headers, Wire.KEY))
        self._backend = backend
        self._msg = msg
        # The puller hands out only messages with at least half their ack_wait left (max_age_s).
        self.lease_until = time.monotonic() + backend.options.ack_wait_s / 2

    async def _ack(self) -> None:
        with errors("ack"):
            await self._msg.ack_sync(timeout=API_TIMEOUT_S)

    async def _nack(self, delay_s: float | None) -> None:
        with errors("nak"):
            await self._msg.nak(delay=delay_s if delay_s and delay_s > 0 else None)

    async def _dead_letter(self, reason: str) -> None:
        await self._backend._dead_letter(self.queue, self._msg, self.message_id, reason)

    async def extend_lease(self, seconds: float) -> None:
        """Restart the ack_wait_s timer (JetStream cannot extend by an arbitrary amount)."""
        if self.settled is None and not self._late():
            started = time.monotonic()
            with errors("in progress"):
                await self._msg.in_progress()
            self.lease_until = started + self._backend.options.ack_wait_s


class NATSJetStreamBackend(Backend):
    name = "nats"
    options_model = NATSOptions
    options: NATSOptions
    capabilities = Capabilities(delay=Support.EMULATED, lease_extension=True, max_message_bytes=MAX_MESSAGE_BYTES)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.stream = self.options.stream
        self.prefix = self.options.subject_prefix
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._closed = asyncio.Event()
        # This connection's life: a disconnect abandons the publishes still waiting for the stream's
        # ack (they would wait out API_TIMEOUT_S for an ack that cannot come) with BackendUnavailable.
        self._link = Closing()
        self._pullers: set[Puller] = set()  # stopped by close(), which ends their consume() or mover

    @property
    def lease_s(self) -> float | None:
        return self.options.ack_wait_s

    def subject(self, queue: str) -> str:
        return queue_subject(self.prefix, queue)

    def _connection(self) -> NATS:
        return connected("nats", self._nc)

    def _jetstream(self) -> JetStreamContext:
        return connected("nats", self._js)

    async def connect(self) -> None:
        if self._nc is not None:
            return
        nc = NATS()
        servers = [url.strip() for url in self.options.url.get_secret_value().split(",")]
        try:
            # nats-py retries a first connect forever with max_reconnect_attempts=-1: bound it here.
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                await nc.connect(servers=servers, name="openhqm", connect_timeout=2, reconnect_time_wait=1,
                                 max_reconnect_attempts=-1, error_cb=self._on_error,
                                 disconnected_cb=self._on_disconnect, reconnected_cb=self._on_reconnect)
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            raise BackendUnavailable(errors.describe(f"cannot connect to {self.display_url}", exc)) from exc
        self._nc, self._js = nc, nc.jetstream(timeout=API_TIMEOUT_S)
        self._closed.clear()
        self._link = Closing()
        try:
            await self._ensure_stream()
        except BaseException:
            await self.close()
            raise

    async def _on_error(self, exc: Exception) -> None:
        log.warning("nats connection error", url=self.display_url, error=mask_url(repr(exc)))

    async def _on_disconnect(self) -> None:
        if not self._closed.is_set():  # nats-py reports its own close() as a disconnect too
            log.warning("nats disconnected; reconnecting", url=self.display_url)
        await self._link.close()

    async def _on_reconnect(self) -> None:
        self._link = Closing()
        log.info("nats reconnected", url=self.display_url)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is None:
            return
        self._closed.set()
        # End every consume() and mover, and give back what they pulled but never handed out.
        await asyncio.gather(*(puller.stop() for puller in list(self._pullers)))
        with contextlib.suppress(Exception):
            await nc.close()

    async def ping(self) -> None:
        if not self._connection().is_connected:
            raise BackendUnavailable("nats: not connected (nats-py is reconnecting)")
        with errors(f"stream info {self.stream}"):
            await self._jetstream().stream_info(self.stream)

    # -- stream and consumers -------------------------------------------------------------------

    async def _ensure_stream(self) -> None:
        js = self._jetstream()
        with contextlib.suppress(JetStreamMissing), errors(f"look up stream {self.stream}"):
            await js.stream_info(self.stream)
            return
        config = StreamConfig(name=self.stream, subjects=[f"{self.prefix}.>"],
                              retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE)
        with errors(f"create stream {self.stream} for subjects {self.prefix}.>"):
            await js.add_stream(config)
        log.info("nats stream created", stream=self.stream, subjects=f"{self.prefix}.>")

    async def _with_stream(self, action: str, call: Callable[[], Awaitable[object]]) -> None:
        """Run `call`; if the stream vanished (deleted, server state lost), make it again and retry once."""
        try:
            with errors(action):
                await call()
        except JetStreamMissing:
            await self._ensure_stream()
            with errors(action):
                await call()

    def _puller(self, subject: str, batch: int) -> Puller:
        durable = durable_name(subject)
        return Puller(self._connection, self.stream, durable, batch=batch, max_age_s=self.options.ack_wait_s / 2,
                      ensure_consumer=lambda: self._ensure_consumer(subject, durable))

    async def _ensure_consumer(self, subject: str, durable: str) -> None:
        """Create or update the queue's durable (idempotent; the stream is made again if it vanished)."""
        # No max_ack_pending: nak'ed-with-delay retries and held delayed messages count as pending,
        # so a cap would stall the queue behind them. Flow control is the pull batch (prefetch).
        config = ConsumerConfig(durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.ALL, ack_wait=self.options.ack_wait_s,
                                max_deliver=-1, max_ack_pending=-1)
        await self._with_stream(f"create consumer {durable}", lambda: self._jetstream().add_consumer(
            self.stream, config))

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                      delay_s: float | None = None, key: str | None = None,
                      message_id: str | None = None) -> None:
        headers = Wire.published(message_id, delay_s, time.time(), key)
        subject = self.subject(queue) + (f".{DELAYED_TOKEN}" if Wire.NOT_BEFORE in headers else "")
        await self._publish(subject, body, headers, headers[Wire.ID])

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str], message_id: str) -> None:
        """Publish and wait for the stream's ack. The dedup id is scoped by subject, because the
        duplicate window spans the whole stream and one id may travel to several queues."""
        if not self._connection().is_connected:  # nats-py would buffer it until the reconnect
            raise BackendUnavailable("nats: not connected (nats-py is reconnecting)")

        async def acknowledged() -> bool:
            await self._with_stream(f"publish to {subject}", lambda: self._jetstream().publish(
                subject, body, stream=self.stream,  # a fresh dict each try: js.publish adds to it
                headers={**headers, Wire.ID: message_id, MSG_ID_HEADER: f"{subject}:{message_id}"}))
            return True

        if await self._link.unless_closed(acknowledged()) is None:
            raise BackendUnavailable(f"nats: the connection dropped before the stream acknowledged the publish "
                                     f"to {subject} (nats-py is reconnecting)")

    async def _dead_letter(self, queue: str, msg: Msg, message_id: str, reason: str) -> None:
        headers = Wire.dead_lettered(_copied_headers(msg), reason)
        await self._forward(msg, self.subject(dead_letter_queue(queue)), message_id, headers)

    async def _forward(self, msg: Msg, subject: str, message_id: str, headers: dict[str, str]) -> None:
        """Publish a copy of `msg` to `subject`, then ack `msg` (a crash between them leaves a
        duplicate only after the dedup window)."""
        await self._publish(subject, msg.data, headers, message_id)
        with errors("ack"):
            await msg.ack_sync(timeout=API_TIMEOUT_S)

    # -- consuming ------------------------------------------------------------------------------

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]:
        mover = asyncio.create_task(self._move_due(queue))
        try:
            async with contextlib.aclosing(self._pulled(self._puller(self.subject(queue), prefetch))) as pulled:
                async for msg in pulled:
                    if (delivery := await self._admit(queue, msg)) is not None:
                        yield delivery
        finally:
            mover.cancel()

    async def _pulled(self, puller: Puller, retried: type[BackendError] = BackendUnavailable
                      ) -> AsyncGenerator[Msg, None]:
        """The puller's messages until close(); `retried` errors are waited out (nats-py reconnects)."""
        self._pullers.add(puller)
        reconnect = Reconnect()
        try:
            while not self._closed.is_set():
                try:
                    msg = await puller.next()
                except retried as exc:
                    log.warning("nats pull failed; retrying", durable=puller.durable, error=str(exc))
                    await reconnect.wait(self._closed)  # nats-py is reconnecting meanwhile
                    continue
                reconnect.reset()
                if msg is None:
                    return
                yield msg
        finally:
            self._pullers.discard(puller)
            await puller.stop()

    async def _admit(self, queue: str, msg: Msg) -> NATSDelivery | None:
        delivery, limit = NATSDelivery(self, queue, msg), self.options.max_deliver
        delivered = None if queue.endswith(DEAD_LETTER_SUFFIX) else delivery.attempt
        return await within_limit(delivery, delivered, limit, f"queue.nats.max_deliver is {limit}")

    async def _move_due(self, queue: str) -> None:
        """Hand the queue's delayed messages over to it once they are due (the delay emulation)."""
        subject = self.subject(queue)
        async with contextlib.aclosing(self._pulled(
                self._puller(f"{subject}.{DELAYED_TOKEN}", MOVER_BATCH), retried=BackendError)) as pulled:
            async for msg in pulled:
                # nak(delay) keeps a message out of sight as long as asked: no hold limit, never a re-post.
                not_before = Wire.number(Wire.get(msg.headers, Wire.NOT_BEFORE))
                decision = admission(not_before, time.time(), max_hold_s=None)
                try:
                    if decision.action is Admit.HOLD:
                        with errors("nak"):
                            await msg.nak(delay=decision.wait_s)
                    else:
                        headers = _copied_headers(msg, Wire.ID, Wire.NOT_BEFORE)
                        await self._forward(msg, subject, _message_id(msg), headers)
                except BackendError as exc:  # it comes back after ack_wait_s
                    log.warning("nats delay mover failed", queue=queue, error=str(exc))

    # -- inspection -----------------------------------------------------------------------------

    async def _subject_count(self, subject: str) -> int:
        with errors("stream info"):
            info = await self._jetstream().stream_info(self.stream, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))

    async def depth(self, queue: str) -> int:
        """Messages not yet delivered (the consumer's num_pending) plus delayed ones; not those in flight."""
        subject = self.subject(queue)
        try:
            with errors("consumer info"):
                waiting = (await self._jetstream().consumer_info(self.stream, durable_name(subject))).num_pending
        except JetStreamMissing:
            waiting = await self._subject_count(subject)  # no consumer yet: everything is waiting
        return int(waiting or 0) + await self._subject_count(f"{subject}.{DELAYED_TOKEN}")

    async def purge(self, queue: str) -> int:
        """Delete the queue's messages, in flight and delayed ones too; returns how many."""
        count = 0
        for subject in (self.subject(queue), f"{self.subject(queue)}.{DELAYED_TOKEN}"):
            count += await self._subject_count(subject)
            with errors("purge"):
                await self._jetstream().purge_stream(self.stream, subject=subject)
        return count
