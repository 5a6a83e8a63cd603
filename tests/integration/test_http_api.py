"""The HTTP API of `openhqm serve`'s app, served in the test process (tests/harness.py) on a real
socket, on the embedded SQLite default. Moved from tests/e2e/test_api.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.harness import Sample, in_process, served, settings, wait_until


@dataclass
class Server:
    url: str
    data_dir: Path
    sample: Sample


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data_dir = tmp_path_factory.mktemp("serve")
    sample = Sample()
    with served(sample.app, settings(data_dir)) as url:
        yield Server(url, data_dir, sample)


def submit(server: Server, payload: object, metadata: dict[str, object] | None = None,
           headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{server.url}/api/v1/submit", json={"payload": payload, "metadata": metadata or {}},
                      headers=headers, timeout=30)


def test_submit_answers_202_with_location_then_long_poll_returns_the_result(server: Server) -> None:
    response = submit(server, {"n": 1})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] in ("PENDING", "PROCESSING", "COMPLETED")
    assert response.headers["Retry-After"] == "1"
    location = response.headers["Location"]
    assert location == f"/api/v1/response/{body['correlation_id']}"
    result = httpx.get(f"{server.url}{location}", params={"wait": 10}, timeout=30)
    assert result.status_code == 200
    assert result.json()["status"] == "COMPLETED"
    assert result.json()["result"] == {"n": 1}
    assert set(result.json()) == {"correlation_id", "status", "result", "error", "submitted_at",
                                  "completed_at", "processing_time_ms", "attempts"}


def test_prefer_wait_returns_the_result_inline(server: Server) -> None:
    response = submit(server, [1, "two", None], headers={"Prefer": "wait=10"})
    assert response.status_code == 200
    assert response.json()["result"] == [1, "two", None]
    assert response.json()["attempts"] == 1
    assert response.headers["Preference-Applied"] == "wait=10"


def test_prefer_wait_answers_202_when_the_request_takes_longer(server: Server) -> None:
    response = submit(server, {"sleep_s": 1.5}, {"handler": "record"}, headers={"Prefer": "wait=0.2"})
    assert response.status_code == 202
    assert "Location" in response.headers


def test_status_reports_the_lifecycle(server: Server) -> None:
    cid = submit(server, "x", headers={"Prefer": "wait=10"}).json()["correlation_id"]
    status = httpx.get(f"{server.url}/api/v1/status/{cid}").json()
    assert status["status"] == "COMPLETED" and status["attempts"] == 1


def test_unknown_id_answers_404(server: Server) -> None:
    for path in ("/api/v1/status/nope", "/api/v1/response/nope", "/api/v1/response/nope?wait=0.1"):
        response = httpx.get(server.url + path)
        assert response.status_code == 404
        assert "nope" in response.json()["detail"]


def test_scheduled_request_can_be_cancelled_and_never_runs(server: Server) -> None:
    response = submit(server, {"cancel": True}, {"handler": "record", "delay_s": 1.0})
    cid = response.json()["correlation_id"]
    assert response.json()["status"] == "SCHEDULED"
    cancelled = httpx.delete(f"{server.url}/api/v1/requests/{cid}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "CANCELLED"
    # Past the delay the worker takes the message, finds it cancelled and settles it: then it has
    # had its chance to (wrongly) run it.
    wait_until(lambda: httpx.get(f"{server.url}/api/v1/stats").json()["queues"]["openhqm-requests"]["depth"] == 0)
    assert server.sample.ran(cid) == 0
    final = httpx.get(f"{server.url}/api/v1/response/{cid}")
    assert final.status_code == 200 and final.json()["status"] == "CANCELLED"


def test_cancelling_a_finished_request_answers_409(server: Server) -> None:
    cid = submit(server, 1, headers={"Prefer": "wait=10"}).json()["correlation_id"]
    response = httpx.delete(f"{server.url}/api/v1/requests/{cid}")
    assert response.status_code == 409
    assert "COMPLETED" in response.json()["detail"]


def test_body_over_the_limit_answers_413(server: Server) -> None:
    response = submit(server, "x" * 10_000)
    assert response.status_code == 413
    assert "max_body_bytes" in response.json()["detail"]


def test_chunked_body_over_the_limit_answers_413(server: Server) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"payload": "'
        for _ in range(100):
            yield b"x" * 100
        yield b'"}'

    response = httpx.post(f"{server.url}/api/v1/submit", content=chunks(),
                          headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_malformed_json_answers_422_naming_where(server: Server) -> None:
    response = httpx.post(f"{server.url}/api/v1/submit", content=b'{"payload": ',
                          headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["errors"][0]["loc"][0] == "body" and "JSON" in response.json()["detail"]


def test_invalid_priority_answers_422_naming_the_field(server: Server) -> None:
    response = submit(server, 1, {"priority": "SOMETIMES"})
    assert response.status_code == 422
    assert "priority" in str(response.json()["detail"])


def test_payload_json_cannot_carry_answers_422_naming_the_problem(server: Server) -> None:
    response = httpx.post(f"{server.url}/api/v1/submit", content=b'{"payload": {"n": 123456789012345678901234567890}}',
                          headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert "64-bit" in response.json()["detail"]


def test_metadata_and_headers_the_queue_cannot_carry_answer_422_not_503(server: Server) -> None:
    # JSON text can spell both; the queue envelope cannot hold either (found by test_api_fuzzing.py).
    for body, field in (('{"payload": 1, "metadata": {"n": 36893488147419103232}}', "metadata"),
                        ('{"payload": 1, "metadata": {"note": "\\ud800"}}', "metadata"),
                        ('{"payload": 1, "metadata": {"handler": "\\ud800"}}', "metadata"),
                        ('{"payload": 1, "headers": {"x-note": "\\ud800"}}', "headers")):
        refused = httpx.post(f"{server.url}/api/v1/submit", content=body.encode(),
                             headers={"content-type": "application/json"})
        assert refused.status_code == 422, body
        assert refused.json()["errors"][0]["loc"] == ["body", field], body
        assert f"{field} cannot be queued" in refused.json()["detail"], body


def test_method_not_allowed_names_every_method_the_path_answers(server: Server) -> None:
    # GET and DELETE /api/v1/dlq are two routes; the framework's Allow named only the first.
    refused = httpx.put(f"{server.url}/api/v1/dlq")
    assert refused.status_code == 405 and refused.headers["Allow"] == "DELETE, GET"
    assert httpx.post(f"{server.url}/health").headers["Allow"] == "GET"


def test_unknown_handler_answers_400_listing_valid_ones(server: Server) -> None:
    response = submit(server, 1, {"handler": "recrod"})
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "recrod" in detail and "record" in detail and "echo" in detail


def test_failing_request_is_dead_lettered_and_replay_runs_it_again(server: Server) -> None:
    server.sample.failing = True
    failed = submit(server, {}, {"handler": "flaky"}, headers={"Prefer": "wait=20"})
    assert failed.status_code == 200
    body = failed.json()
    assert body["status"] == "FAILED" and body["attempts"] == 2
    assert "marker present" in body["error"]
    entries = [e for e in httpx.get(f"{server.url}/api/v1/dlq").json()
               if e["correlation_id"] == body["correlation_id"]]
    assert len(entries) == 1
    entry = entries[0]
    assert set(entry) >= {"id", "correlation_id", "reason", "attempts", "last_error", "dead_lettered_at"}
    assert entry["attempts"] == 2 and "marker present" in entry["last_error"]
    assert entry["reason"] == "max_attempts" and entry["detail"] == "failed after 2 attempt(s)"
    server.sample.failing = False
    replay = httpx.post(f"{server.url}/api/v1/dlq/{entry['id']}/replay")
    assert replay.status_code == 202
    new_id = replay.json()["correlation_id"]
    assert replay.json()["replayed_from"] == body["correlation_id"]
    result = httpx.get(f"{server.url}/api/v1/response/{new_id}", params={"wait": 20}, timeout=30).json()
    assert result["status"] == "COMPLETED" and result["result"] == "recovered"
    assert httpx.post(f"{server.url}/api/v1/dlq/{entry['id']}/replay").status_code == 404


def test_handler_that_gives_up_is_dead_lettered_without_retries(server: Server) -> None:
    body = submit(server, 1, {"handler": "give_up"}, headers={"Prefer": "wait=20"}).json()
    assert body["status"] == "FAILED" and body["attempts"] == 1
    assert "never succeed" in body["error"]
    [entry] = [e for e in httpx.get(f"{server.url}/api/v1/dlq").json() if e["correlation_id"] == body["correlation_id"]]
    assert entry["reason"] == "handler" and entry["detail"] == "handler gave up"


def test_a_result_json_cannot_carry_fails_once_with_the_reason(server: Server) -> None:
    for payload, reason in (("bytes", "bytes"), ("bigint", "64-bit")):
        body = submit(server, payload, {"handler": "not_json"}, headers={"Prefer": "wait=20"}).json()
        assert body["status"] == "FAILED" and body["attempts"] == 1, body
        assert "result is not JSON" in body["error"] and reason in body["error"]
        answer = httpx.get(f"{server.url}/api/v1/response/{body['correlation_id']}")
        assert answer.status_code == 200 and answer.json()["status"] == "FAILED"


def test_health_ready_and_metrics_answer(server: Server) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/ready")
    assert ready.status_code == 200 and ready.json()["checks"]["queue"]["ok"]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'openhqm_http_requests_total{method="POST",route="/api/v1/submit"' in metrics
    assert "/api/v1/response/{correlation_id}" in metrics


def test_metrics_are_documented_as_the_text_they_answer(server: Server) -> None:
    answer = httpx.get(f"{server.url}/metrics")
    documented = httpx.get(f"{server.url}/openapi.json").json()["paths"]["/metrics"]["get"]["responses"]["200"]
    assert answer.headers["content-type"].startswith("text/plain")
    assert list(documented["content"]) == ["text/plain"]


async def test_undecodable_message_is_dead_lettered_with_its_reason_and_work_goes_on(
    server: Server,
) -> None:
    from openhqm.backends import create_backend
    from openhqm.config import Settings

    producer = create_backend(Settings(data_dir=server.data_dir))
    await producer.connect()
    await producer.publish("openhqm-requests", b"\xff\x00 not an envelope")
    await producer.close()
    def dead_lettered() -> bool:
        entries = httpx.get(f"{server.url}/api/v1/dlq").json()
        return any(e["reason"] == "handler" and e["detail"].startswith("undecodable message")
                   and e["correlation_id"] == "" for e in entries)

    await asyncio.to_thread(wait_until, dead_lettered)
    assert submit(server, "still working", headers={"Prefer": "wait=10"}).json()["status"] == "COMPLETED"


def test_unusual_requests_on_the_hot_routes_get_the_frameworks_own_answers(server: Server) -> None:
    # The hot routes skip FastAPI when a request is plain (http/fastpath.py); everything else must
    # still reach the framework and answer exactly as it would.
    cid = submit(server, 1, headers={"Prefer": "wait=20"}).json()["correlation_id"]
    url = f"{server.url}/api/v1/response/{cid}"
    assert httpx.get(url, params={"wait": "0.5"}).status_code == 200
    for query, field in (({"wait": "soon"}, "wait"), ({"wait": "-1"}, "wait"), ({"format": "xml"}, "format")):
        refused = httpx.get(url, params=query)
        assert refused.status_code == 422, query
        assert refused.json()["errors"][0]["loc"] == ["query", field]
    assert httpx.get(f"{url}?wait=1&wait=2").status_code == 200
    assert httpx.get(f"{server.url}/api/v1/response/unknown-id").status_code == 404

    with_charset = httpx.post(f"{server.url}/api/v1/submit", content=b'{"payload": 1}',
                              headers={"content-type": "application/json; charset=utf-8"})
    assert with_charset.status_code == 202 and with_charset.headers["location"].startswith("/api/v1/response/")
    not_json = httpx.post(f"{server.url}/api/v1/submit", content=b'{"payload": 1}',
                          headers={"content-type": "text/plain"})
    assert not_json.status_code == 422
    unknown_field = httpx.post(f"{server.url}/api/v1/submit", json={"payload": 1, "extra": True})
    assert unknown_field.status_code == 422 and unknown_field.json()["errors"][0]["loc"] == ["body", "extra"]


async def test_preference_applied_states_the_wait_capped_at_max_wait(tmp_path: Path) -> None:
    sample = Sample()
    async with in_process(sample.app, settings(tmp_path, server={"max_wait_s": 7})) as hq:
        inline = await hq.submit(1, headers={"Prefer": "wait=999"})
        assert inline.status_code == 200 and inline.headers["Preference-Applied"] == "wait=7"
        keyed = await hq.submit(2, headers={"Prefer": "wait=999", "Idempotency-Key": "capped-wait"})
        assert keyed.status_code == 200 and keyed.headers["Preference-Applied"] == "wait=7"
