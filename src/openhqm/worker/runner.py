"""Builds the worker side from settings: the target a job runs against, and the pool."""

from __future__ import annotations

from openhqm.app import OpenHQM
from openhqm.backends.base import Backend
from openhqm.forward import Forwarder
from openhqm.results.base import ResultStore
from openhqm.worker.autoscale import Autoscaler
from openhqm.worker.pool import WorkerPool
from openhqm.worker.processor import Processor
from openhqm.worker.replies import ReplyRoute
from openhqm.worker.targets import HandlerTarget, Target


def build_target(app: OpenHQM, forwarder: Forwarder | None = None) -> Target:
    handlers = HandlerTarget(app.handlers, app.settings.worker.default_handler)
    if forwarder is None:
        return handlers
    from openhqm.worker.forwarding import ForwardTarget

    return ForwardTarget(forwarder, handlers)


def build_pool(app: OpenHQM, backend: Backend, store: ResultStore, forwarder: Forwarder | None,
               replies: ReplyRoute) -> WorkerPool:
    """`replies`: where finished requests' replies go (chosen by the runtime, see worker/replies.py)."""
    settings = app.settings
    processor = Processor(app, backend, store, build_target(app, forwarder), settings.queue.request_queue,
                          replies)
    lease_s = getattr(backend, "lease_s", None)
    worker = settings.worker
    scaling = worker.min_concurrency is not None or worker.max_concurrency is not None
    low = worker.min_concurrency or worker.concurrency
    pool = WorkerPool(processor, concurrency=low if scaling else worker.concurrency, prefetch=worker.prefetch,
                      lease_s=lease_s if isinstance(lease_s, int | float) else None)
    if scaling:
        pool.autoscaler = Autoscaler(pool, low, worker.max_concurrency or max(low, worker.concurrency))
    return pool
