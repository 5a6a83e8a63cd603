"""Resolve `queue.type` to a Backend class: alias, then `module:Class`, then entry points."""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import TYPE_CHECKING

from openhqm.errors import ConfigError, MissingDependency

if TYPE_CHECKING:
    from openhqm.backends.base import Backend
    from openhqm.config import Settings

ENTRY_POINT_GROUP = "openhqm.backends"

BACKEND_ALIASES: dict[str, str] = {
    "memory": "openhqm.backends.memory:MemoryBackend",
    "sqlite": "openhqm.backends.sqlite:SQLiteBackend",
    "redis": "openhqm.backends.redis_streams:RedisStreamsBackend",
    "rabbitmq": "openhqm.backends.rabbitmq:RabbitMQBackend",
    "kafka": "openhqm.backends.kafka:KafkaBackend",
    "sqs": "openhqm.backends.sqs:SQSBackend",
    "nats": "openhqm.backends.nats_jetstream:NATSJetStreamBackend",
    "mqtt": "openhqm.backends.mqtt:MQTTBackend",
    "pubsub": "openhqm.backends.gcp_pubsub:PubSubBackend",
    "eventhubs": "openhqm.backends.azure_eventhubs:EventHubsBackend",
}

# The pip extra that brings a built-in backend's client library.
BACKEND_EXTRAS: dict[str, str] = {
    "redis": "redis",
    "rabbitmq": "rabbitmq",
    "kafka": "kafka",
    "sqs": "sqs",
    "nats": "nats",
    "mqtt": "mqtt",
    "pubsub": "pubsub",
    "eventhubs": "eventhubs",
}


def _import(target: str, type_name: str) -> type[Backend]:
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        extra = BACKEND_EXTRAS.get(type_name)
        if extra and module_name.startswith("openhqm.") and exc.name != module_name:
            raise MissingDependency(
                f"install openhqm[{extra}] to use queue type '{type_name}' ({exc.name} is missing)"
            ) from exc
        raise ConfigError(f"queue type '{type_name}': cannot import {module_name}: {exc}") from exc
    try:
        cls: type[Backend] = getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"queue type '{type_name}': {module_name} has no attribute {attr!r}") from exc
    return cls


def get_backend_class(type_name: str) -> type[Backend]:
    if type_name in BACKEND_ALIASES:
        return _import(BACKEND_ALIASES[type_name], type_name)
    if ":" in type_name:
        return _import(type_name, type_name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):  # loaded lazily, only on a miss
        if ep.name == type_name:
            loaded: type[Backend] = ep.load()
            return loaded
    available = sorted({*BACKEND_ALIASES, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})
    close = difflib.get_close_matches(type_name, available, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"unknown queue type '{type_name}'{hint} available: {', '.join(available)}")


def create_backend(settings: Settings) -> Backend:
    return get_backend_class(settings.queue.type)(settings)


def capability_table() -> str:
    """The README/docs broker table, generated from each backend's Capabilities so it cannot drift."""
    rows = ["| queue.type | priority | delay | ordering key | dead letters | lease extension | depth | durable "
            "| shared between processes |", "|---|---|---|---|---|---|---|---|---|"]
    for alias in BACKEND_ALIASES:
        try:
            caps = get_backend_class(alias).capabilities
        except MissingDependency:
            rows.append(f"| `{alias}` | install `openhqm[{BACKEND_EXTRAS[alias]}]` |||||||")
            continue

        def yes(flag: bool) -> str:
            return "yes" if flag else "no"

        rows.append(f"| `{alias}` | {caps.priority} | {caps.delay} | {caps.ordering_key} | {caps.dead_letter} "
                    f"| {yes(caps.lease_extension)} | {yes(caps.depth)} | {yes(caps.durable)} "
                    f"| {yes(caps.shared_between_processes)} |")
    return "\n".join(rows)
