"""NATS JetStream-specific behaviour against the machine's nats-server (never restarted by tests).

What the contract suite cannot see: subjects and durables, max_deliver, the dead-letter reason
header, dedup, the delay subject and a deleted stream (pulled messages given back, in-progress
leases and a dropped connection are contract tests now).
Every test gets its own stream and subject prefix and deletes the stream afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats
import pytest
from nats.js import JetStreamContext

from openhqm.backends import create_backend
from openhqm.backends.kit import Wire
from openhqm.backends.nats_jetstream import DELAYED_TOKEN, NATSJetStreamBackend, durable_name, queue_subject
from openhqm.config import Settings
from openhqm.constants import dead_letter_queue
from openhqm.errors import BackendUnavailable
from tests.contract.receiver import Receiver
from tests.leftovers import unique
from tests.services import free_port, require_service

Factory = Callable[..., Awaitable[NATSJetStreamBackend]]


@pytest.fixture
def url() -> str:
    return require_service("nats")


@pytest.fixture
def names() -> dict[str, str]:
    suffix = unique(10)
    return {"stream": f"OPENHQM_IT_{suffix}", "subject_prefix": f"openhqm-it-{suffix}"}


@pytest.fixture
async def js(url: str, names: dict[str, str]) -> AsyncIterator[JetStreamContext]:
    """A plain JetStream client for looking behind the backend; deletes the test's stream afterwards."""
    nc = await nats.connect(url)
    context = nc.jetstream()
    yield context
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await context.delete_stream(names["stream"])
    await nc.close()


@pytest.fixture
async def make_backend(url: str, names: dict[str, str], js: JetStreamContext) -> AsyncIterator[Factory]:
    opened: list[NATSJetStreamBackend] = []

    async def factory(**options: Any) -> NATSJetStreamBackend:
        backend = create_backend(Settings(queue={"type": "nats", "nats": {"url": url, **names, **options}}))
        assert isinstance(backend, NATSJetStreamBackend)
        await backend.connect()
        opened.append(backend)
        return backend

    yield factory
    for backend in opened:
        await backend.close()


@pytest.fixture
def queue() -> str:
    return f"it-{uuid.uuid4().hex[:10]}.jobs"


def test_queue_names_become_subject_tokens_and_durable_names() -> None:
    assert queue_subject("openhqm", "requests") == "openhqm.requests"
    assert queue_subject("openhqm", "requests.dlq") == "openhqm.requests.dlq"
    assert queue_subject("openhqm", "tenant a/jobs*") == "openhqm.tenant%20a%2Fjobs%2A"
    assert queue_subject("openhqm", "a..b") == "openhqm.a.%.b"
    assert queue_subject("openhqm", "x.$delayed") == "openhqm.x.%24delayed"  # never the delay subject
    first, second = durable_name("openhqm.a.b"), durable_name("openhqm.a_b")
    assert first != second
    assert all(re.fullmatch(r"[A-Za-z0-9_-]+", name) for name in (first, second))


async def test_stream_is_a_work_queue_and_acked_messages_leave_it(
    make_backend: Factory, js: JetStreamContext, names: dict[str, str], queue: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"x")
    info = await js.stream_info(names["stream"])
    assert info.config.retention == "workqueue"
    assert info.config.subjects == [f"{names['subject_prefix']}.>"]
    async with Receiver(backend, queue) as receiver:
        await (await receiver.next()).ack()
    assert (await js.stream_info(names["stream"])).state.messages == 0


async def test_all_workers_of_a_queue_share_one_durable_consumer(
    make_backend: Factory, js: JetStreamContext, names: dict[str, str], queue: str
) -> None:
    workers = [await make_backend() for _ in range(3)]
    for i in range(30):
        await workers[0].publish(queue, b"%d" % i)
    received: list[bytes] = []
    receivers = [Receiver(worker, queue, prefetch=4) for worker in workers]
    try:
        async with asyncio.timeout(30):
            while len(received) < 30:
                for receiver in receivers:
                    try:
                        delivery = await receiver.next(0.2)
                    except TimeoutError:
                        continue
                    received.append(delivery.body)
                    await delivery.ack()
    finally:
        for receiver in receivers:
            await receiver.close()
    assert sorted(received) == sorted(b"%d" % i for i in range(30))
    subject = queue_subject(names["subject_prefix"], queue)
    consumers = await js.consumers_info(names["stream"])
    assert [c.name for c in consumers if c.config.filter_subject == subject] == [durable_name(subject)]


async def test_message_delivered_more_than_max_deliver_is_moved_to_the_dead_letter_queue(
    make_backend: Factory, js: JetStreamContext, names: dict[str, str], queue: str
) -> None:
    backend = await make_backend(max_deliver=2)
    await backend.publish(queue, b"crashes every worker")
    async with Receiver(backend, queue) as receiver:
        for attempt in (1, 2):
            delivery = await receiver.next()
            assert delivery.attempt == attempt
            await delivery.nack()
        assert await receiver.nothing_within(1.5)  # the third delivery is moved instead
    dlq_subject = queue_subject(names["subject_prefix"], dead_letter_queue(queue))
    stored = await js.get_last_msg(names["stream"], dlq_subject)
    assert stored.headers is not None
    assert stored.headers[Wire.REASON] == "delivered 3 times; queue.nats.max_deliver is 2"
    async with Receiver(backend, dead_letter_queue(queue)) as dead:
        delivery = await dead.next()
        assert (delivery.body, delivery.attempt) == (b"crashes every worker", 1)
        await delivery.ack()


async def test_dead_letter_carries_the_reason_and_the_message_id(
    make_backend: Factory, js: JetStreamContext, names: dict[str, str], queue: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"poison", message_id="req-7", key="session-1")
    async with Receiver(backend, queue) as receiver:
        await (await receiver.next()).dead_letter("handler raised ValueError:\nbad input")
    stored = await js.get_last_msg(names["stream"], queue_subject(names["subject_prefix"], dead_letter_queue(queue)))
    assert stored.headers is not None
    assert stored.headers[Wire.REASON] == "handler raised ValueError: bad input"
    async with Receiver(backend, dead_letter_queue(queue)) as dead:
        delivery = await dead.next()
        assert (delivery.message_id, delivery.key) == ("req-7", "session-1")
        await delivery.ack()
    assert await backend.depth(queue) == 0


async def test_a_repeated_message_id_is_stored_once_per_queue(make_backend: Factory, queue: str) -> None:
    backend = await make_backend()
    for _ in range(2):
        await backend.publish(queue, b"once", message_id="same-id")
    await backend.publish(queue + "-other", b"elsewhere", message_id="same-id")  # another queue: kept
    assert await backend.depth(queue) == 1
    assert await backend.depth(queue + "-other") == 1


async def test_delayed_message_waits_on_the_delay_subject_and_arrives_as_attempt_one(
    make_backend: Factory, js: JetStreamContext, names: dict[str, str], queue: str
) -> None:
    backend = await make_backend()
    published_at = time.monotonic()
    await backend.publish(queue, b"scheduled", delay_s=2.0, message_id="later-1")
    delayed = f"{queue_subject(names['subject_prefix'], queue)}.{DELAYED_TOKEN}"
    assert (await js.stream_info(names["stream"], subjects_filter=delayed)).state.subjects == {delayed: 1}
    assert await backend.depth(queue) == 1
    async with Receiver(backend, queue) as receiver:
        delivery = await receiver.next()
        assert time.monotonic() - published_at >= 1.95
        assert (delivery.body, delivery.message_id, delivery.attempt) == (b"scheduled", "later-1", 1)
        await delivery.nack()
        again = await receiver.next()
        assert again.attempt == 2
        await again.ack()
    assert await backend.depth(queue) == 0


async def test_messages_queued_with_the_earlier_header_spelling_still_read(
    make_backend: Factory, js: JetStreamContext, names: dict[str, str], queue: str
) -> None:
    """Earlier versions wrote `Openhqm-Id`-style headers; NATS keeps header case, the backend reads any."""
    backend = await make_backend()
    subject = queue_subject(names["subject_prefix"], queue)
    due = time.time() + 1.0
    await js.publish(f"{subject}.{DELAYED_TOKEN}", b"old", stream=names["stream"],
                     headers={"Openhqm-Id": "old-1", "Openhqm-Key": "k-1", "Openhqm-Not-Before": repr(due)})
    async with Receiver(backend, queue) as receiver:
        delivery = await receiver.next()
        assert time.time() >= due
        assert (delivery.body, delivery.message_id, delivery.key, delivery.attempt) == (b"old", "old-1", "k-1", 1)
        await delivery.ack()


async def test_a_deleted_stream_is_created_again_for_publish_and_an_open_consumer(
    make_backend: Factory, js: JetStreamContext, names: dict[str, str], queue: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"before")
    async with Receiver(backend, queue) as receiver:
        await (await receiver.next()).ack()
        await js.delete_stream(names["stream"])  # takes the durable consumers with it
        await backend.publish(queue, b"after")
        delivery = await receiver.next(30)  # the lost pull request is noticed and the consumer re-made
        assert (delivery.body, delivery.attempt) == (b"after", 1)
        await delivery.ack()


async def test_connecting_where_no_server_listens_raises_backend_unavailable() -> None:
    backend = create_backend(Settings(queue={"type": "nats", "nats": {"url": f"nats://127.0.0.1:{free_port()}"}}))
    with pytest.raises(BackendUnavailable, match="cannot connect"):
        await backend.connect()
    assert not (await backend.health()).ok
    await backend.close()
