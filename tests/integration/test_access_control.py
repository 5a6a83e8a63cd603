"""Client access control on `openhqm serve`'s app on a real socket in the test process
(tests/harness.py): API keys, a JWT issuer, scopes, isolation. Moved from tests/e2e/."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest

from openhqm import Client
from openhqm.client import Forbidden, RequestNotFound, Unauthorized
from tests.harness import Sample, served, settings

JWT_SECRET = "test-secret-that-is-at-least-32-bytes"
KEYS = {"a": "key-for-a", "b": "key-for-b", "admin": "key-for-admin"}
SCOPES = {"a": ["submit", "read"], "b": ["submit", "read"], "admin": ["submit", "read", "admin"]}


@dataclass
class Server:
    url: str


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    api_keys = [{"name": name, "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "scopes": SCOPES[name]}
                for name, key in KEYS.items()]
    auth = {"api_keys": api_keys, "jwt": {"key": JWT_SECRET, "audience": "openhqm", "issuer": "https://idp.test"}}
    with served(Sample().app, settings(tmp_path_factory.mktemp("auth"), auth=auth)) as url:
        yield Server(url)


def as_client(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name]}"}


def jwt_headers(**claims: Any) -> dict[str, str]:
    payload = {"sub": "svc-jwt", "aud": "openhqm", "iss": "https://idp.test", "exp": int(time.time()) + 300,
               "scope": "submit read", **claims}
    return {"Authorization": f"Bearer {jwt.encode(payload, JWT_SECRET, algorithm='HS256')}"}


def submit(server: Server, headers: dict[str, str], metadata: dict[str, Any] | None = None,
           wait_s: float | None = None) -> httpx.Response:
    prefer = {"Prefer": f"wait={wait_s}"} if wait_s else {}
    return httpx.post(f"{server.url}/api/v1/submit", json={"payload": {"n": 1}, "metadata": metadata or {}},
                      headers={**headers, **prefer}, timeout=30)


def test_missing_and_wrong_credentials_get_the_same_401(server: Server) -> None:
    url = f"{server.url}/api/v1/submit"
    answers = [
        httpx.post(url, json={"payload": 1}),
        httpx.post(url, json={"payload": 1}, headers={"Authorization": "Bearer not-a-key"}),
        httpx.post(url, json={"payload": 1}, headers={"X-API-Key": "not-a-key"}),
        httpx.post(url, json={"payload": 1}, headers=jwt_headers(exp=int(time.time()) - 3600)),
        httpx.post(url, json={"payload": 1}, headers=jwt_headers(aud="another-service")),
        httpx.post(url, json={"payload": 1}, headers={"Authorization": "Bearer " + jwt.encode(
            {"sub": "x", "exp": int(time.time()) + 60}, "wrong-secret-wrong-secret-wrong-secret")}),
    ]
    for response in answers:
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.content == answers[0].content
    assert "credentials" in answers[0].json()["detail"]


def test_credentials_are_checked_before_the_body_is_read(server: Server) -> None:
    response = httpx.post(f"{server.url}/api/v1/submit", content=b"x" * 10_000,
                          headers={"content-type": "application/json"})
    assert response.status_code == 401


def test_health_ready_metrics_and_docs_stay_open(server: Server) -> None:
    for path in ("/health", "/ready", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(server.url + path).status_code == 200, path


def test_another_clients_request_answers_404_and_is_left_alone(server: Server) -> None:
    response = submit(server, as_client("a"), {"handler": "record", "delay_s": 60})
    assert response.status_code == 202
    cid = response.json()["correlation_id"]
    for method, path in (("GET", f"/api/v1/status/{cid}"), ("GET", f"/api/v1/response/{cid}"),
                         ("GET", f"/api/v1/response/{cid}?wait=0.1"), ("DELETE", f"/api/v1/requests/{cid}"),
                         ("GET", f"/api/v1/requests/{cid}/events")):
        foreign = httpx.request(method, server.url + path, headers=as_client("b"))
        assert foreign.status_code == 404, path
        assert cid in foreign.json()["detail"]
    own = httpx.get(f"{server.url}/api/v1/status/{cid}", headers=as_client("a"))
    assert own.status_code == 200 and own.json()["status"] == "SCHEDULED"  # b's DELETE changed nothing
    cancelled = httpx.delete(f"{server.url}/api/v1/requests/{cid}", headers={"X-API-Key": KEYS["a"]})
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"


def test_client_reads_its_own_result(server: Server) -> None:
    cid = submit(server, as_client("a"), wait_s=10).json()["correlation_id"]
    result = httpx.get(f"{server.url}/api/v1/response/{cid}", headers=as_client("a"))
    assert result.status_code == 200 and result.json()["result"] == {"n": 1}


def test_admin_routes_need_the_admin_scope(server: Server) -> None:
    for path in ("/api/v1/dlq", "/api/v1/stats"):
        refused = httpx.get(server.url + path, headers=as_client("a"))
        assert refused.status_code == 403, path
        assert "'admin'" in refused.json()["detail"]
        assert httpx.get(server.url + path, headers=as_client("admin")).status_code == 200, path
    assert httpx.delete(f"{server.url}/api/v1/dlq", headers=as_client("b")).status_code == 403


def test_callback_redelivery_needs_the_admin_scope_and_hides_foreign_requests(server: Server) -> None:
    cid = submit(server, as_client("a"), wait_s=10).json()["correlation_id"]
    resend = f"{server.url}/api/v1/requests/{cid}/callback"
    assert httpx.post(resend, headers=as_client("a")).status_code == 403
    assert httpx.post(resend, headers=jwt_headers(scope="read submit admin")).status_code == 404  # not its own


def test_jwt_client_submits_and_reads_end_to_end(server: Server) -> None:
    response = submit(server, jwt_headers(), wait_s=10)
    assert response.status_code == 200 and response.json()["status"] == "COMPLETED"
    cid = response.json()["correlation_id"]
    assert httpx.get(f"{server.url}/api/v1/status/{cid}", headers=jwt_headers()).status_code == 200
    assert httpx.get(f"{server.url}/api/v1/status/{cid}", headers=as_client("a")).status_code == 404


def test_jwt_without_the_submit_scope_gets_403_naming_it(server: Server) -> None:
    response = submit(server, jwt_headers(scope="read"))
    assert response.status_code == 403
    assert "'submit'" in response.json()["detail"]


def test_python_client_sends_its_key_or_token_as_bearer(server: Server) -> None:
    with Client(server.url, api_key=KEYS["a"]) as a, Client(server.url, api_key=KEYS["b"]) as b:
        done = a.submit({"n": 3}, wait_s=10)
        assert a.result(done.correlation_id).result == {"n": 3}
        with pytest.raises(RequestNotFound):
            b.status(done.correlation_id)
    token = jwt_headers(scope="read")["Authorization"].removeprefix("Bearer ")
    with Client(server.url, api_key=token) as reader, pytest.raises(Forbidden, match="'submit'"):
        reader.submit(1)
    with Client(server.url, api_key="wrong") as stranger, pytest.raises(Unauthorized) as caught:
        stranger.status(done.correlation_id)
    assert caught.value.status_code == 401
