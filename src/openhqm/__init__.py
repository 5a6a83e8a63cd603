"""OpenHQM: a durable bridge between HTTP and message queues."""

from openhqm.app import OpenHQM
from openhqm.client import AsyncClient, Client
from openhqm.config import Settings, load_settings
from openhqm.errors import DeadLetter, OpenHQMError, Retry
from openhqm.worker.handlers import Job
from openhqm.worker.middleware import Middleware

__all__ = ["AsyncClient", "Client", "DeadLetter", "Job", "Middleware", "OpenHQM", "OpenHQMError", "Retry",
           "Settings", "load_settings"]
