from __future__ import annotations

from pathlib import Path

from openhqm.config import Settings

NAME = "sqlite"
CROSS_PROCESS = True


async def make_settings(tmp_path: Path) -> Settings:
    return Settings(results={"type": "sqlite"}, data_dir=tmp_path)
