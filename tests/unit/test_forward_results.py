"""result_json's committed shape, Retry-After parsing and the retry policy's arithmetic."""

from __future__ import annotations

import base64
import email.utils

import pytest

from openhqm.forward import ForwardResponse, parse_retry_after, result_json


def response(body: bytes, content_type: str | None, *extra: tuple[str, str]) -> ForwardResponse:
    headers = ((("content-type", content_type),) if content_type else ()) + extra
    return ForwardResponse(status_code=201, headers=headers, body=body, elapsed_s=0.01)


def test_json_body_is_embedded_as_json() -> None:
    result = result_json(response(b'{"ok": true, "n": [1, 2]}', "application/json; charset=utf-8"))
    assert result == {
        "status_code": 201,
        "headers": {"content-type": "application/json; charset=utf-8"},
        "body": {"ok": True, "n": [1, 2]},
    }


def test_problem_json_counts_as_json() -> None:
    assert result_json(response(b'{"title": "x"}', "application/problem+json"))["body"] == {"title": "x"}


def test_utf8_text_is_embedded_as_text() -> None:
    result = result_json(response("héllo".encode(), "text/plain; charset=utf-8"))
    assert result["body"] == "héllo" and "body_encoding" not in result


def test_invalid_json_falls_back_to_text() -> None:
    assert result_json(response(b"{not json", "application/json"))["body"] == "{not json"


def test_binary_is_base64_with_its_encoding_named() -> None:
    raw = bytes(range(256))
    result = result_json(response(raw, "application/octet-stream"))
    assert result["body_encoding"] == "base64"
    assert base64.b64decode(result["body"]) == raw


def test_utf8_looking_bytes_declared_binary_stay_base64() -> None:
    assert result_json(response(b"plain", "image/png"))["body_encoding"] == "base64"


def test_non_utf8_text_is_base64() -> None:
    assert (
        result_json(response("é".encode("latin-1"), "text/plain; charset=latin-1"))["body_encoding"]
        == "base64"
    )


def test_repeated_headers_are_joined() -> None:
    result = result_json(response(b"", None, ("vary", "a"), ("vary", "b")))
    assert result["headers"] == {"vary": "a, b"} and result["body"] == ""


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7.0),
        (" 0 ", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        (None, None),
        ("", None),
        ("soon", None),
        ("nan", None),
    ],
)
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_retry_after_http_date() -> None:
    now = 1_700_000_000.0
    assert parse_retry_after(email.utils.formatdate(now + 120, usegmt=True), now=now) == pytest.approx(120)
    assert parse_retry_after(email.utils.formatdate(now - 120, usegmt=True), now=now) == 0.0
