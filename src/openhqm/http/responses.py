"""JSON responses rendered with orjson (faster than the standard library on every answer), and the
one error format: RFC 9457 problem details, `application/problem+json`, for every 4xx and 5xx."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.responses import Response

from openhqm.errors import BackendUnavailable, RequestRejected
from openhqm.results.base import RequestRecord

# Describe the body as the backend sent it; recomputed for the body the client receives.
_RECOMPUTED = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection"})
# Set by the server that answers the client (uvicorn adds its own): relaying the backend's too
# would send each twice.
_SET_BY_SERVER = frozenset({"server", "date"})
_DROPPED = _RECOMPUTED | _SET_BY_SERVER


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


PROBLEM_JSON = "application/problem+json"
# RFC 9457 4.2.1: "about:blank" says the status code is all the type there is; `title` is then its phrase.
PROBLEM_TYPE = "about:blank"
UNAVAILABLE_RETRY_AFTER_S = 5


def problem_body(status: int, detail: str, *, errors: Sequence[Mapping[str, Any]] | None = None,
                 **extensions: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"type": PROBLEM_TYPE, "title": HTTPStatus(status).phrase, "status": status,
                            "detail": detail, **extensions}
    if errors is not None:
        body["errors"] = list(errors)
    return body


def problem(status: int, detail: str, *, headers: Mapping[str, str] | None = None,
            errors: Sequence[Mapping[str, Any]] | None = None, **extensions: Any) -> JSONResponse:
    """An error answer; `detail` says what was wrong in words, `errors` lists field-level problems."""
    return JSONResponse(problem_body(status, detail, errors=errors, **extensions), status_code=status,
                        headers=headers, media_type=PROBLEM_JSON)


def rejected(exc: RequestRejected) -> JSONResponse:
    return problem(exc.status, exc.message)


# The words each 503 starts with, by BackendUnavailable.reason (a public promise: clients and
# runbooks match on them); `reason` itself is in the body too.
UNAVAILABLE_DETAIL = {"unavailable": "broker or store unavailable", "queue_full": "queue full",
                      "store_full": "store cannot write"}


def unavailable(exc: BackendUnavailable) -> JSONResponse:
    cause = UNAVAILABLE_DETAIL.get(exc.reason, UNAVAILABLE_DETAIL["unavailable"])
    return problem(503, f"{cause}: {exc}", headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
                   reason=exc.reason)


def raw_response(record: RequestRecord) -> Response:
    """The backend's own status, headers and body, for `?format=raw` and the sidecar."""
    result = record.result if isinstance(record.result, dict) else {}
    if record.raw_response is None or "status_code" not in result:
        raise RequestRejected(f"request {record.correlation_id} has no raw HTTP response "
                              "(it was not forwarded to an HTTP endpoint)", status=406)
    headers = {k: v for k, v in (result.get("headers") or {}).items() if k.lower() not in _DROPPED}
    return Response(record.raw_response, status_code=int(result["status_code"]), headers=headers)
