"""The `tunnelgate` CLI against a fake admin API (stdlib HTTP server on 127.0.0.1 port 0)."""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import types
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from click.testing import CliRunner, Result
from connector_test_origins import closed_port

from connector.cli import cli
from connector.config import Credentials, RunSettings, load_credentials, write_credentials
from connector.ingress import HttpService, StatusService
from tunnel.auth import decode_run_token, encode_run_token

ADMIN_TOKEN = "admin-token-for-tests"
EDGE_URL = "wss://edge.example.com:7844"


class FakeAdminApi:
    """Just enough of the admin API contract, with its error bodies."""

    def __init__(self) -> None:
        self.tunnels: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.secrets_seen: list[str] = []

    def find(self, ref: str) -> dict[str, Any] | None:
        return next((t for t in self.tunnels.values() if ref in (t["id"], t["name"])), None)

    def handle(self, method: str, path: str, query: dict[str, list[str]],
               body: Any) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if parts[:2] != ["v1", "tunnels"]:
            return 404, {"error": "not_found", "message": "no such endpoint"}
        if len(parts) == 2 and method == "GET":
            return 200, {"tunnels": list(self.tunnels.values())}
        if len(parts) == 2 and method == "POST":
            name = body["name"]
            if self.find(name):
                return 409, {"error": "tunnel_exists",
                             "message": f"a tunnel named {name} already exists",
                             "hint": "pick another name or delete the old tunnel"}
            tunnel_id = str(uuid.uuid4())
            secret = f"secret-{tunnel_id[:8]}"
            self.secrets_seen.append(secret)
            self.tunnels[tunnel_id] = {"id": tunnel_id, "name": name,
                                       "created_at": "2025-01-01T00:00:00Z", "routes": [],
                                       "connections": []}
            return 201, {**self.tunnels[tunnel_id], "credentials": {
                "tunnel_id": tunnel_id, "tunnel_name": name, "tunnel_secret": secret,
                "edge_url": EDGE_URL}, "token": encode_run_token(tunnel_id, secret, EDGE_URL)}
        tunnel = self.find(parts[2])
        if tunnel is None:
            return 404, {"error": "tunnel_not_found", "message": f"no tunnel {parts[2]!r}",
                         "hint": "list tunnels with `tunnelgate tunnel list`"}
        if len(parts) == 3 and method == "GET":
            return 200, tunnel
        if len(parts) == 3 and method == "DELETE":
            if tunnel["connections"] and query.get("force") != ["true"]:
                return 409, {"error": "tunnel_connected",
                             "message": f"tunnel {tunnel['name']} has "
                                        f"{len(tunnel['connections'])} live connection(s)",
                             "hint": ""}
            del self.tunnels[tunnel["id"]]
            return 204, None
        if parts[3:] == ["tokens"] and method == "POST":
            secret = f"extra-{len(self.secrets_seen)}"
            self.secrets_seen.append(secret)
            return 201, {"token": encode_run_token(tunnel["id"], secret, EDGE_URL)}
        if parts[3:] == ["routes"] and method == "POST":
            hostname = body["hostname"].lower()
            for other in self.tunnels.values():
                if hostname in other["routes"] and other is not tunnel:
                    return 409, {"error": "route_exists",
                                 "message": f"{hostname} routes to tunnel {other['name']}",
                                 "hint": "delete that route first"}
            status = 200 if hostname in tunnel["routes"] else 201
            if status == 201:
                tunnel["routes"].append(hostname)
            return status, {"hostname": hostname, "tunnel_id": tunnel["id"],
                            "tunnel_name": tunnel["name"]}
        return 405, {"error": "method_not_allowed", "message": "no"}


@pytest.fixture
def admin_api() -> Iterator[tuple[FakeAdminApi, str]]:
    api = FakeAdminApi()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            api.requests.append((self.command, url.path, dict(self.headers.items())))
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            if self.headers.get("Authorization") != f"Bearer {ADMIN_TOKEN}":
                status, document = 401, {"error": "unauthorized",
                                         "message": "missing or wrong admin token",
                                         "hint": "check the admin token file"}
            else:
                status, document = api.handle(self.command, url.path, parse_qs(url.query),
                                              body)
            payload = json.dumps(document).encode() if document is not None else b""
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    try:
        yield api, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("TUNNELGATE_API", raising=False)
    monkeypatch.delenv("TUNNELGATE_TUNNEL_TOKEN", raising=False)
    monkeypatch.setenv("TUNNELGATE_API_TOKEN", ADMIN_TOKEN)
    return tmp_path


def invoke(api_url: str | None, *args: str) -> Result:
    prefix = ["--api", api_url] if api_url else []
    return CliRunner().invoke(cli, [*prefix, *args], catch_exceptions=False)


def test_create_writes_private_credentials(admin_api: tuple[FakeAdminApi, str],
                                           home: Path) -> None:
    api, url = admin_api
    result = invoke(url, "tunnel", "create", "demo")
    assert result.exit_code == 0, result.output
    (tunnel,) = api.tunnels.values()
    path = home / ".tunnelgate" / f"{tunnel['id']}.json"
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert json.loads(path.read_text()) == {
        "tunnel_id": tunnel["id"], "tunnel_name": "demo",
        "tunnel_secret": api.secrets_seen[0], "edge_url": EDGE_URL}
    assert tunnel["id"] in result.output
    assert str(path) in result.output
    assert api.secrets_seen[0] not in result.output
    assert api.requests[0][2]["Authorization"] == f"Bearer {ADMIN_TOKEN}"


def test_create_to_chosen_file_and_token_from_file(admin_api: tuple[FakeAdminApi, str],
                                                   home: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _api, url = admin_api
    monkeypatch.delenv("TUNNELGATE_API_TOKEN")
    token_file = home / "admin.token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    target = home / "creds" / "demo.json"
    result = invoke(url, "--api-token-file", str(token_file), "tunnel", "create", "demo",
                    "--credentials-file", str(target))
    assert result.exit_code == 0, result.output
    assert load_credentials(target).tunnel_name == "demo"
    again = invoke(url, "tunnel", "create", "other", "--credentials-file", str(target))
    assert again.exit_code == 2
    assert "already exists" in again.stderr


def test_api_error_is_shown_with_its_hint(admin_api: tuple[FakeAdminApi, str],
                                          home: Path) -> None:
    _api, url = admin_api
    assert invoke(url, "tunnel", "create", "demo").exit_code == 0
    result = invoke(url, "tunnel", "create", "demo")
    assert result.exit_code == 1
    assert result.stderr.strip() == ("error: a tunnel named demo already exists "
                                     "(pick another name or delete the old tunnel)")


def test_wrong_admin_token(admin_api: tuple[FakeAdminApi, str], home: Path,
                           monkeypatch: pytest.MonkeyPatch) -> None:
    _api, url = admin_api
    monkeypatch.setenv("TUNNELGATE_API_TOKEN", "wrong")
    result = invoke(url, "tunnel", "list")
    assert result.exit_code == 1
    assert "missing or wrong admin token" in result.stderr


def test_missing_admin_token_and_url_are_usage_errors(home: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    result = invoke(None, "tunnel", "list")
    assert result.exit_code == 2
    assert "--api" in result.stderr
    assert "TUNNELGATE_API" in result.stderr
    monkeypatch.delenv("TUNNELGATE_API_TOKEN")
    result = invoke("http://127.0.0.1:1", "tunnel", "list")
    assert result.exit_code == 2
    assert "TUNNELGATE_API_TOKEN" in result.stderr


def test_unreachable_api_names_the_url(home: Path) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    result = invoke(url, "tunnel", "list")
    assert result.exit_code == 1
    assert f"cannot reach the admin API at {url}" in result.stderr
    assert "--api" in result.stderr


def test_route_both_spellings_and_conflict(admin_api: tuple[FakeAdminApi, str],
                                           home: Path) -> None:
    api, url = admin_api
    invoke(url, "tunnel", "create", "demo")
    invoke(url, "tunnel", "create", "other")
    first = invoke(url, "tunnel", "route", "demo", "App.Example.com")
    assert first.exit_code == 0, first.output
    assert "Added route app.example.com -> tunnel demo" in first.output
    again = invoke(url, "tunnel", "route", "dns", "demo", "app.example.com")
    assert again.exit_code == 0
    assert "app.example.com already routes to tunnel demo" in again.output
    conflict = invoke(url, "tunnel", "route", "other", "app.example.com")
    assert conflict.exit_code == 1
    assert "error: app.example.com routes to tunnel demo (delete that route first)" in \
        conflict.stderr
    assert invoke(url, "tunnel", "route", "demo").exit_code == 2
    assert api.find("demo")["routes"] == ["app.example.com"]  # type: ignore[index]


def test_list_table_and_json(admin_api: tuple[FakeAdminApi, str], home: Path) -> None:
    api, url = admin_api
    invoke(url, "tunnel", "create", "demo")
    invoke(url, "tunnel", "route", "demo", "app.example.com")
    table = invoke(url, "tunnel", "list")
    assert table.exit_code == 0
    header, row = table.output.strip().splitlines()
    assert header.split() == ["ID", "NAME", "CREATED", "ROUTES", "CONNECTIONS"]
    assert row.split() == [api.find("demo")["id"], "demo",  # type: ignore[index]
                           "2025-01-01T00:00:00Z", "app.example.com", "0"]
    as_json = invoke(url, "tunnel", "list", "--output", "json")
    assert [t["name"] for t in json.loads(as_json.output)] == ["demo"]


def connect(api: FakeAdminApi, name: str) -> None:
    tunnel = api.find(name)
    assert tunnel is not None
    tunnel["connections"].append({
        "connection_id": "c1", "connector_id": "0f0f0f0f-conn", "conn_index": 2,
        "edge_id": "edge-a", "since": "2025-01-02T03:04:05Z", "client": "198.51.100.7"})


def test_info_shows_connections(admin_api: tuple[FakeAdminApi, str], home: Path) -> None:
    api, url = admin_api
    invoke(url, "tunnel", "create", "demo")
    assert "No live connections" in invoke(url, "tunnel", "info", "demo").output
    connect(api, "demo")
    result = invoke(url, "tunnel", "info", "demo")
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME:", "demo"]
    assert lines[-1].split() == ["0f0f0f0f-conn", "2", "2025-01-02T03:04:05Z", "edge-a",
                                 "198.51.100.7"]
    missing = invoke(url, "tunnel", "info", "nope")
    assert missing.exit_code == 1
    assert "no tunnel 'nope'" in missing.stderr


def test_delete_refused_while_connected_then_forced(admin_api: tuple[FakeAdminApi, str],
                                                    home: Path) -> None:
    api, url = admin_api
    invoke(url, "tunnel", "create", "demo")
    connect(api, "demo")
    refused = invoke(url, "tunnel", "delete", "demo")
    assert refused.exit_code == 1
    assert refused.stderr.strip() == (
        "error: tunnel demo has 1 live connection(s) "
        "(stop its connectors first, or pass --force to cut them)")
    assert api.find("demo") is not None
    forced = invoke(url, "tunnel", "delete", "demo", "--force")
    assert forced.exit_code == 0
    assert "Deleted tunnel demo" in forced.output
    assert api.find("demo") is None


def test_token_printed_or_written(admin_api: tuple[FakeAdminApi, str], home: Path) -> None:
    api, url = admin_api
    invoke(url, "tunnel", "create", "demo")
    tunnel_id = api.find("demo")["id"]  # type: ignore[index]
    printed = invoke(url, "tunnel", "token", "demo")
    assert printed.exit_code == 0
    decoded = decode_run_token(printed.output.strip())
    assert (decoded.tunnel_id, decoded.secret) == (tunnel_id, api.secrets_seen[-1])

    token_file, cred_file = home / "run.token", home / "demo-creds.json"
    written = invoke(url, "tunnel", "token", "demo", "--token-file", str(token_file),
                     "--cred-file", str(cred_file))
    assert written.exit_code == 0, written.output
    assert api.secrets_seen[-1] not in written.output
    assert os.stat(token_file).st_mode & 0o777 == 0o600
    assert decode_run_token(token_file.read_text()).secret == api.secrets_seen[-1]
    assert load_credentials(cred_file) == Credentials(tunnel_id, "demo", api.secrets_seen[-1],
                                                      EDGE_URL)


CONFIG = """
tunnel = "demo"
ha-connections = 2
grace-period = "5s"
[[ingress]]
hostname = "app.example.com"
service = "http://127.0.0.1:8000"
[[ingress]]
hostname = "*.example.com"
path = "^/api/"
service = "unix:/run/app.sock"
[[ingress]]
service = "http_status:404"
"""


def test_ingress_validate_and_rule(tmp_path: Path, home: Path) -> None:
    config = tmp_path / "connector.toml"
    config.write_text(CONFIG)
    valid = invoke(None, "tunnel", "ingress", "validate", "--config", str(config))
    assert valid.exit_code == 0
    assert valid.output == f"Validating rules from {config}\nOK (3 rules)\n"
    explained = invoke(None, "tunnel", "ingress", "rule", "https://x.example.com/api/v1",
                       "--config", str(config))
    assert explained.exit_code == 0
    assert explained.output.splitlines()[-1] == (
        "Matched rule #2: hostname=*.example.com, path=^/api/, service=unix:/run/app.sock")
    config.write_text(CONFIG.replace('service = "unix:/run/app.sock"', 'service = "nope"'))
    broken = invoke(None, "tunnel", "ingress", "validate", "--config", str(config))
    assert broken.exit_code == 2
    assert broken.stderr.startswith(
        f"error: {config}: ingress[1].service: 'nope' is not a service")


def test_ingress_uses_the_default_config_location(home: Path) -> None:
    (home / ".tunnelgate").mkdir()
    (home / ".tunnelgate" / "config.toml").write_text(CONFIG)
    result = invoke(None, "tunnel", "ingress", "rule", "app.example.com")
    assert result.exit_code == 0
    assert "Matched rule #1" in result.output


@pytest.fixture
def fake_supervisor(monkeypatch: pytest.MonkeyPatch) -> list[RunSettings]:
    """Stands in for connector.supervisor: records the settings, exits with code 3."""
    seen: list[RunSettings] = []

    async def run_connector(settings: RunSettings, **_kwargs: object) -> int:
        seen.append(settings)
        return 3

    module = types.ModuleType("connector.supervisor")
    module.run_connector = run_connector  # type: ignore[attr-defined]
    module.ConnectorState = object  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "connector.supervisor", module)
    monkeypatch.setattr("connector.cli.configure_logging", lambda level, fmt: None)
    return seen


def saved_credentials(home: Path, name: str = "demo") -> Credentials:
    credentials = Credentials(str(uuid.uuid4()), name, "s3cret", EDGE_URL)
    write_credentials(home / ".tunnelgate" / f"{credentials.tunnel_id}.json", credentials)
    return credentials


def test_run_with_url_and_credentials_file(home: Path, fake_supervisor: list[RunSettings]
                                           ) -> None:
    credentials = saved_credentials(home)
    result = invoke(None, "--log-level", "debug", "tunnel", "run", "--credentials-file",
                    str(home / ".tunnelgate" / f"{credentials.tunnel_id}.json"),
                    "--url", "http://127.0.0.1:3000", "--edge", "ws://127.0.0.1:7844",
                    "--edge", "ws://127.0.0.2:7844", "--ha-connections", "3",
                    "--metrics", "127.0.0.1:9300", "--grace-period", "2s")
    assert result.exit_code == 3  # run_connector's code is the process's exit code
    (settings,) = fake_supervisor
    assert settings.credentials == credentials
    assert settings.edges == ("ws://127.0.0.1:7844", "ws://127.0.0.2:7844")
    assert (settings.ha_connections, settings.metrics, settings.grace_period) == (
        3, "127.0.0.1:9300", 2.0)
    assert settings.log_level == "debug"
    (rule,) = settings.ingress.rules
    assert rule.is_catch_all
    assert rule.service == HttpService(
        "http://127.0.0.1:3000", False, "127.0.0.1", 3000)
    assert uuid.UUID(settings.connector_id).version == 4


def test_run_by_name_with_config(home: Path, tmp_path: Path,
                                 fake_supervisor: list[RunSettings]) -> None:
    saved_credentials(home, "other")
    credentials = saved_credentials(home, "demo")
    config = tmp_path / "connector.toml"
    config.write_text(CONFIG)
    result = invoke(None, "tunnel", "run", "--config", str(config))
    assert result.exit_code == 3, result.output
    (settings,) = fake_supervisor
    assert settings.credentials == credentials
    assert settings.edges == (EDGE_URL,)  # from the credentials file
    assert (settings.ha_connections, settings.grace_period) == (2, 5.0)
    assert settings.ingress.rules[-1].service == StatusService(404)


def test_run_by_name_resolved_through_the_api(admin_api: tuple[FakeAdminApi, str],
                                               home: Path,
                                               fake_supervisor: list[RunSettings]) -> None:
    api, url = admin_api
    invoke(url, "tunnel", "create", "demo")
    tunnel_id = api.find("demo")["id"]  # type: ignore[index]
    path = home / ".tunnelgate" / f"{tunnel_id}.json"
    document = json.loads(path.read_text())
    path.write_text(json.dumps({**document, "tunnel_name": "old-name"}))  # renamed since
    result = invoke(url, "tunnel", "run", "demo", "--url", "hello_world")
    assert result.exit_code == 3, result.output
    assert fake_supervisor[0].credentials.tunnel_id == tunnel_id
    assert ("GET", "/v1/tunnels/demo") in [(m, p) for m, p, _h in api.requests]


def test_run_with_token_file(home: Path, tmp_path: Path,
                             fake_supervisor: list[RunSettings]) -> None:
    tunnel_id = str(uuid.uuid4())
    token_file = tmp_path / "token"
    token_file.write_text(encode_run_token(tunnel_id, "s3cret", EDGE_URL))
    result = invoke(None, "tunnel", "run", "--token-file", str(token_file),
                    "--url", "http_status:204")
    assert result.exit_code == 3, result.output
    assert fake_supervisor[0].credentials == Credentials(tunnel_id, tunnel_id, "s3cret",
                                                         EDGE_URL)


@pytest.mark.parametrize(("args", "message"), [
    (["--url", "http://127.0.0.1:3000"], "which tunnel?"),
    (["demo", "--url", "http://127.0.0.1:3000"], "no credentials file for tunnel 'demo'"),
    (["--token-file", "/nonexistent/token", "--url", "http://x"], "cannot read"),
    (["--credentials-file", "CREDS"], "nothing to serve"),
    (["--credentials-file", "CREDS", "--url", "localhost:3000"], "--url: 'localhost:3000'"),
    (["--credentials-file", "CREDS", "--url", "http://x", "--ha-connections", "0"],
     "--ha-connections: expected a whole number"),
    (["--credentials-file", "CREDS", "--url", "http://x", "--grace-period", "soon"],
     "--grace-period: expected a duration"),
    (["--credentials-file", "CREDS", "--url", "http://x", "--edge", "http://edge"],
     "--edge: expected a ws:// or wss:// URL"),
])
def test_run_usage_errors(home: Path, fake_supervisor: list[RunSettings], args: list[str],
                          message: str) -> None:
    credentials = saved_credentials(home, "someone-else")
    path = str(home / ".tunnelgate" / f"{credentials.tunnel_id}.json")
    result = invoke(None, "tunnel", "run", *[path if a == "CREDS" else a for a in args])
    assert result.exit_code == 2
    assert re.search(re.escape(message), result.stderr), result.stderr
    assert fake_supervisor == []
