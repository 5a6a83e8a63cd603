"""SQS-specific behaviour against moto, started by scripts/brokers-up (state in memory).

What the contract suite cannot see: SQS queue names and attributes, the redrive policy, the reason
on a dead letter, delays beyond SQS's 900 s, FIFO queues, and recovery after moto restarts.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aioboto3
import pytest

from openhqm.backends import create_backend
from openhqm.backends import sqs as sqs_module
from openhqm.backends.sqs import SQSBackend
from openhqm.backends.sqs_queues import sqs_queue_name
from openhqm.config import Settings
from openhqm.constants import dead_letter_queue
from openhqm.errors import BackendUnavailable
from tests.contract.receiver import Receiver
from tests.leftovers import remove_queues, unique
from tests.services import port_answers, require_service, service_address

REPO = Path(__file__).resolve().parents[2]
STATE_DIR = Path(os.environ.get("BROKERS_STATE_DIR")
                 or Path(os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp") / "openhqm-brokers")
VALID_NAME = re.compile(r"^[A-Za-z0-9_-]{1,80}$")

Factory = Callable[..., Awaitable[SQSBackend]]


@pytest.fixture
def endpoint() -> str:
    address = require_service("sqs")
    for variable in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        os.environ.setdefault(variable, "testing")  # moto accepts any credentials
    return address


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """The start of every queue name of the test; its queues are deleted after its backends closed
    (unless moto is down: a failed restart test, or a test of an unreachable endpoint without moto)."""
    name = f"it-{unique(10)}"
    yield name
    if port_answers(service_address("sqs")):
        await remove_queues("sqs", [name])


@pytest.fixture
def queue(prefix: str) -> str:
    return f"{prefix}.jobs"


@pytest.fixture
async def raw(endpoint: str, prefix: str) -> AsyncIterator[Any]:
    """A plain SQS client for looking behind the backend."""
    async with aioboto3.Session(region_name="us-east-1").client("sqs", endpoint_url=endpoint) as client:
        yield client


@pytest.fixture
async def make_backend(endpoint: str, prefix: str) -> AsyncIterator[Factory]:
    opened: list[SQSBackend] = []

    async def factory(**options: Any) -> SQSBackend:
        sqs = {"endpoint_url": endpoint, "region": "us-east-1", "visibility_timeout_s": 3, **options}
        backend = create_backend(Settings(queue={"type": "sqs", "request_queue": f"{prefix}.requests",
                                                 "sqs": sqs}))
        assert isinstance(backend, SQSBackend)
        await backend.connect()
        opened.append(backend)
        return backend

    yield factory
    for backend in opened:
        await backend.close()


async def url_of(raw: Any, name: str) -> str:
    url: str = (await raw.get_queue_url(QueueName=name))["QueueUrl"]
    return url


def test_queue_names_map_to_valid_sqs_names() -> None:
    assert sqs_queue_name("openhqm-requests") == "openhqm-requests"
    assert sqs_queue_name("openhqm-requests.dlq") == "openhqm-requests-dlq"
    assert sqs_queue_name("tenant a/jobs:v1") == "tenant-a-jobs-v1"
    assert sqs_queue_name("jobs.fifo") == "jobs.fifo"
    assert sqs_queue_name("jobs.fifo.dlq") == "jobs-dlq.fifo"
    assert sqs_queue_name("jobs", fifo=True) == "jobs.fifo"
    assert sqs_queue_name("reqs.dlq", request_queue="reqs", override="prod-reqs") == "prod-reqs-dlq"
    long_a, long_b = sqs_queue_name("q" * 100 + "a"), sqs_queue_name("q" * 100 + "b")
    assert long_a != long_b and len(long_a) == 80 and VALID_NAME.match(long_a)
    long_fifo = sqs_queue_name("q" * 100, fifo=True)
    assert len(long_fifo) == 80 and long_fifo.endswith(".fifo")


async def test_queue_is_created_with_a_redrive_policy_to_its_dead_letter_queue(
    make_backend: Factory, raw: Any, queue: str
) -> None:
    backend = await make_backend(max_receive_count=7)
    await backend.publish(queue, b"x")
    dlq_url = await url_of(raw, backend.queue_name(dead_letter_queue(queue)))
    dlq_arn = (await raw.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"]))["Attributes"]
    attributes = (await raw.get_queue_attributes(QueueUrl=await url_of(raw, backend.queue_name(queue)),
                                                 AttributeNames=["All"]))["Attributes"]
    assert json.loads(attributes["RedrivePolicy"]) == {"deadLetterTargetArn": dlq_arn["QueueArn"],
                                                       "maxReceiveCount": 7}
    assert attributes["VisibilityTimeout"] == "3"


async def test_queue_name_setting_renames_the_request_queue_and_its_dead_letter_queue(
    make_backend: Factory, raw: Any, prefix: str
) -> None:
    backend = await make_backend(queue_name=f"{prefix}-custom")
    await backend.publish(f"{prefix}.requests", b"x")
    await url_of(raw, f"{prefix}-custom")
    await url_of(raw, f"{prefix}-custom-dlq")
    assert await backend.depth(f"{prefix}.requests") == 1


async def test_message_received_more_than_max_receive_count_is_moved_to_the_dead_letter_queue(
    make_backend: Factory, queue: str
) -> None:
    backend = await make_backend(max_receive_count=2, wait_time_s=1)
    await backend.publish(queue, b"crashes every worker")
    async with Receiver(backend, queue) as receiver:
        for attempt in (1, 2):
            delivery = await receiver.next()
            assert delivery.attempt == attempt
            await delivery.nack()
        assert await receiver.nothing_within(3.0)  # the third receive moves it instead
    async with Receiver(backend, dead_letter_queue(queue)) as dead:
        delivery = await dead.next()
        assert delivery.body == b"crashes every worker"
        await delivery.ack()


async def test_dead_letter_sends_the_reason_and_keeps_the_message_id(
    make_backend: Factory, raw: Any, queue: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"\x00binary", message_id="req-1", key="session-9")
    async with Receiver(backend, queue) as receiver:
        await (await receiver.next()).dead_letter("handler raised ValueError: bad input")
    dlq_url = await url_of(raw, backend.queue_name(dead_letter_queue(queue)))
    response = await raw.receive_message(QueueUrl=dlq_url, WaitTimeSeconds=5, MessageAttributeNames=["All"])
    attributes = {k: v["StringValue"] for k, v in response["Messages"][0]["MessageAttributes"].items()}
    assert attributes["openhqm-reason"] == "handler raised ValueError: bad input"
    assert attributes["openhqm-id"] == "req-1"
    assert attributes["openhqm-key"] == "session-9"
    assert await backend.depth(queue) == 0


async def test_plain_text_from_another_producer_arrives_as_its_utf8_bytes(
    make_backend: Factory, raw: Any, queue: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"creates the queue")
    url = await url_of(raw, backend.queue_name(queue))
    sent = await raw.send_message(QueueUrl=url, MessageBody='{"name": "Zoë"}')
    async with Receiver(backend, queue) as receiver:
        await (await receiver.next()).ack()
        delivery = await receiver.next()
        assert delivery.body == '{"name": "Zoë"}'.encode()
        assert delivery.message_id == sent["MessageId"]
        assert delivery.attempt == 1
        await delivery.ack()


async def test_delay_beyond_the_sqs_maximum_is_sent_again_until_it_is_due(
    make_backend: Factory, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQS caps DelaySeconds at 900 s; shrink the cap so the re-sending path runs in seconds.
    monkeypatch.setattr(sqs_module, "MAX_DELAY_S", 1)
    backend = await make_backend()
    published_at = time.monotonic()
    await backend.publish(queue, b"much later", delay_s=2.5, message_id="late-1")
    assert await backend.depth(queue) == 1  # delayed messages count as waiting
    async with Receiver(backend, queue) as receiver:
        delivery = await receiver.next()
        assert time.monotonic() - published_at >= 2.5
        assert (delivery.body, delivery.message_id, delivery.attempt) == (b"much later", "late-1", 1)
        await delivery.nack()
        again = await receiver.next()
        assert again.attempt == 2
        await again.ack()


async def test_nack_beyond_the_visibility_budget_is_sent_again_and_keeps_counting_attempts(
    make_backend: Factory, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqs_module, "HOLD_MAX_S", 1)  # SQS allows 12 h of visibility per receive
    backend = await make_backend()
    await backend.publish(queue, b"retry me", message_id="r-1")
    async with Receiver(backend, queue) as receiver:
        first = await receiver.next()
        nacked_at = time.monotonic()
        await first.nack(delay_s=2.0)
        second = await receiver.next()
        assert time.monotonic() - nacked_at >= 1.95
        assert (second.message_id, second.attempt) == ("r-1", 2)
        await second.ack()
    assert await backend.depth(queue) == 0


async def test_fifo_queue_hands_out_one_key_in_order_and_drops_a_repeated_message_id(
    make_backend: Factory, queue: str
) -> None:
    # wait_time_s=1: a moto long poll keeps the group lock it saw when it started, so a longer
    # poll would hold the next message of a key back until it ends (real SQS does not).
    backend = await make_backend(fifo=True, wait_time_s=1)
    assert backend.queue_name(queue).endswith(".fifo")
    for i in range(3):
        await backend.publish(queue, b"a%d" % i, key="session-a", message_id=f"a{i}")
    await backend.publish(queue, b"a1 again", key="session-a", message_id="a1")  # deduplicated
    async with Receiver(backend, queue, prefetch=4) as receiver:
        seen = []
        for _ in range(3):
            delivery = await receiver.next()
            assert delivery.key == "session-a"
            assert await receiver.nothing_within(1.5)  # the key's next waits for this settle
            seen.append(delivery.body)
            await delivery.ack()
        assert await receiver.nothing_within(2.0)
    assert seen == [b"a0", b"a1", b"a2"]


async def test_fifo_delay_is_held_and_its_delivery_counts_as_the_first_attempt(
    make_backend: Factory, queue: str
) -> None:
    backend = await make_backend(fifo=True, wait_time_s=1)
    published_at = time.monotonic()
    await backend.publish(queue, b"scheduled", delay_s=2.0, key="k")
    async with Receiver(backend, queue) as receiver:
        delivery = await receiver.next()
        assert time.monotonic() - published_at >= 1.95
        assert delivery.attempt == 1
        await delivery.nack()
        again = await receiver.next()
        assert again.attempt == 2
        await again.ack()


async def test_health_reports_an_unreachable_endpoint_without_raising(prefix: str) -> None:
    backend = create_backend(Settings(queue={"type": "sqs", "sqs": {"endpoint_url": "http://127.0.0.1:9"}}))
    await backend.connect()
    try:
        health = await backend.health()
        assert not health.ok and "127.0.0.1:9" in health.detail
        with pytest.raises(BackendUnavailable):
            await backend.publish(f"{prefix}.jobs", b"x")
    finally:
        await backend.close()


def _brokers(script: str) -> None:
    env = dict(os.environ, BROKERS_STATE_DIR=str(STATE_DIR),
               PATH=f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run([str(REPO / "scripts" / script), "sqs"], env=env, check=True, timeout=120,
                   stdout=subprocess.DEVNULL)


@pytest.mark.slow
@pytest.mark.restarts_shared_broker
async def test_publish_and_an_open_consumer_work_again_after_moto_restarts(
    make_backend: Factory, endpoint: str, queue: str
) -> None:
    """moto keeps its state in memory: its restart loses every queue, and the backend makes them again."""
    pids = STATE_DIR / "pids"
    if not pids.exists() or not any(line.split()[:1] == ["sqs"] for line in pids.read_text().splitlines()):
        pytest.skip(f"sqs was not started by scripts/brokers-up ({pids} has no sqs line); cannot restart it")
    backend = await make_backend(wait_time_s=2)
    await backend.publish(queue, b"before")
    async with Receiver(backend, queue) as receiver:
        await (await receiver.next()).ack()
        try:
            _brokers("brokers-down")  # stops moto by its recorded PID (and start time)
            assert not port_answers(endpoint)
            with pytest.raises(BackendUnavailable):
                await backend.publish(queue, b"lost")
        finally:
            _brokers("brokers-up")
        await backend.publish(queue, b"after")  # the queue is gone: publish creates it again
        delivery = await receiver.next(60)  # the open consume() survived the outage
        assert (delivery.body, delivery.attempt) == (b"after", 1)
        await delivery.ack()
    assert (await backend.health()).ok
