"""One pooled httpx.AsyncClient per endpoint, built from its timeouts, limits and TLS settings.

HTTP/2 is offered only when the optional `h2` package is installed (`pip install h2`); otherwise
HTTP/1.1 with keep-alive. Proxy environment variables (HTTP_PROXY, ...) are ignored: the
destination is exactly the configured URL.
"""

from __future__ import annotations

import importlib.util
import ssl

import certifi
import httpx

from openhqm.errors import ConfigError
from openhqm.forward.settings import EndpointSettings, TimeoutSettings, TLSSettings

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


def httpx_timeout(timeouts: TimeoutSettings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=timeouts.connect, read=timeouts.read, write=timeouts.read, pool=timeouts.connect
    )


def build_client(endpoint: EndpointSettings, where: str) -> httpx.AsyncClient:
    # Connections = concurrency slots: a call holding a slot never waits for a pooled connection.
    limits = httpx.Limits(
        max_connections=endpoint.max_concurrency, max_keepalive_connections=endpoint.max_concurrency
    )
    return httpx.AsyncClient(
        timeout=httpx_timeout(endpoint.timeouts),
        limits=limits,
        verify=ssl_context(endpoint.tls, where + ".tls"),
        http2=HTTP2_AVAILABLE,
        follow_redirects=False,
        trust_env=False,
    )
