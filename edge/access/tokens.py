"""Signing keys, their rotation, and the app/org tokens the edge mints and verifies.

Keys: one active key signs; on rotation the previous key stays published (in the JWKS and the
``certs`` document) and accepted for an overlap period, so tokens minted just before a rotation
keep working on every edge and connector that cached the old JWKS. Key ids are RFC 7638
thumbprints, so a kid is derived from the key and never chosen by anyone.

Minting is not done per request (an RS256 signature costs ~260 µs): tokens are cached per
(session, audience, type) and reused until they are within a tenth of their lifetime of expiry.

Verification trusts nothing in the token that could choose the key or the algorithm:

* a fixed algorithm allow-list (RS256, ES256) and each key is bound to one algorithm, so
  ``alg: none`` and HS256-signed-with-our-public-key are refused before any key is touched;
* ``kid`` is required, must be base64url characters only (no path characters are honoured),
  and is looked up only among our own published keys;
* header parameters other than ``alg``, ``kid`` and ``typ`` are refused, which refuses the
  key-URL and embedded-key headers (``jku``, ``x5u``, ``jwk``, ``x5c``) and ``crit``/``b64``;
* ``iss``, ``aud``, ``exp``, ``nbf`` and ``iat`` are required and checked against an injected
  clock, after the signature, so forged tokens learn nothing about their claims.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import json
import logging
import re
import secrets
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from edge.access.errors import KeyRingError, TokenInvalid
from edge.access.identity import Identity

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
RandomBytes = Callable[[int], bytes]
Algorithm = Literal["RS256", "ES256"]
TokenType = Literal["app", "org"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

ALLOWED_ALGORITHMS: tuple[Algorithm, ...] = ("RS256", "ES256")
DEFAULT_OVERLAP = 7 * 24 * 3600.0
DEFAULT_ROTATION_PERIOD = 6 * 7 * 24 * 3600.0
CERTIFICATE_VALIDITY = 10 * 365 * 24 * 3600.0
RSA_KEY_BITS = 2048
MAX_TOKEN_BYTES = 16 * 1024
REUSE_UNTIL_REMAINING = 0.1
ALLOWED_HEADER_KEYS = frozenset({"alg", "kid", "typ"})
_KID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_REQUIRED_TIME_CLAIMS = ("exp", "nbf", "iat")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_bytes(value: int, length: int | None = None) -> bytes:
    return value.to_bytes(length or max(1, (value.bit_length() + 7) // 8), "big")


def public_jwk(public_key: PublicKey) -> dict[str, str]:
    """The JWK members that describe a public key (no kid, alg or use)."""
    if isinstance(public_key, rsa.RSAPublicKey):
        numbers = public_key.public_numbers()
        return {
            "kty": "RSA",
            "n": _b64url(_int_bytes(numbers.n)),
            "e": _b64url(_int_bytes(numbers.e)),
        }
    point = public_key.public_numbers()
    return {
        "kty": "EC",
        "crv": "P-256",
        "x": _b64url(_int_bytes(point.x, 32)),
        "y": _b64url(_int_bytes(point.y, 32)),
    }


def key_thumbprint(public_key: PublicKey) -> str:
    """RFC 7638 thumbprint: a key id derived from the key itself."""
    members = public_jwk(public_key)
    canonical = json.dumps(dict(sorted(members.items())), separators=(",", ":"))
    return _b64url(hashlib.sha256(canonical.encode("ascii")).digest())


def _check_key_fits(algorithm: str, private_key: object) -> PrivateKey:
    if algorithm == "RS256" and isinstance(private_key, rsa.RSAPrivateKey):
        if private_key.key_size < RSA_KEY_BITS:
            raise KeyRingError(f"RSA signing keys must have at least {RSA_KEY_BITS} bits")
        return private_key
    if (
        algorithm == "ES256"
        and isinstance(private_key, ec.EllipticCurvePrivateKey)
        and isinstance(private_key.curve, ec.SECP256R1)
    ):
        return private_key
    raise KeyRingError(f"key type does not fit algorithm {algorithm!r}")


def _self_signed_certificate(private_key: PrivateKey, kid: str, created_at: float) -> str:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tunnelgate access signing key")])
    start = datetime.datetime.fromtimestamp(created_at, tz=datetime.UTC)
    serial = int.from_bytes(hashlib.sha256(kid.encode("ascii")).digest()[:19], "big") | 1
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(seconds=CERTIFICATE_VALIDITY))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(private_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One signing key. ``not_after`` is when it stops being published and accepted."""

    kid: str
    algorithm: Algorithm
    private_key: PrivateKey
    created_at: float
    certificate_pem: str
    not_after: float | None = None

    @classmethod
    def generate(cls, algorithm: Algorithm, *, now: float) -> SigningKey:
        private_key: PrivateKey
        if algorithm == "RS256":
            private_key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
        elif algorithm == "ES256":
            private_key = ec.generate_private_key(ec.SECP256R1())
        else:
            raise KeyRingError(f"unsupported signing algorithm {algorithm!r}")
        kid = key_thumbprint(private_key.public_key())
        certificate = _self_signed_certificate(private_key, kid, now)
        return cls(kid, algorithm, private_key, now, certificate)

    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    def published_at(self, now: float) -> bool:
        return self.not_after is None or now < self.not_after

    def jwk(self) -> dict[str, str]:
        return {
            **public_jwk(self.public_key()),
            "kid": self.kid,
            "alg": self.algorithm,
            "use": "sig",
        }

    def to_record(self) -> dict[str, str | float | None]:
        """The key as the store keeps it (private key as unencrypted PKCS#8 PEM)."""
        pem = self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return {
            "kid": self.kid,
            "algorithm": self.algorithm,
            "private_key_pem": pem.decode("ascii"),
            "certificate_pem": self.certificate_pem,
            "created_at": self.created_at,
            "not_after": self.not_after,
        }

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> SigningKey:
        """Load a stored key, checking that every part belongs to the same key."""
        kid, algorithm = record.get("kid"), record.get("algorithm")
        pem, certificate_pem = record.get("private_key_pem"), record.get("certificate_pem")
        created_at, not_after = record.get("created_at"), record.get("not_after")
        if not (isinstance(kid, str) and isinstance(pem, str) and isinstance(certificate_pem, str)):
            raise KeyRingError("signing key record: kid, private_key_pem, certificate_pem required")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise KeyRingError(f"signing key {kid}: unsupported algorithm {algorithm!r}")
        if not isinstance(created_at, int | float) or isinstance(created_at, bool):
            raise KeyRingError(f"signing key {kid}: created_at must be a number")
        if not_after is not None and (
            not isinstance(not_after, int | float) or isinstance(not_after, bool)
        ):
            raise KeyRingError(f"signing key {kid}: not_after must be a number or null")
        try:
            loaded = serialization.load_pem_private_key(pem.encode("ascii"), password=None)
            certificate = x509.load_pem_x509_certificate(certificate_pem.encode("ascii"))
        except ValueError as error:
            raise KeyRingError(f"signing key {kid}: unreadable PEM ({error})") from None
        private_key = _check_key_fits(str(algorithm), loaded)
        if key_thumbprint(private_key.public_key()) != kid:
            raise KeyRingError(f"signing key {kid}: kid does not match the key")
        if certificate.public_key() != private_key.public_key():
            raise KeyRingError(f"signing key {kid}: certificate is for another key")
        return cls(
            kid,
            "RS256" if algorithm == "RS256" else "ES256",
            private_key,
            float(created_at),
            certificate_pem,
            None if not_after is None else float(not_after),
        )


class KeyRing:
    """The edge's signing keys: one active, older ones published until their overlap ends.

    Every method takes ``now`` (Unix seconds) explicitly, so rotation schedules are tested with
    plain numbers and several edges sharing the store agree on what is published when.
    """

    def __init__(
        self,
        keys: Iterable[SigningKey],
        *,
        overlap: float = DEFAULT_OVERLAP,
        rotation_period: float = DEFAULT_ROTATION_PERIOD,
    ) -> None:
        self._keys: list[SigningKey] = list(keys)
        # ``active`` is read for every token minted: remembered for the list it was found in
        # (every change of the keys assigns a new list).
        self._active: tuple[list[SigningKey], SigningKey] | None = None
        self.overlap = overlap
        self.rotation_period = rotation_period

    @classmethod
    def generate(cls, algorithm: Algorithm = "RS256", *, now: float, **settings: float) -> KeyRing:
        """A new ring holding one freshly generated active key."""
        ring = cls((), **settings)
        ring.generate_key(algorithm, now=now)
        return ring

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, object]], **settings: float) -> KeyRing:
        return cls((SigningKey.from_record(record) for record in records), **settings)

    def to_records(self) -> list[dict[str, str | float | None]]:
        return [key.to_record() for key in self._keys]

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        return tuple(self._keys)

    @property
    def active(self) -> SigningKey:
        remembered = self._active
        if remembered is not None and remembered[0] is self._keys:
            return remembered[1]
        candidates = [key for key in self._keys if key.not_after is None]
        if not candidates:
            raise KeyRingError("no active signing key: run key rotation")
        active = max(candidates, key=lambda key: (key.created_at, key.kid))
        self._active = (self._keys, active)
        return active

    def generate_key(self, algorithm: Algorithm, *, now: float) -> SigningKey:
        """Add a new active key; any previous active key enters its overlap period."""
        new_key = SigningKey.generate(algorithm, now=now)
        retire_at = now + self.overlap
        self._keys = [
            *(
                key if key.not_after is not None else replace(key, not_after=retire_at)
                for key in self._keys
                if key.published_at(now)
            ),
            new_key,
        ]
        logger.info("signing key %s (%s) is now active", new_key.kid, algorithm)
        return new_key

    def rotate(self, *, now: float, algorithm: Algorithm | None = None) -> SigningKey:
        """Replace the active key, keeping its algorithm unless another is asked for."""
        previous = self.active if any(k.not_after is None for k in self._keys) else None
        chosen = algorithm or (previous.algorithm if previous else "RS256")
        return self.generate_key(chosen, now=now)

    def due_for_rotation(self, now: float) -> bool:
        try:
            return now >= self.active.created_at + self.rotation_period
        except KeyRingError:
            return True

    def prune(self, now: float) -> list[SigningKey]:
        """Forget keys whose overlap has ended; returns them so the store can delete them."""
        dropped = [key for key in self._keys if not key.published_at(now)]
        self._keys = [key for key in self._keys if key.published_at(now)]
        return dropped

    def published(self, now: float) -> tuple[SigningKey, ...]:
        return tuple(key for key in self._keys if key.published_at(now))

    def verification_key(self, kid: str, now: float) -> SigningKey | None:
        for key in self._keys:
            if key.kid == kid and key.published_at(now):
                return key
        return None

    def jwks(self, now: float) -> dict[str, list[dict[str, str]]]:
        return {"keys": [key.jwk() for key in self.published(now)]}

    def certs_document(self, now: float) -> dict[str, object]:
        """The body of the ``certs`` endpoint, shaped like Cloudflare Access's."""
        published = self.published(now)
        certs = [{"kid": key.kid, "cert": key.certificate_pem} for key in published]
        active = self.active
        return {
            "keys": [key.jwk() for key in published],
            "public_cert": {"kid": active.kid, "cert": active.certificate_pem},
            "public_certs": certs,
        }


def new_aud_tag(random_bytes: RandomBytes = secrets.token_bytes) -> str:
    """A new application audience tag: 64 hex characters from 32 random bytes."""
    raw = random_bytes(32)
    if len(raw) != 32:
        raise ValueError("randomness source returned the wrong number of bytes")
    return raw.hex()


@dataclass(frozen=True, slots=True)
class _MintedToken:
    token: str
    identity: Identity
    identity_nonce: str
    kid: str
    lifetime: float
    expires_at: float


class TokenMinter:
    """Mints app and org tokens, reusing each until it is close to expiry."""

    def __init__(
        self,
        keyring: KeyRing,
        *,
        issuer: str,
        clock: Clock,
        cache_size: int = 10_000,
    ) -> None:
        self._keyring = keyring
        self._issuer = issuer
        self._clock = clock
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[str, str, str], _MintedToken] = OrderedDict()

    def mint(
        self,
        identity: Identity,
        *,
        session_id: str,
        identity_nonce: str,
        aud: str,
        lifetime: float,
        token_type: TokenType = "app",
        session_expires_at: float | None = None,
    ) -> str:
        """A signed token for ``identity`` bound to the audience ``aud``.

        ``session_id`` only keys the cache and never appears in the token; ``identity_nonce``
        is the session's public handle used by ``get-identity``. The token never outlives
        ``session_expires_at``.
        """
        now = self._clock()
        active = self._keyring.active
        cache_key = (session_id, aud, token_type)
        cached = self._cache.get(cache_key)
        expires_at = now + lifetime
        if session_expires_at is not None:
            expires_at = min(expires_at, session_expires_at)
        if (
            cached is not None
            and (cached.identity is identity or cached.identity == identity)
            and cached.identity_nonce == identity_nonce
            and cached.kid == active.kid
            and cached.lifetime == lifetime
            and cached.expires_at > now
            and (
                cached.expires_at - now > REUSE_UNTIL_REMAINING * lifetime
                # Near the end of its session a fresh token would not live any longer.
                or cached.expires_at >= int(expires_at)
            )
        ):
            self._cache.move_to_end(cache_key)
            return cached.token
        claims = self._claims(identity, identity_nonce, aud, token_type, int(now), int(expires_at))
        token = jwt.encode(
            claims,
            active.private_key,
            algorithm=active.algorithm,
            headers={"kid": active.kid, "typ": "JWT"},
        )
        self._cache[cache_key] = _MintedToken(
            token, identity, identity_nonce, active.kid, lifetime, float(int(expires_at))
        )
        self._cache.move_to_end(cache_key)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return token

    def _claims(
        self,
        identity: Identity,
        identity_nonce: str,
        aud: str,
        token_type: TokenType,
        issued_at: int,
        expires_at: int,
    ) -> dict[str, object]:
        claims: dict[str, object] = {
            "iss": self._issuer,
            "aud": [aud],
            "sub": identity.sub,
            "email": identity.email,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_at,
            "type": token_type,
            "identity_nonce": identity_nonce,
            "groups": list(identity.groups),
            "idp": identity.idp,
        }
        if identity.service_token is not None:
            claims["common_name"] = identity.service_token
        if identity.country is not None:
            claims["country"] = identity.country
        return claims

    def forget_session(self, session_id: str) -> None:
        """Drop cached tokens of a session that ended (logout, revocation)."""
        for key in [key for key in self._cache if key[0] == session_id]:
            del self._cache[key]


@dataclass(frozen=True, slots=True)
class _VerificationKey:
    algorithm: Algorithm
    public_key: PublicKey


def _jwks_keys(jwks: Mapping[str, object]) -> dict[str, _VerificationKey]:
    """Verification keys from a JWKS; entries we would never sign with are left out."""
    entries = jwks.get("keys")
    if not isinstance(entries, list):
        raise KeyRingError('JWKS must have a "keys" list')
    keys: dict[str, _VerificationKey] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        kid, algorithm = entry.get("kid"), entry.get("alg")
        if not isinstance(kid, str) or not _KID_PATTERN.fullmatch(kid):
            continue
        if algorithm not in ALLOWED_ALGORITHMS or entry.get("use", "sig") != "sig":
            continue
        expected_kty = "RSA" if algorithm == "RS256" else "EC"
        if entry.get("kty") != expected_kty:
            continue
        try:
            key = jwt.PyJWK(entry).key
        except (jwt.PyJWTError, ValueError, TypeError):
            continue
        if isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            keys[kid] = _VerificationKey("RS256" if algorithm == "RS256" else "ES256", key)
    return keys


def _decode_segment(segment: str) -> dict[str, object]:
    try:
        value = json.loads(_b64url_decode(segment))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise TokenInvalid("malformed") from None
    if not isinstance(value, dict):
        raise TokenInvalid("malformed")
    return value


def _number_claim(claims: Mapping[str, object], name: str) -> float:
    value = claims.get(name)
    if value is None:
        raise TokenInvalid("missing_claim", name)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise TokenInvalid("bad_claim", name)
    return float(value)


class TokenVerifier:
    """Verifies tokens against our own keys: a KeyRing (edge) or a served JWKS (connector)."""

    def __init__(
        self,
        keys: KeyRing | Mapping[str, object],
        *,
        issuer: str,
        clock: Clock,
        leeway: float = 0.0,
        max_token_bytes: int = MAX_TOKEN_BYTES,
    ) -> None:
        self._keyring = keys if isinstance(keys, KeyRing) else None
        self._jwks_keys = _jwks_keys(keys) if not isinstance(keys, KeyRing) else {}
        self._issuer = issuer
        self._clock = clock
        self._leeway = leeway
        self._max_token_bytes = max_token_bytes

    def _key_for(self, kid: str, now: float) -> _VerificationKey | None:
        if self._keyring is None:
            return self._jwks_keys.get(kid)
        key = self._keyring.verification_key(kid, now)
        return None if key is None else _VerificationKey(key.algorithm, key.public_key())

    def verify(
        self, token: str, audience: str, *, token_type: TokenType | None = None
    ) -> dict[str, object]:
        """The token's claims, or TokenInvalid with a stable reason."""
        if len(token) > self._max_token_bytes:
            raise TokenInvalid("too_large")
        if not _TOKEN_PATTERN.fullmatch(token):
            raise TokenInvalid("malformed")
        parts = token.split(".")
        header = _decode_segment(parts[0])
        forbidden = sorted(set(header) - ALLOWED_HEADER_KEYS)
        if forbidden:
            raise TokenInvalid("forbidden_header", ",".join(forbidden)[:80])
        algorithm = header.get("alg")
        if algorithm not in ALLOWED_ALGORITHMS:
            raise TokenInvalid("algorithm_not_allowed", str(algorithm)[:20])
        kid = header.get("kid")
        if kid is None:
            raise TokenInvalid("missing_kid")
        if not isinstance(kid, str) or not _KID_PATTERN.fullmatch(kid):
            raise TokenInvalid("bad_kid")
        now = self._clock()
        key = self._key_for(kid, now)
        if key is None:
            raise TokenInvalid("unknown_kid")
        if key.algorithm != algorithm:
            raise TokenInvalid("algorithm_mismatch")
        self._check_signature(parts, key)
        claims = _decode_segment(parts[1])
        self._check_claims(claims, audience, token_type, now)
        return claims

    @staticmethod
    def _check_signature(parts: list[str], key: _VerificationKey) -> None:
        try:
            signature = _b64url_decode(parts[2])
        except (ValueError, binascii.Error):
            raise TokenInvalid("malformed") from None
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        public_key = key.public_key
        if isinstance(public_key, rsa.RSAPublicKey):
            valid = RSAAlgorithm(RSAAlgorithm.SHA256).verify(signing_input, public_key, signature)
        else:
            valid = ECAlgorithm(ECAlgorithm.SHA256).verify(signing_input, public_key, signature)
        if not signature or not valid:
            raise TokenInvalid("bad_signature")

    def _check_claims(
        self,
        claims: Mapping[str, object],
        audience: str,
        token_type: TokenType | None,
        now: float,
    ) -> None:
        times = {name: _number_claim(claims, name) for name in _REQUIRED_TIME_CLAIMS}
        issuer = claims.get("iss")
        if issuer is None:
            raise TokenInvalid("missing_claim", "iss")
        if issuer != self._issuer:
            raise TokenInvalid("wrong_issuer")
        audiences = claims.get("aud")
        if isinstance(audiences, str):
            audiences = [audiences]
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise TokenInvalid("missing_claim" if audiences is None else "bad_claim", "aud")
        if audience not in audiences:
            raise TokenInvalid("wrong_audience")
        if times["exp"] <= now - self._leeway:
            raise TokenInvalid("expired")
        if times["nbf"] > now + self._leeway:
            raise TokenInvalid("not_yet_valid")
        if times["iat"] > now + self._leeway:
            raise TokenInvalid("issued_in_future")
        if token_type is not None and claims.get("type") != token_type:
            raise TokenInvalid("wrong_type")
