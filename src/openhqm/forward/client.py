"""One pooled aiohttp session per endpoint for forwarding, built from its timeouts, limits and TLS.

Forwarding uses aiohttp: measured against httpx on the same benchmark, httpx's connection pool
polled every idle socket on each request and cost about half of a forwarded round trip. Measured
again 2026-12 (aiohttp 3.14, httpx 0.29, small POSTs to benchmarks/echo_server.py): aiohttp 90-190 us
of client CPU a request, httpx 760-840 us at 1 in flight and 1.5-2 ms at 32. So there is no single
stack: the OAuth2 token client and callbacks (low volume) and the public Python client keep httpx,
which alone offers the synchronous client. Proxy environment variables (HTTP_PROXY, ...)
are ignored: the destination is exactly the configured URL.
"""

from __future__ import annotations

import importlib.util
import ssl
from http.cookiejar import CookieJar, DefaultCookiePolicy

import aiohttp
import certifi
import httpx

from openhqm.errors import ConfigError
from openhqm.forward.auth_settings import TLSSettings
from openhqm.forward.settings import EndpointSettings, TimeoutSettings

HTTP2_AVAILABLE = importlib.util.find_spec("h2") is not None


def ssl_context(tls: TLSSettings, where: str) -> ssl.SSLContext:
    """`where` names the settings key in errors, e.g. proxy.endpoints.orders.tls."""
    if not tls.verify:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        cafile = str(tls.ca_file) if tls.ca_file else certifi.where()
        try:
            context = ssl.create_default_context(cafile=cafile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"{where}.ca_file: cannot load {cafile}: {_reason(exc)}") from exc
    if tls.client_cert is not None:
        try:
            context.load_cert_chain(tls.client_cert, tls.client_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{where}.client_cert: cannot load {tls.client_cert} / {tls.client_key}: {_reason(exc)}"
            ) from exc
    return context


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def display_url(url: str | httpx.URL) -> str:
    """scheme://host:port/path for messages: no user info, no query (either may hold a secret)."""
    parsed = httpx.URL(url)
    port = f":{parsed.port}" if parsed.port else ""
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{parsed.scheme}://{host}{port}{parsed.path}"


def no_cookies() -> CookieJar:
    """For httpx clients shared between requests of different clients (callbacks): keep nothing."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


def httpx_timeout(timeouts: TimeoutSettings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=timeouts.connect
    )


def build_session(endpoint: EndpointSettings, where: str) -> aiohttp.ClientSession:
    """Call inside the running event loop. Connections = concurrency slots (0: unlimited)."""
    timeouts = endpoint.timeouts
    connector = aiohttp.TCPConnector(limit=endpoint.max_concurrency or 0, limit_per_host=0,
                                     keepalive_timeout=timeouts.keepalive,
                                     ssl=ssl_context(endpoint.tls, where + ".tls"))
    return aiohttp.ClientSession(
        connector=connector, trust_env=False, auto_decompress=True,
        # One session carries every client's requests: a cookie one backend answer sets must reach
        # that client (it is in the result), never ride along with the next client's request.
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, connect=timeouts.connect, sock_read=timeouts.read),
        # aiohttp would add these on its own; the forwarded request carries only what the policy built.
        skip_auto_headers=("Content-Type", "User-Agent"),
    )
