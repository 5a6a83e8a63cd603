"""Dead letters the broker makes behind the bridge's back (SQS redrive after `max_receive_count`,
Pub/Sub's dead-letter policy after `max_delivery_attempts`, NATS past `max_deliver`) end their request
FAILED with a `broker_redrive` dead letter that the API lists and replays like any other.

The test plays a worker that crashes on every attempt: it claims the request (PROCESSING, as the
processor does) and hands the delivery back unsettled, until the broker's own limit moves it."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from openhqm.constants import Status
from tests.contract.receiver import Receiver
from tests.harness import InProcess, Sample, in_process, settings
from tests.leftovers import remove_nats_stream, remove_queues
from tests.services import require_service, service_address

# The broker's own delivery limit, set as low as each allows.
LIMITS = {"sqs": ("max_receive_count", 2), "pubsub": ("max_delivery_attempts", 5), "nats": ("max_deliver", 2)}


def broker_settings(queue_type: str, run: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    address = require_service(queue_type)
    option, limit = LIMITS[queue_type]
    queue: dict[str, Any] = {"type": queue_type, "request_queue": f"bdlq-req-{run}",
                             "response_queue": f"bdlq-resp-{run}", queue_type: {option: limit}}
    if queue_type == "sqs":
        queue["sqs"] |= {"endpoint_url": address, "wait_time_s": 1}
        for variable, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                                ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(variable, value)
    elif queue_type == "pubsub":
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", service_address("pubsub"))
    else:
        queue["nats"] |= {"url": address, "stream": f"BDLQ_{run.upper()}", "subject_prefix": f"bdlq{run}"}
    return queue


@pytest.fixture(params=sorted(LIMITS))
async def listener_only(request: pytest.FixtureRequest, tmp_path: Any,
                        monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[InProcess]:
    queue_type: str = request.param
    run = uuid.uuid4().hex[:8]
    try:
        async with in_process(Sample().app, settings(tmp_path, queue=broker_settings(queue_type, run, monkeypatch)),
                              workers=False) as hq:
            yield hq
    finally:
        if queue_type == "nats":
            await remove_nats_stream(service_address("nats"), f"BDLQ_{run.upper()}")
        else:  # the queues, their dead-letter queues, topics and subscriptions this test made
            await remove_queues(queue_type, [f"bdlq-req-{run}", f"bdlq-resp-{run}"])


async def crash_every_attempt(hq: InProcess, correlation_id: str, deliveries: list[int]) -> None:
    """Claim and abandon every delivery of the request (recording its attempt), until cancelled."""
    runtime = hq.runtime
    async with Receiver(runtime.backend, runtime.settings.queue.request_queue) as receiver:
        while True:
            delivery = await receiver.next(timeout_s=600)
            deliveries.append(delivery.attempt)
            await runtime.store.transition(correlation_id, Status.PROCESSING, attempts=delivery.attempt)
            await delivery.nack()  # the crashed worker's lease running out, without the wait


async def test_request_the_broker_dead_letters_ends_failed_with_a_broker_redrive_dead_letter(
    listener_only: InProcess,
) -> None:
    hq = listener_only
    correlation_id = (await hq.accepted({"name": "crashes every worker"}))["correlation_id"]
    deliveries: list[int] = []
    crashing = asyncio.create_task(crash_every_attempt(hq, correlation_id, deliveries))
    try:
        final = await hq.result(correlation_id, wait_s=90)
    finally:
        crashing.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await crashing
    assert final["status"] == "FAILED" and len(deliveries) >= 2, deliveries
    entries = [e for e in (await hq.client.get("/api/v1/dlq")).json() if e["correlation_id"] == correlation_id]
    assert len(entries) == 1
    assert entries[0]["reason"] == "broker_redrive" and entries[0]["attempts"] == max(deliveries)
    replay = await hq.client.post(f"/api/v1/dlq/{entries[0]['id']}/replay")
    assert replay.status_code == 202 and replay.json()["replayed_from"] == correlation_id
