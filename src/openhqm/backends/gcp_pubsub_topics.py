"""The Pub/Sub API as the pubsub backend uses it: its two clients, their errors mapped, a topic and a
subscription per queue.

Queue Q is a topic and a subscription with the same id (`resource_id`), created on first use: topic
Q.dlq and its subscription first, then topic Q and subscription Q with message ordering, the ack
deadline and a dead-letter policy to Q.dlq (which also makes Pub/Sub count deliveries). Existing
ones are used as they are; vanished ones (an emulator restart) are created again.
The clients block: every call runs in a thread, bounded by `timeout_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import re
from collections.abc import Callable
from typing import Any, TypeVar

import grpc  # type: ignore[import-untyped]
from google.api_core import exceptions as gexc
from google.auth.exceptions import DefaultCredentialsError
from google.cloud import pubsub_v1
from google.cloud.pubsub_v1.subscriber.message import Message
from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

from openhqm.backends.kit import ErrorMap, connected, percent_encoded
from openhqm.constants import DEAD_LETTER_SUFFIX, dead_letter_queue
from openhqm.errors import BackendError, BackendUnavailable, ConfigError, OpenHQMError

_GRPC_OPTIONS = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]
# A channel that lost its connection tries again after a backoff (gRPC's default: 1 s, x1.6 up to
# 120 s, 20 % jitter), and /ready follows the channel: capped at 1 s, it answers 200 within about
# 1.2 s of Pub/Sub's return (issue 14 asks for 2 s), at a cost of one connect attempt a second.
# grpc.min_reconnect_backoff_ms stays at its 20 s: gRPC core uses it as the connect attempt's timeout.
RECONNECT_OPTIONS = [("grpc.initial_reconnect_backoff_ms", 250), ("grpc.max_reconnect_backoff_ms", 1000)]
_ALLOWED = re.compile(r"[A-Za-z0-9\-_.~+]")

T = TypeVar("T")


def _refine(exc: BaseException, action: str) -> OpenHQMError | None:
    if isinstance(exc, DefaultCredentialsError):
        return ConfigError(f"pubsub: no Google credentials to {action}; set GOOGLE_APPLICATION_CREDENTIALS, "
                           "or queue.pubsub.emulator_host for the emulator")
    return None


errors = ErrorMap("pubsub", [
    ((gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.RetryError, gexc.Aborted, gexc.InternalServerError),
     BackendUnavailable),
    ((gexc.GoogleAPICallError, ValueError, RuntimeError), BackendError),
], refine=_refine)


def resource_id(queue: str) -> str:
    """Topic and subscription id of `queue`: as is when Pub/Sub allows it, else percent-encoded.

    Every character outside [A-Za-z0-9-_.~+] becomes %XX (UTF-8); an id that would not start with a
    letter, or would start with "goog", gets the prefix "q%-" (never produced by the encoding).
    """
    encoded = percent_encoded(queue, _ALLOWED)
    if not encoded[:1].isalpha() or not encoded.isascii() or encoded.lower().startswith("goog"):
        encoded = "q%-" + encoded
    if len(encoded) > 255 or len(encoded) < 3:
        raise ConfigError(f"queue name {queue!r} gives the Pub/Sub id {encoded!r}: ids have 3 to 255 characters")
    return encoded


class PubSubTopics:
    """The clients, and the topics and subscriptions of openhqm's queues (see the module docstring)."""

    def __init__(self, project_id: str, emulator_host: str | None, *, ack_deadline_s: int,
                 max_delivery_attempts: int, timeout_s: float) -> None:
        self.project_id = project_id
        self.emulator_host = emulator_host
        self.timeout_s = timeout_s
        self._ack_deadline_s = ack_deadline_s
        self._max_delivery_attempts = max_delivery_attempts
        self._publisher: pubsub_v1.PublisherClient | None = None
        self._subscriber: pubsub_v1.SubscriberClient | None = None
        self._ensured: set[str] = set()
        self._locks: dict[str, asyncio.Lock] = {}

    # -- clients ----------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._publisher is not None

    def _client_options(self, transport: Callable[..., Any]) -> dict[str, Any]:
        if self.emulator_host:
            # An explicit insecure channel instead of setting PUBSUB_EMULATOR_HOST for the whole process.
            channel = grpc.insecure_channel(self.emulator_host, options=[*_GRPC_OPTIONS, *RECONNECT_OPTIONS])
            return {"transport": transport(channel=channel)}

        def secure_channel(host: str, **kwargs: Any) -> Any:  # the library's own, plus the reconnect backoff
            options = [*kwargs.pop("options", ()), *RECONNECT_OPTIONS]
            return transport.create_channel(host, options=options, **kwargs)  # type: ignore[attr-defined]

        # A callable transport: the client still resolves the endpoint and credentials, then calls it.
        return {"transport": functools.partial(transport, channel=secure_channel)}

    def open(self) -> None:
        with errors("create the clients"):
            self._publisher = pubsub_v1.PublisherClient(
                publisher_options=pubsub_v1.types.PublisherOptions(enable_message_ordering=True),
                **self._client_options(PublisherGrpcTransport))
            self._subscriber = pubsub_v1.SubscriberClient(**self._client_options(SubscriberGrpcTransport))

    async def close(self) -> None:
        publisher, subscriber = self._publisher, self._subscriber
        self._publisher = self._subscriber = None
        self._ensured.clear()
        if publisher is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(publisher.stop)  # sends what is batched, then refuses more
            with contextlib.suppress(Exception):
                publisher.transport.close()
        if subscriber is not None:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(subscriber.close)

    @property
    def publisher(self) -> pubsub_v1.PublisherClient:
        return connected("pubsub", self._publisher)

    @property
    def subscriber(self) -> pubsub_v1.SubscriberClient:
        return connected("pubsub", self._subscriber)

    async def call(self, func: Callable[..., T], /, **kwargs: Any) -> T:
        """A blocking client call, off the event loop, bounded by `timeout_s` unless given a timeout."""
        result: T = await asyncio.to_thread(func, **{"timeout": self.timeout_s, **kwargs})
        return result

    # -- topics and subscriptions -------------------------------------------------------------------

    def topic_path(self, queue: str) -> str:
        return f"projects/{self.project_id}/topics/{resource_id(queue)}"

    def subscription_path(self, queue: str) -> str:
        return f"projects/{self.project_id}/subscriptions/{resource_id(queue)}"

    def forget(self, queue: str) -> None:
        """Check `queue`'s topics and subscriptions again on next use (they vanished)."""
        self._ensured.discard(queue)
        self._ensured.discard(dead_letter_queue(queue))

    async def ensure(self, queue: str) -> None:
        """Create what `queue` needs, once per connection: the dead-letter side first (the policy names it)."""
        if queue in self._ensured:
            return
        async with self._locks.setdefault(queue, asyncio.Lock()):
            if queue in self._ensured:
                return
            is_dead_letter = queue.endswith(DEAD_LETTER_SUFFIX)
            if not is_dead_letter:
                await self.ensure(dead_letter_queue(queue))
            with errors(f"create topic {self.topic_path(queue)}"), contextlib.suppress(gexc.AlreadyExists):
                await self.call(self.publisher.create_topic, name=self.topic_path(queue))
            request: dict[str, Any] = {
                "name": self.subscription_path(queue), "topic": self.topic_path(queue),
                "ack_deadline_seconds": self._ack_deadline_s, "enable_message_ordering": True}
            if not is_dead_letter:
                request["dead_letter_policy"] = {"dead_letter_topic": self.topic_path(dead_letter_queue(queue)),
                                                 "max_delivery_attempts": self._max_delivery_attempts}
            with errors(f"create subscription {request['name']}"), contextlib.suppress(gexc.AlreadyExists):
                await self.call(self.subscriber.create_subscription, request=request)
            self._ensured.add(queue)

    async def delete_subscription(self, queue: str) -> None:
        with errors(f"delete {self.subscription_path(queue)}"), contextlib.suppress(gexc.NotFound):
            await self.call(self.subscriber.delete_subscription, subscription=self.subscription_path(queue))
        self._ensured.discard(queue)

    # -- messages ------------------------------------------------------------------------------------

    async def publish(self, queue: str, body: bytes, attributes: dict[str, str], key: str | None) -> None:
        """Return once Pub/Sub has stored the message; a vanished topic is created again, once."""
        with errors(f"publish to {self.topic_path(queue)}"):
            await self.ensure(queue)
            try:
                await self._publish_once(queue, body, attributes, key)
            except gexc.NotFound:
                self.forget(queue)
                await self.ensure(queue)
                await self._publish_once(queue, body, attributes, key)

    async def _publish_once(self, queue: str, body: bytes, attributes: dict[str, str], key: str | None) -> None:
        publisher, topic = self.publisher, self.topic_path(queue)
        try:
            # retry=None: refused at once while Pub/Sub is down (the library retried until timeout_s)
            future = publisher.publish(topic, body, ordering_key=key or "", retry=None, timeout=self.timeout_s,
                                       **attributes)
            async with asyncio.timeout(self.timeout_s + 5):
                await asyncio.wrap_future(future)
        except BaseException:
            if key:  # a failed publish pauses its ordering key until resumed
                publisher.resume_publish(topic, key)
            raise

    async def acknowledge(self, queue: str, message: Message) -> None:
        with errors(f"acknowledge on {self.subscription_path(queue)}"):
            await self.call(self.subscriber.acknowledge, subscription=self.subscription_path(queue),
                            ack_ids=[message.ack_id])
        message.drop()  # after the ack: dropping releases the next message of its ordering key

    async def modify_deadline(self, queue: str, message: Message, seconds: float) -> None:
        with errors(f"modify an ack deadline on {self.subscription_path(queue)}"):
            await self.call(self.subscriber.modify_ack_deadline, subscription=self.subscription_path(queue),
                            ack_ids=[message.ack_id], ack_deadline_seconds=math.ceil(seconds))
