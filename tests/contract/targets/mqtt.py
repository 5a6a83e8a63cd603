from __future__ import annotations

from pathlib import Path

from openhqm.config import Settings
from tests.services import require_service

NAME = "mqtt"
# Not a speed limit: Mosquitto keeps at most `max_queued_messages` (default 1000, this machine's
# /etc/mosquitto/mosquitto.conf does not raise it) per session beyond those in flight and drops the
# rest although it PUBACKed them. The bulk test publishes everything before any consumer connects,
# so all of it waits in one session. With `max_queued_messages 0` in the broker, 10_000 passes.
BULK_COUNT = 1_000
ALLOWED_DUPLICATES = 0


async def make_settings(tmp_path: Path) -> Settings:
    url = require_service("mqtt")
    return Settings(queue={"type": "mqtt", "mqtt": {
        "url": url,
        "client_id": "openhqm-contract",
        # The tests publish before anyone consumes; in production a worker subscribes first.
        "create_session_on_publish": True,
        # Every test uses new queue names, so its sessions are never resumed after the test.
        "session_expiry_s": 120,
    }}, data_dir=tmp_path)
