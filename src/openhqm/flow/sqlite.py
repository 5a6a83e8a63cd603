"""Flow limits in the SQLite results database (`<data_dir>/openhqm.db`), shared by every process on it.

Each operation runs on the database's one writer connection inside its BEGIN IMMEDIATE batch
(sqlite_db.py), so a decision reads and writes the buckets under the database's write lock: no two
processes decide on the same bucket at once. A savepoint keeps a failed decision from leaving half
its rows in the batch. Times are this host's clock: every process of one SQLite file shares the host.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

from openhqm.flow.ledger import (
    PRUNE_EVERY,
    SNAPSHOT_ROWS,
    TOP_KEYS,
    WAITING_GRACE_S,
    BucketState,
    LimitState,
    Verdict,
    bucket_of,
    decide,
    limits_of,
    top_keys,
)
from openhqm.flow.limits import Bucket, key_range
from openhqm.sqlite_db import SQLiteDB, shared_db, unavailable

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS flow_buckets (id TEXT PRIMARY KEY, tat REAL);
CREATE TABLE IF NOT EXISTS flow_holders (
    bucket TEXT NOT NULL, holder TEXT NOT NULL, expires_at REAL NOT NULL, PRIMARY KEY (bucket, holder));
CREATE TABLE IF NOT EXISTS flow_waiting (
    limit_name TEXT NOT NULL, holder TEXT NOT NULL, expires_at REAL NOT NULL, bucket TEXT,
    PRIMARY KEY (limit_name, holder));
"""

# A snapshot's figures for one limit; each reads at most SNAPSHOT_ROWS rows, along the primary keys
# (bucket ids of a limit: `id = :limit` or in its key range; waiting entries: by limit name).
_BUCKETS = "(id = :limit OR (id >= :low AND id < :high))"
_HELD = ("SELECT bucket FROM flow_holders WHERE (bucket = :limit OR (bucket >= :low AND bucket < :high))"
         " AND expires_at > :now LIMIT :cap")
_WAITING = "SELECT bucket FROM flow_waiting WHERE limit_name = :limit AND expires_at > :now LIMIT :cap"
SNAPSHOT_QUERIES = {
    "waiting": f"SELECT COUNT(*) FROM ({_WAITING})",
    "in_flight": f"SELECT COUNT(*) FROM ({_HELD})",
    "reserved_until": f"SELECT MAX(tat) FROM (SELECT tat FROM flow_buckets WHERE {_BUCKETS} AND tat > :now LIMIT :cap)",
    "keys": f"SELECT COUNT(*) FROM (SELECT * FROM (SELECT id FROM flow_buckets WHERE {_BUCKETS} AND tat > :now"
            f" LIMIT :cap) UNION SELECT * FROM ({_HELD}) UNION SELECT * FROM ({_WAITING}) WHERE bucket IS NOT NULL)",
}
TOP_QUERY = (f"SELECT bucket, SUM(w) AS w, SUM(f) AS f FROM (SELECT bucket, 1 AS w, 0 AS f FROM ({_WAITING})"
             f" UNION ALL SELECT bucket, 0, 1 FROM ({_HELD})) WHERE bucket IS NOT NULL"
             " GROUP BY bucket ORDER BY w DESC, f DESC, bucket LIMIT :top")


def add_bucket_column(conn: sqlite3.Connection) -> None:
    """A flow_waiting table of an earlier version lacks `bucket` (its rows count, with no key)."""
    if "bucket" not in {row[1] for row in conn.execute("PRAGMA table_info(flow_waiting)")}:
        conn.execute("ALTER TABLE flow_waiting ADD COLUMN bucket TEXT")


class SQLiteLedger:
    def __init__(self, path: Path, *, synchronous: str = "normal") -> None:
        self._db: SQLiteDB = shared_db(path, synchronous)
        self._connected = False
        self._decisions = 0

    async def connect(self) -> None:
        if not self._connected:
            self._db.acquire(SCHEMA)
            self._connected = True
            try:
                self._db.migrate(add_bucket_column)
            except sqlite3.Error as exc:
                self._connected = False
                self._db.release()
                raise unavailable(exc, "flow limits migration") from exc

    async def close(self) -> None:
        if self._connected:
            self._connected = False
            self._db.release()

    async def _atomic(self, op: Callable[[sqlite3.Connection], T]) -> T:
        def run(conn: sqlite3.Connection) -> T:
            conn.execute("SAVEPOINT flow")
            try:
                result = op(conn)
            except BaseException:
                conn.execute("ROLLBACK TO flow")
                conn.execute("RELEASE flow")
                raise
            conn.execute("RELEASE flow")
            return result

        return await self._db.run(run)

    async def acquire(self, buckets: Sequence[Bucket], holder: str, *, ticket: bool, concurrency_delay_s: float,
                      ttl_s: float) -> Verdict:
        self._decisions += 1
        prune = self._decisions % PRUNE_EVERY == 0

        def op(conn: sqlite3.Connection) -> Verdict:
            now = time.time()
            if prune:
                conn.execute("DELETE FROM flow_buckets WHERE tat IS NULL OR tat <= ?", (now,))
                conn.execute("DELETE FROM flow_holders WHERE expires_at <= ?", (now,))
            ids = [b.id for b in buckets]
            marks = ",".join("?" * len(ids))
            tats = dict(conn.execute(f"SELECT id, tat FROM flow_buckets WHERE id IN ({marks})", ids).fetchall())
            conn.execute(f"DELETE FROM flow_holders WHERE bucket IN ({marks}) AND expires_at <= ?", (*ids, now))
            states = {i: BucketState(tats.get(i)) for i in ids}
            for bucket_id, name, expiry in conn.execute(
                    f"SELECT bucket, holder, expires_at FROM flow_holders WHERE bucket IN ({marks})", ids):
                states[bucket_id].holders[name] = expiry
            ordered = [states[i] for i in ids]
            verdict = decide(buckets, ordered, now, holder, ticket=ticket,
                             concurrency_delay_s=concurrency_delay_s, ttl_s=ttl_s)
            for bucket, state in zip(buckets, ordered, strict=True):
                if state.tat != tats.get(bucket.id):
                    conn.execute("INSERT INTO flow_buckets (id, tat) VALUES (?, ?)"
                                 " ON CONFLICT (id) DO UPDATE SET tat = excluded.tat", (bucket.id, state.tat))
                if verdict.admitted and bucket.max_concurrency is not None:
                    conn.execute("INSERT OR REPLACE INTO flow_holders (bucket, holder, expires_at) VALUES (?, ?, ?)",
                                 (bucket.id, holder, now + ttl_s))
            limits = limits_of(buckets)
            if verdict.admitted:
                conn.executemany("DELETE FROM flow_waiting WHERE limit_name = ? AND holder = ?",
                                 [(limit, holder) for limit in limits])
            elif verdict.blocked is not None:
                conn.execute("INSERT OR REPLACE INTO flow_waiting (limit_name, holder, expires_at, bucket)"
                             " VALUES (?, ?, ?, ?)", (verdict.blocked, holder, now + verdict.delay_s + WAITING_GRACE_S,
                                                      bucket_of(buckets, verdict.blocked)))
            conn.executemany("DELETE FROM flow_waiting WHERE limit_name = ? AND expires_at <= ?",
                             [(limit, now) for limit in limits])
            counts = tuple((limit, int(conn.execute(
                "SELECT COUNT(*) FROM flow_waiting WHERE limit_name = ? AND expires_at > ?",
                (limit, now)).fetchone()[0])) for limit in limits)
            return dataclasses.replace(verdict, waiting=counts)

        return await self._atomic(op)

    async def release(self, buckets: Sequence[Bucket], holder: str) -> None:
        rows = [(b.id, holder) for b in buckets if b.max_concurrency is not None]
        if rows:
            await self._atomic(lambda conn: conn.executemany(
                "DELETE FROM flow_holders WHERE bucket = ? AND holder = ?", rows))

    async def refresh(self, buckets: Sequence[Bucket], holder: str, ttl_s: float) -> None:
        rows = [(time.time() + ttl_s, b.id, holder) for b in buckets if b.max_concurrency is not None]
        if rows:
            await self._atomic(lambda conn: conn.executemany(
                "UPDATE flow_holders SET expires_at = ? WHERE bucket = ? AND holder = ?", rows))

    async def snapshot(self, limits: Sequence[str]) -> list[LimitState]:
        """On a reading connection of its own (WAL: the writer is not held up)."""
        def read(conn: sqlite3.Connection) -> list[LimitState]:
            now = time.time()
            states = []
            for limit in limits:
                low, high = key_range(limit)
                # One more than named: the unkeyed bucket (id = limit) may be among them, and is not named.
                params = {"limit": limit, "low": low, "high": high, "now": now, "cap": SNAPSHOT_ROWS,
                          "top": TOP_KEYS + 1}
                figures = {name: conn.execute(query, params).fetchone()[0] for name, query in SNAPSHOT_QUERIES.items()}
                loads = conn.execute(TOP_QUERY, params).fetchall()
                states.append(LimitState(limit, waiting=figures["waiting"], in_flight=figures["in_flight"],
                                         keys=figures["keys"], reserved_until=figures["reserved_until"],
                                         top_keys=top_keys(limit, loads)))
            return states

        return await self._db.read(read)
