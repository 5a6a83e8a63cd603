"""The proxy-mode target: a job becomes an HTTP call to a configured endpoint.

A backend's answer, any status, is the result (a 4xx is a COMPLETED request carrying it). Failures
become TargetFailed with the endpoint's retry policy; an open circuit defers the message without
counting a try, so a broken backend is neither hammered nor failed for being down.
"""

from __future__ import annotations

import time

from openhqm import metrics
from openhqm.envelope import Caller
from openhqm.errors import TargetDeferred, TargetFailed
from openhqm.forward import CircuitOpen, Forwarder, ForwardError, ForwardRequest, result_json
from openhqm.logging import get_logger
from openhqm.policies import RetryPolicy
from openhqm.routing import Routing
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

    async def run(self, job: Job) -> Outcome:
        endpoint = job.envelope.endpoint
        if endpoint is None:
            return await self.handlers.run(job)
        envelope = job.envelope
        request = ForwardRequest(
            endpoint=endpoint, method=envelope.method, path=envelope.path, query=envelope.query,
            headers=envelope.headers, body=envelope.body, content_type=envelope.content_type,
            traceparent=envelope.traceparent, correlation_id=envelope.correlation_id,
            client=envelope.caller or Caller())
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
        log.info("forwarded", endpoint=endpoint, status_code=response.status_code,
                 elapsed_ms=round(response.elapsed_s * 1000, 3))
        return Outcome(result_json(response), raw_response=response.body)

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
