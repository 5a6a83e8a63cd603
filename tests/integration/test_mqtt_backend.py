"""MQTT behaviour beyond the contract, against the machine's Mosquitto on 127.0.0.1 (never stopped).

A crash is a child process killed with SIGKILL; a network failure is a small TCP proxy whose
connections the test cuts. Several tests record what Mosquitto 2.0.11 does with shared subscriptions,
which docs/backends/mqtt.md relies on.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from openhqm.backends import create_backend
from openhqm.backends.kit import Wire
from openhqm.backends.mqtt import MQTTBackend
from openhqm.backends.mqtt_session import headers_of
from openhqm.config import Settings
from openhqm.constants import dead_letter_queue
from openhqm.errors import BackendUnavailable
from tests.contract.receiver import Receiver
from tests.services import require_service
from tests.tcp_proxy import CuttableProxy
from tests.waiting import publish_once_reachable, wait_until

Factory = Callable[..., Awaitable[MQTTBackend]]

CHILD = """
import asyncio, sys
from openhqm.backends import create_backend
from openhqm.config import Settings
from openhqm.errors import BackendUnavailable

async def main(url, client_id, queue):
    backend = create_backend(Settings(queue={"type": "mqtt", "mqtt": {
        "url": url, "client_id": client_id, "session_expiry_s": 300}}))
    await backend.connect()
    deliveries = backend.consume(queue, prefetch=4)
    first = asyncio.ensure_future(anext(deliveries))
    async with asyncio.timeout(10):
        while True:  # publish is refused until this consumer's subscription is in place
            try:
                await backend.publish(queue, b"probe")
                break
            except BackendUnavailable:
                await asyncio.sleep(0.05)
    probe = await first
    await probe.ack()
    print("ready", flush=True)
    async for delivery in deliveries:
        print(delivery.body.decode(), flush=True)  # and never settle it: the parent kills us

asyncio.run(main(*sys.argv[1:]))
"""


@pytest.fixture
def broker_url() -> str:
    return require_service("mqtt")


@pytest.fixture
def queue() -> str:
    return f"it-mqtt-{uuid.uuid4().hex[:12]}"


@pytest.fixture
async def make_backend(broker_url: str) -> AsyncIterator[Factory]:
    opened: list[MQTTBackend] = []

    async def factory(client_id: str, url: str = broker_url, **options: Any) -> MQTTBackend:
        settings = Settings(queue={"type": "mqtt", "mqtt": {
            "url": url, "client_id": client_id, "session_expiry_s": 300, **options}})
        backend = create_backend(settings)
        assert isinstance(backend, MQTTBackend)
        await backend.connect()
        opened.append(backend)
        return backend

    yield factory
    for backend in reversed(opened):
        await backend.close()


async def subscribed(backend: MQTTBackend) -> None:
    """Wait until a consume() of `backend` holds its subscription (its SUBACK arrived)."""
    # consume() signals nothing when its SUBACK arrives; the backend lists the consumer then.
    await wait_until(lambda: bool(backend.consumers), timeout_s=10, what="the consumer's SUBACK")


async def test_publish_to_a_queue_nobody_subscribes_to_is_refused_not_lost(
    make_backend: Factory, queue: str
) -> None:
    backend = await make_backend(f"it-{uuid.uuid4().hex[:6]}")
    with pytest.raises(BackendUnavailable, match="nobody subscribes"):
        await backend.publish(queue, b"nobody listens")
    async with Receiver(backend, queue) as receiver:
        await subscribed(backend)
        await backend.publish(queue, b"now someone does")
        delivery = await receiver.next()
        assert delivery.body == b"now someone does"
        await delivery.ack()


async def test_message_from_a_plain_mqtt_client_arrives_as_a_first_attempt(
    make_backend: Factory, queue: str, broker_url: str
) -> None:
    backend = await make_backend(f"it-{uuid.uuid4().hex[:6]}")
    async with Receiver(backend, queue) as receiver:
        await subscribed(backend)
        url = urlparse(broker_url)
        plain = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        plain.connect(url.hostname or "127.0.0.1", url.port or 1883)
        plain.loop_start()
        try:
            plain.publish(backend.topic(queue), b"from elsewhere", qos=1).wait_for_publish(5)
        finally:
            plain.disconnect()
            plain.loop_stop()
        delivery = await receiver.next()
        assert (delivery.body, delivery.attempt) == (b"from elsewhere", 1)
        await delivery.ack()


async def test_copies_carry_openhqm_wire_headers_as_mqtt_user_properties(
    make_backend: Factory, queue: str, broker_url: str
) -> None:
    backend = await make_backend(f"it-{uuid.uuid4().hex[:6]}")
    loop = asyncio.get_running_loop()
    seen: asyncio.Queue[mqtt.MQTTMessage] = asyncio.Queue()
    watching = asyncio.Event()
    url = urlparse(broker_url)
    watcher = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)  # a plain, non-shared subscriber

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        loop.call_soon_threadsafe(seen.put_nowait, message)

    def on_subscribe(client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        loop.call_soon_threadsafe(watching.set)

    watcher.on_message = on_message
    watcher.on_subscribe = on_subscribe
    watcher.connect(url.hostname or "127.0.0.1", url.port or 1883)
    watcher.loop_start()
    try:
        watcher.subscribe([(backend.topic(queue), 1), (backend.topic(dead_letter_queue(queue)), 1)])
        async with asyncio.timeout(10):
            await watching.wait()
        async with Receiver(backend, queue) as receiver:
            await subscribed(backend)
            await backend.publish(queue, b"to the dlq", message_id="m-1", key="k-1")
            await (await receiver.next()).dead_letter("no\nhandler")
            await backend.publish(queue, b"later", message_id="m-2")
            nacked_at = time.time()
            await (await receiver.next()).nack(delay_s=60)
            copies: dict[str, dict[str, str]] = {}
            async with asyncio.timeout(10):
                while len(copies) < 2:
                    message = await seen.get()
                    headers = headers_of(message)
                    if message.topic.endswith(".dlq") or headers.get(Wire.ATTEMPT) == "2":
                        copies[headers[Wire.ID]] = headers
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    assert copies["m-1"] == {Wire.ID: "m-1", Wire.KEY: "k-1", Wire.REASON: "no handler"}
    assert nacked_at + 59 < float(copies["m-2"][Wire.NOT_BEFORE]) < time.time() + 61  # epoch seconds


async def test_message_of_a_killed_member_waits_for_its_session_not_for_another_member(
    make_backend: Factory, queue: str, broker_url: str
) -> None:
    crashing_id = f"it-crash-{uuid.uuid4().hex[:6]}"
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, broker_url, crashing_id, queue, stdout=asyncio.subprocess.PIPE)
    try:
        assert child.stdout is not None
        async with asyncio.timeout(20):
            assert (await child.stdout.readline()).strip() == b"ready"
        other = await make_backend(f"it-other-{uuid.uuid4().hex[:6]}")
        async with Receiver(other, queue) as receiver:
            await subscribed(other)
            # Mosquitto hands shared messages out in turn: one to the child, one to the other member.
            await other.publish(queue, b"one")
            await other.publish(queue, b"two")
            got = await receiver.next()
            await got.ack()
            async with asyncio.timeout(10):
                held = (await child.stdout.readline()).strip()
            assert {held, got.body} == {b"one", b"two"}
            child.send_signal(signal.SIGKILL)
            await child.wait()
            # The other member is online and idle, yet Mosquitto keeps the message in the dead session.
            assert await receiver.nothing_within(3.0)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    revived = await make_backend(crashing_id)
    async with Receiver(revived, queue) as again:
        redelivered = await again.next()
        assert redelivered.body == held
        assert redelivered.attempt == 2  # re-sent with DUP, counted by a copy with attempt+1
        await redelivered.ack()


async def test_offline_member_of_the_share_group_still_gets_its_turn(
    make_backend: Factory, queue: str
) -> None:
    online = await make_backend(f"it-on-{uuid.uuid4().hex[:6]}")
    away_id = f"it-away-{uuid.uuid4().hex[:6]}"
    away = await make_backend(away_id)
    async with Receiver(away, queue):
        await subscribed(away)
    await away.close()  # its persistent session stays subscribed
    async with Receiver(online, queue) as receiver:
        await subscribed(online)
        for i in range(4):
            await online.publish(queue, b"m%d" % i)
        for _ in range(2):
            await (await receiver.next()).ack()
        assert await receiver.nothing_within(2.0)  # the other two wait for the absent member
    back = await make_backend(away_id)
    async with Receiver(back, queue) as receiver:
        bodies = set()
        for _ in range(2):
            delivery = await receiver.next()
            bodies.add(delivery.body)
            await delivery.ack()
    assert len(bodies) == 2


async def test_delivery_can_be_acked_after_a_reconnect_and_does_not_come_back(
    make_backend: Factory, queue: str, broker_url: str
) -> None:
    url = urlparse(broker_url)
    proxy = CuttableProxy(url.hostname or "127.0.0.1", url.port or 1883)
    await proxy.start()
    try:
        backend = await make_backend(f"it-{uuid.uuid4().hex[:6]}", url=f"mqtt://127.0.0.1:{proxy.port}")
        async with Receiver(backend, queue) as receiver:
            await subscribed(backend)
            await backend.publish(queue, b"across a cut")
            delivery = await receiver.next()
            proxy.cut()
            # paho reconnects within its 1-5 s backoff; the session resumes and Mosquitto re-sends
            # the unacked message (DUP), which the consumer recognises as the one it still holds.
            async def healthy() -> bool:
                return (await backend.health()).ok

            await wait_until(healthy, timeout_s=20, what="the backend reconnects")
            await delivery.ack()
            assert await receiver.nothing_within(2.0)
    finally:
        await proxy.stop()


class HoldingProxy(CuttableProxy):
    """While holding, what the client sends stops here: a publish is out, and its PUBACK never comes.
    After a cut, what was held goes nowhere (the connection to the broker is gone)."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port)
        self._passing = asyncio.Event()
        self._passing.set()
        self.held = b""

    def hold(self) -> None:
        self._passing.clear()

    def release(self) -> None:
        self._passing.set()

    async def _read(self, source: asyncio.StreamReader, from_broker: bool) -> bytes:
        data = await source.read(65536)
        if not from_broker and not self._passing.is_set():
            self.held += data
            await self._passing.wait()
        return data


async def test_a_publish_whose_connection_drops_before_its_puback_fails_and_is_never_sent_later(
    make_backend: Factory, queue: str, broker_url: str
) -> None:
    url = urlparse(broker_url)
    proxy = HoldingProxy(url.hostname or "127.0.0.1", url.port or 1883)
    await proxy.start()
    try:
        consumer = await make_backend(f"it-{uuid.uuid4().hex[:6]}")
        publisher = await make_backend(f"it-{uuid.uuid4().hex[:6]}", url=f"mqtt://127.0.0.1:{proxy.port}")
        async with Receiver(consumer, queue) as receiver:
            await subscribed(consumer)
            proxy.hold()
            refused = asyncio.ensure_future(publisher.publish(queue, b"refused"))
            await wait_until(lambda: b"refused" in proxy.held, timeout_s=10, what="paho sends the publish")
            proxy.cut()
            proxy.release()
            with pytest.raises(BackendUnavailable):
                async with asyncio.timeout(30):
                    await refused
            await publish_once_reachable(publisher, queue, b"after")
            # paho re-sends what it still holds as soon as it reconnects, before any new publish, and
            # Mosquitto keeps one client's order: a re-sent "refused" would come first.
            delivery = await receiver.next()
            assert delivery.body == b"after"
            await delivery.ack()
    finally:
        await proxy.stop()


async def test_delay_survives_a_consumer_restart(make_backend: Factory, queue: str) -> None:
    client_id = f"it-{uuid.uuid4().hex[:6]}"
    first = await make_backend(client_id)
    async with Receiver(first, queue):
        await subscribed(first)
        published_at = time.monotonic()
        await first.publish(queue, b"later", delay_s=3.0)
        # The consumer holds it unacked, on a timer for its due time (the backend exposes no event).
        await wait_until(lambda: any(c._timers for c in first.consumers), timeout_s=10,
                         what="the consumer holds the delayed message")
    await first.close()
    second = await make_backend(client_id)
    async with Receiver(second, queue) as receiver:
        delivery = await receiver.next()
        assert time.monotonic() - published_at >= 2.95
        assert (delivery.body, delivery.attempt) == (b"later", 1)
        await delivery.ack()
