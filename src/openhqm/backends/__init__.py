"""Queue backends: one file per broker behind the contract in `base`."""

from openhqm.backends.base import Backend, Capabilities, Delivery, Health, Support
from openhqm.backends.registry import BACKEND_ALIASES, create_backend, get_backend_class

__all__ = [
    "BACKEND_ALIASES",
    "Backend",
    "Capabilities",
    "Delivery",
    "Health",
    "Support",
    "create_backend",
    "get_backend_class",
]
