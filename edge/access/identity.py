"""Who is asking and what we know about the request: the inputs of every access decision.

Both are frozen so a decision can never be influenced by something mutating them halfway, and
so equal inputs give equal decisions (the policy engine is a pure function of these values).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class Identity:
    """A person signed in through an identity provider, or a machine holding a service token.

    ``email_verified`` is False when the provider says the address is unverified; such an
    identity never matches an e-mail selector. Providers that report nothing about
    verification must decide for themselves whether they vouch for the address.

    ``service_token`` is set only for service-token identities: it is the token's name as
    written in policies (``{ service_token = "ci-bot" }``) and is sent as the ``common_name``
    claim. ``amr`` holds the authentication methods the provider reported (e.g. ``"mfa"``,
    ``"pwd"``, ``"otp"``). ``country`` is where the login happened, for the token claim.
    ``issued_at`` is when the login happened, in Unix seconds.
    """

    sub: str
    email: str
    email_verified: bool
    name: str
    groups: tuple[str, ...]
    idp: str
    amr: tuple[str, ...] = ()
    country: str | None = None
    service_token: str | None = None
    issued_at: float = 0.0

    @classmethod
    def for_service_token(cls, name: str, *, issued_at: float) -> Identity:
        """The identity of a request that presented a valid service token called ``name``."""
        return cls(
            sub="",
            email="",
            email_verified=False,
            name=name,
            groups=(),
            idp="service_token",
            service_token=name,
            issued_at=issued_at,
        )

    @property
    def is_service_token(self) -> bool:
        return self.service_token is not None


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What the edge knows about one request that does not come from the identity.

    ``client_ip`` is the peer address, or the forwarded one only when the peer is a trusted
    proxy. ``country`` comes from a trusted geolocation header, never from the client.
    ``client_cert_fingerprint`` is set only when the TLS layer verified a client certificate
    against the configured CA. ``path`` is the canonical path (no query, no fragment).
    """

    client_ip: IPAddress
    country: str | None = None
    client_cert_fingerprint: str | None = None
    path: str = "/"
