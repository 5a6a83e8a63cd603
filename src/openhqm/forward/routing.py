"""Which endpoint a request goes to: the one it names, else the first matching route, else the default."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from openhqm.errors import RequestRejected
from openhqm.forward.settings import JsonFieldMatch, ProxySettings, RouteRule

_MISSING = object()


def _path_matches(prefix: str, path: str | None) -> bool:
    """Segment-aware: /orders matches /orders and /orders/7, not /ordersX."""
    if path is None:
        return False
    prefix = prefix.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


def _field(payload: Any, dotted: str) -> Any:
    value = payload
    for part in dotted.split("."):
        if isinstance(value, Mapping) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return _MISSING
    return value


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: true is not 1, but 1 is 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def _json_matches(match: JsonFieldMatch, payload: Any) -> bool:
    value = _field(payload, match.path)
    if value is _MISSING:
        return False
    return "equals" not in match.model_fields_set or _json_equal(value, match.equals)


def matches(
    rule: RouteRule, *, method: str | None, path: str | None, headers: Mapping[str, str], payload_json: Any
) -> bool:
    if rule.path_prefix is not None and not _path_matches(rule.path_prefix, path):
        return False
    if rule.method is not None and (method or "").upper() not in rule.method:
        return False
    if rule.header is not None:
        wanted = rule.header.name.lower()
        values = [v for n, v in headers.items() if n.lower() == wanted]
        if not values or (rule.header.value is not None and rule.header.value not in values):
            return False
    return rule.json_field is None or _json_matches(rule.json_field, payload_json)


class Router:
    def __init__(self, settings: ProxySettings) -> None:
        self.names = tuple(sorted(settings.all_endpoints()))
        self._routes = list(settings.routes)
        self._default = settings.default_name()

    def _valid(self) -> str:
        return "valid: " + (", ".join(self.names) if self.names else "none (no proxy.endpoints configured)")

    def unknown(self, endpoint: str) -> RequestRejected:
        """The 400 for a name that is no endpoint, listing the valid ones."""
        return RequestRejected(f"unknown endpoint {endpoint[:100]!r}; {self._valid()}", status=400)

    def resolve(
        self,
        endpoint: str | None,
        *,
        method: str | None = None,
        path: str | None = None,
        headers: Mapping[str, str] | None = None,
        payload_json: Any = None,
    ) -> str:
        """The endpoint name, or RequestRejected (400) naming the problem and the valid names."""
        if endpoint is not None:
            if endpoint not in self.names:
                raise self.unknown(endpoint)
            return endpoint
        for rule in self._routes:
            if matches(rule, method=method, path=path, headers=headers or {}, payload_json=payload_json):
                return rule.endpoint
        if self._default is None:
            raise RequestRejected(
                "the request names no endpoint, no route matches and proxy.default_endpoint is not set; "
                + self._valid(),
                status=400,
            )
        return self._default
