"""The PostgreSQL store's listing queries (the console).

Every record field is a column, so all filters are SQL; one index serves the list,
(submitted_at, correlation_id), walked backwards, of which a page examines at most SCAN_BUDGET
rows for its filters. Counts are one exact GROUP BY.
"""

from __future__ import annotations

from typing import Any

from openhqm.results.queries import SCAN_BUDGET, Position, RequestFilter

ORDER = " ORDER BY submitted_at DESC, correlation_id DESC"


class Terms:
    """SQL conditions with numbered parameters ($1, $2, ...)."""

    def __init__(self) -> None:
        self.terms: list[str] = []
        self.args: list[Any] = []

    def add(self, sql: str, *values: Any) -> None:
        marks = [f"${len(self.args) + i}" for i in range(1, len(values) + 1)]
        self.terms.append(sql.format(*marks))
        self.args += values

    def where(self, terms: list[str] | None = None) -> str:
        chosen = self.terms if terms is None else terms
        return " WHERE " + " AND ".join(chosen) if chosen else ""


def ranged(where: RequestFilter, after: Position | None) -> Terms:
    """The conditions on the index: the page's position and the time range."""
    terms = Terms()
    if after is not None:
        terms.add("(submitted_at, correlation_id) < ({}, {})", after.submitted_at, after.correlation_id)
    if where.since is not None:
        terms.add("submitted_at >= {}", where.since)
    if where.until is not None:
        terms.add("submitted_at <= {}", where.until)
    return terms


def filtered(terms: Terms, where: RequestFilter) -> list[str]:
    """Add the other conditions to `terms`; returns just those."""
    first = len(terms.terms)
    if where.statuses is not None:
        terms.add("status = ANY({}::text[])", sorted(where.statuses))
    if where.session_id is not None:
        terms.add("session_id = {}", where.session_id)
    if where.endpoint is not None:
        terms.add("target_kind = 'endpoint' AND target = {}", where.endpoint)
    if where.handler is not None:
        terms.add("target_kind = 'handler' AND target = {}", where.handler)
    if where.idempotency_key is not None:
        terms.add("idempotency_key = {}", where.idempotency_key)
    if where.id_prefix is not None:
        terms.add("left(correlation_id, {}) = {}", len(where.id_prefix), where.id_prefix)
    if where.client_id is not None:
        terms.add("(client_id IS NULL OR client_id = {})", where.client_id)
    return terms.terms[first:]


def page_sql(table: str, columns: str, where: RequestFilter, after: Position | None, limit: int
             ) -> tuple[tuple[str, list[Any]], tuple[str, list[Any]] | None]:
    """The page's query, and the query for where its scan stopped (None: no scan budget applies),
    each with its parameters."""
    terms = ranged(where, after)
    indexed, indexed_args = list(terms.terms), list(terms.args)
    rest = filtered(terms, where)
    if not rest:
        return (f"SELECT {columns} FROM {table}{terms.where()}{ORDER} LIMIT {limit}", terms.args), None
    scanned = f"SELECT {columns} FROM {table}{terms.where(indexed)}{ORDER} LIMIT {SCAN_BUDGET}"
    sql = f"SELECT {columns} FROM ({scanned}) AS scanned{terms.where(rest)}{ORDER} LIMIT {limit}"
    stop = (f"SELECT submitted_at, correlation_id FROM {table}{terms.where(indexed)}{ORDER}"
            f" LIMIT 1 OFFSET {SCAN_BUDGET - 1}")
    return (sql, terms.args), (stop, indexed_args)


def counts_sql(table: str, where: RequestFilter) -> tuple[str, list[Any]]:
    terms = ranged(where, None)
    filtered(terms, where)
    return f"SELECT status, count(*) AS n FROM {table}{terms.where()} GROUP BY status", terms.args
