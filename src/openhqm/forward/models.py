"""What a worker hands the Forwarder, what it gets back, and the committed JSON shape of a result."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from openhqm.envelope import Caller

_TEXT_TYPES = frozenset(
    {
        "application/javascript",
        "application/x-www-form-urlencoded",
        "application/xml",
        "application/yaml",
        "application/x-ndjson",
        "application/graphql",
    }
)


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardRequest:
    """`method` None: the endpoint's method. `path` is the raw, percent-encoded path appended to the
    endpoint URL (sidecar mode: the endpoint URL is the base); `query` the raw query, without '?'.
    `client` describes the original caller, for X-Forwarded-For/-Proto/-Host."""

    endpoint: str
    method: str | None = None
    path: str | None = None
    query: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    content_type: str | None = None
    traceparent: str | None = None
    correlation_id: str | None = None
    client: Caller = field(default_factory=Caller)

    def __repr__(self) -> str:  # headers may hold the client's credentials
        return (
            f"ForwardRequest(endpoint={self.endpoint!r}, method={self.method!r}, path={self.path!r}, "
            f"body_bytes={len(self.body)}, correlation_id={self.correlation_id!r})"
        )


@dataclass(frozen=True, slots=True)
class ForwardResponse:
    """The backend's answer, any status. Header names are lower-case; hop-by-hop headers,
    Content-Length and Content-Encoding are gone because `body` is already decoded."""

    status_code: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    elapsed_s: float

    def header(self, name: str) -> str | None:
        """All values of a header joined with ', ', or None."""
        values = [v for n, v in self.headers if n == name.lower()]
        return ", ".join(values) if values else None

    def __repr__(self) -> str:
        return (
            f"ForwardResponse(status_code={self.status_code}, body_bytes={len(self.body)}, "
            f"elapsed_s={self.elapsed_s:.3f})"
        )


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _is_json(media_type: str) -> bool:
    return media_type == "application/json" or media_type.endswith("+json")


def _is_text(media_type: str) -> bool:
    return (
        not media_type  # no Content-Type: text if it decodes
        or media_type.startswith("text/")
        or media_type in _TEXT_TYPES
        or media_type.endswith("+xml")
        or _is_json(media_type)
    )


def result_json(resp: ForwardResponse) -> dict[str, Any]:
    """{"status_code", "headers", "body"}: body as JSON when the backend sent JSON, as text when it is
    UTF-8 text, else base64 with "body_encoding": "base64". Repeated headers are joined with ', '."""
    headers: dict[str, str] = {}
    for name, value in resp.headers:
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    result: dict[str, Any] = {"status_code": resp.status_code, "headers": headers}
    media_type = _media_type(headers.get("content-type"))
    if _is_json(media_type) and resp.body.strip():
        try:
            result["body"] = orjson.loads(resp.body)
            return result
        except orjson.JSONDecodeError:
            pass
    if _is_text(media_type):
        try:
            result["body"] = resp.body.decode("utf-8")
            return result
        except UnicodeDecodeError:
            pass
    result["body"] = base64.b64encode(resp.body).decode("ascii")
    result["body_encoding"] = "base64"
    return result
