"""Identity providers built from their stored records, as the running edge uses them.

A record holds no secret, only file paths on the edge host; the files are read here, when the
provider is built, so rotating a secret means rewriting the file and re-applying the IdP.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from edge.access.idp import HttpClientFactory, RedirectProvider, default_http_client
from edge.access.idp.github import GithubProvider
from edge.access.idp.oidc import OidcProvider
from edge.access.idp.otp import CodeSender, LogSender, OtpIssuer, SmtpSender
from edge.store.access_records import IdpRecord

__all__ = ["Provider", "build_provider"]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
RandomBytes = Callable[[int], bytes]
Provider = RedirectProvider | OtpIssuer


def build_provider(
    record: IdpRecord,
    *,
    clock: Clock,
    random_bytes: RandomBytes,
    http_client: HttpClientFactory = default_http_client,
    code_sender: CodeSender | None = None,
) -> Provider:
    """The provider an IdP record describes; reads its secret files (run in a worker thread).

    Raises OSError or ValueError when a secret file is missing or empty. ``code_sender``
    replaces a one-time PIN IdP's configured delivery.
    """
    settings = record.settings
    if record.type == "oidc":
        scopes = settings.get("scopes", ("openid", "email", "profile"))
        assert isinstance(scopes, tuple | list)
        return OidcProvider(
            record.name,
            str(settings["issuer"]),
            str(settings["client_id"]),
            _read_secret(settings["client_secret_file"]),
            groups_claim=str(settings.get("groups_claim", "groups")),
            scopes=tuple(str(scope) for scope in scopes),
            http=http_client,
            clock=clock,
            trust_email_without_verified_claim=bool(
                settings.get("trust_email_without_verified_claim", False)
            ),
        )
    if record.type == "github":
        return GithubProvider(
            record.name,
            str(settings["client_id"]),
            _read_secret(settings["client_secret_file"]),
            http=http_client,
            clock=clock,
            web_base=str(settings.get("web_base", "https://github.com")),
            api_base=str(settings.get("api_base", "https://api.github.com")),
        )
    return OtpIssuer(
        clock,
        random_bytes,
        code_sender or _otp_sender(settings),
        name=record.name,
        code_length=_setting_int(settings, "code_length", 6),
        lifetime=float(_setting_int(settings, "code_lifetime", 600)),
        max_attempts=_setting_int(settings, "max_attempts", 5),
    )


def _setting_int(settings: Mapping[str, object], key: str, default: int) -> int:
    value = settings.get(key, default)
    return value if isinstance(value, int) else default


def _read_secret(path: object) -> str:
    secret = Path(str(path)).read_text(encoding="utf-8").strip()
    if not secret:
        raise ValueError(f"{path} is empty")
    return secret


def _otp_sender(settings: Mapping[str, object]) -> CodeSender:
    if settings.get("delivery") == "log":
        log.warning(
            "a one-time PIN IdP delivers codes to the log: for development only, never for an "
            "edge real people sign in to"
        )
        return LogSender()
    username = settings.get("smtp_username")
    password_file = settings.get("smtp_password_file")
    return SmtpSender(
        str(settings["smtp_host"]),
        _setting_int(settings, "smtp_port", 587),
        str(settings["smtp_from"]),
        starttls=bool(settings.get("smtp_starttls", True)),
        username=None if username is None else str(username),
        password_file=None if password_file is None else str(password_file),
    )
