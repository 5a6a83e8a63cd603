"""The console's pure parts: cursors, filters from query values, merged pages, attempt history JSON."""

from __future__ import annotations

import pytest

from openhqm.envelope import AttemptEntry
from openhqm.errors import RequestRejected
from openhqm.http import console_params as params
from openhqm.results.base import Position, RequestFilter, RequestRecord
from openhqm.results.queries import Stream, merge
from openhqm.views import attempt_history_json, item_json


def test_a_cursor_round_trips_and_anything_else_is_refused_naming_it() -> None:
    position = Position(1765000000.123456, "abc_-09")
    assert Position.decode(position.encode()) == position
    for bad in ("not-a-cursor", "AAAA", "%%%"):
        with pytest.raises(RequestRejected, match="cursor"):
            params.cursor(bad)


def test_status_values_are_repeated_or_comma_separated_and_unknown_ones_named() -> None:
    assert params.statuses(["PENDING,FAILED", "RETRY"]) == {"PENDING", "FAILED", "RETRY"}
    assert params.statuses("") is None
    with pytest.raises(RequestRejected, match=r"status: unknown value.*'DONE'"):
        params.statuses("COMPLETED,DONE")


def test_times_are_rfc3339_or_epoch_seconds() -> None:
    assert params.moment("1700000000.5", "since") == 1700000000.5
    assert params.moment("2023-11-14T22:13:20Z", "since") == 1700000000.0
    for bad in ("yesterday", "inf", "2023-11-14T22:13:20"):
        with pytest.raises(RequestRejected, match="until"):
            params.moment(bad, "until")


def test_a_client_filter_covers_its_own_requests_and_those_of_no_client() -> None:
    where = RequestFilter(client_id="a", handler="h")
    mine = RequestRecord(correlation_id="1", client_id="a", target="h", target_kind="handler")
    assert where.matches(mine) and where.matches(RequestRecord(correlation_id="2", target="h", target_kind="handler"))
    assert not where.matches(RequestRecord(correlation_id="3", client_id="b", target="h", target_kind="handler"))
    assert not where.matches(RequestRecord(correlation_id="4", client_id="a", target="h", target_kind="endpoint"))


def test_merged_pages_are_certain_only_down_to_the_newest_stop() -> None:
    def rec(t: float, cid: str) -> RequestRecord:
        return RequestRecord(correlation_id=cid, submitted_at=t)

    failed = Stream([rec(9, "a"), rec(5, "b")], stop=None)
    retry = Stream([rec(8, "c")], stop=Position(6, "x"))  # its scan stopped at 6: below that is unknown
    page = merge([failed, retry], limit=10)
    assert [r.correlation_id for r in page.records] == ["a", "c"] and page.next == Position(6, "x")
    full = merge([failed, Stream([rec(8, "c")], stop=None)], limit=2)
    assert [r.correlation_id for r in full.records] == ["a", "c"] and full.next == Position(8, "c")


def test_attempt_history_shows_a_running_attempt_without_finished_at() -> None:
    first = AttemptEntry(attempt=1, started_at=1.0, finished_at=2.0, worker_id="w1", status_code=503)
    record = RequestRecord(correlation_id="r", status="PROCESSING", attempts=2, attempt_history=[first],
                           worker_id="w2", started_at=3.0, target="api", target_kind="endpoint")
    history = attempt_history_json(record)
    assert [(a["attempt"], a["worker_id"], a["finished_at"] is None) for a in history] == [
        (1, "w1", False), (2, "w2", True)]
    assert item_json(record)["endpoint"] == "api" and item_json(record)["handler"] is None
