"""`openhqm worker` as a process: the worker selection of the runtime, plus signals and idle exit."""

from __future__ import annotations

import asyncio

from openhqm.app import OpenHQM
from openhqm.logging import get_logger
from openhqm.runtime import Runtime
from openhqm.signals import drain_on_signals
from openhqm.worker.pool import WorkerPool

log = get_logger("openhqm.worker")


async def exit_when_idle(pool: WorkerPool, idle_exit_s: float, stop: asyncio.Event) -> None:
    """Scale to zero: stop once nothing has been processed for `worker.idle_exit_s`."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        await asyncio.sleep(min(1.0, idle_exit_s / 4))
        if pool.in_flight == 0 and loop.time() - pool.last_activity >= idle_exit_s:
            log.info("idle: exiting", idle_exit_s=idle_exit_s)
            stop.set()


async def run_worker(app: OpenHQM) -> None:
    """Run until SIGTERM or SIGINT (or idleness), then drain: a second signal exits at once."""
    stop = drain_on_signals()
    async with Runtime(app, workers=True, probes=True) as runtime:
        pool = runtime.pool
        assert pool is not None
        log.info("worker ready", queue=runtime.backend.display_url, concurrency=pool.concurrency)
        idle_exit_s = runtime.settings.worker.idle_exit_s
        idle = asyncio.create_task(exit_when_idle(pool, idle_exit_s, stop)) if idle_exit_s else None
        try:
            await stop.wait()
        finally:
            if idle is not None:
                idle.cancel()
    log.info("worker stopped")
