"""How a reply ends its request: the store's transition and the message's ack, in one write where it can.

`SeparateSettle` (any store, any broker): the dead letter (when the attempt dead-lettered), the
transition, then the ack, each a write of its own. A crash in between delivers the message again, and
the store refuses the repeated move out of a terminal state.
`OneTransactionSettle`: where the SQLite queue and the SQLite result store share one file (the default
of `openhqm serve`, the same condition as the submit's `OneTransaction`), the transition, the dead letter
and the ack are one operation of one transaction: the message is gone in the commit that makes the
record terminal, and a failed write leaves both as they were (the delivery unsettled, for the pool to
give back; with a dead letter, the broker's dead-letter queue takes the message, as when the store
refuses it in two writes).

Either way the ack follows a transition that returned, whether it moved the record or found it final
already (cancelled while it ran, or finished by an earlier delivery of the message): the reply needs
nothing more then. A transition that raised is not acked. The ack is fenced by its delivery
(backends/sqlite.py): a late one, after the lease passed and another consumer took the message,
deletes nothing.
"""

from __future__ import annotations

import sqlite3
from typing import Any, NamedTuple, Protocol

from openhqm.backends.base import Backend, Delivery
from openhqm.backends.sqlite import SQLiteDelivery
from openhqm.constants import Status
from openhqm.envelope import Reply
from openhqm.listener.enqueue import sharing_one_file
from openhqm.logging import get_logger
from openhqm.results.base import DeadLetterRecord, RequestRecord, ResultStore, transition_changes
from openhqm.results.sqlite import SQLiteResultStore

log = get_logger("openhqm.listener")


class Settled(NamedTuple):
    record: RequestRecord | None  # as the reply left it; None: the store refused the move
    stored: bool  # False: the store refused the dead letter, and the broker's dead-letter queue took the message


class Settle(Protocol):
    async def __call__(self, reply: Reply, delivery: Delivery | None,
                       dead_letter: DeadLetterRecord | None) -> Settled:
        """Store `reply` (after `dead_letter`, when given), then ack `delivery` (when given)."""


def reply_fields(reply: Reply) -> dict[str, Any]:
    """What storing `reply` writes on its record, besides what its transition does."""
    fields: dict[str, Any] = {
        "result": reply.result, "error": reply.error, "attempts": reply.attempts,
        "processing_time_ms": reply.processing_time_ms, "raw_response": reply.raw_response,
        "completed_at": reply.completed_at}
    if reply.attempt_history is not None:
        fields["attempt_history"] = reply.attempt_history
    return fields


class SeparateSettle:
    def __init__(self, store: ResultStore) -> None:
        self.store = store

    async def __call__(self, reply: Reply, delivery: Delivery | None,
                       dead_letter: DeadLetterRecord | None) -> Settled:
        if dead_letter is not None:
            if delivery is None:
                await self.store.add_dead_letter(dead_letter)
            elif not await kept(self.store, delivery, dead_letter):
                return Settled(None, stored=False)
        record = await self.store.transition(reply.correlation_id, Status(reply.status), **reply_fields(reply))
        if delivery is not None:
            await delivery.ack()
        return Settled(record, stored=True)


class OneTransactionSettle:
    def __init__(self, store: SQLiteResultStore) -> None:
        self.store = store
        self.separate = SeparateSettle(store)

    async def __call__(self, reply: Reply, delivery: Delivery | None,
                       dead_letter: DeadLetterRecord | None) -> Settled:
        if not isinstance(delivery, SQLiteDelivery):  # nothing to ack (a dead letter the bridge found)
            return await self.separate(reply, delivery, dead_letter)
        store = self.store
        move = store.transition_op(reply.correlation_id, transition_changes(Status(reply.status), reply_fields(reply)),
                                   None)
        keep = None if dead_letter is None else store.dead_letter_op(dead_letter)
        ack = delivery.ack_op()

        def finish(conn: sqlite3.Connection) -> RequestRecord | None:
            record = move(conn)  # first: whatever it raises, it raises before anything is written
            if keep is not None:
                keep(conn)
            ack(conn)
            return record

        try:
            record = await store.db.run(finish)
        except Exception:
            if dead_letter is None:
                raise  # nothing written, the delivery unsettled: its caller gives it back
            await to_broker_dead_letters(delivery, dead_letter)
            return Settled(None, stored=False)
        delivery.acked()
        store.moved(store.counted(record))
        return Settled(record, stored=True)


async def kept(store: ResultStore, delivery: Delivery, dead_letter: DeadLetterRecord) -> bool:
    """Record `dead_letter` in the store; when it refuses, the broker's dead-letter queue takes the
    message (False)."""
    try:
        await store.add_dead_letter(dead_letter)
        return True
    except Exception:
        await to_broker_dead_letters(delivery, dead_letter)
        return False


async def to_broker_dead_letters(delivery: Delivery, dead_letter: DeadLetterRecord) -> None:
    log.exception("result store refused the dead letter; using the broker's dead-letter queue")
    await delivery.dead_letter(f"{dead_letter.reason}: {dead_letter.detail}")


def settle_for(backend: Backend, store: ResultStore) -> Settle:
    shared = sharing_one_file(backend, store)
    return SeparateSettle(store) if shared is None else OneTransactionSettle(shared[1])
