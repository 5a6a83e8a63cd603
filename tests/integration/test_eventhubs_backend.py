"""Event Hubs backend: what it derives from a connection string, and its Kafka data path on tansu.

No Event Hubs (nor emulator) is reachable offline. Verified here: the client configuration built from a
connection string, the settings it rejects, that SASL_SSL really opens TLS, and the data path (event hub =
topic, checkpoint = the consumer group's committed offset) against the local tansu broker in PLAINTEXT.
Not verified: a SASL PLAIN login to a real namespace. The azure-eventhub (AMQP) SDK is not used at all.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from collections.abc import AsyncIterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from pydantic import SecretStr

from openhqm.backends import create_backend
from openhqm.backends.azure_eventhubs import EventHubsBackend, namespace_host
from openhqm.config import Settings, redacted
from openhqm.errors import BackendUnavailable, ConfigError
from tests.contract.receiver import Receiver
from tests.leftovers import remove_queues, unique
from tests.services import require_service

KEY = "c2VjcmV0LWtleS1ub3QtcmVhbA=="
CONNECTION_STRING = (f"Endpoint=sb://contoso-hubs.servicebus.windows.net/;"
                     f"SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={KEY}")


def hubs_settings(**eventhubs: object) -> Settings:
    section = {"connection_string": CONNECTION_STRING, **eventhubs}
    kafka = {"group_id": f"it-{uuid.uuid4().hex[:8]}", "session_timeout_s": 2.0, "heartbeat_interval_s": 0.3}
    return Settings(queue={"type": "eventhubs", "eventhubs": section, "kafka": kafka})


def test_kafka_client_settings_are_derived_from_the_connection_string() -> None:
    backend = create_backend(hubs_settings())
    assert isinstance(backend, EventHubsBackend)
    options = backend.client_options()
    assert options["bootstrap_servers"] == "contoso-hubs.servicebus.windows.net:9093"
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "PLAIN"
    assert options["sasl_plain_username"] == "$ConnectionString"
    assert options["sasl_plain_password"] == CONNECTION_STRING
    assert options["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert options["request_timeout_ms"] >= 60_000
    assert options["metadata_max_age_ms"] < 240_000 and options["connections_max_idle_ms"] < 240_000
    assert backend.group_id("requests") == f"{backend.options.group_id}.requests"


def test_display_url_shows_the_namespace_but_not_the_access_key() -> None:
    backend = create_backend(hubs_settings())
    assert KEY not in backend.display_url
    assert "contoso-hubs.servicebus.windows.net" in backend.display_url


def test_redacted_settings_hide_the_access_key() -> None:
    assert KEY not in repr(redacted(hubs_settings()))


@pytest.mark.parametrize(("eventhubs", "named"), [
    ({"connection_string": None}, "connection_string is required"),
    ({"connection_string": f"SharedAccessKeyName=x;SharedAccessKey={KEY}"}, "no 'Endpoint=sb://"),
    ({"connection_string": CONNECTION_STRING + ";EntityPath=requests"}, "EntityPath"),
    ({"checkpoint_store": "https://acct.blob.core.windows.net/checkpoints"}, "checkpoint_store"),
    ({"eventhub_name": "orders"}, "eventhub_name"),
])
def test_unusable_settings_are_rejected_naming_the_setting(eventhubs: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigError, match=named) as raised:
        create_backend(hubs_settings(**eventhubs))
    assert KEY not in str(raised.value)


def test_eventhub_name_equal_to_the_request_queue_and_the_kafka_checkpoint_store_are_accepted() -> None:
    settings = hubs_settings(eventhub_name="openhqm-requests", checkpoint_store="kafka")
    assert settings.queue.request_queue == "openhqm-requests"
    assert isinstance(create_backend(settings), EventHubsBackend)


def test_the_namespace_comes_from_the_endpoint_whatever_the_key_order_and_case() -> None:
    secret = SecretStr(f"sharedaccesskey={KEY};ENDPOINT=sb://other.servicebus.windows.net:5671/;")
    assert namespace_host(secret) == "other.servicebus.windows.net"


async def test_sasl_ssl_opens_a_tls_connection_and_a_failed_handshake_is_backend_unavailable() -> None:
    first_bytes: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(5)
        if not first_bytes.done():
            first_bytes.set_result(data)
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = create_backend(hubs_settings(kafka_bootstrap_servers=f"127.0.0.1:{port}"))
    try:
        async with asyncio.timeout(30):
            with pytest.raises(BackendUnavailable):
                await backend.connect()
        assert (await first_bytes)[:1] == b"\x16"  # a TLS handshake record: ClientHello, not Kafka bytes
    finally:
        await backend.close()
        server.close()
        await server.wait_closed()


@pytest.fixture
async def hub() -> AsyncIterator[str]:
    """The test's event hub (a topic on tansu); its topics are deleted after the backend closed."""
    name = f"it-{unique()}"
    yield name
    await remove_queues("kafka", [name])


@pytest.fixture
async def tansu_backend(hub: str) -> AsyncIterator[EventHubsBackend]:
    address = require_service("kafka")
    backend = create_backend(hubs_settings(kafka_bootstrap_servers=address, security_protocol="PLAINTEXT"))
    assert isinstance(backend, EventHubsBackend)
    await backend.connect()
    yield backend
    await backend.close()


async def test_a_queue_is_the_event_hub_of_its_name_and_an_ack_is_a_consumer_group_checkpoint(
    tansu_backend: EventHubsBackend, hub: str
) -> None:
    address = tansu_backend.options.bootstrap_servers
    await tansu_backend.publish(hub, b"event", key="device-7")

    reader = AIOKafkaConsumer(hub, bootstrap_servers=address, auto_offset_reset="earliest")
    await reader.start()
    try:
        batches = await reader.getmany(timeout_ms=10_000)
    finally:
        await reader.stop()
    [record] = [record for records in batches.values() for record in records]
    assert (record.topic, record.value, record.key) == (hub, b"event", b"device-7")

    async with Receiver(tansu_backend, hub) as receiver:
        await (await receiver.next(30)).ack()
    admin = AIOKafkaAdminClient(bootstrap_servers=address)
    await admin.start()
    try:
        tp = TopicPartition(hub, record.partition)
        checkpoints = await admin.list_consumer_group_offsets(tansu_backend.group_id(hub), partitions=[tp])
    finally:
        await admin.close()
    assert checkpoints[tp].offset == record.offset + 1
    assert await tansu_backend.depth(hub) == 0
