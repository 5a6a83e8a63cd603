"""`openhqm worker` as a process: signals, drain, and the small health/metrics port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal

from openhqm.app import OpenHQM
from openhqm.backends import create_backend
from openhqm.logging import get_logger
from openhqm.results import create_store
from openhqm.runtime import settle_after_startup
from openhqm.tracing import shutdown_tracing
from openhqm.worker.pool import WorkerPool
from openhqm.worker.runner import build_forwarder, build_pool

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
    settings = app.settings
    backend = create_backend(settings)
    store = create_store(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now; unsettled messages return after their lease")
            os._exit(1)
        log.info("signal received: draining", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)

    forwarder = build_forwarder(app)
    await backend.connect()
    await store.connect()
    if forwarder is not None:
        await forwarder.start()
    store.add_listener(app.dispatch)
    pool = build_pool(app, backend, store, forwarder)
    health = health_task = None
    if settings.worker.health_port:
        from openhqm.worker.health import health_server

        health = health_server(settings, backend, store, pool)
        health_task = asyncio.create_task(health.serve())
    settle_after_startup()
    pool.start()
    log.info("worker ready", queue=backend.display_url, concurrency=pool.concurrency)
    idle = asyncio.create_task(exit_when_idle(pool, settings.worker.idle_exit_s, stop)) \
        if settings.worker.idle_exit_s else None
    try:
        await stop.wait()
    finally:
        if idle is not None:
            idle.cancel()
        await pool.stop(settings.worker.shutdown_timeout_s)
        if health is not None and health_task is not None:
            health.should_exit = True
            with contextlib.suppress(Exception):
                await health_task
        if forwarder is not None:
            await forwarder.close()
        await store.close()
        await backend.close()
        shutdown_tracing()
        log.info("worker stopped")
