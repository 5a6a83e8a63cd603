"""The Bridge in the test process, over the memory backend and the memory result store."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from openhqm.app import OpenHQM
from openhqm.backends.memory import MemoryBackend
from openhqm.bridge import Bridge
from openhqm.config import Settings
from openhqm.envelope import Caller, Envelope, decode_envelope, encode
from openhqm.results.base import DeadLetterRecord
from openhqm.results.memory import MemoryResultStore
from openhqm.routing import Routing


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    app = OpenHQM(Settings())
    async with MemoryBackend(app.settings) as backend:
        yield Bridge(app, backend, MemoryResultStore(), Routing(app.handlers, "echo"))


async def queued(bridge: Bridge) -> Envelope:
    delivery = await anext(aiter(bridge.backend.consume(bridge.request_queue)))
    await delivery.ack()
    return decode_envelope(delivery.body)


def dead_letter(body: bytes) -> DeadLetterRecord:
    return DeadLetterRecord(id="dl-1", correlation_id="old", queue="requests", reason="failed after 3 attempt(s)",
                            attempts=3, last_error="boom", dead_lettered_at=time.time(), body=body)


async def test_replay_queues_a_fresh_first_attempt_of_the_same_request(bridge: Bridge) -> None:
    original = Envelope(id="old", handler="echo", body=b'{"n":1}', content_type="application/json",
                        priority=7, session_id="s", metadata={"team": "a"}, caller=Caller(addr="10.0.0.1"),
                        attempt=3, not_before=time.time() - 60)
    await bridge.store.add_dead_letter(dead_letter(encode(original)))
    record, entry = await bridge.replay("dl-1")
    again = await queued(bridge)
    assert entry.id == "dl-1" and record.correlation_id == again.correlation_id != "old"
    assert (again.attempt, again.not_before, again.reply_to) == (1, None, bridge.response_queue)
    assert (again.handler, again.body, again.priority, again.session_id, again.caller) == (
        "echo", b'{"n":1}', 7, "s", Caller(addr="10.0.0.1"))
    assert again.metadata == {"team": "a", "replay_of": "old"}
    assert await bridge.dead_letters() == []


async def test_replaying_another_systems_raw_message_routes_it_to_the_default(bridge: Bridge) -> None:
    await bridge.store.add_dead_letter(dead_letter(b"not an envelope"))
    await bridge.replay("dl-1")
    again = await queued(bridge)
    assert (again.handler, again.endpoint, again.body, again.raw) == ("echo", None, b"not an envelope", False)
