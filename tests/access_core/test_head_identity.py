"""What a tunnel head carries of a verified app token: the person, not the token's mechanics."""

from __future__ import annotations

from edge.access.runtime import TOKEN_MECHANICS, head_identity


def test_a_person_keeps_who_they_are_and_loses_the_token_mechanics() -> None:
    claims = {
        "iss": "https://auth.example.com", "aud": ["a1"], "sub": "alice", "email": "a@corp.com",
        "iat": 1, "nbf": 1, "exp": 2, "type": "app", "identity_nonce": "n", "groups": ["eng"],
        "idp": "corp", "country": "NL",
    }
    assert head_identity(claims) == {
        "sub": "alice", "email": "a@corp.com", "type": "app", "groups": ["eng"], "idp": "corp",
        "country": "NL",
    }


def test_a_service_token_keeps_its_common_name() -> None:
    claims = {"sub": "", "email": "", "type": "app", "common_name": "ci", "exp": 9,
              "identity_nonce": "x", "groups": [], "idp": "service_token"}
    identity = head_identity(claims)
    assert identity["common_name"] == "ci"
    assert not TOKEN_MECHANICS & set(identity)
