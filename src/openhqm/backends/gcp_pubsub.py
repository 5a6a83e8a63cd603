"""Google Cloud Pub/Sub through google-cloud-pubsub: streaming pull, its lease management, ordering keys.

URL: none. Options (`queue.pubsub.*`): `project_id`; `emulator_host` (host:port, else the standard
PUBSUB_EMULATOR_HOST, else Google with Application Default Credentials); `ack_deadline_s`,
`max_delivery_attempts`, `timeout_s`.
Queue Q is a topic and a subscription (made on first use by gcp_pubsub_topics.py) with message
ordering and a dead-letter policy to Q.dlq after `max_delivery_attempts`, which also makes Pub/Sub
count deliveries (`attempt`).
Native: ordering key (the client library hands out one message per key at a time, in order),
lease extension (the library extends the lease of every unsettled delivery), attempt.
Emulated (`kit.admission`): delay (attribute `openhqm-not-before`; a consumer that gets the message
early sets its ack deadline to the time left, at most 600 s a step, and re-publishes a copy for
longer waits), nack(delay) (the ack deadline set to the delay; a copy carrying `openhqm-attempt`
when that is impossible), dead letters (a copy with `openhqm-reason` to Q.dlq, then ack; also a
message on its `max_delivery_attempts`-th delivery, which the emulator's policy would drop). No
priority. No depth: the emulator has no monitoring API. Settles are unary Acknowledge/
ModifyAckDeadline calls awaited by the caller.
On a crash: unsettled messages come back once their lease runs out (at most `ack_deadline_s` after
the last extension), to any consumer, with delivery_attempt+1. Messages received but not handed
out go back at once when consume() ends or the backend closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import structlog
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.message import Message
from pydantic import Field

from openhqm.backends.base import HEALTH_TIMEOUT_S, Backend, BackendOptions, Capabilities, Delivery, Support
from openhqm.backends.gcp_pubsub_topics import PubSubTopics, errors
from openhqm.backends.kit import Admit, Background, PrefetchBuffer, Wire, admission, within_limit
from openhqm.constants import DEFAULT_PRIORITY, dead_letter_queue
from openhqm.errors import BackendError
from openhqm.policies import Reconnect

if TYPE_CHECKING:
    from google.cloud.pubsub_v1.subscriber.futures import StreamingPullFuture

    from openhqm.config import Settings

log = structlog.get_logger(__name__)

MAX_ACK_DEADLINE_S = 600  # Pub/Sub's limit for one ModifyAckDeadline
_FATAL = (gexc.PermissionDenied, gexc.Unauthenticated, gexc.InvalidArgument)


def _attempt(message: Message) -> int:
    """This delivery's attempt: the one the copy was sent for, plus Pub/Sub's redeliveries of it, less
    the deliveries spent waiting for a not-before time (0, 1 or 2 per copy, see `_admit`)."""
    first = Wire.attempt(message.attributes.get(Wire.ATTEMPT))
    delivered: int | None = message.delivery_attempt
    if delivered is None:  # a subscription without a dead-letter policy: Pub/Sub does not count
        return first
    lead_s = (Wire.number(message.attributes.get(Wire.NOT_BEFORE)) or 0) - message.publish_time.timestamp()
    waits = 0 if lead_s <= 0 else 1 if lead_s <= MAX_ACK_DEADLINE_S else 2
    return first + max(0, delivered - waits - 1)


class PubSubOptions(BackendOptions):
    project_id: str = "openhqm"
    emulator_host: str | None = Field(None, description="host:port; else PUBSUB_EMULATOR_HOST; else Google")
    ack_deadline_s: int = Field(60, ge=10, le=600, description="lease per extension; crash: redelivery after")
    max_delivery_attempts: int = Field(
        100, ge=5, le=100, description="subscription dead-letter policy (also makes Pub/Sub count attempts)")
    timeout_s: float = Field(30.0, gt=0, description="admin and publish calls")


class PubSubDelivery(Delivery):
    def __init__(self, backend: PubSubBackend, queue: str, message: Message) -> None:
        super().__init__(queue, bytes(message.data), attempt=_attempt(message),
                         message_id=message.attributes.get(Wire.ID) or message.message_id,
                         key=message.ordering_key or None)
        self._backend = backend
        self._message = message

    async def _ack(self) -> None:
        await self._backend.topics.acknowledge(self.queue, self._message)

    async def _nack(self, delay_s: float | None) -> None:
        attributes = self._message.attributes
        if (self._message.delivery_attempt is None or (delay_s or 0) > MAX_ACK_DEADLINE_S
                or Wire.NOT_BEFORE in attributes):
            # Pub/Sub would not count this redelivery as we need (no policy, or deliveries spent on a
            # not-before wait), or cannot wait that long: a copy carries the count instead.
            await self._backend.repost(self.queue, self._message,
                                       Wire.retried(attributes, self.attempt, delay_s, time.time()))
        else:
            await self._backend.set_deadline(self.queue, self._message, max(0.0, delay_s or 0.0))

    async def _dead_letter(self, reason: str) -> None:
        copy = Wire.dead_lettered(self._message.attributes, reason) | {Wire.ID: self.message_id}
        await self._backend.topics.publish(dead_letter_queue(self.queue), self.body, copy, self.key)
        await self._backend.topics.acknowledge(self.queue, self._message)

    async def extend_lease(self, seconds: float) -> None:
        """The client library already extends the lease while the delivery is unsettled; this sets it now."""
        await self._backend.topics.modify_deadline(self.queue, self._message, min(seconds, MAX_ACK_DEADLINE_S))


class _Ended:
    """Put in a stream's buffer when the streaming pull stopped on an error."""


ENDED = _Ended()


class _Stream:
    """One streaming pull: the client's threads hand messages to asyncio, into a PrefetchBuffer."""

    def __init__(self, backend: PubSubBackend, queue: str, prefetch: int) -> None:
        self._backend = backend
        self._loop = asyncio.get_running_loop()
        self.queue = queue
        self.prefetch = prefetch
        self.buffer = PrefetchBuffer[Message | _Ended](prefetch + 1, self._release)
        self.reconnect = Reconnect()
        self.future: StreamingPullFuture | None = None
        self._handovers = Background()

    def start(self) -> None:
        flow = pubsub_v1.types.FlowControl(
            max_messages=self.prefetch, max_duration_per_lease_extension=self._backend.options.ack_deadline_s)
        with errors(f"subscribe to {self.queue}"):
            future = self._backend.topics.subscriber.subscribe(
                self._backend.topics.subscription_path(self.queue), callback=self._hand_over, flow_control=flow)
        future.add_done_callback(lambda _: self._hand_over(ENDED))
        self.future = future

    def _hand_over(self, item: Message | _Ended) -> None:
        """From the client's threads: into the buffer, on the event loop."""
        with contextlib.suppress(RuntimeError):  # the loop is gone: the library nacks the message
            self._loop.call_soon_threadsafe(self._put, item)

    def _put(self, item: Message | _Ended) -> None:
        if self.buffer.closed and isinstance(item, _Ended):
            return  # stopped on purpose
        self._handovers.spawn(self.buffer.put(item))

    async def _release(self, item: Message | _Ended) -> None:
        if isinstance(item, Message):
            with contextlib.suppress(BackendError):
                await self._backend.set_deadline(self.queue, item, 0)

    async def stop(self) -> None:
        """Cancel the pull; what it received but never handed out goes back at once."""
        await self.buffer.close()
        future, self.future = self.future, None
        if future is not None:
            future.cancel()
            with contextlib.suppress(Exception):
                await asyncio.to_thread(future.result, self._backend.options.timeout_s)
        await self._handovers.wait()

    def error(self) -> BaseException | None:
        if self.future is None or not self.future.done() or self.future.cancelled():
            return None
        error: BaseException | None = self.future.exception()
        return error


class PubSubBackend(Backend):
    name = "pubsub"
    options_model = PubSubOptions
    options: PubSubOptions
    capabilities = Capabilities(delay=Support.EMULATED, ordering_key=Support.NATIVE, lease_extension=True,
                                max_message_bytes=10_000_000, depth=False)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.emulator_host = self.options.emulator_host or os.environ.get("PUBSUB_EMULATOR_HOST") or None
        self.topics = PubSubTopics(
            self.options.project_id, self.emulator_host, ack_deadline_s=self.options.ack_deadline_s,
            max_delivery_attempts=self.options.max_delivery_attempts, timeout_s=self.options.timeout_s)
        self._streams: set[_Stream] = set()
        self._closed = asyncio.Event()

    @property
    def display_url(self) -> str:
        where = f"emulator {self.emulator_host}" if self.emulator_host else "pubsub.googleapis.com"
        return f"pubsub://{self.options.project_id} ({where})"

    async def connect(self) -> None:
        if not self.topics.connected:
            self.topics.open()
            self._closed.clear()

    async def close(self) -> None:
        if not self.topics.connected:
            return
        self._closed.set()
        # Every stream first: they end their consume() and hand back what they hold, with the clients.
        await asyncio.gather(*(stream.stop() for stream in list(self._streams)))
        self._streams.clear()
        await self.topics.close()

    async def ping(self) -> None:
        # Half the health timeout: a call to a vanished emulator can hang for its whole deadline, and
        # /ready must turn 503 well within 2 s of the failure.
        await self.topics.call(self.topics.publisher.list_topics, timeout=HEALTH_TIMEOUT_S / 2, retry=None,
                               request={"project": f"projects/{self.options.project_id}", "page_size": 1})

    async def publish(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                      delay_s: float | None = None, key: str | None = None,
                      message_id: str | None = None) -> None:
        await self.topics.publish(queue, body, Wire.published(message_id, delay_s, time.time()), key)

    async def repost(self, queue: str, message: Message, attributes: dict[str, str]) -> None:
        """Publish a copy of `message` with `attributes`, then ack it: a fresh delivery count."""
        await self.topics.publish(queue, bytes(message.data), attributes, message.ordering_key or None)
        await self.topics.acknowledge(queue, message)

    # -- consuming ---------------------------------------------------------------------------------

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]:
        await self.topics.ensure(queue)
        stream = _Stream(self, queue, prefetch)
        self._streams.add(stream)
        try:
            stream.start()
            while (item := await stream.buffer.get()) is not None:
                if isinstance(item, _Ended):
                    await self._restart(stream)
                    continue
                stream.reconnect.reset()
                delivery = await self._admit(queue, item)
                if delivery is not None:
                    yield delivery
        finally:
            self._streams.discard(stream)
            await stream.stop()

    async def _restart(self, stream: _Stream) -> None:
        """The streaming pull ended on an error: recreate what is missing and pull again, with backoff."""
        while not self._closed.is_set():
            error = stream.error()
            if isinstance(error, _FATAL):
                raise BackendError(f"pubsub: pulling {stream.queue} failed: {error}") from error
            log.warning("pubsub.stream_ended", queue=stream.queue, error=str(error),
                        retry_in_s=round(stream.reconnect.next_delay_s, 3))
            await stream.reconnect.wait(self._closed)
            if self._closed.is_set():
                return
            self.topics.forget(stream.queue)
            try:
                await self.topics.ensure(stream.queue)
                stream.start()
                return
            except BackendError as exc:
                log.warning("pubsub.resubscribe_failed", queue=stream.queue, error=str(exc))

    async def _admit(self, queue: str, message: Message) -> PubSubDelivery | None:
        """A delivery, or None when the message is not due yet and was put back to wait."""
        not_before = Wire.number(message.attributes.get(Wire.NOT_BEFORE))
        decision = admission(not_before, time.time(), max_hold_s=MAX_ACK_DEADLINE_S)
        if decision.action is Admit.DELIVER:
            # Its last delivery (Pub/Sub's policy then forwards it to Q.dlq, the emulator drops it) is
            # dead-lettered here, with a reason, so both end the same way and the bridge sees it.
            limit = self.options.max_delivery_attempts
            return await within_limit(PubSubDelivery(self, queue, message), message.delivery_attempt, limit - 1,
                                      f"queue.pubsub.max_delivery_attempts is {limit}")
        try:
            # No native delay: a message comes back at once, so a re-post follows a first hold of the
            # longest deadline, and waits never use up the dead-letter policy's delivery attempts.
            if decision.action is Admit.REPOST and (message.delivery_attempt or 0) > 1:
                await self.repost(queue, message, dict(message.attributes))
            else:
                await self.set_deadline(queue, message, min(decision.wait_s, MAX_ACK_DEADLINE_S))
        except BackendError as exc:
            log.warning("pubsub.delay_failed", queue=queue, error=str(exc))  # it comes back after its lease
        return None

    # -- settling ----------------------------------------------------------------------------------

    async def set_deadline(self, queue: str, message: Message, seconds: float) -> None:
        """Hand the message back to Pub/Sub, to be delivered again after `seconds`."""
        # Out of lease management first, so that the library's next extension cannot undo the deadline.
        message.drop()
        await self.topics.modify_deadline(queue, message, seconds)

    # -- the rest of the contract ------------------------------------------------------------------

    async def depth(self, queue: str) -> int:
        raise NotImplementedError(
            "pubsub cannot count waiting messages here: that needs the Cloud Monitoring metric "
            "subscription/num_undelivered_messages, which the emulator lacks (capabilities.depth is False)")

    async def purge(self, queue: str) -> int:
        """Delete and re-create the subscription (the emulator has no Seek). Pub/Sub does not say how many."""
        await self.topics.delete_subscription(queue)
        await self.topics.ensure(queue)
        return 0
