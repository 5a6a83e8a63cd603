"""What happens to one delivery: decode, skip if cancelled or expired, run, reply, settle.

The reply is durably accepted (stored, or published to the response queue) before the request is
acked, so a crash in between repeats the work (at-least-once) but never loses the result; where the
SQLite queue and store share their file, both are one transaction (listener/settle.py). Dead letters
are recorded in the result store, the one index that list/inspect/replay use; if that write fails the
broker's own `.dlq` queue takes it."""

from __future__ import annotations

import asyncio
import contextlib
import time
import traceback
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import orjson
import structlog

from openhqm import metrics, stages
from openhqm.backends.base import Backend, Delivery
from openhqm.config import Settings
from openhqm.constants import Status
from openhqm.envelope import AttemptEntry, Envelope, Reply, decode_envelope, encode, new_id
from openhqm.errors import DeadLetter, JobCancelled, LimitWait, RequestRejected, Retry, UndecodableMessage
from openhqm.flow.limiter import Limiter
from openhqm.listener.settle import kept
from openhqm.logging import get_logger
from openhqm.policies import RetryPolicy
from openhqm.redact import mask_secrets, secret_values
from openhqm.results.base import DeadLetterReason, DeadLetterRecord, RequestRecord, ResultStore
from openhqm.tracing import job_span
from openhqm.worker.attempts import Run, status_code_of
from openhqm.worker.control import JobControl
from openhqm.worker.handlers import Job
from openhqm.worker.identity import this_process
from openhqm.worker.middleware import Middleware
from openhqm.worker.replies import BrokerReplies, ReplyRoute
from openhqm.worker.targets import Outcome, Target, TargetDeferred, TargetFailed, routed

log = get_logger("openhqm.worker")

_RUNNABLE = (Status.PENDING, Status.SCHEDULED, Status.RETRY, Status.PROCESSING)


MAX_ERROR_CHARS = 8192  # a dead letter's error and traceback each: the tail (raising frames, error) is kept


@dataclass
class Failure:
    error: str
    retryable: bool = True
    retry_after_s: float | None = None
    retry: RetryPolicy | None = None
    status_code: int | None = None
    cause: BaseException | None = None  # formatted only if it is dead-lettered


class WorkerApp(Protocol):
    """What the processor needs of the application (openhqm.app.OpenHQM); a protocol, so the worker
    does not import the module that imports the worker's handlers and middleware."""

    settings: Settings
    middleware: list[Middleware]


class Processor:
    def __init__(self, app: WorkerApp, backend: Backend, store: ResultStore, target: Target, queue: str,
                 replies: ReplyRoute | None = None, flow: Limiter | None = None) -> None:
        self.app = app
        self.flow = flow  # None: no flow limit configured, nothing to ask
        self.backend = backend
        self.store = store
        self.target = target
        self.queue = queue
        self.settings = app.settings.worker
        self.replies = replies or BrokerReplies(backend, store)  # chosen by the runtime (worker/replies.py)
        self.retry = self.settings.retry.policy()  # for targets without a policy of their own
        self._secrets = secret_values(app.settings)  # masked in stored tracebacks

    def claimed(self, record: RequestRecord) -> RequestRecord:
        """A new request's record as this worker's claim writes it, for eager dispatch to write it so at
        submit (listener/enqueue.py) instead of claiming it in a round of its own."""
        now = time.time()
        return msgspec.structs.replace(record, status=Status.PROCESSING, updated_at=now, **_claim_changes(1, now))

    async def process(self, delivery: Delivery, *, claimed: bool = False) -> None:
        """`claimed`: its record was written as this worker's claim (eager dispatch)."""
        try:
            envelope = decode_envelope(delivery.body)
        except UndecodableMessage as exc:
            if not self.target.accepts_raw:
                await self._dead_letter(delivery, None, DeadLetterReason.HANDLER, f"undecodable message: {exc}",
                                        delivery.attempt, None)
                return
            envelope = Envelope(id=delivery.message_id, body=delivery.body, raw=True)
        try:
            envelope = routed(envelope, self.target.routing)
        except RequestRejected as exc:
            await self._dead_letter(delivery, None if envelope.raw else envelope, DeadLetterReason.HANDLER,
                                    f"no route: {exc.message}", delivery.attempt, None)
            return
        attempt = envelope.attempt + delivery.attempt - 1
        stages.mark(envelope.correlation_id, "started")
        structlog.contextvars.bind_contextvars(
            correlation_id=envelope.correlation_id, session_id=envelope.session_id, attempt=attempt,
            endpoint=envelope.endpoint or envelope.handler)
        control = JobControl(None if envelope.raw else self.store, envelope.correlation_id)
        try:
            with control.watching():
                await self._process(delivery, envelope, attempt, control, claimed)
        finally:
            structlog.contextvars.clear_contextvars()

    async def _process(self, delivery: Delivery, envelope: Envelope, attempt: int, control: JobControl,
                       claimed: bool) -> None:
        now = time.time()
        if envelope.not_before is not None and envelope.not_before > now + 0.01:
            # Only reached where the broker's own delay is shorter than asked (e.g. SQS's 900 s cap).
            await delivery.nack(delay_s=envelope.not_before - now)
            return
        if envelope.expires_at is not None and envelope.expires_at < now:
            await self._finish(delivery, envelope, Reply(correlation_id=envelope.correlation_id,
                               status=Status.EXPIRED, error="expired before it started", attempts=attempt - 1))
            metrics.child(metrics.MESSAGES, self.queue, "expired",
                          *metrics.target_labels(envelope, self.target.routing)).inc()
            return
        history = [] if claimed else await self._claim(envelope, attempt, now)
        stages.mark(envelope.correlation_id, "claimed")
        if history is None:
            log.info("skipped: request is no longer runnable")
            await delivery.ack()
            metrics.child(metrics.MESSAGES, self.queue, "cancelled",
                          *metrics.target_labels(envelope, self.target.routing)).inc()
            return
        grant = None
        if self.flow is not None:  # the one place flow limits are asked (flow/limiter.py)
            try:
                grant = await self.flow.admit(envelope, fresh=delivery.attempt == 1)
            except LimitWait as exc:
                await self._defer(delivery, envelope, attempt, exc)
                return
        started = time.perf_counter()
        run = Run(attempt, now, history)
        metrics.child(metrics.INFLIGHT, self.queue).inc()
        span = job_span("openhqm.process", envelope.traceparent, {
            "messaging.message.id": envelope.id, "openhqm.correlation_id": envelope.correlation_id,
            "openhqm.attempt": attempt, "openhqm.target": envelope.endpoint or envelope.handler or ""})
        try:
            with span as traceparent:
                job = Job(msgspec.structs.replace(envelope, traceparent=traceparent), attempt, control=control)
                async with control:
                    try:
                        outcome = await self._run(job)
                    finally:
                        if grant is not None:
                            await grant.release()
        except JobCancelled:  # the record is CANCELLED already: no reply, nothing to retry
            await delivery.ack()
            metrics.child(metrics.MESSAGES, self.queue, "cancelled").inc()
            return
        except TargetDeferred as exc:
            await self._defer(delivery, envelope, attempt, exc)
            return
        except Exception as exc:  # handlers may raise anything; _failure sorts it out
            failure = self._failure(exc, Job(envelope, attempt))
            await self._failed(delivery, envelope, run, failure)
            return
        finally:
            metrics.child(metrics.INFLIGHT, self.queue).dec()
            metrics.child(metrics.PROCESSING_DURATION, self.queue, *metrics.target_labels(
                envelope, self.target.routing)).observe(time.perf_counter() - started)
        try:
            result = as_json(outcome.result)
        except TypeError as exc:  # retrying would run the handler again for the same answer
            await self._failed(delivery, envelope, run, Failure(f"result is not JSON: {exc}", retryable=False))
            return
        reply = Reply(correlation_id=envelope.correlation_id, status=Status.COMPLETED, result=result,
                      raw_response=outcome.raw_response, attempts=attempt, started_at=now,
                      processing_time_ms=round((time.perf_counter() - started) * 1000, 3),
                      attempt_history=run.ended(status_code=status_code_of(result)))
        await self._finish(delivery, envelope, reply)
        metrics.child(metrics.MESSAGES, self.queue, "completed",
                      *metrics.target_labels(envelope, self.target.routing)).inc()

    async def _claim(self, envelope: Envelope, attempt: int, now: float) -> list[AttemptEntry] | None:
        """Mark PROCESSING: the earlier attempts' history; None when the request was cancelled or
        already finished."""
        if envelope.raw:
            return []
        record = await self.store.transition(envelope.correlation_id, Status.PROCESSING, allowed_from=_RUNNABLE,
                                             **_claim_changes(attempt, now))
        if record is not None:
            return record.attempt_history
        if await self.store.get(envelope.correlation_id) is not None:
            return None
        if envelope.reply_to == self.app.settings.queue.response_queue:
            # Submitted here, its record gone: a submit answered 503 whose message reached the queue
            # after all (a send the broker stored but never acknowledged), or a request deleted since.
            log.warning("skipped: this request's record is gone (refused or deleted)")
            return None
        return []  # another system's message, or one replying elsewhere: run it

    async def _run(self, job: Job) -> Outcome:
        timeout_s = min(job.envelope.timeout_s or self.target.timeout_s(job) or self.settings.default_timeout_s,
                        self.settings.max_timeout_s)
        middleware = self.app.middleware
        for mw in middleware:
            await mw.before(job)
        try:
            async with asyncio.timeout(timeout_s):
                outcome = await self.target.run(job)
        except TimeoutError:
            error = TimeoutError(f"timed out after {timeout_s:g} s")
            for mw in reversed(middleware):
                await mw.on_error(job, error)
            raise error from None
        except BaseException as exc:
            for mw in reversed(middleware):
                await mw.on_error(job, exc)
            raise
        for mw in reversed(middleware):
            await mw.after(job, outcome.result)
        return outcome

    def _failure(self, exc: BaseException, job: Job) -> Failure:
        failure = self._classify(exc, job)
        failure.cause = exc
        if isinstance(exc, TargetFailed):
            failure.status_code = exc.status_code
        return failure

    def _classify(self, exc: BaseException, job: Job) -> Failure:
        policy = self.target.retry_policy(job)
        if isinstance(exc, DeadLetter):
            return Failure(f"DeadLetter: {exc}", retryable=False)
        if isinstance(exc, Retry):
            return Failure(f"Retry: {exc}", retry_after_s=exc.delay_s, retry=policy)
        if isinstance(exc, TargetFailed):
            return Failure(str(exc), retryable=exc.retryable, retry_after_s=exc.retry_after_s, retry=policy)
        if isinstance(exc, TimeoutError):
            return Failure(f"TimeoutError: {exc}", retry=policy)
        log.exception("handler raised", exc_info=exc)
        return Failure(f"{type(exc).__name__}: {exc}", retry=policy)

    async def _failed(self, delivery: Delivery, envelope: Envelope, run: Run, failure: Failure) -> None:
        attempt = run.attempt
        policy = failure.retry or self.retry
        delay_s = policy.next_delay_s(attempt, retry_after_s=failure.retry_after_s,
                                      age_s=time.time() - envelope.created_at) if failure.retryable else None
        history = run.ended(status_code=failure.status_code, error=failure.error, secrets=self._secrets)
        if delay_s is not None:
            await self._retry(delivery, envelope, attempt, failure.error, delay_s, history)
            return
        await self._dead_letter(delivery, envelope, *give_up_reason(failure, attempt, policy), attempt, failure,
                                history)

    async def _retry(self, delivery: Delivery, envelope: Envelope, attempt: int, error: str, delay_s: float,
                     history: list[AttemptEntry]) -> None:
        log.info("retry scheduled", delay_s=round(delay_s, 3), error=error)
        if not envelope.raw:
            await self.store.transition(envelope.correlation_id, Status.RETRY, error=error, attempts=attempt,
                                        waiting_on="retry", next_attempt_at=time.time() + delay_s,
                                        attempt_history=history)
        await delivery.nack(delay_s=delay_s)
        metrics.child(metrics.MESSAGES, self.queue, "retried",
                      *metrics.target_labels(envelope, self.target.routing)).inc()

    async def _defer(self, delivery: Delivery, envelope: Envelope, attempt: int, deferred: TargetDeferred) -> None:
        """Put the message back without counting a try (e.g. the endpoint's circuit is open); the
        record says PENDING and what it waits on, not PROCESSING, until it runs again."""
        delay_s = deferred.delay_s
        log.info("deferred", delay_s=round(delay_s, 3), reason=str(deferred))
        if not envelope.raw:
            await self.store.transition(envelope.correlation_id, Status.PENDING, allowed_from=[Status.PROCESSING],
                                        attempts=attempt - 1, waiting_on=deferred.waiting_on,
                                        next_attempt_at=time.time() + delay_s)
        # A flow limit's reservation travels with the message it deferred, and only with that one.
        ticket, waits = (deferred.ticket_at, deferred.waits) if isinstance(deferred, LimitWait) else (None, 0)
        again = msgspec.structs.replace(envelope, attempt=attempt, flow_ticket=ticket, flow_waits=waits)
        await self.backend.publish(self.queue, encode(again), priority=envelope.priority, delay_s=delay_s,
                                   key=delivery.key, message_id=new_id())
        await delivery.ack()

    async def _dead_letter(self, delivery: Delivery, envelope: Envelope | None, reason: DeadLetterReason,
                           detail: str, attempt: int, last: Failure | None,
                           history: list[AttemptEntry] | None = None) -> None:
        correlation_id = envelope.correlation_id if envelope else ""
        last_error = bounded(mask_secrets(last.error, self._secrets)) if last else None
        trace = bounded_traceback(last.cause, self._secrets) if last and last.cause else None
        log.warning("dead-lettered", reason=reason, detail=detail, last_error=last_error)
        record = DeadLetterRecord(id=new_id(), correlation_id=correlation_id, queue=self.queue, reason=reason,
                                  detail=detail, attempts=attempt, last_error=last_error, dead_lettered_at=time.time(),
                                  body=delivery.body,
                                  target=(envelope.endpoint or envelope.handler) if envelope else None,
                                  status_code=last.status_code if last else None,
                                  traceback=trace)
        metrics.child(metrics.MESSAGES, self.queue, "dead_lettered",
                      *metrics.target_labels(envelope, self.target.routing)).inc()
        if envelope is None:
            if await kept(self.store, delivery, record):
                await delivery.ack()
            return
        if await self._finish(delivery, envelope, Reply(
                correlation_id=correlation_id, status=Status.FAILED, error=last_error or detail, attempts=attempt,
                attempt_history=history), dead_letter=record):
            metrics.child(metrics.MESSAGES, self.queue, "failed",
                          *metrics.target_labels(envelope, self.target.routing)).inc()

    async def _finish(self, delivery: Delivery, envelope: Envelope, reply: Reply,
                      dead_letter: DeadLetterRecord | None = None) -> bool:
        """Store or publish the reply (durably accepted) and only then ack the request, the way the
        runtime chose (worker/replies.py); False when the store refused `dead_letter`."""
        return await self.replies.finish(delivery, envelope.reply_to, reply, envelope.priority, dead_letter)

    async def give_back(self, delivery: Delivery) -> None:
        """Return an unfinished delivery to the queue (shutdown): it runs again elsewhere."""
        if delivery.settled is None:
            with contextlib.suppress(Exception):
                await delivery.nack()


def _claim_changes(attempt: int, now: float) -> dict[str, Any]:
    """What a worker's claim writes on the record besides PROCESSING (its claim round, or eager dispatch's
    claimed record written at submit)."""
    return {"attempts": attempt, "progress": None, "worker_id": this_process().worker_id, "started_at": now}


def give_up_reason(failure: Failure, attempt: int, policy: RetryPolicy) -> tuple[DeadLetterReason, str]:
    """Why a failure that will not be retried is dead-lettered: the code and the words."""
    if not failure.retryable:
        return DeadLetterReason.HANDLER, "handler gave up"
    if attempt >= policy.max_attempts:
        return DeadLetterReason.MAX_ATTEMPTS, f"failed after {attempt} attempt(s)"
    # Attempts were left, but the next one would have started after the policy's max_age_s.
    return DeadLetterReason.EXPIRED, f"failed after {attempt} attempt(s); the retry policy's max_age_s passed"


def bounded_traceback(exc: BaseException, secrets: list[str]) -> str:
    """The error's traceback as a dead letter keeps it: configured secrets masked, bounded."""
    return bounded(mask_secrets("".join(traceback.format_exception(exc)), secrets))


def bounded(text: str) -> str:
    """At most MAX_ERROR_CHARS; the start is cut, as a traceback's last frames say where it failed."""
    if len(text) <= MAX_ERROR_CHARS:
        return text
    marker = f"[{len(text) - MAX_ERROR_CHARS} characters cut]\n"
    return marker + text[len(text) - MAX_ERROR_CHARS + len(marker):]


def as_json(result: Any) -> Any:
    """The result as the JSON the API will answer with (dataclasses, datetimes and the like become
    JSON values); TypeError for what JSON cannot carry (bytes, integers beyond 64 bits, objects), so a
    handler's mistake fails its request with a clear error instead of failing every reader later."""
    if result is None or isinstance(result, str | bool | float):
        return result
    return orjson.loads(orjson.dumps(result))
