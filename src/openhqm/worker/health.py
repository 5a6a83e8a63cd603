"""Moved to openhqm.http.health (the web framework stays in http/); kept for worker/service.py."""

from openhqm.http.health import health_server

__all__ = ["health_server"]
