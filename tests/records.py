"""Small builders shared by the result-store tests."""

from __future__ import annotations

import uuid

from openhqm.results import RequestRecord


def new_record(**fields: object) -> RequestRecord:
    """A PENDING record with a fresh correlation id; `fields` override any other field."""
    return RequestRecord(correlation_id=uuid.uuid4().hex, **fields)  # type: ignore[arg-type]
