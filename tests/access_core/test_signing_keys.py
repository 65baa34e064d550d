"""Signing keys: generation, storage records, rotation with overlap, JWKS and certs documents."""

from __future__ import annotations

import re
from dataclasses import replace

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from edge.access.errors import KeyRingError
from edge.access.tokens import (
    DEFAULT_OVERLAP,
    DEFAULT_ROTATION_PERIOD,
    KeyRing,
    SigningKey,
    key_thumbprint,
    new_aud_tag,
)

from .builders import T0

DAY = 24 * 3600.0


def test_kid_is_the_rfc7638_thumbprint(rsa_keys: tuple[SigningKey, SigningKey]) -> None:
    key = rsa_keys[0]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key.kid)
    assert key.kid == key_thumbprint(key.public_key())
    independent = jwt.PyJWK(key.jwk())
    assert isinstance(independent.key, rsa.RSAPublicKey)
    assert independent.key.public_numbers() == key.public_key().public_numbers()


def test_jwk_members(rsa_keys: tuple[SigningKey, SigningKey], ec_key: SigningKey) -> None:
    assert set(rsa_keys[0].jwk()) == {"kty", "n", "e", "kid", "alg", "use"}
    assert rsa_keys[0].jwk()["alg"] == "RS256"
    ec_jwk = ec_key.jwk()
    assert set(ec_jwk) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert (ec_jwk["kty"], ec_jwk["crv"], ec_jwk["alg"], ec_jwk["use"]) == (
        "EC",
        "P-256",
        "ES256",
        "sig",
    )
    assert len(ec_jwk["x"]) == len(ec_jwk["y"]) == 43
    independent = jwt.PyJWK(ec_jwk).key
    assert isinstance(independent, ec.EllipticCurvePublicKey)
    assert independent.public_numbers() == ec_key.public_key().public_numbers()


@pytest.mark.parametrize("which", ["rsa", "ec"])
def test_records_round_trip(
    which: str, rsa_keys: tuple[SigningKey, SigningKey], ec_key: SigningKey
) -> None:
    key = replace(rsa_keys[0] if which == "rsa" else ec_key, not_after=T0 + DAY)
    record = key.to_record()
    assert str(record["private_key_pem"]).startswith("-----BEGIN PRIVATE KEY-----")
    loaded = SigningKey.from_record(record)
    assert (loaded.kid, loaded.algorithm, loaded.created_at, loaded.not_after) == (
        key.kid,
        key.algorithm,
        T0,
        T0 + DAY,
    )
    assert loaded.certificate_pem == key.certificate_pem
    assert loaded.private_key.private_numbers() == key.private_key.private_numbers()


def test_tampered_records_are_refused(
    rsa_keys: tuple[SigningKey, SigningKey], ec_key: SigningKey
) -> None:
    first, second = rsa_keys
    record = first.to_record()
    tampered = [
        {**record, "kid": second.kid},
        {**record, "certificate_pem": second.certificate_pem},
        {**record, "algorithm": "ES256"},
        {**record, "algorithm": "HS256"},
        {**record, "private_key_pem": ec_key.to_record()["private_key_pem"]},
        {
            **record,
            "private_key_pem": "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        },
        {**record, "created_at": "yesterday"},
        {**record, "not_after": True},
        {k: v for k, v in record.items() if k != "kid"},
    ]
    for bad in tampered:
        with pytest.raises(KeyRingError):
            SigningKey.from_record(bad)


def test_certificates_are_self_signed_for_their_key(
    rsa_keys: tuple[SigningKey, SigningKey], ec_key: SigningKey
) -> None:
    for key in (rsa_keys[0], ec_key):
        certificate = x509.load_pem_x509_certificate(key.certificate_pem.encode())
        certificate.verify_directly_issued_by(certificate)
        assert certificate.public_key() == key.public_key()
        assert certificate.not_valid_before_utc.timestamp() == key.created_at


def test_rotation_keeps_previous_key_published_for_the_overlap() -> None:
    ring = KeyRing.generate("ES256", now=T0)
    first = ring.active
    assert not ring.due_for_rotation(T0 + DEFAULT_ROTATION_PERIOD - 1)
    assert ring.due_for_rotation(T0 + DEFAULT_ROTATION_PERIOD)

    rotated_at = T0 + DEFAULT_ROTATION_PERIOD
    second = ring.rotate(now=rotated_at)
    assert ring.active == second
    assert second.algorithm == "ES256"
    assert not ring.due_for_rotation(rotated_at)

    during = rotated_at + DEFAULT_OVERLAP - 1
    assert [k["kid"] for k in ring.jwks(during)["keys"]] == [first.kid, second.kid]
    assert ring.verification_key(first.kid, during) is not None

    after = rotated_at + DEFAULT_OVERLAP
    assert [k["kid"] for k in ring.jwks(after)["keys"]] == [second.kid]
    assert ring.verification_key(first.kid, after) is None
    assert ring.prune(after) == [replace(first, not_after=after)]
    assert ring.keys == (second,)


def test_rotating_twice_within_an_overlap_keeps_every_unexpired_key() -> None:
    ring = KeyRing.generate("ES256", now=T0, overlap=10 * DAY)
    first = ring.active
    second = ring.rotate(now=T0 + DAY)
    third = ring.rotate(now=T0 + 2 * DAY)
    published = [key.kid for key in ring.published(T0 + 3 * DAY)]
    assert published == [first.kid, second.kid, third.kid]
    assert [key.kid for key in ring.published(T0 + 11 * DAY)] == [second.kid, third.kid]
    assert [key.kid for key in ring.published(T0 + 12 * DAY)] == [third.kid]


def test_rotate_can_change_algorithm() -> None:
    ring = KeyRing.generate("ES256", now=T0)
    assert ring.rotate(now=T0 + 1, algorithm="RS256").algorithm == "RS256"


def test_ring_survives_the_store(ec_key: SigningKey) -> None:
    ring = KeyRing([ec_key], overlap=DAY)
    ring.rotate(now=T0 + 5)
    restored = KeyRing.from_records(ring.to_records(), overlap=DAY)
    assert [(k.kid, k.not_after) for k in restored.keys] == [
        (k.kid, k.not_after) for k in ring.keys
    ]
    assert restored.active.kid == ring.active.kid


def test_empty_ring_has_no_active_key_and_is_due() -> None:
    ring = KeyRing(())
    with pytest.raises(KeyRingError):
        _ = ring.active
    assert ring.due_for_rotation(T0)


def test_certs_document_shape(ec_key: SigningKey) -> None:
    ring = KeyRing([ec_key])
    new = ring.rotate(now=T0 + 100)
    document = ring.certs_document(T0 + 200)
    assert document["keys"] == ring.jwks(T0 + 200)["keys"]
    assert document["public_cert"] == {"kid": new.kid, "cert": new.certificate_pem}
    assert document["public_certs"] == [
        {"kid": ec_key.kid, "cert": ec_key.certificate_pem},
        {"kid": new.kid, "cert": new.certificate_pem},
    ]


def test_aud_tags_are_64_hex_characters_from_the_injected_randomness() -> None:
    assert new_aud_tag(lambda n: bytes(range(n))) == bytes(range(32)).hex()
    assert re.fullmatch(r"[0-9a-f]{64}", new_aud_tag())
    assert new_aud_tag() != new_aud_tag()
    with pytest.raises(ValueError, match="wrong number"):
        new_aud_tag(lambda n: b"short")
