from __future__ import annotations

from pathlib import Path

from openhqm.config import Settings
from tests.contract.targets import with_address
from tests.services import require_service

NAME = "rabbitmq"
BULK_COUNT = 10_000
ALLOWED_DUPLICATES = 0


SERVICE = "rabbitmq"


async def make_settings(tmp_path: Path, *, lease_s: float | None = None, address: str | None = None) -> Settings:
    # No lease to shorten: the broker requeues a dead consumer's unacked messages when its
    # connection closes. A short reconnect interval keeps connection-drop tests quick.
    url = with_address(require_service("rabbitmq"), address)
    return Settings(queue={"type": "rabbitmq", "rabbitmq": {"url": url, "reconnect_interval_s": 0.5}},
                    data_dir=tmp_path)
