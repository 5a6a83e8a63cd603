"""The Bridge: the one object the HTTP layer talks to, a facade over the listener's parts
(openhqm.listener: intake, reading, replies, dead letters, housekeeping). It holds no logic of its
own; each concern lives in its module."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from openhqm.app import OpenHQM
from openhqm.backends.base import Backend, Delivery, Health
from openhqm.envelope import Envelope, Reply
from openhqm.flow.ledger import Ledger
from openhqm.forward import CallbackSender, check_callback_url
from openhqm.listener.console import Console
from openhqm.listener.dead_letters import DeadLetterFilter, DeadLetters
from openhqm.listener.fanout import FanOut
from openhqm.listener.flow import FlowLimits
from openhqm.listener.housekeeping import Housekeeping, cleanup
from openhqm.listener.intake import Intake, json_body
from openhqm.listener.queues import Queues
from openhqm.listener.reading import Reading
from openhqm.listener.replies import CallbackOutcome, Replies
from openhqm.listener.scheduler import Scheduler
from openhqm.results.base import DeadLetterRecord, RequestRecord, ResultStore
from openhqm.routing import Routing
from openhqm.stats import RollingStats


class Bridge:
    def __init__(self, app: OpenHQM, backend: Backend, store: ResultStore, router: Routing,
                 callbacks: CallbackSender | None = None, flow_ledger: Ledger | None = None) -> None:
        self.app = app
        self.settings = settings = app.settings
        self.router = router
        self.backend = backend
        self.store = store
        self.intake = Intake(settings, backend, store)
        self.reading = Reading(settings, store)
        self.replies = Replies(backend, store, settings.queue.response_queue, callbacks)
        self.dead = DeadLetters(store, self.intake, router, self.replies)
        self.fanout = FanOut(settings.fanout, self.intake, store, self.replies.deliver_callback)
        self.intake.fan_out = self.fanout.submit
        self.replies.child_finished = self.fanout.child_finished
        self.dead.replay_child = self.fanout.replay_child
        self.housekeeping = Housekeeping(backend, store, (self.request_queue, self.response_queue), settings.results,
                                         self.dead, settings.worker.max_timeout_s)
        self.flow = FlowLimits(settings, flow_ledger)  # `flow_ledger`: the workers' beside it, in `serve`
        self.housekeeping.flow = self.flow
        self.scheduler = Scheduler(self.intake, router, settings.schedules)
        self.queues = Queues(backend, store, self.housekeeping, self.request_queue)
        self.console = Console(store, self.intake, self.reading, self.dead, router)  # the operator console's requests
        self.console.fanout = self.fanout

    @property
    def request_queue(self) -> str:
        return self.settings.queue.request_queue

    @property
    def response_queue(self) -> str:
        return self.settings.queue.response_queue

    @property
    def rolling(self) -> RollingStats:
        return self.housekeeping.rolling

    # intake
    async def submit(self, envelope: Envelope, *, request_hash: str | None = None) -> RequestRecord:
        return await self.intake.submit(envelope, request_hash=request_hash)

    async def submit_and_wait(self, envelope: Envelope, wait_s: float) -> RequestRecord:
        return await self.intake.submit_and_wait(envelope, wait_s)

    async def submit_once(self, envelope: Envelope, idempotency_key: str,
                          request_hash: str | None = None) -> tuple[RequestRecord, bool]:
        return await self.intake.submit_once(envelope, idempotency_key, request_hash)

    def check_callback_url(self, url: str) -> None:
        """Refuse at submit what can be refused without DNS: callbacks off, or an unsafe literal address."""
        check_callback_url(url, self.settings.callbacks)

    # reading
    async def get(self, correlation_id: str, client_id: str | None = None) -> RequestRecord:
        return await self.reading.get(correlation_id, client_id)

    async def wait(self, correlation_id: str, timeout_s: float, client_id: str | None = None) -> RequestRecord:
        return await self.reading.wait(correlation_id, timeout_s, client_id)

    async def reread(self, correlation_id: str) -> RequestRecord | None:
        return await self.reading.reread(correlation_id)

    @contextlib.contextmanager
    def updates(self, correlation_id: str) -> Iterator[asyncio.Queue[RequestRecord]]:
        with self.reading.updates(correlation_id) as queue:
            yield queue

    async def session(self, session_id: str, client_id: str | None, limit: int) -> list[RequestRecord]:
        return await self.reading.session(session_id, client_id, limit)

    async def cancel(self, correlation_id: str, client_id: str | None = None) -> RequestRecord:
        record = await self.reading.cancel(correlation_id, client_id)
        await self.fanout.cancelled(record)
        return record

    # fan-out
    def fanout_members(self, group: str) -> list[str]:
        """The members of a fan-out group; 422 naming an unknown one."""
        return self.fanout.members(group)

    async def children(self, parent: RequestRecord) -> list[dict[str, Any]]:
        return await self.fanout.children(parent)

    # replies
    async def finish_reply(self, reply: Reply, delivery: Delivery, dead_letter: DeadLetterRecord | None) -> bool:
        """Store a local worker's reply and ack its delivery; False when the store refused `dead_letter`
        and the broker's dead-letter queue took the message instead."""
        return (await self.replies.finish(reply, delivery, dead_letter)).stored

    async def consume_replies(self) -> None:
        await self.replies.consume()

    async def resend_callback(self, correlation_id: str, client_id: str | None = None) -> CallbackOutcome:
        return await self.replies.resend_callback(await self.reading.get(correlation_id, client_id))

    # dead letters
    async def replay(self, dead_letter_id: str) -> tuple[RequestRecord, DeadLetterRecord]:
        return await self.dead.replay(dead_letter_id)

    async def dead_letters(self, limit: int = 100, where: DeadLetterFilter | None = None) -> list[DeadLetterRecord]:
        return await self.dead.list_matching(where or DeadLetterFilter(), limit)

    async def purge_dead_letters(self) -> int:
        return await self.dead.purge()

    async def sweep_dead_letters(self) -> None:
        await self.dead.sweep(self.backend, self.request_queue)

    # housekeeping
    async def health(self) -> tuple[Health, Health]:
        """(broker, result store), each answering within its own timeout."""
        return await self.backend.health(), await self.store.health()

    async def queue_depths(self) -> dict[str, int | None]:
        return await self.housekeeping.queue_depths()

    async def stats(self) -> dict[str, Any]:
        return await self.housekeeping.stats()

    async def sample_metrics_forever(self, interval_s: float = 5.0) -> None:
        await self.housekeeping.sample_metrics_forever(interval_s)

    async def cleanup_forever(self) -> None:
        await self.housekeeping.cleanup_forever()

    async def run_schedules(self) -> None:
        await self.scheduler.run_forever()


__all__ = ["Bridge", "cleanup", "json_body"]
