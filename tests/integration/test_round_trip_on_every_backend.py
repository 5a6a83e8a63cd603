"""The same round trip (submit with Prefer: wait, submit then long-poll) on every broker, through the
serve selection of the runtime in the test process, changing only `queue.type` (plus a unique queue
name per run, so runs never share a queue, and Kafka's group timings). Moved from tests/e2e/test_every_backend.py."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.harness import InProcess, Sample, in_process, settings
from tests.leftovers import remove_nats_stream, remove_queues, unique
from tests.services import require_service, service_address

# The queue settings that point a backend at the test's broker.
ADDRESS_SETTINGS = {
    "redis": ("redis", "url"), "rabbitmq": ("rabbitmq", "url"), "kafka": ("kafka", "bootstrap_servers"),
    "sqs": ("sqs", "endpoint_url"), "nats": ("nats", "url"), "mqtt": ("mqtt", "url"),
}
BROKERS = {*ADDRESS_SETTINGS, "pubsub"}
QUEUE_TYPES = ["sqlite", "memory", "redis", "rabbitmq", "kafka", "sqs", "nats", "mqtt", "pubsub"]


async def submit_until_accepted(hq: InProcess, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    """MQTT refuses a publish until a subscriber exists: retry 503 for a short, bounded while."""
    deadline = time.monotonic() + 30
    while True:
        response = await hq.client.post("/api/v1/submit", json=body, headers=headers)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.2)


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
async def test_submit_and_get_the_result_on_every_backend(
    queue_type: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue: dict[str, Any] = {"type": queue_type}
    run = unique(8)
    if queue_type in BROKERS:
        address = require_service(queue_type)
        queue |= {"request_queue": f"e2e-req-{run}", "response_queue": f"e2e-resp-{run}"}
        if queue_type in ADDRESS_SETTINGS:
            section, key = ADDRESS_SETTINGS[queue_type]
            queue[section] = {key: address}
    if queue_type == "pubsub":  # the client's own standard variable, as a user would set it
        monkeypatch.setenv("PUBSUB_EMULATOR_HOST", service_address("pubsub"))
    if queue_type == "sqs":
        for variable, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                                ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(variable, value)
    if queue_type == "kafka":
        # The contract target's group timings: with the defaults (45 s session) a new consumer group
        # takes about 23 s to receive its first message from tansu.
        queue["kafka"] |= {"group_id": f"e2e-{run}", "session_timeout_s": 2.0, "heartbeat_interval_s": 0.3,
                           "rebalance_grace_s": 1.0}
    if queue_type == "nats":  # a stream of its own, deleted afterwards
        queue["nats"] |= {"stream": f"E2E_{run.upper()}", "subject_prefix": f"e2e{run}"}
    try:
        async with in_process(Sample().app, settings(tmp_path, queue=queue)) as hq:
            inline = await submit_until_accepted(hq, {"payload": {"via": queue_type}}, {"Prefer": "wait=60"})
            assert inline.status_code == 200, inline.text
            assert inline.json()["result"] == {"via": queue_type}
            queued = await submit_until_accepted(hq, {"payload": [queue_type, 2]}, {})
            assert queued.status_code == 202
            result = await hq.client.get(queued.headers["Location"], params={"wait": 60})
            assert result.status_code == 200 and result.json()["result"] == [queue_type, 2]
    finally:
        if queue_type == "nats":
            await remove_nats_stream(service_address("nats"), f"E2E_{run.upper()}")
        await remove_queues(queue_type, [f"e2e-req-{run}", f"e2e-resp-{run}"])
