"""Queue backends: one file per broker behind the contract in `base`, shared parts in `kit`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from openhqm.backends.base import Backend, BackendOptions, Capabilities, Delivery, Health, Support
from openhqm.backends.registry import BACKEND_ALIASES, get_backend_class
from openhqm.errors import ConfigError

if TYPE_CHECKING:
    from openhqm.config import Settings


def create_backend(settings: Settings) -> Backend:
    cls = get_backend_class(settings.queue.type)
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise ConfigError(f"queue type '{settings.queue.type}' names {cls!r}, which is not an openhqm Backend")
    return cls(settings)


__all__ = [
    "BACKEND_ALIASES",
    "Backend",
    "BackendOptions",
    "Capabilities",
    "Delivery",
    "Health",
    "Support",
    "create_backend",
    "get_backend_class",
]
