"""MQTT 5 through paho-mqtt (checked against Mosquitto 2.0.11); details in docs/backends/mqtt.md.

URL: `queue.mqtt.url`, `mqtt://user:password@host:1883` (`mqtts://` for TLS, default port 8883).
Options (`queue.mqtt.*`): `share_group`, `client_id`, `topic_prefix`, `session_expiry_s`,
`create_session_on_publish`, `max_held`, `timeout_s`, `keepalive_s`.
Queue Q is the topic `<topic_prefix>/Q`, read as `$share/<share_group>/<topic_prefix>/Q` (QoS 1) by
persistent sessions `<client_id>-Q-<n>`, n the lowest free in this process. A delivery is PUBACKed
when settled; `publish` returns on the broker's PUBACK, and raises BackendUnavailable where nobody
subscribes (MQTT drops such messages) unless `create_session_on_publish` makes `<client_id>-Q-0` hold it.
Emulated with openhqm's `Wire` headers as user properties: delay (the consumer holds the message
unacked until due), nack (a copy with attempt+1, then PUBACK), dead letters (a copy with the reason to
`Q.dlq`, held by the one session `<share_group>-Q.dlq`). No priority, ordering key or depth.
A crashed consumer's unacked messages come back (DUP, counted by a copy with attempt+1) only when its
client id connects again. Mosquitto drops what a session holds beyond `max_queued_messages` (1000 by
default) although it PUBACKed it.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import Field, SecretStr

from openhqm.backends.base import Backend, BackendOptions, Capabilities, Delivery, Support
from openhqm.backends.kit import Admit, Background, Wire, admission, connected
from openhqm.backends.mqtt_session import NEVER_EXPIRE, Broker, Session, headers_of
from openhqm.constants import DEAD_LETTER_SUFFIX, DEFAULT_PRIORITY, dead_letter_queue
from openhqm.envelope import new_id
from openhqm.errors import BackendError, BackendUnavailable, ConfigError
from openhqm.policies import Reconnect

if TYPE_CHECKING:
    from openhqm.config import Settings

log = structlog.get_logger(__name__)

NO_MATCHING_SUBSCRIBERS = 0x10
MAX_RECEIVE = 65535


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


class MQTTDelivery(Delivery):
    """Settled by PUBACK; nack and dead letter publish a copy first (MQTT has no way to refuse one)."""

    def __init__(self, consumer: _Consumer, message: mqtt.MQTTMessage, headers: dict[str, str]) -> None:
        super().__init__(consumer.queue, bytes(message.payload), attempt=Wire.attempt(headers.get(Wire.ATTEMPT)),
                         message_id=headers[Wire.ID], key=headers.get(Wire.KEY))
        self.mid = message.mid
        self.headers = headers
        self._consumer = consumer

    async def _ack(self) -> None:
        self._consumer.settle(self.mid)

    async def _nack(self, delay_s: float | None) -> None:
        await self.hand_back(delay_s)

    async def hand_back(self, delay_s: float | None) -> None:
        """The copy a nack publishes (attempt + 1), then the PUBACK; retried on its own by the consumer
        when a redelivery is counted, where no nack (and no settled state) is involved."""
        await self._consumer.replace(self.mid, self.queue, self.body,
                                     Wire.retried(self.headers, self.attempt, delay_s, time.time()))

    async def _dead_letter(self, reason: str) -> None:
        await self._consumer.replace(self.mid, dead_letter_queue(self.queue), self.body,
                                     Wire.dead_lettered(self.headers, reason))


class _Consumer(Session):
    """One consume(): its persistent session, the messages it holds, and its delay timers."""

    def __init__(self, backend: MQTTBackend, queue: str, session_id: str, prefetch: int) -> None:
        super().__init__(backend.broker, session_id, expiry_s=backend.expiry_s,
                         receive_maximum=min(MAX_RECEIVE, prefetch + backend.options.max_held),
                         subscription=backend.subscription(queue))
        self.backend = backend
        self.queue = queue
        self.inbox: asyncio.Queue[MQTTDelivery | BackendError | None] = asyncio.Queue()
        self.held: set[int] = set()  # mids we have: waiting for their time, queued in inbox, or yielded
        self.unsettled: set[int] = set()  # mids yielded and not settled
        # Settled mids -> whether their PUBACK went out on this connection. A resumed session re-sends
        # (DUP) what was unacked at its CONNACK: not new work, but a PUBACK is due if ours is not out yet.
        self.acked: dict[int, bool] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}
        self._counting = Background()  # nacks that count a redelivered attempt
        self._stopping = asyncio.Event()
        self.draining = False

    def on_connect(self) -> None:
        # A DUP under a mid PUBACKed on the old connection may be a new message under a reused packet id
        # (lost in flight): handled as work (at-least-once), never dropped. Unsent PUBACKs are still due.
        self.acked = {mid: False for mid, sent in self.acked.items() if not sent}

    def on_lost(self, error: BackendError) -> None:
        self.inbox.put_nowait(error)

    def on_message(self, message: mqtt.MQTTMessage) -> None:
        if self._seen(message):
            return
        self.held.add(message.mid)
        headers = headers_of(message)
        headers.setdefault(Wire.ID, new_id())  # a message from another MQTT client has none
        admit = admission(Wire.number(headers.get(Wire.NOT_BEFORE)), time.time(), max_hold_s=None)
        if admit.action is Admit.HOLD:
            # Held unacked until due: a crash leaves it in the session, still carrying its due time.
            self._timers[message.mid] = asyncio.get_running_loop().call_later(
                admit.wait_s, self._due, message, headers)
        elif message.dup:
            # Sent before and never acked: whoever had it may have crashed while handling it. A nack (its copy
            # has attempt+1) makes repeated crashes count (MQTT itself keeps no delivery counter).
            self._counting.spawn(self._count_attempt(MQTTDelivery(self, message, headers)))
        else:
            self.inbox.put_nowait(MQTTDelivery(self, message, headers))

    def _seen(self, message: mqtt.MQTTMessage) -> bool:
        """A re-send of a message this consumer already has or settled (the broker resumed the session)."""
        sent = self.acked.pop(message.mid, None)
        if sent is not None and message.dup:  # without DUP, the broker reused the packet id for new work
            if not sent:  # settled while the connection was down
                self._puback(message.mid)
            return True  # else re-sent on resume before our PUBACK (sent on this connection) reached it
        return message.mid in self.held  # the broker re-sent (after a reconnect) what we still have

    def _due(self, message: mqtt.MQTTMessage, headers: dict[str, str]) -> None:
        self._timers.pop(message.mid, None)
        self.inbox.put_nowait(MQTTDelivery(self, message, headers))

    async def _count_attempt(self, delivery: MQTTDelivery) -> None:
        """Retried until the copy is out: this session is connected (the message just came on it), so
        the broker will not send it again; only a closing consumer leaves it to the next session."""
        reconnect = Reconnect()
        while True:
            try:
                await delivery.hand_back(None)
                return
            except BackendError as exc:
                if self._stopping.is_set():
                    self.held.discard(delivery.mid)  # unacked: the session's next connection gets it again
                    log.warning("mqtt.redelivery_copy_failed", queue=self.queue, error=str(exc))
                    return
                log.warning("mqtt.redelivery_copy_failed", queue=self.queue, error=str(exc),
                            retry_in_s=round(reconnect.next_delay_s, 3))
                await reconnect.wait(until=self._stopping)

    async def replace(self, mid: int, queue: str, body: bytes, headers: dict[str, str]) -> None:
        """Publish a copy, then PUBACK the original: MQTT's only way to hand a message back."""
        await self.backend.send(queue, body, headers)
        self.settle(mid)

    def _puback(self, mid: int) -> None:
        self.acked[mid] = self.puback(mid)

    def settle(self, mid: int) -> None:
        self._puback(mid)
        self.held.discard(mid)
        self.unsettled.discard(mid)
        if self.draining and not self.unsettled:
            self.backend.background.spawn(self.close())

    async def finish(self) -> None:
        """The iterator ended: close now, or once the deliveries it yielded are settled."""
        for timer in self._timers.values():
            timer.cancel()  # still unacked in the session; it comes back with its due time
        self._timers.clear()
        if self.unsettled and not self.closed:
            self.draining = True
        else:
            await self.close()

    async def close(self) -> None:
        self._stopping.set()
        for timer in self._timers.values():
            timer.cancel()
        await self._counting.wait()
        await super().close()
        self.backend.consumers.discard(self)
        self.inbox.put_nowait(None)


class MQTTBackend(Backend):
    name = "mqtt"
    options_model = MQTTOptions
    options: MQTTOptions
    capabilities = Capabilities(delay=Support.EMULATED, depth=False)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.broker = Broker.parse(self.options.url.get_secret_value(), keepalive_s=self.options.keepalive_s,
                                   timeout_s=self.options.timeout_s)
        self.client_id = self.options.client_id or f"openhqm-{socket.gethostname()}"
        self.expiry_s = self.options.session_expiry_s or NEVER_EXPIRE  # of every persistent session
        self._validate_topic_part("queue.mqtt.topic_prefix", self.options.topic_prefix)
        self._validate_topic_part("queue.mqtt.share_group", self.options.share_group, levels=False)
        self._publisher: Session | None = None
        self.consumers: set[_Consumer] = set()
        self.background = Background()  # consumers closing themselves after their session was lost
        self._session_locks: dict[str, asyncio.Lock] = {}

    @staticmethod
    def _validate_topic_part(what: str, value: str, *, levels: bool = True) -> None:
        bad = "+#\0" if levels else "+#/\0"
        if not value or any(c in value for c in bad):
            shown = " ".join(repr(c) for c in bad)
            raise ConfigError(f"{what} {value!r}: must be non-empty and free of {shown}")

    def topic(self, queue: str) -> str:
        self._validate_topic_part("queue name", queue)
        return f"{self.options.topic_prefix}/{queue}"

    def subscription(self, queue: str) -> str:
        # A dead-letter queue has one reader at a time: the session that holds it (see _session_id).
        if queue.endswith(DEAD_LETTER_SUFFIX):
            return self.topic(queue)
        return f"$share/{self.options.share_group}/{self.topic(queue)}"

    def _session_id(self, queue: str, number: int) -> str:
        if queue.endswith(DEAD_LETTER_SUFFIX):
            return f"{self.options.share_group}-{queue}"
        return f"{self.client_id}-{queue}-{number}"

    async def connect(self) -> None:
        if self._publisher is not None and not self._publisher.closed:
            return
        # A clean session with a broker-assigned id: publishing needs no state on the broker.
        publisher = Session(self.broker, "")
        await publisher.open()
        self._publisher = publisher

    async def close(self) -> None:
        publisher, self._publisher = self._publisher, None
        for consumer in list(self.consumers):
            await consumer.close()
        await self.background.wait()
        if publisher is not None:
            await publisher.close()

    def _connection(self) -> Session:
        publisher = self._publisher
        return connected("mqtt", None if publisher is None or publisher.closed else publisher)

    async def publish(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                      delay_s: float | None = None, key: str | None = None,
                      message_id: str | None = None) -> None:
        await self.send(queue, body, Wire.published(message_id, delay_s, time.time(), key))

    async def send(self, queue: str, body: bytes, headers: dict[str, str]) -> None:
        """Publish with openhqm's headers; where nobody subscribes, hold it in a session or refuse."""
        topic = self.topic(queue)
        code = await self._connection().publish(topic, body, headers)
        if code == NO_MATCHING_SUBSCRIBERS:
            code = await self._hold_unsubscribed(queue, topic, body, headers)
        if code >= 0x80:
            reason = ReasonCode(PacketTypes.PUBACK, identifier=code)
            raise BackendError(f"mqtt: broker rejected the publish to {topic}: {reason}")

    async def _hold_unsubscribed(self, queue: str, topic: str, body: bytes, headers: dict[str, str]) -> int:
        """Nobody subscribes to the topic, so the broker discarded the message: subscribe a session, retry."""
        if not (queue.endswith(DEAD_LETTER_SUFFIX) or self.options.create_session_on_publish):
            raise BackendUnavailable(
                f"mqtt: nobody subscribes to queue {queue!r} (topic {topic}), and MQTT drops such messages; "
                "start a worker first, or set queue.mqtt.create_session_on_publish")
        async with self._session_locks.setdefault(queue, asyncio.Lock()):
            code = await self._connection().publish(topic, body, headers)
            if code != NO_MATCHING_SUBSCRIBERS:
                return code
            session_id = self._session_id(queue, 0)
            if session_id in Session.IN_USE:
                raise BackendUnavailable(f"mqtt: session {session_id!r} is still subscribing; try again")
            holder = Session(self.broker, session_id, expiry_s=self.expiry_s, receive_maximum=1,
                             subscription=self.subscription(queue))
            await holder.open()
            await holder.close()
            log.info("mqtt.session_created_on_publish", queue=queue, session=session_id)
            return await self._connection().publish(topic, body, headers)

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]:
        self._connection()
        number = 0
        while self._session_id(queue, number) in Session.IN_USE:
            if queue.endswith(DEAD_LETTER_SUFFIX):
                raise BackendError(f"mqtt: dead-letter queue {queue!r} is already read in this process "
                                   "(it has one session, so one reader at a time)")
            number += 1
        consumer = _Consumer(self, queue, self._session_id(queue, number), prefetch)
        await consumer.open()
        self.consumers.add(consumer)
        try:
            while True:
                item = await consumer.inbox.get()
                if item is None or consumer.closed:
                    return
                if isinstance(item, BackendError):
                    raise item
                consumer.unsettled.add(item.mid)
                yield item
        finally:
            await consumer.finish()

    async def depth(self, queue: str) -> int:
        raise NotImplementedError(
            "mqtt cannot count waiting messages: they sit in broker sessions that MQTT does not expose "
            "(capabilities.depth is False)")

    async def ping(self) -> None:
        """A QoS 1 publish to a topic nobody reads: the PUBACK (reason 0x10) proves the round trip."""
        await self._connection().publish(f"{self.options.topic_prefix}/$health", b"", {})
