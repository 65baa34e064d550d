"""Connector config file, credentials and run tokens."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from connector.config import (
    Credentials,
    credentials_from_token,
    load_connector_config,
    load_credentials,
    parse_duration,
    write_credentials,
)
from connector.errors import ConfigError, CredentialsError
from connector.ingress import HttpService, OriginRequest, StatusService
from tunnel.auth import encode_run_token

FULL_CONFIG = """
tunnel = "demo"
credentials-file = "creds/6f1c.json"
edge = ["wss://edge-a.example.com:7844", "wss://edge-b.example.com:7844"]
ha-connections = 2
metrics = "127.0.0.1:9300"
grace-period = "1m30s"

[originRequest]
connectTimeout = "5s"
keepAliveConnections = 10

[[ingress]]
hostname = "app.example.com"
service = "http://127.0.0.1:8000"
[ingress.originRequest]
connectTimeout = "10s"
httpHostHeader = "app.internal"

[[ingress]]
hostname = "*.example.com"
path = "^/api/"
service = "unix:/run/app.sock"

[[ingress]]
service = "http_status:404"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connector.toml"
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load_connector_config(write(tmp_path, text))
    return caught.value


def test_full_config_shape(tmp_path: Path) -> None:
    config = load_connector_config(write(tmp_path, FULL_CONFIG))
    assert config.tunnel == "demo"
    assert config.credentials_file == tmp_path / "creds/6f1c.json"  # relative to the file
    assert config.edges == ("wss://edge-a.example.com:7844", "wss://edge-b.example.com:7844")
    assert (config.ha_connections, config.metrics, config.grace_period) == (
        2, "127.0.0.1:9300", 90.0)
    assert config.ingress is not None
    first, second, last = config.ingress.rules
    assert first.hostname == "app.example.com"
    assert isinstance(first.service, HttpService)
    assert first.service.port == 8000
    assert second.path_regex is not None
    assert second.path_regex.pattern == "^/api/"
    assert isinstance(second.service, HttpService)
    assert second.service.unix_path == "/run/app.sock"
    assert last.service == StatusService(404)


def test_origin_request_inherits_from_top_level(tmp_path: Path) -> None:
    config = load_connector_config(write(tmp_path, FULL_CONFIG))
    assert config.ingress is not None
    first, second, _last = config.ingress.rules
    # The rule's own value wins; the rest comes from the top level, then from the defaults.
    assert first.origin_request == OriginRequest(
        connect_timeout=10.0, keep_alive_connections=10, http_host_header="app.internal")
    assert second.origin_request == OriginRequest(connect_timeout=5.0, keep_alive_connections=10)


def test_single_edge_as_a_string(tmp_path: Path) -> None:
    config = load_connector_config(write(tmp_path, 'edge = "ws://127.0.0.1:7844"\n'))
    assert config.edges == ("ws://127.0.0.1:7844",)
    assert config.ingress is None


@pytest.mark.parametrize(
    ("text", "key_path", "fragment"),
    [
        ('tunel = "x"', "tunel", "unknown key"),
        ('edge = "https://edge"', "edge", "ws:// or wss://"),
        ('edge = ["wss://a", 3]', "edge[1]", "ws:// or wss://"),
        ("ha-connections = 0", "ha-connections", "1 to 64"),
        ('metrics = "9300"', "metrics", "HOST:PORT"),
        ('grace-period = "soon"', "grace-period", 'duration like "30s"'),
        ('[originRequest]\nconnectTimeot = "1s"', "originRequest.connectTimeot", "unknown key"),
        ('[[ingress]]\nhostname = "a.example.com"\nservice = "ftp://x"\n'
         '[[ingress]]\nservice = "hello_world"', "ingress[0].service", "is not a service"),
        ('[[ingress]]\nservice = "http_status:404"\n[[ingress]]\nhostname = "b.example.com"\n'
         'service = "https://127.0.0.1"\n[[ingress]]\nservice = "http_status:404"',
         "ingress[0]", "only the last rule"),
        ('[[ingress]]\nhostname = "a.example.com"\nservice = "hello_world"',
         "ingress[0]", "last rule must match every request"),
        ('[[ingress]]\nhostname = "a.example.com"\nservice = "http://x/sub"\n'
         '[[ingress]]\nservice = "hello_world"', "ingress[0].service", "path or query"),
        ('[[ingress]]\nhostname = "a.example.com"\n[[ingress]]\nservice = "hello_world"',
         "ingress[0].service", "missing"),
        ('[[ingress]]\nhostname = "a.*.example.com"\nservice = "hello_world"\n'
         '[[ingress]]\nservice = "hello_world"', "ingress[0].hostname", "wildcard"),
        ('[[ingress]]\nhostname = "a.example.com:8443"\nservice = "hello_world"\n'
         '[[ingress]]\nservice = "hello_world"', "ingress[0].hostname", "no port"),
        ('[[ingress]]\npath = "(unclosed"\nservice = "hello_world"\n'
         '[[ingress]]\nservice = "hello_world"', "ingress[0].path", "regular expression"),
        ('[[ingress]]\nservice = "hello_world"\nport = 3', "ingress[0].port", "unknown key"),
        ('[[ingress]]\nservice = "hello_world"\n[ingress.originRequest]\n'
         'connectTimeout = "10 seconds"', "ingress[0].originRequest.connectTimeout",
         'duration like "30s"'),
        ('[[ingress]]\nservice = "hello_world"\n[ingress.originRequest]\nnoTLSVerify = "yes"',
         "ingress[0].originRequest.noTLSVerify", "true or false"),
        ('[[ingress]]\nservice = "hello_world"\n[ingress.originRequest]\ncaPool = "nope.pem"',
         "ingress[0].originRequest.caPool", "no such file"),
        ('[[ingress]]\nservice = "http_status:99"', "ingress[0].service", "100-599"),
        ('[[ingress]]\nservice = "tcp://db.internal"', "ingress[0].service", "needs a port"),
        ("ingress = []", "ingress", "at least one rule"),
    ],
)
def test_errors_name_the_key_path(tmp_path: Path, text: str, key_path: str,
                                  fragment: str) -> None:
    error = load_error(tmp_path, text)
    assert error.key_path == key_path
    assert str(error).startswith(f"{key_path}: ")
    assert fragment in str(error)
    assert error.exit_code == 2


def test_error_names_the_file(tmp_path: Path) -> None:
    assert load_error(tmp_path, "ha-connections = 99").source == str(tmp_path / "connector.toml")


def test_invalid_toml_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    assert "not valid TOML" in str(load_error(tmp_path, "tunnel = "))
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_connector_config(tmp_path / "absent.toml")


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("1.5s", 1.5), (10, 10.0),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "s", "-1s", "1d", "1s2", True])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ConfigError, match=r"^x: "):
        parse_duration(text, "x")


CREDENTIALS = Credentials("6f1c0000-0000-4000-8000-000000000001", "demo", "s3cret",
                          "wss://edge.example.com:7844")


def test_credentials_roundtrip_with_private_mode(tmp_path: Path) -> None:
    path = tmp_path / "dir" / "creds.json"
    write_credentials(path, CREDENTIALS)
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert load_credentials(path) == CREDENTIALS
    assert "s3cret" not in repr(CREDENTIALS)


def test_world_readable_credentials_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_credentials(path, CREDENTIALS)
    path.chmod(0o644)
    with pytest.raises(CredentialsError, match="readable by every user") as caught:
        load_credentials(path)
    assert f"chmod 600 {path}" in caught.value.hint


def test_group_readable_credentials_warn(tmp_path: Path,
                                         caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "creds.json"
    write_credentials(path, CREDENTIALS)
    path.chmod(0o640)
    assert load_credentials(path) == CREDENTIALS
    assert "readable by its group" in caplog.text


@pytest.mark.parametrize(("content", "fragment"), [
    ("not json", "not JSON"),
    ('{"tunnel_id": "x"}', "tunnel_secret"),
    ('{"tunnel_id": "x", "tunnel_secret": "y", "edge_url": "http://edge"}', "ws://"),
    ("[]", "JSON object"),
])
def test_bad_credentials_files(tmp_path: Path, content: str, fragment: str) -> None:
    path = tmp_path / "creds.json"
    path.write_text(content)
    path.chmod(0o600)
    with pytest.raises(CredentialsError, match=fragment):
        load_credentials(path)


def test_write_credentials_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "creds.json"
    write_credentials(path, CREDENTIALS)
    with pytest.raises(FileExistsError):
        write_credentials(path, CREDENTIALS)


def test_credentials_from_token() -> None:
    token = encode_run_token(CREDENTIALS.tunnel_id, "s3cret", "wss://edge.example.com:7844")
    credentials = credentials_from_token(token + "\n")
    assert credentials == Credentials(CREDENTIALS.tunnel_id, CREDENTIALS.tunnel_id, "s3cret",
                                      "wss://edge.example.com:7844")
    with pytest.raises(CredentialsError, match="malformed"):
        credentials_from_token("not a token!")
