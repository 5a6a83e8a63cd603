"""The worker pool: up to `concurrency` jobs at once from one queue, and an orderly drain.

Shutdown order (SIGTERM): stop taking messages, let in-flight jobs finish within
`worker.shutdown_timeout_s`, then return what is still running to the queue. Connections close
last, after every delivery is settled, so nothing fetched is lost.

A pause (worker/pausing.py) stops the intake the same way: closing the consumer hands back what the
backend prefetched (backends/kit.py PrefetchBuffer), so nothing fetched waits unstarted on a lease
while paused, on every backend; running jobs finish. A resume opens a new consumer.

Eager dispatch (`openhqm serve`, listener/intake.py): a submit in this process may reserve a free
slot and fill it with a delivery it wrote already leased, never consumed. Only while the intake runs
(not paused, not stopping) and only a slot the intake is not waiting for, so the queue's own messages
keep the first claim on a freed slot; the job is then like any other (lease kept, drained, returned).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol

from openhqm import metrics, stages
from openhqm.backends.base import Backend, Delivery
from openhqm.listener.enqueue import Leased
from openhqm.logging import get_logger
from openhqm.policies import Reconnect
from openhqm.results.base import RequestRecord
from openhqm.worker.pausing import PauseWatch
from openhqm.worker.processor import Processor

log = get_logger("openhqm.worker")


class Scaler(Protocol):
    """What the pool runs beside its intake to resize it (worker/autoscale.py's Autoscaler); a
    protocol, so the pool does not import the module that imports it."""

    async def run(self) -> None: ...


class WorkerPool:
    def __init__(self, processor: Processor, *, concurrency: int, prefetch: int, lease_s: float | None = None):
        self.processor = processor
        self.backend: Backend = processor.backend
        self.queue = processor.queue
        self.concurrency = concurrency
        self.prefetch = prefetch
        self.lease_s = lease_s
        self._slots = asyncio.Semaphore(concurrency)
        self._jobs: dict[asyncio.Task[None], Delivery] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._intake: asyncio.Task[None] | None = None
        self._taking = False  # whether the intake runs: eager dispatch only then (reserve_slot)
        self._reserved = 0  # slots reserved by submits whose write has not ended yet
        self._stopped = False
        self.pause: PauseWatch | None = None
        self._pausing: list[asyncio.Task[None]] = []
        self._shrinking: asyncio.Task[None] | None = None
        self.autoscaler: Scaler | None = None
        self._autoscaling: asyncio.Task[None] | None = None
        self.last_activity = asyncio.get_event_loop().time()

    @property
    def in_flight(self) -> int:
        return len(self._jobs)

    @property
    def taking(self) -> bool:
        """Whether the pool takes new work now (its intake runs: started, not paused, not stopping)."""
        return self._taking

    def start(self) -> None:
        metrics.WORKER_CONCURRENCY.set(self.concurrency)
        # Read the pause state (pause.refresh()) before start(), or a paused queue is consumed. The
        # intake starts here, not on a later turn, so a submit right after start finds the pool taking work.
        if self.pause is None or not self.pause.paused:
            self._start_intake()
        if self.pause is not None:
            self._pausing = [asyncio.create_task(self.pause.run(), name="openhqm-pause-watch"),
                             asyncio.create_task(self._follow(self.pause), name="openhqm-pause-follow")]
        if self.autoscaler is not None:
            self._autoscaling = asyncio.create_task(self.autoscaler.run(), name="openhqm-autoscale")

    def _start_intake(self) -> None:
        self._intake = asyncio.create_task(self._take_messages(), name=f"openhqm-intake-{self.queue}")
        self._taking = True

    async def _follow(self, pause: PauseWatch) -> None:
        """Consume while the queue runs; on a pause stop the intake (see the module's docstring)."""
        while True:
            await pause.until(False)
            if not self._taking:
                self._start_intake()
            await pause.until(True)
            await self._stop_intake()

    async def _stop_intake(self) -> None:
        self._taking = False
        if self._intake is not None:
            self._intake.cancel()
            # wait(), not `await task` under suppress(CancelledError): a cancel of the caller itself
            # (stop() ending _follow) must not be swallowed.
            await asyncio.wait([self._intake])

    async def _take_messages(self) -> None:
        reconnect = Reconnect()
        while True:
            deliveries = self.backend.consume(self.queue, prefetch=self.prefetch)
            try:
                while True:
                    # A free slot first, then a message: a message is never held while waiting.
                    await self._slots.acquire()
                    try:
                        delivery = await anext(deliveries)
                    except BaseException:
                        self._slots.release()
                        raise
                    reconnect.reset()
                    stages.mark(delivery.message_id, "dequeued")
                    metrics.child(metrics.WORKER_DELIVERIES, self.queue, "consume").inc()
                    self._spawn(delivery)
            except StopAsyncIteration:
                return
            except Exception as exc:
                # The broker went away: keep trying, with a bounded backoff, until it is back.
                log.warning("consume failed; retrying", queue=self.queue, error=str(exc),
                            retry_in_s=round(reconnect.next_delay_s, 3))
                await reconnect.wait()
            finally:
                # Closing the iterator lets the backend hand back what it prefetched.
                with contextlib.suppress(Exception):
                    await deliveries.aclose()  # type: ignore[attr-defined]

    async def reserve_slot(self) -> bool:
        """For eager dispatch: a free slot now, or False. A slot the intake waits for is not free
        (`locked()` counts waiters), and the acquire of a free one returns without suspending."""
        if not self._taking or self._slots.locked() or (self.pause is not None and self.pause.paused):
            return False
        await self._slots.acquire()
        self._reserved += 1
        self._idle.clear()  # a drain waits for the write to end and its job, if any, to finish
        return True

    def claimed(self, record: RequestRecord) -> RequestRecord:
        return self.processor.claimed(record)

    def fill_slot(self, leased: Leased | None) -> None:
        """Run a delivery handed over by this process's submit in the slot it reserved (None: give it back)."""
        self._reserved -= 1
        if leased is not None and self._stopped:
            # A write that outlasted the whole drain: not started, so it runs again after its lease.
            log.warning("a request handed over after the drain ended waits for its lease to run out",
                        message_id=leased.delivery.message_id)
            leased = None
        if leased is None:
            self._slots.release()
            self._check_idle()
            return
        stages.mark(leased.delivery.message_id, "dequeued")
        metrics.child(metrics.WORKER_DELIVERIES, self.queue, "eager").inc()
        self._spawn(leased.delivery, claimed=leased.claimed)

    def _spawn(self, delivery: Delivery, *, claimed: bool = False) -> None:
        task = asyncio.create_task(self._run(delivery, claimed))
        self._jobs[task] = delivery
        self._idle.clear()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._jobs.pop(task, None)
        self._slots.release()
        self.last_activity = asyncio.get_event_loop().time()
        self._check_idle()

    def _check_idle(self) -> None:
        if not self._jobs and not self._reserved:
            self._idle.set()

    async def _run(self, delivery: Delivery, claimed: bool) -> None:
        stop_keeping = self._keep_lease(delivery)
        try:
            await self.processor.process(delivery, claimed=claimed)
        except asyncio.CancelledError:
            await asyncio.shield(self.processor.give_back(delivery))
            raise
        except Exception:
            log.exception("unexpected error while processing; returning the message to the queue")
            await self.processor.give_back(delivery)
        finally:
            if stop_keeping is not None:
                stop_keeping()

    def _keep_lease(self, delivery: Delivery) -> Callable[[], None] | None:
        """Extend the lease while a long job runs, so no other worker takes the message meanwhile.

        A timer, not a task per job: most jobs end long before the first extension is due."""
        if not self.lease_s or not self.backend.capabilities.lease_extension:
            return None
        lease_s = self.lease_s
        extender: asyncio.Task[None] | None = None

        async def extend() -> None:
            while True:
                with contextlib.suppress(Exception):
                    await delivery.extend_lease(lease_s)
                await asyncio.sleep(lease_s / 3)

        def start() -> None:
            nonlocal extender
            extender = asyncio.create_task(extend())

        timer = asyncio.get_running_loop().call_later(lease_s / 3, start)

        def stop() -> None:
            timer.cancel()
            if extender is not None:
                extender.cancel()

        return stop

    async def stop(self, timeout_s: float) -> None:
        self._taking = False  # no eager dispatch from here on, even before the intake has stopped
        if self._autoscaling is not None:
            self._autoscaling.cancel()
        for task in self._pausing:  # no resume may start the intake again
            task.cancel()
        await asyncio.gather(*self._pausing, return_exceptions=True)
        await self._stop_intake()  # 1. no new messages
        if self._jobs or self._reserved:  # 2. in-flight jobs finish within the timeout
            log.info("draining", in_flight=len(self._jobs), timeout_s=timeout_s)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._idle.wait()
        remaining = list(self._jobs)
        for task in remaining:  # 3. the rest goes back to the queue (see _run)
            task.cancel()
        if remaining:
            log.warning("returned unfinished jobs to the queue", count=len(remaining))
            await asyncio.gather(*remaining, return_exceptions=True)
        self._stopped = True

    def resize(self, concurrency: int) -> None:
        """Grow or shrink the pool; shrinking takes effect as running jobs finish."""
        delta = concurrency - self.concurrency
        self.concurrency = concurrency
        metrics.WORKER_CONCURRENCY.set(concurrency)
        if delta > 0:
            for _ in range(delta):
                self._slots.release()
        elif delta < 0:
            self._shrinking = asyncio.create_task(self._shrink(-delta))

    async def _shrink(self, count: int) -> None:
        for _ in range(count):
            await self._slots.acquire()
