"""Timestamps on the wire: RFC 3339 in UTC; internally float epoch seconds."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    try:
        moment = datetime.fromtimestamp(epoch_s, UTC)
    except (OverflowError, OSError, ValueError):  # a far-off schedule (huge delay_s): the calendar's edge
        moment = datetime.max.replace(tzinfo=UTC) if epoch_s > 0 else datetime.min.replace(tzinfo=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_rfc3339(value: str) -> float:
    """Epoch seconds; raises ValueError naming the problem (naive times are refused, not guessed)."""
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise ValueError(f"{value!r} is not an RFC 3339 timestamp") from exc
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no time zone offset (use Z or +hh:mm)")
    return parsed.timestamp()
