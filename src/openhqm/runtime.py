"""The composition root: every part of an `openhqm` process, started in order and stopped in reverse.

    backend -> result store -> forwarder -> callbacks -> listener -> worker pool

The listener part is the Bridge and its background tasks (reply consumer, retention cleanup, metrics
sampling); the worker part is the pool (and, for `openhqm worker`, its probe port). Everything that
starts is pushed on one AsyncExitStack, so stopping -- or a failure half-way through starting -- undoes
exactly what started, last first, as aiohttp's web_runner does. The listener starts before the pool
so that the pool stops first: in-flight jobs drain while their replies can still reach the store
(through the bridge in `serve`, over the still-open broker otherwise).

The three commands are three selections of it:

    openhqm serve     Runtime(app, listener=True, workers=True)
    openhqm listener  Runtime(app, listener=True)
    openhqm worker    Runtime(app, workers=True, probes=True)

How a finished job's reply reaches the result store is decided here, once (worker/replies.py): with
the listener in the same process the bridge stores it and acks the delivery, in one transaction where
the SQLite queue and store share their file (listener/settle.py); otherwise it is published to the
response queue that a listener consumes. So is eager dispatch: with the listener and the pool in one
process, on a backend that can write a message already leased (`capabilities.eager_dispatch`), a
submit that finds a free slot hands its request to the pool in memory (listener/intake.py).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from types import TracebackType

from openhqm.app import OpenHQM
from openhqm.backends import Backend, create_backend
from openhqm.bridge import Bridge
from openhqm.config import Settings
from openhqm.fanout import check_handlers
from openhqm.flow.limiter import Limiter, build_limiter
from openhqm.forward import CallbackSender, Forwarder
from openhqm.gc_tuning import settle_after_startup
from openhqm.results import create_store
from openhqm.results.base import ResultStore
from openhqm.routing import Routing
from openhqm.tracing import shutdown_tracing
from openhqm.worker.autoscale import Autoscaler
from openhqm.worker.heartbeat import Heartbeats
from openhqm.worker.pausing import PauseWatch
from openhqm.worker.pool import WorkerPool
from openhqm.worker.processor import Processor
from openhqm.worker.replies import BrokerReplies, LocalReplies, ReplyRoute
from openhqm.worker.targets import HandlerTarget, Target


class Runtime:
    """One process's parts. Built from settings (no I/O); `async with runtime:` connects and runs them.

    `settings` binds the app's settings (else the app's own are used, see OpenHQM.settings).
    `probes` serves the worker's /health, /ready and /metrics on `worker.health_port` when set.
    `settle_gc` applies the process-wide collector tuning once started (gc_tuning.py); a test that
    runs a runtime inside its own process turns it off.
    """

    def __init__(self, app: OpenHQM, settings: Settings | None = None, *, listener: bool = False,
                 workers: bool = False, probes: bool = False, settle_gc: bool = True) -> None:
        if settings is not None:
            app.settings = settings
        self.app = app
        self.settings = app.settings
        self.backend = create_backend(self.settings)
        self.store = create_store(self.settings)
        self.forwarder = Forwarder(self.settings.proxy) if self.settings.proxy.enabled else None
        # Callbacks are the listener's (it sees final states); the forwarder serves both: workers call
        # endpoints, the listener resolves endpoint names at submit.
        self.callbacks = CallbackSender(self.settings.callbacks) \
            if listener and self.settings.callbacks.enabled else None
        # Flow limits are asked by workers only; None when none is configured.
        self.flow = build_limiter(self.settings, app.handlers) if workers else None
        self.bridge = Bridge(app, self.backend, self.store,
                             Routing(app.handlers, self.settings.worker.default_handler, self.forwarder),
                             self.callbacks, self.flow.ledger if self.flow else None) if listener else None
        self.workers = workers
        self.probes = probes
        self.settle_gc = settle_gc
        self.pool: WorkerPool | None = None
        self._stack: AsyncExitStack | None = None

    @property
    def replies(self) -> ReplyRoute:
        """Where this process's workers send replies: to the bridge beside them, or over the broker."""
        broker = BrokerReplies(self.backend, self.store)
        if self.bridge is None:
            return broker
        return LocalReplies(self.bridge.response_queue, self.bridge.finish_reply, broker)

    async def __aenter__(self) -> Runtime:
        if self._stack is not None:
            raise RuntimeError("this runtime is already running")
        if self.bridge is not None:  # handlers are registered by now; fanout.* was read before they were
            check_handlers(self.settings.fanout, self.app.handlers.names)
        async with AsyncExitStack() as stack:
            stack.callback(shutdown_tracing)  # last of all: flush the spans of everything below
            await self.backend.connect()
            stack.push_async_callback(self.backend.close)
            await self.store.connect()
            stack.push_async_callback(self.store.close)
            self.store.add_listener(self.app.dispatch)
            if self.forwarder is not None:
                await self.forwarder.start()
                stack.push_async_callback(self.forwarder.close)
            if self.flow is not None:
                await self.flow.connect()
                stack.push_async_callback(self.flow.close)
            if self.callbacks is not None:
                await self.callbacks.start()
                stack.push_async_callback(self.callbacks.close)
            if self.bridge is not None:
                await self.bridge.flow.connect()
                stack.push_async_callback(self.bridge.flow.close)
                self._start_listener(stack, self.bridge)
            if self.workers:
                await self._start_workers(stack)
            self._stack = stack.pop_all()
        if self.settle_gc:
            settle_after_startup()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    def _start_listener(self, stack: AsyncExitStack, bridge: Bridge) -> None:
        self.store.add_listener(bridge.rolling.observe)
        tasks = [asyncio.create_task(bridge.consume_replies(), name="openhqm-replies"),
                 asyncio.create_task(bridge.cleanup_forever(), name="openhqm-cleanup"),
                 asyncio.create_task(bridge.sweep_dead_letters(), name="openhqm-broker-dead-letters"),
                 asyncio.create_task(bridge.sample_metrics_forever(), name="openhqm-metrics"),
                 asyncio.create_task(bridge.run_schedules(), name="openhqm-schedules")]

        async def stop() -> None:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        stack.push_async_callback(stop)

    async def _start_workers(self, stack: AsyncExitStack) -> None:
        pool = build_pool(self.app, self.backend, self.store, self.forwarder, self.replies, self.flow)
        if self.probes and self.settings.worker.health_port:
            from openhqm.http.health import serving_probes

            # Entered before the pool starts, so probes keep answering while it drains.
            await stack.enter_async_context(serving_probes(self.settings, self.backend, self.store, pool))
        pool.pause = PauseWatch(self.store, pool.queue)
        await pool.pause.refresh()  # a paused queue is not consumed for a moment at start
        heartbeats = Heartbeats(self.store, pool, self.settings.worker.heartbeat_interval_s)
        heartbeats.start()
        stack.push_async_callback(heartbeats.stop)  # after the pool stops: it beats while draining
        pool.start()
        stack.push_async_callback(pool.stop, self.settings.worker.shutdown_timeout_s)
        self.pool = pool
        if self.bridge is not None and self.settings.worker.eager_dispatch \
                and self.backend.capabilities.eager_dispatch:
            self.bridge.intake.local_workers = pool


def build_target(app: OpenHQM, forwarder: Forwarder | None = None) -> Target:
    handlers = HandlerTarget(app.handlers, app.settings.worker.default_handler)
    if forwarder is None:
        return handlers
    from openhqm.worker.forwarding import ForwardTarget

    return ForwardTarget(forwarder, handlers)


def build_pool(app: OpenHQM, backend: Backend, store: ResultStore, forwarder: Forwarder | None,
               replies: ReplyRoute, flow: Limiter | None = None) -> WorkerPool:
    """`replies`: where finished requests' replies go (chosen by the runtime, see worker/replies.py);
    `flow`: the process's flow limiter (flow/limiter.py), None without limits."""
    settings = app.settings
    processor = Processor(app, backend, store, build_target(app, forwarder), settings.queue.request_queue,
                          replies, flow)
    worker = settings.worker
    scaling = worker.min_concurrency is not None or worker.max_concurrency is not None
    low = worker.min_concurrency or worker.concurrency
    pool = WorkerPool(processor, concurrency=low if scaling else worker.concurrency, prefetch=worker.prefetch,
                      lease_s=backend.lease_s)
    if scaling:
        pool.autoscaler = Autoscaler(pool, low, worker.max_concurrency or max(low, worker.concurrency))
    return pool
