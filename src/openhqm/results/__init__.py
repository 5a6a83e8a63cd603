"""Result stores: request lifecycle, results and the dead-letter index."""

from openhqm.results.base import DeadLetterRecord, RequestRecord, ResultStore
from openhqm.results.registry import create_store

__all__ = ["DeadLetterRecord", "RequestRecord", "ResultStore", "create_store"]
