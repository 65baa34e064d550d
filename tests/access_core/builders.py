"""Builders for the access-core tests: identities and request facts with sensible defaults."""

from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import Any

from edge.access.identity import Identity, RequestFacts

T0 = 1_700_000_000.0


def person(email: str = "alice@corp.com", **changes: Any) -> Identity:
    identity = Identity(
        sub="alice-sub",
        email=email,
        email_verified=True,
        name="Alice",
        groups=("eng",),
        idp="okta",
        amr=("pwd",),
        country="DE",
        issued_at=T0,
    )
    return replace(identity, **changes)


def facts(ip: str = "198.51.100.7", **changes: Any) -> RequestFacts:
    return replace(RequestFacts(client_ip=ipaddress.ip_address(ip), path="/"), **changes)


class SettableClock:
    """A wall clock the test moves by hand: ``clock.now += 60``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now
