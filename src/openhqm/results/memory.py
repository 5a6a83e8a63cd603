"""In-process result store for tests and single-process use; nothing survives a restart. Its keyed
state (queue pauses, worker heartbeats, API schedules) is this process's alone (results/base.py)."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Any

import msgspec

from openhqm.backends.base import Health
from openhqm.errors import AlreadyExists
from openhqm.results.base import DeadLetterRecord, RequestRecord, ResultStore
from openhqm.results.queries import FilteredCounts, Position, RequestFilter, RequestPage, newest_first
from openhqm.results.series import FinishedMinute, summarise


class MemoryResultStore(ResultStore):
    name = "memory"
    tells_oldest_unfinished = True

    def __init__(self) -> None:
        super().__init__()
        self._records: dict[str, RequestRecord] = {}
        self._dead: dict[str, DeadLetterRecord] = {}
        self._envelopes: dict[str, bytes] = {}

    async def connect(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def create(self, record: RequestRecord, envelope: bytes | None = None) -> None:
        if record.correlation_id in self._records:
            raise AlreadyExists(f"request {record.correlation_id} exists")
        self._records[record.correlation_id] = record
        if envelope is not None:
            self._envelopes[record.correlation_id] = envelope

    async def delete(self, correlation_id: str) -> None:
        self._records.pop(correlation_id, None)
        self._envelopes.pop(correlation_id, None)

    async def get_envelope(self, correlation_id: str) -> bytes | None:
        return self._envelopes.get(correlation_id) if correlation_id in self._records else None

    async def query(self, where: RequestFilter, after: Position | None, limit: int) -> RequestPage:
        found = newest_first(r for r in self._records.values()
                             if (after is None or after.after(r)) and where.matches(r))
        return RequestPage(found[:limit], Position.of(found[limit - 1]) if len(found) > limit else None)

    async def count_matching(self, where: RequestFilter) -> FilteredCounts:
        counts: dict[str, int] = {}
        for record in self._records.values():
            if where.matches(record):
                counts[record.status] = counts.get(record.status, 0) + 1
        return FilteredCounts(counts)

    async def get(self, correlation_id: str) -> RequestRecord | None:
        return self._records.get(correlation_id)

    async def _transition(self, correlation_id: str, changes: dict[str, Any],
                          allowed_from: Iterable[str] | None) -> RequestRecord | None:
        record = self._records.get(correlation_id)
        if record is None:
            return None
        if (record.terminal if allowed_from is None else record.status not in set(allowed_from)):
            return None
        updated = msgspec.structs.replace(record, **changes)
        self._records[correlation_id] = updated
        return updated

    async def list_session(self, session_id: str, limit: int = 1000) -> list[RequestRecord]:
        records = [r for r in self._records.values() if r.session_id == session_id]
        return sorted(records, key=lambda r: r.submitted_at)[:limit]

    async def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for record in self._records.values():
            counts[record.status] = counts.get(record.status, 0) + 1
        return counts

    async def cleanup(self, older_than: float, statuses: Collection[str] | None = None) -> int:
        if statuses is not None and not statuses:
            return 0
        old = [cid for cid, r in self._records.items()
               if r.terminal and (r.completed_at or r.updated_at) < older_than
               and (statuses is None or r.status in statuses)]
        for cid in old:
            del self._records[cid]
            self._envelopes.pop(cid, None)
        return len(old)

    async def oldest_unfinished(self) -> float | None:
        pending = [r.submitted_at for r in self._records.values() if not r.terminal]
        return min(pending) if pending else None

    async def unfinished_submitted_before(self, before: float, limit: int = 100) -> list[RequestRecord]:
        unfinished = [r for r in self._records.values() if not r.terminal and r.submitted_at < before]
        return sorted(unfinished, key=lambda r: r.submitted_at)[:limit]

    async def add_dead_letter(self, record: DeadLetterRecord) -> None:
        self._dead[record.id] = record

    async def list_dead_letters(self, limit: int = 100) -> list[DeadLetterRecord]:
        return sorted(self._dead.values(), key=lambda d: d.dead_lettered_at)[:limit]

    async def take_dead_letter(self, dead_letter_id: str) -> DeadLetterRecord | None:
        return self._dead.pop(dead_letter_id, None)

    async def purge_dead_letters(self) -> int:
        count = len(self._dead)
        self._dead.clear()
        return count

    async def finished_series(self, since: float, until: float) -> list[FinishedMinute]:
        return summarise(((r.completed_at, r.completed_at - r.submitted_at, r.status)
                          for r in self._records.values() if r.completed_at is not None), since, until)

    async def health(self) -> Health:
        return Health(True)
