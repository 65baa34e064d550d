"""``tunnelgate-edge`` Access commands against a real admin API on loopback (port 0), backed by a
real SqliteStore; the CLI runs in a worker thread while trio serves the API."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner, Result

from edge.admin import AdminApi, serve_admin
from edge.cli import main
from edge.store.access_records import DecisionRecord
from edge.store.sqlite import SqliteStore

INTERFACE_TOML = """\
[[idp]]
name = "corp"
type = "oidc"                      # or "github", "otp"
issuer = "https://idp.example.com" # discovery at issuer + /.well-known/openid-configuration
client_id = "edge"
client_secret_file = "/etc/tunnelgate/corp.secret"
groups_claim = "groups"

[[app]]
name = "grafana"
domain = "grafana.example.com"     # optional path: "grafana.example.com/admin"
idps = ["corp"]
session_duration = "24h"

[[app.policy]]
name = "engineers"
action = "allow"
include = [{ email_domain = "example.com" }, { group = "eng" }]
require = [{ idp = "corp" }]
exclude = [{ email = "mallory@example.com" }]
"""

EXTRA_TOML = """
[[idp]]
name = "pin"
type = "otp"
delivery = "log"

[[app]]
name = "wiki"
domain = "wiki.example.com/docs"
idps = ["pin"]
type = "http"
allow_websockets = false
cookie_name = "WikiAuth"
header_name = "X-Wiki-Assertion"

[[app.policy]]
name = "ci"
action = "service_auth"
include = [{ service_token = "ci" }]

[[service_token]]
name = "ci"
duration = "720h"
"""


@pytest.fixture
async def admin_url(api: AdminApi, nursery: trio.Nursery) -> str:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    host, port = listeners[0].socket.getsockname()[:2]
    await nursery.start(serve_admin, listeners[0], api)
    return f"http://{host}:{port}"


@pytest.fixture
def token_file(tmp_path: Path, admin_token: str) -> Path:
    path = tmp_path / "admin.token"
    path.write_text(admin_token + "\n")
    return path


class Cli:
    def __init__(self, url: str, token_file: Path) -> None:
        self.url = url
        self.token_file = token_file

    async def __call__(
        self, *args: str, env: Mapping[str, str] | None = None, with_api: bool = True
    ) -> Result:
        argv = list(args)
        if with_api:
            argv += ["--api", self.url, "--api-token-file", str(self.token_file)]
        environment = {"TUNNELGATE_API": None, "TUNNELGATE_API_TOKEN": None, **(env or {})}
        return await trio.to_thread.run_sync(
            lambda: CliRunner().invoke(main, argv, env=environment, catch_exceptions=False)
        )


@pytest.fixture
def cli(admin_url: str, token_file: Path) -> Cli:
    return Cli(admin_url, token_file)


def resolved(name: str) -> str:
    """Where the CLI's working directory puts a relative path."""
    return str(Path(name).resolve())


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(textwrap.dedent(text))
    return path


async def test_apply_creates_is_idempotent_and_prints_what_it_changed(
    cli: Cli, store: SqliteStore, tmp_path: Path
) -> None:
    file = write(tmp_path, "access.toml", INTERFACE_TOML + EXTRA_TOML)
    first = await cli("apply", str(file))
    assert first.exit_code == 0, first.stderr
    assert first.stdout.splitlines()[:7] == [
        "+ create idp corp",
        "+ create idp pin",
        "+ create app grafana",
        "+ create policies of app grafana (engineers)",
        "+ create app wiki",
        "+ create policies of app wiki (ci)",
        "+ create service token ci",
    ]
    assert "Applied 7 change(s)" in first.stdout
    (token,) = store.list_service_tokens()
    assert f"Client ID:     {token.client_id}" in first.stdout
    assert first.stdout.count("Client secret: ") == 1
    wiki = store.get_app("wiki").spec
    assert (wiki.domain, wiki.allow_websockets, wiki.header_name) == (
        "wiki.example.com/docs",
        False,
        "X-Wiki-Assertion",
    )
    assert [p.name for p in store.get_policies("grafana").policies] == ["engineers"]

    second = await cli("apply", str(file))
    assert second.exit_code == 0
    assert second.stdout.strip() == f"No changes: the edge already matches {file}"


async def test_dry_run_changes_nothing_and_prune_deletes_what_the_file_omits(
    cli: Cli, store: SqliteStore, tmp_path: Path
) -> None:
    full = write(tmp_path, "full.toml", INTERFACE_TOML + EXTRA_TOML)
    assert (await cli("apply", str(full))).exit_code == 0
    changed = write(
        tmp_path,
        "changed.toml",
        INTERFACE_TOML.replace('session_duration = "24h"', 'session_duration = "8h"'),
    )
    planned = await cli("apply", str(changed), "--dry-run")
    assert planned.exit_code == 0
    assert planned.stdout.splitlines() == [
        "~ update app grafana (session_duration)",
        "Dry run: 1 change(s) planned, nothing was changed",
    ]
    assert store.get_app("grafana").spec.session_duration == 24 * 3600
    kept = await cli("apply", str(changed))
    assert "~ update app grafana (session_duration)" in kept.stdout
    assert store.get_app("wiki")  # not in the file, kept without --prune
    pruned = await cli("apply", str(changed), "--prune")
    assert pruned.stdout.splitlines()[:3] == [
        "- delete app wiki",
        "- delete idp pin",
        "- delete service token ci",
    ]
    assert [app.name for app in store.list_apps()] == ["grafana"]
    assert store.get_app("grafana").spec.session_duration == 8 * 3600


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            INTERFACE_TOML.replace(
                '{ group = "eng" }', '{ group = "eng" }, { email_domain = "x y" }'
            ),
            "app[0].policy[0].include[2].email_domain: not a valid domain name",
        ),
        (
            INTERFACE_TOML + '\n[[app.policy]]\nname = "b"\naction = "allow"\n'
            'include = [{ everyone = true }, { emial = "a@b.c" }]\n',
            "app[0].policy[1].include[1].emial: unknown selector",
        ),
        (
            INTERFACE_TOML.replace(
                'groups_claim = "groups"', 'groups_claim = "groups"\ncolour = 1'
            ),
            "idp[0].colour: unknown key",
        ),
        (INTERFACE_TOML + "\n[tunnel]\nname = 'x'\n", "tunnel: unknown key"),
        (
            INTERFACE_TOML.replace('session_duration = "24h"', "session_duration = 2030-01-01"),
            "app[0].session_duration: dates and times are not valid here",
        ),
        ("[[app]\n", "not valid TOML"),
    ],
)
async def test_bad_files_fail_with_the_key_path_and_touch_nothing(
    cli: Cli, store: SqliteStore, tmp_path: Path, text: str, message: str
) -> None:
    file = write(tmp_path, "bad.toml", text)
    result = await cli("apply", str(file))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {file}")
    assert message in result.stderr
    assert store.list_apps() == []
    assert store.list_idps() == []


async def test_apply_resolves_relative_secret_files_and_reports_store_refusals(
    cli: Cli, store: SqliteStore, tmp_path: Path
) -> None:
    folder = tmp_path / "conf"
    folder.mkdir()
    file = write(
        folder,
        "a.toml",
        INTERFACE_TOML.replace("/etc/tunnelgate/corp.secret", "secrets/corp.secret"),
    )
    assert (await cli("apply", str(file))).exit_code == 0
    assert store.get_idp("corp").settings["client_secret_file"] == str(
        (folder / "secrets" / "corp.secret").resolve()
    )
    other = write(folder, "b.toml", INTERFACE_TOML.replace('name = "grafana"', 'name = "g2"'))
    refused = await cli("apply", str(other))
    assert refused.exit_code == 1
    assert "app[0].domain: grafana.example.com is the domain of application 'grafana'" in (
        refused.stderr
    )


async def test_app_policy_and_idp_commands(cli: Cli, store: SqliteStore, tmp_path: Path) -> None:
    added = await cli("idp", "add", "pin", "--type", "otp", "--delivery", "log")
    assert added.exit_code == 0, added.stderr
    oidc = await cli(
        "idp",
        "add",
        "corp",
        "--type",
        "oidc",
        "--issuer",
        "https://idp.example.com",
        "--client-id",
        "edge",
        "--client-secret-file",
        "corp.secret",
        "--scope",
        "openid",
        "--scope",
        "email",
    )
    assert oidc.exit_code == 0, oidc.stderr
    assert store.get_idp("corp").settings["client_secret_file"] == resolved("corp.secret")
    assert store.get_idp("corp").settings["scopes"] == ("openid", "email")
    listed = await cli("idp", "list")
    assert "corp  oidc  issuer https://idp.example.com, client edge" in listed.stdout
    assert "codes written to the edge log" in listed.stdout

    created = await cli(
        "app",
        "create",
        "grafana",
        "--domain",
        "Grafana.Example.com/Admin/",
        "--idp",
        "corp",
        "--session-duration",
        "8h",
        "--no-websockets",
    )
    assert created.exit_code == 0, created.stderr
    aud = store.get_app("grafana").aud
    assert f"AUD tag: {aud}" in created.stdout
    assert store.get_app("grafana").spec.domain == "grafana.example.com/Admin"
    assert store.get_app("grafana").spec.allow_websockets is False
    duplicate = await cli("app", "create", "grafana", "--domain", "x.example.com")
    assert duplicate.exit_code == 1
    assert "error: an application named 'grafana' already exists" in duplicate.stderr

    policies = write(
        tmp_path,
        "policies.toml",
        """\
        [[policy]]
        name = "health"
        action = "bypass"
        include = [{ ip = "10.0.0.0/8" }]

        [[policy]]
        name = "engineers"
        action = "allow"
        include = [{ email_domain = "example.com" }]
        exclude = [{ email = "mallory@example.com" }]
        """,
    )
    set_result = await cli("policy", "set", "grafana", str(policies))
    assert set_result.exit_code == 0, set_result.stderr
    assert "Set 2 policies on grafana" in set_result.stdout
    assert [p.name for p in store.get_policies("grafana").policies] == ["health", "engineers"]
    listed_policies = await cli("policy", "list", "grafana")
    assert "  2. engineers (allow)" in listed_policies.stdout
    assert 'exclude: email="mallory@example.com"' in listed_policies.stdout
    bad = write(
        tmp_path,
        "bad.toml",
        '[[policy]]\nname = "x"\naction = "allow"\ninclude = [{ ip = "10.0.0.1/8" }]\n',
    )
    refused = await cli("policy", "set", "grafana", str(bad))
    assert refused.exit_code == 2
    assert "policy[0].include[0].ip: " in refused.stderr

    app_list = await cli("app", "list")
    assert app_list.stdout.splitlines()[1].split() == [
        "grafana",
        "grafana.example.com/Admin",
        "http",
        "corp",
        "2",
        "8h",
    ]
    shown = await cli("app", "show", "grafana")
    assert f"aud:                  {aud}" in shown.stdout
    assert "allow_websockets:     false" in shown.stdout
    in_use = await cli("idp", "delete", "corp")
    assert in_use.exit_code == 1
    assert "used by application(s) grafana" in in_use.stderr
    assert (await cli("app", "delete", "grafana")).exit_code == 0
    assert (await cli("idp", "delete", "corp")).exit_code == 0
    missing = await cli("app", "show", "grafana")
    assert missing.exit_code == 1
    assert "error: no application named 'grafana' (list them with GET /v1/apps)" in missing.stderr


async def test_service_tokens_sessions_keys_and_audit(cli: Cli, store: SqliteStore) -> None:
    created = await cli("service-token", "create", "ci", "--duration", "48h")
    assert created.exit_code == 0, created.stderr
    (token,) = store.list_service_tokens()
    secret_line = next(line for line in created.stdout.splitlines() if "Client secret:" in line)
    secret = secret_line.split()[-1]
    assert len(secret) == 64
    assert (token.expires_at - token.created_at).total_seconds() == 48 * 3600
    listed = await cli("service-token", "list")
    assert token.client_id in listed.stdout
    assert secret not in listed.stdout
    assert (await cli("service-token", "delete", "ci")).exit_code == 0
    assert store.list_service_tokens() == []

    assert (await cli("idp", "add", "pin", "--type", "otp", "--delivery", "log")).exit_code == 0
    assert (await cli("app", "create", "wiki", "--domain", "wiki.example.com")).exit_code == 0
    by_email = await cli("session", "revoke", "--email", "Alice@Example.com")
    assert by_email.exit_code == 0
    assert "Revoked every session of alice@example.com" in by_email.stdout
    by_app = await cli("session", "revoke", "--app", "wiki")
    assert "Revoked every session of application wiki" in by_app.stdout
    assert {r.kind for r in store.revocations()} == {"email", "app"}
    for args in ([], ["--email", "a@b.co", "--app", "wiki"]):
        usage = await cli("session", "revoke", *args)
        assert usage.exit_code == 2
        assert "exactly one of --email or --app" in usage.stderr

    empty = await cli("keys", "list")
    assert "No signing keys yet" in empty.stdout
    rotated = await cli("keys", "rotate")
    assert rotated.exit_code == 0
    active = store.signing_key_records()[0]["kid"]
    assert f"Rotated: {active} is the active signing key" in rotated.stdout
    again = await cli("keys", "rotate", "--algorithm", "ES256")
    lines = (await cli("keys", "list")).stdout.splitlines()
    assert any(
        line.startswith(str(active)) and "previous, published until" in line for line in lines
    )
    assert sum("active" in line for line in lines[1:]) == 1
    assert "ES256" in again.stdout

    audit = await cli("audit", "--app", "wiki")
    assert audit.exit_code == 0
    assert [line.split()[1] for line in audit.stdout.splitlines()] == [
        "sessions.revoked",
        "app.created",
    ]
    limited = await cli("audit", "--limit", "1", "--email", "alice@example.com")
    assert len(limited.stdout.splitlines()) == 1
    assert "sessions.revoked" in limited.stdout
    assert (await cli("audit", "--app", "nothing")).stdout.strip() == "No audit entries match."


async def test_audit_shows_how_often_a_counted_decision_was_made(
    cli: Cli, store: SqliteStore
) -> None:
    assert (await cli("idp", "add", "pin", "--type", "otp", "--delivery", "log")).exit_code == 0
    assert (await cli("app", "create", "wiki", "--domain", "wiki.example.com")).exit_code == 0
    when = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    store.record_decisions([
        DecisionRecord(when, "wiki", "203.0.113.9", "allow", "allowed_by_policy",
                       policy="staff", email="alice@example.com", count=42,
                       last_time=when + timedelta(milliseconds=240)),
        DecisionRecord(when, "wiki", "203.0.113.9", "deny", "no_policy_matched",
                       email="bob@example.com"),
    ])
    lines = (await cli("audit", "--app", "wiki")).stdout.splitlines()
    assert lines[0].endswith("deny  -  no_policy_matched")
    assert lines[1].endswith("allow  staff  allowed_by_policy  x42 until 2030-01-02T03:04:05.240000+00:00")


async def test_api_options_work_on_groups_commands_and_the_environment(
    cli: Cli, admin_url: str, token_file: Path, admin_token: str
) -> None:
    on_group = await cli(
        "app", "--api", admin_url, "--api-token-file", str(token_file), "list", with_api=False
    )
    assert on_group.exit_code == 0, on_group.stderr
    assert "No applications yet" in on_group.stdout
    from_env = await cli(
        "keys",
        "list",
        with_api=False,
        env={"TUNNELGATE_API": admin_url, "TUNNELGATE_API_TOKEN": admin_token},
    )
    assert from_env.exit_code == 0, from_env.stderr
    # A URL typed on the command line beats the environment.
    typed = await cli(
        "audit",
        "--api",
        admin_url,
        with_api=False,
        env={"TUNNELGATE_API": "http://127.0.0.1:1", "TUNNELGATE_API_TOKEN": admin_token},
    )
    assert typed.exit_code == 0, typed.stderr

    no_url = await cli("app", "list", with_api=False, env={"TUNNELGATE_API_TOKEN": admin_token})
    assert (no_url.exit_code, no_url.stderr.split(":")[0]) == (2, "error")
    assert "--api: no admin API URL" in no_url.stderr
    no_token = await cli("idp", "list", "--api", admin_url, with_api=False)
    assert no_token.exit_code == 2
    assert "--api-token-file: no admin API token" in no_token.stderr
    wrong = await cli(
        "service-token",
        "list",
        with_api=False,
        env={"TUNNELGATE_API": admin_url, "TUNNELGATE_API_TOKEN": "tga_wrong"},
    )
    assert wrong.exit_code == 1
    assert "error: the admin token is not valid" in wrong.stderr


async def test_an_unreachable_api_is_reported(token_file: Path) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    host, port = listeners[0].socket.getsockname()[:2]
    await listeners[0].aclose()  # nothing listens there any more
    result = await Cli(f"http://{host}:{port}", token_file)("app", "list")
    assert result.exit_code == 1
    assert "cannot reach the admin API" in result.stderr
    assert "TUNNELGATE_API" in result.stderr


def test_init_and_migrate_make_the_first_signing_key(tmp_path: Path) -> None:
    runner = CliRunner()
    initialised = runner.invoke(
        main,
        [
            "init",
            "--dir",
            str(tmp_path / "edge"),
            "--public-listen",
            "127.0.0.1:0",
            "--tunnel-listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--ops-listen",
            "127.0.0.1:0",
            "--auth-domain",
            "auth.example.com",
        ],
    )
    assert initialised.exit_code == 0, initialised.stderr
    with SqliteStore(tmp_path / "edge" / "tunnelgate.db") as store:
        (key,) = store.signing_key_records()
        assert key["algorithm"] == "RS256"
        store.update_signing_keys(lambda records: [])
    migrated = runner.invoke(main, ["migrate", "--config", str(tmp_path / "edge" / "edge.toml")])
    assert migrated.exit_code == 0, migrated.stderr
    with SqliteStore(tmp_path / "edge" / "tunnelgate.db") as store:
        (new_key,) = store.signing_key_records()
    assert f"Generated signing key {new_key['kid']} (RS256)" in migrated.stdout
    assert new_key["kid"] != key["kid"]
    quiet = runner.invoke(main, ["migrate", "--config", str(tmp_path / "edge" / "edge.toml")])
    assert "Generated" not in quiet.stdout
