"""Which headers cross the proxy, in both directions.

Request: hop-by-hop headers (RFC 9110 7.6.1, and any named in Connection) never pass; Host,
Content-Length and Accept-Encoding are set by the HTTP client for the new connection (the body is
decoded before it is stored, so the backend may only use encodings httpx can undo). A client
header passes when `forward_headers` matches it (names or globs such as X-Trace-*, "*" for all),
and `strip_headers` does not; credentials (Authorization, Cookie) pass only when named exactly.
Response: hop-by-hop headers, Content-Length and Content-Encoding are dropped (the body is decoded).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from openhqm.envelope import Caller

Headers = list[tuple[str, str]]

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
RECOMPUTED = frozenset({"host", "content-length", "accept-encoding", "expect"})
CREDENTIALS = frozenset({"authorization", "cookie"})
# Set from the ForwardRequest, never copied from the client's copy of them.
SET_BY_PROXY = frozenset({"x-forwarded-proto", "x-forwarded-host", "traceparent", "x-correlation-id"})
RESPONSE_DROPPED = frozenset({"content-length", "content-encoding"})


def _connection_named(headers: Iterable[tuple[str, str]]) -> set[str]:
    named: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            named.update(token.strip().lower() for token in value.split(",") if token.strip())
    return named


def is_hop_by_hop(name: str) -> bool:
    lower = name.lower()
    return lower in HOP_BY_HOP or lower.startswith("proxy-")


def strip_hop_by_hop(headers: Iterable[tuple[str, str]]) -> Headers:
    """Drop hop-by-hop headers, including every header the Connection header names."""
    pairs = list(headers)
    named = _connection_named(pairs)
    return [(name, value) for name, value in pairs if not is_hop_by_hop(name) and name.lower() not in named]


def response_headers(headers: Iterable[tuple[str, str]]) -> Headers:
    """A backend's headers as they may be stored and replayed to the client."""
    return [(n.lower(), v) for n, v in strip_hop_by_hop(headers) if n.lower() not in RESPONSE_DROPPED]


# Where the original request came from, for X-Forwarded-*: the envelope's own record of it.
ClientInfo = Caller


@dataclass(frozen=True, slots=True)
class HeaderPolicy:
    forward: Sequence[str] = ("*",)
    strip: Sequence[str] = ()
    static: Mapping[str, str] | None = None

    def passes(self, name: str) -> bool:
        """Whether a client header (already known not to be hop-by-hop) may reach the backend."""
        lower = name.lower()
        if (
            lower in RECOMPUTED
            or lower in SET_BY_PROXY
            or any(fnmatchcase(lower, p.lower()) for p in self.strip)
        ):
            return False
        if lower in CREDENTIALS:
            return any(p.lower() == lower for p in self.forward)
        return any(fnmatchcase(lower, p.lower()) for p in self.forward)

    def request_headers(
        self,
        incoming: Mapping[str, str] | Iterable[tuple[str, str]],
        *,
        client: ClientInfo = ClientInfo(),
        content_type: str | None = None,
        traceparent: str | None = None,
        correlation_id: str | None = None,
    ) -> Headers:
        """The headers to send: filtered client headers, X-Forwarded-*, tracing, then static headers."""
        pairs = list(incoming.items()) if isinstance(incoming, Mapping) else list(incoming)
        kept = [(n, v) for n, v in strip_hop_by_hop(pairs) if self.passes(n)]
        out = [(n, v) for n, v in kept if n.lower() not in {"x-forwarded-for", "content-type"}]
        forwarded_for = [v for n, v in kept if n.lower() == "x-forwarded-for"]
        if client.addr:
            forwarded_for.append(client.addr)
        if forwarded_for:
            out.append(("X-Forwarded-For", ", ".join(forwarded_for)))
        if client.proto:
            out.append(("X-Forwarded-Proto", client.proto))
        if client.host:
            out.append(("X-Forwarded-Host", client.host))
        if content_type is None:  # describes the body, so it travels whatever forward_headers says
            content_type = next((v for n, v in pairs if n.lower() == "content-type"), None)
        if content_type:
            out.append(("Content-Type", content_type))
        if traceparent:
            out.append(("traceparent", traceparent))
        if correlation_id:
            out.append(("X-Correlation-ID", correlation_id))
        return merge(out, (self.static or {}).items())


def merge(base: Iterable[tuple[str, str]], top: Iterable[tuple[str, str]]) -> Headers:
    """`base` with every header named in `top` replaced by top's values."""
    top_pairs = list(top)
    replaced = {name.lower() for name, _ in top_pairs}
    return [(n, v) for n, v in base if n.lower() not in replaced] + top_pairs
