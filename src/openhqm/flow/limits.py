"""Settings of flow control (`flow.limits.<name>.*`) and which bucket a request counts against.

A limit covers the requests of one endpoint or one handler; with a `key` it is one bucket per value
of that field (one per tenant), else one bucket. Per-endpoint `rate_limit_per_s` and an explicitly
set `max_concurrency` become implicit limits named `endpoint.<endpoint>` (user limit names have no
dot, so they cannot clash). docs/flow-control.md explains each key.
This module must not import openhqm.config, which imports it.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import Field, field_validator, model_validator

from openhqm.envelope import Envelope
from openhqm.forward.settings import EndpointSettings
from openhqm.settings_base import Section

_LIMIT_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")
_KEY = re.compile(r"^(metadata|header|payload)\.(.+)$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_ENVELOPE_FIELDS = ("session_id", "client_id", "priority")  # metadata keys the envelope keeps apart
MAX_KEY_CHARS = 64  # longer key values are hashed: a bucket id stays bounded whatever a client sends
IMPLICIT_PREFIX = "endpoint."


class FlowLimitSettings(Section):
    endpoint: str | None = Field(None, description="the endpoint whose calls this limit covers")
    handler: str | None = Field(None, description="the handler whose jobs this limit covers")
    key: str | None = Field(None, description="one bucket per value: metadata.<f>, header.<n>, payload.<path>")
    rate_per_s: float | None = Field(None, gt=0, description="requests started per second (token bucket)")
    burst: int | None = Field(None, ge=1, description="tokens saved up; default max(1, rate_per_s)")
    max_concurrency: int | None = Field(None, ge=1, description="requests running at once")

    @field_validator("key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is None:
            return None
        match = _KEY.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not metadata.<field>, header.<name> or payload.<dotted.path>")
        source, rest = match.groups()
        if source == "header" and not _HEADER_NAME.match(rest):
            raise ValueError(f"{rest!r} is not a header name")
        if source == "payload" and any(not part for part in rest.split(".")):
            raise ValueError(f"{rest!r} has an empty part")
        return value

    @model_validator(mode="after")
    def _complete(self) -> FlowLimitSettings:
        if (self.endpoint is None) == (self.handler is None):
            raise ValueError("a limit names exactly one of endpoint or handler")
        if self.rate_per_s is None and self.max_concurrency is None:
            raise ValueError("a limit needs rate_per_s, max_concurrency, or both")
        if self.burst is not None and self.rate_per_s is None:
            raise ValueError("burst needs rate_per_s")
        return self


class FlowSettings(Section):
    limits: dict[str, FlowLimitSettings] = Field(default_factory=dict)

    @field_validator("limits")
    @classmethod
    def _names(cls, value: dict[str, FlowLimitSettings]) -> dict[str, FlowLimitSettings]:
        bad = [name for name in value if not _LIMIT_NAME.match(name)]
        if bad:
            raise ValueError(f"limit names must be lower-case letters, digits, '_' or '-': {bad}")
        return value


@dataclass(frozen=True, slots=True)
class Bucket:
    """One counter in the shared ledger: a limit, or one key value of a keyed limit."""

    id: str
    limit: str
    rate_per_s: float | None
    burst: int
    max_concurrency: int | None


@dataclass(frozen=True, slots=True)
class Limit:
    name: str
    rate_per_s: float | None
    burst: int
    max_concurrency: int | None
    key: str | None = None

    def bucket(self, envelope: Envelope) -> Bucket:
        ident = self.name if self.key is None else f"{self.name}={bucket_key(key_value(self.key, envelope))}"
        return Bucket(ident, self.name, self.rate_per_s, self.burst, self.max_concurrency)


def key_range(limit: str) -> tuple[str, str]:
    """[low, high): the ids of a keyed limit's buckets (`<limit>=<value>`) sort in this range, and
    no other bucket's does ('>' follows '=', and no limit or endpoint name holds either): an index
    range, not a scan."""
    return limit + "=", limit + ">"


def key_of(limit: str, bucket_id: str) -> str | None:
    """The key value a bucket id names; None for the one bucket of a limit without `key`."""
    return None if bucket_id == limit else bucket_id[len(limit) + 1:]


def limit_of(name: str, rate_per_s: float | None, burst: int | None, max_concurrency: int | None,
             key: str | None = None) -> Limit:
    """A limit with its burst default: max(1, rate_per_s), one second's worth of requests."""
    full = burst if burst is not None else max(1, math.ceil(rate_per_s or 1))
    return Limit(name, rate_per_s, full, max_concurrency, key)


def configured_limits(flow: FlowSettings, endpoints: dict[str, EndpointSettings]
                      ) -> tuple[dict[str, list[Limit]], dict[str, list[Limit]]]:
    """(limits by endpoint, limits by handler): `flow.limits`, plus one implicit limit per endpoint
    whose rate_limit_per_s or max_concurrency is set (its default max_concurrency stays per process)."""
    by_endpoint: dict[str, list[Limit]] = {}
    by_handler: dict[str, list[Limit]] = {}
    for name, endpoint in endpoints.items():
        concurrency = endpoint.max_concurrency if "max_concurrency" in endpoint.model_fields_set else None
        if endpoint.rate_limit_per_s is not None or concurrency is not None:
            by_endpoint.setdefault(name, []).append(limit_of(
                IMPLICIT_PREFIX + name, endpoint.rate_limit_per_s, endpoint.rate_burst, concurrency))
    for name, spec in flow.limits.items():
        limit = limit_of(name, spec.rate_per_s, spec.burst, spec.max_concurrency, spec.key)
        if spec.endpoint is not None:
            by_endpoint.setdefault(spec.endpoint, []).append(limit)
        else:
            by_handler.setdefault(spec.handler or "", []).append(limit)
    return by_endpoint, by_handler


def key_value(key: str, envelope: Envelope) -> str:
    """The request's value of `key` as text; "" when it has none (those requests share one bucket)."""
    source, _, rest = key.partition(".")
    value: Any = None
    if source == "metadata":
        value = envelope.metadata.get(rest)
        if value is None and rest in _ENVELOPE_FIELDS:
            value = getattr(envelope, rest)
    elif source == "header":
        wanted = rest.lower()
        value = next((v for k, v in envelope.headers.items() if k.lower() == wanted), None)
    else:
        value = _payload_field(envelope.body, rest)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _payload_field(body: bytes, path: str) -> Any:
    try:
        value: Any = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def bucket_key(value: str) -> str:
    """The value as it names a bucket: itself when short and plain, else a hash of it."""
    if len(value) <= MAX_KEY_CHARS and value.isprintable():
        return value
    return hashed_key(value)


def hashed_key(value: str) -> str:
    """A key value that is too long, or not fit to show, as its hash (`sha256:` and 32 hex digits)."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:32]
