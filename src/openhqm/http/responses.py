"""JSON responses rendered with orjson: faster than the standard library on every answer."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse as _StarletteJSONResponse
from starlette.responses import Response

from openhqm.errors import BackendUnavailable, RequestRejected
from openhqm.results.base import RequestRecord

# Describe the body as the backend sent it; recomputed for the body the client receives.
_RECOMPUTED = frozenset({"content-length", "transfer-encoding", "content-encoding", "connection"})


class JSONResponse(_StarletteJSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def rejected(exc: RequestRejected) -> JSONResponse:
    return JSONResponse({"detail": exc.message}, status_code=exc.status)


def unavailable(exc: BackendUnavailable) -> JSONResponse:
    return JSONResponse({"detail": f"queue unavailable: {exc}"}, status_code=503, headers={"Retry-After": "5"})


def raw_response(record: RequestRecord) -> Response:
    """The backend's own status, headers and body, for `?format=raw` and the sidecar."""
    result = record.result if isinstance(record.result, dict) else {}
    if record.raw_response is None or "status_code" not in result:
        raise RequestRejected(f"request {record.correlation_id} has no raw HTTP response "
                              "(it was not forwarded to an HTTP endpoint)", status=406)
    headers = {k: v for k, v in (result.get("headers") or {}).items() if k.lower() not in _RECOMPUTED}
    return Response(record.raw_response, status_code=int(result["status_code"]), headers=headers)
