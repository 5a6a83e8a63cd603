"""Azure Event Hubs backend: the Kafka backend, pointed at the namespace's Kafka endpoint.

URL: `queue.type: eventhubs`, `queue.eventhubs.connection_string:
"Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=<rule>;SharedAccessKey=<key>"`, a
namespace-level connection string (one with `EntityPath=` reaches a single event hub; a queue uses several).
From it: bootstrap server `<namespace>.servicebus.windows.net:9093`, SASL_SSL with mechanism PLAIN, user
`$ConnectionString`, password the connection string itself.
Mapping: queue Q is event hub Q, with Q.delay, Q.dlq and Q.dlq.delay beside it; the consumer group of Q is
`<queue.kafka.group_id>.Q` (a Kafka consumer group, created by Event Hubs on first use).
Options (`queue.eventhubs`): `checkpoint_store` is unset or `kafka`: checkpoints are the consumer group's
committed offsets, stored by Event Hubs (there is no blob checkpoint store; that belongs to the AMQP SDK,
which this backend does not use). `eventhub_name`, when set, must equal `queue.request_queue`.
`kafka_bootstrap_servers` and `security_protocol: PLAINTEXT` replace the endpoint with a local Kafka
(the tests use tansu). Tuning comes from `queue.kafka` (group_id, session_timeout_s, ...), with Event Hubs'
recommended client settings on top: request timeout >= 60 s, metadata refresh and idle-connection close
at 180 s (Azure drops idle connections at 240 s).
Priority, delay, ordering key, dead letters, crash and rebalance behaviour: exactly as KafkaBackend.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field, SecretStr

from openhqm.backends.base import BackendOptions
from openhqm.backends.kafka import KafkaBackend, KafkaOptions
from openhqm.errors import ConfigError

KAFKA_PORT = 9093
SASL_USERNAME = "$ConnectionString"
_MIN_REQUEST_TIMEOUT_S = 60.0
_METADATA_MAX_AGE_MS = 180_000
_CONNECTIONS_MAX_IDLE_MS = 180_000
_FORMAT = "Endpoint=sb://<namespace>.servicebus.windows.net/;SharedAccessKeyName=<rule>;SharedAccessKey=<key>"


def namespace_host(connection_string: SecretStr | None) -> str:
    """`<namespace>.servicebus.windows.net` from a connection string; errors never repeat the secret."""
    if connection_string is None or not connection_string.get_secret_value().strip():
        raise ConfigError(f"queue.eventhubs.connection_string is required for queue type 'eventhubs' ({_FORMAT})")
    fields = {}
    for part in connection_string.get_secret_value().split(";"):
        name, _, value = part.partition("=")
        fields[name.strip().lower()] = value.strip()
    if fields.get("entitypath"):
        raise ConfigError("queue.eventhubs.connection_string names one event hub (EntityPath); openhqm needs a "
                          "namespace-level connection string: each queue uses several event hubs")
    endpoint = fields.get("endpoint", "")
    host = endpoint.removeprefix("sb://").strip("/").split("/")[0].split(":")[0]
    if not endpoint.startswith("sb://") or not host:
        raise ConfigError(f"queue.eventhubs.connection_string has no 'Endpoint=sb://<host>/' part ({_FORMAT})")
    return host



class EventHubsOptions(BackendOptions):
    connection_string: SecretStr | None = None
    eventhub_name: str | None = Field(None, description="if set, must equal queue.request_queue")
    checkpoint_store: str | None = Field(None, description="only 'kafka' (consumer-group committed offsets)")
    kafka_bootstrap_servers: str | None = Field(
        None, description="instead of <namespace>.servicebus.windows.net:9093 (tests: a local Kafka)")
    security_protocol: Literal["SASL_SSL", "PLAINTEXT"] = Field(
        "SASL_SSL", description="PLAINTEXT only for a local Kafka standing in for Event Hubs")


class EventHubsBackend(KafkaBackend):
    name = "eventhubs"
    options_model: ClassVar[type[BackendOptions]] = EventHubsOptions

    def _kafka_options(self) -> KafkaOptions:
        queue = self.settings.queue
        hubs = queue.options_for(self.name, EventHubsOptions)
        if hubs.checkpoint_store not in (None, "kafka"):
            raise ConfigError(f"queue.eventhubs.checkpoint_store is {hubs.checkpoint_store!r}; the only store is "
                              "'kafka' (the consumer group's committed offsets, kept by Event Hubs)")
        if hubs.eventhub_name is not None and hubs.eventhub_name != queue.request_queue:
            raise ConfigError(f"queue.eventhubs.eventhub_name is {hubs.eventhub_name!r} but queue.request_queue is "
                              f"{queue.request_queue!r}; each queue is the event hub of the same name")
        self.namespace = namespace_host(hubs.connection_string)
        kafka = queue.options_for("kafka", KafkaOptions)
        return kafka.model_copy(update={
            "bootstrap_servers": hubs.kafka_bootstrap_servers or f"{self.namespace}:{KAFKA_PORT}",
            "security_protocol": hubs.security_protocol,
            "sasl_mechanism": "PLAIN",
            "sasl_username": SASL_USERNAME,
            "sasl_password": hubs.connection_string,
            "request_timeout_s": max(kafka.request_timeout_s, _MIN_REQUEST_TIMEOUT_S),
        })

    def client_options(self) -> dict[str, Any]:
        options = super().client_options()
        options["metadata_max_age_ms"] = _METADATA_MAX_AGE_MS
        options["connections_max_idle_ms"] = _CONNECTIONS_MAX_IDLE_MS
        return options

    @property
    def display_url(self) -> str:
        return f"eventhubs://{self.namespace} (kafka {self.options.bootstrap_servers})"
