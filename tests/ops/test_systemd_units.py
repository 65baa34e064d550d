"""The systemd units (committed and installed) and `tunnelgate service install|uninstall`."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from connector.cli import cli
from connector.config import Credentials, load_credentials, write_credentials
from connector.service import UNIT_NAME, render_unit

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "systemd"
INSTALLED_UNIT = Path("etc/systemd/system") / UNIT_NAME
INSTALLED_CONFIG = Path("etc/tunnelgate/config.toml")
INSTALLED_CREDENTIAL = Path("etc/tunnelgate/credentials.json")
SECRET = "installed-secret-0123456789abcdef"
CONFIG = """\
tunnel = "home"
credentials-file = "home.json"
metrics = "127.0.0.1:9300"
[[ingress]]
hostname = "app.example.test"
service = "http://127.0.0.1:8000"
[[ingress]]
service = "http_status:404"
"""


def systemd_analyze_verify(unit: Path) -> None:
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.fail("systemd-analyze is missing; install it with `apt-get install systemd`")
    result = subprocess.run([binary, "verify", str(unit)], capture_output=True, text=True,
                            check=False)
    # verify also reports problems of unrelated units on the host; ours must be clean.
    ours = [line for line in (result.stdout + result.stderr).splitlines()
            if unit.name in line or str(unit) in line]
    assert result.returncode == 0, result.stderr
    assert ours == [], "\n".join(ours)


def unit_directives(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (repeated keys keep every value), continuations joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    joined = text.replace("\\\n", " ")
    for raw in joined.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        key, _, val = line.partition("=")
        current.setdefault(key, []).append(val)
    return sections


@pytest.mark.parametrize("name", ["tunnelgate-edge.service", "tunnelgate-connector.service"])
def test_committed_units_pass_systemd_analyze_verify(name: str) -> None:
    systemd_analyze_verify(UNITS / name)


def test_committed_connector_unit_is_what_install_renders() -> None:
    assert (UNITS / UNIT_NAME).read_text() == render_unit()


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "DynamicUser": "yes",
    "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
}


@pytest.mark.parametrize(
    ("name", "capabilities", "prevented"),
    [
        ("tunnelgate-edge.service", "CAP_NET_BIND_SERVICE", {"2"}),
        ("tunnelgate-connector.service", "", {"2", "3"}),
    ],
)
def test_units_are_notify_services_with_watchdog_and_hardening(
    name: str, capabilities: str, prevented: set[str]
) -> None:
    service = unit_directives((UNITS / name).read_text())["Service"]
    assert service["Type"] == ["notify"]
    assert service["WatchdogSec"] == ["30s"]
    for key, expected in HARDENING.items():
        assert service[key] == [expected], key
    assert service["CapabilityBoundingSet"] == [capabilities]
    assert set(service["RestartPreventExitStatus"][0].split()) == prevented
    assert "StateDirectory" in service
    # Secrets never in argv: the command line names files, never values.
    exec_start = service["ExecStart"][0]
    assert "secret" not in exec_start.lower().replace("credentials-file", "")
    assert "token" not in exec_start.lower()


def test_connector_unit_loads_its_credential_and_reads_it_from_the_credentials_dir() -> None:
    service = unit_directives(render_unit())["Service"]
    assert service["LoadCredential"] == ["credentials.json:/etc/tunnelgate/credentials.json"]
    assert "--credentials-file %d/credentials.json" in service["ExecStart"][0]
    assert "--config /etc/tunnelgate/config.toml" in service["ExecStart"][0]


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, Credentials]:
    folder = tmp_path / "source"
    folder.mkdir()
    (folder / "config.toml").write_text(CONFIG)
    credentials = Credentials("6f1c0000-0000-4000-8000-000000000001", "home", SECRET,
                              "wss://edge.example.test:7844")
    write_credentials(folder / "home.json", credentials)
    return folder, credentials


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_service_install_writes_unit_config_and_credential_with_modes(
    tmp_path: Path, source: tuple[Path, Credentials]
) -> None:
    folder, credentials = source
    root = tmp_path / "root"
    result = CliRunner().invoke(cli, ["service", "install", "--root", str(root), "--config",
                                      str(folder / "config.toml")])
    assert result.exit_code == 0, result.output
    unit, config, credential = (root / INSTALLED_UNIT, root / INSTALLED_CONFIG,
                                root / INSTALLED_CREDENTIAL)
    assert (mode(unit), mode(config), mode(credential)) == (0o644, 0o644, 0o600)
    for path in (unit, config, credential):
        assert path.stat().st_uid == os.geteuid()
    assert config.read_text() == CONFIG
    assert load_credentials(credential) == credentials
    assert SECRET not in unit.read_text()
    # ExecStart names this very installation's console script, so the unit runs it.
    script = Path(sys.executable).parent / "tunnelgate"
    assert unit.read_text() == render_unit(str(script))
    assert "systemctl daemon-reload" in result.output
    assert f"systemctl enable --now {UNIT_NAME}" in result.output
    assert "systemctl was not run" in result.output
    assert SECRET not in result.output
    systemd_analyze_verify(unit)


def test_service_install_takes_an_explicit_credentials_file(
    tmp_path: Path, source: tuple[Path, Credentials]
) -> None:
    folder, _ = source
    other = Credentials("6f1c0000-0000-4000-8000-000000000002", "other", "x" * 40, None)
    write_credentials(folder / "other.json", other)
    root = tmp_path / "root"
    result = CliRunner().invoke(cli, ["service", "install", "--root", str(root), "--config",
                                      str(folder / "config.toml"), "--credentials-file",
                                      str(folder / "other.json")])
    assert result.exit_code == 0, result.output
    assert load_credentials(root / INSTALLED_CREDENTIAL) == other


def test_service_install_refuses_bad_input_and_writes_nothing(
    tmp_path: Path, source: tuple[Path, Credentials]
) -> None:
    folder, _ = source
    root = tmp_path / "root"
    (folder / "norules.toml").write_text('tunnel = "home"\ncredentials-file = "home.json"\n')
    no_rules = CliRunner().invoke(cli, ["service", "install", "--root", str(root), "--config",
                                        str(folder / "norules.toml")])
    assert no_rules.exit_code == 1
    assert "no [[ingress]] rules" in no_rules.output
    (folder / "nocreds.toml").write_text(CONFIG.replace('credentials-file = "home.json"\n', ""))
    no_credentials = CliRunner().invoke(cli, ["service", "install", "--root", str(root),
                                              "--config", str(folder / "nocreds.toml")])
    assert no_credentials.exit_code == 1
    assert "--credentials-file" in no_credentials.output
    (folder / "typo.toml").write_text(CONFIG + "ha-connectoins = 2\n")
    typo = CliRunner().invoke(cli, ["service", "install", "--root", str(root), "--config",
                                    str(folder / "typo.toml")])
    assert typo.exit_code == 2
    assert "ha-connectoins" in typo.output
    assert not root.exists()


def test_service_uninstall_removes_what_install_wrote(
    tmp_path: Path, source: tuple[Path, Credentials]
) -> None:
    folder, _ = source
    root = tmp_path / "root"
    runner = CliRunner()
    assert runner.invoke(cli, ["service", "install", "--root", str(root), "--config",
                               str(folder / "config.toml")]).exit_code == 0
    (root / "etc/tunnelgate/keep.txt").write_text("not ours")
    result = runner.invoke(cli, ["service", "uninstall", "--root", str(root)])
    assert result.exit_code == 0, result.output
    for path in (INSTALLED_UNIT, INSTALLED_CONFIG, INSTALLED_CREDENTIAL):
        assert not (root / path).exists()
        assert f"Removed {root / path}" in result.output
    assert (root / "etc/tunnelgate/keep.txt").read_text() == "not ours"
    again = runner.invoke(cli, ["service", "uninstall", "--root", str(root)])
    assert again.exit_code == 0
    assert "Nothing to remove" in again.output
