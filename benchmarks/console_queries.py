"""How fast the console's queries are on a big SQLite store: fills one with N finished records
(default 1,000,000, in bulk, bounded by --max-fill-s), then times the first page unfiltered, by
status, by handler, and the counts, each the median of --repeat runs through the store's own API.

    python benchmarks/console_queries.py [--records 1000000] [--repeat 5] [--keep DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from openhqm.envelope import AttemptEntry, Envelope, encode
from openhqm.results.base import RequestFilter, RequestRecord
from openhqm.results.sqlite import SQLiteResultStore
from openhqm.results.sqlite_queries import target_column

HANDLERS = [f"handler-{i}" for i in range(10)]  # every tenth record each
RARE = "handler-rare"  # one record in a thousand
BATCH = 50_000


def status_of(i: int) -> str:
    return "FAILED" if i % 25 == 0 else ("CANCELLED" if i % 101 == 0 else "COMPLETED")


def rows(start: int, count: int, now: float) -> list[tuple[Any, ...]]:
    encoder = msgspec.msgpack.Encoder()
    out = []
    for i in range(start, start + count):
        submitted = now - 86_400 + i * 0.05
        handler = RARE if i % 1000 == 7 else HANDLERS[i % 10]
        record = RequestRecord(
            correlation_id=f"{i:012d}-bench", status=status_of(i), submitted_at=submitted, updated_at=submitted + 0.02,
            completed_at=submitted + 0.02, attempts=1, result={"ok": True}, target=handler, target_kind="handler",
            attempt_history=[AttemptEntry(attempt=1, started_at=submitted, finished_at=submitted + 0.02,
                                          worker_id="bench-1", duration_ms=20.0)])
        envelope = encode(Envelope(id=record.correlation_id, handler=handler, body=b'{"message": "hello", "n": 42}',
                                   content_type="application/json"))
        out.append((record.correlation_id, record.status, None, submitted, record.completed_at,
                    encoder.encode(record), None, target_column(record), None, envelope))
    return out


def fill(path: Path, records: int, max_fill_s: float) -> int:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    now, done, deadline = time.time(), 0, time.monotonic() + max_fill_s
    while done < records and time.monotonic() < deadline:
        count = min(BATCH, records - done)
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO requests (correlation_id, status, session_id, submitted_at, completed_at,"
                         " data, client_id, target, idempotency_key, envelope) VALUES (?,?,?,?,?,?,?,?,?,?)",
                         rows(done, count, now))
        conn.execute("COMMIT")
        done += count
    conn.close()
    return done


async def timed(run: Callable[[], Awaitable[Any]], repeat: int) -> tuple[float, Any]:
    times, result = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        result = await run()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), result


def describe(result: Any) -> str:
    if hasattr(result, "records"):
        return f"{len(result.records)} items, cursor {'yes' if result.next else 'no'}"
    if hasattr(result, "counts"):
        return f"{sum(result.counts.values())} counted"
    if isinstance(result, dict):
        return f"{sum(result.values())} counted"
    if isinstance(result, list):
        return f"{len(result)} minutes, {sum(m.completed + m.failed for m in result)} finished"
    return repr(result)


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-fill-s", type=float, default=300.0, help="stop filling after this long")
    parser.add_argument("--keep", type=Path, help="use (and keep) this directory instead of a temporary one")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        path = folder / "openhqm.db"
        store = SQLiteResultStore(path)
        await store.connect()  # the schema, as the listener makes it
        try:
            have = (await store.count_matching(RequestFilter())).counts
            started = time.monotonic()
            filled = sum(have.values()) or fill(path, args.records, args.max_fill_s)
            print(f"{filled} records ({time.monotonic() - started:.1f} s to fill)")
            cases: dict[str, Callable[[], Awaitable[Any]]] = {
                "first page, unfiltered": lambda: store.query(RequestFilter(), None, 50),
                "first page, status=FAILED": lambda: store.query(RequestFilter(statuses=frozenset({"FAILED"})),
                                                                 None, 50),
                "first page, status=FAILED,CANCELLED": lambda: store.query(
                    RequestFilter(statuses=frozenset({"FAILED", "CANCELLED"})), None, 50),
                "first page, handler (1 in 10)": lambda: store.query(RequestFilter(handler=HANDLERS[3]), None, 50),
                "first page, handler (1 in 1000)": lambda: store.query(RequestFilter(handler=RARE), None, 50),
                "counts, unfiltered": lambda: store.count_matching(RequestFilter()),
                "counts, status=FAILED": lambda: store.count_matching(RequestFilter(statuses=frozenset({"FAILED"}))),
                "counts, handler": lambda: store.count_matching(RequestFilter(handler=HANDLERS[3])),
                # What the overview (GET /api/v1/queues and its series) reads from the store.
                "overview: requests by status": store.counts,
                "overview: oldest unfinished": store.oldest_unfinished,
                "overview: 15-minute series": lambda: store.finished_series(time.time() - 900, time.time()),
            }
            print("| query | median ms | answer |\n|---|---:|---|")
            for name, run in cases.items():
                ms, result = await timed(run, args.repeat)
                answer = describe(result)
                print(f"| {name} | {ms:.1f} | {answer} |")
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
