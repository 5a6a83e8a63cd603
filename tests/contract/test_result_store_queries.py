"""The console's store queries (results/queries.py), run against every store target: keyset pages,
filters, counts, the envelope kept beside the record, and the attempt history on it."""

from __future__ import annotations

import time
import uuid

import pytest

from openhqm.constants import Status
from openhqm.envelope import AttemptEntry
from openhqm.results import ResultStore, postgres_queries, redis_queries, sqlite_queries
from openhqm.results.base import Position, RequestFilter, RequestRecord
from tests.records import new_record

EVERYTHING = RequestFilter()


async def fill(store: ResultStore, count: int, start: float, **fields: object) -> list[RequestRecord]:
    """`count` records submitted one millisecond apart from `start` (oldest first)."""
    made = []
    for i in range(count):
        record = new_record(submitted_at=start + i / 1000, **fields)
        await store.create(record)
        made.append(record)
    return made


async def every_page(store: ResultStore, where: RequestFilter, limit: int) -> list[str]:
    ids: list[str] = []
    after: Position | None = None
    for _ in range(1000):
        page = await store.query(where, after, limit)
        ids += [r.correlation_id for r in page.records]
        if page.next is None:
            return ids
        after = page.next
    raise AssertionError("paging did not end")


def newest_first(records: list[RequestRecord]) -> list[str]:
    return [r.correlation_id for r in sorted(records, key=lambda r: (r.submitted_at, r.correlation_id),
                                             reverse=True)]


async def test_pages_are_newest_first_without_duplicates_or_gaps_while_requests_arrive(store: ResultStore) -> None:
    start = time.time() - 100
    old = await fill(store, 7, start)
    first = await store.query(EVERYTHING, None, 3)
    assert [r.correlation_id for r in first.records] == newest_first(old)[:3] and first.next is not None
    await fill(store, 4, start + 50)  # newer than every page: shows on a fresh first page only
    rest = await every_page_from(store, first.next, 3)
    assert [r.correlation_id for r in first.records] + rest == newest_first(old)


async def every_page_from(store: ResultStore, after: Position, limit: int) -> list[str]:
    ids: list[str] = []
    current: Position | None = after
    while current is not None:
        page = await store.query(EVERYTHING, current, limit)
        ids += [r.correlation_id for r in page.records]
        current = page.next
    return ids


async def test_requests_submitted_at_the_same_moment_page_by_id(store: ResultStore) -> None:
    moment = time.time() - 10
    same = [new_record(submitted_at=moment) for _ in range(5)]
    for record in same:
        await store.create(record)
    assert await every_page(store, EVERYTHING, 2) == sorted((r.correlation_id for r in same), reverse=True)


async def test_status_filters_and_counts_agree(store: ResultStore) -> None:
    records = await fill(store, 6, time.time() - 50)
    for record in records[:2]:
        await store.transition(record.correlation_id, Status.COMPLETED)
    await store.transition(records[2].correlation_id, Status.FAILED)
    done = frozenset({"COMPLETED"})
    assert sorted(await every_page(store, RequestFilter(statuses=done), 1)) == sorted(
        r.correlation_id for r in records[:2])
    ended = await every_page(store, RequestFilter(statuses=frozenset({"COMPLETED", "FAILED"})), 2)
    assert ended == newest_first(records[:3])
    counts = await store.count_matching(EVERYTHING)
    assert counts.counts == {"COMPLETED": 2, "FAILED": 1, "PENDING": 3} and counts.exact
    assert (await store.count_matching(RequestFilter(statuses=done))).counts == {"COMPLETED": 2}


async def test_target_session_key_prefix_and_time_filters_select_exactly(store: ResultStore) -> None:
    start = time.time() - 80
    plain = await fill(store, 3, start)
    handled = await fill(store, 2, start + 1, target="resize", target_kind="handler", session_id="s1")
    forwarded = await fill(store, 2, start + 2, target="resize", target_kind="endpoint", idempotency_key="k1")
    tagged = RequestRecord(correlation_id="zz-" + uuid.uuid4().hex, submitted_at=start + 3)
    await store.create(tagged)
    assert await every_page(store, RequestFilter(handler="resize"), 10) == newest_first(handled)
    assert await every_page(store, RequestFilter(endpoint="resize"), 1) == newest_first(forwarded)
    assert await every_page(store, RequestFilter(session_id="s1"), 10) == newest_first(handled)
    assert await every_page(store, RequestFilter(idempotency_key="k1"), 10) == newest_first(forwarded)
    assert await every_page(store, RequestFilter(id_prefix="zz-"), 10) == [tagged.correlation_id]
    window = RequestFilter(since=start + 0.5, until=start + 1.5)
    assert await every_page(store, window, 10) == newest_first(handled)
    assert (await store.count_matching(RequestFilter(endpoint="resize"))).counts == {"PENDING": 2}
    assert len(await every_page(store, EVERYTHING, 4)) == len(plain) + 5


async def test_a_client_sees_its_own_requests_and_those_of_no_client(store: ResultStore) -> None:
    start = time.time() - 30
    mine = await fill(store, 2, start, client_id="alice")
    theirs = await fill(store, 2, start + 1, client_id="bob")
    nobody = await fill(store, 1, start + 2)
    alice = RequestFilter(client_id="alice")
    assert await every_page(store, alice, 2) == newest_first(mine + nobody)
    assert (await store.count_matching(alice)).counts == {"PENDING": 3}
    assert not {r.correlation_id for r in theirs} & set(await every_page(store, alice, 10))


async def test_envelope_is_kept_beside_the_record_until_it_is_deleted(store: ResultStore) -> None:
    record, bare = new_record(), new_record()
    await store.create(record, b"\x81\xa4body\xa5hello")
    await store.create(bare)
    assert await store.get_envelope(record.correlation_id) == b"\x81\xa4body\xa5hello"
    assert await store.get_envelope(bare.correlation_id) is None
    await store.transition(record.correlation_id, Status.COMPLETED, result={"ok": True})
    assert await store.get_envelope(record.correlation_id) == b"\x81\xa4body\xa5hello"
    await store.delete(record.correlation_id)
    assert await store.get_envelope(record.correlation_id) is None


async def test_attempt_history_is_written_by_the_transition_that_ends_an_attempt(store: ResultStore) -> None:
    record = new_record(target="echo", target_kind="endpoint", priority=9)
    await store.create(record)
    claimed = await store.transition(record.correlation_id, Status.PROCESSING, attempts=1, worker_id="w1",
                                     started_at=1.0)
    assert claimed is not None and claimed.attempt_history == [] and claimed.worker_id == "w1"
    first = AttemptEntry(attempt=1, started_at=1.0, finished_at=2.0, worker_id="w1", status_code=503,
                         error="503", duration_ms=1000.0)
    retried = await store.transition(record.correlation_id, Status.RETRY, attempt_history=[first])
    again = await store.transition(record.correlation_id, Status.PROCESSING, attempts=2)
    assert retried is not None and again is not None and again.attempt_history == [first]
    got = await store.get(record.correlation_id)
    assert got is not None and got.attempt_history == [first] and got.priority == 9
    assert got.target_kind == "endpoint"


async def test_a_filter_past_its_scan_budget_pages_on_without_losing_or_repeating(
        store: ResultStore, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in (sqlite_queries, postgres_queries, redis_queries):
        monkeypatch.setattr(module, "SCAN_BUDGET", 3)
    start = time.time() - 60
    made = []
    for i in range(10):
        fields: dict[str, object] = {"target": "rare", "target_kind": "handler"} if i in (1, 8) else {}
        made.append(new_record(submitted_at=start + i, **fields))
        await store.create(made[-1])
    same_moment = [new_record(submitted_at=start + 4.5, target="rare", target_kind="handler") for _ in range(4)]
    for record in same_moment:
        await store.create(record)
    wanted = newest_first([made[1], made[8], *same_moment])
    assert await every_page(store, RequestFilter(handler="rare"), 2) == wanted
    assert await every_page(store, RequestFilter(handler="rare", statuses=frozenset({"PENDING"})), 1) == wanted
