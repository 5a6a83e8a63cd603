"""One attempt as it runs, and the history entry it leaves when it ends.

The history travels on the record: the claim returns what earlier attempts left, and the write
that ends this attempt (the retry's transition, or the reply) carries the list with this attempt
appended, so keeping it costs no write of its own.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from openhqm.envelope import AttemptEntry
from openhqm.redact import mask_secrets
from openhqm.worker.identity import this_process

MAX_ATTEMPTS_KEPT = 20  # per request: the latest attempts' entries
MAX_ERROR_CHARS = 500  # of each entry's error (the dead letter keeps the whole error and traceback)


@dataclass
class Run:
    attempt: int
    started_at: float
    history: list[AttemptEntry] = field(default_factory=list)

    def ended(self, *, status_code: int | None = None, error: str | None = None,
              secrets: list[str] | None = None) -> list[AttemptEntry]:
        """The history with this attempt appended, the latest MAX_ATTEMPTS_KEPT kept."""
        now = time.time()
        if error is not None:
            error = mask_secrets(error, secrets or [])[:MAX_ERROR_CHARS]
        entry = AttemptEntry(attempt=self.attempt, started_at=self.started_at, finished_at=now,
                             worker_id=this_process().worker_id, status_code=status_code, error=error,
                             duration_ms=round((now - self.started_at) * 1000, 3))
        return [*self.history, entry][-MAX_ATTEMPTS_KEPT:]


def status_code_of(result: Any) -> int | None:
    """The backend's HTTP status in a forward's result (None for a handler's)."""
    code = result.get("status_code") if isinstance(result, dict) else None
    return code if isinstance(code, int) else None
