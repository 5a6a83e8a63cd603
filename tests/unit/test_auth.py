"""Client access control: API keys, JWTs (HS256, RS256 PEM, JWKS file) and scope parsing."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.datastructures import Headers

from openhqm.config import ApiKeySettings, AuthSettings, JWTSettings
from openhqm.errors import ConfigError
from openhqm.http.auth import APIKeys, Authenticator, Identity, JWTVerifier, parse_scopes

SECRET = "s" * 32


def sha256(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def token(key: Any, algorithm: str = "HS256", headers: dict[str, Any] | None = None, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": "svc", "exp": now + 300, **claims}
    return jwt.encode({k: v for k, v in payload.items() if v is not None}, key, algorithm=algorithm,
                      headers=headers)


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, "use": "sig", "alg": "RS256"}


def test_api_key_is_verified_by_its_sha256_digest() -> None:
    keys = APIKeys([ApiKeySettings(name="a", key_sha256=sha256("key-a"), scopes=["submit"]),
                    ApiKeySettings(name="b", key_sha256=sha256("key-b").upper(), scopes=["read", "admin"])])
    assert keys.verify("key-a") == Identity("a", frozenset({"submit"}))
    assert keys.verify("key-b") == Identity("b", frozenset({"read", "admin"}))
    assert keys.verify("key-c") is None
    assert keys.verify("") is None


def test_two_keys_with_one_name_are_one_client_for_rotation() -> None:
    keys = APIKeys([ApiKeySettings(name="a", key_sha256=sha256("old")),
                    ApiKeySettings(name="a", key_sha256=sha256("new"))])
    assert keys.verify("old") == keys.verify("new") == Identity("a", frozenset({"submit", "read"}))


def test_key_is_read_from_bearer_or_x_api_key_header() -> None:
    auth = Authenticator(AuthSettings(api_keys=[ApiKeySettings(name="a", key_sha256=sha256("k"))]))
    assert auth.authenticate(Headers({"Authorization": "Bearer k"})) is not None
    assert auth.authenticate(Headers({"authorization": "bearer  k "})) is not None
    assert auth.authenticate(Headers({"X-API-Key": "k"})) is not None
    assert auth.authenticate(Headers({"Authorization": "Basic k"})) is None
    assert auth.authenticate(Headers({"Authorization": "Bearer "})) is None
    assert auth.authenticate(Headers({})) is None


@pytest.mark.parametrize(("claims", "expected"), [
    ({"scope": "submit read"}, {"submit", "read"}),
    ({"scopes": ["admin"]}, {"admin"}),
    ({"scope": "submit", "scopes": ["read", 7]}, {"submit", "read"}),
    ({"scope": ["read"], "scopes": "admin"}, set()),
    ({}, set()),
])
def test_scopes_come_from_scope_string_or_scopes_list(claims: dict[str, Any], expected: set[str]) -> None:
    assert parse_scopes(claims) == expected


def hs256(**settings: Any) -> JWTVerifier:
    return JWTVerifier(JWTSettings(algorithm="HS256", key=SECRET, **settings))


def test_hs256_token_gives_its_subject_and_scopes() -> None:
    verifier = hs256(audience="openhqm", issuer="https://idp")
    identity = verifier.verify(token(SECRET, aud="openhqm", iss="https://idp", scope="submit read"))
    assert identity == Identity("svc", frozenset({"submit", "read"}))


@pytest.mark.parametrize(("claims", "error"), [
    ({"exp": int(time.time()) - 3600}, jwt.ExpiredSignatureError),
    ({"nbf": int(time.time()) + 3600}, jwt.ImmatureSignatureError),
    ({"aud": "someone-else"}, jwt.InvalidAudienceError),
    ({"aud": None}, jwt.MissingRequiredClaimError),
    ({"iss": "https://evil"}, jwt.InvalidIssuerError),
    ({"exp": None}, jwt.MissingRequiredClaimError),
    ({"sub": None}, jwt.MissingRequiredClaimError),
    ({"sub": ""}, jwt.InvalidTokenError),
])
def test_invalid_claims_are_refused(claims: dict[str, Any], error: type[Exception]) -> None:
    verifier = hs256(audience="openhqm", issuer="https://idp")
    with pytest.raises(error):
        verifier.verify(token(SECRET, **{"aud": "openhqm", "iss": "https://idp", **claims}))


def test_token_signed_with_another_secret_is_refused() -> None:
    with pytest.raises(jwt.InvalidSignatureError):
        hs256().verify(token("t" * 32))


def test_unsigned_token_is_refused() -> None:
    with pytest.raises(jwt.InvalidAlgorithmError):
        hs256().verify(jwt.encode({"sub": "svc", "exp": int(time.time()) + 60}, None, algorithm="none"))


def test_audience_in_token_is_refused_when_none_is_configured() -> None:
    with pytest.raises(jwt.InvalidAudienceError):
        hs256().verify(token(SECRET, aud="openhqm"))


def test_rs256_token_is_verified_with_the_pem_public_key() -> None:
    private = rsa_key()
    verifier = JWTVerifier(JWTSettings(algorithm="RS256", key=public_pem(private)))
    assert verifier.verify(token(private, "RS256", scopes=["admin"])) == Identity("svc", frozenset({"admin"}))
    with pytest.raises(jwt.InvalidSignatureError):
        verifier.verify(token(rsa_key(), "RS256"))


def test_hs256_token_signed_with_the_rs256_public_key_is_refused() -> None:
    """The classic algorithm confusion: only the configured algorithm is accepted."""
    pem = public_pem(rsa_key())
    verifier = JWTVerifier(JWTSettings(algorithm="RS256", key=pem))
    forged = jwt.api_jws.base64url_encode(b'{"alg":"HS256","typ":"JWT"}') + b"." + \
        jwt.api_jws.base64url_encode(json.dumps({"sub": "x", "exp": int(time.time()) + 60}).encode()) + b".sig"
    with pytest.raises(jwt.InvalidAlgorithmError):
        verifier.verify(forged.decode())


def test_jwks_file_key_is_chosen_by_kid_and_reread_when_the_file_changes(tmp_path: Path) -> None:
    first, second, third = rsa_key(), rsa_key(), rsa_key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(first, "k1"), jwk(second, "k2")]}))
    verifier = JWTVerifier(JWTSettings(algorithm="RS256", jwks_file=path))
    assert verifier.verify(token(second, "RS256", headers={"kid": "k2"})).client_id == "svc"
    with pytest.raises(jwt.InvalidSignatureError):
        verifier.verify(token(second, "RS256", headers={"kid": "k1"}))
    with pytest.raises(jwt.InvalidKeyError):
        verifier.verify(token(third, "RS256", headers={"kid": "k3"}))
    with pytest.raises(jwt.InvalidKeyError):
        verifier.verify(token(first, "RS256"))  # no kid and two keys: ambiguous

    path.write_text(json.dumps({"keys": [jwk(third, "k3")]}))
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))  # a new mtime, whatever the fs grain
    assert verifier.verify(token(third, "RS256", headers={"kid": "k3"})).client_id == "svc"
    assert verifier.verify(token(third, "RS256")).client_id == "svc"  # one key: no kid needed


def test_unreadable_jwks_file_keeps_the_previous_keys(tmp_path: Path) -> None:
    key = rsa_key()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk(key, "k1")]}))
    verifier = JWTVerifier(JWTSettings(algorithm="RS256", jwks_file=path))
    path.write_text("{half-written")
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000_000))
    assert verifier.verify(token(key, "RS256", headers={"kid": "k1"})).client_id == "svc"


@pytest.mark.parametrize(("settings", "message"), [
    ({"algorithm": "HS256"}, "exactly one of key"),
    ({"algorithm": "HS256", "key": SECRET, "jwks_file": "/x.json"}, "exactly one of key"),
    ({"algorithm": "HS256", "key": "short"}, "at least 32 bytes"),
    ({"algorithm": "RS256", "key": "not a pem"}, "not a valid RS256 key"),
    ({"algorithm": "RS256", "jwks_file": "/nonexistent/jwks.json"}, "auth.jwt.jwks_file"),
])
def test_bad_jwt_settings_are_config_errors_naming_the_setting(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        JWTVerifier(JWTSettings(**settings))


def test_rs256_private_key_is_refused_as_configuration() -> None:
    pem = rsa_key().private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()
    with pytest.raises(ConfigError, match="public"):
        JWTVerifier(JWTSettings(algorithm="RS256", key=pem))


def test_authenticator_tries_api_keys_then_jwt() -> None:
    auth = Authenticator(AuthSettings(api_keys=[ApiKeySettings(name="a", key_sha256=sha256("k"))],
                                      jwt=JWTSettings(key=SECRET)))
    assert auth.authenticate(Headers({"X-API-Key": "k"})) == Identity("a", frozenset({"submit", "read"}))
    jwt_identity = auth.authenticate(Headers({"Authorization": f"Bearer {token(SECRET, scope='read')}"}))
    assert jwt_identity == Identity("svc", frozenset({"read"}))
    assert auth.authenticate(Headers({"Authorization": f"Bearer {token('x' * 32)}"})) is None
    assert auth.authenticate(Headers({"X-API-Key": "nope"})) is None
