"""Reconciliation: a request left unfinished long after anything could still run it, with its
message in no queue, is dead-lettered (`reconciled_missing`) instead of staying PROCESSING for ever;
and what the listener's dead-lettering does with requests it does not know or that finished meanwhile."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest

from openhqm import metrics
from openhqm.app import OpenHQM
from openhqm.backends.memory import MemoryBackend
from openhqm.bridge import Bridge
from openhqm.config import Settings
from openhqm.constants import Status
from openhqm.envelope import Envelope
from openhqm.results.base import DeadLetterRecord
from openhqm.results.memory import MemoryResultStore
from openhqm.routing import Routing


@pytest.fixture
async def bridge() -> AsyncIterator[Bridge]:
    app = OpenHQM(Settings(worker={"max_timeout_s": 60}))
    async with MemoryBackend(app.settings) as backend:
        yield Bridge(app, backend, MemoryResultStore(), Routing(app.handlers, "echo"))


async def submitted(bridge: Bridge) -> str:
    record = await bridge.submit(Envelope(handler="echo", body=b"{}", content_type="application/json"))
    return record.correlation_id


async def lost_while_processing(bridge: Bridge) -> str:
    """A request a worker claimed and whose message then vanished (acked by a broken worker)."""
    correlation_id = await submitted(bridge)
    delivery = await anext(aiter(bridge.backend.consume(bridge.request_queue)))
    await delivery.ack()
    await bridge.store.transition(correlation_id, Status.PROCESSING, attempts=1)
    return correlation_id


def later(bridge: Bridge) -> float:
    """A moment past the reconciliation threshold."""
    return time.time() + bridge.housekeeping.stale_after_s + 1


def reconciled_count(bridge: Bridge) -> float:
    return metrics.FOUND_DEAD_LETTERS.labels(bridge.request_queue, "reconciled_missing")._value.get()


async def test_processing_request_whose_message_is_gone_is_dead_lettered_as_reconciled_missing(
    bridge: Bridge,
) -> None:
    correlation_id = await lost_while_processing(bridge)
    before = reconciled_count(bridge)
    assert await bridge.housekeeping.reconcile(later(bridge)) == 1
    record = await bridge.store.get(correlation_id)
    assert record is not None and record.status == Status.FAILED
    [entry] = await bridge.dead_letters()
    assert (entry.correlation_id, entry.reason, entry.attempts) == (correlation_id, "reconciled_missing", 1)
    assert entry.detail is not None and "PROCESSING" in entry.detail and "worker.max_timeout_s" in entry.detail
    assert reconciled_count(bridge) == before + 1


async def test_reconciling_again_adds_nothing(bridge: Bridge) -> None:
    await lost_while_processing(bridge)
    assert await bridge.housekeeping.reconcile(later(bridge)) == 1
    assert await bridge.housekeeping.reconcile(later(bridge)) == 0
    assert len(await bridge.dead_letters()) == 1


async def test_request_still_within_the_threshold_is_left_alone(bridge: Bridge) -> None:
    correlation_id = await lost_while_processing(bridge)
    assert await bridge.housekeeping.reconcile(time.time()) == 0
    record = await bridge.store.get(correlation_id)
    assert record is not None and record.status == Status.PROCESSING


async def test_request_whose_queue_still_holds_messages_is_left_alone(bridge: Bridge) -> None:
    correlation_id = await submitted(bridge)  # its message is still queued (a backlog)
    assert await bridge.housekeeping.reconcile(later(bridge)) == 0
    record = await bridge.store.get(correlation_id)
    assert record is not None and record.status == Status.PENDING
    assert await bridge.dead_letters() == []


async def test_a_dead_letter_for_a_request_this_store_does_not_know_is_kept(bridge: Bridge) -> None:
    entry = DeadLetterRecord(id="x.broker", correlation_id="from-elsewhere", queue=bridge.request_queue,
                             reason="broker_redrive", attempts=0, last_error=None, dead_lettered_at=time.time())
    assert await bridge.dead.fail(entry) is True
    assert [d.id for d in await bridge.dead_letters()] == ["x.broker"]


async def test_a_dead_letter_for_a_request_that_finished_meanwhile_is_dropped(bridge: Bridge) -> None:
    correlation_id = await submitted(bridge)
    await bridge.store.transition(correlation_id, Status.COMPLETED, result=1)
    entry = DeadLetterRecord(id=f"{correlation_id}.broker", correlation_id=correlation_id, queue=bridge.request_queue,
                             reason="broker_redrive", attempts=1, last_error=None, dead_lettered_at=time.time())
    assert await bridge.dead.fail(entry) is False
    assert await bridge.dead_letters() == []
