"""Who is signed in: global sessions, app sessions, the OAuth login state and hand-off codes.

The global session lives on the auth domain; each application gets an *app session* bound to
its AUD through a one-time hand-off code (DESIGN.md §4). Everything is held in memory so the
request path never waits on a store; a store backend mirrors it through the ``on_change`` hook
and :meth:`SessionManager.export_state` / :meth:`SessionManager.import_state`.

Rules this module keeps:

* **No fixation.** Every login creates a new random session id; nothing a browser sent before
  the login is reused. Cookies carry sealed values (:mod:`edge.access.sealing`), so a planted,
  altered or foreign value simply does not open.
* **Login state** (``state``, ``nonce``, PKCE verifier, return URL) stays on the server, keyed
  by a random id that only travels in a short-lived sealed cookie: the ``state`` parameter is
  bound to the browser that started the login, single use, and expires after 10 minutes.
* **Hand-off codes** are sealed for one app, live 60 s and are single use; a failed attempt
  burns the code too.
* **Revocation:** by session, by e-mail, and per app. Revoking an app bumps its epoch: app
  sessions of an older epoch stop working, and global sessions created before the revocation
  cannot open a new one for that app, so the user signs in at the identity provider again.
* Used login states and hand-off codes are remembered until they would have expired, so a
  replay is reported as such (``replayed``) instead of as an unknown value. These memories are
  per edge and not exported.

Errors::

    AccessError
    └── SessionError          .reason; 401 (session_ended, app_revoked)
        ├── LoginStateInvalid 400: missing_cookie, bad_cookie, expired, missing_state,
        │                     state_mismatch, replayed, unknown
        └── HandoffInvalid    400: missing_code, bad_code, expired, wrong_app, replayed,
                              unknown, session_ended

The session records (:class:`GlobalSession`, :class:`AppSession`, :class:`LoginState`) live in
:mod:`edge.access.session_records` and the cookie helpers (:func:`build_cookie`, always
``HttpOnly; SameSite=Lax``, host-only, ``Secure`` unless a plain-http loopback demo turns it
off; :func:`parse_cookies`) in :mod:`edge.access.cookies`; both are re-exported here.
"""

from __future__ import annotations

import base64
import hmac
import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from edge.access.cookies import (
    build_cookie,
    cookie_values,
    expired_cookie,
    parse_cookies,
)
from edge.access.errors import AccessError
from edge.access.identity import Identity
from edge.access.sealing import SealedValueInvalid, Sealer
from edge.access.session_records import (
    AppSession,
    GlobalSession,
    LoginState,
    identity_from_record,
    identity_to_record,
    pkce_challenge,
)

logger = logging.getLogger(__name__)

__all__ = [
    "HANDOFF_LIFETIME",
    "LOGIN_STATE_LIFETIME",
    "AppSession",
    "GlobalSession",
    "HandoffInvalid",
    "LoginState",
    "LoginStateInvalid",
    "SessionError",
    "SessionManager",
    "build_cookie",
    "cookie_values",
    "expired_cookie",
    "identity_from_record",
    "identity_to_record",
    "parse_cookies",
    "pkce_challenge",
]

Clock = Callable[[], float]
RandomBytes = Callable[[int], bytes]
ChangeHook = Callable[[str, str, dict[str, Any] | None], None]
"""``on_change(kind, key, record)``; ``record`` is None when the entry was removed. Kinds:
``session``, ``app_session`` (key ``session_id aud``), ``app_epoch``, ``login_state``,
``handoff``."""

LOGIN_STATE_LIFETIME = 600.0
HANDOFF_LIFETIME = 60.0
MAX_PENDING = 50_000
_SESSION_PURPOSE = "session"
_LOGIN_PURPOSE = "login-state"
_HANDOFF_PURPOSE = "handoff"
_STATE_VERSION = 1


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _same(left: str, right: str) -> bool:
    return hmac.compare_digest(left.encode("utf-8"), right.encode("utf-8"))


# --- errors -------------------------------------------------------------------------------


class SessionError(AccessError):
    """A session cannot be used for what was asked; ``reason`` is stable and safe to log."""

    http_status = 401

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{type(self).__name__}: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason


class LoginStateInvalid(SessionError):
    """The OAuth callback does not belong to a login this browser started, or came too late."""

    http_status = 400


class HandoffInvalid(SessionError):
    """A hand-off code on ``/authorized`` was refused; the browser must go through login."""

    http_status = 400


# --- records ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Handoff:
    session_id: str
    app_aud: str
    return_url: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class _AppEpoch:
    number: int
    revoked_at: float


# --- the manager --------------------------------------------------------------------------


class SessionManager:
    """All session state of one edge, with injected time and randomness."""

    def __init__(
        self,
        clock: Clock,
        random_bytes: RandomBytes,
        *,
        sealer: Sealer,
        on_change: ChangeHook | None = None,
        login_state_lifetime: float = LOGIN_STATE_LIFETIME,
        handoff_lifetime: float = HANDOFF_LIFETIME,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._clock = clock
        self._random_bytes = random_bytes
        self._sealer = sealer
        self._on_change = on_change
        self._login_state_lifetime = login_state_lifetime
        self._handoff_lifetime = handoff_lifetime
        self._max_pending = max_pending
        self._sessions: dict[str, GlobalSession] = {}
        self._by_nonce: dict[str, str] = {}
        self._app_sessions: dict[tuple[str, str], AppSession] = {}
        self._app_epochs: dict[str, _AppEpoch] = {}
        self._login_states: dict[str, LoginState] = {}
        self._handoffs: dict[str, _Handoff] = {}
        self._used_login_states: dict[str, float] = {}
        self._used_handoffs: dict[str, float] = {}
        self.generation = 0
        """Changes so far: bumped by every change to sessions, app sessions, epochs, login
        states or hand-offs, so a result computed from them can tell it may be stale."""

    def _token(self, size: int = 32) -> str:
        raw = self._random_bytes(size)
        if len(raw) != size:
            raise ValueError("randomness source returned the wrong number of bytes")
        return _b64(raw)

    def _changed(self, kind: str, key: str, record: dict[str, Any] | None) -> None:
        self.generation += 1
        if self._on_change is not None:
            self._on_change(kind, key, record)

    # global sessions

    def create(
        self, identity: Identity, *, duration: float, idp: str | None = None
    ) -> GlobalSession:
        """A brand-new session for a login that just succeeded (never reuses an id)."""
        if duration <= 0:
            raise ValueError("a session needs a positive duration")
        now = self._clock()
        session = GlobalSession(
            id=self._token(),
            identity=identity,
            created_at=now,
            expires_at=now + duration,
            nonce=self._token(16),
            idp=idp or identity.idp,
        )
        self._sessions[session.id] = session
        self._by_nonce[session.nonce] = session.id
        self._changed("session", session.id, session.to_record())
        logger.info("session created: nonce=%s idp=%s", session.nonce, session.idp)
        return session

    def get(self, session_id: str) -> GlobalSession | None:
        """The live session, or None when it is unknown, expired or revoked."""
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if self._clock() >= session.expires_at:
            self._end(session, "expired")
            return None
        return session

    def get_by_nonce(self, nonce: str) -> GlobalSession | None:
        """The live session whose public handle (a token's ``identity_nonce``) is ``nonce``."""
        session_id = self._by_nonce.get(nonce)
        return None if session_id is None else self.get(session_id)

    def session_cookie_value(self, session: GlobalSession) -> str:
        """The sealed value of the auth-domain cookie for ``session``."""
        lifetime = max(session.expires_at - self._clock(), 1.0)
        return self._sealer.seal(_SESSION_PURPOSE, {"sid": session.id}, lifetime=lifetime)

    def session_from_cookie(self, value: str | None) -> GlobalSession | None:
        """The live session a cookie value names; None for anything else, planted or garbage."""
        if not value:
            return None
        try:
            payload = self._sealer.open(_SESSION_PURPOSE, value)
        except SealedValueInvalid:
            return None
        session_id = payload.get("sid")
        return self.get(session_id) if isinstance(session_id, str) else None

    def _end(self, session: GlobalSession, why: str) -> None:
        self._sessions.pop(session.id, None)
        self._by_nonce.pop(session.nonce, None)
        self._changed("session", session.id, None)
        for key in [key for key in self._app_sessions if key[0] == session.id]:
            del self._app_sessions[key]
            self._changed("app_session", " ".join(key), None)
        logger.info("session ended: nonce=%s why=%s", session.nonce, why)

    def import_session(self, session: GlobalSession) -> bool:
        """Hold a session another edge of the store created; False when it is already held
        or has expired. The change hook is not called: the store already has it."""
        if session.id in self._sessions or self._clock() >= session.expires_at:
            return False
        self.generation += 1
        self._sessions[session.id] = session
        self._by_nonce[session.nonce] = session.id
        logger.info("session imported: nonce=%s idp=%s", session.nonce, session.idp)
        return True

    def drop_session(self, session_id: str) -> bool:
        """Forget a session another edge ended (with its app sessions), without calling the
        change hook: the store already knows."""
        session = self._sessions.pop(session_id, None)
        if session is None:
            return False
        self.generation += 1
        self._by_nonce.pop(session.nonce, None)
        for key in [key for key in self._app_sessions if key[0] == session_id]:
            del self._app_sessions[key]
        logger.info("session dropped: nonce=%s", session.nonce)
        return True

    def revoke_session(self, session_id: str, *, why: str = "revoked") -> bool:
        session = self._sessions.get(session_id)
        if session is not None:
            self._end(session, why)
        return session is not None

    def logout(self, session_id: str) -> bool:
        """End a session on every app at once (its app sessions go with it)."""
        return self.revoke_session(session_id, why="logout")

    def revoke_email(self, email: str) -> int:
        """End every session of ``email`` (compared case-insensitively); returns how many."""
        wanted = email.casefold()
        ended = [s for s in self._sessions.values() if s.identity.email.casefold() == wanted]
        for session in ended:
            self._end(session, "revoked by e-mail")
        return len(ended)

    # app sessions

    def app_epoch(self, aud: str) -> int:
        epoch = self._app_epochs.get(aud)
        return 0 if epoch is None else epoch.number

    def requires_fresh_login(self, session: GlobalSession, aud: str) -> bool:
        """Whether ``aud`` was revoked after ``session`` began, so the IdP must be asked again."""
        epoch = self._app_epochs.get(aud)
        return epoch is not None and session.created_at <= epoch.revoked_at

    def revoke_app(self, aud: str) -> int:
        """Invalidate every app session of ``aud``; returns the new epoch."""
        epoch = _AppEpoch(self.app_epoch(aud) + 1, self._clock())
        self._app_epochs[aud] = epoch
        self._changed("app_epoch", aud, asdict(epoch))
        for key in [key for key in self._app_sessions if key[1] == aud]:
            del self._app_sessions[key]
            self._changed("app_session", " ".join(key), None)
        logger.info("app sessions revoked: aud=%s epoch=%d", aud, epoch.number)
        return epoch.number

    def open_app_session(self, session_id: str, aud: str, *, duration: float) -> AppSession:
        """Admit a live global session to app ``aud`` for at most ``duration`` seconds."""
        session = self.get(session_id)
        if session is None:
            raise SessionError("session_ended")
        if self.requires_fresh_login(session, aud):
            raise SessionError("app_revoked")
        now = self._clock()
        app_session = AppSession(
            session_id=session_id,
            aud=aud,
            created_at=now,
            expires_at=min(now + duration, session.expires_at),
            epoch=self.app_epoch(aud),
        )
        self._app_sessions[(session_id, aud)] = app_session
        self._changed("app_session", f"{session_id} {aud}", asdict(app_session))
        return app_session

    def adopt_app_session(
        self, session_id: str, aud: str, *, expires_at: float
    ) -> AppSession | None:
        """Admit a live global session to ``aud`` until ``expires_at`` because it presents an
        app token another edge issued (see :mod:`edge.access.runtime`); None when the session
        is not live, the app was revoked since it began, or the time has passed."""
        session = self.get(session_id)
        if session is None or self.requires_fresh_login(session, aud):
            return None
        now = self._clock()
        if now >= expires_at:
            return None
        app_session = AppSession(
            session_id=session_id,
            aud=aud,
            created_at=now,
            expires_at=min(expires_at, session.expires_at),
            epoch=self.app_epoch(aud),
        )
        self._app_sessions[(session_id, aud)] = app_session
        self._changed("app_session", f"{session_id} {aud}", asdict(app_session))
        return app_session

    def check_app_session(self, session_id: str, aud: str) -> AppSession | None:
        """The app session if it and its global session are still live and current."""
        app_session = self._app_sessions.get((session_id, aud))
        if app_session is None or self.get(session_id) is None:
            return None
        if app_session.epoch != self.app_epoch(aud) or self._clock() >= app_session.expires_at:
            del self._app_sessions[(session_id, aud)]
            self._changed("app_session", f"{session_id} {aud}", None)
            return None
        return app_session

    # login state

    def _make_room(self, pending: dict[str, Any], used: dict[str, float]) -> None:
        now = self._clock()
        for key in [key for key, until in used.items() if until <= now]:
            del used[key]
        if len(pending) >= self._max_pending:
            logger.warning("%d pending logins or hand-offs; dropping the oldest", len(pending))
        while len(pending) >= self._max_pending:
            del pending[next(iter(pending))]
        while len(used) >= self._max_pending:
            del used[next(iter(used))]

    def begin_login(
        self, *, return_url: str, app_aud: str | None, idp: str
    ) -> tuple[LoginState, str]:
        """A fresh login state and the sealed value of the cookie that binds it to the browser.

        ``return_url`` must already have been checked by :func:`edge.access.redirects.
        safe_return_url`.
        """
        self._make_room(self._login_states, self._used_login_states)
        key = self._token()
        login = LoginState(
            state=self._token(),
            nonce=self._token(),
            pkce_verifier=self._token(48),
            return_url=return_url,
            app_aud=app_aud,
            idp=idp,
            created_at=self._clock(),
        )
        self._login_states[key] = login
        self._changed("login_state", key, asdict(login))
        cookie = self._sealer.seal(_LOGIN_PURPOSE, {"id": key}, lifetime=self._login_state_lifetime)
        return login, cookie

    def consume_login_state(self, cookie_value: str | None, state_param: str | None) -> LoginState:
        """The login this callback finishes, used up; LoginStateInvalid says why not."""
        if not cookie_value:
            raise LoginStateInvalid("missing_cookie")
        try:
            payload = self._sealer.open(_LOGIN_PURPOSE, cookie_value)
        except SealedValueInvalid as error:
            raise LoginStateInvalid(
                "expired" if error.reason == "expired" else "bad_cookie"
            ) from None
        key = payload.get("id")
        if not isinstance(key, str):
            raise LoginStateInvalid("bad_cookie")
        if key in self._used_login_states:
            raise LoginStateInvalid("replayed")
        login = self._login_states.pop(key, None)
        if login is None:
            raise LoginStateInvalid("unknown")
        self._used_login_states[key] = login.created_at + self._login_state_lifetime
        self._changed("login_state", key, None)
        if self._clock() >= login.created_at + self._login_state_lifetime:
            raise LoginStateInvalid("expired")
        if not state_param:
            raise LoginStateInvalid("missing_state")
        if not _same(login.state, state_param):
            raise LoginStateInvalid("state_mismatch")
        return login

    # hand-off codes

    def issue_handoff(self, session_id: str, app_aud: str, return_url: str) -> str:
        """A one-time code that lets app ``app_aud`` pick up the session within 60 s."""
        session = self.get(session_id)
        if session is None:
            raise SessionError("session_ended")
        if self.requires_fresh_login(session, app_aud):
            raise SessionError("app_revoked")
        self._make_room(self._handoffs, self._used_handoffs)
        key = self._token()
        handoff = _Handoff(session_id, app_aud, return_url, self._clock() + self._handoff_lifetime)
        self._handoffs[key] = handoff
        self._changed("handoff", key, asdict(handoff))
        return self._sealer.seal(
            _HANDOFF_PURPOSE, {"id": key, "aud": app_aud}, lifetime=self._handoff_lifetime
        )

    def redeem_handoff(self, code: str | None, app_aud: str) -> tuple[GlobalSession, str]:
        """The session and return URL a code carries, for app ``app_aud`` only, once."""
        if not code:
            raise HandoffInvalid("missing_code")
        try:
            payload = self._sealer.open(_HANDOFF_PURPOSE, code)
        except SealedValueInvalid as error:
            raise HandoffInvalid("expired" if error.reason == "expired" else "bad_code") from None
        key, sealed_aud = payload.get("id"), payload.get("aud")
        if not isinstance(key, str) or not isinstance(sealed_aud, str):
            raise HandoffInvalid("bad_code")
        if key in self._used_handoffs:
            raise HandoffInvalid("replayed")
        handoff = self._handoffs.pop(key, None)
        if handoff is None:
            raise HandoffInvalid("unknown")
        self._used_handoffs[key] = handoff.expires_at
        self._changed("handoff", key, None)
        if not (_same(sealed_aud, app_aud) and _same(handoff.app_aud, app_aud)):
            raise HandoffInvalid("wrong_app")
        if self._clock() >= handoff.expires_at:
            raise HandoffInvalid("expired")
        session = self.get(handoff.session_id)
        if session is None:
            raise HandoffInvalid("session_ended")
        return session, handoff.return_url

    # housekeeping and persistence

    def purge_expired(self) -> int:
        """Drop everything that has expired; returns how many entries went."""
        now = self._clock()
        dropped = 0
        for session in [s for s in self._sessions.values() if now >= s.expires_at]:
            self._end(session, "expired")
            dropped += 1
        for key, login in list(self._login_states.items()):
            if now >= login.created_at + self._login_state_lifetime:
                del self._login_states[key]
                self._changed("login_state", key, None)
                dropped += 1
        for key, handoff in list(self._handoffs.items()):
            if now >= handoff.expires_at:
                del self._handoffs[key]
                self._changed("handoff", key, None)
                dropped += 1
        for used in (self._used_login_states, self._used_handoffs):
            for key in [key for key, until in used.items() if until <= now]:
                del used[key]
        return dropped

    def export_state(self) -> dict[str, Any]:
        """A JSON-ready snapshot of everything a store must keep to survive a restart."""
        return {
            "version": _STATE_VERSION,
            "sessions": [session.to_record() for session in self._sessions.values()],
            "app_sessions": [asdict(app) for app in self._app_sessions.values()],
            "app_epochs": {aud: asdict(epoch) for aud, epoch in self._app_epochs.items()},
            "login_states": {key: asdict(login) for key, login in self._login_states.items()},
            "handoffs": {key: asdict(handoff) for key, handoff in self._handoffs.items()},
        }

    def import_state(self, state: Mapping[str, Any]) -> None:
        """Replace all state with a snapshot from :meth:`export_state`."""
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported session state version {state.get('version')!r}")
        self.generation += 1
        sessions = [GlobalSession.from_record(record) for record in state["sessions"]]
        self._sessions = {session.id: session for session in sessions}
        self._by_nonce = {session.nonce: session.id for session in sessions}
        self._app_sessions = {}
        for record in state["app_sessions"]:
            app = AppSession(**record)
            self._app_sessions[(app.session_id, app.aud)] = app
        self._app_epochs = {aud: _AppEpoch(**epoch) for aud, epoch in state["app_epochs"].items()}
        self._login_states = {
            key: LoginState(**login) for key, login in state["login_states"].items()
        }
        self._handoffs = {key: _Handoff(**handoff) for key, handoff in state["handoffs"].items()}
