"""The running edge's Access state: keys, sessions, providers and the catalog, kept in memory.

Everything the request path reads lives here and is replaced, never edited in place, when the
admin API reports a change (:meth:`AccessRuntime.on_change`): a new catalog, a new key ring with
a fresh minter and verifier, rebuilt identity providers. The store is only touched by
background tasks and at start-up:

* sessions are loaded once at start and mirrored to the store through the session manager's
  change hook, via a bounded queue drained by :meth:`AccessRuntime.run`; the store keeps each
  session under the hash of its id, and the id itself only sealed (see below);
* several edges on one store share their global sessions: the store announces each write
  (``session_saved`` / ``session_deleted``, see :mod:`edge.cluster`), and :meth:`on_change`
  imports that one session (read in a worker thread, off the request path) or drops it, so a
  login on one edge is good on every other and a logout ends it everywhere within moments
  (both of these are :mod:`edge.access.session_sync`);
* access decisions go to the audit trail the same way (:mod:`edge.access.audit`), which also
  writes each one as a JSON line on the ``tunnelgate.audit`` logger;
* keys rotate on schedule (:func:`edge.access.keys_service.rotation_task`).

Both queues are bounded: when the store falls behind, new writes are dropped with a warning
rather than letting a request wait or memory grow.

App sessions stay in memory on the edge that opened them; they are not written to the store.
Instead an edge that does not hold the app session behind a valid app token adopts it
(:meth:`AccessRuntime.app_session_for_token`): the token's signature (the signing keys are
shared through the store), audience and expiry were checked, and its ``identity_nonce`` names a
global session that is live on this edge and not revoked for the app, which is everything the
edge that issued it would check. A logout or revocation ends the global session, and with it
every token naming it, on every edge.

The sealing secret (cookies, hand-off codes, stored session handles) is 32 random bytes that
every edge of a store shares, kept in the store's ``edge_secrets`` table and made once by
whichever edge starts first (:func:`shared_sealing_secret`). An edge that already had its own
``state_dir/access-sealing.key`` offers that one, so a single edge upgraded in place keeps its
cookies; the file is also written (mode 0600) when missing. Because of this the database holds
everything needed to forge a cookie, as it already holds the signing keys: protect it (and its
backups) like a key file.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import NoReturn

import trio

from edge.access.audit import AuditTrail, PendingDecision
from edge.access.catalog import AccessCatalog, CatalogApp, build_catalog
from edge.access.errors import TokenInvalid
from edge.access.identity import Identity
from edge.access.idp import HttpClientFactory, default_http_client
from edge.access.idp.otp import CodeSender, OtpIssuer
from edge.access.keys_service import (
    KeyRingHolder,
    KeySettings,
    ensure_signing_key,
    load_keyring,
    rotation_task,
)
from edge.access.providers import Provider, build_provider
from edge.access.sealing import Sealer
from edge.access.session_sync import SessionSync
from edge.access.sessions import AppSession, GlobalSession
from edge.access.stream_guards import StreamGuards
from edge.access.tokens import KeyRing, TokenMinter, TokenVerifier
from edge.admin.api import ChangeEvent, ChangeKind
from edge.config import EdgeConfig
from edge.forwarding import normalise_header_name
from edge.store import Store
from edge.store.access_records import (
    DEFAULT_COOKIE_NAME,
    DEFAULT_EMAIL_HEADER,
    DEFAULT_HEADER_NAME,
    IdpRecord,
)

__all__ = [
    "DEFAULT_PREFIX",
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "AccessRuntime",
    "AccessSettings",
    "VerifiedToken",
    "normalise_cookie_name",
    "settings_from_config",
    "shared_sealing_secret",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
RandomBytes = Callable[[int], bytes]

DEFAULT_PREFIX = "/cdn-cgi/access"
SESSION_COOKIE = "CF_AccessSession"
LOGIN_COOKIE = "CF_AccessLogin"
SEALING_KEY_FILE = "access-sealing.key"
SEALING_SECRET_NAME = "access-sealing"
_SEALING_SECRET_BYTES = 32

# Client headers that claim an identity somewhere in the gateway world. They are removed from
# every request (after name normalisation) whether or not the host has an application, so no
# origin ever sees one the edge did not write itself.
SPOOFABLE_IDENTITY_HEADERS: frozenset[bytes] = frozenset(
    normalise_header_name(name)
    for name in (
        DEFAULT_HEADER_NAME.encode(),
        DEFAULT_EMAIL_HEADER.encode(),
        b"Cf-Access-Authenticated-User-Id",
        b"Cf-Access-Client-Id",
        b"Cf-Access-Client-Secret",
        b"Cf-Access-Token",
        b"X-Forwarded-Email",
        b"X-Forwarded-User",
        b"X-Forwarded-Preferred-Username",
        b"X-Forwarded-Groups",
        b"X-Forwarded-Access-Token",
        b"X-Auth-Request-User",
        b"X-Auth-Request-Email",
        b"X-Auth-Request-Groups",
        b"X-Auth-Request-Access-Token",
        b"X-Remote-User",
        b"X-Remote-Email",
        b"Remote-User",
        b"Remote-Email",
        b"Remote-Groups",
        b"Remote-Name",
    )
)


def settings_from_config(config: EdgeConfig) -> AccessSettings:
    """Access settings of an edge config: tokens are issued for ``https`` unless the edge
    serves only plain HTTP (a loopback demo)."""
    serves_tls = bool(config.listen.public_tls and config.tls.certificates)
    return AccessSettings(
        auth_domain=config.access.auth_domain,
        issuer_scheme="https" if serves_tls or not config.listen.public else "http",
    )


def normalise_cookie_name(name: str) -> str:
    """Lower case, with ``-``, ``.`` and spaces read as ``_``.

    PHP turns ``.`` and spaces in cookie names into ``_`` and some frameworks compare names
    without case, so a cookie of ours must be recognised under every spelling an origin might
    fold into the same name.
    """
    return name.strip().lower().replace("-", "_").replace(".", "_").replace(" ", "_")


@dataclass(frozen=True)
class AccessSettings:
    """How Access behaves on this edge.

    ``auth_domain`` is ``host`` or ``host:port``; ``issuer_scheme`` is the scheme of the
    token issuer URL (``https`` unless the edge only serves plain HTTP).
    ``global_session_duration`` bounds every login; ``recheck_interval`` is how often open
    WebSocket streams are checked against their session when nothing else wakes them.
    """

    auth_domain: str = ""
    prefix: str = DEFAULT_PREFIX
    issuer_scheme: str = "https"
    global_session_duration: float = 24 * 3600.0
    recheck_interval: float = 5.0
    housekeeping_interval: float = 60.0
    audit_queue_size: int = 10_000
    session_queue_size: int = 10_000
    verified_cache_size: int = 10_000
    key_settings: KeySettings = field(default_factory=KeySettings)

    @property
    def auth_host(self) -> str:
        """The auth domain without its port: what ``Host`` canonicalisation yields."""
        return self.auth_domain.rpartition(":")[0] if ":" in self.auth_domain else self.auth_domain

    @property
    def issuer(self) -> str:
        return f"{self.issuer_scheme}://{self.auth_domain}" if self.auth_domain else ""


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """An app token whose signature was checked once; expiry is checked again on every use.

    ``identity`` is what a tunnel head carries of it (``head_identity``), made once per token
    and shared by every request that presents it: read it, never change it."""

    claims: Mapping[str, object]
    audiences: frozenset[str]
    expires_at: float
    nonce: str
    identity: dict[str, object]


TOKEN_MECHANICS = frozenset({"iss", "aud", "iat", "nbf", "exp", "identity_nonce"})
"""Claims about the token rather than the person; the origin reads them in the assertion."""


def head_identity(claims: Mapping[str, object]) -> dict[str, object]:
    """The identity a tunnel head carries: who (``sub``, ``email``, ``groups``, ``idp``,
    ``type``, and ``common_name`` or ``country`` when the token has them), not the token's
    own mechanics (issuer, audience, times, nonce), which the assertion header carries."""
    return {name: value for name, value in claims.items() if name not in TOKEN_MECHANICS}


def shared_sealing_secret(
    store: Store, state_dir: Path, random_bytes: RandomBytes = secrets.token_bytes
) -> bytes:
    """The sealing secret of every edge of ``store``, made by the first edge that asks.

    That edge offers its ``state_dir/access-sealing.key`` when it has one (a store that had a
    single edge keeps its cookies), otherwise fresh random bytes. Blocking: call from a thread.
    """
    path = state_dir / SEALING_KEY_FILE
    local = _read_sealing_secret(path) if path.exists() else None
    candidate = local if local is not None else random_bytes(_SEALING_SECRET_BYTES)
    secret = store.shared_secret(SEALING_SECRET_NAME, candidate)
    if len(secret) < _SEALING_SECRET_BYTES:
        raise ValueError("the store's access sealing secret is shorter than 32 bytes")
    if local is None:
        _write_sealing_secret(path, secret)
    elif not hmac.compare_digest(local, secret):
        log.warning(
            "%s differs from the sealing secret this store's edges share; cookies sealed with "
            "the file no longer open and their holders sign in again",
            path,
        )
    return secret


def _write_sealing_secret(path: Path, secret: bytes) -> None:
    """A local copy, mode 0600, for an edge that rolls back to reading only the file."""
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(descriptor, "w", encoding="ascii") as handle:
        handle.write(secret.hex() + "\n")


def _read_sealing_secret(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    if path.stat().st_mode & 0o077:
        log.warning("%s is readable by other users; it should have mode 0600", path)
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{path}: expected a hex-encoded secret") from None
    if len(secret) < _SEALING_SECRET_BYTES:
        raise ValueError(f"{path}: the secret must have at least 32 bytes")
    return secret


class AccessRuntime:
    """Keys, sessions, identity providers and the catalog of one edge; see the module doc."""

    def __init__(
        self,
        store: Store,
        settings: AccessSettings,
        *,
        keyring: KeyRing,
        sealing_secret: bytes,
        catalog: AccessCatalog,
        clock: Clock = time.time,
        random_bytes: RandomBytes = secrets.token_bytes,
        http_client: HttpClientFactory = default_http_client,
        code_sender: CodeSender | None = None,
        count_decision: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        self._count_decision = count_decision
        self.settings = settings
        self.clock = clock
        self.random_bytes = random_bytes
        self._http_client = http_client
        self._code_sender = code_sender
        self.sealer = Sealer(sealing_secret, clock=clock, random_bytes=random_bytes)
        self._csrf_key = hmac.new(sealing_secret, b"tunnelgate csrf v1", hashlib.sha256).digest()
        self.session_sync = SessionSync(
            store,
            self.sealer,
            clock=clock,
            random_bytes=random_bytes,
            queue_size=settings.session_queue_size,
            forget_session=self._forget_session,
            is_revoked=self._revoked_before_login,
        )
        self.sessions = self.session_sync.sessions
        self.audit = AuditTrail(store, queue_size=settings.audit_queue_size)
        self.keys = KeyRingHolder(keyring)
        self._use_keyring(keyring)
        self.catalog = catalog
        self.providers: dict[str, Provider] = {}
        self.provider_errors: dict[str, str] = {}
        self._provider_records: dict[str, IdpRecord] = {}
        self._changed = trio.Event()
        self.stream_guards = StreamGuards(self.changed, settings.recheck_interval)
        self._derive_strip_lists()

    # -- start-up ------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        store: Store,
        settings: AccessSettings,
        *,
        state_dir: Path,
        clock: Clock = time.time,
        random_bytes: RandomBytes = secrets.token_bytes,
        http_client: HttpClientFactory = default_http_client,
        code_sender: CodeSender | None = None,
        count_decision: Callable[[str, str], None] | None = None,
    ) -> AccessRuntime:
        """Load keys (making the first one if needed), the catalog and the stored sessions.

        ``code_sender`` replaces every one-time PIN IdP's configured delivery (tests);
        ``count_decision(action, reason)`` is told every decision (the edge's metrics).
        """

        def load() -> tuple[KeyRing, bytes, AccessCatalog]:
            ring, _created = ensure_signing_key(
                store, now=clock(), settings=settings.key_settings
            )
            secret = shared_sealing_secret(store, state_dir, random_bytes)
            catalog = build_catalog(store, auth_domain=settings.auth_domain, now=clock())
            return ring, secret, catalog

        ring, secret, catalog = await trio.to_thread.run_sync(load)
        runtime = cls(
            store,
            settings,
            keyring=ring,
            sealing_secret=secret,
            catalog=catalog,
            clock=clock,
            random_bytes=random_bytes,
            http_client=http_client,
            code_sender=code_sender,
            count_decision=count_decision,
        )
        await runtime._rebuild_providers()
        records = await trio.to_thread.run_sync(store.live_sessions, clock())
        runtime.session_sync.restore(records)
        return runtime

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Background work: audit and session writes, housekeeping, key rotation."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.audit.run)
            nursery.start_soon(self.session_sync.persist)
            nursery.start_soon(self._housekeeping)
            nursery.start_soon(self.stream_guards.run)
            await nursery.start(
                partial(
                    rotation_task,
                    self.store,
                    self.keys,
                    self.clock,
                    settings=self.settings.key_settings,
                    on_rotated=self._keyring_rotated,
                )
            )
            task_status.started()

    # -- change notifications ------------------------------------------------------------

    async def on_change(self, event: ChangeEvent) -> None:
        """Rebuild what an admin change affects; called by the server after every change."""
        kind = event.kind
        if kind == ChangeKind.KEYS_ROTATED:
            ring = await trio.to_thread.run_sync(
                load_keyring, self.store, self.settings.key_settings
            )
            self._keyring_rotated(ring)
            return
        if kind in (ChangeKind.SESSION_SAVED, ChangeKind.SESSION_DELETED):
            if await self.session_sync.changed_elsewhere(kind, event.name or ""):
                self.notify_streams()
            return
        if kind == ChangeKind.SESSIONS_REVOKED:
            if event.email:
                ended = self.sessions.revoke_email(event.email)
                log.info("revoked %d in-memory sessions by e-mail", ended)
            if event.aud:
                self.sessions.revoke_app(event.aud)
        if kind in (
            ChangeKind.APP_CHANGED,
            ChangeKind.IDP_CHANGED,
            ChangeKind.SERVICE_TOKEN_CHANGED,
            ChangeKind.SESSIONS_REVOKED,
        ):
            await self.reload_catalog()
            if kind == ChangeKind.IDP_CHANGED:
                await self._rebuild_providers()

    async def reload_catalog(self) -> None:
        self.catalog = await trio.to_thread.run_sync(
            lambda: build_catalog(
                self.store, auth_domain=self.settings.auth_domain, now=self.clock()
            )
        )
        self._derive_strip_lists()
        self.notify_streams()

    def allows_encoded_slash(self, host: str) -> bool:
        """Whether an application on ``host`` opted in to ``%2F`` and ``%5C`` in paths."""
        return host in self.catalog.encoded_slash_hosts

    def changed(self) -> trio.Event:
        """An event set at the next change that can end sessions (revocation, logout, policy)."""
        return self._changed

    def notify_streams(self) -> None:
        """Wake every open stream's watcher so it re-checks its session now."""
        self._changed.set()
        self._changed = trio.Event()

    def _derive_strip_lists(self) -> None:
        catalog = self.catalog
        headers = set(SPOOFABLE_IDENTITY_HEADERS)
        cookies = {normalise_cookie_name(name) for name in (SESSION_COOKIE, LOGIN_COOKIE)}
        cookies.add(normalise_cookie_name(DEFAULT_COOKIE_NAME))
        for app in catalog.apps:
            headers.add(normalise_header_name(app.spec.header_name.encode("ascii")))
            headers.add(normalise_header_name(app.spec.email_header_name.encode("ascii")))
            cookies.add(normalise_cookie_name(app.spec.cookie_name))
        self.strip_headers: frozenset[bytes] = frozenset(headers)
        self.strip_cookies: frozenset[str] = frozenset(cookies)

    # -- keys and tokens -----------------------------------------------------------------

    def _use_keyring(self, ring: KeyRing) -> None:
        issuer = self.settings.issuer
        self.minter = TokenMinter(ring, issuer=issuer, clock=self.clock)
        self.verifier = TokenVerifier(ring, issuer=issuer, clock=self.clock)
        self._verified: dict[str, VerifiedToken] = {}

    def _keyring_rotated(self, ring: KeyRing) -> None:
        self.keys.replace(ring)
        self._use_keyring(ring)
        log.info("access now signs with key %s", ring.active.kid)

    def verify_app_token(self, token: str, aud: str) -> VerifiedToken | None:
        """The verified app token for ``aud``, or None; signatures are checked once per token."""
        entry = self._verified.get(token)
        if entry is None:
            try:
                claims = self.verifier.verify(token, aud, token_type="app")
            except TokenInvalid as refused:
                log.debug("app token refused: %s", refused.reason)
                return None
            nonce, raw_aud, expires = (claims.get(k) for k in ("identity_nonce", "aud", "exp"))
            if isinstance(raw_aud, str):
                raw_aud = [raw_aud]
            if (
                not isinstance(nonce, str)
                or not isinstance(expires, int | float)
                or not isinstance(raw_aud, list)
            ):
                return None
            audiences = frozenset(item for item in raw_aud if isinstance(item, str))
            entry = VerifiedToken(claims, audiences, float(expires), nonce, head_identity(claims))
            if len(self._verified) >= self.settings.verified_cache_size:
                del self._verified[next(iter(self._verified))]
            self._verified[token] = entry
        if aud not in entry.audiences or self.clock() >= entry.expires_at:
            return None
        return entry

    def app_session_for_token(
        self, session: GlobalSession, aud: str, verified: VerifiedToken
    ) -> AppSession | None:
        """The app session a verified app token of ``session`` stands for: the one this edge
        holds, or one adopted until the token expires when another edge issued it."""
        held = self.sessions.check_app_session(session.id, aud)
        if held is not None:
            return held
        return self.sessions.adopt_app_session(session.id, aud, expires_at=verified.expires_at)

    def app_token(self, session: GlobalSession, app: CatalogApp, app_session: AppSession) -> str:
        """The app token of a session for one app: cached per session and app, not per request."""
        return self.minter.mint(
            session.identity,
            session_id=session.id,
            identity_nonce=session.nonce,
            aud=app.aud,
            lifetime=float(app.spec.session_duration),
            session_expires_at=app_session.expires_at,
        )

    def service_token_jwt(self, identity: Identity, client_id: str, app: CatalogApp,
                          expires_at: float) -> str:
        """The app token of a service token (cached per token and app)."""
        return self.minter.mint(
            identity,
            session_id=f"service-token {client_id}",
            identity_nonce=f"service-token-{identity.service_token}",
            aud=app.aud,
            lifetime=float(app.spec.session_duration),
            session_expires_at=expires_at,
        )

    def csrf_token(self, binding: str) -> str:
        """A form token bound to ``binding`` (the browser's login-state cookie)."""
        mac = hmac.new(self._csrf_key, binding.encode("utf-8"), hashlib.sha256).hexdigest()
        return mac

    def csrf_valid(self, binding: str | None, token: str | None) -> bool:
        if not binding or not token:
            return False
        return hmac.compare_digest(self.csrf_token(binding).encode(), token.encode("utf-8"))

    # -- sessions ------------------------------------------------------------------------

    def end_session(self, session: GlobalSession) -> None:
        """Logout: the session ends on every app at once, and open streams hear of it."""
        self.sessions.logout(session.id)
        self.notify_streams()

    async def sessions_stored(self) -> None:
        """Until every session change so far has reached the store (or failed to)."""
        await self.session_sync.stored()

    def _forget_session(self, session_id: str) -> None:
        self.minter.forget_session(session_id)

    def _revoked_before_login(self, session: GlobalSession) -> bool:
        return self.catalog.is_revoked(
            email=session.identity.email, aud=None, created_at=session.created_at
        )

    async def _housekeeping(self) -> NoReturn:
        while True:
            await trio.sleep(self.settings.housekeeping_interval)
            dropped = self.sessions.purge_expired()
            for provider in self.providers.values():
                if isinstance(provider, OtpIssuer):
                    dropped += provider.purge_expired()
            if len(self._verified) > self.settings.verified_cache_size // 2:
                now = self.clock()
                for token in [t for t, v in self._verified.items() if v.expires_at <= now]:
                    del self._verified[token]
            try:
                await trio.to_thread.run_sync(self.store.purge_expired_sessions, self.clock())
            except Exception:
                log.exception("could not purge expired sessions from the store")
            if dropped:
                log.debug("housekeeping dropped %d expired entries", dropped)

    def audit_decision(
        self,
        app: CatalogApp,
        *,
        client_ip: str,
        action: str,
        reason: str,
        policy: str | None,
        identity: Identity | None,
        host: str | None = None,
        path: str | None = None,
        **context: str,
    ) -> None:
        """Count one decision into the audit trail (and the metrics); never waits."""
        if self._count_decision is not None:
            self._count_decision(action, reason)
        email = identity.email if identity is not None and identity.email else None
        token = identity.service_token if identity is not None else None
        now = self.clock()
        key = (app.name, client_ip, action, reason, policy, email, token, host, path)
        if self.audit.count_again(key, now):
            return
        if host is not None:
            context["host"] = host
        if path is not None:
            context["path"] = path
        self.audit.record(
            PendingDecision(now, app.name, client_ip, action, reason, policy, email, token,
                            context),
            key,
        )

    # -- identity providers --------------------------------------------------------------

    async def _rebuild_providers(self) -> None:
        """Build providers whose configuration changed; unchanged ones keep their state."""
        records = {record.name: record for record in self.catalog.idps}
        providers: dict[str, Provider] = {}
        errors: dict[str, str] = {}
        for name, record in records.items():
            existing = self.providers.get(name)
            if existing is not None and self._provider_records.get(name) == record:
                providers[name] = existing
                continue
            try:
                providers[name] = await trio.to_thread.run_sync(
                    partial(
                        build_provider,
                        record,
                        clock=self.clock,
                        random_bytes=self.random_bytes,
                        http_client=self._http_client,
                        code_sender=self._code_sender,
                    )
                )
            except (OSError, ValueError) as error:
                errors[name] = f"{type(error).__name__}: {error}"
                log.error("identity provider %s cannot be used: %s", name, errors[name])
        self.providers = providers
        self.provider_errors = errors
        self._provider_records = records
