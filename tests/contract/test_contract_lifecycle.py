"""The contract around a consumer's life: close, leases, prefetch and a lost connection.

Run against every target like test_contract.py; capability flags choose what applies (no lease, no
lease tests), and a target that truly cannot show a behaviour names it in UNTESTABLE with the reason.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from types import ModuleType

import pytest

from openhqm.backends import Backend, Delivery
from openhqm.constants import dead_letter_queue
from openhqm.errors import BackendError, BackendUnavailable
from tests.contract.conftest import BackendFactory
from tests.contract.receiver import Receiver
from tests.services import host_port, require_service
from tests.tcp_proxy import CuttableProxy
from tests.waiting import publish_once_reachable

# A short lease keeps the lease tests quick; a long one shows that prefetched messages come back at
# once rather than when their lease runs out.
SHORT_LEASE_S = 2.0
LONG_LEASE_S = 60.0
# A broker that is gone must make publish fail within this bound rather than hang: above the longest
# configured request timeout (Event Hubs' Kafka client is held to at least 60 s, as Microsoft advises).
PUBLISH_FAILS_WITHIN_S = 90.0


def skip_if_untestable(target: ModuleType, behaviour: str) -> None:
    reason = getattr(target, "UNTESTABLE", {}).get(behaviour)
    if reason:
        pytest.skip(f"{target.NAME}: {reason}")


def short_lease(target: ModuleType) -> float:
    """The shortest lease the target's broker accepts, at least SHORT_LEASE_S."""
    return max(SHORT_LEASE_S, getattr(target, "MIN_LEASE_S", 0.0))


async def two_consumers(make_backend: BackendFactory, lease_s: float) -> tuple[Backend, Backend]:
    """Two consumers of one queue: two connections where the broker is shared, else one backend twice."""
    first = await make_backend(lease_s=lease_s)
    second = await make_backend(lease_s=lease_s) if first.capabilities.shared_between_processes else first
    return first, second


async def settle(delivery: Delivery, how: str) -> None:
    if how == "ack":
        await delivery.ack()
    elif how == "nack":
        await delivery.nack()
    else:
        await delivery.dead_letter("settled too late")


async def test_close_ends_every_open_consume_iterator(backend: Backend, queue: str) -> None:
    queues = [queue, f"{queue}-other"]
    iterators = [backend.consume(name) for name in queues]
    for name, iterator in zip(queues, iterators, strict=True):
        await backend.publish(name, b"x")
        async with asyncio.timeout(30):
            await (await anext(iterator)).ack()  # the iterator is open: it has delivered
    waiting = [asyncio.ensure_future(anext(iterator)) for iterator in iterators]
    await backend.close()
    async with asyncio.timeout(10):
        outcomes = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(outcome, StopAsyncIteration) for outcome in outcomes), outcomes
    await backend.close()  # idempotent


async def test_an_extended_lease_keeps_the_delivery_from_other_consumers(
    make_backend: BackendFactory, target: ModuleType, queue: str
) -> None:
    lease_s = short_lease(target)
    holder, other = await two_consumers(make_backend, lease_s)
    if not holder.capabilities.lease_extension:
        pytest.skip(f"{holder.name} has no lease to extend (documented)")
    await holder.publish(queue, b"long job")
    held = holder.consume(queue)  # read once and no further, as a worker busy with one job
    delivery = await anext(held)

    async def heartbeat() -> None:
        while True:
            await delivery.extend_lease(lease_s)
            await asyncio.sleep(lease_s / 4)  # a handler's heartbeat, well inside the lease

    beating = asyncio.ensure_future(heartbeat())
    try:
        async with Receiver(other, queue) as receiver:
            assert await receiver.nothing_within(2 * lease_s)
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
    await delivery.ack()
    await held.aclose()


@pytest.mark.parametrize("how", ["ack", "nack", "dead_letter"])
async def test_a_late_settle_after_the_lease_passed_changes_nothing(
    make_backend: BackendFactory, target: ModuleType, queue: str, how: str
) -> None:
    skip_if_untestable(target, "late_settle")
    lease_s = short_lease(target)
    slow, other = await two_consumers(make_backend, lease_s)
    if not slow.capabilities.lease_extension:
        pytest.skip(f"{slow.name} has no lease: a held delivery never goes to another consumer")
    await slow.publish(queue, b"contested")
    slow_iterator = slow.consume(queue)  # not read further, so it cannot take the message back itself
    stale = await anext(slow_iterator)
    async with Receiver(other, queue) as receiver:
        fresh = await receiver.next(timeout_s=lease_s + 30)  # handed out again once the lease passed
        assert fresh.body == b"contested" and fresh.attempt >= 2
        # Refusing a settle that came too late is as good as ignoring it; changing the queue is not.
        with contextlib.suppress(BackendError):
            await settle(stale, how)
        await fresh.nack()  # the redelivered copy is still the live one
        again = await receiver.next(timeout_s=30)
        assert again.body == b"contested" and again.attempt > fresh.attempt
        await again.ack()
        assert await receiver.nothing_within(lease_s + 1.0)
    async with Receiver(other, dead_letter_queue(queue)) as dead:
        assert await dead.nothing_within(1.0)
    await slow_iterator.aclose()


@pytest.mark.parametrize("closing", ["iterator", "backend"])
async def test_prefetched_but_unconsumed_messages_are_released_on_close(
    make_backend: BackendFactory, target: ModuleType, queue: str, closing: str
) -> None:
    skip_if_untestable(target, f"release_on_{closing}_close")
    first, second = await two_consumers(make_backend, LONG_LEASE_S)
    if closing == "backend" and first is second:
        pytest.skip(f"{first.name} lives in one process: its messages end with its backend")
    bodies = [b"%d" % i for i in range(5)]
    for body in bodies:
        await first.publish(queue, body)
    iterator = first.consume(queue, prefetch=5)
    kept = await anext(iterator)
    # A draining worker stops intake, settles what it holds, then closes the connection.
    if closing == "iterator":
        await iterator.aclose()
        await kept.ack()  # handed out before its iterator closed: still settles
    else:
        await kept.ack()
        await first.close()
    async with Receiver(second, queue) as receiver:
        # Well before their 60 s lease would hand them out again.
        rest = []
        for _ in range(4):
            rest.append(await receiver.next(timeout_s=30))
            await rest[-1].ack()
        assert await receiver.nothing_within(1.0)
    # Not asserted: that a released message keeps attempt 1. SQS and NATS count every receive.
    assert sorted([kept.body, *(d.body for d in rest)]) == bodies


@pytest.fixture
async def proxy(target: ModuleType) -> AsyncIterator[CuttableProxy]:
    """A TCP proxy in front of the target's broker, for cutting its connections."""
    if target.SERVICE is None:
        pytest.skip(f"{target.NAME} runs in the process: there is no connection to cut")
    proxy: CuttableProxy = getattr(target, "PROXY", CuttableProxy)(*host_port(require_service(target.SERVICE)))
    await proxy.start()
    yield proxy
    await proxy.stop()


async def receive_after_the_outage(receiver: Receiver) -> None:
    """Wait for "after". An ack of "before" sent just as the connection went may not have reached
    the broker, which then hands "before" out again (at-least-once). "during", whose publish was
    refused, must never arrive."""
    while (delivery := await receiver.next(timeout_s=60)).body == b"before":
        await delivery.ack()
    assert delivery.body == b"after"
    await delivery.ack()


async def test_a_consumer_resumes_after_its_connection_is_cut(
    make_backend: BackendFactory, proxy: CuttableProxy, queue: str
) -> None:
    publisher, consumer = await make_backend(), await make_backend(address=proxy.address)
    await publisher.publish(queue, b"before")
    async with Receiver(consumer, queue) as receiver:
        await (await receiver.next(timeout_s=30)).ack()
        proxy.cut()
        await publish_once_reachable(publisher, queue, b"after")  # MQTT refuses while re-subscribing
        await receive_after_the_outage(receiver)


@pytest.mark.timeout(240)  # the publish may take its whole request timeout to fail
async def test_publish_while_the_broker_is_unreachable_raises_backend_unavailable_and_works_after(
    make_backend: BackendFactory, proxy: CuttableProxy, queue: str
) -> None:
    backend = await make_backend(address=proxy.address)
    await backend.publish(queue, b"before")
    async with Receiver(backend, queue) as receiver:
        await (await receiver.next(timeout_s=30)).ack()
        await proxy.stop()
        with pytest.raises(BackendUnavailable):
            async with asyncio.timeout(PUBLISH_FAILS_WITHIN_S):
                await backend.publish(queue, b"during")
        assert not (await backend.health()).ok
        await proxy.start()
        await publish_once_reachable(backend, queue, b"after")
        await receive_after_the_outage(receiver)
    assert (await backend.health()).ok
