"""Targets: what runs a job — a registered Python handler, or (proxy mode) an HTTP endpoint.

A target never decides where a request goes: the listener's Routing did, at submit, and wrote it
into the envelope. Only a message without that decision (another system's raw message) is routed
here, once, by `route()` with the same Routing, as a request for the default endpoint or handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

from openhqm.envelope import Envelope
from openhqm.errors import TargetDeferred, TargetFailed
from openhqm.policies import RetryPolicy
from openhqm.routing import Routing
from openhqm.worker.handlers import HandlerRegistry, Job

__all__ = ["HandlerTarget", "Outcome", "Target", "TargetDeferred", "TargetFailed", "routed"]


@dataclass(frozen=True)
class Outcome:
    result: Any
    raw_response: bytes | None = None


class Target(Protocol):
    accepts_raw: bool
    routing: Routing

    async def run(self, job: Job) -> Outcome: ...

    def retry_policy(self, job: Job) -> RetryPolicy | None:
        """The policy for this job's target; None: the worker's `worker.retry`."""

    def timeout_s(self, job: Job) -> float | None: ...


def routed(envelope: Envelope, routing: Routing) -> Envelope:
    """The envelope with its route; RequestRejected when there is none to give it."""
    if envelope.endpoint is not None or envelope.handler is not None:
        return envelope
    endpoint, handler = routing.choose(None, None)
    return msgspec.structs.replace(envelope, endpoint=endpoint, handler=handler)


class HandlerTarget:
    """Runs the envelope's handler."""

    accepts_raw = False

    def __init__(self, handlers: HandlerRegistry, default_handler: str) -> None:
        self.handlers = handlers
        self.routing = Routing(handlers, default_handler)

    @staticmethod
    def _handler_name(job: Job) -> str:
        return job.envelope.handler or ""  # routed: set whenever no endpoint is

    async def run(self, job: Job) -> Outcome:
        handler = self.handlers.get(self._handler_name(job))
        return Outcome(await handler(job))

    def retry_policy(self, job: Job) -> RetryPolicy | None:
        name = self._handler_name(job)
        retry = self.handlers.get(name).retry if name in self.handlers else None
        return retry.policy() if retry is not None else None

    def timeout_s(self, job: Job) -> float | None:
        name = self._handler_name(job)
        return self.handlers.get(name).timeout_s if name in self.handlers else None
