"""Result callbacks: POST a JSON result to a URL given by the request, signed per Standard Webhooks.

Headers: webhook-id (the same on every retry, so receivers can deduplicate), webhook-timestamp
(unix seconds, per attempt) and webhook-signature "v1,<base64 HMAC-SHA256(key, id.timestamp.body)>".
Each attempt resolves the host again, refuses unsafe addresses (ssrf.resolve_and_check) and connects
to the address it checked. Redirects are not followed: a 3xx is a failed delivery, not retried, as
a redirect target would need its own check and receivers are expected to answer 2xx.
Retried with backoff: connection errors, timeouts, DNS failures, 408, 429 and 5xx (Retry-After honoured).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib.metadata import version
from types import TracebackType
from typing import Any

import httpx
import orjson
from pydantic import SecretStr

from openhqm.errors import (
    CallbackFailed,
    ConfigError,
    OpenHQMError,
    RequestRejected,
    UnsafeURL,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from openhqm.forward.client import display_url, no_cookies
from openhqm.forward.retry import parse_retry_after
from openhqm.forward.settings import CallbackSettings, secret_key
from openhqm.forward.ssrf import AllowList, Target, check_url, resolve_and_check

DEFAULT_TOLERANCE_S = 300
USER_AGENT = f"openhqm/{version('openhqm')}"  # receivers see who calls, not the HTTP library


def sign(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    """The webhook-signature value for one message."""
    content = f"{webhook_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()


def verify(
    secret: str | SecretStr,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """What a receiver checks: a v1 signature matches and the timestamp is within `tolerance_s`."""
    lower = {k.lower(): v for k, v in headers.items()}
    webhook_id, stamp = lower.get("webhook-id"), lower.get("webhook-timestamp", "")
    if not webhook_id or not stamp.isdigit():
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance_s:
        return False
    key = secret_key(secret if isinstance(secret, SecretStr) else SecretStr(secret))
    expected = sign(key, webhook_id, int(stamp), body)
    offered = lower.get("webhook-signature", "").split()
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)


def check_callback_url(url: str, settings: CallbackSettings) -> None:
    """At submit time, without DNS: RequestRejected (400) when callbacks are off or the URL is unsafe."""
    if not settings.enabled:
        raise RequestRejected("callback_url given, but callbacks are disabled (callbacks.enabled: false)")
    check_url(url, settings.allow_hosts)


@dataclass(frozen=True, slots=True)
class CallbackTry:
    """One HTTP attempt of a delivery, as the request's record keeps it."""

    at: float
    status_code: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class CallbackDelivery:
    webhook_id: str
    status_code: int
    attempts: int


class CallbackSender:
    """One per process. send() returns a CallbackDelivery or raises CallbackFailed (never UnsafeURL)."""

    def __init__(self, settings: CallbackSettings) -> None:
        if settings.secret is None:
            raise ConfigError("callbacks.secret must be set to send callbacks")
        self._settings = settings
        self._key = settings.secret_bytes()
        self._allow = AllowList.of(settings.allow_hosts)
        self._policy = settings.retry.policy()
        self._client: httpx.AsyncClient | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(self._settings.timeout_s), follow_redirects=False, trust_env=False,
                cookies=no_cookies(), headers={"User-Agent": USER_AGENT},
            )

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def __aenter__(self) -> CallbackSender:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def send(
        self, url: str, payload: Mapping[str, Any] | bytes, *, webhook_id: str | None = None,
        on_try: Callable[[CallbackTry], None] | None = None,
    ) -> CallbackDelivery:
        """Deliver `payload` (JSON-encoded unless bytes), retrying as configured. Pass the request's
        id as `webhook_id` so a redelivery after a crash carries the same id; `on_try` hears of
        every HTTP attempt (the request's record lists them)."""
        noted = on_try or (lambda _: None)
        body = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        webhook_id = webhook_id or "msg_" + secrets.token_urlsafe(18)
        where = display_url(url) if "://" in url else "the callback URL"
        attempts = 0
        while True:
            attempts += 1
            status: int | None = None
            retry_after: float | None = None
            at = time.time()
            try:
                target = await resolve_and_check(url, self._allow)
                status, retry_after = await self._attempt(target, body, webhook_id)
            except UnsafeURL as exc:
                noted(CallbackTry(at, None, f"refused: {exc.message}"))
                raise CallbackFailed(
                    f"callback to {where} refused: {exc.message}", attempts=attempts
                ) from exc
            except (UpstreamTimeout, UpstreamUnavailable) as exc:
                reason, retryable = exc.message, True
            else:
                if 200 <= status < 300:
                    noted(CallbackTry(at, status, None))
                    return CallbackDelivery(webhook_id, status, attempts)
                reason, retryable = f"receiver answered HTTP {status}", status in (408, 429) or status >= 500
            noted(CallbackTry(at, status, reason))
            delay_s = self._policy.next_delay_s(attempts, retry_after_s=retry_after) if retryable else None
            if delay_s is None:
                raise CallbackFailed(
                    f"callback to {where} failed after {attempts} attempt(s): {reason}",
                    attempts=attempts,
                    status_code=status,
                )
            await asyncio.sleep(delay_s)

    async def _attempt(self, target: Target, body: bytes, webhook_id: str) -> tuple[int, float | None]:
        if self._client is None:
            raise OpenHQMError("CallbackSender.start() was not called")
        timestamp = int(time.time())
        headers = {
            **target.pin_headers(),
            "Content-Type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._key, webhook_id, timestamp, body),
        }
        request = self._client.build_request(
            "POST", target.connect_url(), content=body, headers=headers, extensions=target.extensions()
        )
        where = display_url(target.url)
        try:
            async with asyncio.timeout(self._settings.timeout_s):
                response = await self._client.send(request, stream=True)
                await response.aclose()  # the receiver's body is not needed
        except (TimeoutError, httpx.TimeoutException) as exc:
            raise UpstreamTimeout(f"{where} timed out ({type(exc).__name__})") from exc
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"{where} unreachable ({type(exc).__name__}: {exc})") from exc
        return response.status_code, parse_retry_after(response.headers.get("retry-after"))
