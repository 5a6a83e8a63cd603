"""The Event Hubs backend's data path (its Kafka protocol) against the local tansu broker.

No Event Hubs emulator runs offline, so the endpoint derived from the connection string is replaced by
tansu in PLAINTEXT (`kafka_bootstrap_servers`, `security_protocol`). The SASL_SSL login to a real
namespace is not exercised here (see docs/backends/eventhubs.md).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from openhqm.config import Settings
from tests.services import require_service
from tests.tcp_proxy import KafkaProxy

NAME = "eventhubs"
BULK_COUNT = 10_000
# As for Kafka: at-least-once when each of the four consumers joining rebalances the group
# (measured here: 0 duplicates).
ALLOWED_DUPLICATES = 50

CONNECTION_STRING = ("Endpoint=sb://openhqm-test.servicebus.windows.net/;"
                     "SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=bm90LWEtcmVhbC1rZXk=")


SERVICE = "kafka"  # the data path runs on tansu; there is no "eventhubs" service
PROXY = KafkaProxy


async def make_settings(tmp_path: Path, *, lease_s: float | None = None, address: str | None = None) -> Settings:
    broker = require_service("kafka")
    eventhubs = {"connection_string": CONNECTION_STRING, "kafka_bootstrap_servers": address or broker,
                 "security_protocol": "PLAINTEXT"}
    kafka = {"group_id": f"contract-{uuid.uuid4().hex[:8]}", "session_timeout_s": 2.0,
             "heartbeat_interval_s": 0.3, "rebalance_grace_s": 2.0}
    return Settings(queue={"type": "eventhubs", "eventhubs": eventhubs, "kafka": kafka}, data_dir=tmp_path)
