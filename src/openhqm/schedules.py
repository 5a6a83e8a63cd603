"""Schedules: `schedules.<name>.*` -- when a schedule's ticks fall, and which request each tick is.

A tick's request has a correlation id derived from (schedule, tick time), so the result store's
unique create decides which of several listeners fires it: exactly one create wins (the others get
AlreadyExists), with no new store primitive and no clock agreement beyond the tick times themselves.

`cron` takes five fields (minute hour day month weekday) or six, the sixth being SECONDS, at the end
(croniter's order: `*/10 * * * * 30` is "second 30 of every tenth minute"). `every_s` ticks at
multiples of `every_s` since the Unix epoch, so every process computes the same ticks. Across DST
changes a cron tick keeps its local time; one at a local time that does not exist that night runs at
the jump (croniter's choice), and one at a time that happens twice runs once.
"""

from __future__ import annotations

import base64
import hashlib
import math
from datetime import datetime
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from pydantic import Field, field_validator, model_validator

from openhqm.settings_base import Section


class ScheduleSettings(Section):
    """One schedule. Exactly one of `cron` and `every_s`."""

    cron: str | None = Field(None, description="5 fields, or 6 with seconds as the 6th (last) field")
    every_s: float | None = Field(None, gt=0, description="a tick at every multiple of this since the epoch")
    timezone: str = Field("UTC", description="IANA name the cron fields are read in")
    payload: Any = None
    headers: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, Any] = Field(default_factory=dict, description="as a submit's metadata")
    enabled: bool = True
    misfire: Literal["skip", "run_once"] = Field(
        "skip", description="after downtime: skip missed ticks, or run the latest missed tick once")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown timezone {value!r} (an IANA name such as 'Europe/Berlin')") from None
        return value

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str | None) -> str | None:
        if value is not None and (len(value.split()) not in (5, 6) or not croniter.is_valid(value)):
            raise ValueError(f"invalid cron expression {value!r} (5 fields, or 6 with seconds last)")
        return value

    @model_validator(mode="after")
    def _one_trigger(self) -> ScheduleSettings:
        if (self.cron is None) == (self.every_s is None):
            raise ValueError("exactly one of 'cron' and 'every_s' must be set")
        return self

    def next_tick(self, after: float) -> float:
        """The first tick strictly after `after` (epoch seconds)."""
        if self.every_s is not None:
            return (math.floor(after / self.every_s) + 1) * self.every_s
        zone = ZoneInfo(self.timezone)
        tick = float(croniter(self.cron, datetime.fromtimestamp(after, zone)).get_next(float))
        if self._repeated_wall_time(datetime.fromtimestamp(tick, zone)):
            return self.next_tick(tick)
        return tick

    def _repeated_wall_time(self, local: datetime) -> bool:
        """A fixed-hour tick in the hour a DST change repeats runs once, at its first occurrence (as
        cron does); croniter alone would run 02:30 twice that night. Hourly wildcards run in both."""
        assert self.cron is not None
        hour = self.cron.split()[1]
        return local.fold == 1 and not hour.startswith("*") and local.replace(fold=0).timestamp() != local.timestamp()

    def last_tick(self, at_or_before: float) -> float:
        """The latest tick at or before `at_or_before` (the one a catch-up runs)."""
        if self.every_s is not None:
            return math.floor(at_or_before / self.every_s) * self.every_s
        zone = ZoneInfo(self.timezone)
        tick = float(croniter(self.cron, datetime.fromtimestamp(at_or_before, zone)).get_prev(float))
        if self._repeated_wall_time(datetime.fromtimestamp(tick, zone)):
            return self.last_tick(tick - 1)
        # croniter's get_prev is strictly before; the instant itself counts when it is a tick
        return at_or_before if self.next_tick(tick) == at_or_before else tick


def tick_correlation_id(name: str, tick: float) -> str:
    """The one correlation id of a schedule's tick: every listener derives the same one."""
    digest = hashlib.sha256(f"{name}\0{round(tick * 1000)}".encode()).digest()
    return "sched_" + base64.urlsafe_b64encode(digest[:18]).decode()


__all__ = ["ScheduleSettings", "tick_correlation_id"]
