"""Signing keys shared by the token tests: RSA generation is slow and keys are immutable."""

from __future__ import annotations

import pytest

from edge.access.tokens import SigningKey

from .builders import T0


@pytest.fixture(scope="session")
def rsa_keys() -> tuple[SigningKey, SigningKey]:
    return SigningKey.generate("RS256", now=T0), SigningKey.generate("RS256", now=T0 + 10)


@pytest.fixture(scope="session")
def ec_key() -> SigningKey:
    return SigningKey.generate("ES256", now=T0)
