"""Pub/Sub behaviour beyond the contract, against Google's emulator that scripts/brokers-up started.

The restart test stops the emulator only through scripts/brokers-down, which signals the PID that
brokers-up recorded (and only while /proc shows the same process), then starts it again.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from openhqm.backends import gcp_pubsub
from openhqm.backends.gcp_pubsub import PubSubBackend
from openhqm.backends.gcp_pubsub_topics import resource_id
from openhqm.config import Settings
from openhqm.constants import dead_letter_queue
from openhqm.errors import BackendError
from tests.contract.receiver import Receiver
from tests.leftovers import remove_queues, unique
from tests.services import require_service
from tests.waiting import publish_once_reachable

Factory = Callable[..., Awaitable[PubSubBackend]]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def emulator() -> str:
    return require_service("pubsub")


@pytest.fixture
async def queue(emulator: str) -> AsyncIterator[str]:
    """The test's queue; its topics and subscriptions are deleted after its backends closed."""
    name = f"it-pubsub-{unique()}"
    yield name
    await remove_queues("pubsub", [name])


@pytest.fixture
async def make_backend(emulator: str, queue: str) -> AsyncIterator[Factory]:
    # Depends on `queue` so that its topics and subscriptions are deleted after these backends closed.
    opened: list[PubSubBackend] = []

    async def factory(**options: Any) -> PubSubBackend:
        settings = Settings(queue={"type": "pubsub", "pubsub": {
            "project_id": "openhqm-it", "emulator_host": emulator, "ack_deadline_s": 10, "timeout_s": 5,
            **options}})
        backend = PubSubBackend(settings)
        await backend.connect()
        opened.append(backend)
        return backend

    yield factory
    for backend in reversed(opened):
        await backend.close()


def test_queue_names_become_valid_pubsub_ids_without_collisions() -> None:
    assert resource_id("openhqm-requests") == "openhqm-requests"
    assert resource_id("jobs.dlq") == "jobs.dlq"
    assert resource_id("a b/ü") == "a%20b%2F%C3%BC"
    assert resource_id("1st") == "q%-1st"
    assert resource_id("google-jobs") == "q%-google-jobs"
    assert resource_id("%") == "q%-%25"
    assert len({resource_id(q) for q in ["a b", "a%20b", "a_b", "q%-a b"]}) == 4


async def test_message_on_its_last_delivery_pubsub_makes_is_moved_to_the_dead_letter_queue(
    make_backend: Factory, queue: str
) -> None:
    # Pub/Sub's policy forwards it after delivery 5 without a reason; the emulator drops it instead.
    backend = await make_backend(max_delivery_attempts=5)
    async with Receiver(backend, dead_letter_queue(queue)) as dead:
        await backend.publish(queue, b"crashes every worker")
        async with Receiver(backend, queue) as receiver:
            for attempt in range(1, 5):
                delivery = await receiver.next()
                assert delivery.attempt == attempt
                await delivery.nack()
            moved = await dead.next()
            assert moved.body == b"crashes every worker"
            await moved.ack()
            assert await receiver.nothing_within(3.0)


async def test_queue_with_characters_pubsub_forbids_round_trips(make_backend: Factory) -> None:
    backend = await make_backend()
    queue = f"1 odd/näme {unique(6)}"
    try:
        await backend.publish(queue, b"odd")
        async with Receiver(backend, queue) as receiver:
            delivery = await receiver.next()
            assert delivery.body == b"odd"
            await delivery.ack()
    finally:
        await remove_queues("pubsub", [queue])


async def test_standard_emulator_variable_is_honoured(
    emulator: str, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", emulator)
    backend = PubSubBackend(Settings(queue={"type": "pubsub", "pubsub": {"project_id": "openhqm-it"}}))
    async with backend:
        assert backend.emulator_host == emulator
        assert (await backend.health()).ok
        await backend.publish(queue, b"via the variable")
        async with Receiver(backend, queue) as receiver:
            await (await receiver.next()).ack()


async def test_later_message_of_a_key_waits_until_the_earlier_one_is_settled(
    make_backend: Factory, queue: str
) -> None:
    backend = await make_backend()
    await backend.publish(queue, b"a0", key="session-a")
    await backend.publish(queue, b"a1", key="session-a")
    await backend.publish(queue, b"b0", key="session-b")
    async with Receiver(backend, queue, prefetch=4) as receiver:
        first = [await receiver.next(), await receiver.next()]
        assert sorted(d.body for d in first) == [b"a0", b"b0"]
        assert await receiver.nothing_within(1.5)  # a1 is held back while a0 is unsettled
        for delivery in first:
            await delivery.ack()
        last = await receiver.next()
        assert (last.body, last.key) == (b"a1", "session-a")
        await last.ack()


@pytest.mark.timeout(200)  # the emulator under load has taken over a minute to hand a message back
async def test_lease_that_runs_out_counts_as_an_attempt(make_backend: Factory, queue: str) -> None:
    first = await make_backend()
    await first.publish(queue, b"abandoned")
    receiver = Receiver(first, queue)
    assert (await receiver.next()).attempt == 1
    await receiver.close()
    await first.close()  # never settled: the lease runs out (ack deadline 10 s after the last extension)
    second = await make_backend()
    async with Receiver(second, queue) as again:
        delivery = await again.next(timeout_s=150)
        assert delivery.body == b"abandoned"
        assert delivery.attempt >= 2
        await delivery.ack()


async def test_waits_beyond_the_ack_deadline_limit_use_copies_and_keep_the_count(
    make_backend: Factory, queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pub/Sub's real limit is 600 s; 1 s runs the same code paths (a copy for a nack longer than
    # the limit, fresh copies for a long not-before wait) within the test's time.
    monkeypatch.setattr(gcp_pubsub, "MAX_ACK_DEADLINE_S", 1)
    backend = await make_backend()
    published_at = time.monotonic()
    await backend.publish(queue, b"long wait", delay_s=3.0)
    async with Receiver(backend, queue) as receiver:
        delivery = await receiver.next()
        assert time.monotonic() - published_at >= 2.95
        assert delivery.attempt == 1
        nacked_at = time.monotonic()
        await delivery.nack(delay_s=2.0)
        again = await receiver.next()
        assert time.monotonic() - nacked_at >= 1.95
        assert (again.body, again.attempt) == (b"long wait", 2)
        await again.nack()
        third = await receiver.next()
        assert third.attempt == 3
        await third.ack()
        assert await receiver.nothing_within(1.5)


def _state_dir() -> Path:
    default = Path(os.environ.get("XDG_RUNTIME_DIR") or os.environ.get("TMPDIR") or "/tmp") / "openhqm-brokers"
    return Path(os.environ.get("BROKERS_STATE_DIR") or default)


async def _script(name: str, *args: str) -> None:
    env = {**os.environ, "BROKERS_STATE_DIR": str(_state_dir()),
           "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = await asyncio.create_subprocess_exec(
        str(REPO / "scripts" / name), *args, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    async with asyncio.timeout(120):
        _, err = await proc.communicate()
    assert proc.returncode == 0, f"{name} {' '.join(args)} failed: {err.decode()[-500:]}"


@pytest.mark.slow
@pytest.mark.restarts_shared_broker
async def test_backend_resumes_publishing_and_consuming_after_the_emulator_restarts(
    make_backend: Factory, queue: str, emulator: str
) -> None:
    pids = _state_dir() / "pids"
    recorded = pids.exists() and any(line.split()[:1] == ["pubsub"] for line in pids.read_text().splitlines())
    if emulator != f"127.0.0.1:{os.environ.get('PUBSUB_PORT', '8085')}" or not recorded:
        pytest.skip("the emulator was not started by scripts/brokers-up here, so this test may not stop it")
    backend = await make_backend()
    await backend.publish(queue, b"before")
    async with Receiver(backend, queue) as receiver:
        await (await receiver.next()).ack()
        await _script("brokers-down", "pubsub")
        await _script("brokers-up", "pubsub")
        # The emulator keeps state in memory: topic and subscription are gone and are created again.
        # While the emulator starts, a publish fails with any BackendError, not only BackendUnavailable.
        await publish_once_reachable(backend, queue, b"after", timeout_s=90, refusal=BackendError)
        delivery = await receiver.next(timeout_s=60)
        assert delivery.body == b"after"
        await delivery.ack()
    assert (await backend.health()).ok
