"""The SQLite store's listing queries (the console), on a read connection of their own.

Columns written once at create and never updated (`client_id`, `target`, `idempotency_key`,
`envelope`) let SQL filter without decoding records; only two indexes serve the list:
(submitted_at) and (status, submitted_at), the latter replacing the (status) index that counts used
(ties on submitted_at, rare, are ordered by id in a small sort; leaving the id out of the index
halves its size, and so the time of an unfiltered count). A page walks one of them
newest first and examines at most SCAN_BUDGET rows for the filters no index covers; several statuses
are one walk each, merged. Counts are one exact GROUP BY (a filter on an unindexed column reads the
table: about a second per few million rows).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from openhqm.results.queries import SCAN_BUDGET, FilteredCounts, Position, RequestFilter, RequestPage, Stream, merge
from openhqm.results.records import RequestRecord

_decode_record = msgspec.msgpack.Decoder(RequestRecord).decode

# Columns a table made by an older version lacks; added at connect.
ADDED_COLUMNS = {"client_id": "TEXT", "target": "TEXT", "idempotency_key": "TEXT", "envelope": "BLOB"}
INDEXES = """
CREATE INDEX IF NOT EXISTS requests_submitted ON requests (submitted_at);
CREATE INDEX IF NOT EXISTS requests_status_submitted ON requests (status, submitted_at);
DROP INDEX IF EXISTS requests_status;
"""
_ORDER = " ORDER BY submitted_at DESC, correlation_id DESC"


def add_columns(conn: sqlite3.Connection) -> None:
    """Bring a table of an older version up to date (its rows get NULLs: listed, not filterable)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(requests)")}
    for name, kind in ADDED_COLUMNS.items():
        if name not in present:
            try:
                conn.execute(f"ALTER TABLE requests ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as exc:  # another process added it first
                if "duplicate column" not in str(exc):
                    raise
    for statement in INDEXES.strip().split(";"):  # in the caller's transaction (executescript would commit)
        if statement.strip():
            conn.execute(statement)


def target_column(record: RequestRecord) -> str | None:
    """`target` as stored: qualified by its kind, so an endpoint and a handler of one name differ."""
    return f"{record.target_kind}:{record.target}" if record.target is not None else None


def _indexed(where: RequestFilter, after: Position | None, status: str | None) -> tuple[list[str], list[Any]]:
    terms: list[str] = []
    args: list[Any] = []
    if after is not None:
        terms.append("(submitted_at, correlation_id) < (?, ?)")
        args += [after.submitted_at, after.correlation_id]
    if status is not None:
        terms.append("status = ?")
        args.append(status)
    if where.since is not None:
        terms.append("submitted_at >= ?")
        args.append(where.since)
    if where.until is not None:
        terms.append("submitted_at <= ?")
        args.append(where.until)
    if where.session_id is not None:
        terms.append("session_id = ?")
        args.append(where.session_id)
    return terms, args


def _unindexed(where: RequestFilter) -> tuple[list[str], list[Any]]:
    terms: list[str] = []
    args: list[Any] = []
    if (target := where.target) is not None:
        terms.append("target = ?")
        args.append(f"{target[0]}:{target[1]}")
        if where.endpoint is not None and where.handler is not None:
            terms.append("0")  # one request has one target: both kinds match nothing
    if where.idempotency_key is not None:
        terms.append("idempotency_key = ?")
        args.append(where.idempotency_key)
    if where.id_prefix is not None:
        terms.append("substr(correlation_id, 1, ?) = ?")
        args += [len(where.id_prefix), where.id_prefix]
    if where.client_id is not None:
        terms.append("(client_id IS NULL OR client_id = ?)")
        args.append(where.client_id)
    return terms, args


def _where(terms: list[str]) -> str:
    return " WHERE " + " AND ".join(terms) if terms else ""


def _stream(conn: sqlite3.Connection, where: RequestFilter, after: Position | None, status: str | None,
            limit: int) -> Stream:
    terms, args = _indexed(where, after, status)
    extra, extra_args = _unindexed(where)
    if not extra:
        rows = conn.execute(f"SELECT data FROM requests{_where(terms)}{_ORDER} LIMIT ?", (*args, limit)).fetchall()
        records = [_decode_record(r[0]) for r in rows]
        return Stream(records, Position.of(records[-1]) if len(records) == limit else None)
    # The scan's far end first, from the index alone (it holds no ids, so the page's own position
    # counts as its time only); then the rows up to it that match, which stop at `limit`.
    coarse, coarse_args = _indexed(where, None, status)
    if after is not None:  # an empty id: every request of that time was examined already
        coarse.append("submitted_at < ?" if after.correlation_id == "" else "submitted_at <= ?")
        coarse_args.append(after.submitted_at)
    edge = conn.execute(f"SELECT submitted_at FROM requests{_where(coarse)} ORDER BY submitted_at DESC"
                        f" LIMIT 1 OFFSET {SCAN_BUDGET - 1}", coarse_args).fetchone()
    if edge is not None:
        terms.append("submitted_at >= ?")
        args.append(edge[0])
    rows = conn.execute(f"SELECT data FROM requests{_where(terms + extra)}{_ORDER} LIMIT ?",
                        (*args, *extra_args, limit)).fetchall()
    records = [_decode_record(r[0]) for r in rows]
    if len(records) == limit:
        return Stream(records, Position.of(records[-1]))
    # Everything at the edge's time was examined: the next page starts below it.
    return Stream(records, None if edge is None else Position(edge[0], ""))


def page(conn: sqlite3.Connection, where: RequestFilter, after: Position | None, limit: int) -> RequestPage:
    statuses = sorted(where.statuses) if where.statuses is not None else [None]
    return merge([_stream(conn, where, after, status, limit) for status in statuses], limit)


def counts(conn: sqlite3.Connection, where: RequestFilter) -> FilteredCounts:
    terms, args = _indexed(where, None, None)
    extra, extra_args = _unindexed(where)
    if where.statuses is not None:
        terms.append(f"status IN ({','.join('?' * len(where.statuses))})")
        args += sorted(where.statuses)
    rows = conn.execute(f"SELECT status, COUNT(*) FROM requests{_where(terms + extra)} GROUP BY status",
                        (*args, *extra_args)).fetchall()
    return FilteredCounts({status: count for status, count in rows})
