"""Schemathesis fuzzes every operation in `/openapi.json` of `openhqm serve`'s app, served in the test
process on a real socket (tests/harness.py), once with client access control off and once with it on
(requests carry an API key holding every scope): no answer may be a 5xx, and every answer must match
what the document declares (status code, content type, headers, body schema).

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
from schemathesis import checks

from openhqm import OpenHQM
from openhqm.config import Settings
from openhqm.http.app import create_app
from tests.harness import served
from tests.harness import settings as harness_settings

API_KEY = "fuzz-key-holding-every-scope"
AUTH_HEADERS = {"Authorization": f"Bearer {API_KEY}"}
# schemathesis.checks resolves every built-in check by name.
CHECKS = [checks.not_a_server_error, checks.status_code_conformance, checks.content_type_conformance,
          checks.response_headers_conformance, checks.response_schema_conformance]
FUZZ_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
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
    turns each operation into a test when the module is collected. Building the app starts nothing
    (runtime.py), so this data directory is never used."""
    unused = Path(tempfile.gettempdir()) / "openhqm-fuzz-description"
    description: dict[str, Any] = create_app(OpenHQM(fuzz_settings(unused, secured=secured))).openapi()
    return description


OPEN_SCHEMA = schemathesis.openapi.from_dict(api_description(secured=False))
SECURED_SCHEMA = schemathesis.openapi.from_dict(api_description(secured=True))


def serve(data_dir: Path, *, secured: bool) -> Iterator[str]:
    with served(OpenHQM(), fuzz_settings(data_dir, secured=secured)) as url:
        yield url


@pytest.fixture(scope="module")
def open_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve(tmp_path_factory.mktemp("fuzz-open"), secured=False)


@pytest.fixture(scope="module")
def secured_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield from serve(tmp_path_factory.mktemp("fuzz-secured"), secured=True)


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
    case.call_and_validate(base_url=secured_api, headers=AUTH_HEADERS, checks=CHECKS)
