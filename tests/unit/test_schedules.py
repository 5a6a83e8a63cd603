"""Schedules: validation, tick arithmetic (cron in a timezone, across DST), and misfire at start."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from openhqm.config import load_settings
from openhqm.errors import BackendUnavailable, ConfigError
from openhqm.listener.enqueue import Message
from openhqm.schedules import ScheduleSettings, tick_correlation_id
from openhqm.timefmt import rfc3339
from openhqm.worker.handlers import Job
from tests.harness import Sample, eventually, in_process, settings


def utc(*parts: int) -> float:
    return datetime(*parts, tzinfo=UTC).timestamp()  # type: ignore[misc]


def test_cron_in_new_york_keeps_nine_local_across_the_spring_dst_change() -> None:
    schedule = ScheduleSettings(cron="0 9 * * *", timezone="America/New_York")
    # 2026-03-08 is the change: 09:00 EST is 14:00 UTC the day before, 09:00 EDT is 13:00 UTC that day
    assert schedule.next_tick(utc(2026, 3, 7, 12)) == utc(2026, 3, 7, 14)
    assert schedule.next_tick(utc(2026, 3, 7, 15)) == utc(2026, 3, 8, 13)
    assert schedule.next_tick(utc(2026, 3, 8, 14)) == utc(2026, 3, 9, 13)


def test_cron_in_berlin_keeps_local_time_across_the_autumn_dst_change() -> None:
    schedule = ScheduleSettings(cron="0 12 * * *", timezone="Europe/Berlin")
    assert schedule.next_tick(utc(2026, 10, 24, 12)) == utc(2026, 10, 25, 11)  # CEST -> CET on the 25th
    assert schedule.next_tick(utc(2026, 10, 25, 12)) == utc(2026, 10, 26, 11)
    assert schedule.next_tick(utc(2026, 10, 23, 9)) == utc(2026, 10, 23, 10)


def test_a_fixed_time_in_the_repeated_autumn_hour_runs_once_and_a_skipped_one_at_the_jump() -> None:
    schedule = ScheduleSettings(cron="30 2 * * *", timezone="Europe/Berlin")
    assert schedule.next_tick(utc(2026, 10, 24, 2)) == utc(2026, 10, 25, 0, 30)  # 02:30 CEST, first time
    assert schedule.next_tick(utc(2026, 10, 25, 0, 30)) == utc(2026, 10, 26, 1, 30)  # not 02:30 CET again
    assert schedule.last_tick(utc(2026, 10, 25, 12)) == utc(2026, 10, 25, 0, 30)
    assert schedule.next_tick(utc(2026, 3, 28, 2)) == utc(2026, 3, 29, 1)  # 02:30 never happens: 03:00 CEST
    half_hourly = ScheduleSettings(cron="*/30 * * * *", timezone="Europe/Berlin")
    assert half_hourly.next_tick(utc(2026, 10, 25, 0, 45)) == utc(2026, 10, 25, 1)  # both hours run


def test_a_sixth_cron_field_is_seconds_at_the_end() -> None:
    schedule = ScheduleSettings(cron="*/5 * * * * 30")
    assert schedule.next_tick(utc(2026, 1, 1)) == utc(2026, 1, 1, 0, 0, 30)
    assert schedule.next_tick(utc(2026, 1, 1, 0, 0, 30)) == utc(2026, 1, 1, 0, 5, 30)


def test_every_s_ticks_at_multiples_since_the_epoch_so_every_process_agrees() -> None:
    schedule = ScheduleSettings(every_s=10)
    assert schedule.next_tick(1000.0) == 1010.0
    assert schedule.next_tick(1003.5) == 1010.0
    assert schedule.last_tick(1003.5) == 1000.0
    assert schedule.last_tick(1010.0) == 1010.0


def test_last_tick_of_a_cron_schedule_counts_the_instant_itself() -> None:
    schedule = ScheduleSettings(cron="0 * * * *")
    assert schedule.last_tick(utc(2026, 1, 1, 5)) == utc(2026, 1, 1, 5)
    assert schedule.last_tick(utc(2026, 1, 1, 5, 30)) == utc(2026, 1, 1, 5)


@pytest.mark.parametrize(("section", "message"), [
    ({}, "exactly one of 'cron' and 'every_s'"),
    ({"cron": "* * * * *", "every_s": 1}, "exactly one of 'cron' and 'every_s'"),
    ({"cron": "* * * *"}, "invalid cron expression"),
    ({"cron": "61 * * * *"}, "invalid cron expression"),
    ({"every_s": 0}, "greater than 0"),
    ({"every_s": 1, "timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
    ({"every_s": 1, "misfire": "all"}, "misfire"),
    ({"every_s": 1, "crn": "x"}, "crn"),
])
def test_an_invalid_schedule_is_refused_naming_its_key(section: dict[str, Any], message: str) -> None:
    with pytest.raises((ConfigError, ValidationError)) as caught:
        load_settings(None, {"schedules": {"nightly": section}})
    assert message in str(caught.value)
    assert "nightly" in str(caught.value)


def test_the_tick_correlation_id_depends_on_schedule_and_tick_only() -> None:
    assert tick_correlation_id("a", 10.0) == tick_correlation_id("a", 10.0)
    assert tick_correlation_id("a", 10.0) != tick_correlation_id("a", 11.0)
    assert tick_correlation_id("a", 10.0) != tick_correlation_id("b", 10.0)


def test_schedule_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENHQM_SCHEDULES__TICK__EVERY_S", "1")
    assert load_settings(None, {}).schedules["tick"].every_s == 1


@pytest.mark.parametrize("misfire", ["skip", "run_once"])
async def test_misfire_decides_whether_the_missed_tick_runs_at_start(tmp_path: Path, misfire: str) -> None:
    sample = Sample()
    seen: list[dict[str, Any]] = []

    @sample.app.handler("remember")
    async def remember(job: Job) -> Any:
        seen.append(job.metadata)
        return job.payload

    hourly = {"every_s": 3600, "misfire": misfire, "payload": {"n": 1}, "metadata": {"handler": "remember"}}
    async with in_process(sample.app, settings(tmp_path, schedules={"hourly": hourly})) as hq:
        scheduler = hq.runtime.bridge.scheduler  # type: ignore[union-attr]
        await eventually(lambda: scheduler.started)
        state = scheduler.states["hourly"]
        assert state.next_run_at is not None
        if misfire == "skip":
            assert state.last_run_at is None
            return
        missed = state.settings.last_tick(state.next_run_at - 1)
        assert state.last_correlation_id == tick_correlation_id("hourly", missed)
        await eventually(lambda: len(seen) == 1)
        assert seen[0]["schedule"] == "hourly"
        assert seen[0]["scheduled_for"] == rfc3339(missed)
        status = (await hq.client.get(f"/api/v1/status/{state.last_correlation_id}")).json()
        assert status["status"] == "COMPLETED"


async def test_a_tick_the_broker_refused_is_tried_again_with_the_same_correlation_id(tmp_path: Path) -> None:
    sample = Sample()
    refused: list[str] = []
    every_second = {"every_s": 1, "metadata": {"handler": "record"}}
    async with in_process(sample.app, settings(tmp_path, schedules={"tick": every_second})) as hq:
        assert hq.runtime.bridge is not None
        writes = hq.runtime.bridge.intake.writes  # where a submit writes to the queue (listener/enqueue.py)
        put = writes.put

        async def refuse_first(record: Any, message: Message, **options: Any) -> Any:
            if not refused:  # a broker outage, staged at the queue boundary
                refused.append(message.message_id)
                raise BackendUnavailable("broker down")
            return await put(record, message, **options)

        writes.put = refuse_first  # type: ignore[method-assign]
        await eventually(lambda: bool(refused) and sample.ran(refused[0]) == 1)
