"""The Redis store's listing (the console): the `<prefix>:submitted` sorted set (id scored by
submitted_at, written by the create script) walked newest first, each record read and filtered
here. Redis indexes neither status nor target, so every filter is a bounded scan: a page examines
at most SCAN_BUDGET records and a filtered count COUNT_SCAN_BUDGET (then `exact` is False).
Records that their Redis TTL removed are skipped until cleanup drops their index entries.

Reconciliation and the oldest unfinished age read `<prefix>:unfinished` instead (ids of records not
yet terminal, scored by submitted_at, kept by the create/transition/delete scripts), oldest first, so
finished records cost them nothing: one call reads at most UNFINISHED_SCAN_BUDGET index entries
(and their records' statuses), a few milliseconds. Entries whose record is gone or already terminal
(only if something outside the scripts changed the keys) are stepped over, within that budget.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, cast

import msgspec
import redis.asyncio as aioredis

from openhqm.constants import TERMINAL
from openhqm.results.queries import SCAN_BUDGET, FilteredCounts, Position, RequestFilter, RequestPage
from openhqm.results.records import RequestRecord

COUNT_SCAN_BUDGET = 50_000
BATCH = 500
UNFINISHED_SCAN_BUDGET = 500
UNFINISHED_BATCH = 200

_decode_record = msgspec.msgpack.Decoder(RequestRecord).decode


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def scan(client: aioredis.Redis, prefix: str, where: RequestFilter, after: Position | None,
               budget: int) -> AsyncIterator[tuple[list[RequestRecord], bool, Position | None]]:
    """Batches of records newest first (after `after`, within since/until), whether the index
    ended with this batch, and the batch's last index entry; stops after `budget` index entries."""
    index = f"{prefix}:submitted"
    low = "-inf" if where.since is None else repr(where.since)
    top = where.until if after is None else (after.submitted_at if where.until is None
                                             else min(where.until, after.submitted_at))
    high, skip, seen = ("+inf" if top is None else repr(top)), 0, 0
    while seen < budget:
        entries = cast(list[tuple[bytes, float]], await client.zrevrangebyscore(
            index, high, low, start=skip, num=BATCH, withscores=True))
        ids: list[str] = []
        for member, score in entries:
            cid = _text(member)
            if after is not None and score == after.submitted_at and cid >= after.correlation_id:
                continue  # on the previous page (ties are ordered by id, descending)
            ids.append(cid)
        if entries:
            last = entries[-1][1]
            same = sum(1 for _, score in entries if score == last)
            skip, high = (skip + same, high) if repr(last) == high else (same, repr(last))
        seen += len(entries)
        async with client.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hget(f"{prefix}:req:{cid}", "d")
            rows = await pipe.execute() if ids else []
        reached = Position(entries[-1][1], _text(entries[-1][0])) if entries else None
        yield [_decode_record(row) for row in rows if row is not None], len(entries) < BATCH, reached
        if len(entries) < BATCH:
            return


async def page(client: aioredis.Redis, prefix: str, where: RequestFilter, after: Position | None,
               limit: int) -> RequestPage:
    found: list[RequestRecord] = []
    stop: Position | None = None
    async for batch, ended, last in scan(client, prefix, where, after, SCAN_BUDGET):
        found += [r for r in batch if where.matches(r)]
        stop = None if ended else last  # where the index was read to (a record there may be gone)
        if len(found) >= limit:
            return RequestPage(found[:limit], Position.of(found[limit - 1]))
    return RequestPage(found, stop)


def unfiltered(where: RequestFilter) -> bool:
    return where == RequestFilter()


async def counts(client: aioredis.Redis, prefix: str, where: RequestFilter) -> FilteredCounts:
    found: dict[str, int] = {}
    exact = False
    async for batch, ended, _ in scan(client, prefix, where, None, COUNT_SCAN_BUDGET):
        for record in batch:
            if where.matches(record):
                found[record.status] = found.get(record.status, 0) + 1
        exact = ended
    return FilteredCounts(found, exact)


async def _unfinished(client: aioredis.Redis, prefix: str, before: float | None, fields: tuple[str, ...],
                      first: int) -> AsyncGenerator[tuple[float, list[Any]], None]:
    """(submitted_at, [status, *fields]) of index entries oldest first whose record is still
    unfinished, read `first` then UNFINISHED_BATCH at a time, at most UNFINISHED_SCAN_BUDGET."""
    high = "+inf" if before is None else f"({before!r}"
    skip, batch = 0, first
    while skip < UNFINISHED_SCAN_BUDGET:
        batch = min(batch, UNFINISHED_SCAN_BUDGET - skip)
        entries = cast(list[tuple[bytes, float]], await client.zrangebyscore(
            f"{prefix}:unfinished", "-inf", high, start=skip, num=batch, withscores=True))
        async with client.pipeline(transaction=False) as pipe:
            for member, _ in entries:
                pipe.hmget(f"{prefix}:req:{_text(member)}", ["s", *fields])
            rows = await pipe.execute() if entries else []
        for (_, score), row in zip(entries, rows, strict=True):
            if row[0] is not None and _text(row[0]) not in TERMINAL:
                yield score, row
        if len(entries) < batch:
            return
        skip, batch = skip + batch, UNFINISHED_BATCH


async def oldest_unfinished(client: aioredis.Redis, prefix: str) -> float | None:
    async with contextlib.aclosing(_unfinished(client, prefix, None, (), first=8)) as entries:
        async for score, _ in entries:
            return score
    return None


async def unfinished_before(client: aioredis.Redis, prefix: str, before: float, limit: int) -> list[RequestRecord]:
    found: list[RequestRecord] = []
    async with contextlib.aclosing(_unfinished(client, prefix, before, ("d",), first=limit)) as entries:
        async for _, row in entries:
            if row[1] is not None:
                found.append(_decode_record(row[1]))
                if len(found) >= limit:
                    break
    return found
