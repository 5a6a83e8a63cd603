"""Outbound authentication: one header per call, from a static secret or an OAuth2 token cache.

OAuth2 client credentials (RFC 6749 4.4): the token is cached and refreshed `refresh_before_s`
before it expires (at most half its lifetime early). Refresh is single-flight: concurrent callers
wait for the one request in progress. If a refresh fails while the old token is still valid, the
old token is used. Secrets are read from SecretStr only when a header is built.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import quote

import httpx
from pydantic import SecretStr

from openhqm.errors import AuthFailed
from openhqm.forward.auth_settings import (
    ApiKeyAuth,
    AuthSettings,
    BasicAuth,
    BearerAuth,
    CustomAuth,
    OAuth2ClientCredentials,
)
from openhqm.forward.client import HTTP2_AVAILABLE, display_url, httpx_timeout, ssl_context
from openhqm.forward.settings import TimeoutSettings
from openhqm.redact import mask_secrets

log = logging.getLogger(__name__)

DEFAULT_TOKEN_LIFETIME_S = 300.0  # when the token endpoint omits expires_in


class Authenticator(Protocol):
    async def header(self) -> tuple[str, str]:
        """The (name, value) to set on the next call."""

    def invalidate(self, value: str) -> bool:
        """Forget a credential the backend refused (401); True when a fresh one may work."""

    def secrets(self) -> list[str]:
        """Every secret value this authenticator may send, for scrubbing messages."""

    async def aclose(self) -> None: ...


class StaticAuth:
    def __init__(
        self, header: str, secret: SecretStr, *, prefix: str = "", extra: Iterable[str] = ()
    ) -> None:
        self._header = header
        self._secret = secret
        self._prefix = prefix
        self._extra = list(extra)

    async def header(self) -> tuple[str, str]:
        return self._header, self._prefix + self._secret.get_secret_value()

    def invalidate(self, value: str) -> bool:
        return False

    def secrets(self) -> list[str]:
        return [self._secret.get_secret_value(), *self._extra]

    async def aclose(self) -> None:
        return None

    def __repr__(self) -> str:
        return f"StaticAuth(header={self._header!r})"


@dataclass(frozen=True, slots=True)
class _Token:
    value: str
    refresh_at: float
    expires_at: float

    def __repr__(self) -> str:
        return f"_Token(refresh_at={self.refresh_at}, expires_at={self.expires_at})"


class OAuth2TokenSource:
    def __init__(
        self,
        settings: OAuth2ClientCredentials,
        *,
        endpoint: str,
        timeouts: TimeoutSettings,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self._endpoint = endpoint
        self._clock = clock
        self._token: _Token | None = None
        self._lock = asyncio.Lock()
        self._seen: list[str] = []  # tokens handed out, so messages can be scrubbed of them
        self._client = httpx.AsyncClient(
            timeout=httpx_timeout(timeouts),
            verify=ssl_context(settings.tls, f"proxy.endpoints.{endpoint}.auth.tls"),
            http2=HTTP2_AVAILABLE,
            trust_env=False,
        )
        self.fetches = 0  # token requests made (observability and tests)

    async def header(self) -> tuple[str, str]:
        token = self._token
        if token is None or self._clock() >= token.refresh_at:
            token = await self._refresh(token)
        return "Authorization", "Bearer " + token.value

    def invalidate(self, value: str) -> bool:
        if self._token is not None and "Bearer " + self._token.value == value:
            self._token = None
            return True
        return False

    def secrets(self) -> list[str]:
        return [self._settings.client_secret.get_secret_value(), *self._seen]

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _refresh(self, stale: _Token | None) -> _Token:
        async with self._lock:
            current = self._token
            if current is not None and current is not stale and self._clock() < current.refresh_at:
                return current  # another caller refreshed it while this one waited
            try:
                self._token = await self._fetch()
            except AuthFailed:
                if stale is not None and self._clock() < stale.expires_at:
                    log.warning("endpoint %r: token refresh failed; using the current token", self._endpoint)
                    return stale
                raise
            return self._token

    async def _fetch(self) -> _Token:
        s = self._settings
        form = {"grant_type": "client_credentials"}
        if s.scope:
            form["scope"] = s.scope
        headers = {"Accept": "application/json"}
        if s.client_auth == "body":
            form.update(client_id=s.client_id, client_secret=s.client_secret.get_secret_value())
        else:
            # RFC 6749 2.3.1: form-encode id and secret before Basic encoding.
            pair = f"{quote(s.client_id, safe='')}:{quote(s.client_secret.get_secret_value(), safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        self.fetches += 1
        started = self._clock()
        try:
            response = await self._client.post(s.token_url, data=form, headers=headers)
        except httpx.HTTPError as exc:
            raise self._failed(f"token request failed: {type(exc).__name__}: {exc}", retryable=True) from exc
        if response.status_code != 200:
            code = _json(response).get("error")
            detail = f" ({code})" if code else ""
            retryable = response.status_code >= 500 or response.status_code == 429
            raise self._failed(
                f"token endpoint answered HTTP {response.status_code}{detail}", retryable=retryable
            )
        return self._parse(response, started)

    def _parse(self, response: httpx.Response, started: float) -> _Token:
        data = _json(response)
        value = data.get("access_token")
        token_type = data.get("token_type") or "bearer"
        if not isinstance(value, str) or not value or any(ch in value for ch in "\r\n\0"):
            raise self._failed("token endpoint sent no usable access_token", retryable=False)
        if not isinstance(token_type, str) or token_type.lower() != "bearer":
            raise self._failed(f"token_type {token_type!r} is not supported (only bearer)", retryable=False)
        expires_in = data.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) and expires_in > 0 else None
        lifetime = lifetime or DEFAULT_TOKEN_LIFETIME_S
        margin = min(self._settings.refresh_before_s, lifetime / 2)
        self._seen = [*self._seen[-3:], value]
        # Lifetimes count from when the request was sent: the token may be older than the response.
        return _Token(value=value, refresh_at=started + lifetime - margin, expires_at=started + lifetime)

    def _failed(self, message: str, *, retryable: bool) -> AuthFailed:
        where = display_url(self._settings.token_url)
        text = mask_secrets(f"endpoint {self._endpoint!r}: {message} ({where})", self.secrets())
        return AuthFailed(text, retryable=retryable, endpoint=self._endpoint)

    def __repr__(self) -> str:
        return f"OAuth2TokenSource(endpoint={self._endpoint!r}, client_id={self._settings.client_id!r})"


def _json(response: httpx.Response) -> dict[str, object]:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def build_auth(
    settings: AuthSettings | None, *, endpoint: str, timeouts: TimeoutSettings
) -> Authenticator | None:
    if settings is None:
        return None
    if isinstance(settings, BearerAuth):
        return StaticAuth("Authorization", settings.token, prefix="Bearer ")
    if isinstance(settings, ApiKeyAuth):
        return StaticAuth(settings.header, settings.key)
    if isinstance(settings, CustomAuth):
        return StaticAuth(settings.header, settings.value)
    if isinstance(settings, BasicAuth):
        password = settings.password.get_secret_value()
        pair = base64.b64encode(f"{settings.username}:{password}".encode()).decode()
        return StaticAuth("Authorization", SecretStr(pair), prefix="Basic ", extra=[password])
    return OAuth2TokenSource(settings, endpoint=endpoint, timeouts=timeouts)
