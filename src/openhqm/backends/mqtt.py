"""MQTT 5 (checked against Mosquitto 2.0.11) through paho-mqtt, whose network thread reconnects.

URL: `queue.mqtt.url`, `mqtt://user:password@host:1883` (`mqtts://` for TLS, default port 8883).
Options (`queue.mqtt.*`): `share_group`, `client_id`, `topic_prefix`, `session_expiry_s`,
`create_session_on_publish`, `max_held`, `timeout_s`, `keepalive_s`.
Queue Q is the topic `<topic_prefix>/Q`. Each consume() is a persistent session (clean start off,
`session_expiry_s`) named `<client_id>-Q-<n>`, n the lowest number free in this process, subscribed
with QoS 1 as `$share/<share_group>/<topic_prefix>/Q`. A PUBACK goes back only when the delivery is
settled (paho `manual_ack=True`); `publish` returns on the broker's PUBACK.
MQTT drops what nobody subscribed to: such a publish (PUBACK reason 0x10) raises BackendUnavailable,
or with `create_session_on_publish` creates the session `<client_id>-Q-0` to hold it.
Emulated: delay (user property `openhqm-not-before`; the consumer that receives it holds it unacked
until due), nack (a copy with `openhqm-attempt`+1, then ack), dead letters (a copy with the reason to
`<topic_prefix>/Q.dlq`, held by the one session `<share_group>-Q.dlq`). No priority, no ordering key,
no depth: MQTT cannot count what a broker holds.
On a crash: unacked messages stay in that session and come back (DUP) only when the same client id
connects again; Mosquitto does not give them to another member of the share group. A DUP message
is re-published with attempt+1, so crashes count. The broker drops messages beyond its per-session
queue limit (Mosquitto `max_queued_messages`, 1000 by default) although it PUBACKed them.
See docs/backends/mqtt.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from pydantic import Field, SecretStr

from openhqm.backends.base import Backend, BackendOptions, Capabilities, Delivery, Health, Support
from openhqm.constants import DEAD_LETTER_SUFFIX, DEFAULT_PRIORITY, dead_letter_queue
from openhqm.envelope import new_id
from openhqm.errors import BackendError, BackendUnavailable, ConfigError
from openhqm.redact import mask_url

if TYPE_CHECKING:
    from openhqm.config import Settings

log = structlog.get_logger(__name__)

ID_PROPERTY = "openhqm-id"
ATTEMPT_PROPERTY = "openhqm-attempt"
KEY_PROPERTY = "openhqm-key"
NOT_BEFORE_PROPERTY = "openhqm-not-before"  # epoch seconds, the publisher's clock
REASON_PROPERTY = "openhqm-dead-letter-reason"

NO_MATCHING_SUBSCRIBERS = 0x10
NEVER_EXPIRE = 0xFFFFFFFF
MAX_RECEIVE = 65535

# Session ids consumed in this process: a second consume() of a queue takes the next number.
_sessions_in_use: set[str] = set()


@contextlib.contextmanager
def _errors(action: str) -> Iterator[None]:
    """The one place where paho and socket errors become openhqm errors."""
    try:
        yield
    except BackendError:
        raise
    except (OSError, ssl.SSLError) as exc:
        raise BackendUnavailable(f"mqtt: cannot {action}: {exc}") from exc
    except (ValueError, RuntimeError) as exc:
        raise BackendError(f"mqtt: cannot {action}: {exc}") from exc


class MQTTOptions(BackendOptions):
    url: SecretStr = SecretStr("mqtt://127.0.0.1:1883")
    share_group: str = Field("openhqm", description="workers subscribe as $share/<share_group>/<topic>")
    client_id: str | None = Field(
        None, description="stable, one per worker process; sessions '<client_id>-<queue>-<n>'")
    topic_prefix: str = Field("openhqm", description="queue Q is the topic '<topic_prefix>/Q'")
    session_expiry_s: int | None = Field(
        None, ge=1, le=0xFFFFFFFE, description="broker drops an absent session after this; None: never")
    create_session_on_publish: bool = Field(
        False, description="a publish nobody subscribes to creates session '<client_id>-<queue>-0' for it")
    max_held: int = Field(256, ge=1, le=60_000, description="delayed messages a consumer holds until due")
    timeout_s: float = Field(10.0, gt=0, description="connect, subscribe and publish (PUBACK) timeout")
    keepalive_s: int = Field(30, ge=5, le=65535)


@dataclass(frozen=True)
class _Meta:
    """What openhqm carries in MQTT 5 user properties; the payload is the body, untouched."""

    message_id: str
    attempt: int = 1
    key: str | None = None
    not_before: float | None = None
    reason: str | None = None

    def properties(self) -> Properties:
        props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        pairs = [(ID_PROPERTY, self.message_id), (ATTEMPT_PROPERTY, str(self.attempt))]
        for name, value in ((KEY_PROPERTY, self.key), (NOT_BEFORE_PROPERTY, self.not_before),
                            (REASON_PROPERTY, self.reason)):
            if value is not None:
                pairs.append((name, str(value)))
        props.UserProperty = pairs
        return props

    @classmethod
    def read(cls, message: mqtt.MQTTMessage) -> _Meta:
        """Messages from other MQTT clients carry none of these: attempt 1, a fresh id."""
        pairs = dict(getattr(message.properties, "UserProperty", None) or [])
        not_before = pairs.get(NOT_BEFORE_PROPERTY)
        try:
            attempt = max(1, int(pairs.get(ATTEMPT_PROPERTY, 1)))
            due = float(not_before) if not_before else None
        except ValueError:
            attempt, due = 1, None
        return cls(pairs.get(ID_PROPERTY) or new_id(), attempt, pairs.get(KEY_PROPERTY), due)


@dataclass(frozen=True)
class _Endpoint:
    host: str
    port: int
    tls: bool
    username: str | None
    password: str | None

    @classmethod
    def parse(cls, url: str) -> _Endpoint:
        parsed = urlparse(url)
        if parsed.scheme not in {"mqtt", "mqtts", "tcp", "ssl"} or not parsed.hostname:
            raise ConfigError(
                f"queue.mqtt.url {mask_url(url)!r}: expected mqtt://host:1883 or mqtts://host:8883")
        tls = parsed.scheme in {"mqtts", "ssl"}
        return cls(parsed.hostname, parsed.port or (8883 if tls else 1883), tls,
                   unquote(parsed.username) if parsed.username else None,
                   unquote(parsed.password) if parsed.password else None)


class _Connection:
    """One paho client: its own thread runs the network loop and reconnects; callbacks hop to asyncio."""

    def __init__(self, backend: MQTTBackend, client_id: str, *, persistent: bool,
                 receive_maximum: int | None = None, subscription: str | None = None,
                 on_message: Callable[[mqtt.MQTTMessage], None] | None = None,
                 on_lost: Callable[[BackendError], None] | None = None,
                 on_connect: Callable[[], None] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._backend = backend
        self.client_id = client_id
        self._subscription = subscription
        self._on_message = on_message
        self._on_lost = on_lost
        self._on_connect = on_connect
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._pending: dict[int, asyncio.Future[int]] = {}
        self.closed = False
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                             manual_ack=True)
        endpoint = backend.endpoint
        if endpoint.username is not None:
            client.username_pw_set(endpoint.username, endpoint.password)
        if endpoint.tls:
            client.tls_set()
        client.reconnect_delay_set(1, 10)
        client.on_connect = self._connected
        client.on_subscribe = self._subscribed
        client.on_publish = self._published
        client.on_disconnect = self._disconnected
        client.on_message = self._received
        self._client = client
        self._properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if persistent:
            expiry = backend.options.session_expiry_s
            self._properties.SessionExpiryInterval = NEVER_EXPIRE if expiry is None else expiry
        if receive_maximum is not None:
            self._properties.ReceiveMaximum = receive_maximum
        self._persistent = persistent

    def _call(self, func: Callable[..., None], *args: Any) -> None:
        """From paho's thread into the event loop (which may be gone once the backend was dropped)."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(func, *args)

    async def open(self) -> None:
        endpoint = self._backend.endpoint
        with _errors(f"connect to {endpoint.host}:{endpoint.port}"):
            self._client.connect_async(endpoint.host, endpoint.port, self._backend.options.keepalive_s,
                                       clean_start=not self._persistent, properties=self._properties)
            self._client.loop_start()
        try:
            async with asyncio.timeout(self._backend.options.timeout_s):
                await asyncio.shield(self._ready)
        except BaseException as exc:
            await self.close()
            if isinstance(exc, TimeoutError):
                who = self.client_id or "the publisher"
                raise BackendUnavailable(
                    f"mqtt: no CONNACK/SUBACK from {endpoint.host}:{endpoint.port} for {who!r} "
                    f"within {self._backend.options.timeout_s} s") from exc
            raise

    def _connected(self, client: mqtt.Client, userdata: Any, flags: mqtt.ConnectFlags,
                   reason: ReasonCode, properties: Properties | None) -> None:
        if reason.is_failure:
            self._call(self._fail, BackendUnavailable(f"mqtt: broker refused {self.client_id!r}: {reason}"))
            return
        if self._on_connect is not None:
            # Queued before any message of this connection (paho calls on_connect first), so the
            # consumer sees the new connection before what the broker re-sends on it.
            self._call(self._on_connect)
        if self._subscription is not None:
            # On every (re)connect: a session the broker lost (expired, no persistence) needs it again.
            client.subscribe(self._subscription, options=SubscribeOptions(qos=1))
        else:
            self._call(self._succeed)

    def _subscribed(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[ReasonCode],
                    properties: Properties | None) -> None:
        failed = [str(r) for r in reasons if r.is_failure]
        if failed:
            self._call(self._fail, BackendError(f"mqtt: subscribing {self._subscription} failed: {failed}"))
        else:
            self._call(self._succeed)

    def _succeed(self) -> None:
        if not self._ready.done():
            self._ready.set_result(None)

    def _fail(self, error: BackendError) -> None:
        if self.closed:
            return
        if not self._ready.done():
            self._ready.set_exception(error)
        elif self._on_lost is not None:
            self._on_lost(error)

    def _disconnected(self, client: mqtt.Client, userdata: Any, flags: mqtt.DisconnectFlags,
                      reason: ReasonCode, properties: Properties | None) -> None:
        if self.closed:
            return
        # Mosquitto 2.0.11 closes the older of two connections with one client id without a DISCONNECT
        # 0x8E, so a duplicate id looks like a network failure: both reconnect in turn. Say so in the log.
        log.warning("mqtt.connection_lost", session=self.client_id or "publisher", reason=str(reason),
                    hint="paho reconnects; if this repeats every few seconds, another process uses this id")

    def _received(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if self._on_message is not None:
            self._call(self._on_message, message)

    def _published(self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode,
                   properties: Properties | None) -> None:
        self._call(self._resolve, mid, reason.value)

    def _resolve(self, mid: int, code: int) -> None:
        future = self._pending.get(mid)
        if future is not None and not future.done():
            future.set_result(code)

    async def publish(self, topic: str, body: bytes, meta: _Meta) -> int:
        """The PUBACK's reason code. Without a connection paho keeps the message and sends it on reconnect."""
        if self.closed:
            raise BackendUnavailable("mqtt backend is closed")
        with _errors(f"publish to {topic}"):
            info = self._client.publish(topic, body, qos=1, properties=meta.properties())
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise BackendError(f"mqtt: publish to {topic} failed: {mqtt.error_string(info.rc)}")
        # Registered before the next await, so the PUBACK callback (queued onto this loop) finds it.
        future: asyncio.Future[int] = self._loop.create_future()
        self._pending[info.mid] = future
        try:
            async with asyncio.timeout(self._backend.options.timeout_s):
                return await future
        except TimeoutError as exc:
            raise BackendUnavailable(
                f"mqtt: no PUBACK for {topic} within {self._backend.options.timeout_s} s") from exc
        finally:
            self._pending.pop(info.mid, None)

    def ack(self, mid: int) -> bool:
        """False without a connection: paho would drop the PUBACK when it reconnects."""
        if self.closed:
            raise BackendUnavailable(f"mqtt: session {self.client_id!r} is closed; its message comes back")
        if not self._client.is_connected():
            return False
        with _errors("send PUBACK"):
            return self._client.ack(mid, 1) == MQTTErrorCode.MQTT_ERR_SUCCESS

    def is_connected(self) -> bool:
        return self._client.is_connected()

    async def close(self) -> None:
        """DISCONNECT; a persistent session stays on the broker with what it holds unacked."""
        if self.closed:
            return
        self.closed = True
        self._client.disconnect()
        await asyncio.to_thread(self._client.loop_stop)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BackendUnavailable("mqtt backend is closed"))


class MQTTDelivery(Delivery):
    def __init__(self, consumer: _Consumer, message: mqtt.MQTTMessage, meta: _Meta) -> None:
        super().__init__(consumer.queue, bytes(message.payload), attempt=meta.attempt,
                         message_id=meta.message_id, key=meta.key)
        self.mid = message.mid
        self._consumer = consumer
        self._meta = meta

    async def _ack(self) -> None:
        self._consumer.settle(self.mid)

    async def _nack(self, delay_s: float | None) -> None:
        not_before = time.time() + delay_s if delay_s and delay_s > 0 else None
        meta = replace(self._meta, attempt=self.attempt + 1, not_before=not_before)
        await self._consumer.backend.publish_copy(self.queue, self.body, meta)
        self._consumer.settle(self.mid)

    async def _dead_letter(self, reason: str) -> None:
        meta = _Meta(self.message_id, key=self.key, reason=reason)
        await self._consumer.backend.publish_copy(dead_letter_queue(self.queue), self.body, meta)
        self._consumer.settle(self.mid)


class _Consumer:
    """One consume(): its session, the messages it holds, and its delay timers."""

    def __init__(self, backend: MQTTBackend, queue: str, session_id: str, prefetch: int) -> None:
        self.backend = backend
        self.queue = queue
        self.session_id = session_id
        self.inbox: asyncio.Queue[MQTTDelivery | BackendError | None] = asyncio.Queue()
        self.held: set[int] = set()  # mids we have: waiting for their time, queued in inbox, or yielded
        self.unsettled: set[int] = set()  # mids yielded and not settled
        self.acked_offline: set[int] = set()  # settled while disconnected: PUBACK when the broker re-sends
        # Settled on this connection. A resumed session re-sends what was unacked at CONNACK time, so
        # a DUP of one of these, arriving after our PUBACK went out, is that re-send, not new work.
        self.acked_here: set[int] = set()
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.draining = False
        self.connection = _Connection(
            backend, session_id, persistent=True,
            receive_maximum=min(MAX_RECEIVE, prefetch + backend.options.max_held),
            subscription=backend.subscription(queue), on_message=self._received,
            on_lost=self.inbox.put_nowait, on_connect=self.acked_here.clear)

    def _received(self, message: mqtt.MQTTMessage) -> None:
        if message.mid in self.acked_here:
            self.acked_here.discard(message.mid)
            if message.dup:
                return  # re-sent on resume before our PUBACK for it reached the broker
            # otherwise the broker reused the packet id for a new message
        if message.mid in self.acked_offline:
            self.acked_offline.discard(message.mid)
            if message.dup:  # the resumed session re-sends what we settled while the connection was down
                self._ack(message.mid)
                return
        if message.mid in self.held:
            return  # the broker re-sent (after a reconnect) what we still have
        self.held.add(message.mid)
        meta = _Meta.read(message)
        wait_s = (meta.not_before or 0) - time.time()
        if wait_s > 0:
            # Held unacked until due: a crash leaves it in the session, still carrying its due time.
            loop = asyncio.get_running_loop()
            self._timers[message.mid] = loop.call_later(wait_s, self._due, message, meta)
        elif message.dup:
            # Sent before and never acked: whoever had it may have crashed while handling it. A copy with
            # attempt+1 makes repeated crashes count (MQTT itself keeps no delivery counter).
            task = asyncio.ensure_future(self._bump(message, meta))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self.inbox.put_nowait(MQTTDelivery(self, message, meta))

    def _due(self, message: mqtt.MQTTMessage, meta: _Meta) -> None:
        self._timers.pop(message.mid, None)
        self.inbox.put_nowait(MQTTDelivery(self, message, meta))

    async def _bump(self, message: mqtt.MQTTMessage, meta: _Meta) -> None:
        try:
            copy = replace(meta, attempt=meta.attempt + 1)
            await self.backend.publish_copy(self.queue, bytes(message.payload), copy)
            self.settle(message.mid)
        except BackendError as exc:
            # Left unacked: the broker sends it again after the next reconnect.
            self.held.discard(message.mid)
            log.warning("mqtt.redelivery_copy_failed", queue=self.queue, error=str(exc))

    def _ack(self, mid: int) -> None:
        if self.connection.ack(mid):
            self.acked_here.add(mid)
        else:
            self.acked_offline.add(mid)

    def settle(self, mid: int) -> None:
        self._ack(mid)
        self.held.discard(mid)
        self.unsettled.discard(mid)
        if self.draining and not self.unsettled:
            self.backend.spawn(self.close())

    async def finish(self) -> None:
        """The iterator ended: close now, or once the deliveries it yielded are settled."""
        for timer in self._timers.values():
            timer.cancel()  # still unacked in the session; it comes back with its due time
        self._timers.clear()
        if self.unsettled and not self.connection.closed:
            self.draining = True
        else:
            await self.close()

    async def close(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        await self.connection.close()
        _sessions_in_use.discard(self.session_id)
        self.backend.consumers.discard(self)
        self.inbox.put_nowait(None)


class MQTTBackend(Backend):
    name = "mqtt"
    options_model = MQTTOptions
    options: MQTTOptions
    capabilities = Capabilities(
        priority=Support.NONE, delay=Support.EMULATED, ordering_key=Support.NONE,
        dead_letter=Support.EMULATED, lease_extension=False, durable=True, shared_between_processes=True,
        depth=False,
    )

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)

        self._url = self.options.url.get_secret_value()
        self.endpoint = _Endpoint.parse(self._url)
        self.client_id = self.options.client_id or f"openhqm-{socket.gethostname()}"
        self._validate_topic_part("queue.mqtt.topic_prefix", self.options.topic_prefix)
        self._validate_topic_part("queue.mqtt.share_group", self.options.share_group, levels=False)
        self._publisher: _Connection | None = None
        self.consumers: set[_Consumer] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._session_locks: dict[str, asyncio.Lock] = {}

    @property
    def display_url(self) -> str:
        return mask_url(self._url)

    @staticmethod
    def _validate_topic_part(what: str, value: str, *, levels: bool = True) -> None:
        bad = "+#\0" if levels else "+#/\0"
        if not value or any(c in value for c in bad):
            shown = " ".join(repr(c) for c in bad)
            raise ConfigError(f"{what} {value!r}: must be non-empty and free of {shown}")

    def topic(self, queue: str) -> str:
        self._validate_topic_part("queue name", queue)
        return f"{self.options.topic_prefix}/{queue}"

    @staticmethod
    def _is_dead_letter_queue(queue: str) -> bool:
        return queue.endswith(DEAD_LETTER_SUFFIX)

    def subscription(self, queue: str) -> str:
        # A dead-letter queue has one reader at a time: the session that holds it (see _session_id).
        if self._is_dead_letter_queue(queue):
            return self.topic(queue)
        return f"$share/{self.options.share_group}/{self.topic(queue)}"

    def _session_id(self, queue: str, number: int) -> str:
        if self._is_dead_letter_queue(queue):
            return f"{self.options.share_group}-{queue}"
        return f"{self.client_id}-{queue}-{number}"

    async def connect(self) -> None:
        if self._publisher is not None and not self._publisher.closed:
            return
        # A clean session with a broker-assigned id: publishing needs no state on the broker.
        publisher = _Connection(self, "", persistent=False)
        await publisher.open()
        self._publisher = publisher

    async def close(self) -> None:
        publisher, self._publisher = self._publisher, None
        for consumer in list(self.consumers):
            await consumer.close()
        for task in list(self._tasks):
            with contextlib.suppress(Exception):
                await task
        if publisher is not None:
            await publisher.close()

    def spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _connection(self) -> _Connection:
        if self._publisher is None or self._publisher.closed:
            raise BackendUnavailable("mqtt backend is not connected")
        return self._publisher

    async def publish(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                      delay_s: float | None = None, key: str | None = None,
                      message_id: str | None = None) -> None:
        not_before = time.time() + delay_s if delay_s and delay_s > 0 else None
        await self.publish_copy(queue, body, _Meta(message_id or new_id(), key=key, not_before=not_before))

    async def publish_copy(self, queue: str, body: bytes, meta: _Meta) -> None:
        topic = self.topic(queue)
        code = await self._connection().publish(topic, body, meta)
        if code == NO_MATCHING_SUBSCRIBERS:
            code = await self._hold_unsubscribed(queue, topic, body, meta)
        if code >= 0x80:
            reason = ReasonCode(PacketTypes.PUBACK, identifier=code)
            raise BackendError(f"mqtt: broker rejected the publish to {topic}: {reason}")

    async def _hold_unsubscribed(self, queue: str, topic: str, body: bytes, meta: _Meta) -> int:
        """Nobody subscribes to the topic, so the broker discarded the message: subscribe a session, retry."""
        if not (self._is_dead_letter_queue(queue) or self.options.create_session_on_publish):
            raise BackendUnavailable(
                f"mqtt: nobody subscribes to queue {queue!r} (topic {topic}), and MQTT drops such messages; "
                "start a worker first, or set queue.mqtt.create_session_on_publish")
        lock = self._session_locks.setdefault(queue, asyncio.Lock())
        async with lock:
            code = await self._connection().publish(topic, body, meta)
            if code != NO_MATCHING_SUBSCRIBERS:
                return code
            session_id = self._session_id(queue, 0)
            if session_id in _sessions_in_use:
                raise BackendUnavailable(f"mqtt: session {session_id!r} is still subscribing; try again")
            _sessions_in_use.add(session_id)
            try:
                holder = _Connection(self, session_id, persistent=True, subscription=self.subscription(queue),
                                     receive_maximum=1)
                await holder.open()
                await holder.close()
            finally:
                _sessions_in_use.discard(session_id)
            log.info("mqtt.session_created_on_publish", queue=queue, session=session_id)
            return await self._connection().publish(topic, body, meta)

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]:
        consumer = await self._open_consumer(queue, prefetch)
        try:
            while True:
                item = await consumer.inbox.get()
                if item is None or consumer.connection.closed:
                    return
                if isinstance(item, BackendError):
                    raise item
                consumer.unsettled.add(item.mid)
                yield item
        finally:
            await consumer.finish()

    async def _open_consumer(self, queue: str, prefetch: int) -> _Consumer:
        self._connection()
        number = 0
        while self._session_id(queue, number) in _sessions_in_use:
            if self._is_dead_letter_queue(queue):
                raise BackendError(f"mqtt: dead-letter queue {queue!r} is already read in this process "
                                   "(it has one session, so one reader at a time)")
            number += 1
        session_id = self._session_id(queue, number)
        _sessions_in_use.add(session_id)
        try:
            consumer = _Consumer(self, queue, session_id, prefetch)
            await consumer.connection.open()
        except BaseException:
            _sessions_in_use.discard(session_id)
            raise
        self.consumers.add(consumer)
        return consumer

    async def depth(self, queue: str) -> int:
        raise NotImplementedError(
            "mqtt cannot count waiting messages: they sit in broker sessions that MQTT does not expose "
            "(capabilities.depth is False)")

    async def health(self) -> Health:
        """A QoS 1 publish to a topic nobody reads: the PUBACK (reason 0x10) proves the round trip."""
        publisher = self._publisher
        if publisher is None or publisher.closed:
            return Health(False, "mqtt backend is not connected")
        try:
            async with asyncio.timeout(2):
                await publisher.publish(f"{self.options.topic_prefix}/$health", b"", _Meta("health"))
        except Exception as exc:
            where = f"{self.endpoint.host}:{self.endpoint.port}"
            return Health(False, f"mqtt {where}: {exc or type(exc).__name__}")
        return Health(True)
