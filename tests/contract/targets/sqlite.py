from __future__ import annotations

from pathlib import Path

from openhqm.config import Settings

NAME = "sqlite"
BULK_COUNT = 10_000
ALLOWED_DUPLICATES = 0


SERVICE = None


async def make_settings(tmp_path: Path, *, lease_s: float | None = None, address: str | None = None) -> Settings:
    return Settings(queue={"type": "sqlite", "sqlite": {"lease_s": lease_s or 1.0}}, data_dir=tmp_path)

