"""The operator console's requests: list, count, inspect, replay, and bulk actions, each bounded.

A client with client isolation sees only its own requests and those of no client, exactly as the
status route shows them (`reading.visible`); the routes pass `client_id=None` for an admin key.
Bulk actions by filter act on at most `limit` requests, reading the store one page at a time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace

from openhqm.constants import Status
from openhqm.envelope import Envelope, decode_envelope
from openhqm.errors import Conflict, RequestRejected, UndecodableMessage
from openhqm.listener.dead_letters import DeadLetterFilter, DeadLetters, fresh_copy
from openhqm.listener.fanout import FanOut
from openhqm.listener.intake import Intake
from openhqm.listener.reading import Reading
from openhqm.results.base import FilteredCounts, Position, RequestFilter, RequestPage, RequestRecord, ResultStore
from openhqm.routing import Routing

CANCELLABLE = frozenset({Status.PENDING, Status.SCHEDULED, Status.RETRY, Status.PROCESSING})
BULK_PAGE = 500
BULK_MAX_PAGES = 200  # a selective filter stops after this many pages (each within the scan budget)


@dataclass
class Selection:
    """What a bulk action covers: `ids`, or the first `limit` that `where` matches."""

    ids: list[str] | None = None
    where: RequestFilter | None = None
    dead_where: DeadLetterFilter | None = None
    limit: int = 1000


@dataclass
class BulkOutcome:
    matched: int = 0
    done: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def skip(self, item_id: str, reason: str) -> None:
        self.skipped.append((item_id, reason))


class Console:
    def __init__(self, store: ResultStore, intake: Intake, reading: Reading, dead: DeadLetters,
                 routing: Routing) -> None:
        self.store = store
        self.intake = intake
        self.reading = reading
        self.dead = dead
        self.routing = routing
        self.fanout: FanOut | None = None  # fan-out replays (listener/fanout.py), plugged in by the bridge

    async def page(self, where: RequestFilter, after: Position | None, limit: int) -> RequestPage:
        return await self.store.query(where, after, limit)

    async def counts(self, where: RequestFilter) -> FilteredCounts:
        return await self.store.count_matching(where)

    async def detail(self, correlation_id: str, client_id: str | None) -> tuple[RequestRecord, Envelope | None]:
        record = await self.reading.get(correlation_id, client_id)
        return record, decoded(await self.store.get_envelope(correlation_id))

    async def replay(self, correlation_id: str, client_id: str | None) -> RequestRecord:
        """Queue a finished request again as a new one (its envelope as it was submitted)."""
        record = await self.reading.get(correlation_id, client_id)
        if not record.terminal:
            raise Conflict(f"request {correlation_id} is not finished (it is {record.status}); "
                           "cancel it first or wait for it to end")
        if self.fanout is not None and record.children:  # a fan-out parent: its failed members again
            return await self.fanout.replay_failed(record)
        original = decoded(await self.store.get_envelope(correlation_id))
        if original is None:
            raise Conflict(f"request {correlation_id} has no stored body to replay "
                           "(submitted before this version, or not through the API)")
        fresh = fresh_copy(original, correlation_id, self.routing)
        if self.fanout is not None and record.parent_id is not None:  # a fan-out child: re-opens its parent
            child = await self.fanout.replay_child(correlation_id, fresh)
            if child is not None:
                return child
        return await self.intake.submit(fresh, replayed_from=correlation_id)

    async def cancel_many(self, selection: Selection, client_id: str | None) -> BulkOutcome:
        outcome = BulkOutcome()
        async for cid in self._selected(selection, client_id):
            outcome.matched += 1
            try:
                record = await self.reading.cancel(cid, client_id)
            except RequestRejected as exc:  # NotFound (or another client's), Conflict (finished)
                outcome.skip(cid, exc.message)
            else:
                outcome.done += 1
                if self.fanout is not None:
                    await self.fanout.cancelled(record)
        return outcome

    async def _selected(self, selection: Selection, client_id: str | None) -> AsyncIterator[str]:
        if selection.ids is not None:
            for cid in selection.ids[:selection.limit]:
                yield cid
            return
        where = replace(selection.where or RequestFilter(), client_id=client_id)
        wanted = CANCELLABLE if where.statuses is None else CANCELLABLE & where.statuses
        if not wanted:
            return  # only finished states asked for: nothing to cancel
        where = replace(where, statuses=frozenset(str(s) for s in wanted))
        after, taken = None, 0
        for _ in range(BULK_MAX_PAGES):
            page = await self.store.query(where, after, min(BULK_PAGE, selection.limit - taken))
            for record in page.records:
                yield record.correlation_id
            taken += len(page.records)
            if page.next is None or taken >= selection.limit:
                return
            after = page.next

    async def replay_dead(self, selection: Selection) -> BulkOutcome:
        outcome = BulkOutcome()
        for entry_id in await self._dead_ids(selection):
            outcome.matched += 1
            try:
                await self.dead.replay(entry_id)
            except RequestRejected as exc:
                outcome.skip(entry_id, exc.message)
            else:
                outcome.done += 1
        return outcome

    async def delete_dead(self, selection: Selection) -> BulkOutcome:
        outcome = BulkOutcome()
        for entry_id in await self._dead_ids(selection):
            outcome.matched += 1
            if await self.store.take_dead_letter(entry_id) is None:
                outcome.skip(entry_id, f"no dead letter with id {entry_id!r}")
            else:
                outcome.done += 1
        return outcome

    async def _dead_ids(self, selection: Selection) -> list[str]:
        if selection.ids is not None:
            return selection.ids[:selection.limit]
        entries = await self.dead.list_matching(selection.dead_where or DeadLetterFilter(), selection.limit)
        return [entry.id for entry in entries]


def decoded(message: bytes | None) -> Envelope | None:
    if message is None:
        return None
    try:
        return decode_envelope(message)
    except UndecodableMessage:
        return None
