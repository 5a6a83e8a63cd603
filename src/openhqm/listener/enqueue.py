"""How a submit writes a request: the store's record and the queue's message, in one write where it can.

`SeparateWrites` (any store, any broker): the record first, then the message; a refused publish
removes the record again, so a client that gets 503 leaves nothing half-written behind.
`OneTransaction`: where the SQLite queue and the SQLite result store share one file (the default of
`openhqm serve`), both rows go into one transaction: one write, and nothing to undo.

A `claimed` record asks for eager dispatch: the message is written already leased to this process
and its delivery returned (`Leased`), for the worker pool beside the listener to run without consuming
it. Nothing is leased (None) when that would overtake a message waiting ahead of it: the message is
written for consumers then. In one transaction the record is written as `claimed` (PROCESSING, the
worker's claim) when the message is leased, so the job needs no claim of its own.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from openhqm.backends.base import Backend, Delivery
from openhqm.backends.sqlite import SQLiteBackend
from openhqm.errors import BackendUnavailable, OpenHQMError
from openhqm.logging import get_logger
from openhqm.results.base import RequestRecord, ResultStore
from openhqm.results.sqlite import SQLiteResultStore

log = get_logger("openhqm.listener")


@dataclass(frozen=True)
class Message:
    """The queued message of a request (its encoded envelope is also what the record keeps)."""

    queue: str
    body: bytes
    message_id: str
    priority: int
    delay_s: float | None = None
    key: str | None = None


class Leased(NamedTuple):
    delivery: Delivery
    claimed: bool  # the record was written as claimed (PROCESSING): the job skips its claim


class Writes(Protocol):
    async def put(self, record: RequestRecord, message: Message, *,
                  claimed: RequestRecord | None = None) -> Leased | None:
        """Write both, or raise with nothing written. With `claimed` (the record as a local worker's claim
        writes it) lease the message to this process where nothing waits ahead of it."""


class SeparateWrites:
    def __init__(self, backend: Backend, store: ResultStore) -> None:
        self.backend = backend
        self.store = store

    async def put(self, record: RequestRecord, message: Message, *,
                  claimed: RequestRecord | None = None) -> Leased | None:
        await self.store.create(record, message.body)  # the message too: the console's detail and replay
        try:
            if claimed is not None and message.delay_s is None:
                delivery = await self.backend.publish_leased(message.queue, message.body, priority=message.priority,
                                                             key=message.key, message_id=message.message_id)
                return None if delivery is None else Leased(delivery, claimed=False)
            await self.backend.publish(message.queue, message.body, priority=message.priority,
                                       delay_s=message.delay_s, key=message.key, message_id=message.message_id)
            return None
        except Exception as exc:
            try:
                await self.store.delete(record.correlation_id)
            except Exception as undo:  # the store failed too (a full disk refuses the delete as well)
                log.warning("a refused request's record could not be removed; it stays PENDING without "
                            "a message", correlation_id=record.correlation_id, error=str(undo))
            if isinstance(exc, OpenHQMError) and type(exc) is not BackendUnavailable:
                raise  # a client's error, or a refusal that names its own cause (StoreFull)
            raise BackendUnavailable(f"the queue did not accept the request: {exc}") from exc


class OneTransaction:
    def __init__(self, backend: SQLiteBackend, store: SQLiteResultStore) -> None:
        self.backend = backend
        self.store = store

    async def put(self, record: RequestRecord, message: Message, *,
                  claimed: RequestRecord | None = None) -> Leased | None:
        backend, store = self.backend, self.store

        def both(conn: sqlite3.Connection) -> Leased | None:
            leased = claimed is not None and message.delay_s is None \
                and not backend.waits_ahead(conn, message.queue, message.priority, message.key)
            # The record first: it raises AlreadyExists before anything is written.
            store.create_op(claimed if leased and claimed is not None else record, message.body)(conn)
            delivery = backend.publish_op(message.queue, message.body, priority=message.priority,
                                          delay_s=message.delay_s, key=message.key, message_id=message.message_id,
                                          leased=leased)(conn)
            return None if delivery is None else Leased(delivery, claimed=True)

        return await backend.db.run(both)


def sharing_one_file(backend: Backend, store: ResultStore) -> tuple[SQLiteBackend, SQLiteResultStore] | None:
    """The SQLite queue and the SQLite store when they share one file (one connection): then a write of
    both is one transaction (here, and the reply's in listener/settle.py)."""
    if isinstance(backend, SQLiteBackend) and isinstance(store, SQLiteResultStore) and backend.db is store.db:
        return backend, store
    return None


def writes_for(backend: Backend, store: ResultStore) -> Writes:
    shared = sharing_one_file(backend, store)
    return SeparateWrites(backend, store) if shared is None else OneTransaction(*shared)
