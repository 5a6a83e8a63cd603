"""The single exception tree of openhqm.

    OpenHQMError
    ├── ConfigError (ValueError)            a setting is missing, unknown or invalid
    ├── MissingDependency (ImportError)     an optional extra is not installed
    ├── BackendError                        a broker or store failed
    │   ├── BackendUnavailable              cannot reach it now; retry later (HTTP 503)
    │   └── AlreadySettled                  a delivery was acked/nacked twice
    ├── RequestRejected                     a client's request is invalid (carries the 4xx status)
    ├── NotFound (RequestRejected)          unknown, expired or foreign id (404)
    ├── Conflict (RequestRejected)          the request is in a state that forbids it (409)
    ├── AlreadyExists (KeyError)            a store already holds that correlation id
    ├── TargetFailed                        a handler or HTTP backend failed (retryable or not)
    ├── TargetDeferred                      not tried now (circuit open): requeue without counting a try
    ├── Retry                               raised by handlers on purpose: try again after delay_s
    └── DeadLetter                          raised by handlers on purpose: give up now, with a reason

`Retry` and `DeadLetter` are control flow, not failures, and are not logged as errors.
"""

from __future__ import annotations


class OpenHQMError(Exception):
    """Base of every error openhqm raises on purpose."""


class ConfigError(OpenHQMError, ValueError):
    pass


class MissingDependency(OpenHQMError, ImportError):
    pass


class BackendError(OpenHQMError):
    pass


class BackendUnavailable(BackendError):
    pass


class AlreadySettled(BackendError):
    pass


class RequestRejected(OpenHQMError):
    """A client error; `status` is the HTTP status the API answers with."""

    status: int = 400

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class NotFound(RequestRejected):
    status = 404


class Conflict(RequestRejected):
    status = 409


class TargetFailed(OpenHQMError):
    def __init__(self, message: str, *, retryable: bool = True, retry_after_s: float | None = None,
                 max_age_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.max_age_s = max_age_s


class TargetDeferred(OpenHQMError):
    def __init__(self, message: str, *, delay_s: float) -> None:
        super().__init__(message)
        self.delay_s = delay_s


class AlreadyExists(OpenHQMError, KeyError):
    pass


class Retry(OpenHQMError):
    """Raise from a handler to run it again after `delay_s` (or the retry policy's backoff)."""

    def __init__(self, reason: str = "retry requested", *, delay_s: float | None = None) -> None:
        super().__init__(reason)
        self.delay_s = delay_s

    def __repr__(self) -> str:
        return f"Retry({self.args[0]!r}, delay_s={self.delay_s})"


class DeadLetter(OpenHQMError):
    """Raise from a handler to give up at once: the request is dead-lettered and FAILED."""
