"""Schemathesis fuzzes every operation in `/openapi.json` of `openhqm serve`'s app, served in the test
process on a real socket (tests/harness.py), once with client access control off and once with it on
(requests carry an API key holding every scope): no answer may be a 5xx, and every answer must match
what the document declares (status code, content type, headers, body schema).

Path parameters are sometimes ids that exist (a completed request, a dead-lettered one, their
session and dead letter), so the answers for real records are checked too, not only 404s.

Bounded: a few derandomized examples per operation, and the waits the API offers (`Prefer: wait`,
`?wait=`) capped by `server.max_wait_s`, so a generated `wait=1e9` costs a fraction of a second.
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import checks

from openhqm import OpenHQM
from openhqm.config import Settings
from openhqm.errors import DeadLetter
from openhqm.http.app import create_app
from openhqm.worker.handlers import Job
from tests.harness import served, wait_until
from tests.harness import settings as harness_settings

# About 40 s in all (scripts/test runs slow tests too; `-m "not slow"` leaves this out).
pytestmark = pytest.mark.slow

API_KEY = "fuzz-key-holding-every-scope"
AUTH_HEADERS = {"Authorization": f"Bearer {API_KEY}"}
# schemathesis.checks resolves every built-in check by name. Left out: positive_data_acceptance
# (a schema-valid submit may name a handler that does not exist: 400 by design) and
# negative_data_rejection (pydantic's lax mode takes `"delay_s": false` as 0, an accepted leniency).
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.response_schema_conformance,
          checks.missing_required_header, checks.unsupported_method, checks.allow_header_conformance]
FUZZ_SETTINGS = settings(max_examples=100, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(HealthCheck))


def fuzz_settings(data_dir: Path, *, secured: bool) -> Settings:
    sections: dict[str, Any] = {"queue": {"type": "memory"}, "results": {"type": "sqlite"},
                                "server": {"max_wait_s": 0.2}}
    if secured:
        key_sha256 = hashlib.sha256(API_KEY.encode()).hexdigest()
        sections["auth"] = {"api_keys": [{"name": "fuzzer", "key_sha256": key_sha256,
                                          "scopes": ["submit", "read", "admin"]}]}
    return harness_settings(data_dir, **sections)


def api_description(*, secured: bool) -> dict[str, Any]:
    """The OpenAPI document of the app a fixture below serves, read without serving it: Schemathesis
    turns each operation into a test when the module is collected (its lazy `from_fixture` loading
    fails on pytest 9, which dropped `Node._nodeid`). Building the app starts nothing (runtime.py),
    so this data directory is never used; the first test checks the served documents are these."""
    unused = Path(tempfile.gettempdir()) / "openhqm-fuzz-description"
    app = fuzzed_app()
    app.settings = fuzz_settings(unused, secured=secured)
    description: dict[str, Any] = create_app(app).openapi()
    return description


def fuzzed_app() -> OpenHQM:
    app = OpenHQM()

    @app.handler("give_up")
    async def give_up(job: Job) -> None:
        raise DeadLetter("fuzzing needs a dead letter")

    return app


def existing_ids(url: str, headers: dict[str, str]) -> dict[str, list[str]]:
    """Real values for each path parameter: a completed request, a dead-lettered one, their session
    and the dead letter. Only finished requests: an event stream on an unfinished one stays open."""
    submitted = [httpx.post(f"{url}/api/v1/submit", headers=headers, json={
        "payload": {"n": 1}, "metadata": {"session_id": "fuzz-session", "handler": handler}}).json()["correlation_id"]
        for handler in ("echo", "give_up")]
    wait_until(lambda: len(httpx.get(f"{url}/api/v1/dlq", headers=headers).json()) == 1)
    wait_until(lambda: all(httpx.get(f"{url}/api/v1/status/{cid}", headers=headers).json()["status"] in
                           ("COMPLETED", "FAILED") for cid in submitted))
    dead_letter_id = httpx.get(f"{url}/api/v1/dlq", headers=headers).json()[0]["id"]
    return {"correlation_id": submitted, "session_id": ["fuzz-session"], "dead_letter_id": [dead_letter_id]}


def sometimes_existing(known: dict[str, list[str]]) -> Any:
    """A Schemathesis hook: each generated path parameter, or now and then an existing value."""

    def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any] | None) -> Any:
        names = [name for name in path_parameters or {} if known.get(name)]
        if not names:
            return st.just(path_parameters)
        existing = st.fixed_dictionaries({name: st.sampled_from(known[name]) for name in names})
        return st.one_of(st.just(path_parameters), existing.map(lambda values: {**path_parameters, **values}))

    return flatmap_path_parameters


OPEN_SCHEMA = schemathesis.openapi.from_dict(api_description(secured=False))
SECURED_SCHEMA = schemathesis.openapi.from_dict(api_description(secured=True))
OPEN_IDS: dict[str, list[str]] = {}
SECURED_IDS: dict[str, list[str]] = {}
OPEN_SCHEMA.hook(sometimes_existing(OPEN_IDS))
SECURED_SCHEMA.hook(sometimes_existing(SECURED_IDS))


def serve(data_dir: Path, *, secured: bool, known: dict[str, list[str]]) -> Iterator[str]:
    with served(fuzzed_app(), fuzz_settings(data_dir, secured=secured)) as url:
        known.update(existing_ids(url, AUTH_HEADERS if secured else {}))
        yield url
        known.clear()


@pytest.fixture(scope="module")
def open_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve(tmp_path_factory.mktemp("fuzz-open"), secured=False, known=OPEN_IDS)


@pytest.fixture(scope="module")
def secured_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve(tmp_path_factory.mktemp("fuzz-secured"), secured=True, known=SECURED_IDS)


def test_the_fuzzed_descriptions_are_the_ones_the_servers_publish(open_api: str, secured_api: str) -> None:
    assert httpx.get(open_api + "/openapi.json").json() == OPEN_SCHEMA.raw_schema
    assert httpx.get(secured_api + "/openapi.json").json() == SECURED_SCHEMA.raw_schema


@OPEN_SCHEMA.parametrize()
@FUZZ_SETTINGS
def test_every_operation_answers_as_documented_without_access_control(case: schemathesis.Case,
                                                                       open_api: str) -> None:
    case.call_and_validate(base_url=open_api, checks=CHECKS)


@SECURED_SCHEMA.parametrize()
@FUZZ_SETTINGS
def test_every_operation_answers_as_documented_for_a_client_with_every_scope(case: schemathesis.Case,
                                                                              secured_api: str) -> None:
    # ignored_auth: the same request without the key must answer 401.
    case.call_and_validate(base_url=secured_api, headers=AUTH_HEADERS, checks=[*CHECKS, checks.ignored_auth])
