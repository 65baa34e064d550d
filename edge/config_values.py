"""How single values of the edge config are read and checked, whatever section they sit in.

``edge.config`` decides which sections and keys exist and how they relate; this module holds
what those sections share: a table reader that tracks key paths and unknown keys, and the
parsers for durations, listen addresses, host names and the auth domain. They live apart so the
section parsing reads as a list of keys, and so other commands that take a duration or an
address on their own get the same checks and the same key-path messages. ``edge.config``
re-exports the public names.

Errors::

    EdgeError (edge.errors)
    └── ConfigError      key_path + message; the CLI exits with code 2
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from edge.errors import EdgeError
from edge.store import InvalidInput, normalize_hostname

__all__ = [
    "ConfigError",
    "ConfigTable",
    "ListenAddress",
    "describe_value",
    "parse_auth_domain",
    "parse_duration",
    "parse_listen_address",
    "resolve_path",
]

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class ConfigError(EdgeError):
    """A config value is missing, malformed or contradicts another one."""

    code = "config_error"
    status = 400

    def __init__(self, key_path: str, message: str, *, hint: str = "") -> None:
        full = f"{key_path}: {message}" if key_path else message
        super().__init__(full, hint=hint)
        self.key_path = key_path


@dataclass(frozen=True)
class ListenAddress:
    """Where one listener binds; port 0 lets the OS choose (tests)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


class ConfigTable:
    """One TOML table being read: remembers its key path and which keys were used."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a table, got {describe_value(data)}")
        self.data: dict[str, object] = data
        self.path = path
        self.used: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str) -> object | None:
        self.used.add(key)
        return self.data.get(key)

    def table(self, key: str) -> ConfigTable:
        value = self.raw(key)
        return ConfigTable({} if value is None else value, self.key_path(key))

    def string(self, key: str, default: str) -> str:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(self.key_path(key), f"expected a string, got {describe_value(value)}")
        return value

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(
                self.key_path(key), f"expected an integer, got {describe_value(value)}"
            )
        if value < minimum:
            raise ConfigError(self.key_path(key), f"must be at least {minimum}, got {value}")
        return value

    def duration(self, key: str, default: float) -> float:
        value = self.raw(key)
        if value is None:
            return default
        return parse_duration(value, key_path=self.key_path(key))

    def string_list(self, key: str) -> list[str]:
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(self.key_path(key), f"expected a list, got {describe_value(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(
                    f"{self.key_path(key)}[{index}]",
                    f"expected a string, got {describe_value(item)}",
                )
        return [str(item) for item in value]

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(
                self.key_path(unknown[0]),
                "unknown key",
                hint="check the spelling against the commented edge.toml that init writes",
            )


def describe_value(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def parse_duration(value: object, *, key_path: str = "") -> float:
    """Parse "250ms", "30s", "5m", "1h" or a sum such as "1m30s" into positive seconds."""
    expected = 'expected a duration like "30s", "5m", "1h" or "250ms"'
    if not isinstance(value, str):
        raise ConfigError(key_path, f"{expected}, got {describe_value(value)}")
    text = value.strip()
    position = 0
    total = 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ConfigError(key_path, f'{expected}, got "{value}"')
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not text:
        raise ConfigError(key_path, f'{expected}, got "{value}"')
    if total <= 0:
        raise ConfigError(key_path, f'must be longer than zero, got "{value}"')
    return total


def parse_listen_address(value: str, *, key_path: str = "") -> ListenAddress:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6); the host must be written out."""
    expected = 'expected "HOST:PORT" such as "127.0.0.1:8080" or "[::1]:8080"'
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ConfigError(key_path, f'{expected}, got "{value}"')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(key_path, f'"{host}" is not an IPv6 address') from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ConfigError(key_path, f'{expected}, got "{value}"')
        if ":" in host:
            raise ConfigError(key_path, f'put an IPv6 host in brackets, like "[{host}]:PORT"')
        if not _is_ip(host) and not _is_dns_name(host):
            raise ConfigError(key_path, f'"{host}" is neither an IP address nor a host name')
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(key_path, f'port must be a number from 0 to 65535, got "{port_text}"')
    return ListenAddress(host, int(port_text))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_dns_name(text: str) -> bool:
    labels = text.rstrip(".").split(".")
    return len(text) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def resolve_path(base: Path, value: str) -> Path:
    return (base / Path(value).expanduser()).resolve()


def parse_auth_domain(value: str, *, key_path: str = "access.auth_domain") -> str:
    """``host`` or ``host:port`` in canonical form (lower case, no trailing dot).

    A port is allowed so that an edge serving plain HTTP on a loopback port (the demo, tests)
    can name its own auth domain, e.g. ``auth.localhost:8080``.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = value, ""
    try:
        normalized = normalize_hostname(host, allow_wildcard=False)
    except InvalidInput as exc:
        raise ConfigError(key_path, exc.message, hint=exc.hint) from None
    if not sep:
        return normalized
    if not port_text.isdigit() or not 0 < int(port_text) < 65536 or port_text.startswith("0"):
        raise ConfigError(key_path, f"invalid port {port_text!r}", hint="write HOST or HOST:PORT")
    return f"{normalized}:{int(port_text)}"
