"""The API's description: the OpenAPI document (response headers, problem details, security) and the
/docs and /redoc pages, whose assets ship in `docs_assets/` so they work without internet.

Routes declare their answers with the `responses=` values below; `install_docs` finishes the document
once, where FastAPI cannot: every error answer as `application/problem+json`, its own validation
error in the same shape, and the security schemes when client access control is on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

from openhqm.http.responses import PROBLEM_JSON
from openhqm.http.schemas import Problem, ResultResponse, StatusResponse

ASSETS_DIR = Path(__file__).with_name("docs_assets")
ASSETS_PATH = "/docs/assets"
DOCS_PATH, REDOC_PATH, OAUTH2_REDIRECT_PATH = "/docs", "/redoc", "/docs/oauth2-redirect"
# The bridge's paths that need no credentials (http/auth.py reads these).
DOCS_PATHS = frozenset({DOCS_PATH, OAUTH2_REDIRECT_PATH, REDOC_PATH, "/openapi.json"})

SECURITY_SCHEMES: dict[str, Any] = {
    "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
               "description": "`Authorization: Bearer <JWT or API key>`"},
    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
}


def _header(description: str, type_: str = "string") -> dict[str, Any]:
    return {"description": description, "schema": {"type": type_}}


LOCATION = {"Location": _header("where the result will be: GET it, with `?wait=N` to long-poll")}
RETRY_AFTER = {"Retry-After": _header("seconds to wait before asking again", "integer")}
PREFERENCE_APPLIED = {"Preference-Applied": _header(
    "`wait=N`: the wait applied to `Prefer: wait` (at most `server.max_wait_s`)")}
IDEMPOTENT_REPLAYED = {"Idempotent-Replayed": _header(
    "`true` when this repeats an `Idempotency-Key` and answers for the original request")}


def problems(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Error answers for `responses=`; `install_docs` gives them the problem+json media type."""
    return {status: {"model": Problem} for status in statuses}


ERRORS = problems(400, 404, 409, 413, 503)
SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "Queued (the broker has it); poll `Location`",
          "headers": {**LOCATION, **RETRY_AFTER, **IDEMPOTENT_REPLAYED}},
    200: {"model": ResultResponse, "description": "Finished within `Prefer: wait=N`",
          "headers": {**PREFERENCE_APPLIED, **IDEMPOTENT_REPLAYED}},
    **ERRORS}
RESPONSE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Finished: the result"},
    202: {"model": StatusResponse, "description": "Not finished yet; ask again", "headers": RETRY_AFTER},
    406: {"model": Problem}, **ERRORS}


def install_docs(api: FastAPI, *, secured: bool) -> None:
    """Local /docs and /redoc pages (create the app with docs_url=None, redoc_url=None), and the
    finished OpenAPI document; `secured` when client access control is on."""
    api.mount(ASSETS_PATH, StaticFiles(directory=ASSETS_DIR), name="docs-assets")
    api.add_api_route(DOCS_PATH, _swagger_ui, include_in_schema=False)
    api.add_api_route(OAUTH2_REDIRECT_PATH, _oauth2_redirect, include_in_schema=False)
    api.add_api_route(REDOC_PATH, _redoc, include_in_schema=False)
    build = api.openapi

    def openapi() -> dict[str, Any]:
        if api.openapi_schema is None:
            api.openapi_schema = finish(build(), secured=secured)
        return api.openapi_schema

    api.openapi = openapi  # type: ignore[method-assign]


def _base(request: Request) -> str:
    return str(request.scope.get("root_path", "")).rstrip("/")


async def _swagger_ui(request: Request) -> HTMLResponse:
    base = _base(request)
    return get_swagger_ui_html(
        openapi_url=base + "/openapi.json", title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=base + OAUTH2_REDIRECT_PATH,
        swagger_js_url=f"{base}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{base}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{base}{ASSETS_PATH}/favicon-32x32.png")


async def _oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


async def _redoc(request: Request) -> HTMLResponse:
    base = _base(request)
    return get_redoc_html(
        openapi_url=base + "/openapi.json", title=f"{request.app.title} - ReDoc",
        redoc_js_url=f"{base}{ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{base}{ASSETS_PATH}/favicon-32x32.png", with_google_fonts=False)


def finish(schema: dict[str, Any], *, secured: bool) -> dict[str, Any]:
    """Every 4xx/5xx as problem+json (FastAPI's own 422 model included), and the security schemes."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    problem_content = {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}}
    if secured:
        components["securitySchemes"] = SECURITY_SCHEMES
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            answers = operation.setdefault("responses", {})
            if secured and path.startswith("/api/"):
                operation["security"] = [{"bearer": []}, {"apiKey": []}]
                for status in ("401", "403"):
                    answers.setdefault(status, {"description": "Credentials missing or not enough",
                                                "content": problem_content})
            for status, answer in answers.items():
                if status[0] in "45" and _is_problem(answer):
                    answer["content"] = problem_content
    return schema


def _is_problem(answer: dict[str, Any]) -> bool:
    """Declared with the Problem model or FastAPI's own validation error model."""
    ref: str = answer.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
    return ref.rsplit("/", 1)[-1] in ("Problem", "HTTPValidationError")
