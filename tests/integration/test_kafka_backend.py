"""Kafka-specific behaviour against the real broker started by scripts/brokers-up (tansu, in memory).

What the contract suite cannot see: which offsets get committed, what lands in Q.delay / Q.dlq, key
turns across a nack, rebalances between two consumers, and recovery after the broker restarts.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from openhqm.backends import create_backend
from openhqm.backends.kafka import KafkaBackend
from openhqm.config import Settings
from openhqm.constants import dead_letter_queue
from openhqm.errors import BackendUnavailable
from tests.contract.receiver import Receiver
from tests.leftovers import remove_queues, unique
from tests.services import free_port, port_answers, require_service, service_address
from tests.waiting import publish_once_reachable, wait_until

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = Path(os.environ.get("BROKERS_STATE_DIR", "/tmp/openhqm-brokers"))


def kafka_settings(address: str, **overrides: object) -> Settings:
    kafka = {"bootstrap_servers": address, "group_id": f"it-{uuid.uuid4().hex[:8]}",
             "session_timeout_s": 2.0, "heartbeat_interval_s": 0.3, "rebalance_grace_s": 1.0, **overrides}
    return Settings(queue={"type": "kafka", "kafka": kafka})


@pytest.fixture
def address() -> str:
    return require_service("kafka")


@pytest.fixture
async def queue() -> AsyncIterator[str]:
    """The test's queue; its topics are deleted after its backends closed (unless tansu is down: a
    failed restart test)."""
    name = f"it-{unique()}"
    yield name
    if port_answers(service_address("kafka")):
        await remove_queues("kafka", [name])


@pytest.fixture
async def backend(address: str, queue: str) -> AsyncIterator[KafkaBackend]:
    # Depends on `queue` so that its topics are deleted after this backend closed.
    backend = create_backend(kafka_settings(address))
    assert isinstance(backend, KafkaBackend)
    await backend.connect()
    yield backend
    await backend.close()


async def create_topics(address: str, *names: str, partitions: int) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=address)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, partitions, 1) for name in names])
    finally:
        await admin.close()


async def one_partition(address: str, queue: str) -> None:
    """Create `queue` with one partition, so offsets are in publish order (Q.delay follows its count)."""
    await create_topics(address, queue, partitions=1)


async def committed_offset(address: str, backend: KafkaBackend, queue: str) -> int:
    admin = AIOKafkaAdminClient(bootstrap_servers=address)
    await admin.start()
    try:
        tp = TopicPartition(queue, 0)
        offsets = await admin.list_consumer_group_offsets(backend.group_id(queue), partitions=[tp])
        offset: int = offsets[tp].offset
        return offset
    finally:
        await admin.close()


async def raw_records(address: str, topic: str, count: int) -> list[object]:
    """Read `count` records of `topic` from the beginning, with no consumer group."""
    reader = AIOKafkaConsumer(topic, bootstrap_servers=address, enable_auto_commit=False,
                              auto_offset_reset="earliest")  # no group: all partitions, from the start
    await reader.start()
    try:
        records: list[object] = []
        async with asyncio.timeout(20):
            while len(records) < count:
                for batch in (await reader.getmany(timeout_ms=500)).values():
                    records.extend(batch)
        return records
    finally:
        await reader.stop()


def headers_of(record: object) -> dict[str, bytes]:
    return dict(record.headers)  # type: ignore[attr-defined]


async def test_offsets_are_committed_only_past_the_oldest_unsettled_delivery(
    address: str, backend: KafkaBackend, queue: str
) -> None:
    await one_partition(address, queue)
    for body in (b"m0", b"m1", b"m2"):
        await backend.publish(queue, body)
    async with Receiver(backend, queue, prefetch=3) as receiver:
        m0, m1, m2 = [await receiver.next(30) for _ in range(3)]
        assert [m0.body, m1.body, m2.body] == [b"m0", b"m1", b"m2"]
        await m2.ack()
        await m1.ack()
        assert await committed_offset(address, backend, queue) == -1  # m0 is still open
        assert await backend.depth(queue) == 3
        await m0.ack()
        assert await committed_offset(address, backend, queue) == 3
        assert await backend.depth(queue) == 0


async def test_a_consumer_that_crashes_before_its_oldest_ack_loses_nothing(address: str, queue: str) -> None:
    await one_partition(address, queue)
    settings = kafka_settings(address)
    crashed = create_backend(settings)
    await crashed.connect()
    for body in (b"m0", b"m1", b"m2"):
        await crashed.publish(queue, body)
    receiver = Receiver(crashed, queue, prefetch=3)
    deliveries = [await receiver.next(30) for _ in range(3)]
    await deliveries[1].ack()
    await deliveries[2].ack()
    await receiver.close()
    await crashed.close()  # dies with m0 unsettled

    async with create_backend(settings) as survivor, Receiver(survivor, queue) as again:
        redelivered = []
        for _ in range(3):  # at-least-once: m1 and m2 come back too, the commit could not pass m0
            delivery = await again.next(30)
            redelivered.append(delivery.body)
            await delivery.ack()
        assert redelivered == [b"m0", b"m1", b"m2"]
        assert await survivor.depth(queue) == 0


async def test_a_delivery_handed_out_before_its_iterator_closed_can_still_be_acked(
    backend: KafkaBackend, queue: str
) -> None:
    """A draining worker stops intake first, then settles in-flight work: that ack must still commit."""
    await backend.publish(queue, b"in flight")
    receiver = Receiver(backend, queue)
    delivery = await receiver.next(30)
    await receiver.close()  # the consume() iterator ends; the group member stays until the ack
    await delivery.ack()
    assert await backend.depth(queue) == 0
    await wait_until(lambda: not backend.consumers, timeout_s=30, what="the member leaves the group on its own")


async def test_fetching_pauses_at_max_buffered_and_resumes_as_deliveries_settle(
    address: str, queue: str
) -> None:
    await one_partition(address, queue)
    async with create_backend(kafka_settings(address, max_buffered=3)) as backend:
        bodies = [b"a%d" % i for i in range(10)]
        for body in bodies:
            await backend.publish(queue, body, key="a")
        async with Receiver(backend, queue, prefetch=1) as receiver:
            first = await receiver.next(30)  # a1..a9 wait behind a0: 9 held >= 3, fetching pauses
            await backend.publish(queue, b"b0", key="b")  # another key, free to go, but not fetched
            assert await receiver.nothing_within(2.0)
            await first.ack()
            got = [first.body]
            for _ in range(10):
                delivery = await receiver.next(30)
                got.append(delivery.body)
                await delivery.ack()
        assert [body for body in got if body.startswith(b"a")] == bodies
        assert b"b0" in got  # fetched once the acks brought the held records below 3
        assert await backend.depth(queue) == 0


async def test_a_nacked_copy_keeps_its_keys_turn_before_later_messages(backend: KafkaBackend, queue: str) -> None:
    for body in (b"s0", b"s1"):
        await backend.publish(queue, body, key="session-1")
    async with Receiver(backend, queue, prefetch=4) as receiver:
        first = await receiver.next(30)
        assert (first.body, first.attempt) == (b"s0", 1)
        await first.nack(delay_s=0.5)
        retried = await receiver.next(30)
        assert (retried.body, retried.attempt, retried.key) == (b"s0", 2, "session-1")
        await retried.ack()
        later = await receiver.next(30)
        assert later.body == b"s1"
        await later.ack()


async def test_other_keys_are_delivered_while_one_key_waits_for_its_settle(
    address: str, backend: KafkaBackend, queue: str
) -> None:
    await one_partition(address, queue)
    await backend.publish(queue, b"a0", key="a")
    await backend.publish(queue, b"a1", key="a")
    await backend.publish(queue, b"b0", key="b")
    async with Receiver(backend, queue, prefetch=4) as receiver:
        a0 = await receiver.next(30)
        b0 = await receiver.next(30)  # a1 is held back behind the unsettled a0
        assert (a0.body, b0.body) == (b"a0", b"b0")
        assert await receiver.nothing_within(1.0)
        await a0.ack()
        a1 = await receiver.next(30)
        assert a1.body == b"a1"
        await a1.ack()
        await b0.ack()


async def test_nack_with_delay_writes_a_copy_with_attempt_and_not_before_to_the_delay_topic(
    address: str, backend: KafkaBackend, queue: str
) -> None:
    await backend.publish(queue, b"retry me", message_id="m-42")
    async with Receiver(backend, queue) as receiver:
        delivery = await receiver.next(30)
        nacked_at = time.time()
        await delivery.nack(delay_s=600)
    [copy] = await raw_records(address, queue + ".delay", 1)
    headers = headers_of(copy)
    assert headers["openhqm-id"] == b"m-42"
    assert headers["openhqm-attempt"] == b"2"
    assert float(headers["openhqm-not-before"]) >= nacked_at + 600
    assert await backend.depth(queue) == 1  # the copy waits in Q.delay; the original is committed


async def test_dead_letter_produces_the_record_with_its_reason_to_the_dlq_topic(
    address: str, backend: KafkaBackend, queue: str
) -> None:
    await backend.publish(queue, b"poison", key="s-9", message_id="m-7")
    async with Receiver(backend, queue) as receiver:
        await (await receiver.next(30)).dead_letter("handler raised ValueError")
    [record] = await raw_records(address, dead_letter_queue(queue), 1)
    headers = headers_of(record)
    assert (record.value, record.key) == (b"poison", b"s-9")  # type: ignore[attr-defined]
    assert headers["openhqm-reason"] == b"handler raised ValueError"
    assert headers["openhqm-id"] == b"m-7"
    assert await backend.depth(queue) == 0


async def test_a_delayed_message_held_by_a_crashed_consumer_still_waits_for_its_time(
    address: str, queue: str
) -> None:
    settings = kafka_settings(address)
    crashed = create_backend(settings)
    await crashed.connect()
    receiver = Receiver(crashed, queue)
    await crashed.publish(queue, b"marker")
    await (await receiver.next(30)).ack()  # the consumer is now assigned and fetching
    published_at = time.monotonic()
    await crashed.publish(queue, b"later", delay_s=4.0)
    assert await receiver.nothing_within(1.0)  # fetched and held in memory, offset uncommitted
    await receiver.close()
    await crashed.close()

    async with create_backend(settings) as survivor, Receiver(survivor, queue) as again:
        delivery = await again.next(30)
        assert delivery.body == b"later"
        assert time.monotonic() - published_at >= 3.95
        await delivery.ack()


async def test_a_rebalance_hands_an_unsettled_delivery_to_the_partitions_next_owner(
    address: str, queue: str
) -> None:
    await one_partition(address, queue)
    settings = kafka_settings(address)
    first, second = create_backend(settings), create_backend(settings)
    await first.connect()
    await second.connect()
    try:
        await first.publish(queue, b"m0")
        await first.publish(queue, b"m1")
        one = Receiver(first, queue)
        await (await one.next(30)).ack()
        held = await one.next(30)
        assert held.body == b"m1"
        two = Receiver(second, queue)  # joins: the group rebalances; m1 is unsettled past the grace
        receivers = [one, two]
        pulls = {asyncio.ensure_future(r.next(30)): r for r in receivers}
        done, pending = await asyncio.wait(pulls, return_when=asyncio.FIRST_COMPLETED, timeout=40)
        for task in pending:
            task.cancel()
        [again] = [task.result() for task in done]
        assert (again.body, again.message_id) == (b"m1", held.message_id)
        await held.ack()  # the old delivery belongs to a revoked partition: a no-op
        await again.ack()
        assert await first.depth(queue) == 0
        for receiver in receivers:
            await receiver.close()
    finally:
        await first.close()
        await second.close()


async def test_purge_moves_the_group_past_waiting_messages(address: str, backend: KafkaBackend, queue: str) -> None:
    for i in range(3):
        await backend.publish(queue, b"%d" % i)
    await backend.publish(queue, b"later", delay_s=60)
    assert await backend.purge(queue) == 4
    assert await backend.depth(queue) == 0
    async with Receiver(backend, queue) as receiver:
        assert await receiver.nothing_within(4.0)


async def test_connecting_to_a_port_where_no_broker_listens_raises_backend_unavailable() -> None:
    backend = create_backend(kafka_settings(f"127.0.0.1:{free_port()}", request_timeout_s=2.0))
    with pytest.raises(BackendUnavailable, match="connect"):
        await backend.connect()
    assert not (await backend.health()).ok
    await backend.close()


def _brokers(script: str) -> None:
    env = dict(os.environ, BROKERS_STATE_DIR=str(STATE_DIR),
               PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run([str(REPO / "scripts" / script), "kafka"], env=env, check=True, timeout=120,
                   stdout=subprocess.DEVNULL)


@pytest.mark.restarts_shared_broker
async def test_backend_resumes_publishing_and_consuming_after_the_broker_restarts(
    address: str, backend: KafkaBackend, queue: str
) -> None:
    """Proves reconnection, not durability: tansu keeps data in memory, so its restart loses topics,
    offsets and groups; the consumer rejoins and may see a post-restart message twice.

    The test re-creates the lost topics before publishing: tansu 0.6 loses a record produced in the
    instant a consumer's metadata request auto-creates the same topic (offset acknowledged, never
    fetchable, even by a fresh group-less reader); a real Kafka keeps its topics across a restart.
    """
    pids = STATE_DIR / "pids"
    if not pids.exists() or not any(line.split()[:1] == ["kafka"] for line in pids.read_text().splitlines()):
        pytest.skip(f"kafka was not started by scripts/brokers-up ({pids} has no kafka line); cannot restart it")
    await backend.publish(queue, b"before")
    async with Receiver(backend, queue) as receiver:
        await (await receiver.next(30)).ack()
        _brokers("brokers-down")  # stops tansu by its recorded PID
        assert not port_answers(address)
        _brokers("brokers-up")
        await create_topics(address, queue, queue + ".delay", partitions=4)  # see the docstring
        await publish_once_reachable(backend, queue, b"after")
        delivery = await receiver.next(60)
        assert delivery.body == b"after"
        await delivery.ack()
        async with asyncio.timeout(60):  # a redelivery after the group rejoined is allowed (at-least-once)
            while await backend.depth(queue):
                extra = await receiver.next(30)
                assert extra.body == b"after"
                await extra.ack()
    assert (await backend.health()).ok
