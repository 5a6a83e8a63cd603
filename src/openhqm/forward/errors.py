"""Errors of forwarding and callbacks, under openhqm's single tree.

    OpenHQMError
    ├── ForwardError                    a call failed; carries retryable, retry_after_s, status_code
    │   ├── UpstreamTimeout             connect or read took too long (retryable)
    │   ├── UpstreamUnavailable         connection refused/reset, DNS or TLS failure (retryable)
    │   ├── CircuitOpen                 the endpoint's breaker is open; come back after retry_after_s
    │   ├── ResponseTooLarge            the response passed max_response_bytes (not retryable)
    │   ├── AuthFailed                  the OAuth2 token endpoint refused or failed
    │   └── CallbackFailed              a callback could not be delivered (after its retries)
    └── RequestRejected (status 400)
        └── UnsafeURL                   a URL from a request points at a refused address (SSRF guard)

A retryable status from the backend (endpoint `retry.on_status`) raises a plain ForwardError with
retryable=True, the status_code and the parsed Retry-After. Messages never hold configured secrets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from openhqm.errors import OpenHQMError, RequestRejected

if TYPE_CHECKING:
    from openhqm.forward.models import ForwardResponse


class ForwardError(OpenHQMError):
    """`retryable`: the worker may try again (after `retry_after_s` when the server or breaker gave one).

    `response` holds the backend's answer when it sent one (a retryable status), so a worker that
    gives up can still report what the backend said.
    """

    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        retryable: bool | None = None,
        retry_after_s: float | None = None,
        status_code: int | None = None,
        endpoint: str | None = None,
        response: ForwardResponse | None = None,
    ) -> None:
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
        return (
            f"{type(self).__name__}({self.message!r}, retryable={self.retryable}, "
            f"retry_after_s={self.retry_after_s}, status_code={self.status_code})"
        )


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


class UnsafeURL(RequestRejected):
    """A callback URL was refused; the message names the host and the reason (HTTP 400)."""

    status = 400
