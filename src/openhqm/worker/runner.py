"""Builds the worker side from settings: backend, store, target, pool."""

from __future__ import annotations

from openhqm.app import OpenHQM
from openhqm.backends.base import Backend
from openhqm.results.base import ResultStore
from openhqm.worker.pool import WorkerPool
from openhqm.worker.processor import Processor
from openhqm.worker.targets import HandlerTarget, Target


def build_target(app: OpenHQM) -> Target:
    return HandlerTarget(app.handlers, app.settings.worker.default_handler)


def build_pool(app: OpenHQM, backend: Backend, store: ResultStore, target: Target | None = None) -> WorkerPool:
    settings = app.settings
    processor = Processor(app, backend, store, target or build_target(app), settings.queue.request_queue)
    lease_s = getattr(backend, "lease_s", None)
    return WorkerPool(processor, concurrency=settings.worker.concurrency, prefetch=settings.worker.prefetch,
                      lease_s=lease_s if isinstance(lease_s, int | float) else None)
