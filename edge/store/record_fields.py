"""Reading one field of a configuration table, with the key path in every error.

The Access records (:mod:`edge.store.access_records`) are built from tables that arrive as
TOML (``tunnelgate-edge apply``) or JSON (the admin API). These readers check one field each
and raise :class:`edge.store.InvalidInput` whose message starts with the field's key path
(``app[0].session_duration: ...``), so every record reports mistakes the same way.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from edge.store import InvalidInput

__all__ = [
    "MAX_SERVICE_TOKEN_DURATION",
    "check_keys",
    "describe",
    "format_duration",
    "invalid",
    "join_path",
    "parse_access_name",
    "parse_seconds",
    "read_bool",
    "read_int",
    "read_optional_string",
    "read_string",
]

MAX_SERVICE_TOKEN_DURATION = 100 * 366 * 24 * 3600
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def invalid(key_path: str, problem: str, *, code: str, hint: str = "") -> InvalidInput:
    return InvalidInput(problem, code=code, hint=hint, key_path=key_path)


def join_path(key_path: str, key: str) -> str:
    return f"{key_path}.{key}" if key_path else key


def describe(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, Mapping):
        return "a table"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def check_keys(
    obj: object, key_path: str, allowed: frozenset[str], *, code: str
) -> Mapping[str, object]:
    if not isinstance(obj, Mapping):
        raise invalid(key_path, f"expected a table, got {describe(obj)}", code=code)
    for key in obj:
        if key not in allowed:
            raise invalid(
                join_path(key_path, str(key)),
                "unknown key",
                code=code,
                hint=f"known keys here: {', '.join(sorted(allowed))}",
            )
    return obj


def read_string(obj: Mapping[str, object], key: str, key_path: str, *, code: str) -> str:
    value = obj.get(key)
    path = join_path(key_path, key)
    if value is None:
        raise invalid(path, "missing", code=code)
    if not isinstance(value, str) or not value.strip():
        raise invalid(path, f"expected a non-empty string, got {describe(value)}", code=code)
    if value != value.strip() or any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise invalid(path, "unexpected whitespace or control characters", code=code)
    return value


def read_optional_string(
    obj: Mapping[str, object], key: str, key_path: str, default: str, *, code: str
) -> str:
    return default if obj.get(key) is None else read_string(obj, key, key_path, code=code)


def read_bool(
    obj: Mapping[str, object], key: str, key_path: str, default: bool, *, code: str
) -> bool:
    value = obj.get(key, default)
    if not isinstance(value, bool):
        raise invalid(
            join_path(key_path, key), f"expected true or false, got {describe(value)}", code=code
        )
    return value


def read_int(
    obj: Mapping[str, object],
    key: str,
    key_path: str,
    default: int,
    *,
    low: int,
    high: int,
    code: str,
) -> int:
    value = obj.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise invalid(
            join_path(key_path, key),
            f"expected a whole number from {low} to {high}, got {describe(value)}",
            code=code,
        )
    return value


def parse_access_name(value: object, key_path: str, *, what: str) -> str:
    """An application, IdP or service-token name: safe in URLs, logs and policies."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise invalid(
            key_path,
            f"invalid {what} name {describe(value)}",
            code="invalid_name",
            hint='use 1-63 letters, digits, "_", "." or "-", starting with a letter or digit',
        )
    return value


def parse_seconds(
    value: object, key_path: str, *, low: int = 1, high: int = MAX_SERVICE_TOKEN_DURATION
) -> int:
    """A duration as whole seconds: a number of seconds, or a string like "24h" or "90m"."""
    from edge.config import ConfigError, parse_duration

    if isinstance(value, str):
        try:
            seconds = parse_duration(value, key_path=key_path)
        except ConfigError as exc:
            raise InvalidInput(exc.message, code="invalid_duration", hint=exc.hint) from None
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        seconds = float(value)
    else:
        raise invalid(
            key_path,
            f'expected a duration like "24h" or a number of seconds, got {describe(value)}',
            code="invalid_duration",
        )
    if seconds != int(seconds):
        raise invalid(key_path, "durations are counted in whole seconds", code="invalid_duration")
    if not low <= seconds <= high:
        raise invalid(
            key_path,
            f"must be between {format_duration(low)} and {format_duration(high)}",
            code="invalid_duration",
        )
    return int(seconds)


def format_duration(seconds: int) -> str:
    """The shortest "1h30m"-style spelling of a whole number of seconds."""
    if seconds <= 0:
        return "0s"
    parts = []
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
