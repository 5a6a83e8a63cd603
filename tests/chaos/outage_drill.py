"""The outage drill: a real `openhqm serve` under a steady submit load while its broker (or result
store) is killed with SIGKILL twice and started again, observed from outside as a client would.

What it records, for the test to assert and print: every submit (status, Retry-After, how long it
took), reads of a known id during the outage, /ready's answers over time, the ids accepted, and how
often the handler ran each (tests/e2e/sample_app.py `record` appends to a run log).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.chaos.own_brokers import OwnBroker
from tests.processes import OpenHQMProcess
from tests.waiting import wait_until

CLIENTS = 4
SUBMIT_INTERVAL_S = 0.02  # per client: a steady load that leaves the 2 shared cores to the bridge
MAX_SUBMITS = 12_000  # the load's bound, whatever else happens
READY_POLL_S = 0.05  # /ready offers no event to await: polled, as Kubernetes does
ACCEPTED_BETWEEN_OUTAGES = 20
OUTAGE_SUBMITS = 5  # submits answered during each outage before the broker comes back
# Each outage lasts at least this: long enough for reconnect loops to back off a few times, so the
# recovery bound is tested against a backed-off client, as after a real outage, not a first retry.
OUTAGE_MIN_S = 4.0
STEP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 10.0  # far above every bound asserted: a hang shows up as a measured time


@dataclass(frozen=True)
class Answer:
    started: float
    took_s: float
    status: int  # 0: no HTTP answer at all
    retry_after: str | None = None


@dataclass
class Outage:
    killed_at: float
    restarted_at: float = 0.0  # when the broker answered on its port again
    ready_down_after_s: float | None = None
    ready_up_after_s: float | None = None


@dataclass
class Drill:
    url: str
    run_log: Path
    submits: list[Answer] = field(default_factory=list)
    reads: list[Answer] = field(default_factory=list)
    readiness: list[tuple[float, int]] = field(default_factory=list)  # (answered at, status)
    accepted: list[str] = field(default_factory=list)
    outages: list[Outage] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def during_outages(self, answers: list[Answer]) -> list[Answer]:
        return [a for a in answers for o in self.outages if o.killed_at <= a.started < o.restarted_at]

    def runs(self) -> collections.Counter[str]:
        return collections.Counter(self.run_log.read_text().split()) if self.run_log.exists() else collections.Counter()

    def summary(self, name: str, statuses: dict[str, str]) -> str:
        refused = [a for a in self.during_outages(self.submits) if a.status != 202]
        runs = self.runs()
        return (f"{name}: accepted={len(self.accepted)} final={dict(collections.Counter(statuses.values()))} "
                f"duplicates={sum(n - 1 for n in runs.values() if n > 1)} "
                f"outage submits={len(refused)} max 503 latency={max((a.took_s for a in refused), default=0):.3f}s "
                f"max read latency={max((a.took_s for a in self.during_outages(self.reads)), default=0):.3f}s "
                f"ready down after={[o.ready_down_after_s for o in self.outages]} "
                f"ready up after={[o.ready_up_after_s for o in self.outages]}")


async def _timed(http: httpx.AsyncClient, method: str, path: str,
                 **kwargs: object) -> tuple[Answer, httpx.Response | None]:
    started = time.monotonic()
    try:
        response = await http.request(method, path, **kwargs)  # type: ignore[arg-type]
    except httpx.HTTPError:
        return Answer(started, time.monotonic() - started, 0), None
    answer = Answer(started, time.monotonic() - started, response.status_code, response.headers.get("retry-after"))
    return answer, response


async def _submit_steadily(drill: Drill, http: httpx.AsyncClient, client: int) -> None:
    for i in range(MAX_SUBMITS // CLIENTS):
        if drill.stopping.is_set():
            return
        answer, response = await _timed(http, "POST", "/api/v1/submit", json={
            "payload": {"client": client, "i": i}, "metadata": {"handler": "record"}})
        drill.submits.append(answer)
        if response is not None and response.status_code == 202:
            drill.accepted.append(response.json()["correlation_id"])
        await asyncio.sleep(SUBMIT_INTERVAL_S)  # the load's rate


async def _watch_readiness(drill: Drill, http: httpx.AsyncClient) -> None:
    while not drill.stopping.is_set():
        answer, _ = await _timed(http, "GET", "/ready")
        drill.readiness.append((answer.started + answer.took_s, answer.status))
        await asyncio.sleep(READY_POLL_S)


def _first_ready(drill: Drill, since: float, status: int) -> float | None:
    """Seconds from `since` until /ready first answered `status` (an answer that came later than that)."""
    return next((at - since for at, seen in drill.readiness if at >= since and seen == status), None)


async def _one_outage(drill: Drill, broker: OwnBroker, http: httpx.AsyncClient) -> None:
    known_id = drill.accepted[0]
    outage = Outage(killed_at=time.monotonic())
    drill.outages.append(outage)
    await broker.kill()

    async def observed() -> bool:
        answer, _ = await _timed(http, "GET", f"/api/v1/response/{known_id}")
        drill.reads.append(answer)
        refused = [a for a in drill.submits if a.started >= outage.killed_at and a.status != 202]
        lasted = time.monotonic() - outage.killed_at >= OUTAGE_MIN_S
        return lasted and len(refused) >= OUTAGE_SUBMITS and _first_ready(drill, outage.killed_at, 503) is not None

    await wait_until(observed, timeout_s=STEP_TIMEOUT_S, what=f"{broker.name} outage seen by submits and /ready")
    outage.restarted_at = time.monotonic()  # submits from here on may meet the broker again
    await broker.start()
    outage.restarted_at = time.monotonic()
    accepted_before = len(drill.accepted)
    await wait_until(lambda: len(drill.accepted) > accepted_before
                     and _first_ready(drill, outage.restarted_at, 200) is not None,
                     timeout_s=STEP_TIMEOUT_S, what=f"{broker.name} back: a submit accepted and /ready 200")
    outage.ready_down_after_s = _first_ready(drill, outage.killed_at, 503)
    outage.ready_up_after_s = _first_ready(drill, outage.restarted_at, 200)


async def _more_accepted(drill: Drill, count: int, broker: str) -> None:
    enough = len(drill.accepted) + count
    await wait_until(lambda: len(drill.accepted) >= enough, timeout_s=STEP_TIMEOUT_S,
                     what=f"{count} more requests accepted through {broker}")


async def run_drill(server: OpenHQMProcess, broker: OwnBroker, run_log: Path, *, kills: int = 2) -> Drill:
    """Load, `kills` outages (each after some accepted requests), more load; then stop the load."""
    drill = Drill(server.url, run_log)
    async with httpx.AsyncClient(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
        load = [asyncio.create_task(_submit_steadily(drill, http, client)) for client in range(CLIENTS)]
        load.append(asyncio.create_task(_watch_readiness(drill, http)))
        try:
            # Workers started on their own connect in their own time: the first outage comes once they work.
            await wait_until(lambda: bool(drill.runs()), timeout_s=STEP_TIMEOUT_S, what="a first request handled")
            for round_ in range(kills + 1):
                if round_:
                    await _one_outage(drill, broker, http)
                await _more_accepted(drill, ACCEPTED_BETWEEN_OUTAGES, broker.name)
        finally:
            drill.stopping.set()
            await asyncio.gather(*load)
    return drill


async def final_statuses(url: str, ids: list[str], timeout_s: float = 60) -> dict[str, str]:
    """Each id's status once terminal (long-polled), or its last status when `timeout_s` ran out."""
    statuses: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    limit = asyncio.Semaphore(16)
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        async def one(correlation_id: str) -> None:
            async with limit:
                while time.monotonic() < deadline:
                    with contextlib.suppress(httpx.HTTPError):
                        r = await http.get(f"/api/v1/response/{correlation_id}", params={"wait": 10})
                        statuses[correlation_id] = str(r.status_code) if r.status_code >= 500 else r.json()["status"]
                        if r.status_code == 200:
                            return

        await asyncio.gather(*(one(i) for i in ids))
    return statuses

