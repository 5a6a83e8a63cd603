"""Where a request waits: monotonic timestamps at each hop of a sample of requests (a diagnostic).

Off unless the environment says `OPENHQM_STAGE_SAMPLE=N` (1 in N submits is traced; not a setting:
it exists to find waits, see docs/benchmarks.md). Off, every hook is one boolean check.

A trace starts when the HTTP layer receives a submit (`received()`, bound to the request's context)
and takes its correlation id from the first hop that knows it; the hops in the listener, queue,
worker and store then `mark(correlation_id, stage)`, and it ends when the answer is sent
(`responded()`). `summary()` gives the p50/p90/p99 of the gap between consecutive hops, and of one
event-loop turn (how long a callback scheduled with call_soon waits: every `await` on a group commit
or a woken future costs at least one), which is what most hops wait for.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections import deque
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from openhqm.errors import ConfigError
from openhqm.results.series import percentile

ENVIRONMENT_VARIABLE = "OPENHQM_STAGE_SAMPLE"
# The hops in the order a forwarded `Prefer: wait` submit passes them (a handler's has no forward).
STAGES = ("received", "written", "published", "dequeued", "started", "claimed", "forwarded", "answered",
          "stored", "woken", "responded")
MAX_OPEN = 10_000  # traces not yet answered (a client that went away leaves one behind)
MAX_KEPT = 50_000  # finished traces kept for the summary
LOOP_PROBE_INTERVAL_S = 0.01


class Trace:
    __slots__ = ("correlation_id", "marks")

    def __init__(self) -> None:
        self.correlation_id: str | None = None
        self.marks: list[tuple[str, float]] = [("received", time.monotonic())]


class Recorder:
    """The traces of one process: those under way (by correlation id) and the finished ones."""

    def __init__(self, every: int) -> None:
        self.every = every
        self.seen = 0
        self.open: dict[str, Trace] = {}
        self.finished: deque[list[tuple[str, float]]] = deque(maxlen=MAX_KEPT)
        self.loop_turns: deque[float] = deque(maxlen=MAX_KEPT)
        self.probing: asyncio.AbstractEventLoop | None = None

    def start(self) -> Trace | None:
        self.seen += 1
        if self.seen % self.every:
            return None
        self._probe_loop()
        return Trace()

    def bind(self, trace: Trace, correlation_id: str) -> None:
        trace.correlation_id = correlation_id
        if len(self.open) >= MAX_OPEN:
            self.open.pop(next(iter(self.open)))
        self.open[correlation_id] = trace

    def finish(self, trace: Trace) -> None:
        if trace.correlation_id is not None:
            self.open.pop(trace.correlation_id, None)
            self.finished.append(trace.marks)

    def _probe_loop(self) -> None:
        """Measure one loop turn every LOOP_PROBE_INTERVAL_S on the loop that serves the traces."""
        loop = asyncio.get_running_loop()
        if self.probing is loop:
            return
        self.probing = loop

        def scheduled() -> None:
            if _recorder is self and self.probing is loop:
                loop.call_soon(ran, time.monotonic())

        def ran(at: float) -> None:
            self.loop_turns.append(time.monotonic() - at)
            loop.call_later(LOOP_PROBE_INTERVAL_S, scheduled)

        loop.call_soon(scheduled)


_current: ContextVar[Trace | None] = ContextVar("openhqm_stage_trace", default=None)
_recorder: Recorder | None = None


def enable(every: int) -> None:
    """Trace 1 in `every` submits from now on (a fresh recorder); 0 turns tracing off."""
    global _recorder
    _recorder = Recorder(every) if every > 0 else None


def enabled() -> bool:
    return _recorder is not None


def received() -> None:
    """A submit arrived: start a trace in this request's context if it is sampled."""
    if _recorder is None:
        return
    _current.set(_recorder.start())  # None when not sampled, which also drops an unfinished earlier one


def mark(correlation_id: str | None, stage: str) -> None:
    """The request `correlation_id` passed `stage` (one of STAGES) now, if it is traced."""
    if _recorder is None or correlation_id is None:
        return
    trace = _recorder.open.get(correlation_id)
    if trace is None:
        trace = _current.get()
        if trace is None or trace.correlation_id is not None:
            return
        _recorder.bind(trace, correlation_id)
    trace.marks.append((stage, time.monotonic()))


def responded() -> None:
    """The answer to this context's submit was sent: its trace is complete."""
    if _recorder is None:
        return
    trace = _current.get()
    if trace is not None:
        trace.marks.append(("responded", time.monotonic()))
        _recorder.finish(trace)
        _current.set(None)


def summary(reset: bool = False) -> dict[str, Any]:
    """The gaps between consecutive hops of the finished traces, in ms: count, p50, p90, p99, max."""
    recorder = _recorder
    if recorder is None:
        return {"enabled": False}
    gaps: dict[tuple[str, str], list[float]] = {}
    totals = []
    for marks in recorder.finished:
        for (before, at), (after, then) in itertools.pairwise(marks):
            gaps.setdefault((before, after), []).append(then - at)
        totals.append(marks[-1][1] - marks[0][1])
    order = {stage: n for n, stage in enumerate(STAGES)}
    rows = [{"from": before, "to": after, **percentiles(values)}
            for (before, after), values in sorted(gaps.items(), key=lambda g: (order.get(g[0][0], 99),
                                                                                order.get(g[0][1], 99)))]
    result = {"enabled": True, "sample_every": recorder.every, "traces": len(recorder.finished),
              "gaps": rows, "total": percentiles(totals), "loop_turn": percentiles(list(recorder.loop_turns))}
    if reset:
        recorder.finished.clear()
        recorder.loop_turns.clear()
    return result


def percentiles(values_s: list[float]) -> dict[str, float]:
    ordered = sorted(values_s)
    if not ordered:
        return {"count": 0}

    def at(q: float) -> float:
        return round(percentile(ordered, q) * 1000, 3)

    return {"count": len(ordered), "p50_ms": at(0.5), "p90_ms": at(0.9), "p99_ms": at(0.99), "max_ms": at(1.0)}


def every_from_environment(environ: Mapping[str, str]) -> int:
    """OPENHQM_STAGE_SAMPLE: a whole number, 0 or unset for off."""
    value = environ.get(ENVIRONMENT_VARIABLE, "").strip()
    if not value.isdigit():
        if value:
            raise ConfigError(f"{ENVIRONMENT_VARIABLE}={value!r} is not a whole number (1 in N submits traced; 0: off)")
        return 0
    return int(value)


enable(every_from_environment(os.environ))
