"""SQLite result store in `<data_dir>/openhqm.db`, sharing the queue's writer connection and commits.

Other processes' changes (a second listener replica, `openhqm worker` processes) wake waiters at once
through the bell (sqlite_bell.py); `PRAGMA data_version`, checked every `watch_interval_s` while
someone waits, is the fallback when a ring is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

import msgspec

from openhqm.backends.base import Health
from openhqm.constants import TERMINAL
from openhqm.errors import AlreadyExists
from openhqm.results import sqlite_queries as queries
from openhqm.results.base import SCHEDULE_STATE, DeadLetterRecord, RequestRecord, ResultStore
from openhqm.results.queries import FilteredCounts, Position, RequestFilter, RequestPage
from openhqm.results.series import FINISHED, SAMPLE_PER_MINUTE, FinishedMinute, minute, minute_starts
from openhqm.sqlite_db import SQLiteDB, shared_db

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    correlation_id TEXT PRIMARY KEY,
    status TEXT NOT NULL,
    session_id TEXT,
    submitted_at REAL NOT NULL,
    completed_at REAL,
    data BLOB NOT NULL,
    client_id TEXT,
    target TEXT,
    idempotency_key TEXT,
    envelope BLOB
);
CREATE INDEX IF NOT EXISTS requests_session ON requests (session_id, submitted_at) WHERE session_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS requests_completed ON requests (completed_at) WHERE completed_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS requests_unfinished ON requests (submitted_at) WHERE completed_at IS NULL;
CREATE TABLE IF NOT EXISTS dead_letters (
    id TEXT PRIMARY KEY,
    dead_lettered_at REAL NOT NULL,
    data BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS state (kind TEXT NOT NULL, name TEXT NOT NULL, data BLOB NOT NULL,
                                  PRIMARY KEY (kind, name));
"""


def _move_legacy_schedules(conn: sqlite3.Connection) -> None:
    """Before the keyed state, API schedules had a table of their own: moved into `state` once."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schedules'").fetchone():
        conn.execute("INSERT OR IGNORE INTO state (kind, name, data) SELECT ?, name, data FROM schedules",
                     (SCHEDULE_STATE,))
        conn.execute("DROP TABLE schedules")


_encode = msgspec.msgpack.Encoder().encode
_decode_record = msgspec.msgpack.Decoder(RequestRecord).decode
_decode_dead = msgspec.msgpack.Decoder(DeadLetterRecord).decode
_TERMINAL = tuple(str(s) for s in TERMINAL)
_CLEANUP_CHUNK = 2000
_BELL_TOPIC = "openhqm-store-watch"
_STATE_TOPIC = "openhqm-state"
# Per minute of the series (results/series.py), on requests_completed; `+status` keeps it there.
SERIES_COUNTS = ("SELECT status, COUNT(*) FROM requests WHERE completed_at >= ? AND completed_at < ?"
                 " AND +status IN (?, ?) GROUP BY status")
SERIES_LATENCIES = ("SELECT completed_at - submitted_at FROM requests WHERE completed_at >= ? AND completed_at < ?"
                    " AND +status IN (?, ?) ORDER BY completed_at DESC LIMIT ?")
# COUNTS reads requests_status_submitted (sqlite_queries.py) instead of every record: it still grows
# with retention, but is several times faster than a scan of the table.
COUNTS = "SELECT status, COUNT(*) FROM requests GROUP BY status"
# `+status` keeps the search on requests_completed (by age): the planner would otherwise take
# the status index and read every retained request of those states.
EXPIRED_CHUNK = ("SELECT rowid FROM requests WHERE completed_at IS NOT NULL AND completed_at < ?"
                 f" AND +status IN ({{marks}}) LIMIT {_CLEANUP_CHUNK}")


class SQLiteResultStore(ResultStore):
    name = "sqlite"
    tells_oldest_unfinished = True

    def __init__(self, path: Path, *, synchronous: str = "normal", watch_interval_s: float = 0.02) -> None:
        super().__init__()
        self._db: SQLiteDB = shared_db(path, synchronous)
        self._watch_interval_s = watch_interval_s
        self._watcher: asyncio.Task[None] | None = None
        self._finished_here = 0
        self._connected = False

    @property
    def db(self) -> SQLiteDB:
        """The process's connection to the file, shared with the SQLite queue when it uses the same file."""
        return self._db

    async def connect(self) -> None:
        if self._connected:
            return
        self._db.acquire(SCHEMA)
        self._db.migrate(_move_legacy_schedules)
        self._db.migrate(queries.add_columns)
        self._connected = True
        self._watcher = asyncio.create_task(self._watch(), name="openhqm-store-watch")

    async def close(self) -> None:
        if not self._connected:
            return
        self._connected = False
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watcher
        self._db.release()

    async def _watch(self) -> None:
        """Wake waiters whose request another process finished."""
        version = self._changes_elsewhere()
        rung = self._db.event(_BELL_TOPIC)  # set when another process rings (sqlite_bell.py)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._watch_interval_s):
                    await rung.wait()
            rung.clear()
            if not self._waiters:
                continue
            current = self._changes_elsewhere()
            if current == version:
                continue
            version = current
            ids = self.waited_ids
            marks = ",".join("?" * len(ids))
            # With the record: a woken waiter answers with it instead of reading it again (two loop turns
            # and a query per request that another process finished; see docs/benchmarks.md, stage times).
            rows = self._db.connection.execute(
                f"SELECT correlation_id, data FROM requests WHERE correlation_id IN ({marks})"
                f" AND status IN ({','.join('?' * len(_TERMINAL))})", (*ids, *_TERMINAL)).fetchall()
            for cid, data in rows:
                self._wake(cid, _decode_record(data))

    def _changes_elsewhere(self) -> tuple[int, int]:
        """Changes by other processes, and requests finished by other store objects in this one
        (they share the writer connection, whose own commits data_version does not count)."""
        return self._db.others_version(), self._db.finished_requests - self._finished_here

    async def create(self, record: RequestRecord, envelope: bytes | None = None) -> None:
        await self._db.run(self.create_op(record, envelope))

    def create_op(self, record: RequestRecord, envelope: bytes | None = None) -> Callable[[sqlite3.Connection], None]:
        """The create as an operation of the shared connection (listener/enqueue.py puts the queue's
        message in the same transaction); raises AlreadyExists before it has written anything."""
        row = (record.correlation_id, record.status, record.session_id, record.submitted_at,
               record.completed_at, _encode(record), record.client_id, queries.target_column(record),
               record.idempotency_key, envelope)

        def insert(conn: sqlite3.Connection) -> None:
            try:
                conn.execute("INSERT INTO requests (correlation_id, status, session_id, submitted_at, completed_at,"
                             " data, client_id, target, idempotency_key, envelope)"
                             " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"request {record.correlation_id} exists") from None

        return insert

    async def delete(self, correlation_id: str) -> None:
        await self._db.run(lambda c: c.execute("DELETE FROM requests WHERE correlation_id = ?",
                                               (correlation_id,)))

    async def get(self, correlation_id: str) -> RequestRecord | None:
        row = await self._db.run(lambda c: c.execute(
            "SELECT data FROM requests WHERE correlation_id = ?", (correlation_id,)).fetchone())
        return _decode_record(row[0]) if row else None

    async def get_envelope(self, correlation_id: str) -> bytes | None:
        row = await self._db.read(lambda c: c.execute(
            "SELECT envelope FROM requests WHERE correlation_id = ?", (correlation_id,)).fetchone())
        return bytes(row[0]) if row and row[0] is not None else None

    async def query(self, where: RequestFilter, after: Position | None, limit: int) -> RequestPage:
        return await self._db.read(lambda c: queries.page(c, where, after, limit))

    async def count_matching(self, where: RequestFilter) -> FilteredCounts:
        return await self._db.read(lambda c: queries.counts(c, where))

    async def _transition(self, correlation_id: str, changes: dict[str, Any],
                          allowed_from: Iterable[str] | None) -> RequestRecord | None:
        return self.counted(await self._db.run(self.transition_op(correlation_id, changes, allowed_from)))

    def transition_op(self, correlation_id: str, changes: dict[str, Any],
                      allowed_from: Iterable[str] | None) -> Callable[[sqlite3.Connection], RequestRecord | None]:
        """The transition as an operation of the shared connection (listener/settle.py acks the queue's
        message in the same transaction): the record as moved, or None when the move is not allowed.
        Anything it raises, it raises before it has written."""
        allowed = None if allowed_from is None else set(allowed_from)

        def op(conn: sqlite3.Connection) -> RequestRecord | None:
            row = conn.execute("SELECT data FROM requests WHERE correlation_id = ?",
                               (correlation_id,)).fetchone()
            if row is None:
                return None
            record = _decode_record(row[0])
            if record.terminal if allowed is None else record.status not in allowed:
                return None
            updated = msgspec.structs.replace(record, **changes)
            conn.execute("UPDATE requests SET status = ?, completed_at = ?, data = ? WHERE correlation_id = ?",
                         (updated.status, updated.completed_at, _encode(updated), correlation_id))
            return updated

        return op

    def counted(self, updated: RequestRecord | None) -> RequestRecord | None:
        """Count a transition's terminal move, once committed, for the other store objects of this
        process (their watch, see _changes_elsewhere)."""
        if updated is not None and updated.terminal:
            self._db.finished_requests += 1
            self._finished_here += 1
        return updated

    async def list_session(self, session_id: str, limit: int = 1000) -> list[RequestRecord]:
        rows = await self._db.run(lambda c: c.execute(
            "SELECT data FROM requests WHERE session_id = ? ORDER BY submitted_at LIMIT ?",
            (session_id, limit)).fetchall())
        return [_decode_record(r[0]) for r in rows]

    async def counts(self) -> dict[str, int]:
        rows = await self._db.read(lambda c: c.execute(COUNTS).fetchall())
        return {status: count for status, count in rows}

    async def cleanup(self, older_than: float, statuses: Collection[str] | None = None) -> int:
        if statuses is not None and not statuses:
            return 0
        chosen = tuple(statuses) if statuses is not None else _TERMINAL
        marks = ",".join("?" * len(chosen))
        delete = f"DELETE FROM requests WHERE rowid IN ({EXPIRED_CHUNK.format(marks=marks)})"
        total = 0
        while True:  # in chunks, each its own short write, so the loop and other writers go on meanwhile
            count: int = await self._db.run(lambda c: c.execute(delete, (older_than, *chosen)).rowcount)
            total += count
            if count < _CLEANUP_CHUNK:
                return total

    async def oldest_unfinished(self) -> float | None:
        oldest: float | None = await self._db.read(lambda c: c.execute(
            "SELECT MIN(submitted_at) FROM requests WHERE completed_at IS NULL").fetchone()[0])
        return oldest

    async def unfinished_submitted_before(self, before: float, limit: int = 100) -> list[RequestRecord]:
        rows = await self._db.read(lambda c: c.execute(
            "SELECT data FROM requests WHERE completed_at IS NULL AND submitted_at < ?"
            " ORDER BY submitted_at LIMIT ?", (before, limit)).fetchall())
        return [_decode_record(r[0]) for r in rows]

    async def add_dead_letter(self, record: DeadLetterRecord) -> None:
        await self._db.run(self.dead_letter_op(record))

    def dead_letter_op(self, record: DeadLetterRecord) -> Callable[[sqlite3.Connection], None]:
        """Adding a dead letter as an operation of the shared connection (listener/settle.py)."""
        row = (record.id, record.dead_lettered_at, _encode(record))

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO dead_letters (id, dead_lettered_at, data) VALUES (?, ?, ?)", row)

        return insert

    async def list_dead_letters(self, limit: int = 100) -> list[DeadLetterRecord]:
        rows = await self._db.read(lambda c: c.execute(
            "SELECT data FROM dead_letters ORDER BY dead_lettered_at LIMIT ?", (limit,)).fetchall())
        return [_decode_dead(r[0]) for r in rows]

    async def take_dead_letter(self, dead_letter_id: str) -> DeadLetterRecord | None:
        row = await self._db.run(lambda c: c.execute(
            "DELETE FROM dead_letters WHERE id = ? RETURNING data", (dead_letter_id,)).fetchone())
        return _decode_dead(row[0]) if row else None

    async def purge_dead_letters(self) -> int:
        count: int = await self._db.run(lambda c: c.execute("DELETE FROM dead_letters").rowcount)
        return count

    async def _put_state(self, kind: str, name: str, data: bytes | None) -> None:
        if data is None:
            await self._db.run(lambda c: c.execute("DELETE FROM state WHERE kind = ? AND name = ?", (kind, name)))
        else:
            await self._db.run(lambda c: c.execute(
                "INSERT OR REPLACE INTO state (kind, name, data) VALUES (?, ?, ?)", (kind, name, data)))
        self._db.notify(_STATE_TOPIC)

    async def states(self, kind: str) -> dict[str, bytes]:
        rows = await self._db.read(lambda c: c.execute(
            "SELECT name, data FROM state WHERE kind = ?", (kind,)).fetchall())
        return {name: bytes(data) for name, data in rows}

    @property
    def state_written(self) -> asyncio.Event:
        return self._db.event(_STATE_TOPIC)  # also set by the bell: another process committed

    async def finished_series(self, since: float, until: float) -> list[FinishedMinute]:
        def op(conn: sqlite3.Connection) -> list[FinishedMinute]:
            minutes = []
            for start in minute_starts(since, until):
                bounds = (start, start + 60.0, *FINISHED)
                counts = dict(conn.execute(SERIES_COUNTS, bounds).fetchall())
                latencies = [r[0] for r in conn.execute(SERIES_LATENCIES, (*bounds, SAMPLE_PER_MINUTE))]
                minutes.append(minute(start, counts.get(FINISHED[0], 0), counts.get(FINISHED[1], 0), latencies))
            return minutes

        return await self._db.read(op)

    async def health(self) -> Health:
        try:
            async with asyncio.timeout(2):
                await self._db.run(lambda c: c.execute("SELECT 1").fetchone())
        except Exception as exc:
            return Health(False, f"sqlite store: {exc}")
        return Health(True)
