"""ResultStore: the lifecycle and result of every request, and the dead-letter index.

Lifecycle: PENDING | SCHEDULED -> PROCESSING (<-> RETRY) -> COMPLETED | FAILED | CANCELLED | EXPIRED.
A terminal record never changes state again, so replayed or duplicated replies are harmless (a
COMPLETED reply for a request cancelled while it ran is refused); `amend()` adds to a record without
a transition (callback deliveries, a running job's progress), unseen by lifecycle hooks.
`wait()` is woken by events: at once for changes made through this store object, and by the
store's own change feed (`_watch`) for changes made by other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any

from openhqm import stages
from openhqm.backends.base import Health
from openhqm.constants import TERMINAL, Status
from openhqm.envelope import AttemptEntry
from openhqm.results.queries import FilteredCounts, Position, RequestFilter, RequestPage
from openhqm.results.records import (
    MAX_CALLBACK_ATTEMPTS_KEPT,
    CallbackAttempt,
    DeadLetterReason,
    DeadLetterRecord,
    Progress,
    RequestRecord,
)
from openhqm.results.series import FinishedMinute

SCHEDULE_STATE = "schedule"  # the kind under which API schedules are kept (listener/scheduler.py)


def transition_changes(status: Status, fields: dict[str, Any]) -> dict[str, Any]:
    """What a move to `status` writes on the record besides `fields`."""
    now = time.time()
    changes = {"status": str(status), "updated_at": now, **fields}
    if status in TERMINAL:
        changes.setdefault("completed_at", now)
    if status in TERMINAL or status == Status.PROCESSING:  # no longer waiting for anything
        changes.setdefault("waiting_on", None)
        changes.setdefault("next_attempt_at", None)
    return changes


class ResultStore(ABC):
    name: str = "abstract"
    tells_oldest_unfinished: bool = False  # whether oldest_unfinished() can answer (else always None)

    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[RequestRecord | None]]] = {}
        self._listeners: list[Callable[[RequestRecord], None]] = []
        self._subscribers: dict[str, set[asyncio.Queue[RequestRecord]]] = {}
        self._local_state: dict[str, dict[str, bytes]] = {}
        self._state_written = asyncio.Event()

    @abstractmethod
    async def connect(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    @abstractmethod
    async def create(self, record: RequestRecord, envelope: bytes | None = None) -> None:
        """Insert a new record; raises AlreadyExists when its correlation_id exists. `envelope` (the
        queued message: payload, headers, metadata) is written with it, for the console's detail
        and replay only: no transition or list reads it."""

    @abstractmethod
    async def get_envelope(self, correlation_id: str) -> bytes | None:
        """The envelope written at create (None when there was none, or the record is gone)."""

    @abstractmethod
    async def query(self, where: RequestFilter, after: Position | None, limit: int) -> RequestPage:
        """Newest first, those after `after` (see results/queries.py for the scan budget)."""

    @abstractmethod
    async def count_matching(self, where: RequestFilter) -> FilteredCounts:
        """Records per status among those `where` covers."""

    @abstractmethod
    async def delete(self, correlation_id: str) -> None:
        """Remove a record (used to undo a submit whose publish failed)."""

    @abstractmethod
    async def get(self, correlation_id: str) -> RequestRecord | None: ...

    @abstractmethod
    async def _transition(self, correlation_id: str, changes: dict[str, Any],
                          allowed_from: Iterable[str] | None) -> RequestRecord | None:
        """Apply `changes` if the current status is in `allowed_from` (None: any non-terminal)."""

    @abstractmethod
    async def list_session(self, session_id: str, limit: int = 1000) -> list[RequestRecord]: ...

    @abstractmethod
    async def counts(self) -> dict[str, int]:
        """How many records there are per status."""

    @abstractmethod
    async def cleanup(self, older_than: float, statuses: Collection[str] | None = None) -> int:
        """Delete terminal records completed before `older_than` (epoch seconds), only those in
        `statuses` when given (per-state TTLs); returns how many."""

    @abstractmethod
    async def add_dead_letter(self, record: DeadLetterRecord) -> None: ...

    @abstractmethod
    async def list_dead_letters(self, limit: int = 100) -> list[DeadLetterRecord]: ...

    @abstractmethod
    async def take_dead_letter(self, dead_letter_id: str) -> DeadLetterRecord | None:
        """Remove and return one entry (for replay)."""

    @abstractmethod
    async def purge_dead_letters(self) -> int: ...

    @abstractmethod
    async def health(self) -> Health: ...

    # Keyed state shared by every process of the store (`kind` -> `name` -> opaque bytes): API
    # schedules, queue pauses, worker heartbeats (state.py names the kinds). This default keeps it in
    # the process (the memory store's scope); stores that several processes share override both
    # `_put_state` and `states`.
    async def put_state(self, kind: str, name: str, data: bytes | None) -> None:
        """Store (or, with None, forget) one entry; wakes this process's `state_written` waiters."""
        await self._put_state(kind, name, data)
        self._state_written.set()

    async def _put_state(self, kind: str, name: str, data: bytes | None) -> None:
        entries = self._local_state.setdefault(kind, {})
        if data is None:
            entries.pop(name, None)
        else:
            entries[name] = data

    async def states(self, kind: str) -> dict[str, bytes]:
        return dict(self._local_state.get(kind, {}))

    @property
    def state_written(self) -> asyncio.Event:
        """Set when this process wrote state and, through the store's change feed, when another did
        (not on the memory store); a watcher clears it, reads `states()`, and re-reads now and then
        in case a notification was lost."""
        return self._state_written

    async def put_schedule(self, name: str, data: bytes | None) -> None:
        await self.put_state(SCHEDULE_STATE, name, data)

    async def schedules(self) -> dict[str, bytes]:
        return await self.states(SCHEDULE_STATE)

    async def finished_series(self, since: float, until: float) -> list[FinishedMinute] | None:
        """COMPLETED and FAILED requests finished in [since, until), per minute, with end-to-end
        latency percentiles; None where the store cannot tell. Bounded: see results/series.py."""
        return None

    async def transition(self, correlation_id: str, status: Status, *,
                         allowed_from: Iterable[str] | None = None, **fields: Any) -> RequestRecord | None:
        """Move a record to `status`; returns the new record, or None when the move is not allowed."""
        record = await self._transition(correlation_id, transition_changes(status, fields), allowed_from)
        self.moved(record)
        return record

    def moved(self, record: RequestRecord | None) -> None:
        """Tell listeners, readers and (once terminal) waiters what a transition made of the record (None:
        refused). For a transition written by another path too (listener/settle.py)."""
        if record is not None:
            self.emit(record)
            if record.terminal:
                self._wake(record.correlation_id, record)

    async def amend(self, correlation_id: str, status: str, **fields: Any) -> RequestRecord | None:
        """Change fields other than the status while the record is still in `status`. Not a transition:
        lifecycle hooks and rolling stats do not see it (a COMPLETED hook must fire once); readers of
        the request's updates do."""
        record = await self._transition(correlation_id, fields, [status])
        if record is not None:
            for queue in self._subscribers.get(correlation_id, ()):
                queue.put_nowait(record)
        return record

    async def oldest_unfinished(self) -> float | None:
        """submitted_at of the oldest request not yet terminal (None where a store cannot tell)."""
        return None

    async def unfinished_submitted_before(self, before: float, limit: int = 100) -> list[RequestRecord]:
        """Requests not yet terminal submitted before `before`, oldest first, for reconciliation
        ([] where a store cannot tell)."""
        return []

    def add_listener(self, listener: Callable[[RequestRecord], None]) -> None:
        """Called with every record this store object creates or moves (lifecycle hooks, stats)."""
        self._listeners.append(listener)

    def emit(self, record: RequestRecord) -> None:
        for listener in self._listeners:
            listener(record)
        for queue in self._subscribers.get(record.correlation_id, ()):
            queue.put_nowait(record)

    def subscribe(self, correlation_id: str) -> asyncio.Queue[RequestRecord]:
        queue: asyncio.Queue[RequestRecord] = asyncio.Queue()
        self._subscribers.setdefault(correlation_id, set()).add(queue)
        return queue

    def unsubscribe(self, correlation_id: str, queue: asyncio.Queue[RequestRecord]) -> None:
        queues = self._subscribers.get(correlation_id)
        if queues is not None:
            queues.discard(queue)
            if not queues:
                del self._subscribers[correlation_id]

    async def wait(self, correlation_id: str, timeout_s: float) -> RequestRecord | None:
        """The record once terminal, or as it is after `timeout_s`; None if unknown."""
        with self.waiting(correlation_id) as finished:
            record = await self.get(correlation_id)  # read after registering: no missed wake-up
            return await self.until_terminal(correlation_id, finished, record, timeout_s)

    @contextlib.contextmanager
    def waiting(self, correlation_id: str) -> Iterator[asyncio.Future[RequestRecord | None]]:
        """A future resolved when `correlation_id` turns terminal: with the record when this store object
        moved it or read it (the SQLite store's watch reads another process's), else with None (read it
        again). Register it before the change can happen."""
        future: asyncio.Future[RequestRecord | None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(correlation_id, set()).add(future)
        try:
            yield future
        finally:
            waiters = self._waiters.get(correlation_id)
            if waiters is not None:
                waiters.discard(future)
                if not waiters:
                    del self._waiters[correlation_id]

    async def until_terminal(self, correlation_id: str, finished: asyncio.Future[RequestRecord | None],
                             record: RequestRecord | None, timeout_s: float) -> RequestRecord | None:
        """Wait on a `waiting()` future, given the record as read (or written) after registering it."""
        if record is None or record.terminal or timeout_s <= 0:
            return record
        try:
            async with asyncio.timeout(timeout_s):
                done = await finished
            stages.mark(correlation_id, "woken")
            if done is not None:
                return done  # moved by this store object: no need to read it back
        except TimeoutError:
            pass
        return await self.get(correlation_id)

    def _wake(self, correlation_id: str, record: RequestRecord | None = None) -> None:
        """Wake the waiters of `correlation_id`: with its terminal record, or None to read it again."""
        for future in self._waiters.get(correlation_id, ()):
            if not future.done():
                future.set_result(record)

    @property
    def waited_ids(self) -> list[str]:
        return list(self._waiters)


__all__ = ["MAX_CALLBACK_ATTEMPTS_KEPT", "AttemptEntry", "CallbackAttempt", "DeadLetterReason", "DeadLetterRecord",
           "FilteredCounts", "Position", "Progress", "RequestFilter", "RequestPage", "RequestRecord", "ResultStore"]
