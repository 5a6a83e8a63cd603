"""What every settings section shares: unknown keys are errors, defaults are validated, and a retry
section becomes the one retry policy value (openhqm.policies) in one place."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from openhqm.policies import Backoff, RetryPolicy


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


class RetrySection(Section):
    """The keys every retry section has (`worker.retry`, a handler's retry, an endpoint's, callbacks')."""

    max_attempts: int = Field(3, ge=1, description="every try counts, the first one included")
    base_delay_s: float = Field(1.0, ge=0)
    max_delay_s: float = Field(60.0, ge=0, description="also caps a server's Retry-After")

    def policy(self) -> RetryPolicy:
        return RetryPolicy(self.max_attempts, Backoff(self.base_delay_s, self.max_delay_s))
