"""How a reply settles its request where the SQLite queue and store share their file (listener/settle.py):
which transitions ack, what a failed or late finish leaves behind."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest

from openhqm.backends.base import Delivery
from openhqm.backends.sqlite import SQLiteBackend
from openhqm.constants import Status, dead_letter_queue
from openhqm.envelope import Reply
from openhqm.listener.settle import OneTransactionSettle, SeparateSettle, settle_for
from openhqm.results.base import DeadLetterRecord, RequestRecord
from openhqm.results.memory import MemoryResultStore
from openhqm.results.sqlite import SQLiteResultStore
from tests.harness import settings

QUEUE = "settle-requests"


@dataclass
class Shared:
    backend: SQLiteBackend
    store: SQLiteResultStore
    settle: OneTransactionSettle

    async def leased(self, correlation_id: str) -> Delivery:
        """A request's record (PROCESSING) and its message, consumed: the state a finishing job is in."""
        await self.store.create(RequestRecord(correlation_id=correlation_id, status=Status.PROCESSING))
        await self.backend.publish(QUEUE, b"request", message_id=correlation_id)
        return await anext(aiter(self.backend.consume(QUEUE)))

    def messages(self, queue: str = QUEUE) -> int:
        count: int = self.store.db.connection.execute(
            "SELECT COUNT(*) FROM queue_messages WHERE queue = ?", (queue,)).fetchone()[0]
        return count

    async def status(self, correlation_id: str) -> str | None:
        record = await self.store.get(correlation_id)
        return None if record is None else record.status


@pytest.fixture
async def shared(tmp_path: Path) -> AsyncIterator[Shared]:
    config = settings(tmp_path, queue={"sqlite": {"lease_s": 0.3}})
    backend = SQLiteBackend(config)
    store = SQLiteResultStore(config.data_dir / "openhqm.db")
    await backend.connect()
    await store.connect()
    try:
        settle = settle_for(backend, store)
        assert isinstance(settle, OneTransactionSettle)  # one file, one connection
        yield Shared(backend, store, settle)
    finally:
        await store.close()
        await backend.close()


def completed(correlation_id: str) -> Reply:
    return Reply(correlation_id=correlation_id, status=Status.COMPLETED, result={"ok": True})


async def test_each_store_of_its_own_stores_then_acks(tmp_path: Path) -> None:
    backend = SQLiteBackend(settings(tmp_path))
    assert isinstance(settle_for(backend, MemoryResultStore()), SeparateSettle)


async def test_a_reply_to_a_request_already_final_acks_its_message_and_changes_no_record(shared: Shared) -> None:
    """Cancelled while it ran: the store refuses the move, and the message has nothing more to do (as
    when the store and the ack were two writes: a delivery again would only find it final)."""
    delivery = await shared.leased("cancelled")
    await shared.store.transition("cancelled", Status.CANCELLED)
    settled = await shared.settle(completed("cancelled"), delivery, None)
    assert (settled.record, settled.stored, delivery.settled) == (None, True, "ack")
    assert await shared.status("cancelled") == Status.CANCELLED
    assert shared.messages() == 0


async def test_a_transition_that_raises_writes_nothing_and_leaves_the_message_leased(shared: Shared) -> None:
    delivery = await shared.leased("unreadable")
    await shared.store.db.run(lambda c: c.execute(
        "UPDATE requests SET data = x'c1' WHERE correlation_id = 'unreadable'"))  # not a record
    with pytest.raises(msgspec.DecodeError):
        await shared.settle(completed("unreadable"), delivery, None)
    assert delivery.settled is None  # for the pool to give back
    assert shared.messages() == 1 and await shared.backend.depth(QUEUE) == 0  # still leased


async def test_a_late_finish_after_the_lease_passed_acks_nothing_of_the_next_delivery(shared: Shared) -> None:
    """The ack is fenced by its delivery: the message another consumer holds now stays with it. The late
    reply is a result all the same, and the record keeps it; the next delivery's reply is refused and
    acks its own message."""
    late = await shared.leased("slow")
    again = await anext(aiter(shared.backend.consume(QUEUE)))  # once the lease has passed
    assert again.attempt == 2
    assert (await shared.settle(completed("slow"), late, None)).record is not None
    assert shared.messages() == 1 and await shared.status("slow") == Status.COMPLETED
    assert (await shared.settle(completed("slow"), again, None)).record is None
    assert shared.messages() == 0


async def test_a_dead_letter_the_store_cannot_write_goes_to_the_broker_queue_instead(
    shared: Shared, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(record: DeadLetterRecord) -> object:
        def insert(conn: sqlite3.Connection) -> None:
            raise sqlite3.OperationalError("database or disk is full")
        return insert

    monkeypatch.setattr(shared.store, "dead_letter_op", failing)
    delivery = await shared.leased("hopeless")
    entry = DeadLetterRecord(id="dl-1", correlation_id="hopeless", queue=QUEUE, reason="handler", attempts=1,
                             last_error="no", dead_lettered_at=0.0, detail="handler gave up")
    failed = Reply(correlation_id="hopeless", status=Status.FAILED, error="no")
    settled = await shared.settle(failed, delivery, entry)
    assert (settled.stored, delivery.settled) == (False, "dead_letter")
    assert await shared.status("hopeless") == Status.PROCESSING  # nothing of the finish was written
    assert (shared.messages(), shared.messages(dead_letter_queue(QUEUE))) == (0, 1)
    assert await shared.store.list_dead_letters() == []
