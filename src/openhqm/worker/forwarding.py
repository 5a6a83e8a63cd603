"""The proxy-mode target: a job becomes an HTTP call to a configured endpoint.

A backend's answer, any status, is the result (a 4xx is a COMPLETED request carrying it). Failures
become TargetFailed with the endpoint's retry policy; an open circuit defers the message without
counting a try, so a broken backend is neither hammered nor failed for being down.
"""

from __future__ import annotations

import time
from functools import partial

from openhqm import metrics
from openhqm.envelope import Caller
from openhqm.errors import TargetDeferred, TargetFailed
from openhqm.forward import CircuitOpen, Forwarder, ForwardError, ForwardRequest, ForwardResponse, result_json
from openhqm.logging import get_logger
from openhqm.policies import RetryPolicy
from openhqm.routing import Routing
from openhqm.worker.batching import Batcher
from openhqm.worker.endpoint_batches import send_batch
from openhqm.worker.handlers import Job
from openhqm.worker.targets import HandlerTarget, Outcome

log = get_logger("openhqm.forward")
_CIRCUIT_VALUES = {"closed": 0, "half_open": 1, "open": 2}


class ForwardTarget:
    accepts_raw = True  # queue -> HTTP: other systems' raw messages go to the default endpoint

    def __init__(self, forwarder: Forwarder, handlers: HandlerTarget) -> None:
        self.forwarder = forwarder
        self.handlers = handlers
        self.routing = Routing(handlers.handlers, handlers.routing.default_handler, forwarder)
        # proxy.endpoints.<name>.batch: requests for these endpoints wait to go out together
        self._batchers: dict[str, Batcher[Job]] = {
            name: Batcher(name, partial(self._send_batch, name), size=batch.max_size, wait_s=batch.max_wait_s)
            for name, batch in forwarder.batches().items()}

    async def run(self, job: Job) -> Outcome:
        endpoint = job.envelope.endpoint
        if endpoint is None:
            return await self.handlers.run(job)
        if self._batchers and endpoint in self._batchers:  # an empty dict: the one check unbatched pay
            outcome: Outcome = await self._batchers[endpoint].submit(job)
            return outcome
        envelope = job.envelope
        request = ForwardRequest(
            endpoint=endpoint, method=envelope.method, path=envelope.path, query=envelope.query,
            headers=envelope.headers, body=envelope.body, content_type=envelope.content_type,
            traceparent=envelope.traceparent, correlation_id=envelope.correlation_id,
            client=envelope.caller or Caller())
        response = await self._call(request)
        log.info("forwarded", endpoint=endpoint, status_code=response.status_code,
                 elapsed_ms=round(response.elapsed_s * 1000, 3))
        return Outcome(result_json(response), raw_response=response.body)

    async def _send_batch(self, endpoint: str, jobs: list[Job]) -> list[Outcome | Exception]:
        outcomes = await send_batch(endpoint, jobs, self._call)
        log.info("forwarded a batch", endpoint=endpoint, size=len(jobs))
        return outcomes

    async def _call(self, request: ForwardRequest) -> ForwardResponse:
        """The call, its metrics, and its errors as the processor knows them."""
        endpoint = request.endpoint
        started = time.perf_counter()
        try:
            response = await self.forwarder.forward(request)
        except CircuitOpen as exc:
            self._observe(endpoint, None, started)
            raise TargetDeferred(f"circuit of endpoint {endpoint!r} is open", delay_s=exc.retry_after_s or 1.0,
                                 waiting_on=f"circuit:{endpoint}") from exc
        except ForwardError as exc:
            self._observe(endpoint, exc.status_code, started)
            raise TargetFailed(str(exc), retryable=exc.retryable, retry_after_s=exc.retry_after_s,
                               status_code=exc.status_code) from exc
        self._observe(endpoint, response.status_code, started)
        return response

    def _observe(self, endpoint: str, status: int | None, started: float) -> None:
        metrics.child(metrics.UPSTREAM_REQUESTS, endpoint, metrics.status_class(status)).inc()
        metrics.child(metrics.UPSTREAM_DURATION, endpoint).observe(time.perf_counter() - started)
        state = _CIRCUIT_VALUES.get(self.forwarder.circuit_state(endpoint), 0)
        metrics.child(metrics.CIRCUIT_STATE, endpoint).set(state)

    def retry_policy(self, job: Job) -> RetryPolicy | None:
        endpoint = job.envelope.endpoint
        return self.handlers.retry_policy(job) if endpoint is None else self.forwarder.retry_policy(endpoint)

    def timeout_s(self, job: Job) -> float | None:
        return None if job.envelope.endpoint is not None else self.handlers.timeout_s(job)
