"""AWS SQS through aioboto3 (aiobotocore): long polling, visibility-timeout leases, redrive DLQs.

Connection: `queue.sqs.endpoint_url` (unset = AWS itself) and `queue.sqs.region`; credentials come
from the standard AWS chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN,
AWS_PROFILE, an IAM role). Options: `visibility_timeout_s` (the lease), `wait_time_s` (long poll,
at most 20), `max_receive_count` (redrive policy), `fifo`, `queue_name` (SQS name of the request
queue). `connect()` opens no connection: a wrong endpoint shows in `health()` and the first call.
Names (`sqs_queue_name`): characters outside [A-Za-z0-9_-] become `-`, so `<queue>.dlq` is
`<queue>-dlq`; a `.fifo` suffix stays last (`jobs.fifo.dlq` -> `jobs-dlq.fifo`); names longer than
80 characters are cut and end in a hash. Queues are created on first use (and again when they
vanish): the DLQ first (14-day retention), then the queue with a redrive policy pointing at it.
Native: delay up to 900 s (DelaySeconds); nack delay and extend_lease (ChangeMessageVisibility, at
most 12 h after the receive); attempt (ApproximateReceiveCount); dead letters (the redrive policy
moves a message after `max_receive_count` receives; `dead_letter()` sends a copy with an
`openhqm-reason` attribute to the DLQ, then deletes the original).
Emulated: longer delays carry an `openhqm-not-before` attribute; a consumer that receives such a
message early sends a copy with the remaining delay (at most 900 s per hop) and deletes the early
one; a nack delay beyond the visibility budget is sent the same way. Copies keep the message id and
carry `openhqm-attempts`, so attempts keep counting.
FIFO queues (name ending `.fifo`, or `fifo: true`): MessageGroupId = key (else the message id, so
keyless messages do not wait for each other), MessageDeduplicationId = message id. A FIFO consume
receives one message per call, so SQS's group lock hands out a key's messages one at a time, in
order, across all consumers. FIFO has no per-message delay: a delayed message is held invisible
until due, which holds back the rest of its group too. The capability flags describe standard
queues (no ordering key); see docs/backends/sqs.md. No priority.
Bodies that are not SQS-safe text travel base64-encoded (`openhqm-encoding` attribute).
On a crash: an unsettled message becomes visible again when its visibility timeout ends, one
receive (attempt) higher. Messages received but not yet handed out are released at once when a
consume() iterator ends, and count one receive more.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import math
import re
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any, TypeVar

import aioboto3
import aiohttp
import structlog
from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from botocore.exceptions import (  # type: ignore[import-untyped]
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from pydantic import Field

from openhqm.backends.base import Backend, BackendOptions, Capabilities, Delivery, Health, Support
from openhqm.constants import DEAD_LETTER_SUFFIX, DEFAULT_PRIORITY, dead_letter_queue
from openhqm.envelope import new_id
from openhqm.errors import BackendError, BackendUnavailable
from openhqm.redact import mask_url

if TYPE_CHECKING:
    from openhqm.config import Settings

log = structlog.get_logger(__name__)
T = TypeVar("T")

MAX_DELAY_S = 900  # SQS's DelaySeconds limit
MAX_VISIBILITY_S = 43_200  # 12 h, counted from the receive
HOLD_MAX_S = MAX_VISIBILITY_S - 60  # what we ask for at most, clear of that limit
MAX_BATCH = 10
MAX_NAME_LENGTH = 80
MAX_REASON_CHARS = 2000
DLQ_RETENTION_S = 1_209_600  # 14 days, the SQS maximum
MAX_MESSAGE_BYTES = 190 * 1024  # 256 KiB per message with attributes, after base64 (4/3)
MAX_CONNECTIONS = 50
CONNECT_TIMEOUT_S = 5.0
HEALTH_TIMEOUT_S = 2.0
OUTAGE_PAUSE_S = 1.0

ID_ATTR = "openhqm-id"
KEY_ATTR = "openhqm-key"
ENCODING_ATTR = "openhqm-encoding"
NOT_BEFORE_ATTR = "openhqm-not-before"  # epoch seconds; only where SQS cannot hold the delay itself
ATTEMPTS_ATTR = "openhqm-attempts"  # deliveries before this copy was sent
REASON_ATTR = "openhqm-reason"
_COPY_DROPS = (NOT_BEFORE_ATTR, ATTEMPTS_ATTR, KEY_ATTR)

_QUEUE_GONE = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
_ALREADY_EXISTS = frozenset({"QueueAlreadyExists", "QueueNameExists"})
_NOT_IN_FLIGHT = frozenset({"AWS.SimpleQueueService.MessageNotInflight", "MessageNotInflight"})
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")
_NOT_SQS_TEXT = re.compile("[\x00-\x08\x0b-\x1f\ufffe\uffff]")  # also \r, which XML would normalise
_FIFO_TOKEN = re.compile(r"[!-~]{1,128}")
_RECEIVE_ATTRIBUTES = ["ApproximateReceiveCount", "ApproximateFirstReceiveTimestamp"]



class SQSOptions(BackendOptions):
    endpoint_url: str | None = None
    region: str = "us-east-1"
    queue_name: str | None = Field(None, description="SQS name of the request queue (else derived from it)")
    visibility_timeout_s: int = Field(30, gt=0, le=43200)
    wait_time_s: int = Field(20, ge=1, le=20, description="long-poll wait of each ReceiveMessage")
    max_receive_count: int = Field(20, ge=1, le=1000, description="redrive policy: receives before the DLQ")
    fifo: bool = Field(False, description="make every queue FIFO (names ending .fifo are FIFO anyway)")


class SQSRequestFailed(BackendError):
    """SQS answered a request with an error; `codes` holds its error codes."""

    def __init__(self, message: str, codes: frozenset[str]) -> None:
        super().__init__(message)
        self.codes = codes


class QueueGone(SQSRequestFailed):
    """The SQS queue does not exist (deleted, or an emulator restarted); it is created again on use."""


@contextlib.contextmanager
def _errors(action: str) -> Iterator[None]:
    """The one place where botocore and aiohttp errors become openhqm errors."""
    try:
        yield
    except ClientError as exc:
        error = exc.response.get("Error", {})
        codes = frozenset({error.get("Code", ""), error.get("QueryErrorCode", "")} - {""})
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        text = f"sqs: {action}: {error.get('Code', '?')}: {error.get('Message', '')}"
        if codes & _QUEUE_GONE:
            raise QueueGone(text, codes) from exc
        if status >= 500 or any("Throttl" in code for code in codes):
            raise BackendUnavailable(text) from exc
        raise SQSRequestFailed(text, codes) from exc
    except NoCredentialsError as exc:
        raise BackendError(f"sqs: {action}: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                           "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an IAM role)") from exc
    except (BotoConnectionError, HTTPClientError, aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise BackendUnavailable(f"sqs: {action}: {exc}") from exc
    except BotoCoreError as exc:
        raise BackendError(f"sqs: {action}: {exc}") from exc


def sqs_queue_name(queue: str, *, fifo: bool = False, request_queue: str | None = None,
                   override: str | None = None) -> str:
    """The SQS name of an openhqm queue (see the module docstring); `override` renames the request queue."""
    dead = queue.endswith(DEAD_LETTER_SUFFIX)
    base = queue[: -len(DEAD_LETTER_SUFFIX)] if dead else queue
    if override and base == request_queue:
        base = override
    suffix = ".fifo" if fifo or base.endswith(".fifo") else ""
    stem = _NAME_UNSAFE.sub("-", base.removesuffix(".fifo")) + ("-dlq" if dead else "")
    room = MAX_NAME_LENGTH - len(suffix)
    if len(stem) > room:
        stem = f"{stem[: room - 9]}-{hashlib.sha256(stem.encode()).hexdigest()[:8]}"
    return stem + suffix


def _encode_body(body: bytes) -> tuple[str, str | None]:
    """SQS bodies are XML-safe, non-empty text; anything else travels base64-encoded."""
    if not body:
        return "-", "empty"
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return base64.b64encode(body).decode(), "base64"
    if _NOT_SQS_TEXT.search(text):
        return base64.b64encode(body).decode(), "base64"
    return text, None


def _decode_body(text: str, encoding: str | None) -> bytes:
    if encoding == "base64":
        return base64.b64decode(text)
    if encoding == "empty":
        return b""
    return text.encode()  # plain text, also what other producers send


def _read_attributes(message: dict[str, Any]) -> dict[str, str]:
    return {name: value["StringValue"] for name, value in message.get("MessageAttributes", {}).items()
            if "StringValue" in value}


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _fifo_token(value: str) -> str:
    """A valid MessageGroupId / MessageDeduplicationId: the value itself, else its hash."""
    return value if _FIFO_TOKEN.fullmatch(value) else hashlib.sha256(value.encode()).hexdigest()


class SQSDelivery(Delivery):
    def __init__(self, backend: SQSBackend, queue: str, url: str, message: dict[str, Any],
                 attributes: dict[str, str], attempt: int, received_at: float) -> None:
        body = _decode_body(message["Body"], attributes.get(ENCODING_ATTR))
        super().__init__(queue, body, attempt=attempt, message_id=attributes.get(ID_ATTR) or message["MessageId"],
                         key=attributes.get(KEY_ATTR))
        self._backend = backend
        self._url = url
        self._message = message
        self._attributes = attributes
        self._handle: str = message["ReceiptHandle"]
        self._received_at = received_at  # monotonic

    def _visibility_budget(self) -> int:
        """Seconds of invisibility this receive can still get (SQS counts 12 h from the receive)."""
        return max(0, int(HOLD_MAX_S - (time.monotonic() - self._received_at)))

    async def _ack(self) -> None:
        await self._delete()

    async def _delete(self) -> None:
        """Delete by this receive's handle. A handle the lease outlived (the message went out again)
        is refused by SQS: that late settle changes nothing, as with every backend's fencing."""
        try:
            await self._backend._call("delete_message", QueueUrl=self._url, ReceiptHandle=self._handle)
        except SQSRequestFailed as exc:
            if "ReceiptHandleIsInvalid" not in exc.codes:
                raise
            log.warning("sqs.late_settle", queue=self.queue, message_id=self.message_id)

    async def _nack(self, delay_s: float | None) -> None:
        seconds = math.ceil(max(0.0, delay_s or 0.0))
        if seconds <= self._visibility_budget():
            await self._backend._set_visibility(self._url, self._handle, seconds, missing_ok=True)
            return
        await self._backend._send_copy(self.queue, self._message, self._attributes, delay_s=seconds,
                                       attempts=self.attempt)
        await self._delete()

    async def _dead_letter(self, reason: str) -> None:
        attributes = {k: v for k, v in self._attributes.items() if k not in _COPY_DROPS}
        attributes[REASON_ATTR] = reason[:MAX_REASON_CHARS] or "-"
        await self._backend._send(dead_letter_queue(self.queue), self._message["Body"], attributes,
                                  key=self.key, dedup_id=self.message_id, delay_s=0)
        await self._delete()

    async def extend_lease(self, seconds: float) -> None:
        """Keep the message invisible `seconds` from now; capped at 12 h after the receive."""
        if self.settled is None:
            visibility = min(math.ceil(seconds), self._visibility_budget())
            await self._backend._set_visibility(self._url, self._handle, visibility)


class SQSBackend(Backend):
    name = "sqs"
    options_model = SQSOptions
    options: SQSOptions
    capabilities = Capabilities(
        priority=Support.NONE, delay=Support.NATIVE, ordering_key=Support.NONE, dead_letter=Support.NATIVE,
        lease_extension=True, durable=True, shared_between_processes=True,
        max_message_bytes=MAX_MESSAGE_BYTES, max_delay_s=None,
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)

        self._client: Any = None
        self._stack: AsyncExitStack | None = None
        self._urls: dict[str, str] = {}
        self._url_lock = asyncio.Lock()
        self._closed = asyncio.Event()
        self._waits: set[asyncio.Future[Any]] = set()

    @property
    def display_url(self) -> str:
        return mask_url(self.options.endpoint_url or f"https://sqs.{self.options.region}.amazonaws.com")

    def queue_name(self, queue: str) -> str:
        return sqs_queue_name(queue, fifo=self.options.fifo, request_queue=self.settings.queue.request_queue,
                              override=self.options.queue_name)

    def _is_fifo(self, queue: str) -> bool:
        return self.queue_name(queue).endswith(".fifo")

    async def connect(self) -> None:
        if self._client is not None:
            return
        config = AioConfig(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=self.options.wait_time_s + 10,
                           retries={"mode": "standard", "max_attempts": 3},
                           max_pool_connections=MAX_CONNECTIONS)
        stack = AsyncExitStack()
        session = aioboto3.Session(region_name=self.options.region)
        with _errors("create client"):
            self._client = await stack.enter_async_context(
                session.client("sqs", endpoint_url=self.options.endpoint_url, config=config))
        self._stack = stack
        self._closed.clear()

    async def close(self) -> None:
        if self._client is None:
            return
        self._closed.set()
        # Stop the long polls before the HTTP session under them goes away.
        waits = list(self._waits)
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
        self._client = None
        self._urls.clear()
        if self._stack is not None:
            await self._stack.aclose()

    # -- requests -------------------------------------------------------------------------------

    async def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        if self._client is None:
            raise BackendUnavailable("sqs backend is closed")
        with _errors(operation.replace("_", " ")):
            response: dict[str, Any] = await getattr(self._client, operation)(**kwargs)
        return response

    async def _on_queue(self, queue: str, operation: str, **kwargs: Any) -> dict[str, Any]:
        """Call `operation` on `queue`'s URL, creating the queue again once if it vanished."""
        url = await self._url(queue)
        try:
            return await self._call(operation, QueueUrl=url, **kwargs)
        except QueueGone:
            self._forget(queue)
        return await self._call(operation, QueueUrl=await self._url(queue), **kwargs)

    async def _set_visibility(self, url: str, handle: str, seconds: int, *, missing_ok: bool = False) -> None:
        try:
            await self._call("change_message_visibility", QueueUrl=url, ReceiptHandle=handle,
                             VisibilityTimeout=seconds)
        except SQSRequestFailed as exc:
            # A nacked message whose lease already ran out is visible again, as the nack asked.
            if not (missing_ok and exc.codes & _NOT_IN_FLIGHT):
                raise

    async def _unless_closed(self, awaitable: Awaitable[T]) -> T | None:
        """Await `awaitable`, or give up with None as soon as close() is called."""
        task = asyncio.ensure_future(awaitable)
        self._waits.add(task)
        try:
            await asyncio.wait({task})
        finally:
            self._waits.discard(task)
            task.cancel()
        return None if task.cancelled() else task.result()

    async def _pause(self) -> None:
        # SQS is unreachable and nothing will tell us when it is back: wait a moment, or for close().
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(OUTAGE_PAUSE_S):
                await self._closed.wait()

    # -- queues ---------------------------------------------------------------------------------

    def _forget(self, queue: str) -> None:
        self._urls.pop(queue, None)
        self._urls.pop(dead_letter_queue(queue), None)

    async def _url(self, queue: str) -> str:
        url = self._urls.get(queue)
        if url is None:
            async with self._url_lock:
                url = await self._existing_url(queue) or await self._create(queue)
                self._urls[queue] = url
        return url

    async def _existing_url(self, queue: str) -> str | None:
        if queue in self._urls:
            return self._urls[queue]
        try:
            response = await self._call("get_queue_url", QueueName=self.queue_name(queue))
        except QueueGone:
            return None
        url: str = response["QueueUrl"]
        self._urls[queue] = url
        return url

    async def _create(self, queue: str) -> str:
        name = self.queue_name(queue)
        attributes = {"VisibilityTimeout": str(self.options.visibility_timeout_s)}
        if name.endswith(".fifo"):
            attributes["FifoQueue"] = "true"
        if queue.endswith(DEAD_LETTER_SUFFIX):
            attributes["MessageRetentionPeriod"] = str(DLQ_RETENTION_S)
        else:
            dlq = dead_letter_queue(queue)
            dlq_url = await self._existing_url(dlq) or await self._create(dlq)
            self._urls[dlq] = dlq_url
            arn = (await self._call("get_queue_attributes", QueueUrl=dlq_url,
                                    AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": arn, "maxReceiveCount": str(self.options.max_receive_count)})
        try:
            response = await self._call("create_queue", QueueName=name, Attributes=attributes)
        except SQSRequestFailed as exc:
            if not exc.codes & _ALREADY_EXISTS:
                raise
            # Someone made it meanwhile, or earlier with other attributes: use it as it is.
            response = await self._call("get_queue_url", QueueName=name)
        log.info("sqs queue ready", queue=queue, sqs_name=name)
        url: str = response["QueueUrl"]
        return url

    # -- publishing -----------------------------------------------------------------------------

    async def publish(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                      delay_s: float | None = None, key: str | None = None,
                      message_id: str | None = None) -> None:
        message_id = message_id or new_id()
        text, encoding = _encode_body(body)
        attributes = {ID_ATTR: message_id}
        if encoding is not None:
            attributes[ENCODING_ATTR] = encoding
        await self._send(queue, text, attributes, key=key, dedup_id=message_id, delay_s=delay_s or 0.0)

    async def _send(self, queue: str, text: str, attributes: dict[str, str], *, key: str | None,
                    dedup_id: str, delay_s: float) -> None:
        fifo = self._is_fifo(queue)
        attributes = dict(attributes)
        request: dict[str, Any] = {"MessageBody": text}
        if key is not None:
            attributes[KEY_ATTR] = key
        if fifo:
            request["MessageGroupId"] = _fifo_token(key if key is not None else dedup_id)
            request["MessageDeduplicationId"] = _fifo_token(dedup_id)
        if delay_s > 0:
            if fifo or delay_s > MAX_DELAY_S:
                attributes[NOT_BEFORE_ATTR] = repr(time.time() + delay_s)
            if not fifo:  # FIFO queues reject a per-message delay
                request["DelaySeconds"] = min(math.ceil(delay_s), MAX_DELAY_S)
        request["MessageAttributes"] = {name: {"DataType": "String", "StringValue": value}
                                        for name, value in attributes.items()}
        await self._on_queue(queue, "send_message", **request)

    async def _send_copy(self, queue: str, message: dict[str, Any], attributes: dict[str, str], *,
                         delay_s: float, attempts: int) -> None:
        """Send `message` again, due in `delay_s`, counting `attempts` deliveries so far."""
        copy = {k: v for k, v in attributes.items() if k not in _COPY_DROPS}
        if attempts > 0:
            copy[ATTEMPTS_ATTR] = str(attempts)
        # A fresh deduplication id: on a FIFO queue the original's would swallow the copy.
        await self._send(queue, message["Body"], copy, key=attributes.get(KEY_ATTR), dedup_id=new_id(),
                         delay_s=delay_s)

    # -- consuming ------------------------------------------------------------------------------

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]:
        # FIFO: one message per receive, so SQS's group lock keeps a key's messages one at a time.
        count = 1 if self._is_fifo(queue) else max(1, min(prefetch, MAX_BATCH))
        url, received, received_at = "", list[dict[str, Any]](), 0.0
        try:
            while not self._closed.is_set():
                if received and time.monotonic() - received_at >= self.options.visibility_timeout_s:
                    received = []  # their visibility timeout ran out: SQS hands them out again
                if not received:
                    url, received = await self._receive(queue, count)
                    received_at = time.monotonic()
                    continue
                delivery = await self._admit(queue, url, received.pop(0), received_at)
                if delivery is not None:
                    yield delivery
        finally:
            if received:
                await self._release(url, received)

    async def _receive(self, queue: str, count: int) -> tuple[str, list[dict[str, Any]]]:
        """One long poll; no messages after close(), an outage pause, or a queue that vanished."""
        try:
            url = await self._url(queue)
            response = await self._unless_closed(self._call(
                "receive_message", QueueUrl=url, MaxNumberOfMessages=count,
                WaitTimeSeconds=self.options.wait_time_s, VisibilityTimeout=self.options.visibility_timeout_s,
                MessageAttributeNames=["All"], MessageSystemAttributeNames=_RECEIVE_ATTRIBUTES))
        except QueueGone:
            self._forget(queue)
            return "", []
        except BackendUnavailable as exc:
            if not self._closed.is_set():
                log.warning("sqs receive failed; retrying", queue=queue, error=str(exc))
                await self._pause()
            return "", []
        messages: list[dict[str, Any]] = (response or {}).get("Messages", [])
        return url, messages

    async def _admit(self, queue: str, url: str, message: dict[str, Any],
                     received_at: float) -> SQSDelivery | None:
        """The delivery for `message`, or None when it came before its not-before time (deferred)."""
        attributes = _read_attributes(message)
        system = message.get("Attributes", {})
        receives = int(system.get("ApproximateReceiveCount", "1"))
        earlier = int(_number(attributes.get(ATTEMPTS_ATTR)) or 0)
        not_before = _number(attributes.get(NOT_BEFORE_ATTR))
        now = time.time()
        if not_before is not None and not_before > now:
            await self._defer(queue, url, message, attributes, not_before - now, earlier + receives - 1)
            return None
        holds = 0
        if not_before is not None and self._is_fifo(queue):
            # Receives that only held the message until due are not deliveries (see _defer).
            first_s = (_number(system.get("ApproximateFirstReceiveTimestamp")) or now * 1000) / 1000
            holds = max(0, math.ceil((not_before - first_s) / HOLD_MAX_S))
        return SQSDelivery(self, queue, url, message, attributes, attempt=max(1, earlier + receives - holds),
                           received_at=received_at)

    async def _defer(self, queue: str, url: str, message: dict[str, Any], attributes: dict[str, str],
                     remaining_s: float, deliveries: int) -> None:
        handle = message["ReceiptHandle"]
        try:
            if self._is_fifo(queue):
                # Held invisible, it keeps its place in its group and holds the group back, in order.
                await self._set_visibility(url, handle, min(math.ceil(remaining_s), HOLD_MAX_S))
            else:
                await self._send_copy(queue, message, attributes, delay_s=remaining_s, attempts=deliveries)
                await self._call("delete_message", QueueUrl=url, ReceiptHandle=handle)
        except BackendError as exc:
            log.warning("sqs could not defer an early message; it returns after its visibility timeout",
                        queue=queue, error=str(exc))

    async def _release(self, url: str, messages: list[dict[str, Any]]) -> None:
        """Make received messages that were never handed out visible again now (best effort)."""
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"], "VisibilityTimeout": 0}
                   for i, m in enumerate(messages)]
        with contextlib.suppress(BackendError):
            for start in range(0, len(entries), MAX_BATCH):
                await self._call("change_message_visibility_batch", QueueUrl=url,
                                 Entries=entries[start:start + MAX_BATCH])

    # -- inspection -----------------------------------------------------------------------------

    async def _count(self, url: str) -> int:
        response = await self._call("get_queue_attributes", QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"])
        return sum(int(value) for value in response.get("Attributes", {}).values())

    async def depth(self, queue: str) -> int:
        """Visible plus delayed messages (SQS's approximate counts); 0 for a queue not yet created."""
        url = await self._existing_url(queue)
        if url is None:
            return 0
        try:
            return await self._count(url)
        except QueueGone:
            self._forget(queue)
            return 0

    async def purge(self, queue: str) -> int:
        """PurgeQueue (SQS allows one per queue per 60 s); returns the approximate count before."""
        url = await self._existing_url(queue)
        if url is None:
            return 0
        count = await self._count(url)
        await self._call("purge_queue", QueueUrl=url)
        return count

    async def health(self) -> Health:
        if self._client is None:
            return Health(False, "sqs backend is not connected")
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT_S):
                await self._call("get_queue_url", QueueName=self.queue_name(self.settings.queue.request_queue))
        except QueueGone:
            pass  # reachable and authorised; queues are made on first use
        except TimeoutError:
            return Health(False, f"sqs: no answer from {self.display_url} within {HEALTH_TIMEOUT_S} s")
        except Exception as exc:
            return Health(False, str(exc) if isinstance(exc, BackendError) else f"sqs: {exc!r}")
        return Health(True)
