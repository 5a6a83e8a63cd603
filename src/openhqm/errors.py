"""The single exception tree of openhqm.

    OpenHQMError
    ├── ConfigError (ValueError)            a setting is missing, unknown or invalid
    ├── MissingDependency (ImportError)     an optional extra is not installed
    ├── BackendError                        a broker or store failed
    │   ├── BackendUnavailable              cannot reach it now; retry later (HTTP 503)
    │   │   ├── StoreFull                   it cannot write: the disk is full (SQLITE_FULL)
    │   │   └── QueueFull                   queue.max_pending requests already wait: refused, nothing written
    │   └── AlreadySettled                  a delivery was acked/nacked twice
    ├── RequestRejected                     a client's request is invalid (carries the 4xx status)
    │   ├── NotFound                        unknown, expired or foreign id (404)
    │   ├── Conflict                        the request is in a state that forbids it (409)
    │   └── UnsafeURL                       a URL from a request points at a refused address (SSRF guard, 400)
    ├── AlreadyExists                       a result store already holds that correlation id
    ├── UndecodableMessage                  a queued message is not an envelope or reply we understand
    ├── ForwardError                        an HTTP call failed; carries retryable, retry_after_s, status_code
    │   ├── UpstreamTimeout                 connect or read took too long (retryable)
    │   ├── UpstreamUnavailable             connection refused/reset, DNS or TLS failure (retryable)
    │   ├── CircuitOpen                     the endpoint's breaker is open; come back after retry_after_s
    │   ├── ResponseTooLarge                the response passed max_response_bytes (not retryable)
    │   ├── AuthFailed                      the OAuth2 token endpoint refused or failed
    │   └── CallbackFailed                  a callback could not be delivered (after its retries)
    ├── ClientError                         the Python client got an error answer; .status_code, .detail
    │   ├── Unauthorized                    401: missing or invalid API key / token
    │   │   └── Forbidden                   403: the credential lacks the scope the operation needs
    │   ├── RequestNotFound                 404: unknown, expired or another client's request
    │   ├── RequestFailed                   the request ended FAILED, EXPIRED or CANCELLED; .result holds it
    │   └── RequestTimeout                  the client's wait() ran out before the request finished
    ├── TargetFailed                        a handler or HTTP backend failed (retryable or not)
    ├── TargetDeferred                      not tried now (circuit open): requeue without counting a try
    │   └── LimitWait                       over a flow limit: requeue for when it may run (flow/limiter.py)
    ├── JobCancelled                        the client cancelled the request while it ran: ack, no reply
    ├── Retry                               raised by handlers on purpose: try again after delay_s
    └── DeadLetter                          raised by handlers on purpose: give up now, with a reason

`Retry` and `DeadLetter` are control flow, not failures, and are not logged as errors. A retryable
status from an HTTP backend (endpoint `retry.on_status`) raises a plain ForwardError with
retryable=True, the status_code and the parsed Retry-After. Messages never hold configured secrets.
"""

from __future__ import annotations

from typing import Any


class OpenHQMError(Exception):
    """Base of every error openhqm raises on purpose."""


class ConfigError(OpenHQMError, ValueError):
    pass


class MissingDependency(OpenHQMError, ImportError):
    pass


class BackendError(OpenHQMError):
    pass


class BackendUnavailable(BackendError):
    """`reason` names the cause in bounded words: the refused-submit metric's label and the 503's
    `reason` field, so a client or an alert can tell an outage from overload."""

    reason = "unavailable"


class StoreFull(BackendUnavailable):
    """Nothing of the refused operation was written; writes resume by themselves once space returns."""

    reason = "store_full"


class QueueFull(BackendUnavailable):
    reason = "queue_full"


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
                 status_code: int | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.status_code = status_code  # the backend's answer, when there was one


class TargetDeferred(OpenHQMError):
    """Not run, not a try: `waiting_on` names what it waits for (the status JSON shows it)."""

    def __init__(self, message: str, *, delay_s: float, waiting_on: str) -> None:
        super().__init__(message)
        self.delay_s = delay_s
        self.waiting_on = waiting_on


class LimitWait(TargetDeferred):
    """Over a flow limit: `ticket_at` is the time its rate tokens are reserved for (it runs then without
    taking others), `waits` how often concurrency made it wait (its next backoff grows with it)."""

    def __init__(self, message: str, *, delay_s: float, waiting_on: str, ticket_at: float | None,
                 waits: int) -> None:
        super().__init__(message, delay_s=delay_s, waiting_on=waiting_on)
        self.ticket_at = ticket_at
        self.waits = waits


class JobCancelled(OpenHQMError):
    def __init__(self, correlation_id: str) -> None:
        super().__init__(f"request {correlation_id} was cancelled while it ran")


class AlreadyExists(OpenHQMError):
    pass


class UndecodableMessage(OpenHQMError):
    """A queued message is not an envelope of a version we understand."""


class UnsafeURL(RequestRejected):
    """A callback URL was refused; the message names the host and the reason (HTTP 400)."""

    status = 400


class ForwardError(OpenHQMError):
    """`retryable`: the worker may try again (after `retry_after_s` when the server or breaker gave one).

    `response` holds the backend's answer (an openhqm.forward.ForwardResponse) when it sent one (a
    retryable status), so a caller that gives up can still report what the backend said.
    """

    retryable: bool = False

    def __init__(self, message: str, *, retryable: bool | None = None, retry_after_s: float | None = None,
                 status_code: int | None = None, endpoint: str | None = None, response: Any = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.status_code = status_code
        self.endpoint = endpoint
        self.response = response

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.message!r}, retryable={self.retryable}, "
                f"retry_after_s={self.retry_after_s}, status_code={self.status_code})")


class UpstreamTimeout(ForwardError):
    retryable = True


class UpstreamUnavailable(ForwardError):
    retryable = True


class CircuitOpen(ForwardError):
    """Not a failure of this message: delay it back onto the queue for `retry_after_s`."""

    retryable = True


class ResponseTooLarge(ForwardError):
    retryable = False


class AuthFailed(ForwardError):
    pass


class CallbackFailed(ForwardError):
    """`attempts` calls were made; the last status (if any) is in `status_code`."""

    def __init__(self, message: str, *, attempts: int, status_code: int | None = None) -> None:
        super().__init__(message, retryable=False, status_code=status_code)
        self.attempts = attempts


class Retry(OpenHQMError):
    """Raise from a handler to run it again after `delay_s` (or the retry policy's backoff)."""

    def __init__(self, reason: str = "retry requested", *, delay_s: float | None = None) -> None:
        super().__init__(reason)
        self.delay_s = delay_s

    def __repr__(self) -> str:
        return f"Retry({self.args[0]!r}, delay_s={self.delay_s})"


class DeadLetter(OpenHQMError):
    """Raise from a handler to give up at once: the request is dead-lettered and FAILED."""


class ClientError(OpenHQMError):
    def __init__(self, message: str, *, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class Unauthorized(ClientError):
    pass


class Forbidden(Unauthorized):
    pass


class RequestNotFound(ClientError):
    pass


class RequestFailed(ClientError):
    def __init__(self, result: Any) -> None:  # an openhqm.client.RequestResult
        super().__init__(f"request {result.correlation_id} ended {result.status}: {result.error}")
        self.result = result
        self.error: str | None = result.error


class RequestTimeout(ClientError):
    def __init__(self, correlation_id: str, timeout_s: float, last: Any) -> None:  # RequestResult | None
        state = last.status if last else "unknown"
        super().__init__(f"request {correlation_id} did not finish within {timeout_s:g} s (last state: {state})")
        self.correlation_id = correlation_id
        self.last = last
