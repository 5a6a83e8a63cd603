"""Handlers used by the end-to-end tests (loaded through worker.app)."""

from __future__ import annotations

import asyncio
import json
import os
import time
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


@app.handler("flaky")
def flaky(job: Job) -> Any:
    """Fails while the marker file named in the payload exists (a sync handler, run in a thread)."""
    if Path(job.payload["marker"]).exists():
        raise RuntimeError("marker present")
    return "recovered"


@app.handler("give_up")
async def give_up(job: Job) -> Any:
    raise DeadLetter("input can never succeed")


@app.handler("trace")
async def trace(job: Job) -> Any:
    """Logs start and end times with the payload, for ordering, priority and scheduling tests."""
    started = time.time()
    payload = job.payload if isinstance(job.payload, dict) else {}
    await asyncio.sleep(float(payload.get("sleep_s", 0)))
    line = {"cid": job.correlation_id, "session": job.session_id, "payload": payload, "start": started,
            "end": time.time(), "attempt": job.attempt}
    with Path(os.environ["OPENHQM_TEST_RUN_LOG"]).open("a") as f:
        f.write(json.dumps(line) + "\n")
    return payload


@app.handler("not_json")
async def not_json(job: Job) -> Any:
    """Returns what JSON cannot carry: bytes, or an integer beyond 64 bits."""
    return b"\x00raw" if job.payload == "bytes" else 2**70


@app.handler("fail_once")
async def fail_once(job: Job) -> Any:
    if job.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"attempt": job.attempt}


HOOK_LOG = os.environ.get("OPENHQM_TEST_HOOK_LOG")


@app.on("completed")
def remember_completed(record: Any) -> None:
    if HOOK_LOG:
        with Path(HOOK_LOG).open("a") as f:
            f.write(f"completed {record.correlation_id}\n")
