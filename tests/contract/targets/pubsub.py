from __future__ import annotations

from pathlib import Path

from openhqm.config import Settings
from tests.services import require_service

NAME = "pubsub"
BULK_COUNT = 10_000
ALLOWED_DUPLICATES = 0


async def make_settings(tmp_path: Path) -> Settings:
    host = require_service("pubsub")
    # ack_deadline_s 10 is Pub/Sub's minimum: a consumer that died without settling gives its
    # message back within about 20 s (the lease it last extended runs out).
    return Settings(queue={"type": "pubsub", "pubsub": {
        "project_id": "openhqm-contract", "emulator_host": host, "ack_deadline_s": 10,
    }}, data_dir=tmp_path)
