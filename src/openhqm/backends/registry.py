"""Resolve `queue.type` to a Backend class: alias, then `module:Class`, then entry points."""

from __future__ import annotations

import difflib
import importlib
from importlib.metadata import entry_points
from typing import Any

from pydantic import BaseModel

from openhqm.errors import ConfigError, MissingDependency

# This module imports nothing else of openhqm's (config imports it to validate `queue.<name>`
# sections); backend classes are typed `Any` here and checked where they are built (factory.py).
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


def _import(target: str, type_name: str) -> Any:
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
        cls = getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"queue type '{type_name}': {module_name} has no attribute {attr!r}") from exc
    return cls


def get_backend_class(type_name: str) -> Any:
    """The class behind `queue.type`: a built-in alias, then `module:Class`, then an entry point."""
    if type_name in BACKEND_ALIASES:
        return _import(BACKEND_ALIASES[type_name], type_name)
    if ":" in type_name:
        return _import(type_name, type_name)
    for ep in entry_points(group=ENTRY_POINT_GROUP):  # loaded lazily, only on a miss
        if ep.name == type_name:
            return ep.load()
    raise ConfigError(f"unknown queue type '{type_name}'{did_you_mean(type_name)}")


def backend_names() -> list[str]:
    """Every name `queue.type` and a `queue.<name>` section accept: aliases and entry points."""
    return sorted({*BACKEND_ALIASES, *(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))})


def did_you_mean(name: str) -> str:
    available = backend_names()
    close = difflib.get_close_matches(name, available, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} available: {', '.join(available)}"


def is_backend_name(name: str) -> bool:
    return name in BACKEND_ALIASES or any(ep.name == name for ep in entry_points(group=ENTRY_POINT_GROUP))


def options_model(name: str) -> type[BaseModel] | None:
    """The typed options of backend `name` (its `options_model`), None when it declares none.

    Raises MissingDependency when the backend's client library is not installed."""
    model = getattr(get_backend_class(name), "options_model", None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def capability_table() -> str:
    """The README/docs broker table, generated from each backend's Capabilities so it cannot drift."""
    rows = ["| queue.type | priority | delay | ordering key | dead letters | lease extension | depth | durable "
            "| shared between processes | eager dispatch |", "|---|---|---|---|---|---|---|---|---|---|"]
    for alias in BACKEND_ALIASES:
        try:
            caps = get_backend_class(alias).capabilities
        except MissingDependency:
            rows.append(f"| `{alias}` | install `openhqm[{BACKEND_EXTRAS[alias]}]` ||||||||")
            continue

        def yes(flag: bool) -> str:
            return "yes" if flag else "no"

        rows.append(f"| `{alias}` | {caps.priority} | {caps.delay} | {caps.ordering_key} | {caps.dead_letter} "
                    f"| {yes(caps.lease_extension)} | {yes(caps.depth)} | {yes(caps.durable)} "
                    f"| {yes(caps.shared_between_processes)} | {yes(caps.eager_dispatch)} |")
    return "\n".join(rows)
