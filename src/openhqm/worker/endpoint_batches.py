"""An endpoint's batch: one POST with a JSON array of the payloads, one array element back per request.

The backend must answer 2xx with a JSON array of the same length, in order; element i is the body
of request i's result (the result keeps the usual {"status_code", "headers", "body"} shape). Any
other answer, a wrong-length array included, is one failed attempt for every request of the batch,
retried by the endpoint's policy; an open circuit defers them all without counting a try.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson

from openhqm.errors import DeadLetter, TargetFailed
from openhqm.forward import ForwardRequest
from openhqm.forward.models import ForwardResponse
from openhqm.worker.handlers import Job
from openhqm.worker.targets import Outcome

__all__ = ["send_batch"]


async def send_batch(endpoint: str, jobs: list[Job], call: Callable[[ForwardRequest], Awaitable[ForwardResponse]]
                     ) -> list[Outcome | Exception]:
    """One call for `jobs`; `call(request)` forwards it (ForwardTarget's call, which maps errors).
    A request whose body is not JSON fails alone (it cannot be an array element) and is not sent."""
    results: list[Outcome | Exception | None] = [None] * len(jobs)
    parts: list[bytes] = []
    sent: list[int] = []
    for i, job in enumerate(jobs):
        body = job.envelope.body
        try:
            orjson.loads(body) if body.strip() else None
        except orjson.JSONDecodeError:
            results[i] = DeadLetter(f"endpoint {endpoint!r} takes batches as a JSON array; this payload is "
                                    f"not JSON")
            continue
        parts.append(body if body.strip() else b"null")
        sent.append(i)
    if sent:
        first = jobs[sent[0]].envelope
        request = ForwardRequest(endpoint=endpoint, method="POST", body=b"[" + b",".join(parts) + b"]",
                                 content_type="application/json", traceparent=first.traceparent)
        response = await call(request)
        for i, outcome in zip(sent, _split(endpoint, response, len(sent)), strict=True):
            results[i] = outcome
    return [r if r is not None else RuntimeError("batch result missing") for r in results]


def _split(endpoint: str, response: ForwardResponse, size: int) -> list[Outcome]:
    status = response.status_code
    if not 200 <= status < 300:
        raise TargetFailed(f"endpoint {endpoint!r} answered the batch of {size} with HTTP {status}; "
                           f"a batch needs 2xx with a JSON array", status_code=status)
    try:
        answer = orjson.loads(response.body)
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, list):
        raise TargetFailed(f"endpoint {endpoint!r} answered the batch of {size} without a JSON array",
                           status_code=status)
    if len(answer) != size:
        raise TargetFailed(f"endpoint {endpoint!r} answered a batch of {size} requests with an array of "
                           f"{len(answer)} results; it must be one result per request, in order",
                           status_code=status)
    headers: dict[str, str] = {}
    for name, value in response.headers:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return [Outcome({"status_code": status, "headers": headers, "body": element}, raw_response=orjson.dumps(element))
            for element in answer]

