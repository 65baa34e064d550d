"""Sessions, login state and hand-off codes: fixation, replay, expiry, scope and revocation."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edge.access.identity import Identity
from edge.access.sealing import Sealer
from edge.access.sessions import (
    HandoffInvalid,
    LoginStateInvalid,
    SessionError,
    SessionManager,
    pkce_challenge,
)

from .doubles import OTHER_SECRET, SECRET, CountingRandom, SteppedClock

ALICE = Identity(
    sub="alice",
    email="Alice@Corp.com",
    email_verified=True,
    name="Alice",
    groups=("eng",),
    idp="corp",
    amr=("pwd",),
    issued_at=1.0,
)
BOB = Identity(
    sub="bob", email="bob@corp.com", email_verified=True, name="Bob", groups=(), idp="corp"
)
HOUR = 3600.0


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str, dict[str, Any] | None]] = []

    def __call__(self, kind: str, key: str, record: dict[str, Any] | None) -> None:
        self.changes.append((kind, key, record))


@pytest.fixture
def clock() -> SteppedClock:
    return SteppedClock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def make_manager(
    clock: SteppedClock, recorder: Recorder | None = None, **kwargs: Any
) -> SessionManager:
    random = CountingRandom()
    sealer = Sealer(SECRET, clock=clock, random_bytes=random)
    return SessionManager(clock, random, sealer=sealer, on_change=recorder, **kwargs)


@pytest.fixture
def manager(clock: SteppedClock, recorder: Recorder) -> SessionManager:
    return make_manager(clock, recorder)


# --- global sessions --------------------------------------------------------------------------


def test_every_login_gets_a_new_session_id(manager: SessionManager) -> None:
    first = manager.create(ALICE, duration=HOUR)
    second = manager.create(ALICE, duration=HOUR)
    assert first.id != second.id
    assert first.nonce != second.nonce
    assert len(first.id) >= 43
    assert manager.get(first.id) == first
    assert manager.get(second.id) == second
    assert first.idp == "corp"


def test_sessions_expire(manager: SessionManager, clock: SteppedClock) -> None:
    session = manager.create(ALICE, duration=HOUR)
    clock.advance(HOUR - 1)
    assert manager.get(session.id) is not None
    clock.advance(1)
    assert manager.get(session.id) is None
    assert manager.get_by_nonce(session.nonce) is None


def test_session_cookie_round_trip(manager: SessionManager) -> None:
    session = manager.create(ALICE, duration=HOUR)
    value = manager.session_cookie_value(session)
    assert session.id not in value
    assert manager.session_from_cookie(value) == session


@pytest.mark.parametrize(
    "planted",
    ["", None, "attacker-chosen-session-id", "A" * 5000, "%00", "eyJhbGciOiJub25lIn0.e30."],
)
def test_planted_session_cookies_are_ignored(manager: SessionManager, planted: str | None) -> None:
    manager.create(ALICE, duration=HOUR)
    assert manager.session_from_cookie(planted) is None


def test_a_raw_session_id_is_not_a_cookie_value(manager: SessionManager) -> None:
    session = manager.create(ALICE, duration=HOUR)
    assert manager.session_from_cookie(session.id) is None


def test_a_cookie_from_another_edge_secret_does_not_open(clock: SteppedClock) -> None:
    ours = make_manager(clock)
    random = CountingRandom(b"other")
    foreign = SessionManager(
        clock, random, sealer=Sealer(OTHER_SECRET, clock=clock, random_bytes=random)
    )
    session = foreign.create(ALICE, duration=HOUR)
    ours.import_state(foreign.export_state())
    assert ours.get(session.id) is not None
    assert ours.session_from_cookie(foreign.session_cookie_value(session)) is None


def test_logout_ends_the_session_and_its_app_sessions(manager: SessionManager) -> None:
    session = manager.create(ALICE, duration=HOUR)
    manager.open_app_session(session.id, "aud-a", duration=HOUR)
    manager.open_app_session(session.id, "aud-b", duration=HOUR)
    cookie = manager.session_cookie_value(session)
    assert manager.logout(session.id)
    assert manager.get(session.id) is None
    assert manager.session_from_cookie(cookie) is None
    assert manager.check_app_session(session.id, "aud-a") is None
    assert manager.check_app_session(session.id, "aud-b") is None
    assert not manager.logout(session.id)


def test_revoke_by_email_is_case_insensitive_and_spares_others(manager: SessionManager) -> None:
    alice_1 = manager.create(ALICE, duration=HOUR)
    alice_2 = manager.create(ALICE, duration=HOUR)
    bob = manager.create(BOB, duration=HOUR)
    assert manager.revoke_email("alice@corp.COM") == 2
    assert manager.get(alice_1.id) is None
    assert manager.get(alice_2.id) is None
    assert manager.get(bob.id) == bob


def test_revoke_single_session(manager: SessionManager) -> None:
    one, other = manager.create(ALICE, duration=HOUR), manager.create(ALICE, duration=HOUR)
    assert manager.revoke_session(one.id)
    assert manager.get(one.id) is None
    assert manager.get(other.id) is not None
    assert not manager.revoke_session("no-such-session")


# --- app sessions and per-app revocation --------------------------------------------------------


def test_app_sessions_never_outlive_the_global_session(manager: SessionManager) -> None:
    session = manager.create(ALICE, duration=HOUR)
    app = manager.open_app_session(session.id, "aud-a", duration=10 * HOUR)
    assert app.expires_at == session.expires_at
    shorter = manager.open_app_session(session.id, "aud-b", duration=60)
    assert shorter.expires_at == shorter.created_at + 60


def test_app_sessions_expire(manager: SessionManager, clock: SteppedClock) -> None:
    session = manager.create(ALICE, duration=HOUR)
    manager.open_app_session(session.id, "aud-a", duration=60)
    assert manager.check_app_session(session.id, "aud-a") is not None
    clock.advance(60)
    assert manager.check_app_session(session.id, "aud-a") is None


def test_app_sessions_are_bound_to_their_aud(manager: SessionManager) -> None:
    session = manager.create(ALICE, duration=HOUR)
    manager.open_app_session(session.id, "aud-a", duration=HOUR)
    assert manager.check_app_session(session.id, "aud-b") is None


def test_revoking_an_app_invalidates_older_app_sessions_only_there(
    manager: SessionManager, clock: SteppedClock
) -> None:
    session = manager.create(ALICE, duration=HOUR)
    before = manager.open_app_session(session.id, "aud-a", duration=HOUR)
    manager.open_app_session(session.id, "aud-b", duration=HOUR)
    assert before.epoch == 0
    clock.advance(1)
    assert manager.revoke_app("aud-a") == 1
    assert manager.check_app_session(session.id, "aud-a") is None
    assert manager.check_app_session(session.id, "aud-b") is not None
    # The old global session must sign in at the IdP again for this app ...
    assert manager.requires_fresh_login(session, "aud-a")
    with pytest.raises(SessionError) as caught:
        manager.open_app_session(session.id, "aud-a", duration=HOUR)
    assert caught.value.reason == "app_revoked"
    with pytest.raises(SessionError, match="app_revoked"):
        manager.issue_handoff(session.id, "aud-a", "/")
    # ... and a fresh login gets an app session of the new epoch.
    clock.advance(1)
    fresh = manager.create(ALICE, duration=HOUR)
    assert not manager.requires_fresh_login(fresh, "aud-a")
    app = manager.open_app_session(fresh.id, "aud-a", duration=HOUR)
    assert app.epoch == 1
    assert manager.check_app_session(fresh.id, "aud-a") == app


def test_app_session_for_an_ended_session_is_refused(manager: SessionManager) -> None:
    with pytest.raises(SessionError) as caught:
        manager.open_app_session("gone", "aud-a", duration=HOUR)
    assert caught.value.reason == "session_ended"
    assert caught.value.http_status == 401


# --- login state ------------------------------------------------------------------------------


def login_reason(manager: SessionManager, cookie: str | None, state: str | None) -> str:
    with pytest.raises(LoginStateInvalid) as caught:
        manager.consume_login_state(cookie, state)
    assert caught.value.http_status == 400
    return caught.value.reason


def test_login_state_round_trip(manager: SessionManager) -> None:
    login, cookie = manager.begin_login(return_url="/x", app_aud="aud-a", idp="corp")
    assert login.state not in cookie
    assert login.pkce_verifier not in cookie
    assert 43 <= len(login.pkce_verifier) <= 128
    assert login.code_challenge == pkce_challenge(login.pkce_verifier)
    assert manager.consume_login_state(cookie, login.state) == login


def test_login_state_values_are_fresh(manager: SessionManager) -> None:
    first, _ = manager.begin_login(return_url="/", app_aud=None, idp="corp")
    second, _ = manager.begin_login(return_url="/", app_aud=None, idp="corp")
    assert len({first.state, first.nonce, second.state, second.nonce}) == 4
    assert first.pkce_verifier != second.pkce_verifier


def test_login_state_is_single_use(manager: SessionManager) -> None:
    login, cookie = manager.begin_login(return_url="/", app_aud=None, idp="corp")
    manager.consume_login_state(cookie, login.state)
    assert login_reason(manager, cookie, login.state) == "replayed"


def test_login_state_expires_after_ten_minutes(
    manager: SessionManager, clock: SteppedClock
) -> None:
    login, cookie = manager.begin_login(return_url="/", app_aud=None, idp="corp")
    clock.advance(600)
    assert login_reason(manager, cookie, login.state) == "expired"


def test_missing_and_tampered_cookies(manager: SessionManager) -> None:
    login, cookie = manager.begin_login(return_url="/", app_aud=None, idp="corp")
    assert login_reason(manager, None, login.state) == "missing_cookie"
    assert login_reason(manager, "", login.state) == "missing_cookie"
    assert login_reason(manager, cookie[:-2] + "AA", login.state) == "bad_cookie"
    assert login_reason(manager, "garbage", login.state) == "bad_cookie"


def test_state_mismatch_and_missing_state_burn_the_login(manager: SessionManager) -> None:
    login, cookie = manager.begin_login(return_url="/", app_aud=None, idp="corp")
    assert login_reason(manager, cookie, login.state + "x") == "state_mismatch"
    assert login_reason(manager, cookie, login.state) == "replayed"
    other, other_cookie = manager.begin_login(return_url="/", app_aud=None, idp="corp")
    assert login_reason(manager, other_cookie, None) == "missing_state"
    assert login_reason(manager, other_cookie, other.state) == "replayed"


def test_state_from_another_browser_does_not_match(manager: SessionManager) -> None:
    """An attacker's state (login CSRF) fails against the victim's own login cookie."""
    attacker, _attacker_cookie = manager.begin_login(return_url="/", app_aud=None, idp="corp")
    _victim, victim_cookie = manager.begin_login(return_url="/", app_aud=None, idp="corp")
    assert login_reason(manager, victim_cookie, attacker.state) == "state_mismatch"


def test_a_hand_off_code_is_not_a_login_cookie(manager: SessionManager) -> None:
    session = manager.create(ALICE, duration=HOUR)
    code = manager.issue_handoff(session.id, "aud-a", "/")
    assert login_reason(manager, code, "anything") == "bad_cookie"


def test_login_state_unknown_after_restart_without_persistence(clock: SteppedClock) -> None:
    first = make_manager(clock)
    login, cookie = first.begin_login(return_url="/", app_aud=None, idp="corp")
    restarted = make_manager(clock)
    assert login_reason(restarted, cookie, login.state) == "unknown"


def test_pending_logins_are_capped(clock: SteppedClock) -> None:
    manager = make_manager(clock, max_pending=3)
    started = [manager.begin_login(return_url="/", app_aud=None, idp="c") for _ in range(4)]
    oldest, oldest_cookie = started[0]
    assert login_reason(manager, oldest_cookie, oldest.state) == "unknown"
    newest, newest_cookie = started[-1]
    assert manager.consume_login_state(newest_cookie, newest.state) == newest


# --- hand-off codes ---------------------------------------------------------------------------


def handoff_reason(manager: SessionManager, code: str | None, aud: str) -> str:
    with pytest.raises(HandoffInvalid) as caught:
        manager.redeem_handoff(code, aud)
    assert caught.value.http_status == 400
    return caught.value.reason


def test_hand_off_round_trip(manager: SessionManager) -> None:
    session = manager.create(ALICE, duration=HOUR)
    code = manager.issue_handoff(session.id, "aud-a", "https://app.example.com/x")
    assert session.id not in code
    assert manager.redeem_handoff(code, "aud-a") == (session, "https://app.example.com/x")


def test_hand_off_is_single_use(manager: SessionManager) -> None:
    session = manager.create(ALICE, duration=HOUR)
    code = manager.issue_handoff(session.id, "aud-a", "/")
    manager.redeem_handoff(code, "aud-a")
    assert handoff_reason(manager, code, "aud-a") == "replayed"


def test_hand_off_for_app_a_is_refused_on_app_b_and_burnt(manager: SessionManager) -> None:
    session = manager.create(ALICE, duration=HOUR)
    code = manager.issue_handoff(session.id, "aud-a", "/")
    assert handoff_reason(manager, code, "aud-b") == "wrong_app"
    assert handoff_reason(manager, code, "aud-a") == "replayed"


def test_hand_off_lives_sixty_seconds(manager: SessionManager, clock: SteppedClock) -> None:
    session = manager.create(ALICE, duration=HOUR)
    code = manager.issue_handoff(session.id, "aud-a", "/")
    clock.advance(60)
    assert handoff_reason(manager, code, "aud-a") == "expired"


def test_hand_off_of_a_session_that_ended(manager: SessionManager) -> None:
    session = manager.create(ALICE, duration=HOUR)
    code = manager.issue_handoff(session.id, "aud-a", "/")
    manager.logout(session.id)
    assert handoff_reason(manager, code, "aud-a") == "session_ended"
    with pytest.raises(SessionError, match="session_ended"):
        manager.issue_handoff(session.id, "aud-a", "/")


@pytest.mark.parametrize("code", [None, "", "x" * 10_000, "not-a-code", "%2e%2e"])
def test_malformed_hand_off_codes(manager: SessionManager, code: str | None) -> None:
    manager.create(ALICE, duration=HOUR)
    assert handoff_reason(manager, code, "aud-a") in ("missing_code", "bad_code")


def test_a_session_cookie_is_not_a_hand_off_code(manager: SessionManager) -> None:
    session = manager.create(ALICE, duration=HOUR)
    assert handoff_reason(manager, manager.session_cookie_value(session), "aud-a") == "bad_code"


def test_tampered_hand_off_code(manager: SessionManager) -> None:
    session = manager.create(ALICE, duration=HOUR)
    code = manager.issue_handoff(session.id, "aud-a", "/")
    flipped = code[:10] + ("A" if code[10] != "A" else "B") + code[11:]
    assert handoff_reason(manager, flipped, "aud-a") == "bad_code"
    assert manager.redeem_handoff(code, "aud-a")[0] == session


# --- persistence ------------------------------------------------------------------------------


def test_export_import_round_trip_through_json(clock: SteppedClock) -> None:
    random = CountingRandom()
    sealer = Sealer(SECRET, clock=clock, random_bytes=random)
    first = SessionManager(clock, random, sealer=sealer)
    session = first.create(ALICE, duration=HOUR)
    first.open_app_session(session.id, "aud-a", duration=HOUR)
    first.revoke_app("aud-z")
    login, login_cookie = first.begin_login(return_url="/r", app_aud="aud-a", idp="corp")
    code = first.issue_handoff(session.id, "aud-a", "/back")

    snapshot = json.loads(json.dumps(first.export_state()))
    second = SessionManager(clock, CountingRandom(b"2"), sealer=sealer)
    second.import_state(snapshot)
    assert second.session_from_cookie(first.session_cookie_value(session)) == session
    assert second.get_by_nonce(session.nonce) == session
    assert second.check_app_session(session.id, "aud-a") is not None
    assert second.app_epoch("aud-z") == 1
    assert second.consume_login_state(login_cookie, login.state) == login
    assert second.redeem_handoff(code, "aud-a") == (session, "/back")


def test_import_refuses_unknown_versions(manager: SessionManager) -> None:
    with pytest.raises(ValueError, match="version"):
        manager.import_state({"version": 99})


def test_change_hook_reports_what_a_store_must_mirror(
    manager: SessionManager, recorder: Recorder
) -> None:
    session = manager.create(ALICE, duration=HOUR)
    manager.open_app_session(session.id, "aud-a", duration=HOUR)
    manager.logout(session.id)
    kinds = [(kind, record is not None) for kind, _key, record in recorder.changes]
    assert kinds == [
        ("session", True),
        ("app_session", True),
        ("session", False),
        ("app_session", False),
    ]
    created = recorder.changes[0][2]
    assert created is not None
    assert created["identity"]["groups"] == ["eng"]


def test_purge_drops_expired_entries(manager: SessionManager, clock: SteppedClock) -> None:
    manager.create(ALICE, duration=60)
    manager.begin_login(return_url="/", app_aud=None, idp="corp")
    live = manager.create(BOB, duration=HOUR)
    manager.issue_handoff(live.id, "aud-a", "/")
    clock.advance(600)
    assert manager.purge_expired() == 3
    assert manager.get(live.id) == live
    assert manager.purge_expired() == 0
