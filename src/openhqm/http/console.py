"""The operator console (docs/console.md): a static page at /console and its sign-in. The page calls
only the public API under /api/v1 (its live updates: http/console_events.py)."""

from __future__ import annotations

import functools
import html
import secrets
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import orjson
from fastapi import APIRouter, FastAPI, Request, Response
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

from openhqm.errors import RequestRejected
from openhqm.http.auth import Authenticator, Identity, header_credential
from openhqm.http.console_events import Figures, Ticker, events_router
from openhqm.http.console_session import (
    CONSOLE_PATH,
    CSRF_COOKIE,
    SESSION_COOKIE,
    cross_site_refusal,
    session_credential,
)
from openhqm.http.responses import JSONResponse, problem

ASSETS_DIR = Path(__file__).with_name("console_assets")
ASSETS_PATH = CONSOLE_PATH + "/assets"
MAX_KEY_CHARS = 4000  # a browser keeps cookies up to 4096 bytes: a longer JWT would be dropped silently
ALL_SCOPES = ("submit", "read", "admin")
# The page loads nothing from elsewhere and runs no inline script: data shown can never become code.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}

console_router = APIRouter(include_in_schema=False)


def install_console(api: FastAPI) -> None:
    api.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="console-assets")
    api.include_router(console_router)
    api.include_router(events_router)
    api.state.console_ticker = Ticker(Figures(lambda: api.state.bridge))


@functools.cache
def _page_template() -> str:
    return (ASSETS_DIR / "index.html").read_text()


@console_router.get(CONSOLE_PATH)
async def page(request: Request) -> HTMLResponse:
    """The one page; its asset and API addresses carry the server's root path (a proxy's prefix)."""
    base = html.escape(str(request.scope.get("root_path", "")).rstrip("/"), quote=True)
    return HTMLResponse(_page_template().replace("%BASE%", base), headers=PAGE_HEADERS)


@console_router.get(CONSOLE_PATH + "/")
async def page_with_slash(request: Request) -> RedirectResponse:
    return RedirectResponse(str(request.scope.get("root_path", "")).rstrip("/") + CONSOLE_PATH)


def _authenticator(request: Request) -> Authenticator | None:
    auth: Authenticator | None = request.app.state.authenticator
    return auth


async def _verify(auth: Authenticator, credential: str | None) -> Identity | None:
    if auth.blocking and credential:  # a JWKS URL may be fetched: not on the event loop
        return await anyio.to_thread.run_sync(auth.verify, credential)
    return auth.verify(credential)


def _session_json(identity: Identity | None, *, auth_required: bool, csrf_token: str | None) -> dict[str, Any]:
    scopes = list(ALL_SCOPES) if not auth_required else sorted(identity.scopes) if identity else []
    return {"auth_required": auth_required, "signed_in": identity is not None or not auth_required,
            "client_id": identity.client_id if identity else None, "scopes": scopes, "csrf_token": csrf_token}


@console_router.get(CONSOLE_PATH + "/session")
async def get_session(request: Request) -> JSONResponse:
    """Who the console acts as. `auth_required` false: anyone reaching the listener acts as admin."""
    auth = _authenticator(request)
    if auth is None:
        return JSONResponse(_session_json(None, auth_required=False, csrf_token=None))
    credential = header_credential(request.headers) or session_credential(request.headers, CONSOLE_PATH)
    identity = await _verify(auth, credential)
    token = request.cookies.get(CSRF_COOKIE) if identity else None
    return JSONResponse(_session_json(identity, auth_required=True, csrf_token=token),
                        headers={"Cache-Control": "no-store"})


@console_router.post(CONSOLE_PATH + "/session")
async def sign_in(request: Request) -> Response:
    """Check an API key (or JWT) once and keep it in an HttpOnly cookie for this browser."""
    auth = _authenticator(request)
    if (refusal := cross_site_refusal(request.scope, request.headers)) is not None:
        return problem(403, refusal)
    if auth is None:
        raise RequestRejected("client access control is off (no auth.api_keys or auth.jwt): there is "
                              "nothing to sign in to", status=409)
    key = await _submitted_key(request)
    identity = await _verify(auth, key)
    if identity is None:
        return problem(401, "that API key or token is not valid")
    if "read" not in identity.scopes:
        return problem(403, f"client {identity.client_id!r} lacks the scope 'read' the console needs")
    token = secrets.token_urlsafe(32)
    response = JSONResponse(_session_json(identity, auth_required=True, csrf_token=token),
                            headers={"Cache-Control": "no-store"})
    secure = request.url.scheme == "https"
    response.set_cookie(SESSION_COOKIE, key, httponly=True, samesite="strict", path="/", secure=secure)
    response.set_cookie(CSRF_COOKIE, token, httponly=False, samesite="strict", path="/", secure=secure)
    return response


async def _submitted_key(request: Request) -> str:
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise RequestRejected('the body must be JSON: {"api_key": "..."}', status=422) from None
    key = body.get("api_key") if isinstance(body, dict) else None
    if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_CHARS:
        raise RequestRejected(f'api_key: a non-empty string of at most {MAX_KEY_CHARS} characters is needed',
                              status=422)
    # A cookie value cannot hold these; an API key or a JWT never does.
    if any(c in key for c in ';,"\\ ') or not key.isprintable():
        raise RequestRejected("api_key holds characters no API key or JWT has", status=422)
    return key.strip()


@console_router.post(CONSOLE_PATH + "/session/delete")
async def sign_out(request: Request) -> Response:
    if (refusal := cross_site_refusal(request.scope, request.headers)) is not None:
        return problem(403, refusal)
    response = Response(status_code=204)
    for name in (SESSION_COOKIE, CSRF_COOKIE):
        response.delete_cookie(name, path="/", samesite="strict", secure=request.url.scheme == "https")
    return response
