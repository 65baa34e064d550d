"""``tunnelgate service install|uninstall``: run the connector as a hardened systemd service.

What install writes (under ``--root``, which defaults to ``/``)::

    etc/systemd/system/tunnelgate-connector.service   0644  the unit, ExecStart = this install
    etc/tunnelgate/config.toml                        0644  the connector config (no secrets)
    etc/tunnelgate/credentials.json                   0600  the tunnel credential

The credential never appears in the unit or in argv: systemd copies it into the service's
private credentials directory (``LoadCredential=``), readable only by the service's dynamic
user, and ``ExecStart`` names that directory with the ``%d`` specifier. Files are owned by root
when installing as root; an unprivileged ``--root`` install (packaging, tests) leaves them to
the caller. Install never runs ``systemctl`` itself: it prints the commands, because an
operator (or a test writing into a folder) decides when the service starts.

The unit text is rendered here rather than read from the repository's ``systemd/`` folder,
which is not part of the installed package; the committed ``systemd/tunnelgate-connector.
service`` is this same text with ``/usr/bin/env tunnelgate`` as the command, and the tests
keep the two identical.

Errors: ``ServiceInstallError`` (a ``ConnectorError``, exit code 1) names the file and a hint.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from connector.config import load_connector_config, load_credentials, write_private_file
from connector.errors import ConnectorError

UNIT_NAME = "tunnelgate-connector.service"
UNIT_DIR = Path("etc/systemd/system")
CONFIG_DIR = Path("etc/tunnelgate")
CONFIG_NAME = "config.toml"
CREDENTIAL_NAME = "credentials.json"
DEFAULT_COMMAND = "/usr/bin/env tunnelgate"
EXIT_PERMANENT_REFUSAL = 3
EXIT_CONFIG_ERROR = 2
WATCHDOG_SECONDS = 30
STOP_TIMEOUT_SECONDS = 45  # above the default 30 s drain grace period

UNIT_TEMPLATE = """\
# tunnelgate connector: keeps a tunnel's HA connections to the edge and serves its origins.
# Installed by `tunnelgate service install`; see systemd/README.md for what each line is for.

[Unit]
Description=tunnelgate connector (outbound tunnel to the edge)
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={command} tunnel run \\
    --config /{config_dir}/{config_name} --credentials-file %d/{credential_name}
ExecReload=/bin/kill -HUP $MAINPID
# READY=1 comes after the first registered connection, which may take a while when the edge
# is down at boot; the watchdog (pinged after a health check) guards a wedged process.
TimeoutStartSec=0
WatchdogSec={watchdog}s
TimeoutStopSec={stop_timeout}s
KillMode=mixed
Restart=on-failure
RestartSec=5s
# 3: the edge refused the tunnel for good (deleted, bad credential); 2: a config error.
RestartPreventExitStatus={permanent} {config_error}
LoadCredential={credential_name}:/{config_dir}/{credential_name}

DynamicUser=yes
UMask=0077
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
StateDirectory=tunnelgate-connector
StateDirectoryMode=0700

[Install]
WantedBy=multi-user.target
"""


class ServiceInstallError(ConnectorError):
    """A file could not be read, validated or written; nothing half-installed is left."""


@dataclass(frozen=True)
class ServiceFiles:
    """Where the three files go under a root."""

    root: Path

    @property
    def unit(self) -> Path:
        return self.root / UNIT_DIR / UNIT_NAME

    @property
    def config(self) -> Path:
        return self.root / CONFIG_DIR / CONFIG_NAME

    @property
    def credentials(self) -> Path:
        return self.root / CONFIG_DIR / CREDENTIAL_NAME

    def all(self) -> tuple[Path, Path, Path]:
        return self.unit, self.config, self.credentials


def render_unit(command: str = DEFAULT_COMMAND) -> str:
    """The connector unit; ``command`` is how ExecStart finds ``tunnelgate``."""
    return UNIT_TEMPLATE.format(
        command=command, config_dir=CONFIG_DIR, config_name=CONFIG_NAME,
        credential_name=CREDENTIAL_NAME, watchdog=WATCHDOG_SECONDS,
        stop_timeout=STOP_TIMEOUT_SECONDS, permanent=EXIT_PERMANENT_REFUSAL,
        config_error=EXIT_CONFIG_ERROR)


def installed_command() -> str:
    """The absolute path of this installation's ``tunnelgate`` script, for ExecStart."""
    candidate = Path(sysconfig.get_path("scripts")) / "tunnelgate"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return shlex.quote(str(candidate))
    found = shutil.which("tunnelgate")
    if found:
        return shlex.quote(str(Path(found).resolve()))
    raise ServiceInstallError(
        "cannot find the tunnelgate command to put in ExecStart",
        hint="install tunnelgate (pip install .) so that `tunnelgate` is on PATH")


def systemctl_commands() -> list[str]:
    return ["systemctl daemon-reload", f"systemctl enable --now {UNIT_NAME}",
            f"systemctl status {UNIT_NAME}"]


def _owned_by_root_if_possible(path: Path) -> None:
    if os.geteuid() == 0:
        os.chown(path, 0, 0)


def _write_public(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text, encoding="utf-8")
    os.chmod(partial, 0o644)
    _owned_by_root_if_possible(partial)
    partial.replace(path)


def install_service(*, root: Path, config_file: Path, credentials_file: Path | None,
                    command: str | None = None) -> ServiceFiles:
    """Validate the config and the credential, then write the unit, config and credential.

    ``credentials_file`` defaults to the config's ``credentials-file``. Existing files are
    replaced (an upgrade re-runs install); the credential is written 0600 from its first byte.
    """
    config = load_connector_config(config_file)
    if config.ingress is None:
        raise ServiceInstallError(f"{config_file} has no [[ingress]] rules",
                                  hint="a service needs rules; check with "
                                       "`tunnelgate tunnel ingress validate --config FILE`")
    source = credentials_file or config.credentials_file
    if source is None:
        raise ServiceInstallError("which tunnel credential should the service use?",
                                  hint="pass --credentials-file or set credentials-file in "
                                       "the config")
    credentials = load_credentials(source)
    files = ServiceFiles(root)
    unit_text = render_unit(command or installed_command())
    try:
        for directory in (files.unit.parent, files.config.parent):
            directory.mkdir(parents=True, exist_ok=True, mode=0o755)
        _write_public(files.config, config_file.read_text(encoding="utf-8"))
        files.credentials.unlink(missing_ok=True)
        write_private_file(files.credentials, credentials.to_json() + "\n")
        _owned_by_root_if_possible(files.credentials)
        _write_public(files.unit, unit_text)
    except OSError as exc:
        for path in files.all():
            path.unlink(missing_ok=True)
        raise ServiceInstallError(
            f"cannot write {exc.filename or root}: {exc.strerror or exc}",
            hint="run as root, or pass --root DIR to install into a folder") from None
    return files


def uninstall_service(*, root: Path) -> list[Path]:
    """Remove the files install wrote; returns the ones that were there."""
    removed = []
    for path in ServiceFiles(root).all():
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise ServiceInstallError(f"cannot remove {path}: {exc.strerror or exc}",
                                      hint="run as root") from None
        removed.append(path)
    return removed


__all__ = [
    "DEFAULT_COMMAND",
    "UNIT_NAME",
    "ServiceFiles",
    "ServiceInstallError",
    "install_service",
    "installed_command",
    "render_unit",
    "systemctl_commands",
    "uninstall_service",
]
