"""The SQLite ledger on a database of the version before snapshots: its waiting table gains the
column naming a waiting request's bucket, and its old rows still count."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from openhqm.flow.limits import Bucket
from openhqm.flow.sqlite import SQLiteLedger

OLD_SCHEMA = """
CREATE TABLE flow_buckets (id TEXT PRIMARY KEY, tat REAL);
CREATE TABLE flow_holders (
    bucket TEXT NOT NULL, holder TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (bucket, holder));
CREATE TABLE flow_waiting (
    limit_name TEXT NOT NULL, holder TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (limit_name, holder));
"""


async def test_an_earlier_waiting_table_gains_its_bucket_column_and_old_rows_still_count(tmp_path: Path) -> None:
    path = tmp_path / "openhqm.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(OLD_SCHEMA)
        conn.execute("INSERT INTO flow_waiting VALUES ('tenant', 'old', ?)", (time.time() + 60,))
    ledger = SQLiteLedger(path)
    await ledger.connect()
    try:
        bucket = Bucket("tenant=a", "tenant", None, 1, 1)
        assert (await ledger.acquire([bucket], "a1", ticket=False, concurrency_delay_s=1, ttl_s=30)).admitted
        assert not (await ledger.acquire([bucket], "a2", ticket=False, concurrency_delay_s=1, ttl_s=30)).admitted
        [state] = await ledger.snapshot(["tenant"])
    finally:
        await ledger.close()
    assert (state.waiting, state.in_flight, state.keys) == (2, 1, 1)  # the old row: waiting, with no key
    assert [(k.key, k.waiting, k.in_flight) for k in state.top_keys] == [("a", 1, 1)]
