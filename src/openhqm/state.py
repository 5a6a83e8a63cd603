"""What the listener and the workers share through the result store's keyed state
(`ResultStore.put_state` / `states`): queue pauses and worker heartbeats.

Kept in the store, so every process and replica that shares it sees the same pauses, and a pause
survives restarts; the memory store keeps it per process.
"""

from __future__ import annotations

import time

import msgspec

from openhqm import metrics
from openhqm.results.base import ResultStore

QUEUE_STATE = "queue"
WORKER_STATE = "worker"
GONE_AFTER_BEATS = 3  # a worker silent for this many heartbeat intervals is shown as gone
FORGET_AFTER_S = 3600.0  # and one silent this long is dropped from the list (and the store)


class QueueState(msgspec.Struct, kw_only=True):
    paused: bool
    changed_at: float


class Heartbeat(msgspec.Struct, kw_only=True):
    worker_id: str
    host: str
    pid: int
    started_at: float
    concurrency: int
    in_flight: int
    last_seen_at: float
    heartbeat_interval_s: float
    queue: str

    def alive(self, now: float) -> bool:
        return now - self.last_seen_at <= GONE_AFTER_BEATS * self.heartbeat_interval_s


_encode = msgspec.json.encode
_decode_queue = msgspec.json.Decoder(QueueState).decode
_decode_beat = msgspec.json.Decoder(Heartbeat).decode


async def paused_queues(store: ResultStore) -> set[str]:
    """The queues paused now (an entry that cannot be read counts as not paused)."""
    paused = set()
    for name, data in (await store.states(QUEUE_STATE)).items():
        try:
            if _decode_queue(data).paused:
                paused.add(name)
        except msgspec.DecodeError:
            continue
    return paused


async def set_paused(store: ResultStore, queue: str, paused: bool) -> None:
    await store.put_state(QUEUE_STATE, queue, _encode(QueueState(paused=paused, changed_at=time.time())))
    metrics.QUEUE_PAUSED.labels(queue).set(int(paused))


async def put_heartbeat(store: ResultStore, beat: Heartbeat | None, worker_id: str) -> None:
    await store.put_state(WORKER_STATE, worker_id, None if beat is None else _encode(beat))


async def heartbeats(store: ResultStore, now: float) -> list[Heartbeat]:
    """Every worker heard from within FORGET_AFTER_S, oldest first; older (or unreadable) entries are
    removed from the store as they are met."""
    beats = []
    for worker_id, data in (await store.states(WORKER_STATE)).items():
        try:
            beat = _decode_beat(data)
        except msgspec.DecodeError:
            beat = None
        if beat is None or now - beat.last_seen_at > FORGET_AFTER_S:
            await store.put_state(WORKER_STATE, worker_id, None)
            continue
        beats.append(beat)
    return sorted(beats, key=lambda b: (b.started_at, b.worker_id))
