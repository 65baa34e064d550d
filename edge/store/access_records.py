"""The Access records the store keeps, and the one validator for each of them.

Every way into the store (admin API, ``tunnelgate-edge apply``, the CLI) goes through the
``parse_*`` functions here, so all of them accept exactly the same values and report a mistake
the same way: an :class:`edge.store.InvalidInput` whose message starts with the key path of the
offending value (``app[0].domain: ...``). Unknown keys are errors, because a misspelt option
silently falling back to its default is how gateways end up open.

Parsed values are canonical: host names lower-case, paths in the one canonical form of
``edge.canonical``, durations in whole seconds, defaults filled in. Parsing a record's own
``to_input()`` gives the record back, which is what makes ``apply`` idempotent: a file and the
store are compared in this form.

The field readers these parsers are built from live in :mod:`edge.store.record_fields`.

Secrets are never part of a record. An IdP refers to its client secret by a file path on the
edge host (``client_secret_file``); a service token keeps only the SHA-256 of its secret.
"""

from __future__ import annotations

import hashlib
import re
import types
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from edge.access.errors import PolicyConfigError
from edge.access.policy import AppPolicySet, parse_policies
from edge.canonical import BadRequest, canonical_path
from edge.store import InvalidInput, normalize_hostname
from edge.store.record_fields import (
    check_keys,
    describe,
    format_duration,
    invalid,
    join_path,
    parse_access_name,
    parse_seconds,
    read_bool,
    read_int,
    read_optional_string,
    read_string,
)

__all__ = [
    "APP_TYPES",
    "DEFAULT_COOKIE_NAME",
    "DEFAULT_EMAIL_HEADER",
    "DEFAULT_HEADER_NAME",
    "DEFAULT_SERVICE_TOKEN_DURATION",
    "DEFAULT_SESSION_DURATION",
    "IDP_TYPES",
    "AppRecord",
    "AppSpec",
    "AppType",
    "DecisionRecord",
    "IdpRecord",
    "IdpType",
    "Revocation",
    "ServiceToken",
    "SessionRecord",
    "format_duration",
    "parse_access_name",
    "parse_app_domain",
    "parse_app_spec",
    "parse_idp",
    "parse_policy_list",
    "parse_seconds",
    "session_id_hash",
]

IdpType = Literal["oidc", "github", "otp"]
AppType = Literal["http", "tcp"]
IDP_TYPES: tuple[IdpType, ...] = ("oidc", "github", "otp")
APP_TYPES: tuple[AppType, ...] = ("http", "tcp")

DEFAULT_COOKIE_NAME = "CF_Authorization"
DEFAULT_HEADER_NAME = "Cf-Access-Jwt-Assertion"
DEFAULT_EMAIL_HEADER = "Cf-Access-Authenticated-User-Email"
DEFAULT_SESSION_DURATION = 24 * 3600
DEFAULT_SERVICE_TOKEN_DURATION = 8760 * 3600
MIN_SESSION_DURATION = 60
MAX_SESSION_DURATION = 366 * 24 * 3600

# RFC 9110 token characters minus "_": the edge folds "_" into "-" when it strips client
# copies of its headers, so a name with "_" would have two spellings.
_HEADER_NAME = re.compile(r"[!#$%&'*+.^`|~0-9A-Za-z-]{1,100}")
_COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,100}")
_CLAIM_NAME = re.compile(r"[A-Za-z0-9_.:/-]{1,200}")
_RESERVED_HEADERS = frozenset(
    {
        "host",
        "cookie",
        "set-cookie",
        "authorization",
        "content-length",
        "content-type",
        "transfer-encoding",
        "connection",
        "upgrade",
        "te",
        "trailer",
        "keep-alive",
        "proxy-authorization",
        "proxy-connection",
        "cf-access-client-id",
        "cf-access-client-secret",
    }
)


def session_id_hash(session_id: str) -> str:
    """The key a session is stored under: a copy of the store must not hold live session ids."""
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


# --- identity providers ----------------------------------------------------------------------

_IDP_COMMON = frozenset({"name", "type"})
_IDP_KEYS: Mapping[str, frozenset[str]] = {
    "oidc": _IDP_COMMON
    | {
        "issuer",
        "client_id",
        "client_secret_file",
        "groups_claim",
        "scopes",
        "trust_email_without_verified_claim",
    },
    "github": _IDP_COMMON | {"client_id", "client_secret_file", "web_base", "api_base"},
    "otp": _IDP_COMMON
    | {
        "delivery",
        "smtp_host",
        "smtp_port",
        "smtp_from",
        "smtp_starttls",
        "smtp_username",
        "smtp_password_file",
        "code_length",
        "code_lifetime",
        "max_attempts",
    },
}
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def _url(obj: Mapping[str, object], key: str, key_path: str, default: str | None) -> str:
    """An https URL (http only for loopback: a test or a local provider)."""
    if default is not None and obj.get(key) is None:
        return default
    text = read_string(obj, key, key_path, code="invalid_idp")
    parts = urllib.parse.urlsplit(text)
    host = (parts.hostname or "").lower()
    loopback = host in _LOOPBACK_NAMES or host.endswith(".localhost") or host.startswith("127.")
    if parts.scheme not in ("https", "http") or not host or parts.query or parts.fragment:
        raise invalid(
            join_path(key_path, key),
            "expected a URL like https://idp.example.com",
            code="invalid_idp",
        )
    if parts.scheme == "http" and not loopback:
        raise invalid(
            join_path(key_path, key),
            "plain http is only allowed for loopback providers; use https",
            code="invalid_idp",
        )
    if parts.username or parts.password:
        raise invalid(
            join_path(key_path, key), "credentials in URLs are not allowed", code="invalid_idp"
        )
    return text.rstrip("/")


def _secret_file(obj: Mapping[str, object], key: str, key_path: str) -> str:
    path = read_string(obj, key, key_path, code="invalid_idp")
    if not path.startswith("/"):
        raise invalid(
            join_path(key_path, key),
            "expected an absolute path on the edge host",
            code="invalid_idp",
            hint="apply resolves relative paths against the folder of its file",
        )
    return path


def _email_address(obj: Mapping[str, object], key: str, key_path: str) -> str:
    text = read_string(obj, key, key_path, code="invalid_idp")
    if text.count("@") != 1 or not all(text.split("@")) or any(c in text for c in '<>,;"\\'):
        raise invalid(join_path(key_path, key), "expected one e-mail address", code="invalid_idp")
    return text


def _idp_settings(kind: IdpType, obj: Mapping[str, object], key_path: str) -> dict[str, object]:
    code = "invalid_idp"
    if kind == "oidc":
        scopes = obj.get("scopes", ["openid", "email", "profile"])
        scopes_path = join_path(key_path, "scopes")
        if not isinstance(scopes, list | tuple) or not all(
            isinstance(s, str) and s and " " not in s for s in scopes
        ):
            raise invalid(scopes_path, "expected a list of scope names", code=code)
        if "openid" not in scopes:
            raise invalid(scopes_path, 'OpenID Connect scopes must include "openid"', code=code)
        groups_claim = read_optional_string(obj, "groups_claim", key_path, "groups", code=code)
        if not _CLAIM_NAME.fullmatch(groups_claim):
            raise invalid(join_path(key_path, "groups_claim"), "not a claim name", code=code)
        return {
            "issuer": _url(obj, "issuer", key_path, None),
            "client_id": read_string(obj, "client_id", key_path, code=code),
            "client_secret_file": _secret_file(obj, "client_secret_file", key_path),
            "groups_claim": groups_claim,
            "scopes": list(dict.fromkeys(str(s) for s in scopes)),
            "trust_email_without_verified_claim": read_bool(
                obj, "trust_email_without_verified_claim", key_path, False, code=code
            ),
        }
    if kind == "github":
        return {
            "client_id": read_string(obj, "client_id", key_path, code=code),
            "client_secret_file": _secret_file(obj, "client_secret_file", key_path),
            "web_base": _url(obj, "web_base", key_path, "https://github.com"),
            "api_base": _url(obj, "api_base", key_path, "https://api.github.com"),
        }
    delivery = obj.get("delivery", "smtp")
    if delivery not in ("smtp", "log"):
        raise invalid(
            join_path(key_path, "delivery"),
            'expected "smtp", or "log" (development only: codes go to the edge log)',
            code=code,
        )
    settings: dict[str, object] = {
        "delivery": delivery,
        "code_length": read_int(obj, "code_length", key_path, 6, low=4, high=12, code=code),
        "code_lifetime": parse_seconds(
            obj.get("code_lifetime", 600), join_path(key_path, "code_lifetime"), low=60, high=3600
        ),
        "max_attempts": read_int(obj, "max_attempts", key_path, 5, low=1, high=20, code=code),
    }
    smtp_keys = sorted(k for k in obj if str(k).startswith("smtp_"))
    if delivery == "log":
        if smtp_keys:
            raise invalid(
                join_path(key_path, smtp_keys[0]), 'not used with delivery = "log"', code=code
            )
        return settings
    username = obj.get("smtp_username")
    password_file = obj.get("smtp_password_file")
    if (username is None) != (password_file is None):
        missing = "smtp_password_file" if password_file is None else "smtp_username"
        raise invalid(
            join_path(key_path, missing),
            "SMTP login needs both a user name and a password file",
            code=code,
        )
    settings.update(
        {
            "smtp_host": read_string(obj, "smtp_host", key_path, code=code),
            "smtp_port": read_int(obj, "smtp_port", key_path, 587, low=1, high=65535, code=code),
            "smtp_from": _email_address(obj, "smtp_from", key_path),
            "smtp_starttls": read_bool(obj, "smtp_starttls", key_path, True, code=code),
        }
    )
    if username is not None:
        settings["smtp_username"] = read_string(obj, "smtp_username", key_path, code=code)
        settings["smtp_password_file"] = _secret_file(obj, "smtp_password_file", key_path)
    return settings


@dataclass(frozen=True)
class IdpRecord:
    """One identity provider; ``settings`` are canonical and hold no secret, only file paths."""

    name: str
    type: IdpType
    settings: Mapping[str, object]

    def to_input(self) -> dict[str, object]:
        """The flat shape of the ``[[idp]]`` table and of the admin API."""
        return {"name": self.name, "type": self.type, **_thaw(self.settings)}


def _thaw(settings: Mapping[str, object]) -> dict[str, object]:
    return {
        key: list(value) if isinstance(value, tuple) else value for key, value in settings.items()
    }


def _freeze(settings: Mapping[str, object]) -> Mapping[str, object]:
    return types.MappingProxyType(
        {key: tuple(value) if isinstance(value, list) else value for key, value in settings.items()}
    )


def parse_idp(obj: object, key_path: str = "") -> IdpRecord:
    """An IdP from its flat table: ``name``, ``type`` and that type's settings."""
    table = check_keys(obj, key_path, frozenset().union(*_IDP_KEYS.values()), code="invalid_idp")
    name = parse_access_name(table.get("name"), join_path(key_path, "name"), what="IdP")
    kind = table.get("type")
    if kind not in IDP_TYPES:
        raise invalid(
            join_path(key_path, "type"),
            f"expected one of {', '.join(IDP_TYPES)}, got {describe(kind)}",
            code="invalid_idp",
        )
    check_keys(table, key_path, _IDP_KEYS[str(kind)], code="invalid_idp")
    settings = _idp_settings(kind, table, key_path)
    return IdpRecord(name=name, type=kind, settings=_freeze(settings))


# --- applications ----------------------------------------------------------------------------


def parse_app_domain(value: object, key_path: str) -> str:
    """``host`` or ``host/path/prefix`` in canonical form (no port, no scheme, no query)."""
    code = "invalid_domain"
    if not isinstance(value, str) or not value:
        raise invalid(key_path, f"expected a host name, got {describe(value)}", code=code)
    if "://" in value:
        raise invalid(
            key_path, 'write the host without a scheme, e.g. "app.example.com"', code=code
        )
    host_part, slash, rest = value.partition("/")
    if ":" in host_part:
        raise invalid(
            key_path,
            "a port is not part of an application's domain",
            code=code,
            hint="the edge matches applications by host name whatever port a visitor used",
        )
    try:
        host = normalize_hostname(host_part, allow_wildcard=False)
    except InvalidInput as exc:
        raise invalid(key_path, exc.message, code=code, hint=exc.hint) from None
    if not slash:
        return host
    try:
        target = canonical_path("/" + rest)
    except BadRequest as exc:
        raise invalid(key_path, f"invalid path prefix: {exc.detail}", code=code) from None
    if target.query is not None:
        raise invalid(key_path, "a path prefix cannot have a query", code=code)
    return host + target.path.rstrip("/")


def _header_name(obj: Mapping[str, object], key: str, key_path: str, default: str) -> str:
    name = read_optional_string(obj, key, key_path, default, code="invalid_app")
    if not _HEADER_NAME.fullmatch(name) or name.lower() in _RESERVED_HEADERS:
        raise invalid(
            join_path(key_path, key),
            f'not a usable header name: "{name}"',
            code="invalid_app",
            hint='use letters, digits and "-" (no "_"), not a standard HTTP header',
        )
    return name


_APP_KEYS = frozenset(
    {
        "name",
        "domain",
        "type",
        "session_duration",
        "idps",
        "cookie_name",
        "header_name",
        "email_header_name",
        "allow_websockets",
        "allow_encoded_slash",
    }
)


@dataclass(frozen=True)
class AppSpec:
    """What an administrator says about an application (everything but its id and AUD)."""

    name: str
    domain: str
    type: AppType = "http"
    session_duration: int = DEFAULT_SESSION_DURATION
    idps: tuple[str, ...] = ()
    cookie_name: str = DEFAULT_COOKIE_NAME
    header_name: str = DEFAULT_HEADER_NAME
    email_header_name: str = DEFAULT_EMAIL_HEADER
    allow_websockets: bool = True
    allow_encoded_slash: bool = False

    def to_input(self) -> dict[str, object]:
        return {
            "name": self.name,
            "domain": self.domain,
            "type": self.type,
            "session_duration": self.session_duration,
            "idps": list(self.idps),
            "cookie_name": self.cookie_name,
            "header_name": self.header_name,
            "email_header_name": self.email_header_name,
            "allow_websockets": self.allow_websockets,
            "allow_encoded_slash": self.allow_encoded_slash,
        }


def parse_app_spec(
    obj: object, key_path: str = "", *, ignore: frozenset[str] = frozenset()
) -> AppSpec:
    """An application from its table; keys in ``ignore`` belong to the caller (policies)."""
    code = "invalid_app"
    table = check_keys(obj, key_path, _APP_KEYS | ignore, code=code)
    name = parse_access_name(table.get("name"), join_path(key_path, "name"), what="application")
    if table.get("domain") is None:
        raise invalid(join_path(key_path, "domain"), "missing", code="invalid_domain")
    domain = parse_app_domain(table["domain"], join_path(key_path, "domain"))
    kind = table.get("type", "http")
    if kind not in APP_TYPES:
        raise invalid(
            join_path(key_path, "type"), f"expected http or tcp, got {describe(kind)}", code=code
        )
    if kind == "tcp" and "/" in domain:
        raise invalid(join_path(key_path, "domain"), "a tcp application has no path", code=code)
    duration = parse_seconds(
        table.get("session_duration", DEFAULT_SESSION_DURATION),
        join_path(key_path, "session_duration"),
        low=MIN_SESSION_DURATION,
        high=MAX_SESSION_DURATION,
    )
    raw_idps = table.get("idps", [])
    if not isinstance(raw_idps, list | tuple):
        raise invalid(
            join_path(key_path, "idps"),
            f"expected a list of IdP names, got {describe(raw_idps)}",
            code=code,
        )
    idps = tuple(
        parse_access_name(item, f"{join_path(key_path, 'idps')}[{index}]", what="IdP")
        for index, item in enumerate(raw_idps)
    )
    if len(set(idps)) != len(idps):
        raise invalid(join_path(key_path, "idps"), "an IdP is listed twice", code=code)
    cookie_name = read_optional_string(
        table, "cookie_name", key_path, DEFAULT_COOKIE_NAME, code=code
    )
    if not _COOKIE_NAME.fullmatch(cookie_name):
        raise invalid(join_path(key_path, "cookie_name"), "not a valid cookie name", code=code)
    header_name = _header_name(table, "header_name", key_path, DEFAULT_HEADER_NAME)
    email_header = _header_name(table, "email_header_name", key_path, DEFAULT_EMAIL_HEADER)
    if header_name.lower() == email_header.lower():
        raise invalid(
            join_path(key_path, "email_header_name"), "must differ from header_name", code=code
        )
    return AppSpec(
        name=name,
        domain=domain,
        type=kind,
        session_duration=duration,
        idps=idps,
        cookie_name=cookie_name,
        header_name=header_name,
        email_header_name=email_header,
        allow_websockets=read_bool(table, "allow_websockets", key_path, True, code=code),
        allow_encoded_slash=read_bool(table, "allow_encoded_slash", key_path, False, code=code),
    )


@dataclass(frozen=True)
class AppRecord:
    """A stored application: its spec plus the id and AUD tag the store gave it once."""

    id: str
    aud: str
    spec: AppSpec
    created_at: datetime
    updated_at: datetime

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def host(self) -> str:
        return self.spec.domain.partition("/")[0]

    @property
    def path_prefix(self) -> str:
        """The canonical path prefix without a trailing slash; "/" when the app has none."""
        _, slash, rest = self.spec.domain.partition("/")
        return "/" + rest if slash else "/"


def parse_policy_list(obj: object, key_path: str = "policies") -> AppPolicySet:
    """An ordered policy list, with the policy parser's key paths and the store's error type."""
    try:
        return parse_policies(obj, key_path)
    except PolicyConfigError as exc:
        raise InvalidInput(exc.message, code="invalid_policy") from None


# --- service tokens, sessions, revocations, decisions ----------------------------------------


@dataclass(frozen=True)
class ServiceToken:
    """A machine credential; the secret itself is shown once at creation and never stored."""

    id: str
    name: str
    client_id: str
    secret_hash: str
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True)
class SessionRecord:
    """A global session as the store keeps it; ``id_hash`` is :func:`session_id_hash`.

    ``identity`` is the session layer's own JSON record (never IdP tokens). Times are Unix
    seconds like everywhere on the request path.
    """

    id_hash: str
    email: str
    identity: Mapping[str, object]
    created_at: float
    expires_at: float
    revoked: bool = False


@dataclass(frozen=True)
class Revocation:
    """Sessions of ``subject`` (an e-mail, or an app's AUD) created before ``epoch`` are void."""

    kind: Literal["email", "app"]
    subject: str
    epoch: float


@dataclass(frozen=True)
class DecisionRecord:
    """One access decision for the audit log; ``email`` or ``service_token`` says who asked.

    ``count`` identical decisions (same app, person, client, action, policy, reason, host and
    path) made between ``time`` and ``last_time`` share one entry (``edge.access.audit``);
    the detail carries ``count`` and ``last_time`` only for such a shared entry.
    """

    time: datetime
    app: str
    client_ip: str
    action: str
    reason: str
    policy: str | None = None
    email: str | None = None
    service_token: str | None = None
    count: int = 1
    last_time: datetime | None = None

    def detail(self) -> dict[str, object]:
        detail: dict[str, object] = {
            "app": self.app,
            "email": self.email,
            "service_token": self.service_token,
            "client_ip": self.client_ip,
            "action": self.action,
            "policy": self.policy,
            "reason": self.reason,
        }
        if self.count > 1:
            detail["count"] = self.count
            detail["last_time"] = (self.last_time or self.time).isoformat()
        return detail
