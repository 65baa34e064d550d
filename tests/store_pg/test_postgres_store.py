"""What only the PostgreSQL store does: shared schema migrations, notifications at commit,
serialised writes across edges, outages and the cluster tables."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest

from edge.config import ConfigError, parse_config
from edge.store import Conflict, StoreError, open_store
from edge.store.postgres import (
    NOTIFY_CHANNEL,
    PostgresStore,
    StoreUnavailable,
    read_password_file,
    redact_url,
)
from edge.store.postgres_cluster import ClusterConnection
from edge.store.schema_pg import PG_MIGRATIONS
from edge.store.sqlite import MIGRATIONS

from .database import terminate_backends


class FakeMonotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def listen(url: str) -> psycopg.Connection[tuple[object, ...]]:
    conn = psycopg.connect(url, autocommit=True)
    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
    return conn


def received(conn: psycopg.Connection[tuple[object, ...]]) -> list[str]:
    return [note.payload for note in conn.notifies(timeout=0.5, stop_after=50)]


def test_migrations_apply_once_and_share_sqlite_version_numbers(empty_pg_url: str) -> None:
    with PostgresStore(empty_pg_url, apply_migrations=False) as store:
        assert store.schema_version() == 0
        assert store.migrate() == [m.version for m in PG_MIGRATIONS]
        assert store.migrate() == []
        store.create_tunnel("kept")
    with PostgresStore(empty_pg_url) as again:
        assert again.migrate() == []
        assert [t.name for t in again.list_tunnels()] == ["kept"]
    shared = {m.version: m.name for m in MIGRATIONS}
    assert {m.version: m.name for m in PG_MIGRATIONS if m.version in shared} == shared


def test_two_edges_migrating_at_once_apply_each_version_once(empty_pg_url: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            with PostgresStore(empty_pg_url, apply_migrations=False) as store:
                results.append(store.migrate())
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results, key=len) == [[], [], [m.version for m in PG_MIGRATIONS]]


def test_a_database_from_a_newer_release_is_refused(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as raw:
        raw.execute("INSERT INTO schema_migrations VALUES (999, 'future', now())")
    with pytest.raises(StoreError, match="newer than this edge knows"):
        PostgresStore(pg_url)


def test_writes_notify_at_commit_and_rollbacks_notify_nothing(pg_url: str) -> None:
    with PostgresStore(pg_url) as store, listen(pg_url) as listener:
        tunnel, _ = store.create_tunnel("home")
        store.add_route(tunnel.id, "app.example.com")
        store.revoke_email_sessions("Alice@Example.com")
        assert received(listener) == [
            f"tunnel_created:{tunnel.id}",
            f"route_added:{tunnel.id}",
            "sessions_revoked:email=alice@example.com",
        ]
        with pytest.raises(Conflict):
            store.create_tunnel("home")

        def delete_then_conflict() -> None:
            with store.batch():
                store.delete_route("app.example.com")
                store.create_tunnel("home")

        with pytest.raises(Conflict):
            delete_then_conflict()
        assert received(listener) == []
        assert [r.hostname for r in store.list_routes()] == ["app.example.com"]


def test_two_edges_racing_for_one_name_cannot_both_win(pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(4)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(stores))

    def create(store: PostgresStore) -> None:
        barrier.wait()
        try:
            store.create_tunnel("contested")
            outcomes.append("created")
        except Conflict as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=create, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert sorted(outcomes) == ["created"] + ["tunnel_exists"] * 3


def test_a_lost_connection_is_a_retryable_503_then_the_store_reconnects(pg_url: str) -> None:
    monotonic = FakeMonotonic()
    with PostgresStore(pg_url, monotonic=monotonic) as store:
        store.create_tunnel("before")
        assert store.available
        assert terminate_backends(pg_url) >= 1
        with pytest.raises(StoreUnavailable) as lost:
            store.create_tunnel("during")
        assert (lost.value.status, lost.value.code) == (503, "store_unavailable")
        assert not store.available
        assert not store.ping()
        # Held back between attempts: no new connection until the retry time.
        with pytest.raises(StoreUnavailable):
            store.list_tunnels()
        monotonic.now += 10
        assert [t.name for t in store.list_tunnels()] == ["before"]
        assert store.available
        store.create_tunnel("after")
    with PostgresStore(pg_url) as check:
        assert [t.name for t in check.list_tunnels()] == ["after", "before"]


def test_an_unreachable_server_is_store_unavailable_without_the_password(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret-password\n")
    with pytest.raises(StoreUnavailable) as down:
        PostgresStore(
            "postgresql://tg@127.0.0.1:1/none", password=read_password_file(secret)
        )
    assert "s3cret" not in str(down.value)
    assert redact_url("postgresql://u:pw@h:5432/db") == "postgresql://u@h:5432/db"


def test_config_selects_postgres_and_refuses_passwords_in_the_url(pg_url: str) -> None:
    config = parse_config({"store": {"url": pg_url}}, config_dir=Path("/"))
    store = open_store(config)
    try:
        assert isinstance(store, PostgresStore)
        assert store.schema_version() == PG_MIGRATIONS[-1].version
    finally:
        store.close()
    with pytest.raises(ConfigError, match=r"store\.url: a password does not belong"):
        parse_config({"store": {"url": "postgresql://u:pw@h/db"}}, config_dir=Path("/"))
    with pytest.raises(ConfigError, match=r"cluster\.listen"):
        parse_config(
            {"cluster": {"listen": "127.0.0.1:0", "secret_file": "s"}}, config_dir=Path("/")
        )


def connection(edge_id: str, tunnel_id: str, number: int) -> ClusterConnection:
    return ClusterConnection(
        connection_id=f"{edge_id}-conn-{number}",
        edge_id=edge_id,
        tunnel_id=tunnel_id,
        connector_id="connector-1",
        conn_index=number,
        client="192.0.2.7",
        since=datetime(2030, 1, 2, tzinfo=UTC),
    )


def test_cluster_rows_follow_heartbeats_and_expire(pg_url: str) -> None:
    with PostgresStore(pg_url) as store, listen(pg_url) as listener:
        store.announce_edge("a", "http://127.0.0.1:1")
        store.announce_edge("b", "http://127.0.0.1:2")
        held = [connection("a", "t1", 0), connection("a", "t1", 1)]
        store.heartbeat_edge("a", held, changed=True, expiry=10)
        store.heartbeat_edge("b", [connection("b", "t2", 0)], changed=True, expiry=10)
        snapshot = store.cluster_snapshot(expiry=10)
        assert [e.edge_id for e in snapshot.edges] == ["a", "b"]
        assert [(c.edge_id, c.tunnel_id) for c in snapshot.connections] == [
            ("a", "t1"),
            ("a", "t1"),
            ("b", "t2"),
        ]
        store.heartbeat_edge("a", held[:1], changed=True, expiry=10)
        assert [c.connection_id for c in store.cluster_snapshot(10).connections] == [
            "a-conn-0",
            "b-conn-0",
        ]
        assert "connections_changed:a" in received(listener)
        # Edge b goes quiet: its rows stop counting once older than the expiry.
        with psycopg.connect(pg_url, autocommit=True) as raw:
            raw.execute(
                "UPDATE cluster_edges SET heartbeat_at = now() - interval '1 minute' "
                "WHERE edge_id = 'b'"
            )
        snapshot = store.cluster_snapshot(expiry=10)
        assert [e.edge_id for e in snapshot.edges] == ["a"]
        assert [c.edge_id for c in snapshot.connections] == ["a"]
        store.retire_edge("a")
        assert store.cluster_snapshot(expiry=10).edges == ()
        with pytest.raises(LookupError):
            store.heartbeat_edge("a", [], changed=False, expiry=10)
