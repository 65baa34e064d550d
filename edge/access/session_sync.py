"""Global sessions mirrored to the store, and followed when another edge changes them.

The request path only ever reads the in-memory :class:`~edge.access.sessions.SessionManager`;
this module is what keeps that memory and the store in step, and it lives apart from
:mod:`edge.access.runtime` because it is the one place that knows how a session looks at rest:

* every local change reaches the store through a bounded queue drained by
  :meth:`SessionSync.persist` (a full queue drops the write with a warning rather than make a
  request wait);
* the store keeps a session under the hash of its id; the id itself, the nonce and the IdP only
  travel sealed (the *stored handle*), so reading the database does not yield a cookie;
* another edge's ``session_saved`` / ``session_deleted`` notice imports that one session (read
  in a worker thread) or drops it; this edge's own writes come back too and change nothing;
* at start-up the live stored sessions are restored, minus those that are revoked, unsealable
  or whose handle names another session.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, NoReturn

import trio

from edge.access.sealing import SealedValueInvalid, Sealer
from edge.access.sessions import (
    GlobalSession,
    SessionManager,
    identity_from_record,
    identity_to_record,
)
from edge.admin.api import ChangeKind
from edge.store import Store
from edge.store.access_records import SessionRecord, session_id_hash

__all__ = ["SessionSync"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
RandomBytes = Callable[[int], bytes]
SessionChange = tuple[str, SessionRecord | None]
RevocationCheck = Callable[[GlobalSession], bool]
"""``is_revoked(session)``: whether a revocation made after the session's login covers it."""

_STORED_SESSION_PURPOSE = "stored-session"


class SessionSync:
    """The session manager of one edge together with its mirror in the store.

    ``forget_session(session_id)`` is called whenever a session ends here, so cached tokens
    naming it go too; ``is_revoked`` is asked before a stored session is taken in.
    """

    def __init__(
        self,
        store: Store,
        sealer: Sealer,
        *,
        clock: Clock,
        random_bytes: RandomBytes,
        queue_size: int,
        forget_session: Callable[[str], None],
        is_revoked: RevocationCheck,
    ) -> None:
        self.store = store
        self.sealer = sealer
        self.clock = clock
        self._forget_session = forget_session
        self._is_revoked = is_revoked
        self._send, self._receive = trio.open_memory_channel[SessionChange](queue_size)
        self._unwritten = 0
        self._written = trio.Event()
        self._written.set()
        self._ids_by_hash: dict[str, str] = {}
        self.sessions = SessionManager(
            clock, random_bytes, sealer=sealer, on_change=self._changed_here
        )

    def _changed_here(self, kind: str, key: str, record: dict[str, Any] | None) -> None:
        if kind != "session":
            return
        id_hash = session_id_hash(key)
        if record is None:
            self._forget_session(key)
            self._ids_by_hash.pop(id_hash, None)
            change: SessionChange = (id_hash, None)
        else:
            self._ids_by_hash[id_hash] = key
            change = (id_hash, self._stored_session(record))
        try:
            self._send.send_nowait(change)
        except trio.WouldBlock:
            log.warning("session queue full; a session change was not stored")
            return
        if self._unwritten == 0:
            self._written = trio.Event()
        self._unwritten += 1

    async def stored(self) -> None:
        """Until every session change so far has reached the store (or failed to)."""
        await self._written.wait()

    def _stored_session(self, record: Mapping[str, Any]) -> SessionRecord:
        session = GlobalSession.from_record(record)
        lifetime = max(session.expires_at - self.clock(), 1.0)
        handle = self.sealer.seal(
            _STORED_SESSION_PURPOSE,
            {"sid": session.id, "nonce": session.nonce, "idp": session.idp},
            lifetime=lifetime,
        )
        return SessionRecord(
            id_hash=session_id_hash(session.id),
            email=session.identity.email,
            identity={**identity_to_record(session.identity), "handle": handle},
            created_at=session.created_at,
            expires_at=session.expires_at,
        )

    def _session_from_stored(self, record: SessionRecord) -> GlobalSession | None:
        """The live session a stored record holds, or None when it cannot or must not be used
        (revoked, unsealable, a handle that names another session)."""
        if record.revoked:
            return None
        identity = dict(record.identity)
        handle = identity.pop("handle", None)
        if not isinstance(handle, str):
            return None
        try:
            opened = self.sealer.open(_STORED_SESSION_PURPOSE, handle)
            session = GlobalSession(
                id=str(opened["sid"]),
                identity=identity_from_record(identity),
                created_at=record.created_at,
                expires_at=record.expires_at,
                nonce=str(opened["nonce"]),
                idp=str(opened["idp"]),
            )
        except (SealedValueInvalid, KeyError, TypeError, ValueError):
            return None
        if session_id_hash(session.id) != record.id_hash:
            return None
        if self._is_revoked(session):
            return None
        return session

    async def changed_elsewhere(self, kind: ChangeKind, id_hash: str) -> bool:
        """Follow another edge's login or logout; True when a session held here ended.

        This edge's own writes come back too, and change nothing because the session is
        already held (or already gone).
        """
        if not id_hash:
            return False
        if kind == ChangeKind.SESSION_SAVED:
            if id_hash in self._ids_by_hash:
                return False
            record = await trio.to_thread.run_sync(self.store.session_record, id_hash)
            session = None if record is None else self._session_from_stored(record)
            if session is not None and self.sessions.import_session(session):
                self._ids_by_hash[id_hash] = session.id
            return False
        session_id = self._ids_by_hash.pop(id_hash, None)
        if session_id is not None and self.sessions.drop_session(session_id):
            self._forget_session(session_id)
            return True
        return False

    def restore(self, records: list[SessionRecord]) -> None:
        """Take in the sessions the store held at start-up (the usable ones)."""
        restored: list[dict[str, Any]] = []
        for record in records:
            session = self._session_from_stored(record)
            if session is None:
                continue
            self._ids_by_hash[record.id_hash] = session.id
            restored.append(session.to_record())
        self.sessions.import_state(
            {
                "version": 1,
                "sessions": restored,
                "app_sessions": [],
                "app_epochs": {},
                "login_states": {},
                "handoffs": {},
            }
        )
        if restored:
            log.info("restored %d access sessions from the store", len(restored))

    async def persist(self) -> NoReturn:
        """Write queued session changes to the store, one at a time, in a worker thread."""
        while True:
            id_hash, record = await self._receive.receive()
            try:
                if record is None:
                    await trio.to_thread.run_sync(self.store.delete_session, id_hash)
                else:
                    await trio.to_thread.run_sync(self.store.save_session, record)
            except Exception:
                log.exception("could not store a session change")
            self._unwritten -= 1
            if self._unwritten == 0:
                self._written.set()
