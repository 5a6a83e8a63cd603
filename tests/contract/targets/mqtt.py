from __future__ import annotations

from pathlib import Path

from openhqm.config import Settings
from tests.contract.targets import with_address
from tests.services import require_service

NAME = "mqtt"
# Not a speed limit: Mosquitto keeps at most `max_queued_messages` (default 1000, this machine's
# /etc/mosquitto/mosquitto.conf does not raise it) per session beyond those in flight and drops the
# rest although it PUBACKed them. The bulk test publishes everything before any consumer connects,
# so all of it waits in one session. With `max_queued_messages 0` in the broker, 10_000 passes.
BULK_COUNT = 1_000
ALLOWED_DUPLICATES = 0


SERVICE = "mqtt"


async def make_settings(tmp_path: Path, *, lease_s: float | None = None, address: str | None = None) -> Settings:
    url = with_address(require_service("mqtt"), address)
    return Settings(queue={"type": "mqtt", "mqtt": {
        "url": url,
        "client_id": "openhqm-contract",
        # The tests publish before anyone consumes; in production a worker subscribes first.
        "create_session_on_publish": True,
        # Every test uses new queue names, so its sessions are never resumed after the test.
        "session_expiry_s": 120,
    }}, data_dir=tmp_path)

UNTESTABLE = {
    "release_on_iterator_close": "MQTT cannot hand a message back: an unacked message stays in its own "
                                 "session until that session resumes or expires; a copy + PUBACK would be "
                                 "sent round-robin, back to the closing session too (docs/backends/mqtt.md)",
}
