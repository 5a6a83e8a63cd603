"""Apache Kafka backend on aiokafka: a delivery's offset is committed only after it is settled.

URL: `queue.type: kafka`, `queue.kafka.bootstrap_servers: "host1:9092,host2:9092"`.
Options (`queue.kafka`): `security_protocol` (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL) with `sasl_mechanism`,
`sasl_username`, `sasl_password`; `group_id` (queue Q is read by consumer group `<group_id>.Q`, so a consumer
joining one queue does not rebalance the others); `session_timeout_s`, `heartbeat_interval_s`,
`rebalance_grace_s`, `request_timeout_s`, `publish_timeout_s` (5 s: a record no broker acknowledged by then
is withdrawn from the producer's buffer and the publish refused; see `openhqm.backends.kafka_send`);
`create_topics`, `topic_partitions`, `topic_replication_factor`
(default min(3, brokers)); `max_buffered`.

Topics of queue Q: `Q`; `Q.delay` (records with an `openhqm-not-before` header); the dead letters are the
ordinary queue `Q.dlq` (with its own `Q.dlq.delay`).
- Priority: none. A partition is an append-only log; reordering it would need one topic per priority.
- Delay: emulated. A delayed publish or `nack(delay_s)` produces to `Q.delay`; the consumer holds the record
  in memory until its not-before time while its offset stays uncommitted, so a crash re-reads it and the
  delay (an absolute time) still holds. Any delay length works.
- Ordering key: native. `key` is the Kafka message key, so a key's records share one partition; the consumer
  hands out one record of a key at a time and holds later ones back until it is settled. A nacked record's
  copy keeps the key's next turn (Q and Q.delay have equal partition counts and are co-assigned by the range
  assignor, so the copy comes back to the same consumer).
- Settling: `ack` commits; `nack` produces a copy with `openhqm-attempt` + 1 (to Q, or Q.delay with a delay),
  then commits; `dead_letter` produces to Q.dlq with an `openhqm-reason` header, then commits. Settles
  arrive out of order, so each partition commits its highest contiguous settled offset + 1.
- Crash: nothing settled is lost. Whatever was not committed (unsettled, or settled behind an older open
  offset) is read again by the partition's next owner: at-least-once. `attempt` counts nacks; a re-read
  after a crash or rebalance repeats the attempt number.
- Rebalance: before giving partitions up, a consumer waits up to `rebalance_grace_s` for its in-flight
  deliveries, commits what is settled and drops what it buffered; a later settle of such a delivery is
  a no-op and the new owner redelivers it.
The consuming half (group member, offset tracker, key turns, delays) is `openhqm.backends.kafka_consumer`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.coordinator.assignors.range import RangePartitionAssignor
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.helpers import create_ssl_context
from pydantic import Field, SecretStr, model_validator

from openhqm.backends.base import Backend, BackendOptions, Capabilities, Delivery, Support
from openhqm.backends.kafka_consumer import ERRORS, FetchedRecord, GroupConsumer, Headers, delay_topic
from openhqm.backends.kafka_send import send_within
from openhqm.backends.kit import Wire, connected, redelivery
from openhqm.constants import DEFAULT_PRIORITY, dead_letter_queue
from openhqm.errors import BackendUnavailable

if TYPE_CHECKING:
    from openhqm.config import Settings


def record_headers(ours: dict[str, str], copied: Sequence[tuple[str, bytes]] = ()) -> Headers:
    """openhqm's headers, after the foreign headers of the record being copied (kept for other readers)."""
    kept = [(name, value) for name, value in copied if not name.lower().startswith(Wire.PREFIX)]
    return [*kept, *((name, value.encode()) for name, value in ours.items())]


class KafkaOptions(BackendOptions):
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = Field("openhqm-workers", description="consumer group prefix: queue Q uses '<group_id>.Q'")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    session_timeout_s: float = Field(45.0, gt=0, description="a silent consumer leaves the group after this")
    heartbeat_interval_s: float = Field(3.0, gt=0)
    rebalance_grace_s: float = Field(10.0, ge=0, description="rebalance waits for in-flight settles")
    request_timeout_s: float = Field(40.0, gt=0)
    publish_timeout_s: float = Field(
        5.0, gt=0, description="a record no broker acknowledged within this is withdrawn and its publish refused")
    create_topics: bool = Field(True, description="create <queue>, <queue>.delay, <queue>.dlq when missing")
    topic_partitions: int = Field(4, ge=1, description="partitions of the topics openhqm creates")
    topic_replication_factor: int | None = Field(None, ge=1, description="default: min(3, brokers)")
    max_buffered: int = Field(1000, ge=1, description="held back by key order or delay")

    @model_validator(mode="after")
    def _heartbeat_within_session(self) -> Self:
        if self.heartbeat_interval_s >= self.session_timeout_s:
            raise ValueError(f"heartbeat_interval_s ({self.heartbeat_interval_s}) must be below "
                             f"session_timeout_s ({self.session_timeout_s})")
        return self


class KafkaBackend(Backend):
    name = "kafka"
    options_model: ClassVar[type[BackendOptions]] = KafkaOptions
    options: KafkaOptions
    capabilities = Capabilities(delay=Support.EMULATED, ordering_key=Support.NATIVE, max_message_bytes=1_000_000)

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.options = self._kafka_options()
        self._clients: tuple[Any, Any, Any] | None = None  # producer, admin, group-less reader for depth()
        self._topics_ready: set[str] = set()
        self._topics_lock = asyncio.Lock()
        self._replication_factor: int | None = self.options.topic_replication_factor
        self.consumers: set[GroupConsumer] = set()
        self.closed = False

    def _kafka_options(self) -> KafkaOptions:
        """The Kafka options this backend runs on (Event Hubs derives them from its own)."""
        return self.options

    def client_options(self) -> dict[str, Any]:
        """Connection arguments shared by every aiokafka client this backend makes."""
        opts = self.options
        options: dict[str, Any] = {
            "bootstrap_servers": opts.bootstrap_servers,
            "security_protocol": opts.security_protocol,
            "request_timeout_ms": int(opts.request_timeout_s * 1000),
        }
        if opts.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = create_ssl_context()
        if opts.security_protocol.startswith("SASL"):
            options["sasl_mechanism"] = opts.sasl_mechanism or "PLAIN"
            options["sasl_plain_username"] = opts.sasl_username
            options["sasl_plain_password"] = opts.sasl_password.get_secret_value() if opts.sasl_password else None
        return options

    @property
    def display_url(self) -> str:
        return f"kafka://{self.options.bootstrap_servers}"

    def group_id(self, queue: str) -> str:
        return f"{self.options.group_id}.{queue}"

    def _group_member(self, queue: str) -> AIOKafkaConsumer:
        opts = self.options
        return AIOKafkaConsumer(
            group_id=self.group_id(queue),
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            # Range gives partition p of Q and of Q.delay to one member: a key's retry copy comes back here.
            partition_assignment_strategy=(RangePartitionAssignor,),
            session_timeout_ms=int(opts.session_timeout_s * 1000),
            heartbeat_interval_ms=int(opts.heartbeat_interval_s * 1000),
            # Members must rejoin within this; the revoke callback may wait rebalance_grace_s first.
            rebalance_timeout_ms=int((opts.rebalance_grace_s + opts.session_timeout_s) * 1000),
            **self.client_options(),
        )

    async def connect(self) -> None:
        if self._clients is not None:
            return
        self.closed = False
        options = self.client_options()
        # No idempotent producer: tansu (the test broker) rejects InitProducerId, and openhqm is
        # at-least-once anyway. acks="all": publish returns once every in-sync replica has the record.
        self._clients = (AIOKafkaProducer(acks="all", enable_idempotence=False, **options),
                         AIOKafkaAdminClient(**options), AIOKafkaConsumer(enable_auto_commit=False, **options))
        try:
            with ERRORS(f"connect to {self.options.bootstrap_servers}"):
                for client in self._clients:
                    await client.start()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        self.closed = True
        # Consumers first: leaving their groups hands partitions over at once. Then the producer that
        # nacks and dead letters used, then the admin clients.
        for consumer in list(self.consumers):
            await consumer.close()
        clients, self._clients = self._clients or (), None
        for client in clients:
            with contextlib.suppress(Exception):
                await (client.close() if isinstance(client, AIOKafkaAdminClient) else client.stop())

    def _connected(self) -> tuple[Any, Any, Any]:
        return connected("kafka", None if self.closed else self._clients)

    # -- topics --

    async def ensure_topics(self, queue: str) -> None:
        """Create Q, then Q.delay with Q's partition count (a key's order across retries needs it)."""
        if queue in self._topics_ready or not self.options.create_topics:
            return
        _, admin, _ = self._connected()
        async with self._topics_lock:
            if queue in self._topics_ready:
                return
            with ERRORS(f"create the topics of {queue!r}"):
                await self._create_topic(admin, queue, self.options.topic_partitions)
                # Should Q.delay exist already with another count, nack() notices and logs it.
                await self._create_topic(admin, delay_topic(queue), len(await self._partitions([queue])))
            self._topics_ready.add(queue)

    async def _create_topic(self, admin: Any, name: str, partitions: int) -> None:
        if self._replication_factor is None:
            brokers = (await admin.describe_cluster())["brokers"]
            self._replication_factor = max(1, min(3, len(brokers)))
        response = await admin.create_topics([NewTopic(name, partitions, self._replication_factor)])
        for topic, code, *message in response.topic_errors:
            if code not in (0, TopicAlreadyExistsError.errno):
                hint = "; create it yourself and set queue.kafka.create_topics: false"
                raise for_code(code)(f"topic {topic!r}: {message[0] if message else ''}{hint}")

    async def _partitions(self, topics: list[str]) -> list[TopicPartition]:
        _, admin, _ = self._connected()
        described = await admin.describe_topics(topics)
        return [TopicPartition(topic["topic"], partition["partition"])
                for topic in described if topic["error_code"] == 0 for partition in topic["partitions"]]

    # -- the contract --

    async def publish(self, queue: str, body: bytes, *, priority: int = DEFAULT_PRIORITY,
                      delay_s: float | None = None, key: str | None = None,
                      message_id: str | None = None) -> None:
        # `priority` is dropped: a partition is a log (Capabilities.priority is NONE).
        ours = Wire.published(message_id, delay_s, time.time())  # the key is the record's own
        topic = delay_topic(queue) if Wire.NOT_BEFORE in ours else queue
        await self.produce(queue, topic, body, key=key.encode() if key is not None else None,
                           headers=record_headers(ours))

    async def produce(self, queue: str, topic: str, body: bytes, *, key: bytes | None,
                      headers: Headers, timeout_s: float | None = None) -> Any:
        """Send one record to `topic` (Q or Q.delay) and wait for acks=all, at most `timeout_s`
        (`publish_timeout_s` unless given) once its topics exist; then the record is withdrawn (`kafka_send`)."""
        producer, _, _ = self._connected()
        await self._refuse_unless_reachable(producer)
        await self.ensure_topics(queue)  # once per queue and process
        deadline = asyncio.get_running_loop().time() + (timeout_s or self.options.publish_timeout_s)
        with ERRORS(f"publish to {topic!r}"):
            return await send_within(producer, deadline, topic, body, key=key, headers=headers)

    async def _refuse_unless_reachable(self, producer: Any) -> None:
        """Refuse at once while no broker answers: aiokafka would hold the record for up to
        request_timeout_s waiting for one to come back, and the submit behind it would hang."""
        client = producer.client
        if any(conn.connected() for conn in client._conns.values()):  # aiokafka has no public view
            return
        for broker in client.cluster.brokers():  # reconnect now: refused at once by a host that is up
            if await client.ready(broker.nodeId):
                return
        raise BackendUnavailable(f"no Kafka broker answers at {self.options.bootstrap_servers}")

    async def consume(self, queue: str, *, prefetch: int = 1) -> AsyncIterator[Delivery]:
        self._connected()
        await self.ensure_topics(queue)
        opts = self.options
        consumer = GroupConsumer(self, queue, self._group_member(queue), limit=max(prefetch, opts.max_buffered),
                                 rebalance_grace_s=opts.rebalance_grace_s, commit_timeout_s=opts.request_timeout_s)
        self.consumers.add(consumer)
        try:
            await consumer.start()
            while (item := await consumer.next()) is not None:
                yield KafkaDelivery(consumer, item)
        finally:
            await consumer.stop_intake()

    async def _lag(self, queue: str) -> tuple[dict[TopicPartition, int], int]:
        """End offsets of the partitions of Q and Q.delay; records between the group's commits and them."""
        _, admin, offset_reader = self._connected()
        with ERRORS(f"read the offsets of {queue!r}"):
            tps = await self._partitions([queue, delay_topic(queue)])
            if not tps:
                return {}, 0
            ends = await offset_reader.end_offsets(tps)
            starts = await offset_reader.beginning_offsets(tps)
            committed = await admin.list_consumer_group_offsets(self.group_id(queue), partitions=tps)
        positions = {tp: max(committed[tp].offset if tp in committed else -1, starts[tp]) for tp in tps}
        return ends, sum(max(0, ends[tp] - positions[tp]) for tp in tps)

    async def depth(self, queue: str) -> int:
        """Records after the group's committed offsets in Q and Q.delay (includes those being processed)."""
        return (await self._lag(queue))[1]

    async def purge(self, queue: str) -> int:
        """Commit the end of Q and Q.delay for the queue's group (needs the queue's consumers stopped)."""
        ends, backlog = await self._lag(queue)
        if not ends:
            return 0
        reset = AIOKafkaConsumer(group_id=self.group_id(queue), enable_auto_commit=False,
                                 **self.client_options())
        try:
            with ERRORS(f"purge {queue!r} (stop its consumers first)"):
                await reset.start()
                reset.assign(list(ends))
                await reset.commit(ends)
        finally:
            await reset.stop()
        return backlog

    async def ping(self) -> None:
        _, admin, _ = self._connected()
        with ERRORS("describe the cluster"):
            cluster = await admin.describe_cluster()
        if not cluster.get("brokers"):
            raise BackendUnavailable("no brokers in the metadata")


class KafkaDelivery(Delivery):
    """A nack or dead letter produces its copy (to Q or Q.delay, or to Q.dlq) before the offset commits."""

    def __init__(self, consumer: GroupConsumer, item: FetchedRecord) -> None:
        key = item.key.decode("utf-8", "replace") if item.key is not None else None
        super().__init__(consumer.queue, item.record.value or b"", attempt=item.attempt,
                         message_id=item.message_id, key=key)
        self._consumer = consumer
        self._item = item

    async def _ack(self) -> None:
        await self._consumer.settle(self._item)

    async def _nack(self, delay_s: float | None) -> None:
        headers = redelivery(self._item.attempt, delay_s, time.time())
        topic = delay_topic(self.queue) if Wire.NOT_BEFORE in headers else self.queue
        await self._consumer.settle(self._item, self.queue, topic, self._headers(headers))

    async def _dead_letter(self, reason: str) -> None:
        dlq = dead_letter_queue(self.queue)
        await self._consumer.settle(self._item, dlq, dlq, self._headers({Wire.REASON: Wire.reason(reason)}))

    def _headers(self, ours: dict[str, str]) -> Headers:
        return record_headers({Wire.ID: self.message_id} | ours, self._item.record.headers)
