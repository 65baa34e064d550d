from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from edge.cli import CONFIG_TEMPLATE
from edge.config import (
    ConfigError,
    EdgeConfig,
    ListenAddress,
    load_edge_config,
    parse_duration,
    parse_listen_address,
)

FULL = """
[edge]
id = "edge-paris.1"
state_dir = "var/state"

[listen]
public = "127.0.0.1:0"
public_tls = "[::1]:0"
tunnel = "localhost:7000"
admin = "127.0.0.1:7001"
ops = ""

[tunnel]
public_url = "wss://edge.example.com:7844"
heartbeat_interval = "2s"
heartbeat_timeout = "1m30s"

[http]
max_header_bytes = 16384
max_headers = 50
header_timeout = "250ms"
idle_timeout = "5m"
max_body_bytes = 1048576
trusted_proxies = ["10.0.0.0/8", "2001:db8::/32", "192.0.2.1"]

[store]
url = "sqlite:db/edge.sqlite"

[[tls.certificate]]
cert_file = "certs/a.pem"
key_file = "certs/a.key"

[[tls.certificate]]
cert_file = "/abs/b.pem"
key_file = "/abs/b.key"

[access]
auth_domain = "Auth.Example.COM."
"""


def write(tmp_path: Path, text: str, name: str = "edge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def load_text(tmp_path: Path, text: str) -> EdgeConfig:
    return load_edge_config(write(tmp_path, text))


def config_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        load_text(tmp_path, text)
    return str(caught.value)


def test_every_key_is_read(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir()
    (tmp_path / "certs" / "a.pem").write_text("cert")
    (tmp_path / "certs" / "a.key").write_text("key")
    abs_dir = tmp_path / "abs"
    abs_dir.mkdir()
    (abs_dir / "b.pem").write_text("cert")
    (abs_dir / "b.key").write_text("key")
    config = load_text(tmp_path, FULL.replace("/abs/", f"{abs_dir}/"))

    assert config.config_dir == tmp_path.resolve()
    assert config.edge.id == "edge-paris.1"
    assert config.edge.state_dir == (tmp_path / "var" / "state").resolve()
    assert config.listen.public == "127.0.0.1:0"
    assert config.listen.public_tls == "[::1]:0"
    assert config.listen.address("public_tls") == ListenAddress("::1", 0)
    assert config.listen.tunnel == "localhost:7000"
    assert config.listen.admin == "127.0.0.1:7001"
    assert config.listen.ops == ""
    assert config.listen.address("ops") is None
    assert config.tunnel.public_url == "wss://edge.example.com:7844"
    assert config.tunnel_public_url() == "wss://edge.example.com:7844"
    assert config.tunnel.heartbeat_interval == 2.0
    assert config.tunnel.heartbeat_timeout == 90.0
    assert config.http.max_header_bytes == 16384
    assert config.http.max_headers == 50
    assert config.http.header_timeout == 0.25
    assert config.http.idle_timeout == 300.0
    assert config.http.max_body_bytes == 1048576
    assert config.http.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("192.0.2.1/32"),
    )
    assert config.store.url == "sqlite:db/edge.sqlite"
    assert config.store_path() == (tmp_path / "db" / "edge.sqlite").resolve()
    certs = config.tls.certificates
    assert [c.cert_file for c in certs] == [
        (tmp_path / "certs" / "a.pem").resolve(),
        abs_dir / "b.pem",
    ]
    assert [c.key_file for c in certs] == [
        (tmp_path / "certs" / "a.key").resolve(),
        abs_dir / "b.key",
    ]
    assert config.access.auth_domain == "auth.example.com"


def test_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    config = load_text(tmp_path, "")
    assert config.edge.id == "edge-1"
    assert config.edge.state_dir == tmp_path.resolve()
    assert config.store_path() == tmp_path.resolve() / "tunnelgate.db"
    assert config.listen.public == "127.0.0.1:8080"
    assert config.listen.public_tls == ""
    assert config.listen.tunnel == "127.0.0.1:7844"
    assert config.listen.admin == "127.0.0.1:7845"
    assert config.listen.ops == "127.0.0.1:7846"
    assert config.tunnel_public_url() == "ws://127.0.0.1:7844"
    assert (config.tunnel.heartbeat_interval, config.tunnel.heartbeat_timeout) == (5.0, 15.0)
    assert config.http.max_header_bytes == 32768
    assert config.http.max_headers == 100
    assert (config.http.header_timeout, config.http.idle_timeout) == (10.0, 60.0)
    assert config.http.max_body_bytes == 0
    assert config.http.trusted_proxies == ()
    assert config.store.url == ""
    assert config.tls.certificates == ()
    assert config.access.auth_domain == ""


def test_the_commented_template_is_a_valid_config_with_the_same_defaults(tmp_path: Path) -> None:
    text = CONFIG_TEMPLATE.format(
        public="127.0.0.1:8080",
        tunnel="127.0.0.1:7844",
        admin="127.0.0.1:7845",
        ops="127.0.0.1:7846",
        auth_domain="",
    )
    assert load_text(tmp_path, text) == load_text(tmp_path, "")


def test_relative_paths_do_not_depend_on_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "tunnelgate"
    folder.mkdir(parents=True)
    path = write(folder, '[edge]\nstate_dir = "../../var"\n')
    monkeypatch.chdir(tmp_path / "etc")
    config = load_edge_config(Path("tunnelgate") / "edge.toml")
    assert config.edge.state_dir == (tmp_path / "var").resolve()
    assert config.config_dir == path.parent.resolve()


@pytest.mark.parametrize(
    ("text", "expected_start"),
    [
        ("[edge]\nname = 'x'\n", "edge.name: unknown key"),
        ("[listen]\npublik = '127.0.0.1:1'\n", "listen.publik: unknown key"),
        ("[tunnel]\nheartbeat = '5s'\n", "tunnel.heartbeat: unknown key"),
        ("[http]\nmax_header = 1\n", "http.max_header: unknown key"),
        ("[store]\npath = 'x'\n", "store.path: unknown key"),
        ("[access]\ndomain = 'a.b'\n", "access.domain: unknown key"),
        ("[tls]\ncert = 1\n", "tls.cert: unknown key"),
        (
            "[[tls.certificate]]\ncert_file = 'a'\nkey_file = 'b'\nchain = 'c'\n",
            "tls.certificate[0]",
        ),
        ("[extra]\n", "extra: unknown key"),
        ("edge = 3\n", "edge: expected a table"),
    ],
)
def test_unknown_or_misplaced_keys_name_their_path(
    tmp_path: Path, text: str, expected_start: str
) -> None:
    (tmp_path / "a").write_text("x")
    (tmp_path / "b").write_text("x")
    assert config_error(tmp_path, text).startswith(expected_start)


@pytest.mark.parametrize("value", ["ten", "10", "10 s", "-5s", "0s", "5d", "", "1.5.2s", "s"])
def test_bad_durations_are_refused_with_the_key_path(tmp_path: Path, value: str) -> None:
    message = config_error(tmp_path, f'[http]\nheader_timeout = "{value}"\n')
    assert message.startswith("http.header_timeout: ")


def test_a_duration_must_be_a_string(tmp_path: Path) -> None:
    message = config_error(tmp_path, "[tunnel]\nheartbeat_interval = 5\n")
    assert message.startswith('tunnel.heartbeat_interval: expected a duration like "30s"')


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("1m30s", 90.0), ("1.5s", 1.5)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "value",
    [
        "8080",
        ":8080",
        "127.0.0.1",
        "127.0.0.1:",
        "127.0.0.1:65536",
        "127.0.0.1:http",
        "::1:8080",
        "[::1]8080",
        "[nothost]:80",
        "bad_host:80",
        "-bad.example:80",
    ],
)
def test_bad_listen_addresses_are_refused_with_the_key_path(tmp_path: Path, value: str) -> None:
    message = config_error(tmp_path, f'[listen]\nadmin = "{value}"\n')
    assert message.startswith("listen.admin: ")


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1:0", ListenAddress("127.0.0.1", 0)),
        ("[::1]:0", ListenAddress("::1", 0)),
        ("0.0.0.0:443", ListenAddress("0.0.0.0", 443)),
        ("edge.internal:7844", ListenAddress("edge.internal", 7844)),
    ],
)
def test_listen_addresses(text: str, address: ListenAddress) -> None:
    parsed = parse_listen_address(text)
    assert parsed == address
    assert str(parsed) == text


def test_the_tunnel_listener_cannot_be_disabled(tmp_path: Path) -> None:
    assert config_error(tmp_path, '[listen]\ntunnel = ""\n').startswith("listen.tunnel: ")


def test_two_listeners_cannot_share_an_address(tmp_path: Path) -> None:
    message = config_error(tmp_path, '[listen]\nops = "127.0.0.1:7845"\n')
    assert message == "listen.ops: 127.0.0.1:7845 is already used by listen.admin"


def test_port_zero_listeners_may_repeat(tmp_path: Path) -> None:
    text = '[listen]\npublic = "127.0.0.1:0"\ntunnel = "127.0.0.1:0"\nadmin = "127.0.0.1:0"\n'
    assert load_text(tmp_path, text).listen.admin == "127.0.0.1:0"


@pytest.mark.parametrize(
    ("text", "expected_start"),
    [
        ('[edge]\nid = "has space"\n', "edge.id: "),
        ("[edge]\nid = 5\n", "edge.id: expected a string, got int 5"),
        ("[http]\nmax_headers = 0\n", "http.max_headers: must be at least 1"),
        ("[http]\nmax_headers = true\n", "http.max_headers: expected an integer"),
        ("[http]\nmax_header_bytes = 100\n", "http.max_header_bytes: must be at least 1024"),
        ("[http]\nmax_body_bytes = -1\n", "http.max_body_bytes: must be at least 0"),
        ('[http]\ntrusted_proxies = "10.0.0.0/8"\n', "http.trusted_proxies: expected a list"),
        ('[http]\ntrusted_proxies = ["10.0.0.1/8"]\n', "http.trusted_proxies[0]: "),
        ('[http]\ntrusted_proxies = ["ok", 3]\n', "http.trusted_proxies[1]: expected a string"),
        ('[tunnel]\npublic_url = "http://edge"\n', "tunnel.public_url: "),
        ('[tunnel]\npublic_url = "wss://"\n', "tunnel.public_url: "),
        ('[tunnel]\nheartbeat_timeout = "5s"\n', "tunnel.heartbeat_timeout: must be longer"),
        ('[store]\nurl = "postgresql://u:pw@db/edge"\n', "store.url: a password does not belong"),
        ('[store]\nurl = "mysql://db"\n', "store.url: "),
        ('[store]\nurl = "sqlite:"\n', "store.url: "),
        ('[access]\nauth_domain = "*.example.com"\n', "access.auth_domain: "),
        ('[access]\nauth_domain = "auth example"\n', "access.auth_domain: "),
        ('[access]\nauth_domain = "auth.example.com:99999"\n', "access.auth_domain: "),
        ('[listen]\npublic_tls = "127.0.0.1:0"\n', "listen.public_tls: "),
        (
            "[[tls.certificate]]\ncert_file = 'missing.pem'\nkey_file = 'x'\n",
            "tls.certificate[0].cert_file: no such file",
        ),
        ("[[tls.certificate]]\nkey_file = 'x'\n", "tls.certificate[0].cert_file: is required"),
        ("[tls]\ncertificate = 3\n", "tls.certificate: "),
    ],
)
def test_invalid_values_name_their_key_path(tmp_path: Path, text: str, expected_start: str) -> None:
    assert config_error(tmp_path, text).startswith(expected_start)


def test_toml_syntax_errors_and_missing_files_are_config_errors(tmp_path: Path) -> None:
    assert config_error(tmp_path, "[edge\n").startswith("invalid TOML: ")
    with pytest.raises(ConfigError, match="cannot read"):
        load_edge_config(tmp_path / "absent.toml")
