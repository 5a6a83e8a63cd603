"""RabbitMQ behaviour beyond the contract, against the real broker on 127.0.0.1.

Connection loss is made with a small TCP proxy whose connections the test cuts, as a network
failure would; the machine's RabbitMQ itself is never stopped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlparse

import aio_pika
import pytest

from openhqm.backends import Backend, create_backend
from openhqm.backends import rabbitmq as rmq
from openhqm.backends import rabbitmq_consumer as rmq_consumer
from openhqm.backends.base import HEALTH_TIMEOUT_S
from openhqm.backends.kit import Wire
from openhqm.config import Settings
from openhqm.constants import dead_letter_queue
from openhqm.errors import BackendError, BackendUnavailable
from tests.contract.receiver import Receiver
from tests.leftovers import derived_queues, remove_rabbitmq_queues, unique
from tests.services import require_service
from tests.tcp_proxy import CuttableProxy

BackendFactory = Callable[..., Awaitable[Backend]]


@pytest.fixture
def broker_url() -> str:
    return require_service("rabbitmq")


@pytest.fixture
async def queue(broker_url: str) -> AsyncIterator[str]:
    """The test's queue; deleted after the test's backends closed, with its dead letters and every
    delay queue its backends declared (make_backend notes them: their TTLs depend on timing)."""
    name = f"it-rmq-{unique()}"
    yield name
    victims = [*derived_queues(name), *(q for q in _declared_by_backends if q.startswith(f"{name}.delay."))]
    _declared_by_backends.clear()
    await remove_rabbitmq_queues(broker_url, victims)


_declared_by_backends: set[str] = set()


@pytest.fixture
async def make_backend(broker_url: str, queue: str) -> AsyncIterator[BackendFactory]:
    # Depends on `queue` so that its queues are deleted after these backends closed (not made again).
    opened: list[Backend] = []

    async def factory(url: str = broker_url, **options: float) -> Backend:
        settings = Settings(queue={"type": "rabbitmq", "rabbitmq": {
            "url": url, "reconnect_interval_s": 0.2, **options}})
        backend = create_backend(settings)
        await backend.connect()
        opened.append(backend)
        return backend

    yield factory
    for backend in reversed(opened):
        assert isinstance(backend, rmq.RabbitMQBackend)
        _declared_by_backends.update(backend._declared)  # before close() forgets them
        await backend.close()


@pytest.fixture
async def proxy(broker_url: str) -> AsyncIterator[CuttableProxy]:
    parsed = urlparse(broker_url)
    proxy = CuttableProxy(parsed.hostname or "127.0.0.1", parsed.port or 5672)
    await proxy.start()
    yield proxy
    await proxy.stop()


def through(proxy: CuttableProxy, url: str) -> str:
    parsed = urlparse(url)
    return parsed._replace(netloc=f"{parsed.username}:{parsed.password}@127.0.0.1:{proxy.port}").geturl()


def test_delays_share_a_queue_per_value_rounded_up_to_two_significant_digits() -> None:
    assert [rmq.bucket_ms(ms) for ms in (1, 99, 100, 101, 1000, 1001, 1234, 59_999)] == [
        1, 99, 100, 110, 1000, 1100, 1300, 60_000]
    assert rmq.bucket_ms(10 * rmq.MAX_HOP_MS) == rmq.MAX_HOP_MS


async def test_a_delivery_held_when_its_connection_is_cut_comes_back_and_its_late_ack_is_refused(
    make_backend: BackendFactory, proxy: CuttableProxy, broker_url: str, queue: str
) -> None:
    """The broker returns the unacked message when the connection dies; the contract suite covers
    the consumer resuming, this the fate of the delivery it held."""
    publisher = await make_backend()
    consumer = await make_backend(through(proxy, broker_url))
    await publisher.publish(queue, b"held")
    async with Receiver(consumer, queue) as receiver:
        held = await receiver.next()
        proxy.cut()
        again = await receiver.next(timeout_s=30)
        assert (again.body, again.attempt) == (b"held", 2)
        await again.ack()
        with pytest.raises(BackendUnavailable, match="returned it"):
            await held.ack()
    assert await publisher.depth(queue) == 0


async def test_publish_after_a_dropped_connection_never_waits_for_the_reconnect_and_lands_once_after_it(
    make_backend: BackendFactory, proxy: CuttableProxy, broker_url: str, queue: str
) -> None:
    # A publish timeout far beyond the test's own: a publish that waited for the reconnect would hang.
    backend = await make_backend(through(proxy, broker_url), publish_timeout_s=3600.0)
    await backend.publish(queue, b"first")
    proxy.cut()
    async with asyncio.timeout(30):
        while True:  # aio-pika offers no event to await for "reconnected"; each refusal is immediate
            try:
                await backend.publish(queue, b"second")
                break
            except BackendUnavailable:
                await asyncio.sleep(0.05)
    assert await backend.depth(queue) == 2


async def test_publish_fails_at_once_while_the_connection_is_known_to_be_down_and_works_once_it_is_back(
    make_backend: BackendFactory, proxy: CuttableProxy, broker_url: str, queue: str
) -> None:
    # A publish timeout far beyond the test's own: only the known-down path can refuse in time.
    backend = await make_backend(through(proxy, broker_url), publish_timeout_s=3600.0)
    await backend.publish(queue, b"before")
    await proxy.stop()
    for _ in range(3):  # each refused at once: none waits for the reconnect
        with pytest.raises(BackendUnavailable, match=r"no connection to .* reconnecting every 0\.2 s"):
            async with asyncio.timeout(30):
                await backend.publish(queue, b"refused")
    assert "no connection to" in (await backend.health()).detail
    await proxy.start()
    async with asyncio.timeout(30):
        while True:  # aio-pika offers no event to await for "reconnected"; each refusal is immediate
            try:
                await backend.publish(queue, b"after")
                break
            except BackendUnavailable:
                await asyncio.sleep(0.05)
    assert await backend.depth(queue) == 2


async def test_health_fails_within_its_timeout_when_the_broker_is_unreachable(
    make_backend: BackendFactory, proxy: CuttableProxy, broker_url: str
) -> None:
    backend = await make_backend(through(proxy, broker_url))
    assert (await backend.health()).ok
    await proxy.stop()
    started = time.monotonic()
    health = await backend.health()
    assert not health.ok
    assert time.monotonic() - started < HEALTH_TIMEOUT_S + 1
    assert "guest:guest" not in health.detail


async def test_short_delay_is_not_held_up_by_a_longer_one_sent_before_it(
    make_backend: BackendFactory, queue: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"long", delay_s=30)
    await backend.publish(queue, b"short", delay_s=0.3)
    async with Receiver(backend, queue) as receiver:
        delivery = await receiver.next(timeout_s=10)
        assert delivery.body == b"short"
        await delivery.ack()


async def test_delay_longer_than_one_hop_is_sent_round_again(
    make_backend: BackendFactory, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rmq, "MAX_HOP_MS", 400)
    backend = await make_backend()
    published_at = time.monotonic()
    await backend.publish(queue, b"patient", delay_s=1.0)
    async with Receiver(backend, queue) as receiver:
        delivery = await receiver.next(timeout_s=10)
        assert time.monotonic() - published_at >= 0.95
        assert delivery.body == b"patient"
        assert delivery.attempt == 1  # hops are not deliveries
        await delivery.ack()


async def test_a_message_queued_by_the_previous_version_keeps_its_attempt_and_due_time(
    make_backend: BackendFactory, broker_url: str, queue: str
) -> None:
    backend = await make_backend()
    await backend.depth(queue)  # declares the queue as the backend wants it
    due_ms = round((time.time() + 1.0) * 1000)
    legacy_headers = {"openhqm-attempt": 2, rmq_consumer.LEGACY_DUE_MS: due_ms}  # an int and epoch ms
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(aio_pika.Message(b"old", headers=legacy_headers), routing_key=queue)
    async with Receiver(backend, queue) as receiver:
        delivery = await receiver.next(timeout_s=10)  # sent round a delay queue for the rest of its delay
        assert time.time() * 1000 >= due_ms
        assert (delivery.body, delivery.attempt) == (b"old", 2)
        await delivery.ack()


async def test_dead_letter_copy_carries_the_reason_and_starts_over_at_attempt_one(
    make_backend: BackendFactory, broker_url: str, queue: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"poison", message_id="m-1")
    async with Receiver(backend, queue) as receiver:
        first = await receiver.next()
        await first.nack()
        second = await receiver.next()
        assert second.attempt == 2
        await second.dead_letter("handler raised ValueError")
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        dlq = await channel.declare_queue(dead_letter_queue(queue), passive=True)
        message = await dlq.get(timeout=5)
        assert message.body == b"poison"
        assert message.message_id == "m-1"
        assert message.headers[Wire.REASON] == "handler raised ValueError"
        await message.reject(requeue=True)
    async with Receiver(backend, dead_letter_queue(queue)) as dead:
        delivery = await dead.next()
        assert (delivery.message_id, delivery.attempt) == ("m-1", 2)  # redelivered after the reject above
        await delivery.ack()


async def test_nacked_copy_keeps_its_priority(make_backend: BackendFactory, queue: str) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"low", priority=1)
    await backend.publish(queue, b"urgent", priority=15)
    async with Receiver(backend, queue) as receiver:
        first = await receiver.next()
        assert first.body == b"urgent"
        await first.nack()
        again = await receiver.next()
        assert (again.body, again.attempt) == (b"urgent", 2)
        await again.ack()
        await (await receiver.next()).ack()


async def test_depth_and_purge_count_messages_waiting_in_delay_queues(
    make_backend: BackendFactory, queue: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"now")
    for _ in range(2):
        await backend.publish(queue, b"later", delay_s=30)
    assert await backend.depth(queue) == 3
    assert await backend.purge(queue) == 3
    assert await backend.depth(queue) == 0


async def test_queue_declared_elsewhere_with_other_arguments_is_named_in_the_error(
    make_backend: BackendFactory, broker_url: str, queue: str
) -> None:
    connection = await aio_pika.connect(broker_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)  # no x-max-priority
    backend = await make_backend()
    with pytest.raises(BackendError, match=f"{queue}.*x-max-priority"):
        await backend.publish(queue, b"x")
    # The conflict closed only the declaring channel, which reopens; the backend goes on working.
    await backend.publish(f"{queue}-other", b"y")
    assert await backend.purge(f"{queue}-other") == 1
