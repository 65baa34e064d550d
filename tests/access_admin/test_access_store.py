"""The Access tables of the SQLite store: each table, its validation and its secrets."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from store_pg.backends import (
    backend_store,  # noqa: F401  (`store` runs on both backends)
    persisted_bytes,
)

from edge.store import Conflict, InvalidInput, NotFound, StoreError
from edge.store.access_records import (
    DecisionRecord,
    SessionRecord,
    parse_app_spec,
    parse_idp,
    parse_policy_list,
    session_id_hash,
)
from edge.store.schema_pg import PG_MIGRATIONS
from edge.store.sqlite import MIGRATIONS, SqliteStore

from .conftest import START, engineers_policy, grafana_app, oidc_idp, otp_idp


def add_corp(store: SqliteStore) -> None:
    store.create_idp(parse_idp(oidc_idp()))


# -- schema ------------------------------------------------------------------------------------


def test_a_store_made_by_the_first_schema_migrates_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
        " applied_at TEXT NOT NULL)"
    )
    for statement in MIGRATIONS[0].statements:
        conn.execute(statement)
    conn.execute("INSERT INTO schema_migrations VALUES (1, 'first', '2030-01-01T00:00:00+00:00')")
    conn.execute(
        "INSERT INTO audit_log (time, kind, detail) VALUES "
        "('2030-01-01T00:00:00+00:00', 'tunnel.created', '{\"name\": \"home\"}')"
    )
    conn.commit()
    conn.close()
    with SqliteStore(path, apply_migrations=False) as store:
        assert store.schema_version() == 1
        assert store.migrate() == [m.version for m in MIGRATIONS if m.version > 1]
        assert store.schema_version() == MIGRATIONS[-1].version
        (old,) = store.audit_events()
        assert (old.kind, old.app, old.subject) == ("tunnel.created", None, None)
        add_corp(store)
        assert store.list_idps()[0].name == "corp"


def test_migrations_stay_append_only_with_increasing_versions() -> None:
    versions = [migration.version for migration in MIGRATIONS]
    assert versions == sorted(set(versions))
    assert versions[0] == 1
    # A number SQLite skips is a PostgreSQL-only migration (the numbers mean the same tables).
    postgres_only = {m.version for m in PG_MIGRATIONS} - set(versions)
    assert set(range(1, versions[-1] + 1)) - set(versions) <= postgres_only
    assert "apps" in " ".join(MIGRATIONS[1].statements)


# -- identity providers ------------------------------------------------------------------------


def test_idps_are_created_listed_replaced_and_deleted(store: SqliteStore) -> None:
    created = store.create_idp(parse_idp(oidc_idp()))
    store.create_idp(parse_idp(otp_idp()))
    assert created.settings["scopes"] == ("openid", "email", "profile")
    assert [idp.name for idp in store.list_idps()] == ["corp", "pin"]
    assert store.get_idp("corp").to_input() == created.to_input()
    replaced = store.replace_idp(parse_idp(oidc_idp(groups_claim="roles")))
    assert (
        store.get_idp("corp").settings["groups_claim"]
        == "roles"
        == replaced.settings["groups_claim"]
    )
    store.delete_idp("pin")
    assert [idp.name for idp in store.list_idps()] == ["corp"]


def test_idp_errors_carry_codes(store: SqliteStore) -> None:
    add_corp(store)
    with pytest.raises(Conflict) as exists:
        add_corp(store)
    assert exists.value.code == "idp_exists"
    for call in (
        lambda: store.get_idp("nope"),
        lambda: store.delete_idp("nope"),
        lambda: store.replace_idp(parse_idp(oidc_idp("nope"))),
    ):
        with pytest.raises(NotFound) as missing:
            call()
        assert missing.value.code == "idp_not_found"


def test_an_idp_an_app_lists_cannot_be_deleted(store: SqliteStore) -> None:
    add_corp(store)
    store.create_app(parse_app_spec(grafana_app()))
    with pytest.raises(Conflict) as in_use:
        store.delete_idp("corp")
    assert in_use.value.code == "idp_in_use"
    assert "grafana" in in_use.value.message
    store.delete_app("grafana")
    store.delete_idp("corp")


# -- applications and policies -----------------------------------------------------------------


def test_an_app_gets_a_stable_aud_and_a_canonical_domain(store: SqliteStore) -> None:
    add_corp(store)
    app = store.create_app(parse_app_spec(grafana_app(domain="Grafana.Example.COM./admin/")))
    assert re.fullmatch(r"[0-9a-f]{64}", app.aud)
    assert app.spec.domain == "grafana.example.com/admin"
    assert (app.host, app.path_prefix) == ("grafana.example.com", "/admin")
    assert app.spec.session_duration == 86400
    replaced = store.replace_app("grafana", parse_app_spec(grafana_app(session_duration="8h")))
    assert (replaced.id, replaced.aud) == (app.id, app.aud)
    assert store.get_app("grafana").spec.session_duration == 8 * 3600
    assert store.get_app("grafana").aud == app.aud


def test_the_aud_tag_comes_from_injected_randomness(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "db", random_bytes=lambda n: bytes([7]) * n) as store:
        app = store.create_app(parse_app_spec({"name": "a", "domain": "a.example.com"}))
    assert app.aud == "07" * 32


def test_app_conflicts_and_references(store: SqliteStore) -> None:
    add_corp(store)
    store.create_app(parse_app_spec(grafana_app()))
    with pytest.raises(Conflict) as exists:
        store.create_app(parse_app_spec(grafana_app(domain="other.example.com")))
    assert exists.value.code == "app_exists"
    with pytest.raises(Conflict) as taken:
        store.create_app(parse_app_spec(grafana_app(name="twin")))
    assert taken.value.code == "domain_taken"
    with pytest.raises(InvalidInput) as unknown:
        store.create_app(parse_app_spec(grafana_app(name="x", domain="x.io", idps=["corp", "gh"])))
    assert (unknown.value.code, unknown.value.key_path) == ("unknown_idp", "idps[1]")
    with pytest.raises(InvalidInput) as renamed:
        store.replace_app("grafana", parse_app_spec(grafana_app(name="renamed")))
    assert renamed.value.key_path == "name"
    with pytest.raises(NotFound) as missing:
        store.replace_app("nope", parse_app_spec(grafana_app(name="nope", domain="n.io")))
    assert missing.value.code == "app_not_found"
    # Two prefixes on one host are two applications.
    store.create_app(parse_app_spec(grafana_app(name="admin", domain="grafana.example.com/admin")))
    assert [app.name for app in store.list_apps()] == ["admin", "grafana"]


def test_policies_keep_their_order_and_go_with_their_app(store: SqliteStore) -> None:
    add_corp(store)
    store.create_app(parse_app_spec(grafana_app()))
    policies = parse_policy_list(
        [
            {"name": "office", "action": "bypass", "include": [{"ip": "10.0.0.0/8"}]},
            engineers_policy(),
            {"name": "ci", "action": "service_auth", "include": [{"service_token": "ci"}]},
        ]
    )
    assert store.set_policies("grafana", policies) == policies
    stored = store.get_policies("grafana")
    assert [p.name for p in stored.policies] == ["office", "engineers", "ci"]
    assert (
        stored.policies[1].to_config()
        == parse_policy_list([engineers_policy()]).policies[0].to_config()
    )
    store.set_policies("grafana", parse_policy_list([]))
    assert store.get_policies("grafana").policies == ()
    store.set_policies("grafana", policies)
    store.delete_app("grafana")
    with pytest.raises(NotFound):
        store.get_policies("grafana")
    store.create_app(parse_app_spec(grafana_app()))
    assert store.get_policies("grafana").policies == ()


def test_a_policy_error_names_its_key_path() -> None:
    bad = [engineers_policy(), engineers_policy(name="x", include=[{"email_domain": "a@b"}])]
    with pytest.raises(InvalidInput) as error:
        parse_policy_list(bad)
    assert error.value.code == "invalid_policy"
    assert str(error.value).startswith("policies[1].include[0].email_domain: ")


# -- service tokens ----------------------------------------------------------------------------


def test_service_token_secret_is_shown_once_and_only_its_hash_is_stored(
    store: SqliteStore, tmp_path: Path
) -> None:
    token, secret = store.create_service_token("ci", duration=3600)
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    assert re.fullmatch(r"[0-9a-f]{32}\.access", token.client_id)
    assert token.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert token.expires_at - token.created_at == timedelta(hours=1)
    assert store.list_service_tokens() == [token]
    state = persisted_bytes(store)
    assert secret.encode() not in state
    assert token.client_id.encode() in state


def test_service_token_errors(store: SqliteStore) -> None:
    store.create_service_token("ci", duration="8760h")
    with pytest.raises(Conflict) as exists:
        store.create_service_token("ci", duration=3600)
    assert exists.value.code == "service_token_exists"
    with pytest.raises(InvalidInput) as short:
        store.create_service_token("brief", duration="10s")
    assert short.value.code == "invalid_duration"
    with pytest.raises(InvalidInput) as named:
        store.create_service_token("no spaces", duration=3600)
    assert named.value.code == "invalid_name"
    assert store.delete_service_token("ci").name == "ci"
    with pytest.raises(NotFound) as missing:
        store.delete_service_token("ci")
    assert missing.value.code == "service_token_not_found"


# -- signing keys ------------------------------------------------------------------------------


def key_record(kid: str, created_at: float, not_after: float | None = None) -> dict[str, object]:
    return {
        "kid": kid,
        "algorithm": "RS256",
        "private_key_pem": f"pem-{kid}",
        "certificate_pem": f"cert-{kid}",
        "created_at": created_at,
        "not_after": not_after,
    }


def test_signing_keys_change_in_one_read_modify_write(store: SqliteStore) -> None:
    seen: list[list[dict[str, object]]] = []

    def add(kid: str, at: float):  # type: ignore[no-untyped-def]
        def change(records: list[dict[str, object]]) -> list[dict[str, object]]:
            seen.append(records)
            return [*records, key_record(kid, at)]

        return change

    store.update_signing_keys(add("a", 1.0))
    stored = store.update_signing_keys(add("b", 2.0))
    assert [r["kid"] for r in stored] == ["a", "b"]
    assert seen[1] == [key_record("a", 1.0)]
    assert store.update_signing_keys(lambda records: None) == stored
    with pytest.raises(InvalidInput) as bad:
        store.update_signing_keys(lambda records: [{**key_record("c", 3.0), "kid": 5}])
    assert bad.value.key_path == "[0].kid"
    assert store.signing_key_records() == stored


# -- sessions and revocations ------------------------------------------------------------------


def session(email: str, created: float, expires: float, key: str) -> SessionRecord:
    return SessionRecord(
        id_hash=session_id_hash(key),
        email=email,
        identity={"email": email, "groups": ["eng"]},
        created_at=created,
        expires_at=expires,
    )


def test_sessions_are_kept_by_hash_and_revoked_by_email(store: SqliteStore, tmp_path: Path) -> None:
    store.save_session(session("Alice@Example.com", 100.0, 1000.0, "session-secret-1"))
    store.save_session(session("alice@example.com", 200.0, 1000.0, "session-secret-2"))
    store.save_session(session("bob@example.com", 100.0, 150.0, "session-secret-3"))
    assert session_id_hash("x") == hashlib.sha256(b"x").hexdigest()
    assert {s.id_hash for s in store.live_sessions(120.0)} == {
        session_id_hash(f"session-secret-{n}") for n in (1, 2, 3)
    }
    assert len(store.live_sessions(160.0)) == 2
    revocation, ended = store.revoke_email_sessions(" ALICE@example.com ")
    assert (revocation.kind, revocation.subject, ended) == ("email", "alice@example.com", 2)
    assert revocation.epoch == pytest.approx(START.timestamp(), abs=60)
    assert store.live_sessions(120.0)[0].email == "bob@example.com"
    assert store.purge_expired_sessions(160.0) == 1
    assert store.delete_session(session_id_hash("session-secret-1"))
    assert not store.delete_session(session_id_hash("session-secret-1"))
    state = persisted_bytes(store)
    assert b"session-secret-2" not in state
    with pytest.raises(InvalidInput) as bad:
        store.revoke_email_sessions("not-an-address")
    assert bad.value.code == "invalid_email"


def test_app_revocations_are_keyed_by_aud(store: SqliteStore) -> None:
    add_corp(store)
    app = store.create_app(parse_app_spec(grafana_app()))
    first = store.revoke_app_sessions("grafana")
    second = store.revoke_app_sessions("grafana")
    assert (first.kind, first.subject) == ("app", app.aud)
    assert second.epoch > first.epoch
    assert store.revocations() == [second]
    with pytest.raises(NotFound):
        store.revoke_app_sessions("nope")
    store.delete_app("grafana")
    assert store.revocations() == []


# -- audit log ---------------------------------------------------------------------------------


def test_decisions_and_changes_share_the_audit_log_and_its_filters(store: SqliteStore) -> None:
    add_corp(store)
    store.create_app(parse_app_spec(grafana_app()))
    when = START + timedelta(days=1)
    store.record_decisions(
        [
            DecisionRecord(
                when,
                "grafana",
                "203.0.113.9",
                "allow",
                "allowed_by_policy",
                policy="engineers",
                email="Alice@Example.com",
            ),
            DecisionRecord(
                when,
                "grafana",
                "203.0.113.10",
                "deny",
                "no_policy_matched",
                email="mallory@example.com",
            ),
        ]
    )
    store.record_decision(
        DecisionRecord(
            when,
            "wiki",
            "198.51.100.1",
            "service_auth",
            "service_token",
            policy="ci",
            service_token="ci",
        )
    )
    newest = store.audit_events(1)[0]
    assert newest.kind == "access.decision"
    assert newest.detail["service_token"] == "ci"
    assert newest.time == when
    grafana = store.audit_events(app="grafana")
    assert [event.kind for event in grafana] == [
        "access.decision",
        "access.decision",
        "app.created",
    ]
    alice = store.audit_events(email="ALICE@example.com")
    assert len(alice) == 1
    assert alice[0].detail == {
        "app": "grafana",
        "email": "Alice@Example.com",
        "service_token": None,
        "client_ip": "203.0.113.9",
        "action": "allow",
        "policy": "engineers",
        "reason": "allowed_by_policy",
    }
    assert (
        store.audit_events(app="grafana", email="mallory@example.com")[0].detail["reason"]
        == "no_policy_matched"
    )
    assert store.audit_events(email="ci")[0].app == "wiki"
    assert store.audit_events(app="nothing") == []


# -- batches -----------------------------------------------------------------------------------


def test_a_failing_batch_changes_nothing(store: SqliteStore) -> None:
    def write_everything_then_conflict() -> None:
        with store.batch():
            add_corp(store)
            store.create_app(parse_app_spec(grafana_app()))
            with store.batch():
                store.create_service_token("ci", duration=3600)
            store.create_app(parse_app_spec(grafana_app(name="twin")))

    with pytest.raises(Conflict):
        write_everything_then_conflict()
    assert store.list_idps() == []
    assert store.list_apps() == []
    assert store.list_service_tokens() == []
    with store.batch():
        add_corp(store)
        store.create_app(parse_app_spec(grafana_app()))
    assert [app.name for app in store.list_apps()] == ["grafana"]


def test_a_database_error_inside_a_batch_rolls_back(store: SqliteStore) -> None:
    def write_then_break_a_constraint() -> None:
        with store.batch():
            add_corp(store)
            # Two keys with one kid break the table's primary key inside SQLite itself.
            store.update_signing_keys(lambda records: [key_record("k", 1.0), key_record("k", 2.0)])

    with pytest.raises(StoreError) as error:
        write_then_break_a_constraint()
    assert error.value.code == "store_error"
    assert store.list_idps() == []
    assert store.signing_key_records() == []
