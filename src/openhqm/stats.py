"""Throughput and latency over the last minutes, from the transitions this process sees."""

from __future__ import annotations

import time
from collections import deque

from openhqm.constants import Status
from openhqm.results.base import RequestRecord
from openhqm.results.series import percentile

WINDOW_S = 300.0


class RollingStats:
    def __init__(self, window_s: float = WINDOW_S, max_samples: int = 100_000) -> None:
        self.window_s = window_s
        self._done: deque[tuple[float, str, float | None]] = deque(maxlen=max_samples)

    def observe(self, record: RequestRecord) -> None:
        if record.terminal:
            self._done.append((record.completed_at or time.time(), record.status, record.processing_time_ms))

    def summary(self) -> dict[str, object]:
        now = time.time()
        while self._done and self._done[0][0] < now - self.window_s:
            self._done.popleft()
        last_minute = [d for d in self._done if d[0] >= now - 60]
        latencies = sorted(d[2] for d in self._done if d[2] is not None and d[1] == Status.COMPLETED)

        def pct(q: float) -> float | None:
            return round(percentile(latencies, q), 3) if latencies else None

        return {
            "finished_per_s": {"1m": round(len(last_minute) / 60, 3), "5m": round(len(self._done) / self.window_s, 3)},
            "processing_time_ms": {"p50": pct(0.5), "p99": pct(0.99)},
            "finished_5m": {status: sum(1 for d in self._done if d[1] == status)
                            for status in sorted({d[1] for d in self._done})},
        }
