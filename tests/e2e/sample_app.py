"""Handlers run by the `openhqm` processes of the end-to-end tests (loaded through worker.app); the
in-process tests use tests/harness.py's Sample instead."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from openhqm import OpenHQM
from openhqm.errors import DeadLetter
from openhqm.worker.handlers import Job

app = OpenHQM()


@app.handler("record")
async def record(job: Job) -> Any:
    """Appends the correlation id to a log so tests can count how often each request ran."""
    delay = float(job.payload.get("sleep_s", 0)) if isinstance(job.payload, dict) else 0
    if delay:
        await asyncio.sleep(delay)
    log = Path(os.environ["OPENHQM_TEST_RUN_LOG"])
    with log.open("a") as f:
        f.write(job.correlation_id + "\n")
    return job.payload


@app.handler("give_up")
async def give_up(job: Job) -> Any:
    raise DeadLetter("input can never succeed")


@app.handler("until_cancelled")
async def until_cancelled(job: Job) -> Any:
    """Reports progress, then waits until its request is cancelled; logs `interrupted <id>` then."""
    job.progress(0.5, "waiting to be cancelled")
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        with Path(os.environ["OPENHQM_TEST_RUN_LOG"]).open("a") as f:
            f.write(f"interrupted {job.correlation_id}\n")
        raise


@app.handler("stall_first_attempt")
async def stall_first_attempt(job: Job) -> Any:
    """Logs `started <id>`; its first attempt then never ends (the test kills the process), later ones return."""
    with Path(os.environ["OPENHQM_TEST_RUN_LOG"]).open("a") as f:
        f.write(f"started {job.correlation_id}\n")
    if job.attempt == 1:
        await asyncio.Event().wait()
    return {"attempt": job.attempt}
