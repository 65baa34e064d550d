"""The connector's configuration: the TOML file, tunnel credentials and the run settings.

The file keeps cloudflared's key names (it uses YAML, we use TOML) so a config ports over by
changing syntax only::

    tunnel = "demo"
    credentials-file = "/etc/tunnelgate/6f1c....json"
    [[ingress]]
    hostname = "app.example.com"
    service = "http://127.0.0.1:8000"
    [ingress.originRequest]
    connectTimeout = "10s"
    [[ingress]]
    service = "http_status:404"

Validation happens here, once, so a mistake is reported at start-up with the key path that
holds it (``ingress[1].service: ...``) instead of as a failed request later. Unknown keys are
errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
import tomllib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from connector.access import parse_access_requirement
from connector.errors import ConfigError, CredentialsError
from connector.ingress import (
    IngressRule,
    IngressTable,
    OriginRequest,
    parse_rule_hostname,
    parse_service,
)
from tunnel.auth import decode_run_token
from tunnel.errors import InvalidRunToken

log = logging.getLogger(__name__)

DEFAULT_HA_CONNECTIONS = 4
DEFAULT_GRACE_PERIOD = 30.0
MAX_HA_CONNECTIONS = 64

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0,
                   "h": 3600.0}
_DURATION_HINT = 'expected a duration like "30s", "1m30s" or "500ms"'

TOP_LEVEL_KEYS = ("tunnel", "credentials-file", "edge", "ha-connections", "metrics",
                  "grace-period", "ingress", "originRequest")
RULE_KEYS = ("hostname", "path", "service", "originRequest")
# TOML key -> (OriginRequest field, kind)
ORIGIN_REQUEST_KEYS: dict[str, tuple[str, str]] = {
    "connectTimeout": ("connect_timeout", "duration"),
    "responseHeaderTimeout": ("response_header_timeout", "duration"),
    "noTLSVerify": ("no_tls_verify", "bool"),
    "originServerName": ("origin_server_name", "str"),
    "caPool": ("ca_pool", "path"),
    "httpHostHeader": ("http_host_header", "str"),
    "keepAliveTimeout": ("keep_alive_timeout", "duration"),
    "keepAliveConnections": ("keep_alive_connections", "count"),
    "access": ("access", "access"),
}


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a connector presents to the edge. The secret never appears in a repr or a log."""

    tunnel_id: str
    tunnel_name: str
    secret: str = field(repr=False)
    edge_url: str | None = None

    def to_json(self) -> str:
        """The credentials-file form (the same keys the admin API returns)."""
        return json.dumps({"tunnel_id": self.tunnel_id, "tunnel_name": self.tunnel_name,
                           "tunnel_secret": self.secret, "edge_url": self.edge_url}, indent=2)


@dataclass(frozen=True, slots=True)
class ConnectorConfig:
    """The parsed file; None means "not set here" so command-line flags can fill in."""

    path: Path
    tunnel: str | None
    credentials_file: Path | None
    edges: tuple[str, ...]
    ha_connections: int | None
    metrics: str | None
    grace_period: float | None
    origin_request: OriginRequest
    ingress: IngressTable | None


@dataclass(frozen=True, slots=True)
class RunSettings:
    """Everything ``run_connector`` needs, resolved from flags, config file and credentials."""

    credentials: Credentials
    edges: tuple[str, ...]
    ingress: IngressTable
    ha_connections: int = DEFAULT_HA_CONNECTIONS
    metrics: str | None = None
    grace_period: float = DEFAULT_GRACE_PERIOD
    connector_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    log_level: str = "info"
    log_format: str = "text"


def parse_duration(value: object, key_path: str) -> float:
    """Seconds from a Go-style duration string ("1m30s") or a plain number of seconds."""
    if isinstance(value, bool):
        raise ConfigError(key_path, _DURATION_HINT)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and value.strip():
        text = value.strip()
        matches = list(_DURATION_PART.finditer(text))
        if not matches or "".join(m.group(0) for m in matches) != text:
            raise ConfigError(key_path, f"{_DURATION_HINT}, got {value!r}")
        seconds = sum(float(m.group(1)) * _DURATION_UNITS[m.group(2)] for m in matches)
    else:
        raise ConfigError(key_path, f"{_DURATION_HINT}, got {value!r}")
    if seconds < 0:
        raise ConfigError(key_path, f"{_DURATION_HINT}; it cannot be negative")
    return seconds


def validate_edge_url(value: object, key_path: str) -> str:
    if not isinstance(value, str) or not value.startswith(("ws://", "wss://")) or \
            len(value.split("://", 1)[1].strip("/")) == 0:
        raise ConfigError(key_path, f"expected a ws:// or wss:// URL, got {value!r}")
    return value


def validate_metrics_address(value: object, key_path: str) -> str:
    if isinstance(value, str):
        host, sep, port = value.rpartition(":")
        if sep and host and port.isdigit() and 0 <= int(port) <= 65535:
            return value
    raise ConfigError(key_path, f"expected HOST:PORT such as 127.0.0.1:9300, got {value!r}")


def validate_ha_connections(value: object, key_path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or \
            not 1 <= value <= MAX_HA_CONNECTIONS:
        raise ConfigError(key_path, f"expected a whole number from 1 to {MAX_HA_CONNECTIONS}, "
                                    f"got {value!r}")
    return value


def _check_keys(table: Mapping[str, Any], allowed: tuple[str, ...], key_path: str) -> None:
    for key in table:
        if key not in allowed:
            where = f"{key_path}.{key}" if key_path else key
            raise ConfigError(where, "unknown key", hint="known keys: " + ", ".join(allowed))


def _expect_str(value: object, key_path: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key_path, f"expected a non-empty string, got {value!r}")
    return value


def parse_origin_request(raw: object, key_path: str, base: OriginRequest,
                         relative_to: Path) -> OriginRequest:
    """Apply the keys present in ``raw`` on top of ``base`` (inheritance from the top level)."""
    if not isinstance(raw, dict):
        raise ConfigError(key_path, "expected a table")
    _check_keys(raw, tuple(ORIGIN_REQUEST_KEYS), key_path)
    changes: dict[str, Any] = {}
    for key, value in raw.items():
        attr, kind = ORIGIN_REQUEST_KEYS[key]
        where = f"{key_path}.{key}"
        if kind == "access":
            changes[attr] = parse_access_requirement(value, where)
        elif kind == "duration":
            changes[attr] = parse_duration(value, where)
        elif kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(where, f"expected true or false, got {value!r}")
            changes[attr] = value
        elif kind == "count":
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(where, f"expected a whole number >= 0, got {value!r}")
            changes[attr] = value
        elif kind == "path":
            file_path = relative_to / Path(_expect_str(value, where)).expanduser()
            if not file_path.is_file():
                raise ConfigError(where, f"no such file: {file_path}")
            changes[attr] = file_path
        else:
            changes[attr] = _expect_str(value, where)
    return replace(base, **changes)


def parse_ingress(raw: object, defaults: OriginRequest, relative_to: Path) -> IngressTable:
    if not isinstance(raw, list):
        raise ConfigError("ingress", "expected an array of tables ([[ingress]])")
    rules = []
    for index, entry in enumerate(raw):
        where = f"ingress[{index}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, "expected a table")
        _check_keys(entry, RULE_KEYS, where)
        if "service" not in entry:
            raise ConfigError(f"{where}.service", "missing; every rule needs a service")
        try:
            service = parse_service(_expect_str(entry["service"], f"{where}.service"))
        except ValueError as exc:
            raise ConfigError(f"{where}.service", str(exc)) from None
        hostname = None
        if "hostname" in entry:
            try:
                hostname = parse_rule_hostname(_expect_str(entry["hostname"], f"{where}.hostname"))
            except ValueError as exc:
                raise ConfigError(f"{where}.hostname", str(exc)) from None
        path_regex = None
        if "path" in entry:
            pattern = _expect_str(entry["path"], f"{where}.path")
            try:
                path_regex = re.compile(pattern)
            except re.error as exc:
                raise ConfigError(f"{where}.path", f"not a valid regular expression: {exc}") \
                    from None
        origin_request = defaults
        if "originRequest" in entry:
            origin_request = parse_origin_request(entry["originRequest"],
                                                  f"{where}.originRequest", defaults, relative_to)
        rules.append(IngressRule(hostname, path_regex, service, origin_request))
    return IngressTable(rules)


def parse_connector_config(document: Mapping[str, Any], path: Path) -> ConnectorConfig:
    """Validate an already-parsed TOML document; ``path`` anchors relative file names."""
    _check_keys(document, TOP_LEVEL_KEYS, "")
    base_dir = path.parent
    tunnel = _expect_str(document["tunnel"], "tunnel") if "tunnel" in document else None
    credentials_file = None
    if "credentials-file" in document:
        credentials_file = base_dir / Path(
            _expect_str(document["credentials-file"], "credentials-file")).expanduser()
    edges: tuple[str, ...] = ()
    if "edge" in document:
        raw_edge = document["edge"]
        if isinstance(raw_edge, list):
            if not raw_edge:
                raise ConfigError("edge", "expected at least one URL")
            edges = tuple(validate_edge_url(e, f"edge[{i}]") for i, e in enumerate(raw_edge))
        else:
            edges = (validate_edge_url(raw_edge, "edge"),)
    ha = None
    if "ha-connections" in document:
        ha = validate_ha_connections(document["ha-connections"], "ha-connections")
    metrics = None
    if "metrics" in document:
        metrics = validate_metrics_address(document["metrics"], "metrics")
    grace = None
    if "grace-period" in document:
        grace = parse_duration(document["grace-period"], "grace-period")
    defaults = OriginRequest()
    if "originRequest" in document:
        defaults = parse_origin_request(document["originRequest"], "originRequest", defaults,
                                        base_dir)
    ingress = parse_ingress(document["ingress"], defaults, base_dir) \
        if "ingress" in document else None
    return ConnectorConfig(path=path, tunnel=tunnel, credentials_file=credentials_file,
                           edges=edges, ha_connections=ha, metrics=metrics, grace_period=grace,
                           origin_request=defaults, ingress=ingress)


def load_connector_config(path: str | os.PathLike[str]) -> ConnectorConfig:
    config_path = Path(path)
    try:
        with config_path.open("rb") as file:
            document = tomllib.load(file)
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {config_path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"{config_path} is not valid TOML: {exc}") from None
    try:
        return parse_connector_config(document, config_path)
    except ConfigError as exc:
        exc.source = str(config_path)
        raise


def credentials_from_mapping(data: object, source: str) -> Credentials:
    if not isinstance(data, dict):
        raise CredentialsError("", f"{source}: expected a JSON object")
    for key in ("tunnel_id", "tunnel_secret"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise CredentialsError(key, f"missing or empty in {source}")
    name = data.get("tunnel_name")
    edge_url = data.get("edge_url")
    if name is not None and not isinstance(name, str):
        raise CredentialsError("tunnel_name", f"expected a string in {source}")
    if edge_url is not None:
        edge_url = _credentials_edge_url(edge_url, f"edge_url in {source}")
    return Credentials(tunnel_id=data["tunnel_id"], tunnel_name=name or data["tunnel_id"],
                       secret=data["tunnel_secret"], edge_url=edge_url)


def _credentials_edge_url(value: object, where: str) -> str:
    try:
        return validate_edge_url(value, where)
    except ConfigError as exc:
        raise CredentialsError(exc.key_path, exc.problem) from None


def load_credentials(path: str | os.PathLike[str]) -> Credentials:
    """Read a credentials file; refuse one every local user can read, warn if the group can."""
    cred_path = Path(path)
    try:
        with cred_path.open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            raw = file.read()
    except OSError as exc:
        raise CredentialsError("", f"cannot read credentials file {cred_path}: {exc.strerror}",
                               hint="create one with `tunnelgate tunnel create NAME`") from None
    if mode & stat.S_IROTH:
        raise CredentialsError(
            "", f"credentials file {cred_path} is readable by every user "
                f"(mode {stat.S_IMODE(mode):04o})",
            hint=f"run: chmod 600 {cred_path}")
    if mode & stat.S_IRGRP:
        log.warning("credentials file %s is readable by its group (mode %04o); chmod 600 it",
                    cred_path, stat.S_IMODE(mode))
    try:
        data = json.loads(raw)
    except ValueError:
        raise CredentialsError("", f"credentials file {cred_path} is not JSON") from None
    return credentials_from_mapping(data, str(cred_path))


def credentials_from_token(token: str) -> Credentials:
    """Credentials from a run token (``tunnelgate tunnel token``); the name is the id."""
    try:
        decoded = decode_run_token(token.strip())
    except InvalidRunToken as exc:
        raise CredentialsError("", f"the run token is malformed: {exc}",
                               hint="get a new one with `tunnelgate tunnel token NAME`") from None
    edge_url = decoded.edge_url
    if edge_url is not None:
        edge_url = _credentials_edge_url(edge_url, "the run token's edge URL")
    return Credentials(tunnel_id=decoded.tunnel_id, tunnel_name=decoded.tunnel_id,
                       secret=decoded.secret, edge_url=edge_url)


def write_credentials(path: Path, credentials: Credentials) -> None:
    """Create the file with mode 0600 from the start, so the secret is never world-readable."""
    write_private_file(path, credentials.to_json() + "\n")


def write_private_file(path: Path, text: str) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)

