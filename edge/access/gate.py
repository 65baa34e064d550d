"""The per-request Access check, run before routing on every public request.

For every request, whatever its host:

1. the client's copies of identity headers (ours and the usual gateway ones, compared after
   name normalisation, so ``Cf_Access_Jwt_Assertion`` and ``cf-access-jwt-assertion `` are the
   same header) and of our cookies are removed; ``edge.forwarding`` already removed hop-by-hop
   headers, including those the client named in ``Connection``, and identity headers are only
   added after that, so a client can never choose which of ours disappear;
2. paths under the Access prefix are answered by :class:`edge.access.flow.AccessFlow`;
3. the application for the canonical host and path decides: none means the request passes
   without identity; otherwise the service-token headers (constant-time) or the app cookie
   (an app JWT, verified once per token and then only checked for expiry, with its session
   looked up in memory; a token another edge of the store issued is accepted while its global
   session is live here, see :mod:`edge.access.runtime`) give the identity, and ``decide()``
   the outcome. A granted sign-in (cookie, session, app session, the app token the origin
   gets, and the decisions per client address) is reused by the requests that present the
   same cookies for the same application for at most a second, and only while no session,
   revocation, logout, catalog or key change happened since and nothing it rests on expired
   (``_RememberedSignin``): checking it again for every request was a seventh of the edge's
   work per request. Every request is still audited and counted.

Outcomes: allowed requests get the app token in the app's assertion header (minted per session
and app, reused until near expiry) and the e-mail header, and the token's claims travel in the
stream head; a visitor without a valid session is redirected to the auth domain's login (or
gets 401 JSON for ``fetch``/XHR); a denied person gets the 403 page, never a redirect. Every
decision goes to the audit trail without waiting on the store.

WebSocket upgrades are also refused when the app does not allow them or, for cookie-based
sessions, when ``Origin`` is missing or foreign; a granted upgrade carries a guard that closes
the stream when its session ends, its app is revoked, or the policy stops granting it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from urllib.parse import urlsplit

from edge.access.catalog import CatalogApp
from edge.access.flow import AccessFlow, login_url
from edge.access.identity import Identity, RequestFacts
from edge.access.pages import denied_page
from edge.access.policy import Decision, decide
from edge.access.responses import (
    client_facts,
    send_json,
    send_page,
    send_redirect,
    wants_json_answer,
)
from edge.access.runtime import AccessRuntime, VerifiedToken, normalise_cookie_name
from edge.access.sessions import AppSession, GlobalSession, cookie_values
from edge.forwarding import normalised_names
from edge.http11 import IncomingRequest, RequestBody, ResponseWriter
from tunnel.bounded_memo import BoundedMemo

__all__ = ["AccessGate", "AccessGrant", "ScrubbedHeaders", "scrub_headers", "split_headers"]

log = logging.getLogger(__name__)

_COOKIE = b"cookie"
_CLIENT_ID = b"cf-access-client-id"
_CLIENT_SECRET = b"cf-access-client-secret"
_ACCESS_TOKEN = b"cf-access-token"
MAX_COOKIE_CANDIDATES = 4


@dataclass(frozen=True)
class AccessGrant:
    """What a forwarded request carries: the identity for its tunnel head (shared among the
    requests of one token: never changed), and for long-lived streams a way to end them when
    the grant stops holding."""

    identity: dict[str, object] | None = None
    still_valid: Callable[[], bool] | None = None
    runtime: AccessRuntime | None = None

    @property
    def guard(self) -> Callable[[Callable[[], Awaitable[None]]], Awaitable[None]] | None:
        """``await guard(work)`` runs ``work`` (a relay), cancelling it as soon as the grant no
        longer holds; None when nothing rechecks the grant. It holds the recheck only, not the
        grant: a relay keeps its guard for as long as a WebSocket lasts."""
        if self.still_valid is None or self.runtime is None:
            return None
        return partial(self.runtime.stream_guards.guard, self.still_valid)


OPEN_GRANT = AccessGrant()


def _strip_cookie_pairs(value: bytes, ours: frozenset[str]) -> bytes:
    key = (value, ours)
    stripped = _STRIPPED_SEEN.get(key)
    if stripped is None:
        stripped = _STRIPPED_SEEN.remember(key, _strip_cookie_pairs_uncached(value, ours),
                                           len(value))
    return stripped


# The same Cookie header comes with every request of a session: it is scrubbed once. Bounded in
# entries and in the size of a header kept; a full table starts over.
_STRIPPED_SEEN_MAX = 1024
_STRIPPED_HEADER_MAX = 8192
_STRIPPED_SEEN: BoundedMemo[tuple[bytes, frozenset[str]], bytes] = BoundedMemo(
    _STRIPPED_SEEN_MAX, _STRIPPED_HEADER_MAX
)


def _strip_cookie_pairs_uncached(value: bytes, ours: frozenset[str]) -> bytes:
    kept = [
        piece
        for piece in value.split(b";")
        if piece.strip()
        and normalise_cookie_name(piece.split(b"=", 1)[0].decode("latin-1")) not in ours
    ]
    return b";".join(kept).strip()


@dataclass(slots=True)
class ScrubbedHeaders:
    """A request's headers without identity headers and our cookies, plus what Access reads
    from the client's originals: every ``Cookie`` value and the service-token credentials.
    ``split_headers`` may hand the same one to several requests: read it, never change it."""

    kept: list[tuple[bytes, bytes]]
    cookies: list[bytes]
    client_id: bytes | None = None
    client_secret: bytes | None = None
    access_token: bytes | None = None


def split_headers(
    headers: Sequence[tuple[bytes, bytes]],
    identity_headers: frozenset[bytes],
    cookies: frozenset[str],
) -> ScrubbedHeaders:
    """One pass over the client's headers (names normalised): scrub, and keep what we read.

    A header list seen before is looked up, not split again; the result may be shared, so copy
    ``kept`` before changing it."""
    key = (tuple(headers), identity_headers, cookies)
    try:
        result = _SPLIT_SEEN.get(key)
    except TypeError:  # a bytearray in a header: not hashable (``remember`` skips it too)
        result = None
    if result is None:
        result = _split_headers(headers, identity_headers, cookies)
        _SPLIT_SEEN.remember(key, result, sum(len(n) + len(v) for n, v in headers))
    return result


_SPLIT_SEEN: BoundedMemo[tuple[object, ...], ScrubbedHeaders] = BoundedMemo(
    _STRIPPED_SEEN_MAX, _STRIPPED_HEADER_MAX
)


def _split_headers(
    headers: Sequence[tuple[bytes, bytes]],
    identity_headers: frozenset[bytes],
    cookies: frozenset[str],
) -> ScrubbedHeaders:
    result = ScrubbedHeaders([], [])
    for normalised, (name, value) in zip(normalised_names(headers), headers, strict=True):
        if normalised == _COOKIE:
            result.cookies.append(value)
            value = _strip_cookie_pairs(value, cookies)
            if not value:
                continue
        elif normalised in identity_headers:
            if normalised == _CLIENT_ID and result.client_id is None:
                result.client_id = value
            elif normalised == _CLIENT_SECRET and result.client_secret is None:
                result.client_secret = value
            elif normalised == _ACCESS_TOKEN and result.access_token is None:
                result.access_token = value
            continue
        result.kept.append((name, value))
    return result


def scrub_headers(
    headers: Sequence[tuple[bytes, bytes]],
    identity_headers: frozenset[bytes],
    cookies: frozenset[str],
) -> list[tuple[bytes, bytes]]:
    """The headers without any identity header and without our cookies (names normalised)."""
    return list(split_headers(headers, identity_headers, cookies).kept)


@dataclass(frozen=True, slots=True)
class _Signin:
    session: GlobalSession
    app_session: AppSession
    token: str
    verified: VerifiedToken


_SigninKey = tuple[tuple[bytes, ...], bytes | None, str]
"""A request's ``Cookie`` headers, its ``cf-access-token`` header and the application's AUD
(unique within a catalog, and an entry is only used with the catalog it was made with)."""

SIGNIN_MEMORY_SECONDS = 1.0
"""How long a checked sign-in is reused at most, even when nothing it rests on changed."""
MAX_REMEMBERED_SIGNINS = 4096
MAX_DECISIONS_PER_SIGNIN = 16
MAX_REMEMBERED_COOKIE_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class _RememberedSignin:
    """A granted sign-in, reused by the next requests that present the same cookies for the
    same application while nothing it rests on has changed: the session manager's generation
    (every session, app session, epoch, logout or revocation bumps it), the catalog
    (applications, policies, revocations by e-mail or app), the signing keys (the minter), and
    the clock (the tokens', session's and app session's expiry, and at most
    ``SIGNIN_MEMORY_SECONDS``). The policy decision is remembered per client address (all a
    policy sees of the request besides the identity); the audit entry and the WebSocket checks
    are made for every request."""

    signin: _Signin
    header_token: bool
    origin_headers: tuple[tuple[bytes, bytes], ...]
    grant: AccessGrant
    generation: int
    catalog: object
    minter: object
    valid_until: float
    decisions: dict[str, Decision] = field(default_factory=dict)

    def keep_decision(self, client_ip: str, decision: Decision) -> None:
        if len(self.decisions) >= MAX_DECISIONS_PER_SIGNIN:
            self.decisions.clear()
        self.decisions[client_ip] = decision


class AccessGate:
    """``await gate(request, body, respond)`` -> an :class:`AccessGrant`, or None once the
    gate answered the request itself (login redirect, denial, an Access endpoint)."""

    def __init__(self, runtime: AccessRuntime) -> None:
        self._rt = runtime
        self.flow = AccessFlow(runtime)
        self._signins: BoundedMemo[_SigninKey, _RememberedSignin] = BoundedMemo(
            MAX_REMEMBERED_SIGNINS, MAX_REMEMBERED_COOKIE_BYTES
        )

    async def __call__(
        self, request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> AccessGrant | None:
        rt = self._rt
        scrubbed = split_headers(request.headers, rt.strip_headers, rt.strip_cookies)
        request.headers = list(scrubbed.kept)  # the split may be shared
        cookie_headers = scrubbed.cookies
        client_id, client_secret = scrubbed.client_id, scrubbed.client_secret
        if self.flow.owns(request.path):
            await self.flow.handle(request, body, respond, cookie_headers)
            return None
        app = rt.catalog.app_for(request.host, request.path)
        if app is None:
            return OPEN_GRANT
        if client_id is not None or client_secret is not None:
            return await self._service_token(request, respond, app, client_id, client_secret)
        key = (tuple(cookie_headers), scrubbed.access_token, app.aud)
        remembered = self._remembered(key)
        signin: _Signin | None
        if remembered is not None:
            signin, header_token = remembered.signin, remembered.header_token
        else:
            # A ``cf-access-token`` header (the CLI's cached app token) counts like the cookie;
            # a browser never sends it on its own, so it needs no Origin check on WebSocket
            # upgrades.
            signin = None
            if scrubbed.access_token is not None:
                token_text = scrubbed.access_token.decode("latin-1").strip()
                signin = self._signin_with(app, [token_text])
            header_token = signin is not None
            if signin is None:
                signin = self._signin(app, cookie_headers)
        identity = signin.session.identity if signin is not None else None
        # Policies see the identity and the client's address only (``client_facts``): a
        # remembered sign-in keeps the decisions it got per address.
        decision = remembered.decisions.get(request.client_ip) if remembered else None
        if decision is None:
            decision = decide(identity, app.policies, client_facts(request))
            if remembered is not None:
                remembered.keep_decision(request.client_ip, decision)
        self._audit(request, app, decision, identity)
        if decision.action == "bypass":
            return OPEN_GRANT
        if decision.action == "authenticate" or identity is None or signin is None:
            await self._authenticate(request, respond, app)
            return None
        if not decision.granted:
            await self._deny(request, respond, app, identity, decision.reason)
            return None
        refusal = self._websocket_refusal(request, app, cookie_based=not header_token)
        if refusal is not None:
            await self._deny(request, respond, app, identity, refusal)
            return None
        if remembered is None:
            remembered = self._remember(key, app, signin, header_token)
            remembered.keep_decision(request.client_ip, decision)
        request.headers.extend(remembered.origin_headers)
        if request.is_websocket_upgrade:
            still_valid = self._session_check(signin, app.aud, client_facts(request))
            return AccessGrant(remembered.grant.identity, still_valid, rt)
        return remembered.grant

    # -- remembered sign-ins -----------------------------------------------------------

    def _remembered(self, key: _SigninKey) -> _RememberedSignin | None:
        """The sign-in behind ``key`` if one was checked since anything it rests on changed."""
        entry = self._signins.get(key)
        if entry is None:
            return None
        rt = self._rt
        if (
            entry.generation != rt.sessions.generation
            or entry.catalog is not rt.catalog
            or entry.minter is not rt.minter
            or rt.clock() >= entry.valid_until
        ):
            return None
        return entry

    def _remember(
        self, key: _SigninKey, app: CatalogApp, signin: _Signin, header_token: bool
    ) -> _RememberedSignin:
        """Check the rest of a granted sign-in (the app token the origin gets) and keep it."""
        rt = self._rt
        generation = rt.sessions.generation  # before minting: nothing below may change it
        token = rt.app_token(signin.session, app, signin.app_session)
        # The app token is usually the very cookie just verified: its verification stands.
        verified = (
            signin.verified if token == signin.token else rt.verify_app_token(token, app.aud)
        )
        email = signin.session.identity.email
        origin_headers: tuple[tuple[bytes, bytes], ...] = (
            (app.spec.header_name.encode("ascii"), token.encode("ascii")),
        )
        if email:
            origin_headers += ((app.spec.email_header_name.encode("ascii"), email.encode("utf-8")),)
        valid_until = min(
            rt.clock() + SIGNIN_MEMORY_SECONDS,
            signin.verified.expires_at,
            signin.session.expires_at,
            signin.app_session.expires_at,
            verified.expires_at if verified is not None else 0.0,
        )
        entry = _RememberedSignin(
            signin=signin,
            header_token=header_token,
            origin_headers=origin_headers,
            grant=AccessGrant(verified.identity if verified is not None else None, None, rt),
            generation=generation,
            catalog=rt.catalog,
            minter=rt.minter,
            valid_until=valid_until,
        )
        size = sum(len(value) for value in key[0]) + len(key[1] or b"")
        return self._signins.remember(key, entry, size)

    # -- identity ------------------------------------------------------------------------

    def _signin(self, app: CatalogApp, cookie_headers: list[bytes]) -> _Signin | None:
        """The live session behind the first valid app cookie, if any."""
        if not cookie_headers:
            return None
        return self._signin_with(app, cookie_values(cookie_headers, app.spec.cookie_name))

    def _signin_with(self, app: CatalogApp, tokens: list[str]) -> _Signin | None:
        """The live session behind the first valid app token among ``tokens``."""
        rt = self._rt
        for value in tokens[:MAX_COOKIE_CANDIDATES]:
            verified = rt.verify_app_token(value, app.aud)
            if verified is None:
                continue
            session = rt.sessions.get_by_nonce(verified.nonce)
            if session is None:
                continue
            app_session = rt.app_session_for_token(session, app.aud, verified)
            if app_session is None or rt.catalog.is_revoked(
                email=session.identity.email, aud=app.aud, created_at=session.created_at
            ):
                continue
            return _Signin(session, app_session, value, verified)
        return None

    def _session_check(
        self, signin: _Signin, aud: str, facts: RequestFacts
    ) -> Callable[[], bool]:
        rt = self._rt
        session_id = signin.session.id

        def still_valid() -> bool:
            session = rt.sessions.get(session_id)
            app = rt.catalog.app_by_aud(aud)
            if session is None or app is None:
                return False
            if rt.sessions.check_app_session(session_id, aud) is None:
                return False
            if rt.catalog.is_revoked(
                email=session.identity.email, aud=aud, created_at=session.created_at
            ):
                return False
            return decide(session.identity, app.policies, facts).granted

        return still_valid

    async def _service_token(
        self,
        request: IncomingRequest,
        respond: ResponseWriter,
        app: CatalogApp,
        client_id: bytes | None,
        client_secret: bytes | None,
    ) -> AccessGrant | None:
        rt = self._rt
        now = rt.clock()
        client_id_text = (client_id or b"").decode("latin-1").strip()
        secret_text = (client_secret or b"").decode("latin-1").strip()
        entry = rt.catalog.verify_service_token(client_id_text, secret_text, now=now)
        if entry is None:
            self._audit_raw(request, app, "deny", "service_token_invalid", None, None)
            await send_json(respond, 401, {"error": "service_token_invalid"})
            return None
        identity = Identity.for_service_token(entry.name, issued_at=now)
        facts = client_facts(request)
        decision = decide(identity, app.policies, facts)
        self._audit(request, app, decision, identity)
        if decision.action == "bypass":
            return OPEN_GRANT
        if not decision.granted:
            await send_json(respond, 403, {"error": "access_denied", "reason": decision.reason})
            return None
        refusal = self._websocket_refusal(request, app, cookie_based=False)
        if refusal is not None:
            await send_json(respond, 403, {"error": "access_denied", "reason": refusal})
            return None
        token = rt.service_token_jwt(identity, entry.client_id, app, entry.expires_at)
        verified = rt.verify_app_token(token, app.aud)
        request.headers.append((app.spec.header_name.encode("ascii"), token.encode("ascii")))
        still_valid = None
        if request.is_websocket_upgrade:
            aud, client = app.aud, entry.client_id

            def still_valid() -> bool:
                current = rt.catalog.app_by_aud(aud)
                if current is None:
                    return False
                if rt.catalog.verify_service_token(client, secret_text, now=rt.clock()) is None:
                    return False
                return decide(identity, current.policies, facts).granted

        claims = verified.identity if verified is not None else None
        return AccessGrant(claims, still_valid, rt)

    # -- answers -------------------------------------------------------------------------

    def _websocket_refusal(
        self, request: IncomingRequest, app: CatalogApp, *, cookie_based: bool
    ) -> str | None:
        if not request.is_websocket_upgrade:
            return None
        if not app.spec.allow_websockets:
            return "websockets_not_allowed"
        if not cookie_based:
            return None
        origin = request.header(b"origin")
        if origin is None:
            return "websocket_origin_missing"
        parts = urlsplit(origin.decode("latin-1").strip())
        port = parts.port if parts.port is not None else None
        expected_port = request.port
        same = (
            parts.scheme == request.scheme
            and (parts.hostname or "") == request.host
            and port == expected_port
        )
        return None if same else "websocket_origin_foreign"

    async def _authenticate(
        self, request: IncomingRequest, respond: ResponseWriter, app: CatalogApp
    ) -> None:
        configured = bool(self._rt.settings.auth_domain)
        if wants_json_answer(request):
            login = login_url(self._rt, request, app) if configured else None
            await send_json(respond, 401, {"error": "not_authenticated", "login": login})
            return
        if not configured:
            await respond.error(
                503, "Sign-in is not set up",
                "This application needs a login, but the gateway has no auth domain configured.",
            )
            return
        await send_redirect(respond, login_url(self._rt, request, app))

    async def _deny(
        self,
        request: IncomingRequest,
        respond: ResponseWriter,
        app: CatalogApp,
        identity: Identity,
        reason: str,
    ) -> None:
        if reason == "no_policy_matched" and not identity.email_verified:
            reason = "email_unverified"
        if wants_json_answer(request):
            await send_json(respond, 403, {"error": "access_denied", "reason": reason})
            return
        prefix = self._rt.settings.prefix.rstrip("/")
        page = denied_page(app.name, identity.email, reason, f"{prefix}/logout",
                           request.request_id)
        await send_page(respond, 403, page)

    def _audit(
        self,
        request: IncomingRequest,
        app: CatalogApp,
        decision: Decision,
        identity: Identity | None,
    ) -> None:
        self._audit_raw(request, app, decision.action, decision.reason, decision.policy,
                        identity)

    def _audit_raw(
        self,
        request: IncomingRequest,
        app: CatalogApp,
        action: str,
        reason: str,
        policy: str | None,
        identity: Identity | None,
    ) -> None:
        self._rt.audit_decision(
            app,
            client_ip=request.client_ip,
            action=action,
            reason=reason,
            policy=policy,
            identity=identity,
            host=request.host,
            path=request.path,
            request_id=request.request_id,
        )

