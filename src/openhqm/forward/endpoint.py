"""One configured endpoint: builds the outbound request and makes the call under its breaker and limits.

Order of a call: circuit breaker (fail fast) -> concurrency slot -> rate token -> auth header -> send
-> follow redirects if allowed -> read the body up to max_response_bytes. aiohttp errors become
ForwardErrors here and only here; every message is scrubbed of the endpoint's secrets.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import quote

import aiohttp
import httpx
from aiohttp.payload import TOO_LARGE_BYTES_BODY
from multidict import CIMultiDict
from yarl import URL

from openhqm import stages
from openhqm.errors import (
    ForwardError,
    OpenHQMError,
    RequestRejected,
    ResponseTooLarge,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from openhqm.forward.auth import Authenticator, build_auth
from openhqm.forward.auth_settings import check_header_name
from openhqm.forward.breaker import CircuitBreaker, Outcome
from openhqm.forward.client import build_session, display_url
from openhqm.forward.headers import HeaderPolicy, Headers, merge, response_headers
from openhqm.forward.limits import EndpointLimits
from openhqm.forward.models import ForwardRequest, ForwardResponse
from openhqm.forward.retry import parse_retry_after
from openhqm.forward.settings import DEFAULT_RETRY_STATUSES, EndpointSettings
from openhqm.redact import mask_secrets

MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_PATH_SAFE = "/%:@!$&'()*+,;=-._~"
_QUERY_SAFE = _PATH_SAFE + "?"


class Endpoint:
    def __init__(self, name: str, settings: EndpointSettings) -> None:
        self.name = name
        self.settings = settings
        self._base = httpx.URL(settings.url)
        self._base_for_aiohttp = URL(str(self._base), encoded=True)
        self._policy = HeaderPolicy(settings.forward_headers, settings.strip_headers, settings.headers)
        self.breaker = CircuitBreaker(name, settings.circuit)
        self._limits = EndpointLimits(settings.max_concurrency, settings.rate_limit_per_s, settings.burst)
        retry = settings.retry
        self.retry_statuses = frozenset(retry.on_status if retry else DEFAULT_RETRY_STATUSES)
        self.retry_policy = None if retry is None else retry.policy()
        self._client: aiohttp.ClientSession | None = None
        self._auth: Authenticator | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = build_session(self.settings, f"proxy.endpoints.{self.name}")
            self._auth = build_auth(self.settings.auth, endpoint=self.name, timeouts=self.settings.timeouts)

    async def aclose(self) -> None:
        client, auth, self._client, self._auth = self._client, self._auth, None, None
        if auth is not None:
            await auth.aclose()
        if client is not None:
            await client.close()

    async def send(self, req: ForwardRequest) -> ForwardResponse:
        method = _method(req.method or self.settings.method)
        url = self._url(req.path, req.query)
        headers = self._policy.request_headers(
            req.headers,
            client=req.client,
            content_type=req.content_type,
            traceparent=req.traceparent,
            correlation_id=req.correlation_id,
        )
        trial = self.breaker.acquire()
        outcome: Outcome = "neutral"
        try:
            async with self._limits.slot():
                stages.mark(req.correlation_id, "forwarded")
                response = await self._exchange(method, url, headers, req.body)
                stages.mark(req.correlation_id, "answered")
            outcome = "failure" if response.status_code >= 500 else "success"
        except (UpstreamTimeout, UpstreamUnavailable):
            outcome = "failure"
            raise
        except ResponseTooLarge:
            outcome = "success"  # the backend is alive; it answered too much
            raise
        finally:
            self.breaker.release(trial, outcome)
        if response.status_code in self.retry_statuses:
            raise ForwardError(
                self._message(url, f"answered HTTP {response.status_code}"),
                retryable=True,
                retry_after_s=parse_retry_after(response.header("retry-after")),
                status_code=response.status_code,
                endpoint=self.name,
                response=response,
            )
        return response

    def _url(self, path: str | None, query: str | None) -> httpx.URL:
        if not path and not query:
            return self._base  # the common case: the endpoint's URL as configured
        base_path, _, base_query = self._base.raw_path.decode("ascii").partition("?")
        if path:
            path = quote(path if path.startswith("/") else "/" + path, safe=_PATH_SAFE)
            if any(seg.lower().replace("%2e", ".") in (".", "..") for seg in path.split("/")):
                raise RequestRejected(f"path {path!r} has '.' or '..' segments; they are not forwarded")
            base_path = base_path.rstrip("/") + path
        queries = [q for q in (base_query, quote(query or "", safe=_QUERY_SAFE)) if q]
        raw = base_path + ("?" + "&".join(queries) if queries else "")
        return self._base.copy_with(raw_path=raw.encode("ascii"))

    async def _exchange(self, method: str, url: httpx.URL, headers: Headers, body: bytes) -> ForwardResponse:
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.settings.timeouts.total):
                status, raw_headers, data = await self._round_trip(method, url, headers, body)
        except TimeoutError as exc:
            raise UpstreamTimeout(
                self._message(url, f"no complete answer within {self.settings.timeouts.total} s"),
                endpoint=self.name,
            ) from exc
        return ForwardResponse(status, tuple(response_headers(raw_headers)), data, time.monotonic() - started)

    async def _round_trip(
        self, method: str, url: httpx.URL, headers: Headers, body: bytes
    ) -> tuple[int, Headers, bytes]:
        if self._client is None:
            raise OpenHQMError(f"endpoint {self.name!r}: Forwarder.start() was not called")
        hops, refreshed = 0, False
        while True:
            credential = await self._credential(url)
            outgoing = CIMultiDict(merge(headers, [credential] if credential else []))
            with self._mapped(url):
                target = self._base_for_aiohttp if url is self._base else URL(str(url), encoded=True)
                response = await self._client.request(
                    method, target, headers=outgoing, data=_payload(body), allow_redirects=False)
            try:
                location = response.headers.get("location")
                if response.status in _REDIRECTS and location and self.settings.follow_redirects:
                    hops += 1
                    if hops > MAX_REDIRECTS:
                        raise ForwardError(self._message(url, f"more than {MAX_REDIRECTS} redirects"))
                    method, url, body, headers = self._redirect(url, response.status, location, method, body,
                                                                headers)
                    continue
                if response.status == 401 and credential and not refreshed and self._auth:
                    refreshed = self._auth.invalidate(credential[1])
                    if refreshed:
                        continue  # a cached OAuth2 token was revoked early: one retry with a new one
                with self._mapped(url):
                    data = await self._read(response, url)
                raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in response.raw_headers]
                return response.status, raw, data
            finally:
                response.release()

    async def _credential(self, url: httpx.URL) -> tuple[str, str] | None:
        """The auth header, sent only to the endpoint's own origin (never across a redirect)."""
        same_origin = (url.scheme, url.host, url.port) == (
            self._base.scheme,
            self._base.host,
            self._base.port,
        )
        return await self._auth.header() if self._auth is not None and same_origin else None

    def _redirect(
        self, url: httpx.URL, status: int, location: str, method: str, body: bytes, headers: Headers
    ) -> tuple[str, httpx.URL, bytes, Headers]:
        try:
            target = url.join(location)
        except httpx.InvalidURL as exc:
            raise ForwardError(self._message(url, f"sent an invalid redirect: {exc}")) from exc
        if target.scheme not in ("http", "https"):
            raise ForwardError(self._message(url, f"redirected to a {target.scheme!r} URL"))
        # The method changes that browsers apply (RFC 9110 15.4).
        if (status in (302, 303) and method != "HEAD") or (status == 301 and method == "POST"):
            method, body = "GET", b""
            headers = [(n, v) for n, v in headers if n.lower() != "content-type"]
        return method, target, body, headers

    async def _read(self, response: aiohttp.ClientResponse, url: httpx.URL) -> bytes:
        limit = self.settings.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and "content-encoding" not in response.headers and int(declared) > limit:
            raise self._too_large(url, limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > limit:
                raise self._too_large(url, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, url: httpx.URL, limit: int) -> ResponseTooLarge:
        return ResponseTooLarge(
            self._message(url, f"response is larger than max_response_bytes ({limit})"), endpoint=self.name
        )

    @contextmanager
    def _mapped(self, url: httpx.URL) -> Iterator[None]:
        try:
            yield
        except TimeoutError as exc:  # aiohttp's connect and read timeouts are TimeoutErrors
            raise UpstreamTimeout(
                self._message(url, f"timed out ({type(exc).__name__})"), endpoint=self.name
            ) from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            text = f"unreachable ({type(exc).__name__}: {exc})"
            raise UpstreamUnavailable(self._message(url, text), endpoint=self.name) from exc
        except aiohttp.ClientError as exc:
            text = f"sent an unreadable answer ({type(exc).__name__}: {exc})"
            raise ForwardError(self._message(url, text), endpoint=self.name) from exc

    def _message(self, url: httpx.URL, text: str) -> str:
        secrets = self._auth.secrets() if self._auth is not None else []
        return mask_secrets(f"endpoint {self.name!r} ({display_url(url)}) {text}", secrets)

    def __repr__(self) -> str:
        return f"Endpoint({self.name!r}, {display_url(self._base)})"


def _method(method: str) -> str:
    try:
        return check_header_name(method).upper()
    except ValueError:
        raise RequestRejected(f"method {method[:20]!r} is not a valid HTTP method") from None


def _payload(body: bytes) -> bytes | io.BytesIO | None:
    """aiohttp writes a bytes body in one piece and warns (ResourceWarning) above 1 MiB that this holds
    the loop; a BytesIO goes in chunks. Smaller bodies stay bytes: aiohttp reads a BytesIO in a thread."""
    if len(body) > TOO_LARGE_BYTES_BODY:
        return io.BytesIO(body)
    return body or None
