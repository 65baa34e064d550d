from __future__ import annotations

import logging
import stat
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from edge.cli import main
from edge.config import EdgeConfig, load_edge_config
from edge.store.sqlite import MIGRATIONS, SqliteStore


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def test_init_writes_config_store_and_a_private_token(tmp_path: Path) -> None:
    folder = tmp_path / "edge"
    code, out, err = run(
        "init",
        "--dir",
        str(folder),
        "--public-listen",
        "127.0.0.1:0",
        "--tunnel-listen",
        "[::1]:0",
        "--admin-listen",
        "127.0.0.1:9001",
        "--ops-listen",
        "127.0.0.1:9002",
        "--auth-domain",
        "Auth.Example.com",
    )
    assert code == 0, err
    token_file = folder / "admin.token"
    token = token_file.read_text().strip()
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert out.count(token) == 1
    assert "Next steps" in out
    assert "check-config" in out
    config = load_edge_config(folder / "edge.toml")
    assert config.listen.public == "127.0.0.1:0"
    assert config.listen.tunnel == "[::1]:0"
    assert config.listen.admin == "127.0.0.1:9001"
    assert config.listen.ops == "127.0.0.1:9002"
    assert config.access.auth_domain == "auth.example.com"
    assert config.store_path() == (folder / "tunnelgate.db").resolve()
    with SqliteStore(config.store_path()) as store:
        assert store.verify_admin_token(token)
    assert token.encode() not in (folder / "tunnelgate.db").read_bytes()
    text = (folder / "edge.toml").read_text()
    for key in [
        "id =",
        "state_dir =",
        "public =",
        "public_tls =",
        "tunnel =",
        "admin =",
        "ops =",
        "public_url =",
        "heartbeat_interval =",
        "heartbeat_timeout =",
        "max_header_bytes =",
        "max_headers =",
        "header_timeout =",
        "idle_timeout =",
        "max_body_bytes =",
        "trusted_proxies =",
        "url =",
        "cert_file =",
        "key_file =",
        "auth_domain =",
    ]:
        line = next(line for line in text.splitlines() if key in line)
        assert "#" in line, f"{key} is not explained"


def test_init_defaults_never_bind_every_interface(tmp_path: Path) -> None:
    code, _, err = run("init", "--dir", str(tmp_path))
    assert code == 0, err
    config = load_edge_config(tmp_path / "edge.toml")
    assert config == EdgeConfig(config_dir=tmp_path.resolve(), edge=config.edge)
    for name in ["public", "tunnel", "admin", "ops"]:
        assert getattr(config.listen, name).startswith("127.0.0.1:")


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    assert run("init", "--dir", str(tmp_path))[0] == 0
    first_token = (tmp_path / "admin.token").read_text().strip()
    (tmp_path / "edge.toml").write_text("# edited by the operator\n")
    code, _, err = run("init", "--dir", str(tmp_path))
    assert code == 1
    assert "already exists" in err
    assert "--force" in err
    assert (tmp_path / "edge.toml").read_text() == "# edited by the operator\n"
    assert (tmp_path / "admin.token").read_text().strip() == first_token
    code, _, err = run("init", "--dir", str(tmp_path), "--force")
    assert code == 0, err
    assert "[listen]" in (tmp_path / "edge.toml").read_text()
    second_token = (tmp_path / "admin.token").read_text().strip()
    assert second_token != first_token
    with SqliteStore(tmp_path / "tunnelgate.db") as store:
        assert store.verify_admin_token(second_token)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--public-listen", "nope"), ("--admin-listen", "1.2.3.4:99999"), ("--auth-domain", "*.x.io")],
)
def test_init_rejects_bad_options_before_writing(tmp_path: Path, option: str, value: str) -> None:
    code, _, err = run("init", "--dir", str(tmp_path / "new"), option, value)
    assert code == 2
    assert "Invalid value" in err
    assert not (tmp_path / "new").exists()


def test_check_config_ok(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[edge]\nid = "e"\n')
    code, out, _ = run("check-config", str(path))
    assert (code, out.strip()) == (0, f"{path}: ok")


def test_check_config_error_names_the_key_path(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[http]\nheader_timeout = "soon"\n')
    code, out, err = run("check-config", str(path))
    assert code == 2
    assert out == ""
    assert err.startswith(f'{path}: http.header_timeout: expected a duration like "30s"')


def test_check_config_unknown_key_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("[listen]\npublik = '127.0.0.1:1'\n")
    code, _, err = run("check-config", str(path))
    assert code == 2
    assert err.startswith(f"{path}: listen.publik: unknown key")
    assert "hint:" in err
    assert run("check-config", str(tmp_path / "missing.toml"))[0] == 2


def test_migrate_reports_and_is_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[edge]\nstate_dir = "state"\n')
    code, out, err = run("migrate", "--config", str(path))
    assert code == 0, err
    assert "applied migrations " + ", ".join(str(m.version) for m in MIGRATIONS) in out
    code, out, _ = run("migrate", "--config", str(path))
    assert code == 0
    assert f"up to date (schema version {MIGRATIONS[-1].version})" in out
    assert (tmp_path / "state" / "tunnelgate.db").exists()


def test_migrate_and_serve_exit_2_on_config_errors(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("[edge]\nbogus = 1\n")
    for command in ["migrate", "serve"]:
        code, _, err = run(command, "--config", str(path))
        assert code == 2
        assert "edge.bogus: unknown key" in err


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("restore_logging")
def test_no_option_takes_a_secret() -> None:
    # Options that name a file holding a secret (--api-token-file) are how secrets come in.
    pending: list[click.Command] = list(main.commands.values())
    while pending:
        command = pending.pop()
        if isinstance(command, click.Group):
            pending.extend(command.commands.values())
        for param in command.params:
            for name in getattr(param, "opts", []):
                if name.endswith("-file"):
                    continue
                assert "token" not in name, name
                assert "secret" not in name, name
