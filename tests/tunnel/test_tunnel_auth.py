"""Tunnel secrets, their hashes and run tokens."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from tunnel.auth import (
    RunToken,
    decode_run_token,
    encode_run_token,
    hash_secret,
    new_tunnel_secret,
    parse_bearer,
    verify_secret,
)
from tunnel.errors import InvalidRunToken

TUNNEL_ID = "6f1c9a52-8d0e-4a57-9c3b-2f4d5e6a7b8c"


def b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_run_token_round_trips_and_has_the_documented_shape() -> None:
    token = encode_run_token(TUNNEL_ID, "s3cret-_value", "wss://edge.example.com:7844/")
    assert "=" not in token
    document = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    assert document == {"t": TUNNEL_ID, "s": "s3cret-_value", "e": "wss://edge.example.com:7844/"}
    assert decode_run_token(token) == RunToken(
        TUNNEL_ID, "s3cret-_value", "wss://edge.example.com:7844/"
    )


def test_token_without_edge_url_still_decodes() -> None:
    token = b64url(json.dumps({"t": TUNNEL_ID, "s": "x"}).encode())
    assert decode_run_token(token) == RunToken(TUNNEL_ID, "x", None)


def test_run_token_repr_hides_the_secret() -> None:
    assert "hunter2" not in repr(decode_run_token(encode_run_token(TUNNEL_ID, "hunter2", "e")))


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not base64 at all!",
        b64url(b"\xff\xfe not utf8"),
        b64url(b"[1, 2]"),
        b64url(b'{"t": "id"}'),
        b64url(b'{"s": "secret"}'),
        b64url(b'{"t": 5, "s": "secret"}'),
        b64url(b'{"t": "id", "s": ""}'),
        b64url(b'{"t": "id", "s": "x", "e": 7}'),
        "A" * 5000,
        "abc=",
    ],
)
def test_malformed_run_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidRunToken):
        decode_run_token(token)


def test_secret_hash_is_sha256_hex() -> None:
    assert hash_secret("abc") == hashlib.sha256(b"abc").hexdigest()


def test_verify_secret_checks_every_stored_hash() -> None:
    hashes = [hash_secret("old"), hash_secret("new")]
    assert verify_secret("new", hashes)
    assert verify_secret("old", hashes)
    assert not verify_secret("other", hashes)
    assert not verify_secret("new", [])
    assert not verify_secret("new", ["not-a-hash", "ünïcode"])


def test_new_secret_uses_the_injected_randomness() -> None:
    secret = new_tunnel_secret(lambda n: bytes(range(n)))
    assert secret == b64url(bytes(range(32)))
    assert len(new_tunnel_secret()) == 43
    assert new_tunnel_secret() != new_tunnel_secret()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Bearer abc.def", "abc.def"),
        ("bearer   abc", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer a b", None),
        (None, None),
    ],
)
def test_parse_bearer(value: str | None, expected: str | None) -> None:
    assert parse_bearer(value) == expected
