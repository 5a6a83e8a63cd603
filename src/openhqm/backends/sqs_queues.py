"""The SQS API as the sqs backend uses it: one aiobotocore client, its errors mapped, queues by name.

Queue Q is the SQS queue `sqs_queue_name(Q)`: characters outside [A-Za-z0-9_-] become `-`, so
`Q.dlq` is `Q-dlq`; a `.fifo` suffix stays last (`jobs.fifo.dlq` -> `jobs-dlq.fifo`); names longer
than 80 characters are cut and end in a hash. Queues are created on first use, and again when they
vanish (moto keeps them in memory): the DLQ first (14-day retention), then Q with a redrive policy
pointing at it. An existing queue is used as it is, so a deployment may create its queues itself and
grant no CreateQueue.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import re
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import aioboto3
import aiohttp
import structlog
from aiobotocore.config import AioConfig  # type: ignore[import-untyped]
from botocore import exceptions as boto  # type: ignore[import-untyped]

from openhqm.backends.kit import ErrorMap, connected
from openhqm.constants import DEAD_LETTER_SUFFIX, dead_letter_queue
from openhqm.errors import BackendError, BackendUnavailable, OpenHQMError

log = structlog.get_logger(__name__)

MAX_NAME_LENGTH = 80
DLQ_RETENTION_S = 1_209_600  # 14 days, the SQS maximum
MAX_CONNECTIONS = 50
CONNECT_TIMEOUT_S = 5.0

_QUEUE_GONE = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})
_ALREADY_EXISTS = frozenset({"QueueAlreadyExists", "QueueNameExists"})
_NOT_IN_FLIGHT = frozenset({"AWS.SimpleQueueService.MessageNotInflight", "MessageNotInflight"})
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


class SQSRequestFailed(BackendError):
    """SQS answered a request with an error; `codes` holds its error codes."""

    def __init__(self, message: str, codes: frozenset[str]) -> None:
        super().__init__(message)
        self.codes = codes


class QueueGone(SQSRequestFailed):
    """The SQS queue does not exist (deleted, or an emulator restarted); it is created again on use."""


def _refine(exc: BaseException, action: str) -> OpenHQMError | None:
    """SQS's answers carry error codes: a vanished queue and throttling need their own errors."""
    if isinstance(exc, boto.NoCredentialsError):
        return BackendError(f"sqs: {action}: no AWS credentials (set AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an IAM role)")
    if not isinstance(exc, boto.ClientError):
        return None
    error = exc.response.get("Error", {})
    codes = frozenset({error.get("Code", ""), error.get("QueryErrorCode", "")} - {""})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    text = f"sqs: {action}: {error.get('Code', '?')}: {error.get('Message', '')}"
    if codes & _QUEUE_GONE:
        return QueueGone(text, codes)
    if status >= 500 or any("Throttl" in code for code in codes):
        return BackendUnavailable(text)
    return SQSRequestFailed(text, codes)


errors = ErrorMap("sqs", [
    ((boto.ConnectionError, boto.HTTPClientError, aiohttp.ClientError, OSError), BackendUnavailable),
    (boto.BotoCoreError, BackendError),
], refine=_refine)


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


class SQSQueues:
    """One client, and the URLs of openhqm's queues on it (created as the module docstring says)."""

    def __init__(self, name_of: Callable[[str], str], *, visibility_timeout_s: int, max_receive_count: int):
        self.name_of = name_of
        self._visibility_timeout_s = visibility_timeout_s
        self._max_receive_count = max_receive_count
        self._client: Any = None
        self._stack = AsyncExitStack()
        self._urls: dict[str, str] = {}
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._client is not None

    async def open(self, *, endpoint_url: str | None, region: str, read_timeout_s: float) -> None:
        """Make the client; no connection yet (a wrong endpoint shows in the first call)."""
        config = AioConfig(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=read_timeout_s,
                           retries={"mode": "standard", "total_max_attempts": 1}, max_pool_connections=MAX_CONNECTIONS)
        with errors("create client"):
            self._client = await self._stack.enter_async_context(
                aioboto3.Session(region_name=region).client("sqs", endpoint_url=endpoint_url, config=config))

    async def close(self) -> None:
        self._client = None
        self._urls.clear()
        await self._stack.aclose()

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        client = connected("sqs", self._client)
        with errors(operation.replace("_", " ")):
            response: dict[str, Any] = await getattr(client, operation)(**kwargs)
        return response

    async def on_queue(self, queue: str, operation: str, **kwargs: Any) -> dict[str, Any]:
        """Call `operation` on `queue`'s URL, creating the queue again once if it vanished."""
        try:
            return await self.call(operation, QueueUrl=await self.url(queue), **kwargs)
        except QueueGone:
            self.forget(queue)
        return await self.call(operation, QueueUrl=await self.url(queue), **kwargs)

    async def set_visibility(self, url: str, handle: str, seconds: int, *, missing_ok: bool = False) -> None:
        """`missing_ok`: a message no longer in flight (its lease ran out) is visible already."""
        try:
            await self.call("change_message_visibility", QueueUrl=url, ReceiptHandle=handle,
                            VisibilityTimeout=seconds)
        except SQSRequestFailed as exc:
            if not (missing_ok and exc.codes & _NOT_IN_FLIGHT):
                raise

    async def delete(self, url: str, handle: str) -> None:
        """Delete by a receive's handle; one SQS refuses (the message was received again since) is
        a late settle that changes nothing."""
        try:
            await self.call("delete_message", QueueUrl=url, ReceiptHandle=handle)
        except SQSRequestFailed as exc:
            if "ReceiptHandleIsInvalid" not in exc.codes:
                raise
            log.warning("sqs.stale_receipt_handle", url=url)

    async def count(self, url: str) -> int:
        """Visible plus delayed messages (SQS's approximate counts)."""
        response = await self.call("get_queue_attributes", QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesDelayed"])
        return sum(int(value) for value in response.get("Attributes", {}).values())

    def forget(self, queue: str) -> None:
        self._urls.pop(queue, None)
        self._urls.pop(dead_letter_queue(queue), None)

    async def url(self, queue: str) -> str:
        """The queue's URL, creating the queue (and its DLQ) when missing."""
        if queue not in self._urls:
            async with self._lock:
                if await self.existing_url(queue) is None:
                    self._urls[queue] = await self._create(queue)
        return self._urls[queue]

    async def existing_url(self, queue: str) -> str | None:
        if queue not in self._urls:
            with contextlib.suppress(QueueGone):
                response = await self.call("get_queue_url", QueueName=self.name_of(queue))
                self._urls[queue] = response["QueueUrl"]
        return self._urls.get(queue)

    async def _create(self, queue: str) -> str:
        name = self.name_of(queue)
        attributes = {"VisibilityTimeout": str(self._visibility_timeout_s)}
        if name.endswith(".fifo"):
            attributes["FifoQueue"] = "true"
        if queue.endswith(DEAD_LETTER_SUFFIX):
            attributes["MessageRetentionPeriod"] = str(DLQ_RETENTION_S)
        else:
            dlq = dead_letter_queue(queue)
            if await self.existing_url(dlq) is None:
                self._urls[dlq] = await self._create(dlq)
            arn = (await self.call("get_queue_attributes", QueueUrl=self._urls[dlq],
                                   AttributeNames=["QueueArn"]))["Attributes"]["QueueArn"]
            attributes["RedrivePolicy"] = json.dumps(
                {"deadLetterTargetArn": arn, "maxReceiveCount": str(self._max_receive_count)})
        try:
            response = await self.call("create_queue", QueueName=name, Attributes=attributes)
        except SQSRequestFailed as exc:
            if not exc.codes & _ALREADY_EXISTS:
                raise
            # Someone made it meanwhile, or earlier with other attributes: use it as it is.
            response = await self.call("get_queue_url", QueueName=name)
        log.info("sqs queue ready", queue=queue, sqs_name=name)
        return str(response["QueueUrl"])
