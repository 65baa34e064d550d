"""``tunnelgate-edge init --store postgresql://... --edge-id``, ``migrate`` and ``status`` on a
real PostgreSQL."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from click.testing import CliRunner

from edge.cli import main
from edge.config import load_edge_config
from edge.store.postgres import PostgresStore
from edge.store.schema_pg import PG_MIGRATIONS


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def init(folder: Path, url: str, edge_id: str) -> tuple[int, str, str]:
    return run("init", "--dir", str(folder), "--store", url, "--edge-id", edge_id,
               "--public-listen", "127.0.0.1:0", "--tunnel-listen", "127.0.0.1:0",
               "--admin-listen", "127.0.0.1:0", "--ops-listen", "127.0.0.1:0")


def test_init_makes_an_edge_of_a_cluster_that_shares_one_secret(
    tmp_path: Path, empty_pg_url: str
) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    code, out, err = init(first, empty_pg_url, "edge-a")
    assert code == 0, err
    config = load_edge_config(first / "edge.toml")
    assert (config.edge.id, config.store.url) == ("edge-a", empty_pg_url)
    assert config.cluster.listen == "127.0.0.1:7847"
    assert config.cluster.secret_file == (first / "cluster.secret").resolve()
    assert stat.S_IMODE((first / "cluster.secret").stat().st_mode) == 0o600
    assert "tunnelgate.db" not in " ".join(p.name for p in first.iterdir())
    # The second edge gets the first one's secret copied in before its init, and keeps it.
    second.mkdir()
    (second / "cluster.secret").write_bytes((first / "cluster.secret").read_bytes())
    code, _, err = init(second, empty_pg_url, "edge-b")
    assert code == 0, err
    assert (second / "cluster.secret").read_bytes() == (first / "cluster.secret").read_bytes()
    tokens = [(folder / "admin.token").read_text().strip() for folder in (first, second)]
    with PostgresStore(empty_pg_url) as store:
        assert store.schema_version() == PG_MIGRATIONS[-1].version
        assert all(store.verify_admin_token(token) for token in tokens)
        assert len(store.signing_key_records()) == 1

    code, out, err = run("migrate", "--config", str(second / "edge.toml"))
    assert code == 0, err
    assert f"up to date (schema version {PG_MIGRATIONS[-1].version})" in out

    code, out, err = run("status", "--config", str(first / "edge.toml"), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["store"]["backend"] == "postgresql"
    assert report["store"]["reachable"] is True
    assert report["edges"] == []


def test_init_refuses_a_bad_edge_id_or_a_password_in_the_url(tmp_path: Path) -> None:
    code, _, err = init(tmp_path / "x", "postgresql://u@127.0.0.1/db", "no spaces")
    assert code == 2
    assert "--edge-id" in err
    code, _, err = init(tmp_path / "y", "postgresql://u:secret@127.0.0.1/db", "edge-a")
    assert code == 2
    assert "a password does not belong" in err
    assert not (tmp_path / "y" / "edge.toml").exists()


def test_migrate_applies_the_postgres_schema_and_status_reports_an_outage(
    tmp_path: Path, empty_pg_url: str
) -> None:
    folder = tmp_path / "edge"
    folder.mkdir()
    (folder / "edge.toml").write_text(f'[store]\nurl = "{empty_pg_url}"\n')
    code, out, err = run("migrate", "--config", str(folder / "edge.toml"))
    assert code == 0, err
    listed = ", ".join(str(m.version) for m in PG_MIGRATIONS)
    assert f"applied migrations {listed}" in out
    assert "Generated signing key" in out

    down = tmp_path / "down"
    down.mkdir()
    (down / "edge.toml").write_text('[store]\nurl = "postgresql://tg@127.0.0.1:1/none"\n')
    code, out, _ = run("status", "--config", str(down / "edge.toml"))
    assert code == 1
    assert "UNREACHABLE" in out
