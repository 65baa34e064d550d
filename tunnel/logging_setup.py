"""Log lines for operators and their tools, with secrets taken out before anything is written.

Both daemons log to stderr, which systemd hands to journald. The default format is one
``key=value`` line per record (logfmt), which journald keeps as is and log tools parse;
``--log-format json`` writes one JSON object per line for shippers::

    time=2025-01-31T12:00:00.123Z level=info logger=edge.tunnels
        msg="tunnel connection registered" tunnel=6f1c connection=9a2e   (one line)

The ids a record is about (tunnel, connection, stream, app, ...) become fields of their own: the
modules write them as trailing ``key=value`` pairs in the message (``"registered tunnel=%s"``)
or pass them through ``with_ids(logger, tunnel=...)``; the formatter lifts both into fields, so
``journalctl -o cat | grep tunnel=6f1c`` and ``jq 'select(.tunnel == "6f1c")'`` both work.

Redaction is belt and braces. Modules are written never to log a credential, but a header
list, an exception message or a URL with a query can still carry one, so every record passes
``redact`` on its way out: ``Authorization``/``Cookie``/``Set-Cookie`` values, bearer tokens,
``CF-Access-Client-Secret``, assertion headers, ``client_secret``/``secret``/``token``/
``password`` style parameters, JWTs and run tokens (both base64url JSON, so ``eyJ...``), and
any exact value handed to ``remember_secret`` (the connector's own tunnel secret, say).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, TextIO

LOG_FORMATS = ("text", "json")
REDACTED = "[redacted]"
MIN_REMEMBERED_SECRET = 8

# Names whose whole value is a credential, header style: the value runs to the end of the
# quoted string, list item or line (it may hold spaces: "Bearer abc", "a=1; b=2").
_HEADER_NAMES = (
    r"proxy-authorization|authorization|set-cookie|cookie|"
    r"cf[-_]access[-_]client[-_]secret|cf[-_]access[-_]jwt[-_]assertion|"
    r"x-tunnelgate-run-token"
)
# Names of parameters whose value is a credential, word style: the value ends at a space,
# quote, separator or bracket.
_PARAMETER_NAMES = (
    r"client_secret|tunnel_secret|secret|password|passwd|token|access_token|refresh_token|"
    r"id_token|run_token|api_key|apikey|code_verifier|cf_authorization|cf_app_session"
)
_SEPARATOR = r"""(?P<sep>["']?\s*[:=,]\s*(?:b(?=["']))?["']?\s*)(?!\[redacted\])"""
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(rf"(?i)(?P<key>\b(?:{_HEADER_NAMES}))\b{_SEPARATOR}[^\"'\r\n\]\)}}]+"),
     rf"\g<key>\g<sep>{REDACTED}"),
    (re.compile(rf"(?i)(?P<key>\b(?:{_PARAMETER_NAMES}))\b{_SEPARATOR}[^\s\"'&,;\]\)}}]+"),
     rf"\g<key>\g<sep>{REDACTED}"),
    (re.compile(r"(?i)\b(?P<scheme>bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}"),
     rf"\g<scheme> {REDACTED}"),
    # JWTs and run tokens: base64url of a JSON object, which always starts "eyJ".
    (re.compile(r"\beyJ[A-Za-z0-9_-]{6,}(?:\.[A-Za-z0-9_-]*)*"), REDACTED),
)
# A necessary condition for any pattern above to match, checked on the lower-cased text: each
# pattern needs one of these words, starting at a word boundary (the patterns' ``\b``). The
# boundary matters: audit lines all carry a ``service_token`` field, which must not send them
# through the patterns.
_TRIGGER_WORDS = (
    "authorization", "cookie", "cf-access", "cf_access", "token", "access_token",
    "refresh_token", "id_token", "run_token", "secret", "client_secret", "tunnel_secret", "password", "passwd", "api_key", "apikey", "code_verifier",
    "cf_authorization", "cf_app_session", "bearer", "basic", "eyj",
)


def _may_hold_credentials(lowered: str) -> bool:
    """True when a trigger word starts at a word boundary somewhere in ``lowered``."""
    for word in _TRIGGER_WORDS:
        start = lowered.find(word)
        while start != -1:
            if start == 0:
                return True
            before = lowered[start - 1]
            # Non-ASCII before the word: lower() may have changed what counts as a word
            # character there, so let the patterns decide.
            if not (before.isascii() and (before.isalnum() or before == "_")):
                return True
            start = lowered.find(word, start + 1)
    return False


_REMEMBERED: set[str] = set()

_FIELD_START = re.compile(r"(?:^|(?<=\s))([a-z][a-z0-9_.-]*)=")
_RESERVED_FIELDS = frozenset({"time", "level", "logger", "msg", "exception"})
_ID_ATTRIBUTE = "tunnelgate_ids"


def remember_secret(value: str) -> None:
    """Have every later log line replace this exact value, wherever it appears."""
    if len(value) >= MIN_REMEMBERED_SECRET:
        _REMEMBERED.add(value)


def forget_secrets() -> None:
    _REMEMBERED.clear()


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``[redacted]``.

    Every line passes through here, so the common case must be cheap: the four patterns cost
    about 40 µs on an audit line, while looking for the words they all need costs a few µs.
    The patterns run only when one of those words starts at a word boundary.
    """
    for secret in _REMEMBERED:
        if secret in text:
            text = text.replace(secret, REDACTED)
    lowered = text.lower()
    if not _may_hold_credentials(lowered):
        return text
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message in place, redacted, so any handler downstream is safe."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string must not lose the record
            message = f"{record.msg!r} {record.args!r}"
        record.msg = redact(message)
        record.args = None
        return True


def split_fields(message: str) -> tuple[str, list[tuple[str, str]]]:
    """The free text of a message and its trailing ``key=value`` pairs.

    A value runs to the next `` key=``, so ``error=[Errno 111] Connect call failed`` stays
    one value. A message that starts with a pair, or names a key twice, is not of that shape
    (``"tunnel=t: peer is draining"``) and stays whole.
    """
    if "=" not in message:  # most lines, e.g. every audit line: skip the scan
        return message, []
    starts = list(_FIELD_START.finditer(message))
    if not starts:
        return message, []
    text = message[: starts[0].start()].rstrip()
    keys = [match.group(1) for match in starts]
    if not text or len(set(keys)) != len(keys):
        return message, []
    fields: list[tuple[str, str]] = []
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(message)
        fields.append((match.group(1), message[match.end(): end].rstrip()))
    return text, fields


def _record_fields(record: logging.LogRecord) -> tuple[str, list[tuple[str, str]]]:
    text, fields = split_fields(record.getMessage())
    ids: Mapping[str, object] = getattr(record, _ID_ATTRIBUTE, None) or {}
    id_fields = [(key, redact(str(value))) for key, value in ids.items() if value is not None]
    return text, id_fields + fields


def _field_name(key: str) -> str:
    return f"{key}_" if key in _RESERVED_FIELDS else key


def _timestamp(record: logging.LogRecord) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
    return f"{seconds}.{int(record.msecs):03d}Z"


def _logfmt_value(value: str) -> str:
    if value and not any(c in value for c in ' ="\\\n\r\t'):
        return value
    return json.dumps(value, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    """One logfmt line per record; the exception, if any, as one escaped field."""

    def format(self, record: logging.LogRecord) -> str:
        text, fields = _record_fields(record)
        parts = [
            f"time={_timestamp(record)}",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_logfmt_value(text)}",
        ]
        parts.extend(f"{_field_name(key)}={_logfmt_value(value)}" for key, value in fields)
        if record.exc_info:
            exception = redact(self.formatException(record.exc_info))
            parts.append(f"exception={_logfmt_value(exception)}")
        # The message was redacted by RedactingFilter and the ids by _record_fields.
        return " ".join(parts)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, msg, the id fields, the exception."""

    def format(self, record: logging.LogRecord) -> str:
        text, fields = _record_fields(record)
        entry: dict[str, str] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": text,
        }
        for key, value in fields:
            entry.setdefault(_field_name(key), value)
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        # The message was redacted by RedactingFilter and the ids by _record_fields.
        return json.dumps(entry, ensure_ascii=False)


class IdsAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger that adds fixed ids (tunnel, connection, stream, app) to every record."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        extra = dict(kwargs.get("extra") or {})
        extra[_ID_ATTRIBUTE] = {**(self.extra or {}), **extra.get(_ID_ATTRIBUTE, {})}
        kwargs["extra"] = extra
        return msg, kwargs


def with_ids(logger: logging.Logger, **ids: object) -> IdsAdapter:
    """``with_ids(log, tunnel=t, connection=c).info("registered")`` ->
    ``msg=registered tunnel=t connection=c``."""
    return IdsAdapter(logger, {key: value for key, value in ids.items() if value is not None})


def configure_logging(level: str = "info", log_format: str = "text", *,
                      stream: TextIO | None = None,
                      quiet_loggers: Iterable[str] = ()) -> logging.Handler:
    """Send every record to ``stream`` (stderr) in ``log_format``, redacted. Replaces the root
    logger's handlers, so calling it twice does not double the lines."""
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else KeyValueFormatter())
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in quiet_loggers:
        logging.getLogger(name).setLevel(logging.WARNING)
    return handler


__all__ = [
    "LOG_FORMATS",
    "REDACTED",
    "IdsAdapter",
    "JsonFormatter",
    "KeyValueFormatter",
    "RedactingFilter",
    "configure_logging",
    "forget_secrets",
    "redact",
    "remember_secret",
    "split_fields",
    "with_ids",
]
