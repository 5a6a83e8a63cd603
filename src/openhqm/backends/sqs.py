"""AWS SQS through aioboto3 (aiobotocore): long polling, visibility-timeout leases, redrive DLQs.

URL: none; `queue.sqs.endpoint_url` (unset = AWS) and `region`, credentials from the standard AWS
chain. Options (`queue.sqs.*`): `visibility_timeout_s` (the lease), `wait_time_s` (long poll, at
most 20), `max_receive_count` (redrive policy), `fifo`, `queue_name` (SQS name of the request queue).
Queue Q is the SQS queue `sqs_queue_name(Q)` (Q.dlq is Q-dlq), made with a redrive policy to its
DLQ on first use (see sqs_queues.py). Details: docs/backends/sqs.md.
Native: delay up to 900 s; nack delay and extend_lease (visibility, at most 12 h after the receive);
attempt (ApproximateReceiveCount); dead letters (redrive after `max_receive_count` receives, and
`dead_letter()` sends a copy with `openhqm-reason`). No priority.
Emulated (`kit.admission`): longer delays carry `openhqm-not-before`; an early receive is sent again
with the time left (at most 900 s a hop), as is a nack delay beyond the visibility budget; copies
carry `openhqm-attempt`, so attempts keep counting. FIFO queues (`.fifo` names or `fifo: true`): key
= MessageGroupId, message id = MessageDeduplicationId, one message per receive (SQS hands out a key's
messages one at a time, in order); a delayed message is held invisible until due, holding back its
group. The capability flags describe standard queues. Bodies that are not SQS-safe text travel
base64-encoded (`openhqm-encoding`).
On a crash: an unsettled message comes back when its visibility timeout ends, one receive higher.
Messages received but not handed out go back at once when consume() ends or the backend closes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
import re
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import structlog
from pydantic import Field

from openhqm.backends.base import Backend, BackendOptions, Capabilities, Delivery, Support
from openhqm.backends.kit import Admit, Closing, PrefetchBuffer, Wire, admission
from openhqm.backends.sqs_queues import QueueGone, SQSQueues, sqs_queue_name
from openhqm.constants import DEFAULT_PRIORITY, dead_letter_queue
from openhqm.envelope import new_id
from openhqm.errors import BackendError, BackendUnavailable
from openhqm.policies import Reconnect
from openhqm.redact import mask_url

if TYPE_CHECKING:
    from openhqm.config import Settings

log = structlog.get_logger(__name__)

MAX_DELAY_S = 900  # SQS's DelaySeconds limit
MAX_VISIBILITY_S = 43_200  # 12 h, counted from the receive
HOLD_MAX_S = MAX_VISIBILITY_S - 60  # what we ask for at most, clear of that limit
MAX_BATCH = 10
LEASE_MARGIN_S = 1.0  # what a receive's response may take to reach us, at most
MAX_MESSAGE_BYTES = 190 * 1024  # 256 KiB per message with attributes, after base64 (4/3)

ENCODING_ATTR = Wire.PREFIX + "encoding"  # SQS only: how a body that is not SQS-safe text travels

_NOT_SQS_TEXT = re.compile("[\x00-\x08\x0b-\x1f\ufffe\uffff]")  # also \r, which XML would normalise
_FIFO_TOKEN = re.compile(r"[!-~]{1,128}")
_RECEIVE_ATTRIBUTES = ["ApproximateReceiveCount", "ApproximateFirstReceiveTimestamp"]

Received = tuple[str, dict[str, Any], float]  # queue URL, the SQS message, monotonic receive time


class SQSOptions(BackendOptions):
    endpoint_url: str | None = None
    region: str = "us-east-1"
    queue_name: str | None = Field(None, description="SQS name of the request queue (else derived from it)")
    visibility_timeout_s: int = Field(30, gt=0, le=43200)
    wait_time_s: int = Field(20, ge=1, le=20, description="long-poll wait of each ReceiveMessage")
    max_receive_count: int = Field(20, ge=1, le=1000, description="redrive policy: receives before the DLQ")
    fifo: bool = Field(False, description="make every queue FIFO (names ending .fifo are FIFO anyway)")


def _encode_body(body: bytes) -> tuple[str, str | None]:
    """SQS bodies are XML-safe, non-empty text; anything else travels base64-encoded."""
    if not body:
        return "-", "empty"
    with contextlib.suppress(UnicodeDecodeError):
        if not _NOT_SQS_TEXT.search(text := body.decode()):
            return text, None
    return base64.b64encode(body).decode(), "base64"


def _decode_body(text: str, encoding: str | None) -> bytes:
    if encoding == "base64":
        return base64.b64decode(text)
    if encoding == "empty":
        return b""
    return text.encode()  # plain text, also what other producers send


def _read_attributes(message: dict[str, Any]) -> dict[str, str]:
    return {name: value["StringValue"] for name, value in message.get("MessageAttributes", {}).items()
            if "StringValue" in value}


def _fifo_token(value: str) -> str:
    """A valid MessageGroupId / MessageDeduplicationId: the value itself, else its hash."""
    return value if _FIFO_TOKEN.fullmatch(value) else hashlib.sha256(value.encode()).hexdigest()


class SQSDelivery(Delivery):
    def __init__(self, backend: SQSBackend, queue: str, received: Received, attributes: dict[str, str],
                 attempt: int) -> None:
        self._url, self._message, self._received_at = received
        body = _decode_body(self._message["Body"], attributes.get(ENCODING_ATTR))
        super().__init__(queue, body, attempt=attempt,
                         message_id=attributes.get(Wire.ID) or self._message["MessageId"],
                         key=attributes.get(Wire.KEY))
        self._backend = backend
        self._attributes = attributes
        self._handle: str = self._message["ReceiptHandle"]
        # Past it, a settle changes nothing (`Delivery._late`): moto deletes even by a stale receipt handle.
        self.lease_until = backend._lease_end(self._received_at)

    def _visibility_budget(self) -> int:
        """Seconds of invisibility this receive can still get (SQS counts 12 h from the receive)."""
        return max(0, int(HOLD_MAX_S - (time.monotonic() - self._received_at)))

    async def _ack(self) -> None:
        await self._backend.queues.delete(self._url, self._handle)

    async def _nack(self, delay_s: float | None) -> None:
        seconds = math.ceil(max(0.0, delay_s or 0.0))
        if seconds <= self._visibility_budget():
            await self._backend.queues.set_visibility(self._url, self._handle, seconds, missing_ok=True)
            return
        await self._backend._repost(self.queue, self._url, self._message,
                                    Wire.retried(self._attributes, self.attempt, delay_s, time.time()))

    async def _dead_letter(self, reason: str) -> None:
        await self._backend._send(dead_letter_queue(self.queue), self._message["Body"],
                                  Wire.dead_lettered(self._attributes, reason), dedup_id=self.message_id)
        await self._backend.queues.delete(self._url, self._handle)

    async def extend_lease(self, seconds: float) -> None:
        """Keep the message invisible `seconds` from now; capped at 12 h after the receive."""
        if self.settled is None and not self._late():
            now, visibility = time.monotonic(), min(math.ceil(seconds), self._visibility_budget())
            await self._backend.queues.set_visibility(self._url, self._handle, visibility)
            self.lease_until = now + visibility


class SQSBackend(Backend):
    name = "sqs"
    options_model = SQSOptions
    options: SQSOptions
    capabilities = Capabilities(delay=Support.NATIVE, dead_letter=Support.NATIVE, lease_extension=True,
                                max_message_bytes=MAX_MESSAGE_BYTES)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.queues = SQSQueues(self.queue_name, visibility_timeout_s=self.options.visibility_timeout_s,
                                max_receive_count=self.options.max_receive_count)
        self._closed = Closing()
        self._buffers: set[PrefetchBuffer[Received]] = set()

    @property
    def lease_s(self) -> float | None:
        return float(self.options.visibility_timeout_s)

    @property
    def display_url(self) -> str:
        return mask_url(self.options.endpoint_url or f"https://sqs.{self.options.region}.amazonaws.com")

    def queue_name(self, queue: str) -> str:
        return sqs_queue_name(queue, fifo=self.options.fifo, request_queue=self.settings.queue.request_queue,
                              override=self.options.queue_name)

    def _is_fifo(self, queue: str) -> bool:
        return self.queue_name(queue).endswith(".fifo")

    def _lease_end(self, received_at: float) -> float:
        """The earliest a receive's visibility may end: SQS started its clock before ours read
        `received_at`, by as much as the response took to arrive (LEASE_MARGIN_S at most)."""
        lease_s = self.options.visibility_timeout_s
        return received_at + lease_s - min(LEASE_MARGIN_S, lease_s / 4)

    async def connect(self) -> None:
        if not self.queues.connected:
            await self.queues.open(endpoint_url=self.options.endpoint_url, region=self.options.region,
                                   read_timeout_s=self.options.wait_time_s + 10)
            self._closed.clear()

    async def close(self) -> None:
        if not self.queues.connected:
            return
        # Stop the long polls, then hand back what was received but not handed out, and only then
        # close the HTTP session that both of them use.
        await self._closed.close()
        await asyncio.gather(*(buffer.close() for buffer in list(self._buffers)))
        await self.queues.close()

    async def ping(self) -> None:
        with contextlib.suppress(QueueGone):  # reachable and authorised; queues are made on first use
            await self.queues.call("get_queue_url", QueueName=self.queue_name(self.settings.queue.request_queue))

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                      delay_s: float | None = None, key: str | None = None,
                      message_id: str | None = None) -> None:
        text, encoding = _encode_body(body)
        attributes = Wire.published(message_id, delay_s, time.time(), key)
        if encoding is not None:
            attributes[ENCODING_ATTR] = encoding
        await self._send(queue, text, attributes, dedup_id=attributes[Wire.ID])

    async def _send(self, queue: str, text: str, attributes: dict[str, str], *, dedup_id: str) -> None:
        """SendMessage with openhqm's attributes; a not-before time SQS can hold becomes DelaySeconds."""
        attributes = dict(attributes)
        request: dict[str, Any] = {"MessageBody": text}
        not_before = Wire.number(attributes.get(Wire.NOT_BEFORE))
        if self._is_fifo(queue):  # no per-message delay: consumers hold early messages (see _admit)
            key = attributes.get(Wire.KEY)
            request["MessageGroupId"] = _fifo_token(key if key is not None else dedup_id)
            request["MessageDeduplicationId"] = _fifo_token(dedup_id)
        elif not_before is not None:
            delay_s = not_before - time.time()
            if delay_s <= MAX_DELAY_S:
                del attributes[Wire.NOT_BEFORE]  # SQS holds it all the way
            request["DelaySeconds"] = min(max(0, math.ceil(delay_s)), MAX_DELAY_S)
        request["MessageAttributes"] = {name: {"DataType": "String", "StringValue": value}
                                        for name, value in attributes.items()}
        await self.queues.on_queue(queue, "send_message", **request)

    async def _repost(self, queue: str, url: str, message: dict[str, Any], copy: dict[str, str]) -> None:
        """Send `message` again with the attributes `copy` (its next attempt and due time), then delete it."""
        # A fresh deduplication id: on a FIFO queue the original's would swallow the copy.
        await self._send(queue, message["Body"], copy, dedup_id=new_id())
        await self.queues.delete(url, message["ReceiptHandle"])

    # -- consuming ------------------------------------------------------------------------------

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]:
        # FIFO: one message per receive, so SQS's group lock keeps a key's messages one at a time.
        count = 1 if self._is_fifo(queue) else max(1, min(prefetch, MAX_BATCH))
        received = PrefetchBuffer[Received](count, self._release)
        self._buffers.add(received)
        reconnect = Reconnect()
        try:
            while not self._closed.is_set():
                if not len(received):
                    try:
                        await self._receive(queue, count, received)
                    except QueueGone:
                        self.queues.forget(queue)  # made again by the next receive
                    except BackendUnavailable as exc:
                        log.warning("sqs receive failed; retrying", queue=queue, error=str(exc))
                        await reconnect.wait(self._closed)
                    else:
                        reconnect.reset()
                    continue
                item = await received.get()
                if item is None:
                    return
                if time.monotonic() >= self._lease_end(item[2]):
                    continue  # its visibility timeout ran out: SQS hands it out again
                delivery = await self._admit(queue, item)
                if delivery is not None:
                    yield delivery
        finally:
            self._buffers.discard(received)
            await received.close()

    async def _receive(self, queue: str, count: int, into: PrefetchBuffer[Received]) -> None:
        """One long poll (given up at close())."""
        url = await self.queues.url(queue)
        response = await self._closed.unless_closed(self.queues.call(
            "receive_message", QueueUrl=url, MaxNumberOfMessages=count,
            WaitTimeSeconds=self.options.wait_time_s, VisibilityTimeout=self.options.visibility_timeout_s,
            MessageAttributeNames=["All"], MessageSystemAttributeNames=_RECEIVE_ATTRIBUTES))
        received_at = time.monotonic()
        for message in (response or {}).get("Messages", []):
            await into.put((url, message, received_at))

    async def _admit(self, queue: str, received: Received) -> SQSDelivery | None:
        """The delivery for a received message, or None when it came before its not-before time."""
        url, message, _ = received
        attributes = _read_attributes(message)
        system = message.get("Attributes", {})
        not_before = Wire.number(attributes.get(Wire.NOT_BEFORE))
        now, fifo = time.time(), self._is_fifo(queue)
        holds = 0
        if not_before is not None and fifo:
            # Receives that only held the message until due are not deliveries (see below).
            first_s = (Wire.number(system.get("ApproximateFirstReceiveTimestamp")) or now * 1000) / 1000
            holds = max(0, math.ceil((not_before - first_s) / HOLD_MAX_S))
        receives = int(system.get("ApproximateReceiveCount", "1"))
        attempt = max(1, Wire.attempt(attributes.get(Wire.ATTEMPT)) - 1 + receives - holds)
        # A standard queue holds nothing it received: both a hold and a re-post are a copy that SQS
        # delays natively (up to 900 s). A FIFO queue cannot re-post without losing the message's
        # place in its group, so it holds, invisible, in steps of at most 12 h.
        decision = admission(not_before, now, max_hold_s=None if fifo else MAX_DELAY_S)
        if decision.action is Admit.DELIVER:
            return SQSDelivery(self, queue, received, attributes, attempt)
        try:
            if fifo:
                hold_s = min(math.ceil(decision.wait_s), HOLD_MAX_S)
                await self.queues.set_visibility(url, message["ReceiptHandle"], hold_s)
            else:
                await self._repost(queue, url, message, attributes | {Wire.ATTEMPT: str(attempt)})
        except BackendError as exc:
            log.warning("sqs could not defer an early message; it returns after its visibility timeout",
                        queue=queue, error=str(exc))
        return None

    async def _release(self, received: Received) -> None:
        """Make a received message that was never handed out visible again now."""
        url, message, _ = received
        await self.queues.set_visibility(url, message["ReceiptHandle"], 0, missing_ok=True)

    # -- inspection -----------------------------------------------------------------------------

    async def depth(self, queue: str) -> int:
        """Visible plus delayed messages (SQS's approximate counts); 0 for a queue not yet created."""
        url = await self.queues.existing_url(queue)
        if url is None:
            return 0
        try:
            return await self.queues.count(url)
        except QueueGone:
            self.queues.forget(queue)
            return 0

    async def purge(self, queue: str) -> int:
        """PurgeQueue (SQS allows one per queue per 60 s); returns the approximate count before."""
        url = await self.queues.existing_url(queue)
        if url is None:
            return 0
        count = await self.queues.count(url)
        await self.queues.call("purge_queue", QueueUrl=url)
        return count
