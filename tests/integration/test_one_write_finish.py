"""The finish of a request in `openhqm serve` where the SQLite queue and store share their file
(listener/settle.py): its final state, its dead letter and its message's ack are one commit.

Each test watches every commit of the shared connection (`Commits`) and asserts on the states that
became visible: with two writes, one commit makes the record final while its message is still queued
(a crash there runs the request again), and a dead letter can be committed before the record fails."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from openhqm.constants import DEFAULT_REQUEST_QUEUE as QUEUE
from openhqm.sqlite_db import SQLiteDB
from tests.harness import InProcess, Sample, eventually, in_process, settings

Seen = tuple[str | None, int, int]  # the record's status, its queue messages, dead letters


class Commits:
    """After every batch of the shared connection: what one request looks like in the file."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.correlation_id: str | None = None
        self.seen: list[Seen] = []
        self.poison: str | None = None  # a statement whose batch fails, once (an I/O error in that commit)
        run_batch = SQLiteDB._run_batch

        def watched(conn: sqlite3.Connection, batch: list[Any]) -> None:
            run_batch(_Poisoned(conn, self) if self.poison else conn, batch)
            if self.correlation_id is not None:
                self.seen.append(self.look(conn, self.correlation_id))

        monkeypatch.setattr(SQLiteDB, "_run_batch", staticmethod(watched))

    @staticmethod
    def look(conn: sqlite3.Connection, correlation_id: str) -> Seen:
        row = conn.execute("SELECT status FROM requests WHERE correlation_id = ?", (correlation_id,)).fetchone()
        messages = conn.execute("SELECT COUNT(*) FROM queue_messages WHERE queue = ?", (QUEUE,)).fetchone()[0]
        dead = conn.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0]
        return (row[0] if row else None, messages, dead)

    def states(self) -> list[Seen]:
        """The distinct states in the order they were committed."""
        return [seen for n, seen in enumerate(self.seen) if n == 0 or self.seen[n - 1] != seen]


class _Poisoned:
    """The connection, except that the first statement starting with `commits.poison` fails as a disk would."""

    def __init__(self, conn: sqlite3.Connection, commits: Commits) -> None:
        self._conn = conn
        self._commits = commits

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        poison = self._commits.poison
        if poison is not None and sql.startswith(poison):
            self._commits.poison = None
            raise sqlite3.OperationalError("disk I/O error")
        return self._conn.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> Iterator[Commits]:
    yield Commits(monkeypatch)


@asynccontextmanager
async def serving(sample: Sample, tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(sample.app, settings(tmp_path)) as hq:
        pool = hq.runtime.pool
        assert pool is not None
        await eventually(lambda: pool.taking)  # so a submit finds its slot free (eager dispatch)
        yield hq


async def started(hq: InProcess, sample: Sample, commits: Commits, name: str) -> str:
    body = await hq.accepted({"name": name, "hold": True}, handler="trace")
    commits.correlation_id = str(body["correlation_id"])
    await asyncio.wait_for(sample.event("started", name).wait(), 10)
    return commits.correlation_id


async def test_the_commit_that_makes_the_record_final_removes_its_message(
    commits: Commits, tmp_path: Path
) -> None:
    sample = Sample()
    async with serving(sample, tmp_path) as hq:
        cid = await started(hq, sample, commits, "one")
        sample.event("release", "one").set()
        assert (await hq.result(cid))["status"] == "COMPLETED"
        await eventually(lambda: commits.seen and commits.seen[-1] == ("COMPLETED", 0, 0))
    assert commits.states() == [("PROCESSING", 1, 0), ("COMPLETED", 0, 0)]


async def test_a_dead_letter_is_committed_with_the_failed_record_and_the_ack(
    commits: Commits, tmp_path: Path
) -> None:
    sample = Sample()
    async with serving(sample, tmp_path) as hq:
        body = await hq.accepted({"name": "hopeless"}, handler="give_up")
        commits.correlation_id = cid = str(body["correlation_id"])
        assert (await hq.result(cid))["status"] == "FAILED"
        await eventually(lambda: commits.seen and commits.seen[-1] == ("FAILED", 0, 1))
    # No commit shows the dead letter beside a running record, nor a failed record with its message.
    assert set(commits.states()) <= {("PROCESSING", 1, 0), ("FAILED", 0, 1)}


async def test_a_finish_whose_commit_fails_leaves_the_request_to_run_again(commits: Commits, tmp_path: Path) -> None:
    sample = Sample()
    async with serving(sample, tmp_path) as hq:
        cid = await started(hq, sample, commits, "twice")
        commits.poison = "DELETE FROM queue_messages"  # the ack's statement: its commit fails
        sample.event("release", "twice").set()
        result = await hq.result(cid)
        assert (result["status"], result["attempts"]) == ("COMPLETED", 2)
        await eventually(lambda: commits.seen and commits.seen[-1] == ("COMPLETED", 0, 0))
    assert commits.poison is None  # the failure did happen
    assert sample.ran(cid) == 2  # given back unsettled, so it ran again at once (at-least-once)
    assert "COMPLETED" not in [status for status, messages, _ in commits.seen if messages]
