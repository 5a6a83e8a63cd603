from __future__ import annotations

from pathlib import Path

from openhqm.config import Settings
from tests.contract.targets import with_address
from tests.leftovers import remove_nats_stream, unique
from tests.services import require_service, service_address

NAME = "nats"
BULK_COUNT = 10_000
ALLOWED_DUPLICATES = 0

# One stream for this test session (each test has its own queue, hence its own subject and
# durable); the stream, and every consumer in it, is deleted when the session ends (end_session).
_SUFFIX = unique(10)
STREAM = f"OPENHQM_CONTRACT_{_SUFFIX}"
PREFIX = f"openhqm-contract-{_SUFFIX}"
_used = False


async def end_session() -> None:
    if _used:
        await remove_nats_stream(service_address("nats"), STREAM)


SERVICE = "nats"


async def make_settings(tmp_path: Path, *, lease_s: float | None = None, address: str | None = None) -> Settings:
    global _used
    url = with_address(require_service("nats"), address)
    _used = True
    # ack_wait 2 s: the died-consumer test waits for it; shorter risks redelivering messages that
    # sit in a consumer's pulled batch while the machine is busy (counted as duplicates).
    return Settings(queue={"type": "nats", "nats": {"url": url, "stream": STREAM, "subject_prefix": PREFIX,
                                                    "ack_wait_s": lease_s or 2.0}}, data_dir=tmp_path)
