"""Sealed values open only unaltered, for their own purpose, before expiry, under our secret."""

from __future__ import annotations

import base64

import pytest

from edge.access.sealing import MAX_SEALED_CHARS, SealedValueInvalid, Sealer

from .doubles import OTHER_SECRET, SECRET, CountingRandom, SteppedClock


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def sealer(clock: SteppedClock) -> Sealer:
    return Sealer(SECRET, clock=clock, random_bytes=CountingRandom())


def reason_of(sealer: Sealer, purpose: str, sealed: str) -> str:
    with pytest.raises(SealedValueInvalid) as caught:
        sealer.open(purpose, sealed)
    assert caught.value.http_status == 400
    return caught.value.reason


def test_round_trip_returns_the_payload_without_the_expiry(sealer: Sealer) -> None:
    sealed = sealer.seal("handoff", {"id": "abc", "aud": "app-1"}, lifetime=60)
    assert sealer.open("handoff", sealed) == {"id": "abc", "aud": "app-1"}
    assert "abc" not in sealed
    assert "app-1" not in sealed


def test_each_seal_uses_a_fresh_nonce(sealer: Sealer) -> None:
    assert sealer.seal("p", {"x": 1}, lifetime=5) != sealer.seal("p", {"x": 1}, lifetime=5)


def test_a_value_sealed_for_one_purpose_never_opens_for_another(sealer: Sealer) -> None:
    sealed = sealer.seal("handoff", {"id": "abc"}, lifetime=60)
    assert reason_of(sealer, "session", sealed) == "tampered"
    assert reason_of(sealer, "login-state", sealed) == "tampered"


def test_expiry_is_inside_the_sealed_payload(sealer: Sealer, clock: SteppedClock) -> None:
    sealed = sealer.seal("session", {"sid": "s"}, lifetime=60)
    clock.advance(59.9)
    assert sealer.open("session", sealed) == {"sid": "s"}
    clock.advance(0.1)
    assert reason_of(sealer, "session", sealed) == "expired"


def test_every_flipped_bit_is_detected(sealer: Sealer) -> None:
    sealed = sealer.seal("session", {"sid": "s"}, lifetime=60)
    raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
    for index in range(len(raw)):
        altered = bytearray(raw)
        altered[index] ^= 0x01
        text = base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode()
        assert reason_of(sealer, "session", text) in ("tampered", "bad_version")


def test_truncated_and_garbage_values_are_malformed(sealer: Sealer) -> None:
    sealed = sealer.seal("session", {"sid": "s"}, lifetime=60)
    assert reason_of(sealer, "session", sealed[:20]) == "malformed"
    assert reason_of(sealer, "session", "") == "malformed"
    assert reason_of(sealer, "session", "not base64!") == "malformed"
    assert reason_of(sealer, "session", sealed + "=") == "malformed"


def test_oversized_values_are_refused_before_decoding(sealer: Sealer) -> None:
    assert reason_of(sealer, "session", "A" * (MAX_SEALED_CHARS + 1)) == "too_large"
    with pytest.raises(ValueError, match="limited"):
        sealer.seal("session", {"blob": "x" * 5000}, lifetime=60)


def test_another_secret_cannot_open_but_a_rotated_one_can(clock: SteppedClock) -> None:
    old = Sealer(OTHER_SECRET, clock=clock, random_bytes=CountingRandom())
    sealed = old.seal("session", {"sid": "s"}, lifetime=60)
    current_only = Sealer(SECRET, clock=clock, random_bytes=CountingRandom())
    assert reason_of(current_only, "session", sealed) == "tampered"
    rotated = Sealer(
        SECRET, clock=clock, random_bytes=CountingRandom(), previous_secrets=[OTHER_SECRET]
    )
    assert rotated.open("session", sealed) == {"sid": "s"}
    assert reason_of(old, "session", rotated.seal("session", {"sid": "s"}, lifetime=5)) == (
        "tampered"
    )


def test_unknown_version_byte_is_reported(sealer: Sealer) -> None:
    sealed = sealer.seal("session", {"sid": "s"}, lifetime=60)
    raw = bytearray(base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4)))
    raw[0] = 2
    text = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert reason_of(sealer, "session", text) == "bad_version"


def test_misuse_is_refused_loudly(clock: SteppedClock) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        Sealer(b"short", clock=clock, random_bytes=CountingRandom())
    sealer = Sealer(SECRET, clock=clock, random_bytes=CountingRandom())
    with pytest.raises(ValueError, match="purpose"):
        sealer.seal("Bad Purpose", {}, lifetime=5)
    with pytest.raises(ValueError, match="reserved"):
        sealer.seal("p", {"exp": 1}, lifetime=5)
    with pytest.raises(ValueError, match="positive"):
        sealer.seal("p", {}, lifetime=0)
