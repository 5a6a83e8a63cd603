from __future__ import annotations

from pathlib import Path

from openhqm.config import Settings

NAME = "memory"
CROSS_PROCESS = False


async def make_settings(tmp_path: Path) -> Settings:
    return Settings(results={"type": "memory"}, data_dir=tmp_path)
