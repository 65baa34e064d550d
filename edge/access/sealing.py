"""Sealed values: small payloads the edge hands to a browser and must get back unaltered.

Cookies and one-time codes travel through the browser, so anything in them is attacker input.
A sealed value is AES-256-GCM over a JSON payload that carries its own expiry, so a value that
was altered, truncated, forged, expired or made for something else never opens:

* the key is derived with HKDF-SHA256 from the edge's secret material, so the same secret can
  feed other derivations without the keys ever being related;
* the *purpose* (``"session"``, ``"login-state"``, ``"handoff"``...) is the associated data of
  the encryption: a value sealed for one purpose fails authentication under every other one, so
  a hand-off code can never be replayed as a session cookie;
* the sealed text and the payload are size-capped before anything is decoded or decrypted;
* a 96-bit random nonce per value (from the injected randomness), a version byte in front so
  the format can change, and extra secrets accepted for opening so the secret can rotate.

Authentication-tag comparison is constant-time inside the AEAD implementation; nothing else
here compares secrets.

Errors::

    AccessError
    └── SealedValueInvalid    400; .reason is one of "too_large", "malformed", "bad_version",
                              "tampered" (authentication failed, which includes a wrong purpose
                              or a secret the edge no longer has) or "expired"
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Sequence
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from edge.access.errors import AccessError

__all__ = ["MAX_PAYLOAD_BYTES", "MAX_SEALED_CHARS", "SealedValueInvalid", "Sealer"]

Clock = Callable[[], float]
RandomBytes = Callable[[int], bytes]

MAX_SEALED_CHARS = 3072
"""Fits in one cookie (browsers cap a cookie at 4096 bytes including its name and attributes)."""
MAX_PAYLOAD_BYTES = 2048
MIN_SECRET_BYTES = 32
_VERSION = 1
_NONCE_BYTES = 12
_TAG_BYTES = 16
_HKDF_INFO = b"tunnelgate sealed values v1"
_PURPOSE_PATTERN = re.compile(r"[a-z0-9][a-z0-9:._/-]{0,127}")
_SEALED_PATTERN = re.compile(r"[A-Za-z0-9_-]+")


class SealedValueInvalid(AccessError):
    """A sealed value did not open. The reason is safe to log; the value itself never is."""

    http_status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(f"sealed value refused: {reason}")
        self.reason = reason


def _derive_key(secret: bytes) -> AESGCM:
    if len(secret) < MIN_SECRET_BYTES:
        raise ValueError(f"sealing secrets must have at least {MIN_SECRET_BYTES} bytes")
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO).derive(secret)
    return AESGCM(key)


def _associated_data(purpose: str) -> bytes:
    if not _PURPOSE_PATTERN.fullmatch(purpose):
        raise ValueError(f"invalid sealing purpose {purpose!r}")
    return b"tunnelgate/" + purpose.encode("ascii")


class Sealer:
    """Seals and opens small JSON payloads bound to a purpose and an expiry.

    ``secret`` seals and opens; each of ``previous_secrets`` only opens, so values sealed before
    a secret rotation stay readable until they expire.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        clock: Clock,
        random_bytes: RandomBytes,
        previous_secrets: Sequence[bytes] = (),
    ) -> None:
        self._current = _derive_key(secret)
        self._openers = [self._current, *(_derive_key(old) for old in previous_secrets)]
        self._clock = clock
        self._random_bytes = random_bytes

    def seal(self, purpose: str, payload: dict[str, Any], *, lifetime: float) -> str:
        """The sealed text of ``payload`` (a JSON object), valid for ``lifetime`` seconds."""
        if lifetime <= 0:
            raise ValueError("a sealed value needs a positive lifetime")
        if "exp" in payload:
            raise ValueError("'exp' is reserved for the expiry of a sealed value")
        plaintext = json.dumps(
            {**payload, "exp": self._clock() + lifetime}, separators=(",", ":"), sort_keys=True
        ).encode("utf-8")
        if len(plaintext) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"sealed payloads are limited to {MAX_PAYLOAD_BYTES} bytes")
        nonce = self._random_bytes(_NONCE_BYTES)
        if len(nonce) != _NONCE_BYTES:
            raise ValueError("randomness source returned the wrong number of bytes")
        ciphertext = self._current.encrypt(nonce, plaintext, _associated_data(purpose))
        sealed = bytes([_VERSION]) + nonce + ciphertext
        return base64.urlsafe_b64encode(sealed).rstrip(b"=").decode("ascii")

    def open(self, purpose: str, sealed: str) -> dict[str, Any]:
        """The payload sealed for ``purpose``, without its expiry; or SealedValueInvalid."""
        associated_data = _associated_data(purpose)
        if len(sealed) > MAX_SEALED_CHARS:
            raise SealedValueInvalid("too_large")
        if not _SEALED_PATTERN.fullmatch(sealed):
            raise SealedValueInvalid("malformed")
        try:
            raw = base64.urlsafe_b64decode(sealed + "=" * (-len(sealed) % 4))
        except (binascii.Error, ValueError):
            raise SealedValueInvalid("malformed") from None
        if len(raw) < 1 + _NONCE_BYTES + _TAG_BYTES:
            raise SealedValueInvalid("malformed")
        if raw[0] != _VERSION:
            raise SealedValueInvalid("bad_version")
        nonce, ciphertext = raw[1 : 1 + _NONCE_BYTES], raw[1 + _NONCE_BYTES :]
        plaintext = self._decrypt(nonce, ciphertext, associated_data)
        try:
            decoded: object = json.loads(plaintext)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise SealedValueInvalid("malformed") from None
        if not isinstance(decoded, dict):
            raise SealedValueInvalid("malformed")
        payload: dict[str, Any] = decoded
        expires_at = payload.get("exp")
        if not isinstance(expires_at, int | float) or isinstance(expires_at, bool):
            raise SealedValueInvalid("malformed")
        if self._clock() >= expires_at:
            raise SealedValueInvalid("expired")
        del payload["exp"]
        return payload

    def _decrypt(self, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
        for opener in self._openers:
            try:
                return opener.decrypt(nonce, ciphertext, associated_data)
            except InvalidTag:
                continue
        raise SealedValueInvalid("tampered")
