"""NATS JetStream through nats-py: one work-queue stream, one shared durable pull consumer per queue.

URL: `queue.nats.url`, e.g. `nats://user:password@host:4222` (`tls://` for TLS; a comma-separated
list for a cluster). Options: `queue.nats.stream` (OPENHQM), `subject_prefix` (openhqm),
`ack_wait_s` (the lease), `max_deliver`.
Layout: the stream `<stream>` takes the subjects `<prefix>.>` with WORK_QUEUE retention and file
storage; `connect()` creates it when missing and uses an existing one as it is. Queue `a.b` is the
subject `<prefix>.a.b` (`queue_subject`: each dot-separated part is one token, characters outside
[A-Za-z0-9_-] are %XX-escaped, an empty part is `%`), so its dead-letter queue `a.b.dlq` is
`<prefix>.a.b.dlq`. Every worker of a queue binds the same durable pull consumer (a work-queue
stream allows one consumer per subject filter), named after the subject plus a hash.
Native: ack (confirmed by the server), nack with delay (`nak(delay)`), lease extension
(`in_progress()`: the lease restarts at ack_wait_s, whatever the seconds asked), attempt
(num_delivered), publish dedup (Nats-Msg-Id = `<subject>:<message id>`, within the stream's
duplicate window, 2 min by default).
Emulated: publish delay: the message goes to `<subject>.$delayed` with an `Openhqm-Not-Before`
header; each consume() of the queue also runs a mover that holds those with `nak(delay)` until due,
then publishes them to the queue and acks them (their attempt starts at 1). Dead letters:
`dead_letter()` publishes a copy with an `Openhqm-Reason` header to the DLQ subject, then acks; a
message delivered more than `max_deliver` times is dead-lettered that way instead of being handed
out (the server's own max_deliver would only stop redelivering it and leave it in the stream).
No priority, no ordering key.
On a crash: unacked messages are redelivered once ack_wait_s has passed (num_delivered one higher);
messages pulled but never handed out are nak'ed when consume() ends. Delayed messages move only
while some consumer of their queue runs. nats-py reconnects on its own, forever; a pull request lost
in a disconnect is sent again after PULL_EXPIRES_S + PULL_GRACE_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from pydantic import Field, SecretStr

from openhqm.backends.base import Backend, BackendOptions, Capabilities, Delivery, Health, Support
from openhqm.constants import DEAD_LETTER_SUFFIX, DEFAULT_PRIORITY, dead_letter_queue
from openhqm.envelope import new_id
from openhqm.errors import BackendError, BackendUnavailable
from openhqm.redact import mask_url

if TYPE_CHECKING:
    from openhqm.config import Settings

log = structlog.get_logger(__name__)

ID_HEADER = "Openhqm-Id"
KEY_HEADER = "Openhqm-Key"
NOT_BEFORE_HEADER = "Openhqm-Not-Before"  # epoch seconds, on messages waiting in `<subject>.$delayed`
REASON_HEADER = "Openhqm-Reason"
MSG_ID_HEADER = "Nats-Msg-Id"
DELAYED_TOKEN = "$delayed"  # `$` never survives queue_subject's escaping, so no queue maps here

API_PREFIX = "$JS.API"
PULL_EXPIRES_S = 5.0
PULL_GRACE_S = 2.0  # a pull request with no answer at all by its expiry plus this was lost
API_TIMEOUT_S = 5.0
CONNECT_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 2.0
OUTAGE_PAUSE_S = 1.0
MOVER_BATCH = 64
MAX_REASON_CHARS = 2000
MAX_MESSAGE_BYTES = 1_000_000  # the server's default max_payload is 1 MiB, headers included

_TOKEN_SAFE = re.compile(r"[A-Za-z0-9_-]")
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def subject_token(part: str) -> str:
    if not part:
        return "%"
    return "".join(c if _TOKEN_SAFE.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in part)


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


class JetStreamMissing(BackendError):
    """The stream or consumer does not exist (deleted, or the server lost its state)."""


@contextlib.contextmanager
def _errors(action: str) -> Iterator[None]:
    """The one place where nats-py errors become openhqm errors."""
    try:
        yield
    except BackendError:
        raise
    except (nats.js.errors.NotFoundError, nats.js.errors.NoStreamResponseError) as exc:
        raise JetStreamMissing(f"nats: {action}: {exc}") from exc
    except nats.js.errors.ServiceUnavailableError as exc:
        raise BackendUnavailable(f"nats: {action}: JetStream unavailable: {exc}") from exc
    except nats.js.errors.APIError as exc:
        raise BackendError(f"nats: {action}: {exc.description} (err_code {exc.err_code})") from exc
    except (nats.errors.TimeoutError, TimeoutError) as exc:
        raise BackendUnavailable(f"nats: {action}: no answer within {API_TIMEOUT_S} s") from exc
    except (nats.errors.ConnectionClosedError, nats.errors.NoServersError, nats.errors.StaleConnectionError,
            nats.errors.ConnectionReconnectingError, nats.errors.OutboundBufferLimitError, OSError) as exc:
        raise BackendUnavailable(f"nats: {action}: {exc!r}") from exc
    except nats.errors.Error as exc:
        raise BackendError(f"nats: {action}: {exc}") from exc


def _copied_headers(msg: Msg) -> dict[str, str]:
    """Headers worth carrying to a copy: ours and foreign ones, not the server's Nats-* ones."""
    return {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


class _Puller:
    """Pull requests for one durable, answered on a private inbox; messages come out as they arrive.

    One request is open at a time. It asks for `batch` messages and lingers PULL_EXPIRES_S, after
    which the server answers 408. No answer at all means the request was lost (a reconnect, a deleted
    consumer): the consumer is ensured again and a new request goes out. A message that waited here
    longer than ack_wait_s is skipped: the server has already given it to someone else.
    """

    def __init__(self, backend: NATSJetStreamBackend, subject: str) -> None:
        self.backend = backend
        self.subject = subject
        self.durable = durable_name(subject)
        self.inbox: asyncio.Queue[tuple[float, Msg] | None] = asyncio.Queue()  # (arrival, message)
        self._sub: Subscription | None = None
        self._wanted = 0
        self._deadline = 0.0

    async def _on_message(self, msg: Msg) -> None:
        self.inbox.put_nowait((time.monotonic(), msg))

    def wake(self) -> None:
        """End a waiting next() with None (close())."""
        self.inbox.put_nowait(None)

    async def next(self, batch: int) -> Msg | None:
        """The next message, or None once the backend closes."""
        if self._sub is None:
            await self.backend._ensure_consumer(self.subject, self.durable)
            with _errors("subscribe"):
                self._sub = await self.backend._connection().subscribe(
                    self.backend._connection().new_inbox(), cb=self._on_message)
        while True:
            if self._wanted == 0:
                await self._request(batch)
            try:
                async with asyncio.timeout(self._deadline - time.monotonic()):
                    item = await self.inbox.get()
            except TimeoutError:
                self._wanted = 0
                await self.backend._ensure_consumer(self.subject, self.durable)
                continue
            if item is None:
                return None
            arrived, msg = item
            status = (msg.headers or {}).get("Status")
            if status is None:
                self._wanted -= 1
                if time.monotonic() - arrived < self.backend.options.ack_wait_s:
                    return msg
            if status != "100":  # 404/408: the request is over; 409: the server ended it
                self._wanted = 0

    async def _request(self, batch: int) -> None:
        if self._sub is None:
            raise BackendUnavailable("nats: this consumer's inbox is closed")
        request = {"batch": batch, "expires": int(PULL_EXPIRES_S * 1e9)}
        with _errors("pull"):
            await self.backend._connection().publish(
                f"{API_PREFIX}.CONSUMER.MSG.NEXT.{self.backend.stream}.{self.durable}",
                json.dumps(request).encode(), reply=self._sub.subject)
        self._wanted = batch
        self._deadline = time.monotonic() + PULL_EXPIRES_S + PULL_GRACE_S

    async def stop(self) -> None:
        """Drop the inbox and give back the messages it got but never handed out (best effort)."""
        sub, self._sub = self._sub, None
        with contextlib.suppress(Exception):
            if sub is not None:
                # Drain: unsubscribe, and wait until what the server sent before that has arrived.
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    await sub.drain()  # type: ignore[no-untyped-call]
        with contextlib.suppress(Exception):
            while not self.inbox.empty():
                item = self.inbox.get_nowait()
                if item is not None and not (item[1].headers or {}).get("Status"):
                    await item[1].nak()


class NATSDelivery(Delivery):
    def __init__(self, backend: NATSJetStreamBackend, queue: str, msg: Msg) -> None:
        headers = msg.headers or {}
        meta = msg.metadata
        message_id = headers.get(ID_HEADER) or headers.get(MSG_ID_HEADER) or f"{meta.stream}:{meta.sequence.stream}"
        super().__init__(queue, msg.data, attempt=meta.num_delivered, message_id=message_id,
                         key=headers.get(KEY_HEADER))
        self._backend = backend
        self._msg = msg

    async def _ack(self) -> None:
        with _errors("ack"):
            await self._msg.ack_sync(timeout=API_TIMEOUT_S)

    async def _nack(self, delay_s: float | None) -> None:
        with _errors("nak"):
            await self._msg.nak(delay=delay_s if delay_s and delay_s > 0 else None)

    async def _dead_letter(self, reason: str) -> None:
        await self._backend._dead_letter(self.queue, self._msg, self.message_id, reason)

    async def extend_lease(self, seconds: float) -> None:
        """Restart the ack_wait_s timer (JetStream cannot extend by an arbitrary amount)."""
        if self.settled is None:
            with _errors("in progress"):
                await self._msg.in_progress()


class NATSJetStreamBackend(Backend):
    name = "nats"
    options_model = NATSOptions
    options: NATSOptions
    capabilities = Capabilities(
        priority=Support.NONE, delay=Support.EMULATED, ordering_key=Support.NONE, dead_letter=Support.EMULATED,
        lease_extension=True, durable=True, shared_between_processes=True,
        max_message_bytes=MAX_MESSAGE_BYTES, max_delay_s=None,
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)

        self.stream = self.options.stream
        self.prefix = self.options.subject_prefix
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._closed = asyncio.Event()
        self._pullers: set[_Puller] = set()
        self._movers: set[asyncio.Task[None]] = set()

    @property
    def display_url(self) -> str:
        return mask_url(self.options.url.get_secret_value())

    def subject(self, queue: str) -> str:
        return queue_subject(self.prefix, queue)

    def _connection(self) -> NATS:
        if self._nc is None:
            raise BackendUnavailable("nats backend is closed")
        return self._nc

    def _jetstream(self) -> JetStreamContext:
        if self._js is None:
            raise BackendUnavailable("nats backend is closed")
        return self._js

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
            raise BackendUnavailable(f"nats: cannot connect to {self.display_url}: {exc!r}") from exc
        self._nc, self._js = nc, nc.jetstream(timeout=API_TIMEOUT_S)
        self._closed.clear()
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

    async def _on_reconnect(self) -> None:
        log.info("nats reconnected", url=self.display_url)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is None:
            return
        self._closed.set()
        for task in list(self._movers):
            task.cancel()
        # Wake every waiting consume(), and give back what it pulled but never handed out.
        pullers = list(self._pullers)
        await asyncio.gather(*(puller.stop() for puller in pullers))
        for puller in pullers:
            puller.wake()
        with contextlib.suppress(Exception):
            await nc.close()

    async def _pause(self) -> None:
        # NATS is unreachable and nats-py is reconnecting: wait a moment (or for close()) and retry.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OUTAGE_PAUSE_S):
                await self._closed.wait()

    # -- stream and consumers -------------------------------------------------------------------

    async def _ensure_stream(self) -> None:
        js = self._jetstream()
        try:
            with _errors(f"look up stream {self.stream}"):
                await js.stream_info(self.stream)
            return
        except JetStreamMissing:
            pass
        config = StreamConfig(name=self.stream, subjects=[f"{self.prefix}.>"],
                              retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE)
        with _errors(f"create stream {self.stream} for subjects {self.prefix}.>"):
            await js.add_stream(config)
        log.info("nats stream created", stream=self.stream, subjects=f"{self.prefix}.>")

    async def _ensure_consumer(self, subject: str, durable: str) -> None:
        """Create or update the queue's durable (idempotent; the stream is made again if it vanished)."""
        # No max_ack_pending: nak'ed-with-delay retries and held delayed messages count as pending,
        # so a cap would stall the queue behind them. Flow control is the pull batch (prefetch).
        config = ConsumerConfig(durable_name=durable, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT,
                                deliver_policy=DeliverPolicy.ALL, ack_wait=self.options.ack_wait_s,
                                max_deliver=-1, max_ack_pending=-1)
        try:
            with _errors(f"create consumer {durable}"):
                await self._jetstream().add_consumer(self.stream, config)
        except JetStreamMissing:
            await self._ensure_stream()
            with _errors(f"create consumer {durable}"):
                await self._jetstream().add_consumer(self.stream, config)

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                      delay_s: float | None = None, key: str | None = None,
                      message_id: str | None = None) -> None:
        subject = self.subject(queue)
        headers: dict[str, str] = {}
        if key is not None:
            headers[KEY_HEADER] = key
        if delay_s and delay_s > 0:
            headers[NOT_BEFORE_HEADER] = repr(time.time() + delay_s)
            subject = f"{subject}.{DELAYED_TOKEN}"
        await self._publish(subject, body, headers, message_id or new_id())

    async def _publish(self, subject: str, body: bytes, headers: dict[str, str], message_id: str) -> None:
        """Publish and wait for the stream's ack. The dedup id is scoped by subject, because the
        duplicate window spans the whole stream and one id may travel to several queues."""
        def headers_() -> dict[str, str]:  # js.publish adds to the dict it is given
            return {**headers, ID_HEADER: message_id, MSG_ID_HEADER: f"{subject}:{message_id}"}

        try:
            with _errors(f"publish to {subject}"):
                await self._jetstream().publish(subject, body, stream=self.stream, headers=headers_())
        except JetStreamMissing:
            await self._ensure_stream()
            with _errors(f"publish to {subject}"):
                await self._jetstream().publish(subject, body, stream=self.stream, headers=headers_())

    async def _dead_letter(self, queue: str, msg: Msg, message_id: str, reason: str) -> None:
        headers = {k: v for k, v in _copied_headers(msg).items() if k != NOT_BEFORE_HEADER}
        headers[REASON_HEADER] = reason.replace("\r", " ").replace("\n", " ")[:MAX_REASON_CHARS]
        await self._publish(self.subject(dead_letter_queue(queue)), msg.data, headers, message_id)
        with _errors("ack"):
            await msg.ack_sync(timeout=API_TIMEOUT_S)

    # -- consuming ------------------------------------------------------------------------------

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]:
        puller = _Puller(self, self.subject(queue))
        self._pullers.add(puller)
        mover = asyncio.create_task(self._move_due(queue))
        self._movers.add(mover)
        try:
            while not self._closed.is_set():
                try:
                    msg = await puller.next(max(1, prefetch))
                except BackendUnavailable as exc:
                    log.warning("nats pull failed; retrying", queue=queue, error=str(exc))
                    await self._pause()
                    continue
                if msg is None:
                    return
                delivery = await self._admit(queue, msg)
                if delivery is not None:
                    yield delivery
        finally:
            mover.cancel()
            self._movers.discard(mover)
            self._pullers.discard(puller)
            await puller.stop()

    async def _admit(self, queue: str, msg: Msg) -> NATSDelivery | None:
        delivery = NATSDelivery(self, queue, msg)
        limit = self.options.max_deliver
        if delivery.attempt <= limit or queue.endswith(DEAD_LETTER_SUFFIX):
            return delivery
        try:
            await self._dead_letter(queue, msg, delivery.message_id,
                                    f"delivered {delivery.attempt} times; queue.nats.max_deliver is {limit}")
        except BackendError as exc:  # it comes back after ack_wait_s and is moved then
            log.warning("nats could not dead-letter a message over max_deliver", queue=queue, error=str(exc))
        return None

    async def _move_due(self, queue: str) -> None:
        """Hand the queue's delayed messages over to it once they are due (the delay emulation)."""
        subject = self.subject(queue)
        puller = _Puller(self, f"{subject}.{DELAYED_TOKEN}")
        self._pullers.add(puller)
        try:
            while not self._closed.is_set():
                try:
                    msg = await puller.next(MOVER_BATCH)
                    if msg is None:
                        return
                    await self._hold_or_move(subject, msg)
                except BackendError as exc:
                    log.warning("nats delay mover failed; retrying", queue=queue, error=str(exc))
                    await self._pause()
        finally:
            self._pullers.discard(puller)
            await puller.stop()

    async def _hold_or_move(self, subject: str, msg: Msg) -> None:
        not_before = _number((msg.headers or {}).get(NOT_BEFORE_HEADER))
        remaining = (not_before or 0.0) - time.time()
        if remaining > 0:
            with _errors("nak"):
                await msg.nak(delay=remaining)
            return
        headers = {k: v for k, v in _copied_headers(msg).items() if k != NOT_BEFORE_HEADER}
        message_id = headers.pop(ID_HEADER, None) or f"{self.stream}:{msg.metadata.sequence.stream}"
        await self._publish(subject, msg.data, headers, message_id)
        with _errors("ack"):
            await msg.ack_sync(timeout=API_TIMEOUT_S)

    # -- inspection -----------------------------------------------------------------------------

    async def _subject_count(self, subject: str) -> int:
        with _errors("stream info"):
            info = await self._jetstream().stream_info(self.stream, subjects_filter=subject)
        return int((info.state.subjects or {}).get(subject, 0))

    async def depth(self, queue: str) -> int:
        """Messages not yet delivered (the consumer's num_pending) plus delayed ones; not those in flight."""
        subject = self.subject(queue)
        try:
            with _errors("consumer info"):
                waiting = (await self._jetstream().consumer_info(self.stream, durable_name(subject))).num_pending
        except JetStreamMissing:
            waiting = await self._subject_count(subject)  # no consumer yet: everything is waiting
        return int(waiting or 0) + await self._subject_count(f"{subject}.{DELAYED_TOKEN}")

    async def purge(self, queue: str) -> int:
        """Delete the queue's messages, in flight and delayed ones too; returns how many."""
        count = 0
        for subject in (self.subject(queue), f"{self.subject(queue)}.{DELAYED_TOKEN}"):
            count += await self._subject_count(subject)
            with _errors("purge"):
                await self._jetstream().purge_stream(self.stream, subject=subject)
        return count

    async def health(self) -> Health:
        nc = self._nc
        if nc is None:
            return Health(False, "nats backend is not connected")
        if not nc.is_connected:
            return Health(False, f"nats: not connected to {self.display_url} (reconnecting)")
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                with _errors(f"stream info {self.stream}"):
                    await self._jetstream().stream_info(self.stream)
        except TimeoutError:
            return Health(False, f"nats: JetStream did not answer within {HEALTH_TIMEOUT_S} s")
        except Exception as exc:
            return Health(False, str(exc) if isinstance(exc, BackendError) else f"nats: {exc!r}")
        return Health(True)
