"""Listing requests for the operator console: a filter, a keyset position and a page.

Pages are newest first (submitted_at desc, correlation_id desc as the tie breaker) and continue
from a position, never an offset, so requests that arrive meanwhile shift nothing. A store narrows
by what it indexes (time, status, session) and examines at most `SCAN_BUDGET` records per page for
the rest (endpoint, handler, idempotency key, id prefix, client): a selective filter may answer a
short or empty page whose `next` says where to look on, instead of reading the whole store.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from openhqm.results.records import RequestRecord

SCAN_BUDGET = 10_000  # records one page (or one filtered count of the Redis store) examines at most

_cursor_encoder = msgspec.msgpack.Encoder()
_cursor_decoder = msgspec.msgpack.Decoder(tuple[float, str])


@dataclass(frozen=True, order=True)
class Position:
    """Where a page ended: the next page holds only what sorts strictly after it (older)."""

    submitted_at: float
    correlation_id: str

    def after(self, record: RequestRecord) -> bool:
        """True when `record` comes after this position in the newest-first order."""
        return (record.submitted_at, record.correlation_id) < (self.submitted_at, self.correlation_id)

    def encode(self) -> str:
        return base64.urlsafe_b64encode(_cursor_encoder.encode((self.submitted_at, self.correlation_id))).decode()

    @classmethod
    def decode(cls, cursor: str) -> Position:
        """ValueError for anything a page did not hand out."""
        try:
            submitted_at, correlation_id = _cursor_decoder.decode(base64.urlsafe_b64decode(cursor.encode()))
        except (binascii.Error, msgspec.DecodeError, msgspec.ValidationError, UnicodeEncodeError) as exc:
            raise ValueError(f"{cursor!r} is not a cursor this API returned") from exc
        return cls(submitted_at, correlation_id)

    @classmethod
    def of(cls, record: RequestRecord) -> Position:
        return cls(record.submitted_at, record.correlation_id)


@dataclass(frozen=True)
class RequestFilter:
    """Which requests a list, count or bulk action covers; None means any. `client_id` is the
    isolation of an authenticated client: its own requests and those of no client, as the status
    route shows them."""

    statuses: frozenset[str] | None = None
    endpoint: str | None = None
    handler: str | None = None
    session_id: str | None = None
    idempotency_key: str | None = None
    id_prefix: str | None = None
    since: float | None = None
    until: float | None = None
    client_id: str | None = None

    @property
    def target(self) -> tuple[str, str] | None:
        """(kind, name) of the endpoint or handler asked for; both given match nothing but both."""
        if self.endpoint is not None:
            return "endpoint", self.endpoint
        if self.handler is not None:
            return "handler", self.handler
        return None

    def in_range(self, record: RequestRecord) -> bool:
        return ((self.since is None or record.submitted_at >= self.since)
                and (self.until is None or record.submitted_at <= self.until))

    def matches(self, record: RequestRecord) -> bool:
        """The whole filter in Python: what the memory store uses, and other stores for what they
        do not index."""
        return (self.in_range(record)
                and (self.statuses is None or record.status in self.statuses)
                and (self.session_id is None or record.session_id == self.session_id)
                and self.matches_unindexed(record))

    def matches_unindexed(self, record: RequestRecord) -> bool:
        return ((self.endpoint is None or (record.target_kind, record.target) == ("endpoint", self.endpoint))
                and (self.handler is None or (record.target_kind, record.target) == ("handler", self.handler))
                and (self.idempotency_key is None or record.idempotency_key == self.idempotency_key)
                and (self.id_prefix is None or record.correlation_id.startswith(self.id_prefix))
                and (self.client_id is None or record.client_id in (None, self.client_id)))


@dataclass
class RequestPage:
    """One page; `next` is where the following page starts (None: nothing more)."""

    records: list[RequestRecord]
    next: Position | None = None


@dataclass
class FilteredCounts:
    """Records per status; `exact` is False when a store stopped after its scan budget."""

    counts: dict[str, int] = field(default_factory=dict)
    exact: bool = True


def newest_first(records: Iterable[RequestRecord]) -> list[RequestRecord]:
    return sorted(records, key=lambda r: (r.submitted_at, r.correlation_id), reverse=True)


@dataclass
class Stream:
    """What one ordered scan found: its matches (at most a page), and where it stopped (None: at
    the end of the store)."""

    matches: list[RequestRecord]
    stop: Position | None


def merge(streams: list[Stream], limit: int) -> RequestPage:
    """One page from several ordered scans (one per status): certain only down to the newest place
    where a scan stopped, as any scan may hold more beyond its own stop."""
    stops = [s.stop for s in streams if s.stop is not None]
    cutoff = max(stops) if stops else None
    found = [r for r in newest_first(r for s in streams for r in s.matches)
             if cutoff is None or not cutoff.after(r)]
    if len(found) >= limit:
        return RequestPage(found[:limit], Position.of(found[limit - 1]))
    return RequestPage(found, cutoff)
