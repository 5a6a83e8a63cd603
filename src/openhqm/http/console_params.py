"""Query and body values of the console's routes turned into filters, with a 422 naming the
parameter for anything else."""

from __future__ import annotations

import math
from typing import Any

from openhqm.constants import Status
from openhqm.errors import RequestRejected
from openhqm.listener.dead_letters import DeadLetterFilter
from openhqm.results.base import Position, RequestFilter
from openhqm.timefmt import parse_rfc3339


def statuses(values: list[str] | str | None) -> frozenset[str] | None:
    """`status` given several times or comma-separated; None for any."""
    if values is None:
        return None
    raw = [values] if isinstance(values, str) else values
    names = [name.strip() for value in raw for name in value.split(",") if name.strip()]
    unknown = sorted({name for name in names if name not in Status.__members__})
    if unknown:
        raise RequestRejected(f"status: unknown value(s) {', '.join(map(repr, unknown))}; known: "
                              f"{', '.join(Status.__members__)}", status=422)
    return frozenset(names) or None


def moment(value: str | float | None, name: str) -> float | None:
    """RFC 3339 or epoch seconds."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            try:
                return parse_rfc3339(value)
            except ValueError as exc:
                raise RequestRejected(f"{name}: {exc}; give RFC 3339 or epoch seconds", status=422) from None
    else:
        number = float(value)
    if not math.isfinite(number):
        raise RequestRejected(f"{name}: {value!r} is not a time; give RFC 3339 or epoch seconds", status=422)
    return number


def cursor(value: str | None) -> Position | None:
    if not value:
        return None
    try:
        return Position.decode(value)
    except ValueError as exc:
        raise RequestRejected(f"cursor: {exc}", status=422) from None


def request_filter(values: dict[str, Any], client_id: str | None) -> RequestFilter:
    """The list's filters from query or body values (the same keys)."""
    return RequestFilter(
        statuses=statuses(values.get("status")), endpoint=values.get("endpoint") or None,
        handler=values.get("handler") or None, session_id=values.get("session_id") or None,
        idempotency_key=values.get("idempotency_key") or None, id_prefix=values.get("id_prefix") or None,
        since=moment(values.get("since"), "since"), until=moment(values.get("until"), "until"), client_id=client_id)


def dead_letter_filter(values: dict[str, Any]) -> DeadLetterFilter:
    return DeadLetterFilter(endpoint=values.get("endpoint") or None, handler=values.get("handler") or None,
                            reason=values.get("reason") or None, since=moment(values.get("since"), "since"),
                            until=moment(values.get("until"), "until"))
