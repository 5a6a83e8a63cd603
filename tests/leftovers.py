"""What broker tests leave on the machine's shared services: removal after each test, and the inventory
that tests/conftest.py takes before and after a run to prove the run left nothing.

The services are shared with other processes, so both touch only names the tests make: queues named
with a test prefix (`contract-`, `it-`, `e2e-`, ...), the result stores' test prefix and tables, the
tests' NATS streams. Removal is by the test's own unique name (or the prefix it starts with, for the
queues a test derives from it: `<queue>.dlq`, `<queue>-other`, delay queues).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import aio_pika
import aioboto3
import asyncpg
import grpc  # type: ignore[import-untyped]
import nats
import redis.asyncio as aioredis
from aiokafka.admin import AIOKafkaAdminClient
from botocore.exceptions import ClientError
from google.api_core import exceptions as gexc
from google.cloud import pubsub_v1
from google.pubsub_v1.services.publisher.transports.grpc import PublisherGrpcTransport
from google.pubsub_v1.services.subscriber.transports.grpc import SubscriberGrpcTransport

from openhqm.backends import rabbitmq as rmq
from openhqm.backends.gcp_pubsub_topics import resource_id
from openhqm.backends.redis_streams_lua import KEY_PREFIX as REDIS_QUEUE_KEY_PREFIX
from openhqm.constants import dead_letter_queue
from tests.services import port_answers, service_address

# Queue names the tests make (tests/contract/conftest.py, tests/integration/*): a test prefix, then
# something unique per test or run ("1 odd/": test_pubsub_backend.py's name Pub/Sub must encode).
TEST_QUEUE = re.compile(r"(contract|it|e2e|ops|pd)-|1 odd/")
REDIS_RESULTS_PREFIX = "openhqm-test-results"  # + ":<created epoch s>:<uuid>" per test
POSTGRES_TABLE_PREFIX = "openhqm_test_"  # + "<created epoch s>_<uuid>" per test
TEST_STREAM = re.compile(r"OPENHQM_(CONTRACT|IT)_|E2E_")
PUBSUB_PROJECTS = ("openhqm-contract", "openhqm-it", "openhqm")  # the contract's, integration's, default
INVENTORY_TIMEOUT_S = 20.0


# The random parts of the names this test process made (unique()), to tell its leftovers from names
# that other runs on the same services made meanwhile.
MADE_HERE: set[str] = set()


def unique(hex_chars: int = 12) -> str:
    """A random hex part for a test-made name, remembered as this process's."""
    token = uuid.uuid4().hex[:hex_chars]
    MADE_HERE.add(token)
    return token


def made_here(name: str) -> bool:
    return any(token in MADE_HERE for token in re.findall(r"[0-9a-f]{6,}", name.lower()))


def derived_queues(queue: str, delays_s: Iterable[float] = ()) -> list[str]:
    """The queue names a test derives from its own (tests/contract's `<queue>-other` included), for
    brokers that cannot list by prefix; RabbitMQ's delay queues for the delays the test used."""
    names = [queue, f"{queue}-other"]
    return [*names, *map(dead_letter_queue, names),
            *(rmq.delay_queue(queue, rmq.bucket_ms(round(d * 1000))) for d in delays_s)]


async def remove_redis_keys(url: str, pattern: str) -> None:
    """Deletes the keys matching `pattern` (a SCAN glob naming one test's keys)."""
    client = aioredis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=pattern, count=1000)]
        for start in range(0, len(keys), 500):
            await client.unlink(*keys[start:start + 500])
    finally:
        await client.aclose()


async def remove_redis_queues(url: str, queue: str) -> None:
    """Every stream, delay set and wake list of `queue` and of the queues named `queue...`."""
    await remove_redis_keys(url, f"{REDIS_QUEUE_KEY_PREFIX}{{{_glob_escape(queue)}*")


async def remove_rabbitmq_queues(url: str, names: Iterable[str]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for name in names:  # deleting a missing queue is not an error
            await channel.queue_delete(name, if_unused=False, if_empty=False)


async def remove_nats_stream(url: str, stream: str) -> None:
    client = await nats.connect(url, connect_timeout=2, max_reconnect_attempts=0)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await client.jetstream().delete_stream(stream)
    finally:
        await client.close()


async def remove_postgres_tables(dsn: str, table: str) -> None:
    """The result store's table and its companions, flow limits' included (indexes go with them)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}", "{table}_dead_letters", "{table}_schedules",'
                           f' "{table}_state", "{table}_flow_buckets", "{table}_flow_holders",'
                           f' "{table}_flow_waiting"')
    finally:
        await conn.close()


async def remove_kafka_topics(address: str, prefixes: Iterable[str]) -> None:
    """The topics starting with a prefix (`<queue>`, `<queue>.delay`, `<queue>.dlq`, ...)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=address, request_timeout_ms=10_000)
    await admin.start()
    try:
        starts = tuple(prefixes)
        if victims := [topic for topic in await admin.list_topics() if topic.startswith(starts)]:
            await admin.delete_topics(victims)
    finally:
        await admin.close()


async def remove_sqs_queues(endpoint: str, prefixes: Iterable[str]) -> None:
    """The SQS queues whose names start with a prefix (Q, Q-dlq, ...; test names are valid SQS names)."""
    async with _sqs_client(endpoint) as client:
        for prefix in prefixes:
            for url in (await client.list_queues(QueueNamePrefix=prefix)).get("QueueUrls", []):
                with contextlib.suppress(ClientError):  # gone already
                    await client.delete_queue(QueueUrl=url)


async def remove_pubsub_resources(emulator: str, prefixes: Iterable[str]) -> None:
    """The subscriptions, then topics, whose ids start with a prefix, in the tests' projects."""
    starts = tuple(resource_id(prefix) for prefix in prefixes)
    await asyncio.to_thread(_remove_pubsub_resources, emulator, starts)


def _remove_pubsub_resources(emulator: str, starts: tuple[str, ...]) -> None:
    with _pubsub_clients(emulator) as (publisher, subscriber):
        for project in PUBSUB_PROJECTS:
            for subscription in _pubsub_ids(subscriber.list_subscriptions, project, starts):
                with contextlib.suppress(gexc.NotFound):
                    subscriber.delete_subscription(subscription=f"projects/{project}/subscriptions/{subscription}")
            for topic in _pubsub_ids(publisher.list_topics, project, starts):
                with contextlib.suppress(gexc.NotFound):
                    publisher.delete_topic(topic=f"projects/{project}/topics/{topic}")


async def remove_queues(service: str, names: Iterable[str], *, delays_s: Iterable[float] = ()) -> None:
    """Everything a test made under each of its queue `names` on the machine's `service`: the queues
    (topics, subscriptions) starting with a name, or where the broker cannot list, the names a test
    derives from it (RabbitMQ's delay queues for `delays_s`; others expire alone). Nothing to do for
    in-process backends, nor for MQTT (a test's sessions expire by themselves; no message is retained)."""
    names = list(names)
    if service == "redis":
        for name in names:
            await remove_redis_queues(service_address(service), name)
    elif service == "rabbitmq":
        delays = list(delays_s)
        await remove_rabbitmq_queues(service_address(service),
                                     [queue for name in names for queue in derived_queues(name, delays)])
    elif service == "kafka":
        await remove_kafka_topics(service_address(service), names)
    elif service == "sqs":
        await remove_sqs_queues(service_address(service), names)
    elif service == "pubsub":
        await remove_pubsub_resources(service_address(service), names)


def _sqs_client(endpoint: str) -> Any:
    return aioboto3.Session().client(
        "sqs", endpoint_url=endpoint, region_name="us-east-1",  # moto accepts any credentials
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"))


@contextlib.contextmanager
def _pubsub_clients(emulator: str) -> Iterator[tuple[Any, Any]]:
    """Clients on explicit channels to the emulator (not PUBSUB_EMULATOR_HOST for the whole process),
    closed after use: a channel left open breaks the contract's connection-cut test for Pub/Sub."""
    publisher = pubsub_v1.PublisherClient(transport=PublisherGrpcTransport(channel=grpc.insecure_channel(emulator)))
    subscriber = pubsub_v1.SubscriberClient(transport=SubscriberGrpcTransport(channel=grpc.insecure_channel(emulator)))
    try:
        yield publisher, subscriber
    finally:
        publisher.transport.close()
        subscriber.close()


def _pubsub_ids(list_call: Callable[..., Iterable[Any]], project: str, starts: tuple[str, ...]) -> list[str]:
    """Ids of a project's topics or subscriptions that start with one of `starts` (tests' ids when empty)."""
    ids = [item.name.rpartition("/")[2] for item in list_call(request={"project": f"projects/{project}"},
                                                             timeout=10)]
    return [id_ for id_ in ids if id_.startswith(starts)] if starts else [id_ for id_ in ids if _is_test_id(id_)]


def _is_test_id(resource: str) -> bool:
    """A test's topic or subscription: a test queue name, as is or percent-encoded behind "q%-"."""
    return bool(TEST_QUEUE.match(unquote(resource.removeprefix("q%-"))))


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[\]\\])", r"\\\1", text)


# The inventory: for each reachable service, the test-made names it holds now.


async def _redis_names() -> set[str]:
    client = aioredis.from_url(service_address("redis"))
    names: set[str] = set()
    try:
        async for raw in client.scan_iter(match=f"{REDIS_QUEUE_KEY_PREFIX}{{*", count=1000):
            queue = raw.decode(errors="replace").removeprefix(REDIS_QUEUE_KEY_PREFIX + "{").rpartition("}")[0]
            if TEST_QUEUE.match(queue):
                names.add(f"queue {queue}")
        async for raw in client.scan_iter(match=f"{REDIS_RESULTS_PREFIX}:*", count=1000):
            names.add("result prefix " + ":".join(raw.decode(errors="replace").split(":")[:3]))
    finally:
        await client.aclose()
    return names


async def _rabbitmq_names() -> set[str]:
    """AMQP cannot list queues: `rabbitmqctl` where this machine has it (and may run it), else nothing."""
    if shutil.which("rabbitmqctl") is None:
        return set()
    listed = await asyncio.to_thread(subprocess.run, ["rabbitmqctl", "list_queues", "name", "-q", "-s"],
                                     capture_output=True, text=True, timeout=INVENTORY_TIMEOUT_S, check=False)
    return {f"queue {line}" for line in listed.stdout.splitlines() if TEST_QUEUE.match(line)}


async def _nats_names() -> set[str]:
    client = await nats.connect(service_address("nats"), connect_timeout=2, max_reconnect_attempts=0)
    try:
        streams = await client.jetstream().streams_info()
    finally:
        await client.close()
    return {f"stream {info.config.name}" for info in streams if TEST_STREAM.match(info.config.name or "")}


async def _postgres_names() -> set[str]:
    conn = await asyncpg.connect(service_address("postgres"), timeout=5)
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                                " AND starts_with(tablename, $1)", POSTGRES_TABLE_PREFIX)
    finally:
        await conn.close()
    return {f"table {name}" for (name,) in rows}


async def _kafka_names() -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=service_address("kafka"), request_timeout_ms=10_000)
    await admin.start()
    try:
        return {f"topic {topic}" for topic in await admin.list_topics() if TEST_QUEUE.match(topic)}
    finally:
        await admin.close()


async def _sqs_names() -> set[str]:
    async with _sqs_client(service_address("sqs")) as client:
        urls = [url async for page in client.get_paginator("list_queues").paginate(MaxResults=1000)
                for url in page.get("QueueUrls", [])]
    return {f"queue {name}" for url in urls if TEST_QUEUE.match(name := url.rpartition("/")[2])}


async def _pubsub_names() -> set[str]:
    return await asyncio.to_thread(_list_pubsub_names, service_address("pubsub"))


def _list_pubsub_names(emulator: str) -> set[str]:
    names: set[str] = set()
    with _pubsub_clients(emulator) as (publisher, subscriber):
        for project in PUBSUB_PROJECTS:
            names |= {f"topic {project}/{id_}" for id_ in _pubsub_ids(publisher.list_topics, project, ())}
            names |= {f"subscription {project}/{id_}"
                      for id_ in _pubsub_ids(subscriber.list_subscriptions, project, ())}
    return names


INVENTORIES: dict[str, Callable[[], Awaitable[set[str]]]] = {
    "redis": _redis_names, "rabbitmq": _rabbitmq_names, "nats": _nats_names, "postgres": _postgres_names,
    "kafka": _kafka_names, "sqs": _sqs_names, "pubsub": _pubsub_names,
}


async def inventory() -> dict[str, set[str]]:
    """Service -> the test-made names it holds; a service that does not answer is left out."""
    found: dict[str, set[str]] = {}
    for service, names in INVENTORIES.items():
        if not port_answers(service_address(service)):
            continue
        with contextlib.suppress(Exception):  # an inventory is best effort: the check, not a test
            found[service] = await asyncio.wait_for(names(), INVENTORY_TIMEOUT_S)
    return found


def inventory_in_a_subprocess() -> dict[str, set[str]]:
    """inventory() in a process of its own: its clients' global state (an event loop run in a pytest
    hook, gRPC) must not reach the tests; in the test process it broke the Pub/Sub connection-cut test."""
    try:
        listed = subprocess.run([sys.executable, "-m", "tests.leftovers"], capture_output=True, text=True,
                                cwd=Path(__file__).parents[1], timeout=len(INVENTORIES) * INVENTORY_TIMEOUT_S + 30)
        found: dict[str, list[str]] = json.loads(listed.stdout)
    except (subprocess.TimeoutExpired, ValueError):  # best effort, as inventory() itself
        return {}
    return {service: set(names) for service, names in found.items()}


def left_behind(before: dict[str, set[str]], after: dict[str, set[str]]) -> dict[str, list[str]]:
    """What appeared during the run, per service; services not inventoried both times are left out."""
    return {service: sorted(names - before[service]) for service, names in after.items()
            if service in before and names - before[service]}


if __name__ == "__main__":
    print(json.dumps({service: sorted(names) for service, names in asyncio.run(inventory()).items()}))
