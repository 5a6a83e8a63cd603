"""Finished requests per minute, with end-to-end latency percentiles (completed_at - submitted_at),
for the console's overview charts (`GET /api/v1/queues/{queue}/series`).

Bounded: at most `SERIES_MAX_MINUTES` minutes, and per minute the latencies of at most
`SAMPLE_PER_MINUTE` requests (the latest finished in it) feed the percentiles; the counts are exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import msgspec

from openhqm.constants import Status

SERIES_MAX_MINUTES = 180
SAMPLE_PER_MINUTE = 5000
FINISHED = (str(Status.COMPLETED), str(Status.FAILED))  # what the series counts (not cancelled, expired)
PERCENTILES = (0.5, 0.95, 0.99)
FIGURES = ("completed", "failed", "p50_ms", "p95_ms", "p99_ms")


class FinishedMinute(msgspec.Struct, kw_only=True):
    at: float  # the minute's start, epoch seconds
    completed: int = 0
    failed: int = 0
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None


def minute_start(at: float) -> float:
    return math.floor(at / 60) * 60.0


def window(minutes: int, now: float) -> tuple[float, float]:
    """[since, until) of the last `minutes` minutes, the current (partial) one included."""
    until = minute_start(now) + 60.0
    return until - 60.0 * minutes, until


def minute_starts(since: float, until: float) -> list[float]:
    return [since + 60.0 * i for i in range(round((until - since) / 60))]


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted, non-empty list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def minute(at: float, completed: int, failed: int, latencies_s: Iterable[float]) -> FinishedMinute:
    ordered = sorted(latencies_s)
    if not ordered:
        return FinishedMinute(at=at, completed=completed, failed=failed)
    return measured(at, completed, failed, [percentile(ordered, q) for q in PERCENTILES])


def measured(at: float, completed: int, failed: int, percentiles_s: Sequence[float]) -> FinishedMinute:
    """A minute from its counts and its PERCENTILES in seconds."""
    p50, p95, p99 = (round(value * 1000, 3) for value in percentiles_s)
    return FinishedMinute(at=at, completed=completed, failed=failed, p50_ms=p50, p95_ms=p95, p99_ms=p99)


def summarise(rows: Iterable[tuple[float, float, str]], since: float, until: float) -> list[FinishedMinute]:
    """Every minute of [since, until) from (completed_at, latency_s, status) rows (other rows ignored);
    each minute's percentiles from its latest SAMPLE_PER_MINUTE rows."""
    buckets: dict[float, list[tuple[float, float, str]]] = {}
    for row in rows:
        if since <= row[0] < until and row[2] in FINISHED:
            buckets.setdefault(minute_start(row[0]), []).append(row)
    out = []
    for start in minute_starts(since, until):
        chosen = sorted(buckets.get(start, ()), reverse=True)
        completed = sum(1 for row in chosen if row[2] == Status.COMPLETED)
        out.append(minute(start, completed, len(chosen) - completed,
                          (row[1] for row in chosen[:SAMPLE_PER_MINUTE])))
    return out
