"""Settings of outbound authentication and TLS for an endpoint (`proxy.endpoints.<name>.auth`,
`.tls`), and the validators every proxy setting shares; docs/proxy.md explains each key."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, TypeVar

import httpx
from pydantic import Field, SecretStr, ValidationInfo, field_validator

from openhqm.settings_base import Section

T = TypeVar("T")
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # RFC 9110 token: header names and methods


def check_header_name(name: str) -> str:
    if not _TOKEN.match(name):
        raise ValueError(f"{name!r} is not a valid HTTP header name")
    return name


def header_safe(secret: SecretStr) -> SecretStr:
    if any(ch in secret.get_secret_value() for ch in "\r\n\0"):
        raise ValueError("must not contain CR, LF or NUL characters")
    return secret


def needs(other: str) -> Callable[[T, ValidationInfo], T]:
    """A field validator: this optional field may be set only together with `other` (declared before it)."""

    def check(value: T, info: ValidationInfo) -> T:
        if value is not None and info.data.get(other) is None:
            raise ValueError(f"{info.field_name} needs {other}")
        return value

    return check


def parse_http_url(url: str) -> httpx.URL:
    """The one rule for URLs openhqm calls (endpoints, token URLs, callbacks): absolute http(s)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"not a valid URL: {exc}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError("must be an absolute http:// or https:// URL")
    return parsed


def http_url(url: str) -> str:
    parse_http_url(url)
    return url

class BearerAuth(Section):
    type: Literal["bearer"]
    token: SecretStr

    _check_token = field_validator("token")(header_safe)


class ApiKeyAuth(Section):
    type: Literal["api_key"]
    header: str = "X-API-Key"
    key: SecretStr

    _check_header = field_validator("header")(check_header_name)
    _check_key = field_validator("key")(header_safe)


class BasicAuth(Section):
    type: Literal["basic"]
    username: str
    password: SecretStr

    @field_validator("username")
    @classmethod
    def _no_colon(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("a Basic auth username cannot contain ':'")
        return value


class CustomAuth(Section):
    type: Literal["custom"]
    header: str
    value: SecretStr

    _check_header = field_validator("header")(check_header_name)
    _check_value = field_validator("value")(header_safe)


class TLSSettings(Section):
    verify: bool = True
    ca_file: Path | None = Field(None, description="trust only this CA bundle (replaces the public roots)")
    client_cert: Path | None = Field(None, description="PEM certificate for mutual TLS")
    client_key: Path | None = Field(None, description="PEM private key (unencrypted) for client_cert")

    _key_needs_cert = field_validator("client_key")(needs("client_cert"))


class OAuth2ClientCredentials(Section):
    type: Literal["oauth2_client_credentials"]
    token_url: str
    client_id: str
    client_secret: SecretStr
    scope: str | None = None
    client_auth: Literal["basic", "body"] = Field(
        "basic", description="send client_id/client_secret as HTTP Basic (RFC 6749 2.3.1) or in the form body"
    )
    refresh_before_s: float = Field(
        30.0, ge=0, description="refresh this long before expiry (at most half the token's lifetime)"
    )
    tls: TLSSettings = TLSSettings()

    _check_url = field_validator("token_url")(http_url)


AuthSettings = Annotated[
    BearerAuth | ApiKeyAuth | BasicAuth | CustomAuth | OAuth2ClientCredentials, Field(discriminator="type")
]
