"""proxy.* and callbacks.* settings: defaults, accepted forms and the messages for mistakes."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import ValidationError

from openhqm.config import load_settings
from openhqm.errors import ConfigError
from openhqm.forward.auth_settings import ApiKeyAuth, BasicAuth, BearerAuth, CustomAuth
from openhqm.forward.settings import CallbackSettings, EndpointSettings, ProxySettings, TimeoutSettings

URL = "http://backend.internal:8080/api"


def test_defaults_are_off_and_bounded() -> None:
    settings = load_settings(overrides={})
    assert settings.proxy.enabled is False and settings.callbacks.enabled is False
    endpoint = EndpointSettings(url=URL)
    assert (endpoint.method, endpoint.follow_redirects, endpoint.tls.verify) == ("POST", False, True)
    assert endpoint.max_response_bytes == 10 * 1024 * 1024 and endpoint.max_concurrency == 100
    assert endpoint.forward_headers == ["*"] and endpoint.retry is None


def test_unknown_default_endpoint_is_a_config_error_listing_valid_names() -> None:
    overrides = {
        "proxy": {
            "enabled": True,
            "default_endpoint": "ordrs",
            "endpoints": {"orders": {"url": URL}, "billing": {"url": URL}},
        }
    }
    with pytest.raises(ConfigError, match=r"proxy\.default_endpoint.*'ordrs'.*valid: billing, orders"):
        load_settings(overrides=overrides)


def test_route_to_an_unknown_endpoint_is_a_config_error() -> None:
    overrides = {
        "proxy": {
            "endpoints": {"orders": {"url": URL}},
            "routes": [{"path_prefix": "/x", "endpoint": "nope"}],
        }
    }
    with pytest.raises(ConfigError, match=r"proxy\.routes.*route 0 names no endpoint: 'nope'; valid: orders"):
        load_settings(overrides=overrides)


def test_default_endpoint_may_be_a_url() -> None:
    proxy = ProxySettings(enabled=True, default_endpoint="http://svc:9000/")
    assert proxy.default_name() == "default"
    assert proxy.all_endpoints()["default"].url == "http://svc:9000/"


def test_a_single_endpoint_is_the_default() -> None:
    assert ProxySettings(endpoints={"only": {"url": URL}}).default_name() == "only"
    assert ProxySettings(endpoints={"a": {"url": URL}, "b": {"url": URL}}).default_name() is None


@pytest.mark.parametrize(
    ("flat", "expected"),
    [
        ({"auth_type": "bearer", "auth_token": "t"}, BearerAuth),
        ({"auth_type": "api_key", "auth_token": "k", "auth_header_name": "X-Key"}, ApiKeyAuth),
        ({"auth_type": "basic", "auth_username": "u", "auth_password": "p"}, BasicAuth),
        ({"auth_type": "custom", "auth_token": "v", "auth_header_name": "X-Sig"}, CustomAuth),
    ],
)
def test_original_flat_auth_form_is_converted(flat: dict[str, str], expected: type) -> None:
    endpoint = EndpointSettings(url=URL, **flat)  # type: ignore[arg-type]
    assert isinstance(endpoint.auth, expected)


def test_flat_auth_without_a_type_means_no_auth() -> None:
    assert EndpointSettings.model_validate({"url": URL, "auth_type": None}).auth is None


def test_secrets_are_masked_in_repr() -> None:
    endpoint = EndpointSettings.model_validate(
        {
            "url": URL,
            "auth": {
                "type": "oauth2_client_credentials",
                "token_url": "https://idp/token",
                "client_id": "id",
                "client_secret": "s3cr3t-value",
            },
        }
    )
    assert "s3cr3t-value" not in repr(endpoint) and "s3cr3t-value" not in str(endpoint.model_dump())


def test_timeout_is_a_number_or_per_phase() -> None:
    number = EndpointSettings(url=URL, timeout_s=7).timeouts
    phases = EndpointSettings.model_validate({"url": URL, "timeout_s": {"connect": 2, "read": 9}}).timeouts
    assert number == TimeoutSettings(connect=7, read=7, total=7)
    assert phases == TimeoutSettings(connect=2, read=9, total=None)


def test_rate_burst_defaults_to_one_second_of_calls_and_needs_a_rate() -> None:
    assert EndpointSettings(url=URL, rate_limit_per_s=2.5).burst == 3
    with pytest.raises(ValidationError, match="rate_burst needs rate_limit_per_s"):
        EndpointSettings(url=URL, rate_burst=4)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("url", "ftp://x/", "http"),
        ("url", "not a url", "http"),
        ("method", "GE T", "not a valid HTTP header name"),
        ("headers", {"Bad Name": "x"}, "not a valid HTTP header name"),
        ("headers", {"X-A": "a\r\nInjected: 1"}, "CR, LF"),
        ("headers", {"Content-Length": "5"}, "managed by the HTTP client"),
        ("forward_headers", ["X A"], "not header names"),
    ],
)
def test_invalid_endpoint_values_are_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        EndpointSettings.model_validate({"url": URL, field: value})


def test_auth_secrets_cannot_inject_headers() -> None:
    with pytest.raises(ValidationError, match="CR, LF"):
        EndpointSettings.model_validate({"url": URL, "auth": {"type": "bearer", "token": "t\r\nX-Evil: 1"}})


def test_tls_client_key_needs_a_certificate() -> None:
    with pytest.raises(ValidationError, match="client_key needs client_cert"):
        EndpointSettings.model_validate({"url": URL, "tls": {"client_key": "/k.pem"}})


def test_route_needs_a_condition_and_normalises_methods() -> None:
    proxy = ProxySettings(endpoints={"a": {"url": URL}}, routes=[{"endpoint": "a", "method": "post"}])
    assert proxy.routes[0].method == ["POST"]
    with pytest.raises(ValidationError, match="at least one of"):
        ProxySettings(endpoints={"a": {"url": URL}}, routes=[{"endpoint": "a"}])


def test_sidecar_needs_proxy_mode() -> None:
    with pytest.raises(ValidationError, match=r"sidecar\.enabled needs proxy\.enabled"):
        ProxySettings(sidecar={"enabled": True})
    assert ProxySettings(enabled=True, sidecar={"enabled": True, "respond_async": True}).sidecar.prefix == "/"


def test_endpoint_names_are_restricted() -> None:
    with pytest.raises(ValidationError, match="endpoint names"):
        ProxySettings(endpoints={"Has Space": {"url": URL}})


def test_callback_secret_accepts_whsec_base64_and_raw_text() -> None:
    key = b"\x00\x01binary-key\xff"
    standard = CallbackSettings(enabled=True, secret="whsec_" + base64.b64encode(key).decode())
    raw = CallbackSettings(enabled=True, secret="plain text secret")
    assert standard.secret_bytes() == key
    assert raw.secret_bytes() == b"plain text secret"


def test_callback_secret_errors_do_not_echo_it() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(overrides={"callbacks": {"enabled": True, "secret": "whsec_!!not-base64-CANARY"}})
    assert "CANARY" not in str(info.value) and "valid base64" in str(info.value)
    with pytest.raises(ConfigError, match="needs a signing secret"):
        load_settings(overrides={"callbacks": {"enabled": True}})


def test_callback_allow_hosts_accept_names_ips_and_cidrs() -> None:
    settings = CallbackSettings(allow_hosts=["Hooks.Example.com", "*.corp.example", "10.0.0.0/8", "::1"])
    assert settings.allow_hosts == ["hooks.example.com", "*.corp.example", "10.0.0.0/8", "::1"]
    with pytest.raises(ValidationError, match="not a host name"):
        CallbackSettings(allow_hosts=["http://x/"])


def test_nested_environment_variables_configure_endpoints(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("OPENHQM_PROXY__ENABLED", "true")
    monkeypatch.setenv("OPENHQM_PROXY__DEFAULT_ENDPOINT", "api")
    monkeypatch.setenv("OPENHQM_PROXY__ENDPOINTS__API__URL", URL)
    monkeypatch.setenv("OPENHQM_PROXY__ENDPOINTS__API__TIMEOUT_S", "5")
    monkeypatch.setenv("OPENHQM_PROXY__ENDPOINTS__API__AUTH__TYPE", "bearer")
    monkeypatch.setenv("OPENHQM_PROXY__ENDPOINTS__API__AUTH__TOKEN", "tok")
    monkeypatch.setenv("OPENHQM_PROXY__ENDPOINTS__API__FORWARD_HEADERS", '["*", "Authorization"]')
    monkeypatch.setenv("OPENHQM_CALLBACKS__ALLOW_HOSTS", '["10.0.0.0/8"]')
    settings = load_settings(overrides={"data_dir": str(tmp_path)})
    endpoint = settings.proxy.endpoints["api"]
    assert endpoint.timeouts.total == 5
    assert isinstance(endpoint.auth, BearerAuth) and endpoint.auth.token.get_secret_value() == "tok"
    assert endpoint.forward_headers == ["*", "Authorization"]
    assert settings.callbacks.allow_hosts == ["10.0.0.0/8"]


@pytest.mark.parametrize(("batch", "named"), [({"max_size": 0}, "max_size"), ({"max_wait_s": 0}, "max_wait_s")])
def test_an_endpoint_batch_that_cannot_form_is_a_config_error_naming_the_key(batch: dict[str, float],
                                                                             named: str) -> None:
    overrides = {"proxy": {"enabled": True, "endpoints": {"scorer": {"url": URL, "batch": batch}}}}
    with pytest.raises(ConfigError, match=rf"scorer\.batch\.{named}"):
        load_settings(overrides=overrides)


def test_an_endpoint_batch_defaults_to_100_requests_and_half_a_second() -> None:
    batch = EndpointSettings(url=URL, batch={}).batch  # type: ignore[arg-type]
    assert batch is not None and (batch.max_size, batch.max_wait_s) == (100, 0.5)
