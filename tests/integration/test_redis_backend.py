"""Redis Streams behaviour beyond the contract, against the machine's Redis on 127.0.0.1.

The shared Redis is never flushed, paused or restarted here: every test uses its own queue name
(its own keys) and simulates an outage with a TCP proxy of its own in front of Redis. Close, lease
extension, late settles, prefetch release and reconnects are in the contract suite (tests/contract).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import pytest
import redis.asyncio as aioredis

from openhqm.backends.redis_streams import RedisStreamsBackend
from openhqm.backends.redis_streams_lua import GROUP, Keys
from openhqm.config import Settings
from openhqm.constants import dead_letter_queue
from openhqm.errors import BackendUnavailable
from tests.contract.receiver import Receiver
from tests.leftovers import remove_redis_queues, unique
from tests.services import require_service
from tests.tcp_proxy import CuttableProxy
from tests.waiting import wait_until

MakeBackend = Callable[..., Awaitable[RedisStreamsBackend]]


@pytest.fixture
def redis_url() -> str:
    return require_service("redis")


@pytest.fixture
async def queue(redis_url: str) -> AsyncIterator[str]:
    """The test's queue; its keys (and its dead letters') are deleted after the test's backends closed."""
    name = f"it-redis-{unique()}"
    yield name
    await remove_redis_queues(redis_url, name)


@pytest.fixture
async def raw(redis_url: str, queue: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client for looking at and tampering with this test's keys."""
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def make_backend(redis_url: str, queue: str) -> AsyncIterator[MakeBackend]:
    # Depends on `queue` so that its keys are deleted after these backends closed (not made again).
    opened: list[RedisStreamsBackend] = []

    async def factory(url: str | None = None, **options: Any) -> RedisStreamsBackend:
        settings = Settings(queue={"type": "redis", "redis": {"url": url or redis_url, **options}})
        backend = RedisStreamsBackend(settings)
        await backend.connect()
        opened.append(backend)
        return backend

    yield factory
    for backend in reversed(opened):
        await backend.close()


async def test_consume_backs_off_and_resumes_when_redis_is_unreachable_for_a_while(
    make_backend: MakeBackend, raw: aioredis.Redis, redis_url: str, queue: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    target = urlparse(redis_url)
    proxy = CuttableProxy(target.hostname or "127.0.0.1", target.port or 6379)
    await proxy.start()
    try:
        backend = await make_backend(f"redis://127.0.0.1:{proxy.port}/0")
        async with Receiver(backend, queue) as receiver:
            assert await receiver.nothing_within(0.3)
            await proxy.stop()
            with caplog.at_level(logging.WARNING, logger="openhqm.backends.redis_streams"):
                # Once redis-py's own retries give up, consume() logs that it backs off.
                await wait_until(lambda: any("retrying in" in r.getMessage() for r in caplog.records),
                                 timeout_s=30, what="consume() backs off")
                health = await backend.health()
                assert not health.ok
            await raw.xadd(Keys.of(queue).stream(5), {"body": b"written while down", "id": "w1"})
            await proxy.start()
            delivery = await receiver.next(timeout_s=15)
            assert delivery.body == b"written while down"
            await delivery.ack()
            assert (await backend.health()).ok
    finally:
        await proxy.stop()


async def test_an_unsettled_message_survives_its_consumer_group_being_destroyed(
    make_backend: MakeBackend, raw: aioredis.Redis, queue: str
) -> None:
    backend = await make_backend()
    keys = Keys.of(queue)
    async with Receiver(backend, queue) as receiver:
        await backend.publish(queue, b"in flight")
        first = await receiver.next()
        for stream in keys.streams:
            await raw.xgroup_destroy(stream, GROUP)
        await backend.publish(queue, b"published after")
        got = sorted([(await receiver.next(timeout_s=10)).body for _ in range(2)])
        assert got == [b"in flight", b"published after"]
        await first.ack()  # settling a delivery from before the loss raises nothing


async def test_consume_carries_on_after_the_queue_keys_are_deleted_as_by_flush(
    make_backend: MakeBackend, raw: aioredis.Redis, queue: str
) -> None:
    backend = await make_backend()
    async with Receiver(backend, queue) as receiver:
        assert await receiver.nothing_within(0.3)
        assert await raw.delete(*Keys.of(queue).streams) == 15
        await backend.publish(queue, b"after the flush")
        delivery = await receiver.next(timeout_s=10)
        assert delivery.body == b"after the flush"
        await delivery.ack()


async def test_publish_refuses_when_the_queue_is_full_instead_of_trimming(
    make_backend: MakeBackend, raw: aioredis.Redis, queue: str
) -> None:
    backend = await make_backend(maxlen=3)
    for i in range(2):
        await backend.publish(queue, b"%d" % i)
    await backend.publish(queue, b"2", delay_s=60)  # delayed messages count too
    with pytest.raises(BackendUnavailable, match=r"queue\.redis\.maxlen"):
        await backend.publish(queue, b"3")
    assert await backend.depth(queue) == 3


async def test_depth_counts_ready_and_delayed_messages_but_not_those_in_flight(
    make_backend: MakeBackend, raw: aioredis.Redis, queue: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"ready-1")
    await backend.publish(queue, b"ready-2", priority=9)
    await backend.publish(queue, b"later", delay_s=60)
    assert await backend.depth(queue) == 3
    iterator = backend.consume(queue)  # a Receiver would read ahead
    delivery = await anext(iterator)
    assert delivery.body == b"ready-2"
    assert await backend.depth(queue) == 2
    await delivery.ack()
    await iterator.aclose()
    assert await backend.purge(queue) == 2
    assert await backend.depth(queue) == 0


async def test_dead_letter_keeps_the_body_and_records_the_reason(
    make_backend: MakeBackend, raw: aioredis.Redis, queue: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"poison", message_id="m-42", key="session-7")
    async with Receiver(backend, queue) as receiver:
        await (await receiver.next()).dead_letter("handler raised ValueError")
    [(_, fields)] = await raw.xrange(Keys.of(dead_letter_queue(queue)).stream(5))
    assert fields[b"reason"] == b"handler raised ValueError"
    assert fields[b"body"] == b"poison" and fields[b"id"] == b"m-42"
    async with Receiver(backend, dead_letter_queue(queue)) as dead:
        delivery = await dead.next()
        assert (delivery.body, delivery.message_id, delivery.key, delivery.attempt) == (
            b"poison", "m-42", "session-7", 1)
        await delivery.ack()


async def test_an_earlier_delayed_message_wakes_a_mover_waiting_for_a_later_one(
    make_backend: MakeBackend, raw: aioredis.Redis, queue: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"in a minute", delay_s=60)
    async with Receiver(backend, queue) as receiver:
        assert await receiver.nothing_within(0.5)  # the mover now waits its longest (5 s)
        await backend.publish(queue, b"soon", delay_s=0.3)
        delivery = await receiver.next(timeout_s=3.0)  # well before the mover's own wake-up
        assert delivery.body == b"soon"
        await delivery.ack()


async def test_a_closed_backend_leaves_the_group_when_it_holds_nothing(
    make_backend: MakeBackend, raw: aioredis.Redis, queue: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"x")
    stream = Keys.of(queue).stream(5)

    async def consumer_names() -> set[str]:
        consumers = await raw.xinfo_consumers(stream, GROUP)
        return {c["name"].decode() if isinstance(c["name"], bytes) else c["name"] for c in consumers}

    async with Receiver(backend, queue) as receiver:
        await (await receiver.next()).ack()
    assert backend.consumer in await consumer_names()
    await backend.close()
    assert backend.consumer not in await consumer_names()


async def test_each_backend_has_its_own_consumer_name(make_backend: MakeBackend) -> None:
    first, second = await make_backend(), await make_backend()
    assert first.consumer != second.consumer


def test_display_url_masks_the_password() -> None:
    settings = Settings(queue={"type": "redis", "redis": {"url": "redis://:s3cret@127.0.0.1:6379/0"}})
    assert "s3cret" not in RedisStreamsBackend(settings).display_url


async def test_consumers_of_crashed_processes_are_forgotten_once_they_hold_nothing(
    make_backend: MakeBackend, raw: aioredis.Redis, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openhqm.backends import redis_streams

    monkeypatch.setattr(redis_streams, "_STALE_CONSUMER_MS", 50)  # instead of an hour
    monkeypatch.setattr(redis_streams, "_STALE_CHECK_S", 0.0)
    stream = Keys.of(queue).stream(5)
    await raw.xgroup_create(stream, GROUP, id="0", mkstream=True)
    await raw.xadd(stream, {"body": b"held by a crashed process", "id": "m-1"})
    await raw.xreadgroup(GROUP, "crashed-holding", {stream: ">"}, count=1)
    await raw.xreadgroup(GROUP, "crashed-empty", {stream: ">"}, count=1)

    async def both_stale() -> bool:
        return all(c["idle"] > 50 for c in await raw.xinfo_consumers(stream, GROUP))

    await wait_until(both_stale, timeout_s=10, what="both crashed consumers idle for 50 ms")
    backend = await make_backend(lease_s=60.0)
    async with Receiver(backend, queue) as receiver:
        assert await receiver.nothing_within(0.5)  # the first reclaim pass has run
    names = {c["name"] for c in await raw.xinfo_consumers(stream, GROUP)}
    assert b"crashed-empty" not in names and b"crashed-holding" in names
