from __future__ import annotations

from pathlib import Path

from openhqm.config import Settings

NAME = "memory"
BULK_COUNT = 10_000
ALLOWED_DUPLICATES = 0


SERVICE = None
# Its lease is a module constant, not a setting: the contract suite patches it to shorten it.
LEASE_CONSTANT = "openhqm.backends.memory._LEASE_S"


async def make_settings(tmp_path: Path, *, lease_s: float | None = None, address: str | None = None) -> Settings:
    return Settings(queue={"type": "memory"}, data_dir=tmp_path)
