"""The same end-to-end round trip on every broker, changing only OPENHQM_QUEUE__TYPE (plus a
unique queue name per run, so runs never share a queue)."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import SAMPLE_ENV
from tests.processes import OpenHQMProcess
from tests.services import DEFAULTS, require_service, service_address

# Where a test address differs from the product's default, the matching setting.
ADDRESS_SETTINGS = {
    "redis": "OPENHQM_QUEUE__REDIS__URL", "rabbitmq": "OPENHQM_QUEUE__RABBITMQ__URL",
    "kafka": "OPENHQM_QUEUE__KAFKA__BOOTSTRAP_SERVERS", "sqs": "OPENHQM_QUEUE__SQS__ENDPOINT_URL",
    "nats": "OPENHQM_QUEUE__NATS__URL", "mqtt": "OPENHQM_QUEUE__MQTT__URL",
    "pubsub": "OPENHQM_QUEUE__PUBSUB__EMULATOR_HOST",
}
QUEUE_TYPES = ["sqlite", "memory", "redis", "rabbitmq", "kafka", "sqs", "nats", "mqtt", "pubsub"]


def submit_until_accepted(url: str, body: dict[str, object], headers: dict[str, str]) -> httpx.Response:
    """MQTT refuses a publish until a subscriber exists: retry 503 for a short, bounded while."""
    deadline = time.monotonic() + 30
    while True:
        response = httpx.post(f"{url}/api/v1/submit", json=body, headers=headers, timeout=60)
        if response.status_code != 503 or time.monotonic() > deadline:
            return response
        time.sleep(0.2)


@pytest.mark.parametrize("queue_type", QUEUE_TYPES)
def test_submit_and_get_the_result_on_every_backend(queue_type: str, tmp_path: Path) -> None:
    env = {**SAMPLE_ENV, "OPENHQM_QUEUE__TYPE": queue_type}
    run = uuid.uuid4().hex[:8]
    if queue_type in ADDRESS_SETTINGS:
        address = require_service(queue_type)
        if address != DEFAULTS[queue_type][1]:
            env[ADDRESS_SETTINGS[queue_type]] = service_address(queue_type)
        env |= {"OPENHQM_QUEUE__REQUEST_QUEUE": f"e2e-req-{run}", "OPENHQM_QUEUE__RESPONSE_QUEUE": f"e2e-resp-{run}"}
    if queue_type == "pubsub":  # the client's own standard variable, as a user would set it
        env["PUBSUB_EMULATOR_HOST"] = service_address("pubsub")
    if queue_type == "sqs":  # the product's default endpoint is AWS itself
        env |= {"OPENHQM_QUEUE__SQS__ENDPOINT_URL": service_address("sqs"), "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    if queue_type == "nats":  # a stream of its own, deleted afterwards
        env |= {"OPENHQM_QUEUE__NATS__STREAM": f"E2E_{run.upper()}", "OPENHQM_QUEUE__NATS__SUBJECT_PREFIX": f"e2e{run}"}
    server = OpenHQMProcess("serve", tmp_path, env).start()
    try:
        inline = submit_until_accepted(server.url, {"payload": {"via": queue_type}}, {"Prefer": "wait=60"})
        assert inline.status_code == 200, inline.text
        assert inline.json()["result"] == {"via": queue_type}
        queued = submit_until_accepted(server.url, {"payload": [queue_type, 2]}, {})
        assert queued.status_code == 202
        result = httpx.get(f"{server.url}{queued.headers['Location']}", params={"wait": 60}, timeout=90)
        assert result.status_code == 200 and result.json()["result"] == [queue_type, 2]
    finally:
        server.stop()
        if queue_type == "nats":
            asyncio.run(delete_nats_stream(f"E2E_{run.upper()}"))


async def delete_nats_stream(name: str) -> None:
    import nats

    client = await nats.connect(service_address("nats"))
    try:
        await client.jetstream().delete_stream(name)
    finally:
        await client.close()
