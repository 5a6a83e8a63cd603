"""The embedded SQLite store's own behaviour beyond the store contract: large housekeeping, counting."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import msgspec

from openhqm.constants import Status
from openhqm.results.base import RequestFilter
from openhqm.results.sqlite import _CLEANUP_CHUNK, COUNTS, EXPIRED_CHUNK, SQLiteResultStore
from tests.records import new_record


async def test_cleanup_of_more_than_one_chunk_removes_all_of_them_and_nothing_else(tmp_path: Path) -> None:
    store = SQLiteResultStore(tmp_path / "openhqm.db")
    await store.connect()
    try:
        old = [new_record() for _ in range(_CLEANUP_CHUNK * 2 + 7)]
        keep = [new_record() for _ in range(5)]
        await asyncio.gather(*(store.create(r) for r in old + keep))
        long_ago = time.time() - 1000
        await asyncio.gather(*(store.transition(r.correlation_id, Status.COMPLETED, completed_at=long_ago)
                               for r in old))
        await asyncio.gather(*(store.transition(r.correlation_id, Status.COMPLETED) for r in keep[:3]))

        assert await store.cleanup(older_than=time.time() - 500) == len(old)
        assert await store.counts() == {"COMPLETED": 3, "PENDING": 2}
    finally:
        await store.close()


async def test_counts_by_status_read_an_index_not_every_retained_record(tmp_path: Path) -> None:
    """The metrics sampler counts every 5 s on the event loop; a scan of every record stalls the loop
    for longer the more finished requests are retained (docs/operations.md, sizing)."""
    store = SQLiteResultStore(tmp_path / "openhqm.db")
    await store.connect()
    try:
        await store.create(new_record())
        done = new_record()
        await store.create(done)
        await store.transition(done.correlation_id, Status.COMPLETED)
        with sqlite3.connect(tmp_path / "openhqm.db") as conn:
            plan = " ".join(str(row[-1]) for row in conn.execute(f"EXPLAIN QUERY PLAN {COUNTS}"))
            cleanup_plan = " ".join(str(row[-1]) for row in conn.execute(
                f"EXPLAIN QUERY PLAN {EXPIRED_CHUNK.format(marks='?')}", (time.time(), Status.COMPLETED)))
        assert "COVERING INDEX requests_status" in plan
        assert "INDEX requests_completed" in cleanup_plan  # by age, not every request of the state
        assert await store.counts() == {"COMPLETED": 1, "PENDING": 1}
    finally:
        await store.close()


OLD_SCHEMA = """
CREATE TABLE requests (correlation_id TEXT PRIMARY KEY, status TEXT NOT NULL, session_id TEXT,
                       submitted_at REAL NOT NULL, completed_at REAL, data BLOB NOT NULL);
CREATE INDEX requests_status ON requests (status);
"""


async def test_a_database_of_an_older_version_gains_the_console_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "openhqm.db"
    conn = sqlite3.connect(path)
    conn.executescript(OLD_SCHEMA)
    old = new_record(submitted_at=time.time() - 10)
    conn.execute("INSERT INTO requests (correlation_id, status, submitted_at, data) VALUES (?, ?, ?, ?)",
                 (old.correlation_id, old.status, old.submitted_at, msgspec.msgpack.encode(old)))
    conn.commit()
    conn.close()
    store = SQLiteResultStore(path)
    await store.connect()
    try:
        new = new_record(target="echo", target_kind="endpoint")
        await store.create(new, b"envelope")
        page = await store.query(RequestFilter(), None, 10)
        assert [r.correlation_id for r in page.records] == [new.correlation_id, old.correlation_id]
        assert [r.correlation_id for r in (await store.query(RequestFilter(endpoint="echo"), None, 10)).records] \
            == [new.correlation_id]
        assert await store.get_envelope(new.correlation_id) == b"envelope"
        assert await store.get_envelope(old.correlation_id) is None
    finally:
        await store.close()
    indexes = {row[0] for row in sqlite3.connect(path).execute("SELECT name FROM sqlite_master WHERE type='index'")}
    assert "requests_status" not in indexes and "requests_status_submitted" in indexes
