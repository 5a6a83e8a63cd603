"""The API's description as its users meet it: /docs and /redoc without internet, the OpenAPI
document (headers, 200 and 202 answers, problem details, security), and a client generated from that
document by openapi-python-client making an authenticated submit -> wait round trip."""

from __future__ import annotations

import hashlib
import importlib
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.harness import InProcess, Sample, in_process, served, settings
from tests.services import IN_CI

API_KEY = "docs-test-key"
AUTH = {"api_keys": [{"name": "docs", "key_sha256": hashlib.sha256(API_KEY.encode()).hexdigest(),
                      "scopes": ["submit", "read"]}]}
ASSET_REFERENCE = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*["']([^"']+)["']""")
GENERATOR = "openapi-python-client"


@pytest.fixture
async def hq(tmp_path: Path) -> AsyncIterator[InProcess]:
    async with in_process(Sample().app, settings(tmp_path, auth=AUTH), workers=False) as running:
        yield running


async def test_docs_pages_load_every_asset_from_the_app_itself_without_credentials(hq: InProcess) -> None:
    for page in ("/docs", "/redoc"):
        html = await hq.client.get(page)
        assert html.status_code == 200, page
        assert "http://" not in html.text and "https://" not in html.text and "//cdn" not in html.text, page
        references = [a or b for a, b in ASSET_REFERENCE.findall(html.text)]
        assert len(references) >= 2, (page, references)
        for reference in references:
            asset = await hq.client.get(reference)
            assert asset.status_code == 200 and asset.content, (page, reference)


async def test_openapi_declares_headers_both_answers_problems_and_security(hq: InProcess) -> None:
    document = (await hq.client.get("/openapi.json")).json()
    submit = document["paths"]["/api/v1/submit"]["post"]["responses"]
    assert set(submit["202"]["headers"]) == {"Location", "Retry-After", "Idempotent-Replayed"}
    assert set(submit["200"]["headers"]) == {"Preference-Applied", "Idempotent-Replayed"}
    assert submit["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ResultResponse")
    assert submit["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/SubmitResponse")
    response = document["paths"]["/api/v1/response/{correlation_id}"]["get"]["responses"]
    assert response["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/ResultResponse")
    assert response["202"]["content"]["application/json"]["schema"]["$ref"].endswith("/StatusResponse")
    assert set(response["202"]["headers"]) == {"Retry-After"}
    for status in ("400", "401", "403", "404", "422", "503"):
        assert set(submit[status]["content"]) == {"application/problem+json"}, status
    assert "HTTPValidationError" not in document["components"]["schemas"]
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    assert schemes["apiKey"] == {"type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert document["paths"]["/api/v1/submit"]["post"]["security"] == [{"bearer": []}, {"apiKey": []}]
    assert "security" not in document["paths"]["/health"]["get"]


async def test_openapi_declares_no_security_when_access_control_is_off(tmp_path: Path) -> None:
    async with in_process(Sample().app, settings(tmp_path), workers=False) as open_hq:
        document = (await open_hq.client.get("/openapi.json")).json()
    assert "securitySchemes" not in document["components"]
    assert "security" not in document["paths"]["/api/v1/submit"]["post"]


@pytest.fixture
def generated_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, Any]]:
    """A served app with access control, and the client package generated from its /openapi.json."""
    generator = shutil.which(GENERATOR)
    if generator is None:
        message = f"{GENERATOR} is not installed (pip install -e '.[test]')"
        if IN_CI:
            pytest.fail(message + "; CI=true requires it", pytrace=False)
        pytest.skip(message)
    with served(Sample().app, settings(tmp_path / "data", auth=AUTH)) as url:
        spec = tmp_path / "openapi.json"
        spec.write_bytes(orjson.dumps(httpx.get(f"{url}/openapi.json").json()))
        subprocess.run([generator, "generate", "--path", str(spec), "--output-path", str(tmp_path / "client")],
                       check=True, capture_output=True, timeout=120)
        monkeypatch.syspath_prepend(str(tmp_path / "client"))
        try:
            yield url, importlib.import_module("open_hqm_client")
        finally:
            for name in [m for m in sys.modules if m == "open_hqm_client" or m.startswith("open_hqm_client.")]:
                del sys.modules[name]


def test_generated_client_submits_and_waits_for_the_result_authenticated(
    generated_client: tuple[str, Any],
) -> None:
    url, package = generated_client
    models = importlib.import_module("open_hqm_client.models")
    submit = importlib.import_module("open_hqm_client.api.default.submit_api_v1_submit_post")
    result = importlib.import_module("open_hqm_client.api.default.get_response_api_v1_response_correlation_id_get")
    body = models.SubmitRequest(payload={"n": 7}, metadata=models.Metadata.from_dict({"handler": "record"}))

    anonymous = package.AuthenticatedClient(base_url=url, token="wrong-key")
    with anonymous:
        refused = submit.sync_detailed(client=anonymous, body=body)
    assert refused.status_code == 401 and refused.parsed.detail == "missing or invalid credentials"

    with package.AuthenticatedClient(base_url=url, token=API_KEY, timeout=httpx.Timeout(30)) as client:
        queued = submit.sync_detailed(client=client, body=body)
        assert queued.status_code == 202, queued.content
        assert queued.headers["Location"] == f"/api/v1/response/{queued.parsed.correlation_id}"
        done = result.sync_detailed(queued.parsed.correlation_id, client=client, wait=20)
    assert done.status_code == 200, done.content
    assert isinstance(done.parsed, models.ResultResponse)
    assert (done.parsed.status, done.parsed.result) == ("COMPLETED", {"n": 7})
