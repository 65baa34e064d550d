"""App/org tokens: minting and its cache, verification, and the JWT forgery family."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import RSAAlgorithm

from edge.access.errors import TokenInvalid
from edge.access.identity import Identity
from edge.access.tokens import KeyRing, SigningKey, TokenMinter, TokenVerifier

from .builders import T0, SettableClock, person

ISSUER = "https://auth.example.com"
APP_A = "a" * 64
APP_B = "b" * 64
HOUR = 3600.0


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64json(value: object) -> str:
    return b64(json.dumps(value).encode())


def claims(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": [APP_A],
        "sub": "alice-sub",
        "email": "alice@corp.com",
        "iat": int(T0),
        "nbf": int(T0),
        "exp": int(T0 + HOUR),
        "type": "app",
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def clock() -> SettableClock:
    return SettableClock(T0 + 60)


@pytest.fixture
def ring(rsa_keys: tuple[SigningKey, SigningKey], ec_key: SigningKey) -> KeyRing:
    """Active RS256 key plus an ES256 key still in its overlap."""
    return KeyRing([replace(ec_key, not_after=T0 + 30 * HOUR), rsa_keys[0]])


@pytest.fixture
def minter(ring: KeyRing, clock: SettableClock) -> TokenMinter:
    return TokenMinter(ring, issuer=ISSUER, clock=clock)


@pytest.fixture(params=["keyring", "jwks"])
def verifier(request: pytest.FixtureRequest, ring: KeyRing, clock: SettableClock) -> TokenVerifier:
    """The edge verifies against its ring; a connector against the JWKS it fetched."""
    source = ring if request.param == "keyring" else ring.jwks(clock())
    return TokenVerifier(source, issuer=ISSUER, clock=clock)


def sign(key: SigningKey, payload: dict[str, Any], **header: Any) -> str:
    return jwt.encode(payload, key.private_key, algorithm=key.algorithm, headers=header)


def test_minted_token_verifies_with_all_claims(
    minter: TokenMinter, verifier: TokenVerifier, clock: SettableClock
) -> None:
    token = minter.mint(
        person(groups=("eng", "ops")),
        session_id="sess-1",
        identity_nonce="nonce-1",
        aud=APP_A,
        lifetime=HOUR,
    )
    got = verifier.verify(token, APP_A, token_type="app")
    now = int(clock())
    assert got == {
        "iss": ISSUER,
        "aud": [APP_A],
        "sub": "alice-sub",
        "email": "alice@corp.com",
        "iat": now,
        "nbf": now,
        "exp": now + int(HOUR),
        "type": "app",
        "identity_nonce": "nonce-1",
        "groups": ["eng", "ops"],
        "idp": "okta",
        "country": "DE",
    }
    assert "sess-1" not in json.dumps(got)


def test_service_token_carries_common_name(minter: TokenMinter, verifier: TokenVerifier) -> None:
    machine = Identity.for_service_token("ci-bot", issued_at=T0)
    token = minter.mint(machine, session_id="s", identity_nonce="n", aud=APP_A, lifetime=HOUR)
    got = verifier.verify(token, APP_A)
    assert got["common_name"] == "ci-bot"
    assert got["sub"] == ""


def test_org_token_type_is_checked(minter: TokenMinter, verifier: TokenVerifier) -> None:
    token = minter.mint(
        person(), session_id="s", identity_nonce="n", aud=APP_A, lifetime=HOUR, token_type="org"
    )
    assert verifier.verify(token, APP_A, token_type="org")["type"] == "org"
    with pytest.raises(TokenInvalid) as caught:
        verifier.verify(token, APP_A, token_type="app")
    assert caught.value.reason == "wrong_type"


def test_es256_keys_mint_and_verify(ec_key: SigningKey, clock: SettableClock) -> None:
    ring = KeyRing([ec_key])
    token = TokenMinter(ring, issuer=ISSUER, clock=clock).mint(
        person(), session_id="s", identity_nonce="n", aud=APP_A, lifetime=HOUR
    )
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": ec_key.kid, "typ": "JWT"}
    assert TokenVerifier(ring.jwks(clock()), issuer=ISSUER, clock=clock).verify(token, APP_A)


def test_an_independent_verifier_accepts_minted_tokens(ring: KeyRing) -> None:
    now = time.time()  # PyJWT checks expiry against the real clock
    token = TokenMinter(ring, issuer=ISSUER, clock=lambda: now).mint(
        person(), session_id="s", identity_nonce="n", aud=APP_A, lifetime=HOUR
    )
    served = json.loads(json.dumps(ring.certs_document(now)))
    key = jwt.PyJWKSet.from_dict({"keys": served["keys"]})[jwt.get_unverified_header(token)["kid"]]
    got = jwt.decode(token, key.key, algorithms=["RS256", "ES256"], audience=APP_A, issuer=ISSUER)
    assert got["email"] == "alice@corp.com"


# --- the mint cache -------------------------------------------------------------------------


def mint(minter: TokenMinter, session: str = "s", aud: str = APP_A, **changes: Any) -> str:
    return minter.mint(
        changes.pop("identity", person()),
        session_id=session,
        identity_nonce="n",
        aud=aud,
        lifetime=changes.pop("lifetime", HOUR),
        **changes,
    )


def test_same_session_and_app_reuse_the_token_until_close_to_expiry(
    minter: TokenMinter, clock: SettableClock
) -> None:
    first = mint(minter)
    clock.now += 0.9 * HOUR - 1
    assert mint(minter) == first
    clock.now += 1
    renewed = mint(minter)
    assert renewed != first
    assert mint(minter) == renewed


def test_tokens_are_cached_per_session_app_type_and_identity(
    minter: TokenMinter, clock: SettableClock
) -> None:
    first = mint(minter)
    clock.now += 1  # anything minted from here on has a later iat than `first`
    others = [
        mint(minter, aud=APP_B),
        mint(minter, session="other"),
        mint(minter, token_type="org"),
        mint(minter, identity=person(groups=("ops",))),
    ]
    assert first not in others
    assert len(set(others)) == len(others)
    clock.now += 1
    assert mint(minter, aud=APP_B) == others[0]
    assert mint(minter, session="other") == others[1]
    assert mint(minter, token_type="org") == others[2]
    assert mint(minter) != first  # the identity changed after `first`: re-minted


def test_forgetting_a_session_drops_its_cached_tokens(
    minter: TokenMinter, clock: SettableClock
) -> None:
    first = mint(minter)
    kept = mint(minter, session="kept")
    clock.now += 1
    minter.forget_session("s")
    assert mint(minter) != first
    assert mint(minter, session="kept") == kept


def test_cache_is_bounded(ring: KeyRing, clock: SettableClock) -> None:
    minter = TokenMinter(ring, issuer=ISSUER, clock=clock, cache_size=2)
    first = mint(minter, session="1")
    mint(minter, session="2")
    mint(minter, session="3")
    clock.now += 1
    assert mint(minter, session="1") != first


def test_rotation_makes_new_tokens_use_the_new_key(
    minter: TokenMinter, ring: KeyRing, clock: SettableClock
) -> None:
    before = mint(minter)
    new_key = ring.rotate(now=clock(), algorithm="ES256")
    after = mint(minter)
    assert jwt.get_unverified_header(before)["kid"] != new_key.kid
    assert jwt.get_unverified_header(after)["kid"] == new_key.kid


def test_token_never_outlives_its_session(minter: TokenMinter, clock: SettableClock) -> None:
    token = mint(minter, session_expires_at=clock() + 600)
    assert jwt.decode(token, options={"verify_signature": False})["exp"] == int(clock() + 600)


# --- rotation seen by verifiers -------------------------------------------------------------


def test_previous_key_verifies_during_overlap_and_not_after_it_is_dropped() -> None:
    clock = SettableClock(T0)
    ring = KeyRing.generate("ES256", now=T0, overlap=7 * 24 * HOUR)
    old_token = TokenMinter(ring, issuer=ISSUER, clock=clock).mint(
        person(), session_id="s", identity_nonce="n", aud=APP_A, lifetime=30 * 24 * HOUR
    )
    ring.rotate(now=T0 + HOUR)
    edge = TokenVerifier(ring, issuer=ISSUER, clock=clock)

    clock.now = T0 + HOUR + 7 * 24 * HOUR - 1
    served_during = ring.jwks(clock())
    assert len(served_during["keys"]) == 2
    assert edge.verify(old_token, APP_A)["sub"] == "alice-sub"
    assert TokenVerifier(served_during, issuer=ISSUER, clock=clock).verify(old_token, APP_A)

    clock.now += 1
    served_after = ring.jwks(clock())
    assert len(served_after["keys"]) == 1
    for verifier in (edge, TokenVerifier(served_after, issuer=ISSUER, clock=clock)):
        with pytest.raises(TokenInvalid) as caught:
            verifier.verify(old_token, APP_A)
        assert caught.value.reason == "unknown_kid"


# --- the forgery family (SECURITY.md "JWT forgery") -------------------------------------------

Forge = Callable[[KeyRing, SigningKey], str]
ATTACKER = SigningKey.generate("ES256", now=T0)
ATTACKER_RSA = SigningKey.generate("RS256", now=T0)


def unsigned(alg: str) -> Forge:
    def forge(ring: KeyRing, ours: SigningKey) -> str:
        header = {"alg": alg, "kid": ours.kid, "typ": "JWT"}
        return f"{b64json(header)}.{b64json(claims())}."

    return forge


def hs256_with_public_key(ring: KeyRing, ours: SigningKey) -> str:
    public_pem = ours.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = f"{b64json({'alg': 'HS256', 'kid': ours.kid})}.{b64json(claims())}"
    mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def hs256_with_jwk_json(ring: KeyRing, ours: SigningKey) -> str:
    secret = json.dumps(ours.jwk()).encode()
    signing_input = f"{b64json({'alg': 'HS256', 'kid': ours.kid})}.{b64json(claims())}"
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), 'sha256').digest())}"


def attacker_signed(**header: Any) -> Forge:
    def forge(ring: KeyRing, ours: SigningKey) -> str:
        return sign(ATTACKER, claims(), **header)

    return forge


def attacker_jwk_embedded(ring: KeyRing, ours: SigningKey) -> str:
    return sign(ATTACKER, claims(), kid=ours.kid, jwk=ATTACKER.jwk())


def ours_with(header: dict[str, Any] | None = None, **claim_changes: Any) -> Forge:
    def forge(ring: KeyRing, ours: SigningKey) -> str:
        return sign(ours, claims(**claim_changes), **{"kid": ours.kid, **(header or {})})

    return forge


def hand_signed(**header: Any) -> Forge:
    """Our key signs a header PyJWT would refuse to produce."""

    def forge(ring: KeyRing, ours: SigningKey) -> str:
        signing_input = f"{b64json({'alg': 'RS256', **header})}.{b64json(claims())}"
        signer = RSAAlgorithm(RSAAlgorithm.SHA256)
        assert isinstance(ours.private_key, rsa.RSAPrivateKey)
        return f"{signing_input}.{b64(signer.sign(signing_input.encode(), ours.private_key))}"

    return forge


def tampered_payload(ring: KeyRing, ours: SigningKey) -> str:
    header, _payload, signature = sign(ours, claims(), kid=ours.kid).split(".")
    return f"{header}.{b64json(claims(email='boss@corp.com'))}.{signature}"


def rs256_header_on_ec_key(ring: KeyRing, ours: SigningKey) -> str:
    ec_kid = next(k.kid for k in ring.keys if k.algorithm == "ES256")
    return sign(ours, claims(), kid=ec_kid)


def signature_edit(edit: Callable[[str], str]) -> Forge:
    def forge(ring: KeyRing, ours: SigningKey) -> str:
        header, payload, signature = sign(ours, claims(), kid=ours.kid).split(".")
        return f"{header}.{payload}.{edit(signature)}"

    return forge


def raw(text: str) -> Forge:
    return lambda ring, ours: text


def other_algorithm(alg: str) -> Forge:
    def forge(ring: KeyRing, ours: SigningKey) -> str:
        header = {"alg": alg, "kid": ours.kid}
        return f"{b64json(header)}.{b64json(claims())}.{b64(b'x' * 64)}"

    return forge


FORGERIES: list[tuple[str, Forge, str]] = [
    ("alg none", unsigned("none"), "algorithm_not_allowed"),
    ("alg None", unsigned("None"), "algorithm_not_allowed"),
    ("alg NONE", unsigned("NONE"), "algorithm_not_allowed"),
    ("alg empty", unsigned(""), "algorithm_not_allowed"),
    ("HS256 with our public key PEM", hs256_with_public_key, "algorithm_not_allowed"),
    ("HS256 with our JWK", hs256_with_jwk_json, "algorithm_not_allowed"),
    ("PS256", other_algorithm("PS256"), "algorithm_not_allowed"),
    ("RS512", other_algorithm("RS512"), "algorithm_not_allowed"),
    ("ES512", other_algorithm("ES512"), "algorithm_not_allowed"),
    ("EdDSA", other_algorithm("EdDSA"), "algorithm_not_allowed"),
    ("unknown kid", attacker_signed(kid="attacker-key"), "unknown_kid"),
    ("missing kid", attacker_signed(), "missing_kid"),
    ("kid path traversal", attacker_signed(kid="../../../../dev/null"), "bad_kid"),
    ("kid absolute path", attacker_signed(kid="/etc/passwd"), "bad_kid"),
    ("kid url", attacker_signed(kid="https://evil.example/key"), "bad_kid"),
    ("kid encoded slash", attacker_signed(kid="..%2f..%2fkey"), "bad_kid"),
    ("kid nul", attacker_signed(kid="key\x00"), "bad_kid"),
    ("kid sql", attacker_signed(kid="x' OR '1'='1"), "bad_kid"),
    ("kid not a string", hand_signed(kid=7), "bad_kid"),
    (
        "our kid, attacker signature",
        lambda r, o: sign(ATTACKER_RSA, claims(), kid=o.kid),
        "bad_signature",
    ),
    ("jku header", attacker_signed(kid="k", jku="https://evil.example/jwks"), "forbidden_header"),
    ("x5u header", attacker_signed(kid="k", x5u="https://evil.example/cert"), "forbidden_header"),
    ("jwk header", attacker_jwk_embedded, "forbidden_header"),
    ("x5c header", attacker_signed(kid="k", x5c=["MIIB"]), "forbidden_header"),
    ("crit header", ours_with({"crit": ["exp"]}), "forbidden_header"),
    ("b64 false", hand_signed(kid="k", b64=False), "forbidden_header"),
    ("jku on our valid token", ours_with({"jku": "https://evil.example/"}), "forbidden_header"),
    ("RS256 header on an ES256 key", rs256_header_on_ec_key, "algorithm_mismatch"),
    ("tampered payload", tampered_payload, "bad_signature"),
    ("truncated signature", signature_edit(lambda s: s[:-4]), "bad_signature"),
    ("empty signature", signature_edit(lambda s: ""), "bad_signature"),
    ("flipped signature", signature_edit(lambda s: s[::-1]), "bad_signature"),
    ("expired", ours_with(exp=int(T0 + 59)), "expired"),
    ("expires exactly now", ours_with(exp=int(T0 + 60)), "expired"),
    ("nbf in the future", ours_with(nbf=int(T0 + 120)), "not_yet_valid"),
    ("iat in the future", ours_with(iat=int(T0 + 120)), "issued_in_future"),
    ("wrong aud", ours_with(aud=[APP_B]), "wrong_audience"),
    ("wrong aud string", ours_with(aud=APP_B), "wrong_audience"),
    ("aud prefix", ours_with(aud=[APP_A[:-1]]), "wrong_audience"),
    ("wrong iss", ours_with(iss="https://evil.example"), "wrong_issuer"),
    ("iss with trailing slash", ours_with(iss=ISSUER + "/"), "wrong_issuer"),
    ("missing iss", ours_with(iss=None), "missing_claim"),
    ("missing aud", ours_with(aud=None), "missing_claim"),
    ("missing exp", ours_with(exp=None), "missing_claim"),
    ("missing nbf", ours_with(nbf=None), "missing_claim"),
    ("exp as string", ours_with(exp="9999999999"), "bad_claim"),
    ("exp as bool", ours_with(exp=True), "bad_claim"),
    ("aud as number", ours_with(aud=5), "bad_claim"),
    ("empty", raw(""), "malformed"),
    ("two parts", raw("a.b"), "malformed"),
    ("four parts", raw("a.b.c.d"), "malformed"),
    ("not base64", raw("!!!.???.xx"), "malformed"),
    ("header not json", raw(f"{b64(b'nope')}.{b64json(claims())}.sig"), "malformed"),
    ("header is a list", raw(f"{b64json(['alg'])}.{b64json(claims())}.sig"), "malformed"),
    ("non-ascii", raw("é.é.é"), "malformed"),
    ("oversized", raw("a" * 20_000), "too_large"),
]


@pytest.mark.parametrize(
    ("forge", "reason"),
    [pytest.param(forge, reason, id=name) for name, forge, reason in FORGERIES],
)
def test_forged_tokens_are_refused(
    forge: Forge,
    reason: str,
    ring: KeyRing,
    rsa_keys: tuple[SigningKey, SigningKey],
    verifier: TokenVerifier,
) -> None:
    token = forge(ring, rsa_keys[0])
    with pytest.raises(TokenInvalid) as caught:
        verifier.verify(token, APP_A)
    assert caught.value.reason == reason
    assert token[:40] not in str(caught.value) or not token


def test_the_unforged_control_token_verifies(
    ring: KeyRing, rsa_keys: tuple[SigningKey, SigningKey], verifier: TokenVerifier
) -> None:
    """Every forgery above differs from this accepted token in the one way it names."""
    assert verifier.verify(ours_with()(ring, rsa_keys[0]), APP_A)["sub"] == "alice-sub"


def test_token_for_app_a_is_refused_by_app_b(minter: TokenMinter, verifier: TokenVerifier) -> None:
    token = mint(minter, aud=APP_A)
    assert verifier.verify(token, APP_A)
    with pytest.raises(TokenInvalid) as caught:
        verifier.verify(token, APP_B)
    assert caught.value.reason == "wrong_audience"


def test_leeway_tolerates_small_clock_skew(
    ring: KeyRing, rsa_keys: tuple[SigningKey, SigningKey]
) -> None:
    token = ours_with(nbf=int(T0 + 90))(ring, rsa_keys[0])
    strict = TokenVerifier(ring, issuer=ISSUER, clock=lambda: T0 + 60)
    lenient = TokenVerifier(ring, issuer=ISSUER, clock=lambda: T0 + 60, leeway=30)
    with pytest.raises(TokenInvalid):
        strict.verify(token, APP_A)
    assert lenient.verify(token, APP_A)


def test_jwks_entries_we_would_never_sign_with_are_ignored(
    ring: KeyRing, rsa_keys: tuple[SigningKey, SigningKey], clock: SettableClock
) -> None:
    ours = rsa_keys[0]
    jwk_without_alg = {k: v for k, v in ours.jwk().items() if k != "alg"}
    hs_key = {"kty": "oct", "k": b64(b"secret"), "kid": "hmac", "alg": "HS256"}
    mislabelled = {**ours.jwk(), "alg": "ES256"}
    for entries in ([jwk_without_alg], [hs_key], [mislabelled], ["junk"]):
        verifier = TokenVerifier({"keys": entries}, issuer=ISSUER, clock=clock)
        with pytest.raises(TokenInvalid) as caught:
            verifier.verify(ours_with()(ring, ours), APP_A)
        assert caught.value.reason == "unknown_kid"


def test_attacker_key_is_a_real_p256_key() -> None:
    """Guards the forgery family: attacker tokens are validly signed, just not by us."""
    assert isinstance(ATTACKER.private_key, ec.EllipticCurvePrivateKey)
    token = sign(ATTACKER, claims(), kid=ATTACKER.kid)
    assert TokenVerifier(KeyRing([ATTACKER]), issuer=ISSUER, clock=lambda: T0 + 60).verify(
        token, APP_A
    )
