"""App tokens are signed once per session and app, also in the last stretch of a session."""

from __future__ import annotations

from edge.access.identity import Identity
from edge.access.tokens import KeyRing, TokenMinter

T0 = 1_800_000_000.0
ALICE = Identity("alice", "alice@corp.com", True, "Alice", ("eng",), "corp")


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def test_a_token_capped_by_its_session_is_reused_until_the_session_ends() -> None:
    clock = Clock()
    minter = TokenMinter(KeyRing.generate(now=T0), issuer="https://auth.example", clock=clock)
    day, session_end = 86400.0, T0 + 3600.0

    def mint() -> str:
        return minter.mint(ALICE, session_id="s", identity_nonce="n", aud="app",
                           lifetime=day, session_expires_at=session_end)

    first = mint()
    clock.now += 1800
    assert mint() == first  # a new token could not live longer than this one
    clock.now += 1799
    assert mint() == first
    clock.now += 1
    assert mint() != first  # expired: a new one (capped again) is made


def test_a_token_near_its_own_expiry_is_renewed() -> None:
    clock = Clock()
    minter = TokenMinter(KeyRing.generate(now=T0), issuer="https://auth.example", clock=clock)

    def mint() -> str:
        return minter.mint(ALICE, session_id="s", identity_nonce="n", aud="app", lifetime=1000.0,
                           session_expires_at=T0 + 86400)

    first = mint()
    clock.now += 899
    assert mint() == first
    clock.now += 2
    assert mint() != first
