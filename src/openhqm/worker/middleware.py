"""Worker middleware: hooks around every job, each a no-op by default (dramatiq style)."""

from __future__ import annotations

import time
from typing import Any

from openhqm.logging import get_logger
from openhqm.worker.handlers import Job

log = get_logger("openhqm.worker")


class Middleware:
    """Override only the hooks you need. Hooks run in order before, and in reverse order after."""

    async def before(self, job: Job) -> None:
        pass

    async def after(self, job: Job, result: Any) -> None:
        pass

    async def on_error(self, job: Job, error: BaseException) -> None:
        pass


class LoggingMiddleware(Middleware):
    async def before(self, job: Job) -> None:
        job.state["started"] = time.perf_counter()
        log.info("job started", attempt=job.attempt, target=job.envelope.handler or job.envelope.endpoint)

    async def after(self, job: Job, result: Any) -> None:
        log.info("job completed", attempt=job.attempt, duration_ms=_elapsed_ms(job))

    async def on_error(self, job: Job, error: BaseException) -> None:
        log.info("job failed", attempt=job.attempt, error=f"{type(error).__name__}: {error}",
                 duration_ms=_elapsed_ms(job))


def _elapsed_ms(job: Job) -> float | None:
    started = job.state.get("started")
    return round((time.perf_counter() - started) * 1000, 3) if isinstance(started, float) else None
