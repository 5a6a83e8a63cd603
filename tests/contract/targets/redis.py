from __future__ import annotations

from pathlib import Path

from openhqm.config import Settings
from tests.contract.targets import with_address
from tests.services import require_service

NAME = "redis"
BULK_COUNT = 10_000
ALLOWED_DUPLICATES = 0


SERVICE = "redis"


async def make_settings(tmp_path: Path, *, lease_s: float | None = None, address: str | None = None) -> Settings:
    url = with_address(require_service("redis"), address)
    # Queue names are unique per test (tests/contract/conftest.py), so keys never collide on the
    # shared Redis; a 1 s lease brings a dead consumer's message back quickly.
    return Settings(queue={"type": "redis", "redis": {"url": url, "lease_s": lease_s or 1.0}}, data_dir=tmp_path)

