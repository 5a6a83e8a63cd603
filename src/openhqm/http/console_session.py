"""The console's browser session: the API key in an HttpOnly cookie, and the cross-site request checks
that a cookie (sent by the browser on its own) makes necessary.

A request carrying the cookie instead of an `Authorization`/`X-API-Key` header is accepted only on the
console's and the API's paths, and when it changes state it must echo the CSRF cookie in
`X-CSRF-Token` (double submit) and come from the same origin (`Origin`, `Sec-Fetch-Site`).
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.requests import cookie_parser
from starlette.types import Scope

CONSOLE_PATH = "/console"
SESSION_COOKIE = "openhqm_console"
CSRF_COOKIE = "openhqm_csrf"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SAME_SITE_FETCHES = frozenset({"same-origin", "none"})


def is_console_path(path: str) -> bool:
    """The console's page, assets and sign-in: open, since signing in is how credentials arrive."""
    return path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")


def session_credential(headers: Headers, path: str) -> str | None:
    """The API key the console's cookie holds, on the paths that accept it (not the sidecar's)."""
    if not (path.startswith("/api/v1/") or is_console_path(path)):
        return None
    cookie = headers.get("cookie")
    if not cookie:
        return None
    return cookie_parser(cookie).get(SESSION_COOKIE) or None


def cross_site_refusal(scope: Scope, headers: Headers) -> str | None:
    """Why a request must be refused as possibly cross-site, or None: its Origin must be this
    listener's own and a browser's Sec-Fetch-Site must say same-origin."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site not in SAME_SITE_FETCHES:
        return f"a {fetch_site} request may not use the console's session (Sec-Fetch-Site)"
    origin = headers.get("origin")
    if origin is not None and origin != own_origin(scope, headers):
        return f"Origin {origin!r} is not this listener's; the console's session works only from its own pages"
    return None


def csrf_refusal(scope: Scope, headers: Headers) -> str | None:
    """Why a cookie-authenticated request that changes state must be refused, or None."""
    if scope["method"] in SAFE_METHODS:
        return None
    expected = cookie_parser(headers.get("cookie", "")).get(CSRF_COOKIE, "")
    given = headers.get(CSRF_HEADER, "")
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        return f"missing or wrong {CSRF_HEADER.title()} header (the console's CSRF token)"
    return cross_site_refusal(scope, headers)


def own_origin(scope: Scope, headers: Headers) -> str:
    scheme = scope.get("scheme", "http")
    return f"{scheme}://{headers.get('host', '')}"
