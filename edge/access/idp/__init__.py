"""Identity providers: where a person proves who they are before the edge trusts an e-mail.

Three kinds: any OpenID Connect provider by discovery (:mod:`.oidc`), GitHub OAuth2
(:mod:`.github`) and a one-time PIN sent by e-mail (:mod:`.otp`). The two redirect-based kinds
share the :class:`RedirectProvider` shape so the login flow drives them the same way: build an
authorization URL from the login state, check the callback parameters, exchange the code for an
:class:`~edge.access.identity.Identity`. Access and refresh tokens of the provider never leave
the exchange: they are not returned, stored or logged.

Errors (``reason`` is a stable code for audit logs and tests)::

    AccessError
    └── IdpError                 .reason, .http_status, .permanent
        ├── IdpUnavailable       502: the provider failed or misbehaved (unreachable, bad
        │                        discovery, issuer mismatch, client rejected, bad ID token)
        └── IdpLoginRefused      400/401: this login attempt is bad (code rejected or reused,
            │                    nonce mismatch, the person declined at the provider)
            └── OtpRefused       401 wrong_code/expired/locked/used/unknown_challenge,
                                 429 too_many_codes, 400 bad_email
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Protocol

import httpx

from edge.access.errors import AccessError
from edge.access.identity import Identity

__all__ = [
    "MAX_PROVIDER_RESPONSE_BYTES",
    "HttpClientFactory",
    "IdpError",
    "IdpLoginRefused",
    "IdpUnavailable",
    "OtpRefused",
    "RedirectProvider",
    "default_http_client",
    "provider_error_code",
    "read_json",
    "read_json_object",
]

MAX_PROVIDER_RESPONSE_BYTES = 1024 * 1024
PROVIDER_TIMEOUT = 10.0

HttpClientFactory = Callable[[], httpx.AsyncClient]


def default_http_client() -> httpx.AsyncClient:
    """A client for provider calls: bounded time, no redirects followed, TLS verified."""
    return httpx.AsyncClient(timeout=PROVIDER_TIMEOUT, follow_redirects=False)


class IdpError(AccessError):
    """A login through an identity provider failed; ``reason`` is stable and safe to log."""

    http_status = 502

    def __init__(
        self,
        reason: str,
        detail: str = "",
        *,
        http_status: int | None = None,
        permanent: bool | None = None,
    ) -> None:
        super().__init__(f"{reason}" + (f": {detail}" if detail else ""))
        self.reason = reason
        self.detail = detail
        if http_status is not None:
            self.http_status = http_status
        if permanent is not None:
            self.permanent = permanent


class IdpUnavailable(IdpError):
    """The provider cannot complete logins right now, or is configured wrongly (502)."""

    http_status = 502
    permanent = False


class IdpLoginRefused(IdpError):
    """This login attempt is refused; starting a new login may succeed."""

    http_status = 401


class OtpRefused(IdpLoginRefused):
    """A one-time PIN could not be sent or was not accepted."""


class RedirectProvider(Protocol):
    """The shape the login flow drives for OIDC and GitHub."""

    @property
    def name(self) -> str: ...

    async def prepare(self) -> None:
        """Fetch whatever ``authorization_url`` needs (discovery); cheap when cached."""

    def authorization_url(
        self,
        *,
        state: str,
        nonce: str,
        code_challenge: str,
        redirect_uri: str,
        prompt: str | None = None,
    ) -> str: ...

    def check_callback(self, params: Mapping[str, str]) -> str:
        """The authorization code of a callback, or IdpLoginRefused."""

    async def exchange(
        self, *, code: str, code_verifier: str, redirect_uri: str, expected_nonce: str
    ) -> Identity: ...


async def read_json(
    response: httpx.Response, *, what: str, limit: int = MAX_PROVIDER_RESPONSE_BYTES
) -> object:
    """The JSON document of a streamed response, read with a size cap.

    Works on responses from ``client.stream(...)`` so an oversized or endless answer from a
    provider never gets buffered whole.
    """
    body = bytearray()
    chunks = response.aiter_bytes()
    try:
        async for chunk in chunks:
            body += chunk
            if len(body) > limit:
                raise IdpUnavailable("response_too_large", what)
    finally:
        close = getattr(chunks, "aclose", None)
        if close is not None:
            await close()
    try:
        decoded: object = json.loads(bytes(body))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise IdpUnavailable("bad_response", f"{what} is not JSON") from None
    return decoded


async def read_json_object(
    response: httpx.Response, *, what: str, limit: int = MAX_PROVIDER_RESPONSE_BYTES
) -> dict[str, object]:
    """:func:`read_json` for answers that must be a JSON object."""
    decoded = await read_json(response, what=what, limit=limit)
    if not isinstance(decoded, dict):
        raise IdpUnavailable("bad_response", f"{what} is not a JSON object")
    return decoded


def provider_error_code(params: Mapping[str, str]) -> str:
    """The OAuth ``error`` of a callback, reduced to safe characters for logs and pages."""
    raw = params.get("error", "")
    return "".join(c for c in raw[:64] if c.isascii() and (c.isalnum() or c in "_-."))
