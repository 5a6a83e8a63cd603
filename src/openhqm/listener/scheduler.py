"""The scheduler: a listener task that submits each schedule's request at its tick.

Every listener runs it; the tick's derived correlation id (schedules.tick_correlation_id) makes the
store's unique create the arbiter, so a tick becomes exactly one request however many run. A listener
that loses the race still records the tick as its schedule's last run: every replica shows the same.
It sleeps until the earliest next tick (or until a schedule changes), never polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Any

import msgspec

from openhqm.envelope import Envelope, new_id
from openhqm.errors import AlreadyExists, BackendUnavailable, Conflict, NotFound, OpenHQMError
from openhqm.listener.intake import Intake, json_body
from openhqm.logging import get_logger
from openhqm.routing import Routing
from openhqm.schedules import ScheduleSettings, tick_correlation_id
from openhqm.timefmt import rfc3339

log = get_logger("openhqm.scheduler")

# A tick later than this when its turn comes counts as missed (downtime, a suspended host) and is
# handled by the schedule's `misfire`, instead of firing every tick of the gap in a burst.
MISFIRE_GRACE_S = 30.0
# How soon a listener sees a schedule that another listener's API changed (PUT, DELETE, pause).
SYNC_INTERVAL_S = 5.0
# A tick the broker refused is tried again this often until it is MISFIRE_GRACE_S late.
REFUSED_RETRY_S = 1.0


@dataclass
class ScheduleState:
    name: str
    settings: ScheduleSettings
    source: str  # "config" or "api"
    paused: bool = False
    next_run_at: float | None = None
    retry_at: float | None = None  # the broker refused next_run_at's tick: try again then
    last_run_at: float | None = None
    last_correlation_id: str | None = None

    @property
    def active(self) -> bool:
        return self.settings.enabled and not self.paused

    @property
    def due_at(self) -> float | None:
        if not self.active or self.next_run_at is None:
            return None
        return max(self.next_run_at, self.retry_at or 0.0)

    def view(self) -> dict[str, Any]:
        """The JSON shape of GET /api/v1/schedules."""
        return {"name": self.name, "source": self.source, "paused": self.paused,
                **self.settings.model_dump(mode="json"),
                "next_run_at": rfc3339(self.next_run_at) if self.active else None,
                "last_run_at": rfc3339(self.last_run_at), "last_correlation_id": self.last_correlation_id}


class Scheduler:
    def __init__(self, intake: Intake, router: Routing, schedules: dict[str, ScheduleSettings]) -> None:
        self.intake = intake
        self.router = router
        now = time.time()
        self.states = {name: ScheduleState(name, s, "config", next_run_at=s.next_tick(now))
                       for name, s in schedules.items()}
        self._changed = asyncio.Event()
        self.started = False  # set once the start's ticks (and catch-ups) are settled
        self._local_changes = 0  # API calls in this process: a sync that raced one is dropped

    # changes (the API's)
    def get(self, name: str) -> ScheduleState:
        state = self.states.get(name)
        if state is None:
            raise NotFound(f"no schedule {name!r}")
        return state

    async def put(self, name: str, settings: ScheduleSettings) -> ScheduleState:
        """Create or replace an API schedule; its target is checked now, not at its first tick."""
        old = self.states.get(name)
        if old is not None and old.source == "config":
            raise Conflict(f"schedule {name!r} is defined in the configuration")
        self.envelope(name, settings, time.time(), "check")
        paused = old.paused if old else False
        await self._store(name, _stored(settings, paused))
        return self._apply(name, settings, paused)

    async def remove(self, name: str) -> ScheduleState:
        state = self.get(name)
        if state.source == "config":
            raise Conflict(f"schedule {name!r} is defined in the configuration; remove it there")
        await self._store(name, None)
        self.states.pop(name, None)
        self._changed.set()
        return state

    async def set_paused(self, name: str, paused: bool) -> ScheduleState:
        state = self.get(name)
        api_settings = state.settings if state.source == "api" else None
        await self._store(name, _stored(api_settings, paused))
        return self._apply(name, api_settings, paused)

    async def _store(self, name: str, data: bytes | None) -> None:
        # counted before and after: a sync whose read overlaps the write in any way is dropped
        self._local_changes += 1
        await self.intake.store.put_schedule(name, data)
        self._local_changes += 1

    async def sync(self) -> None:
        """Take the API's schedules and every pause from the store: what other listeners changed."""
        changes = self._local_changes
        stored = {name: msgspec.json.decode(data) for name, data in (await self.intake.store.schedules()).items()}
        if changes != self._local_changes:
            return  # an API call here changed a schedule while reading: this read may predate it
        for name in [n for n, s in self.states.items() if s.source == "api" and n not in stored]:
            del self.states[name]
        for name, entry in stored.items():
            settings = None
            if entry.get("settings") is not None:
                try:
                    settings = ScheduleSettings.model_validate(entry["settings"])
                except ValueError as exc:  # written by a newer version, say: keep the rest running
                    log.warning("a stored schedule is invalid; skipped", schedule=name, error=str(exc))
                    continue
            if settings is not None or name in self.states:
                self._apply(name, settings, bool(entry.get("paused")))

    def _apply(self, name: str, api_settings: ScheduleSettings | None, paused: bool) -> ScheduleState:
        """Bring one schedule to the given state (api_settings None: a configured one's pause)."""
        old = self.states.get(name)
        state = old
        if api_settings is not None and (old is None or old.source == "api") and (
                old is None or old.settings != api_settings):
            state = ScheduleState(name, api_settings, "api", next_run_at=api_settings.next_tick(time.time()))
            if old is not None:
                state.last_run_at, state.last_correlation_id = old.last_run_at, old.last_correlation_id
            self.states[name] = state
        assert state is not None
        if state.paused and not paused:
            state.next_run_at = state.settings.next_tick(time.time())  # no catch-up after a pause
        state.paused = paused
        self._changed.set()
        return state

    async def run_now(self, name: str) -> str:
        """Fire a schedule outside its ticks (its own correlation id): the request's id."""
        state = self.get(name)
        correlation_id = new_id()
        await self._submit(state, time.time(), correlation_id)
        return correlation_id

    # the task
    async def run_forever(self) -> None:
        await self._sync_logged()
        now = time.time()
        for state in list(self.states.values()):
            state.next_run_at = state.settings.next_tick(now)
            await self._catch_up(state, now)
        self.started = True
        next_sync = time.monotonic() + SYNC_INTERVAL_S
        while True:
            self._changed.clear()
            if time.monotonic() >= next_sync:
                await self._sync_logged()
                next_sync = time.monotonic() + SYNC_INTERVAL_S
            now = time.time()
            for state in list(self.states.values()):
                due_at = state.due_at
                if due_at is not None and due_at <= now:
                    await self._fire_due(state, now)
            upcoming = [due for due in (s.due_at for s in self.states.values()) if due is not None]
            delay = max(0.0, min([*upcoming, time.time() + next_sync - time.monotonic()]) - time.time())
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancel that lands as
            # the event is set (a resume just before shutdown), and the task would never stop.
            with contextlib.suppress(TimeoutError):  # the next tick is due
                async with asyncio.timeout(delay):
                    await self._changed.wait()

    async def _sync_logged(self) -> None:
        try:
            await self.sync()
        except Exception as exc:  # the store is down: run what is known, try again at the next sync
            log.warning("schedules could not be read from the result store", error=str(exc))

    async def _fire_due(self, state: ScheduleState, now: float) -> None:
        tick = state.next_run_at
        assert tick is not None
        state.retry_at = None
        if now - tick > MISFIRE_GRACE_S:  # a gap: the host slept, the loop was starved, the broker was down
            state.next_run_at = state.settings.next_tick(now)
            await self._catch_up(state, now)
            return
        if await self._fire_tick(state, tick):
            state.next_run_at = state.settings.next_tick(tick)
        else:
            state.retry_at = time.time() + REFUSED_RETRY_S

    async def _catch_up(self, state: ScheduleState, now: float) -> None:
        """After a start or a gap: the latest tick is the last run when some listener fired it;
        else `misfire: run_once` fires it now (`skip` leaves it)."""
        tick = state.settings.last_tick(now)
        correlation_id = tick_correlation_id(state.name, tick)
        if await self.intake.store.get(correlation_id) is not None:
            state.last_run_at, state.last_correlation_id = tick, correlation_id
        elif state.active and state.settings.misfire == "run_once":
            await self._fire_tick(state, tick)

    async def _fire_tick(self, state: ScheduleState, tick: float) -> bool:
        """False when the broker refused the tick's request (worth another try); a tick whose
        request cannot be built (its handler is gone) is logged and counts as settled."""
        correlation_id = tick_correlation_id(state.name, tick)
        try:
            await self._submit(state, tick, correlation_id)
        except AlreadyExists:
            pass  # another listener fired this tick
        except OpenHQMError as exc:
            log.warning("a schedule's tick was not submitted", schedule=state.name, scheduled_for=rfc3339(tick),
                        error=str(exc))
            return not isinstance(exc, BackendUnavailable)
        state.last_run_at, state.last_correlation_id = tick, correlation_id
        return True

    async def _submit(self, state: ScheduleState, tick: float, correlation_id: str) -> None:
        await self.intake.submit(self.envelope(state.name, state.settings, tick, correlation_id))
        state.last_run_at, state.last_correlation_id = tick, correlation_id
        log.info("schedule fired", schedule=state.name, scheduled_for=rfc3339(tick), correlation_id=correlation_id)

    def envelope(self, name: str, settings: ScheduleSettings, tick: float, correlation_id: str) -> Envelope:
        """The ordinary request a tick is: routed like a submit, marked with its schedule and tick."""
        metadata = dict(settings.metadata)
        endpoint, handler = self.router.choose(metadata.pop("endpoint", None), metadata.pop("handler", None),
                                               payload=settings.payload, headers=settings.headers)
        priority, timeout_s = metadata.pop("priority", None), metadata.pop("timeout_s", None)
        metadata.update(schedule=name, scheduled_for=rfc3339(tick))
        envelope = Envelope(id=correlation_id, correlation_id=correlation_id, body=json_body(settings.payload),
                            content_type="application/json", headers=dict(settings.headers), handler=handler,
                            endpoint=endpoint, timeout_s=timeout_s, metadata=metadata)
        if isinstance(priority, int):
            envelope.priority = priority
        return envelope


def _stored(api_settings: ScheduleSettings | None, paused: bool) -> bytes:
    """A schedule's entry in the store: the API's settings (none for a configured one) and its pause."""
    settings = api_settings.model_dump(mode="json") if api_settings is not None else None
    return msgspec.json.encode({"settings": settings, "paused": paused})
