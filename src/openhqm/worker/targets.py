"""Targets: what runs a job — a registered Python handler, or (proxy mode) an HTTP endpoint."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from openhqm.errors import TargetDeferred, TargetFailed
from openhqm.policies import RetryPolicy
from openhqm.worker.handlers import HandlerRegistry, Job

__all__ = ["HandlerTarget", "Outcome", "Target", "TargetDeferred", "TargetFailed"]


@dataclass(frozen=True)
class Outcome:
    result: Any
    raw_response: bytes | None = None


class Target(Protocol):
    accepts_raw: bool

    async def run(self, job: Job) -> Outcome: ...

    def retry_policy(self, job: Job) -> RetryPolicy | None:
        """The policy for this job's target; None: the worker's `worker.retry`."""

    def timeout_s(self, job: Job) -> float | None: ...


class HandlerTarget:
    """Runs `envelope.handler`, else the configured default handler."""

    accepts_raw = False

    def __init__(self, handlers: HandlerRegistry, default_handler: str) -> None:
        self.handlers = handlers
        self.default_handler = default_handler

    def _name(self, job: Job) -> str:
        return job.envelope.handler or self.default_handler

    async def run(self, job: Job) -> Outcome:
        handler = self.handlers.get(self._name(job))
        return Outcome(await handler(job))

    def retry_policy(self, job: Job) -> RetryPolicy | None:
        name = self._name(job)
        retry = self.handlers.get(name).retry if name in self.handlers else None
        return retry.policy() if retry is not None else None

    def timeout_s(self, job: Job) -> float | None:
        name = self._name(job)
        return self.handlers.get(name).timeout_s if name in self.handlers else None
