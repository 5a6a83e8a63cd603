from __future__ import annotations

import asyncio
import atexit
import contextlib
import uuid
from pathlib import Path

import nats

from openhqm.config import Settings
from tests.contract.targets import with_address
from tests.services import require_service, service_address

NAME = "nats"
BULK_COUNT = 10_000
ALLOWED_DUPLICATES = 0

# One stream for this test session (each test has its own queue, hence its own subject and
# durable); the stream, and every consumer in it, is deleted when the session ends.
_SUFFIX = uuid.uuid4().hex[:10]
STREAM = f"OPENHQM_CONTRACT_{_SUFFIX}"
PREFIX = f"openhqm-contract-{_SUFFIX}"
_used = False


async def _delete_stream() -> None:
    nc = await nats.connect(service_address("nats"), connect_timeout=2, max_reconnect_attempts=0)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await nc.jetstream().delete_stream(STREAM)
    finally:
        await nc.close()


def _cleanup() -> None:
    if _used:
        with contextlib.suppress(Exception):
            asyncio.run(asyncio.wait_for(_delete_stream(), 10))


atexit.register(_cleanup)


SERVICE = "nats"


async def make_settings(tmp_path: Path, *, lease_s: float | None = None, address: str | None = None) -> Settings:
    global _used
    url = with_address(require_service("nats"), address)
    _used = True
    # ack_wait 2 s: the died-consumer test waits for it; shorter risks redelivering messages that
    # sit in a consumer's pulled batch while the machine is busy (counted as duplicates).
    return Settings(queue={"type": "nats", "nats": {"url": url, "stream": STREAM, "subject_prefix": PREFIX,
                                                    "ack_wait_s": lease_s or 2.0}}, data_dir=tmp_path)
