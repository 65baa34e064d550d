from __future__ import annotations

import sqlite3
import stat
import threading
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from store_pg.backends import backend_store  # noqa: F401  (`store` runs on both backends)

from edge.store import Conflict, InvalidInput, NotFound, StoreError, normalize_hostname
from edge.store.sqlite import MIGRATIONS, SqliteStore
from tunnel.auth import hash_secret

from .conftest import SteppingClock


def test_create_tunnel_returns_a_uuid_id_and_a_secret_stored_only_as_hash(
    store: SqliteStore,
) -> None:
    tunnel, secret = store.create_tunnel("home")
    assert tunnel.name == "home"
    assert str(uuid.UUID(tunnel.id)) == tunnel.id
    assert uuid.UUID(tunnel.id).version == 4
    assert tunnel.created_at.tzinfo is not None
    assert len(secret) >= 43
    assert store.tunnel_secret_hashes() == {tunnel.id: [hash_secret(secret)]}


def test_created_at_comes_from_the_injected_clock(tmp_path: Path) -> None:
    clock = SteppingClock(datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC))
    with SqliteStore(tmp_path / "db", clock=clock) as store:
        tunnel, _ = store.create_tunnel("clocked")
        assert store.get_tunnel("clocked").created_at == tunnel.created_at
        assert tunnel.created_at > datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
        assert tunnel.created_at < datetime(2031, 5, 6, 7, 9, 0, tzinfo=UTC)


def test_randomness_is_injected(tmp_path: Path) -> None:
    secrets = iter(["secret-one", "secret-two"])
    with SqliteStore(
        tmp_path / "db", new_secret=lambda: next(secrets), new_id=lambda: "fixed-id"
    ) as store:
        tunnel, secret = store.create_tunnel("fixed")
        assert (tunnel.id, secret) == ("fixed-id", "secret-one")
        assert store.add_tunnel_credential("fixed-id") == "secret-two"


def test_tunnel_names_are_unique(store: SqliteStore) -> None:
    store.create_tunnel("home")
    with pytest.raises(Conflict) as caught:
        store.create_tunnel("home")
    assert caught.value.code == "tunnel_exists"
    assert caught.value.status == 409


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-lead",
        ".lead",
        "has space",
        "x" * 64,
        "slash/y",
        "ünï",
        "0b8f1c1e-7a53-4f4e-9d59-5f0c8d9f6a10",
    ],
)
def test_invalid_names_are_refused(store: SqliteStore, name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        store.create_tunnel(name)
    assert caught.value.code == "invalid_name"
    assert store.list_tunnels() == []


def test_get_tunnel_by_id_or_name_and_not_found(store: SqliteStore) -> None:
    tunnel, _ = store.create_tunnel("home")
    assert store.get_tunnel(tunnel.id) == store.get_tunnel("home")
    assert store.get_tunnel("home").id == tunnel.id
    with pytest.raises(NotFound) as caught:
        store.get_tunnel("nope")
    assert caught.value.code == "tunnel_not_found"


def test_list_tunnels_sorted_by_name(store: SqliteStore) -> None:
    for name in ["charlie", "alpha", "bravo"]:
        store.create_tunnel(name)
    assert [t.name for t in store.list_tunnels()] == ["alpha", "bravo", "charlie"]


def test_extra_credentials_all_verify_until_the_tunnel_is_deleted(store: SqliteStore) -> None:
    tunnel, first = store.create_tunnel("home")
    second = store.add_tunnel_credential(tunnel.id)
    assert second != first
    assert store.tunnel_secret_hashes()[tunnel.id] == [hash_secret(first), hash_secret(second)]
    with pytest.raises(NotFound):
        store.add_tunnel_credential("no-such-id")


def test_delete_tunnel_removes_routes_and_credentials_and_frees_the_name(
    store: SqliteStore,
) -> None:
    tunnel, _ = store.create_tunnel("home")
    other, _ = store.create_tunnel("other")
    store.add_route(tunnel.id, "a.example.com")
    store.add_route(other.id, "b.example.com")
    store.delete_tunnel(tunnel.id)
    with pytest.raises(NotFound):
        store.get_tunnel(tunnel.id)
    assert [t.name for t in store.list_tunnels()] == ["other"]
    assert [r.hostname for r in store.list_routes()] == ["b.example.com"]
    assert set(store.tunnel_secret_hashes()) == {other.id}
    with pytest.raises(NotFound):
        store.delete_tunnel(tunnel.id)
    with pytest.raises(NotFound):
        store.add_tunnel_credential(tunnel.id)
    reborn, _ = store.create_tunnel("home")
    assert reborn.id != tunnel.id


def test_routes_are_normalised_and_idempotent(store: SqliteStore) -> None:
    tunnel, _ = store.create_tunnel("home")
    route, created = store.add_route(tunnel.id, "App.Example.COM.")
    assert created
    assert (route.hostname, route.tunnel_id, route.tunnel_name) == (
        "app.example.com",
        tunnel.id,
        "home",
    )
    again, created_again = store.add_route(tunnel.id, "app.example.com")
    assert (again, created_again) == (route, False)
    assert store.list_routes() == [route]


def test_a_route_to_another_tunnel_conflicts(store: SqliteStore) -> None:
    first, _ = store.create_tunnel("first")
    second, _ = store.create_tunnel("second")
    store.add_route(first.id, "app.example.com")
    with pytest.raises(Conflict) as caught:
        store.add_route(second.id, "APP.example.com")
    assert caught.value.code == "route_exists"
    assert "first" in caught.value.message
    assert [r.tunnel_id for r in store.list_routes()] == [first.id]


def test_a_route_needs_a_live_tunnel(store: SqliteStore) -> None:
    with pytest.raises(NotFound) as caught:
        store.add_route("no-such-id", "app.example.com")
    assert caught.value.code == "tunnel_not_found"


def test_delete_route(store: SqliteStore) -> None:
    tunnel, _ = store.create_tunnel("home")
    store.add_route(tunnel.id, "*.example.com")
    store.add_route(tunnel.id, "x.example.org")
    removed = store.delete_route("*.EXAMPLE.com.")
    assert (removed.hostname, removed.tunnel_id) == ("*.example.com", tunnel.id)
    assert [r.hostname for r in store.list_routes()] == ["x.example.org"]
    with pytest.raises(NotFound) as caught:
        store.delete_route("*.example.com")
    assert caught.value.code == "route_not_found"


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("App.Example.COM.", "app.example.com"),
        ("*.example.com", "*.example.com"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
        ("localhost", "localhost"),
        ("a-b.c1.io", "a-b.c1.io"),
    ],
)
def test_hostname_normalisation(raw: str, normal: str) -> None:
    assert normalize_hostname(raw) == normal


@pytest.mark.parametrize(
    "raw",
    [
        "",
        ".",
        "*",
        "*.",
        "a.*.example.com",
        "*foo.example.com",
        "**.example.com",
        "app.example.com:443",
        "app..example.com",
        "-app.example.com",
        "app-.example.com",
        "app_1.example.com",
        "bücher.example",
        "10.0.0.1",
        "a/b.example.com",
        "app.example.com..",
        ("x" * 64) + ".example.com",
        ".".join(["abcdefghi"] * 26),
    ],
)
def test_invalid_hostnames_are_refused(store: SqliteStore, raw: str) -> None:
    tunnel, _ = store.create_tunnel("home")
    with pytest.raises(InvalidInput) as caught:
        store.add_route(tunnel.id, raw)
    assert caught.value.code == "invalid_hostname"


def test_admin_tokens_verify_and_only_their_hash_is_kept(store: SqliteStore) -> None:
    first = store.add_admin_token()
    second = store.add_admin_token()
    assert first != second
    assert store.verify_admin_token(first)
    assert store.verify_admin_token(second)
    assert not store.verify_admin_token(first + "x")
    assert not store.verify_admin_token("")
    assert not store.verify_admin_token("ünïcode")


def test_no_admin_token_verifies_on_an_empty_store(store: SqliteStore) -> None:
    assert not store.verify_admin_token("tga_anything")


def test_plaintext_secrets_never_reach_the_database_files(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    with SqliteStore(folder / "tunnelgate.db") as store:
        tunnel, secret = store.create_tunnel("home")
        extra = store.add_tunnel_credential(tunnel.id)
        token = store.add_admin_token()
        store.add_route(tunnel.id, "app.example.com")
        written = b"".join(p.read_bytes() for p in folder.iterdir())
        for plaintext in (secret, extra, token):
            assert plaintext.encode() not in written
    on_disk = b"".join(p.read_bytes() for p in folder.iterdir())
    assert hash_secret(secret).encode() in on_disk
    for plaintext in (secret, extra, token):
        assert plaintext.encode() not in on_disk


def test_the_database_file_is_private(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "private" / "tunnelgate.db"):
        pass
    mode = stat.S_IMODE((tmp_path / "private" / "tunnelgate.db").stat().st_mode)
    assert mode & 0o077 == 0


def test_migrations_are_recorded_and_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with SqliteStore(path, apply_migrations=False) as store:
        assert store.schema_version() == 0
        assert store.migrate() == [m.version for m in MIGRATIONS]
        assert store.migrate() == []
        assert store.schema_version() == MIGRATIONS[-1].version
        store.create_tunnel("kept")
    with SqliteStore(path) as reopened:
        assert reopened.migrate() == []
        assert [t.name for t in reopened.list_tunnels()] == ["kept"]
    with sqlite3.connect(path) as raw:
        versions = [row[0] for row in raw.execute("SELECT version FROM schema_migrations")]
        journal = raw.execute("PRAGMA journal_mode").fetchone()[0]
    raw.close()
    assert versions == [m.version for m in MIGRATIONS]
    assert journal == "wal"


def test_migration_versions_are_increasing() -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == sorted(set(versions))
    assert versions[0] == 1


def test_a_store_from_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "db"
    with SqliteStore(path):
        pass
    with sqlite3.connect(path) as raw:
        raw.execute("INSERT INTO schema_migrations VALUES (999, 'future', 'x')")
    raw.close()
    with pytest.raises(StoreError, match="newer than this edge knows"):
        SqliteStore(path)


def test_an_unwritable_location_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="cannot open the store"):
        SqliteStore(blocker / "tunnelgate.db")


def test_every_change_is_audited_without_secrets(store: SqliteStore) -> None:
    tunnel, secret = store.create_tunnel("home")
    store.add_tunnel_credential(tunnel.id)
    store.add_route(tunnel.id, "app.example.com")
    store.delete_route("app.example.com")
    store.add_route(tunnel.id, "app.example.com")
    store.add_admin_token()
    store.delete_tunnel(tunnel.id)
    events = store.audit_events()
    assert [e.kind for e in events] == [
        "tunnel.deleted",
        "admin_token.created",
        "route.added",
        "route.deleted",
        "route.added",
        "tunnel.credential_added",
        "tunnel.created",
    ]
    assert events[0].detail == {
        "tunnel_id": tunnel.id,
        "name": "home",
        "routes": ["app.example.com"],
    }
    assert all(e.time.tzinfo is not None for e in events)
    assert secret not in repr(events)
    assert len(store.audit_events(limit=2)) == 2


def test_a_failed_write_leaves_nothing_behind(store: SqliteStore) -> None:
    store.create_tunnel("home")
    before = store.audit_events()
    with pytest.raises(Conflict):
        store.create_tunnel("home")
    assert store.audit_events() == before
    assert len(store.tunnel_secret_hashes()) == 1


def test_threads_can_share_one_store(store: SqliteStore) -> None:
    errors: list[BaseException] = []

    def create(prefix: str) -> None:
        try:
            for index in range(20):
                tunnel, _ = store.create_tunnel(f"{prefix}-{index}")
                store.add_route(tunnel.id, f"{prefix}-{index}.example.com")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create, args=(f"t{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(store.list_tunnels()) == 80
    assert len(store.list_routes()) == 80
