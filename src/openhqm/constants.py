"""Names and limits that several modules share, in one place."""

from __future__ import annotations

from enum import StrEnum

ENV_PREFIX = "OPENHQM_"
DEFAULT_REQUEST_QUEUE = "openhqm-requests"
DEFAULT_RESPONSE_QUEUE = "openhqm-responses"
DEAD_LETTER_SUFFIX = ".dlq"
ENVELOPE_VERSION = 1


class Status(StrEnum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    PROCESSING = "PROCESSING"
    RETRY = "RETRY"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    EXPIRED = "EXPIRED"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.COMPLETED, Status.FAILED, Status.CANCELLED, Status.EXPIRED})

PRIORITY_NAMES = {"LOW": 1, "NORMAL": 5, "HIGH": 10, "URGENT": 15}
DEFAULT_PRIORITY = 5
MAX_PRIORITY = 15


def dead_letter_queue(queue: str) -> str:
    return queue + DEAD_LETTER_SUFFIX
