"""Settings of the proxy (`proxy.*`) and of result callbacks (`callbacks.*`); docs/proxy.md explains each key.

Unknown keys are errors; secrets are SecretStr so repr() and logs show '**********'.
Cross-field checks are field validators (not model validators) so an error names the exact key and
openhqm.config never echoes a whole endpoint, secrets included, back to the user.
This module must not import openhqm.config, which imports it.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import math
import re
from dataclasses import replace
from typing import Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator

from openhqm.forward.auth_settings import (
    AuthSettings,
    TLSSettings,
    check_header_name,
    http_url,
    needs,
)
from openhqm.policies import RetryPolicy
from openhqm.settings_base import RetrySection, Section

MiB = 1024 * 1024
DEFAULT_RETRY_STATUSES = (429, 502, 503, 504)
DEFAULT_ENDPOINT_NAME = "default"  # the endpoint made from a `default_endpoint` URL

_HEADER_PATTERN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z?\[\]-]+$")  # a name, or a glob such as X-Trace-*
_ENDPOINT_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
_HOST_NAME = re.compile(r"^(\*\.)?[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?$")


# --- one endpoint --------------------------------------------------------------------------------


class TimeoutSettings(Section):
    connect: float = Field(5.0, gt=0, description="TCP + TLS connect, and waiting for a pooled connection")
    read: float = Field(30.0, gt=0, description="waiting for each chunk of the response (and to send one)")
    total: float | None = Field(None, gt=0, description="the whole exchange, body included")
    # Below the common servers' own keep-alive (uvicorn, Node, Apache: 5 s): a pooled connection the
    # backend is closing is never reused for a POST, which would fail and cost the request a try.
    keepalive: float = Field(4.0, gt=0, description="an idle pooled connection is closed after this")


class ForwardRetrySettings(RetrySection):
    on_status: list[int] = Field(default_factory=lambda: list(DEFAULT_RETRY_STATUSES))
    max_age_s: float | None = Field(None, gt=0, description="give up once the request is this old")

    def policy(self) -> RetryPolicy:
        return replace(super().policy(), max_age_s=self.max_age_s)

    @field_validator("on_status")
    @classmethod
    def _statuses(cls, value: list[int]) -> list[int]:
        bad = [code for code in value if not 100 <= code <= 599]
        if bad:
            raise ValueError(f"not HTTP status codes: {bad}")
        return value


class CircuitSettings(Section):
    enabled: bool = True
    failure_threshold: int = Field(5, ge=1, description="consecutive failures that open the circuit")
    reset_timeout_s: float = Field(30.0, gt=0, description="cool-down while open before a trial call")
    half_open_max_calls: int = Field(1, ge=1, description="trial calls let through at once when half-open")


_NOT_STATIC = frozenset(
    {"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade", "content-length"}
)
_FLAT_AUTH = ("auth_type", "auth_token", "auth_username", "auth_password", "auth_header_name")


class BatchSettings(Section):
    """Requests for the endpoint go out together: one POST with a JSON array of the payloads."""

    max_size: int = Field(100, ge=1, description="requests in one call at most")
    max_wait_s: float = Field(0.5, gt=0, description="how long the first request waits for others")


class EndpointSettings(Section):
    url: str
    method: str = "POST"
    timeout_s: float | TimeoutSettings = Field(30.0, description="seconds for the whole call, or per phase")
    headers: dict[str, str] = Field(default_factory=dict, description="static headers added to every call")
    forward_headers: list[str] = Field(default_factory=lambda: ["*"])
    strip_headers: list[str] = Field(default_factory=list)
    max_concurrency: int = Field(100, ge=1, description="calls in flight at once; set: shared (flow/limits.py)")
    rate_limit_per_s: float | None = Field(None, gt=0, description="calls started per second, shared by workers")
    rate_burst: int | None = Field(None, ge=1, description="calls allowed at once above the rate")
    follow_redirects: bool = False
    max_response_bytes: int = Field(10 * MiB, gt=0)
    tls: TLSSettings = TLSSettings()
    auth: AuthSettings | None = None
    retry: ForwardRetrySettings | None = Field(None, description="unset: the worker's retry settings apply")
    circuit: CircuitSettings = CircuitSettings()
    batch: BatchSettings | None = Field(None, description="set: requests are sent in batches (JSON arrays)")

    @model_validator(mode="before")
    @classmethod
    def _flat_auth(cls, data: Any) -> Any:
        """Accept the original flat form (`auth_type: bearer`, `auth_token: ...`) as `auth`."""
        if not isinstance(data, dict) or "auth_type" not in data or "auth" in data:
            return data
        data = dict(data)
        flat = {key: data.pop(key) for key in _FLAT_AUTH if key in data}
        kind = flat["auth_type"]
        if kind is None:
            return data
        kind = str(kind).lower()
        token, header = flat.get("auth_token"), flat.get("auth_header_name")
        auth: dict[str, Any] = {"type": kind}
        if kind == "bearer":
            auth["token"] = token
        elif kind == "api_key":
            auth.update(header=header or "X-API-Key", key=token)
        elif kind == "basic":
            auth.update(username=flat.get("auth_username"), password=flat.get("auth_password"))
        elif kind == "custom":
            auth.update(header=header or "Authorization", value=token)
        data["auth"] = {key: value for key, value in auth.items() if value is not None}
        return data

    _check_url = field_validator("url")(http_url)

    @field_validator("method")
    @classmethod
    def _method(cls, value: str) -> str:
        return check_header_name(value).upper()

    @field_validator("headers")
    @classmethod
    def _static_headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, header_value in value.items():
            check_header_name(name)
            if name.lower() in _NOT_STATIC:
                raise ValueError(f"header {name!r} is managed by the HTTP client and cannot be set")
            if any(ch in header_value for ch in "\r\n\0"):
                raise ValueError(f"header {name!r}: value must not contain CR, LF or NUL")
        return value

    @field_validator("forward_headers", "strip_headers")
    @classmethod
    def _header_patterns(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not _HEADER_PATTERN.match(name)]
        if bad:
            raise ValueError(f"not header names or patterns: {bad}")
        return value

    _burst_needs_rate = field_validator("rate_burst")(needs("rate_limit_per_s"))

    @property
    def timeouts(self) -> TimeoutSettings:
        """A number N bounds the whole call to N seconds, and connect and each read to N as well."""
        if isinstance(self.timeout_s, TimeoutSettings):
            return self.timeout_s
        return TimeoutSettings(connect=self.timeout_s, read=self.timeout_s, total=self.timeout_s)

    @property
    def burst(self) -> int:
        """Tokens in the bucket when full: rate_burst, or one second's worth of calls."""
        if self.rate_burst is not None:
            return self.rate_burst
        return max(1, math.ceil(self.rate_limit_per_s or 1))


# --- routing, sidecar and the proxy section ----------------------------------------------------


class HeaderMatch(Section):
    name: str
    value: str | None = Field(None, description="exact value; unset: the header is present")

    _check_name = field_validator("name")(check_header_name)


class JsonFieldMatch(Section):
    path: str = Field(description="dotted path into a JSON payload: customer.region, items.0.sku")
    equals: str | int | float | bool | None = Field(None, description="unset: the field is present")


class RouteRule(Section):
    """Every condition given must hold; the first matching rule in the list wins."""

    endpoint: str
    path_prefix: str | None = None
    method: str | list[str] | None = None
    header: HeaderMatch | None = None
    json_field: JsonFieldMatch | None = None

    @field_validator("path_prefix")
    @classmethod
    def _slash(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value

    @field_validator("method")
    @classmethod
    def _methods(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        return [check_header_name(m).upper() for m in ([value] if isinstance(value, str) else value)]

    @model_validator(mode="after")
    def _some_condition(self) -> RouteRule:
        if (self.path_prefix, self.method, self.header, self.json_field) == (None, None, None, None):
            raise ValueError("a route needs at least one of path_prefix, method, header, json_field")
        return self


class SidecarSettings(Section):
    enabled: bool = False
    prefix: str = "/"
    wait_s: float = Field(30.0, ge=0, description="how long the listener waits for the backend's answer")
    respond_async: bool = Field(False, description="answer 202 + status URL at once instead of waiting")

    @field_validator("prefix")
    @classmethod
    def _slash(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with '/'")
        return value


class ProxySettings(Section):
    enabled: bool = False
    endpoints: dict[str, EndpointSettings] = Field(default_factory=dict)
    default_endpoint: str | None = Field(None, description="an endpoint name, or a URL")
    routes: list[RouteRule] = Field(default_factory=list)
    sidecar: SidecarSettings = SidecarSettings()

    @field_validator("endpoints")
    @classmethod
    def _names(cls, value: dict[str, EndpointSettings]) -> dict[str, EndpointSettings]:
        bad = [name for name in value if not _ENDPOINT_NAME.match(name)]
        if bad:
            raise ValueError(f"endpoint names must be lower-case letters, digits, '_', '.', '-': {bad}")
        return value

    @field_validator("default_endpoint")
    @classmethod
    def _known_default(cls, value: str | None, info: ValidationInfo) -> str | None:
        endpoints: dict[str, EndpointSettings] | None = info.data.get("endpoints")
        if value is None or endpoints is None:
            return value
        if "://" in value:
            http_url(value)
            if DEFAULT_ENDPOINT_NAME in endpoints:
                raise ValueError(f"is a URL, but an endpoint is already named {DEFAULT_ENDPOINT_NAME!r}")
        elif value not in endpoints:
            raise ValueError(f"names no endpoint: {value!r}; {_valid(endpoints)}, or give a URL")
        return value

    @field_validator("routes")
    @classmethod
    def _known_route_targets(cls, value: list[RouteRule], info: ValidationInfo) -> list[RouteRule]:
        endpoints = info.data.get("endpoints")
        if endpoints is None:
            return value
        for index, rule in enumerate(value):
            if rule.endpoint not in endpoints:
                raise ValueError(f"route {index} names no endpoint: {rule.endpoint!r}; {_valid(endpoints)}")
        return value

    @field_validator("sidecar")
    @classmethod
    def _sidecar_needs_proxy(cls, value: SidecarSettings, info: ValidationInfo) -> SidecarSettings:
        if value.enabled and not info.data.get("enabled"):
            raise ValueError("sidecar.enabled needs proxy.enabled: true")
        return value

    def all_endpoints(self) -> dict[str, EndpointSettings]:
        """The configured endpoints, plus one named 'default' when default_endpoint is a URL."""
        if self.default_endpoint is None or "://" not in self.default_endpoint:
            return dict(self.endpoints)
        return {**self.endpoints, DEFAULT_ENDPOINT_NAME: EndpointSettings(url=self.default_endpoint)}

    def default_name(self) -> str | None:
        """The endpoint used when neither the request nor a route names one."""
        if self.default_endpoint is not None:
            return DEFAULT_ENDPOINT_NAME if "://" in self.default_endpoint else self.default_endpoint
        return next(iter(self.endpoints)) if len(self.endpoints) == 1 else None


def _valid(endpoints: dict[str, EndpointSettings]) -> str:
    return "valid: " + (", ".join(sorted(endpoints)) if endpoints else "none (proxy.endpoints is empty)")


# --- result callbacks ----------------------------------------------------------------------------


class CallbackRetrySettings(RetrySection):
    max_attempts: int = Field(5, ge=1, description="every delivery attempt counts, the first one included")
    max_delay_s: float = Field(30.0, ge=0, description="also caps a receiver's Retry-After")


class CallbackSettings(Section):
    enabled: bool = False
    secret: SecretStr | None = Field(None, description="Standard Webhooks key: whsec_<base64>, or raw text")
    allow_hosts: list[str] = Field(
        default_factory=list, description="names, IPs or CIDRs the SSRF guard lets by"
    )
    timeout_s: float = Field(10.0, gt=0, description="each delivery attempt, connect to response headers")
    retry: CallbackRetrySettings = CallbackRetrySettings()

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: SecretStr | None, info: ValidationInfo) -> SecretStr | None:
        if value is None:
            if info.data.get("enabled"):
                raise ValueError("callbacks.enabled needs a signing secret")
            return None
        secret_key(value)
        return value

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                if not _HOST_NAME.match(entry.lower()):
                    raise ValueError(f"{entry!r} is not a host name, IP address or CIDR") from None
        return [entry.lower() for entry in value]

    def secret_bytes(self) -> bytes:
        if self.secret is None:
            raise ValueError("callbacks.secret is not set")
        return secret_key(self.secret)


def secret_key(secret: SecretStr) -> bytes:
    """The HMAC key: base64-decoded after a `whsec_` prefix (Standard Webhooks), else the UTF-8 text."""
    text = secret.get_secret_value()
    if not text:
        raise ValueError("must not be empty")
    if not text.startswith("whsec_"):
        return text.encode()
    try:
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a whsec_ secret must be followed by valid base64") from None
    if not key:
        raise ValueError("must not be empty")
    return key
