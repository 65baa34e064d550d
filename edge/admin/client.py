"""A small synchronous client of the admin API, and the click plumbing of the ``tunnelgate-edge``
admin commands that use it (``--api`` / ``--api-token-file`` options, error reporting).

It behaves like the connector CLI's client (``tunnelgate``): the API URL comes from ``--api`` or
``TUNNELGATE_API``, the admin token from the file named by ``--api-token-file`` or from
``TUNNELGATE_API_TOKEN`` (never from argv), and every failure becomes one
:class:`AdminApiError` carrying the API's error code and hint::

    AdminCliError                 message, hint, exit_code
    ├── AdminOptionError          --api / --api-token-file missing or unreadable (exit 2)
    └── AdminApiError             the API refused: status, code (exit 1)
        └── AdminApiUnreachable   nothing answered at the URL (exit 1)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
import httpx

__all__ = [
    "API_HINT",
    "AdminApiError",
    "AdminApiUnreachable",
    "AdminCliError",
    "AdminClient",
    "AdminCommand",
    "AdminGroup",
    "AdminOptionError",
    "ApiOptions",
    "admin_client",
    "api_options",
    "read_admin_token",
]

_F = TypeVar("_F", bound=Callable[..., Any])

API_TIMEOUT = 30.0
API_HINT = "pass --api URL or set TUNNELGATE_API to the edge's admin listener"
TOKEN_HINT = "pass --api-token-file FILE or set TUNNELGATE_API_TOKEN"


class AdminCliError(Exception):
    """Something an admin command cannot get past; printed as ``error: message (hint)``."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class AdminOptionError(AdminCliError):
    """A missing or unusable option; the message starts with the option or key path."""

    exit_code = 2


class AdminApiError(AdminCliError):
    def __init__(self, message: str, *, status: int = 0, code: str = "", hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code


class AdminApiUnreachable(AdminApiError):
    pass


def read_admin_token(token_file: Path | None) -> str:
    """The admin token from ``token_file``, else from ``TUNNELGATE_API_TOKEN``."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise AdminOptionError(
                f"--api-token-file: cannot read {token_file}: {exc.strerror or exc}"
            ) from None
    else:
        token = os.environ.get("TUNNELGATE_API_TOKEN", "").strip()
    if not token:
        raise AdminOptionError("--api-token-file: no admin API token", hint=TOKEN_HINT)
    return token


class AdminClient:
    """A thin JSON client; every failure becomes an :class:`AdminApiError` with a hint."""

    def __init__(
        self, api: str, token: str, *, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.api = api.rstrip("/")
        self._client = httpx.Client(
            base_url=self.api,
            timeout=API_TIMEOUT,
            transport=transport,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        try:
            response = self._client.request(method, path, json=body, params=params)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise AdminApiUnreachable(
                f"cannot reach the admin API at {self.api}: {exc or type(exc).__name__}",
                hint=API_HINT,
            ) from None
        try:
            document = response.json() if response.content else None
        except ValueError:
            document = None
        if response.is_success:
            return response.status_code, document
        error = document if isinstance(document, dict) else {}
        raise AdminApiError(
            str(error.get("message") or f"HTTP {response.status_code} from {self.api}{path}"),
            status=response.status_code,
            code=str(error.get("error") or ""),
            hint=str(error.get("hint") or ""),
        )


class ApiOptions:
    """Where the admin API is and how to authenticate; the client is opened on first use."""

    def __init__(self) -> None:
        self.api: str | None = None
        self.api_token_file: Path | None = None
        self._client: AdminClient | None = None

    def client(self) -> AdminClient:
        if self._client is None:
            if not self.api:
                raise AdminOptionError("--api: no admin API URL", hint=API_HINT)
            self._client = AdminClient(self.api, read_admin_token(self.api_token_file))
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _remember(ctx: click.Context, param: click.Parameter, value: object) -> None:
    if value is None or param.name is None:
        return
    options = ctx.find_object(ApiOptions)
    if options is None:
        options = ctx.ensure_object(ApiOptions)
        ctx.call_on_close(options.close)
    explicit = ctx.get_parameter_source(param.name) is click.core.ParameterSource.COMMANDLINE
    # A value typed on the command line wins over one an outer level read from the environment.
    if explicit or getattr(options, param.name) is None:
        setattr(options, param.name, value)


def api_options(function: _F) -> _F:
    """Add ``--api`` and ``--api-token-file`` to a group or command (both levels may have
    them; a value typed on the command line wins over one from the environment)."""
    function = click.option(
        "--api-token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        expose_value=False,
        callback=_remember,
        help="File holding the admin token (or set TUNNELGATE_API_TOKEN to the token).",
    )(function)
    return click.option(
        "--api",
        envvar="TUNNELGATE_API",
        metavar="URL",
        expose_value=False,
        callback=_remember,
        help="Admin API URL of the edge (env TUNNELGATE_API).",
    )(function)


def admin_client(ctx: click.Context) -> AdminClient:
    """The client the ``--api`` options of this command or its groups describe."""
    options = ctx.find_object(ApiOptions)
    if options is None:
        raise AdminOptionError("--api: no admin API URL", hint=API_HINT)
    return options.client()


def _report(exc: AdminCliError) -> None:
    hint = f" ({exc.hint})" if exc.hint else ""
    click.echo(f"error: {exc.message}{hint}", err=True)


class AdminGroup(click.Group):
    """Turns admin errors into ``error: message (hint)`` and their exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdminCliError as exc:
            _report(exc)
            ctx.exit(exc.exit_code)


class AdminCommand(click.Command):
    """Like :class:`AdminGroup`, for commands outside a group (``apply``, ``audit``)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except AdminCliError as exc:
            _report(exc)
            ctx.exit(exc.exit_code)
