"""The backend contract, run unchanged against every target (see conftest.py and targets/).

Capability flags choose assertions: a broker without native or emulated priority is not asked for
priority order.
"""

from __future__ import annotations

import asyncio
import os
import time
from types import ModuleType

import pytest

from openhqm.backends import Backend, Support
from openhqm.constants import dead_letter_queue
from openhqm.errors import AlreadySettled
from tests.contract.conftest import BackendFactory
from tests.contract.receiver import Receiver

BINARY = bytes(range(256)) * 4


async def test_published_message_arrives_byte_for_byte(backend: Backend, queue: str) -> None:
    await backend.publish(queue, BINARY, message_id="m-1")
    async with Receiver(backend, queue) as receiver:
        delivery = await receiver.next()
        assert delivery.body == BINARY
        assert delivery.attempt == 1
        await delivery.ack()


async def test_acked_message_is_not_delivered_again(backend: Backend, queue: str) -> None:
    await backend.publish(queue, b"once")
    async with Receiver(backend, queue) as receiver:
        await (await receiver.next()).ack()
        assert await receiver.nothing_within(1.5)
    if backend.capabilities.depth:
        assert await backend.depth(queue) == 0


async def test_settling_twice_raises_already_settled(backend: Backend, queue: str) -> None:
    await backend.publish(queue, b"x")
    async with Receiver(backend, queue) as receiver:
        delivery = await receiver.next()
        await delivery.ack()
        with pytest.raises(AlreadySettled):
            await delivery.nack()


async def test_nacked_message_is_redelivered_with_a_higher_attempt(backend: Backend, queue: str) -> None:
    await backend.publish(queue, b"again")
    async with Receiver(backend, queue) as receiver:
        first = await receiver.next()
        await first.nack()
        second = await receiver.next()
        assert second.body == b"again"
        assert second.attempt >= 2
        await second.ack()


async def test_nack_with_delay_waits_at_least_that_long(backend: Backend, queue: str) -> None:
    await backend.publish(queue, b"later")
    async with Receiver(backend, queue) as receiver:
        first = await receiver.next()
        nacked_at = time.monotonic()
        await first.nack(delay_s=1.0)
        second = await receiver.next()
        assert time.monotonic() - nacked_at >= 0.95
        assert second.body == b"later"
        await second.ack()


async def test_delayed_message_is_not_delivered_before_its_delay(backend: Backend, queue: str) -> None:
    published_at = time.monotonic()
    await backend.publish(queue, b"delayed", delay_s=1.0)
    async with Receiver(backend, queue) as receiver:
        delivery = await receiver.next()
        assert time.monotonic() - published_at >= 0.95
        await delivery.ack()


@pytest.mark.timeout(200)  # some stand-ins (the Pub/Sub emulator) hand a message back slowly under load
async def test_message_of_a_consumer_that_died_comes_back(make_backend: BackendFactory, queue: str) -> None:
    first_backend = await make_backend()
    if not first_backend.capabilities.shared_between_processes:
        pytest.skip(f"{first_backend.name} lives in one process: nothing outlives its consumer")
    await first_backend.publish(queue, b"survivor")
    receiver = Receiver(first_backend, queue)
    delivery = await receiver.next()
    assert delivery.body == b"survivor"
    # The consumer dies without settling: its connection goes away.
    await receiver.close()
    await first_backend.close()
    second_backend = await make_backend()
    async with Receiver(second_backend, queue) as again:
        redelivered = await again.next(timeout_s=150)
        assert redelivered.body == b"survivor"
        await redelivered.ack()


async def test_higher_priority_is_delivered_first(backend: Backend, queue: str) -> None:
    if backend.capabilities.priority is Support.NONE:
        pytest.skip(f"{backend.name} has no priority, native or emulated (documented)")
    for priority, body in [(1, b"low"), (5, b"normal"), (15, b"urgent"), (10, b"high")]:
        await backend.publish(queue, body, priority=priority)
    got = []
    async with Receiver(backend, queue) as receiver:
        for _ in range(4):
            delivery = await receiver.next()
            got.append(delivery.body)
            await delivery.ack()
    assert got == [b"urgent", b"high", b"normal", b"low"]


async def test_dead_lettered_message_lands_in_the_dead_letter_queue(backend: Backend, queue: str) -> None:
    await backend.publish(queue, b"poison")
    async with Receiver(backend, queue) as receiver:
        await (await receiver.next()).dead_letter("handler raised ValueError")
        assert await receiver.nothing_within(1.0)
    async with Receiver(backend, dead_letter_queue(queue)) as dead:
        delivery = await dead.next()
        assert delivery.body == b"poison"
        await delivery.ack()


async def test_depth_counts_waiting_messages(backend: Backend, queue: str) -> None:
    if not backend.capabilities.depth:
        pytest.skip(f"{backend.name} cannot count waiting messages (documented)")
    for i in range(3):
        await backend.publish(queue, b"%d" % i)
    assert await backend.depth(queue) == 3
    async with Receiver(backend, queue) as receiver:
        for _ in range(3):
            await (await receiver.next()).ack()
    assert await backend.depth(queue) == 0


async def test_messages_of_one_key_are_delivered_one_at_a_time_in_order(
    backend: Backend, queue: str
) -> None:
    if backend.capabilities.ordering_key is Support.NONE:
        pytest.skip(f"{backend.name} has no ordering key (documented)")
    for i in range(3):
        await backend.publish(queue, b"a%d" % i, key="session-a")
    async with Receiver(backend, queue, prefetch=4) as receiver:
        seen = []
        for _ in range(3):
            delivery = await receiver.next()
            seen.append(delivery.body)
            await delivery.ack()
    assert seen == [b"a0", b"a1", b"a2"]


async def test_health_is_ok_when_connected(backend: Backend) -> None:
    health = await backend.health()
    assert health.ok, health.detail


async def test_many_messages_over_four_consumers_arrive_without_loss(
    make_backend: BackendFactory, target: ModuleType, queue: str
) -> None:
    count = int(os.environ.get("OPENHQM_TEST_BULK_COUNT", target.BULK_COUNT))
    publisher = await make_backend()
    bodies = [b"m%05d" % i for i in range(count)]
    for start in range(0, count, 200):
        await asyncio.gather(*(publisher.publish(queue, body) for body in bodies[start:start + 200]))
    received: list[bytes] = []
    done = asyncio.Event()

    async def consume(receiver: Receiver) -> None:
        while not done.is_set():
            try:
                delivery = await receiver.next(timeout_s=1.0)
            except TimeoutError:
                continue
            received.append(delivery.body)
            await delivery.ack()
            if len(set(received)) >= count:
                done.set()

    shared = publisher.capabilities.shared_between_processes
    consumers = [await make_backend() if shared else publisher for _ in range(4)]
    receivers = [Receiver(c, queue, prefetch=16) for c in consumers]
    try:
        async with asyncio.timeout(300):
            await asyncio.gather(*(consume(r) for r in receivers))
    finally:
        for r in receivers:
            await r.close()
    assert set(received) == set(bodies)
    duplicates = len(received) - len(set(received))
    assert duplicates <= target.ALLOWED_DUPLICATES, f"{duplicates} duplicates"
