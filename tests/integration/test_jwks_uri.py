"""JWT keys from the issuer's jwks_uri (PyJWT's PyJWKClient), served by a real HTTP server on
127.0.0.1; tokens are signed with RSA keys generated here."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from openhqm.config import JWTSettings
from openhqm.errors import ConfigError
from openhqm.http import auth
from openhqm.http.auth import Identity, JWTVerifier
from tests.harness import Sample, served, settings
from tests.integration.http_servers import serve
from tests.unit.test_auth import jwk, rsa_key, token


@dataclass
class Issuer:
    """A token issuer's key endpoint: publishes `keys`, counts how often it was fetched."""

    url: str = ""
    keys: dict[str, rsa.RSAPrivateKey] = field(default_factory=dict)
    fetches: int = 0

    def sign(self, kid: str, **claims: Any) -> str:
        return token(self.keys[kid], "RS256", headers={"kid": kid}, **claims)


@pytest.fixture
def issuer() -> Iterator[Issuer]:
    published = Issuer(keys={"k1": rsa_key()})

    async def jwks(request: Request) -> JSONResponse:
        published.fetches += 1
        return JSONResponse({"keys": [jwk(key, kid) for kid, key in published.keys.items()]})

    with serve(Starlette(routes=[Route("/jwks.json", jwks)])) as url:
        published.url = f"{url}/jwks.json"
        yield published


def verifier(issuer: Issuer) -> JWTVerifier:
    return JWTVerifier(JWTSettings(algorithm="RS256", jwks_uri=issuer.url))


def test_token_signed_with_a_published_key_is_accepted_and_the_key_set_is_cached(issuer: Issuer) -> None:
    check = verifier(issuer)
    for _ in range(5):
        assert check.verify(issuer.sign("k1", scope="read")) == Identity("svc", frozenset({"read"}))
    assert issuer.fetches == 1


def test_tokens_with_made_up_kids_do_not_make_the_server_fetch_again(issuer: Issuer) -> None:
    check = verifier(issuer)
    stranger = rsa_key()
    for n in range(5):
        with pytest.raises(jwt.PyJWTError):
            check.verify(token(stranger, "RS256", headers={"kid": f"made-up-{n}"}))
    assert issuer.fetches == 1  # the refetch for an unknown kid waits out the cooldown


def test_a_rotated_key_is_fetched_when_a_token_names_it(issuer: Issuer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(auth, "JWKS_COOLDOWN_S", 0.0)  # rotation right after startup, without waiting 30 s
    check = verifier(issuer)
    issuer.keys["k2"] = rsa_key()
    assert check.verify(issuer.sign("k2")).client_id == "svc"
    assert issuer.fetches == 2


def test_jwks_uri_must_be_https_unless_the_host_is_loopback(issuer: Issuer) -> None:
    with pytest.raises(ConfigError, match="https"):
        JWTVerifier(JWTSettings(algorithm="RS256", jwks_uri="http://idp.example/jwks.json"))
    localhost = issuer.url.replace("127.0.0.1", "localhost")
    assert JWTVerifier(JWTSettings(algorithm="RS256", jwks_uri=localhost)).verify(issuer.sign("k1"))


def test_unreachable_jwks_uri_is_a_config_error_at_startup(issuer: Issuer) -> None:
    with pytest.raises(ConfigError, match="jwks_uri"):
        JWTVerifier(JWTSettings(algorithm="RS256", jwks_uri=issuer.url.replace("jwks.json", "missing")))


def test_only_one_key_source_may_be_configured(issuer: Issuer, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        JWTVerifier(JWTSettings(algorithm="RS256", jwks_uri=issuer.url, jwks_file=tmp_path / "jwks.json"))


def test_served_app_accepts_a_token_verified_with_the_jwks_uri(issuer: Issuer, tmp_path: Path) -> None:
    config = settings(tmp_path, auth={"jwt": {"algorithm": "RS256", "jwks_uri": issuer.url, "audience": "openhqm"}})
    with served(Sample().app, config) as url:
        accepted = httpx.post(f"{url}/api/v1/submit", json={"payload": 1}, headers={
            "Authorization": f"Bearer {issuer.sign('k1', aud='openhqm', scope='submit', exp=int(time.time()) + 60)}"})
        refused = httpx.post(f"{url}/api/v1/submit", json={"payload": 1}, headers={
            "Authorization": f"Bearer {token(rsa_key(), 'RS256', headers={'kid': 'k1'}, aud='openhqm')}"})
    assert accepted.status_code == 202 and refused.status_code == 401
