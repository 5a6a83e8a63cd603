"""An OpenHQM app with Python handlers, middleware and lifecycle hooks.

    OPENHQM_WORKER__APP=examples.handlers.app:app openhqm serve
    curl -s -X POST http://127.0.0.1:8000/api/v1/submit -H 'Prefer: wait=5' \\
         -H 'Content-Type: application/json' -d '{"payload": {"width": 640}, "metadata": {"handler": "resize"}}'
"""

from __future__ import annotations

import time
from typing import Any

from openhqm import DeadLetter, Job, Middleware, OpenHQM, Retry

app = OpenHQM()


class Timing(Middleware):
    """Adds how long the handler took to the job's metadata (middleware sees every job)."""

    async def before(self, job: Job) -> None:
        job.metadata["timing_started"] = time.perf_counter()

    async def after(self, job: Job, result: Any) -> None:
        job.metadata["timing_ms"] = (time.perf_counter() - job.metadata["timing_started"]) * 1000


app.add_middleware(Timing())


@app.handler("resize", retry={"max_attempts": 5, "base_delay_s": 0.2}, timeout_s=30)
async def resize(job: Job) -> dict[str, int]:
    if not isinstance(job.payload, dict) or "width" not in job.payload:
        raise DeadLetter("payload needs a width")  # never succeeds: no retries
    if job.payload.get("busy") and job.attempt < 2:
        raise Retry("image service busy", delay_s=0.1)  # try again later, on purpose
    return {"width": int(job.payload["width"]) // 2}


@app.handler("report")
def report(job: Job) -> str:
    """Sync handlers run in a thread pool, so blocking code is fine here."""
    return f"report for {job.correlation_id} (attempt {job.attempt})"


@app.on("failed")
def alert(record: Any) -> None:
    print(f"request {record.correlation_id} failed: {record.error}")
