from __future__ import annotations

from pathlib import Path

from openhqm.config import Settings

NAME = "memory"
BULK_COUNT = 10_000
ALLOWED_DUPLICATES = 0


async def make_settings(tmp_path: Path) -> Settings:
    return Settings(queue={"type": "memory"}, data_dir=tmp_path)
