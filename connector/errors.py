"""Errors of the connector, and the stream reset codes it sends.

Every error the connector raises on purpose derives from :class:`ConnectorError`, so the CLI
can turn any of them into one line and an exit code, and the origin dispatcher can turn any
origin failure into the reset code the edge maps to a 502 or 504 page::

    ConnectorError                  hint, exit_code
    ├── ConfigError                 key path + message (exit code 2)
    │   └── CredentialsError        unreadable or invalid credentials file / run token
    ├── OriginError                 reset_code sent on the tunnel stream
    │   ├── OriginUnreachable       refused, no route, TLS failure, broke mid-exchange
    │   └── OriginTimeout           connect or response head took too long
    └── AdminApiError               status, code and hint from the admin API (exit code 1)
        └── AdminApiUnreachable     the admin API URL could not be reached

The codes themselves belong to the wire protocol (``tunnel.protocol.ErrorCode``).
"""

from __future__ import annotations

from tunnel.protocol import ErrorCode

__all__ = [
    "AdminApiError",
    "AdminApiUnreachable",
    "ConfigError",
    "ConnectorError",
    "CredentialsError",
    "ErrorCode",
    "OriginError",
    "OriginTimeout",
    "OriginUnreachable",
]

EXIT_OK = 0
EXIT_API_ERROR = 1
EXIT_CONFIG_ERROR = 2
EXIT_PERMANENT_REFUSAL = 3


class ConnectorError(Exception):
    """Root of the connector's own errors."""

    exit_code: int = 1

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class ConfigError(ConnectorError):
    """A configuration value is wrong; the message starts with the key path that holds it."""

    exit_code = EXIT_CONFIG_ERROR

    def __init__(self, key_path: str, problem: str, *, hint: str = "", source: str = "") -> None:
        super().__init__(f"{key_path}: {problem}" if key_path else problem, hint=hint)
        self.key_path = key_path
        self.problem = problem
        self.source = source
        """The file that holds the value, when there is one."""


class CredentialsError(ConfigError):
    """The tunnel credentials cannot be used; retrying with the same input cannot help."""


class OriginError(ConnectorError):
    """The origin could not serve a stream; carries the reset code the edge turns into a page."""

    reset_code: ErrorCode = ErrorCode.ORIGIN_UNREACHABLE


class OriginUnreachable(OriginError):
    reset_code = ErrorCode.ORIGIN_UNREACHABLE


class OriginTimeout(OriginError):
    reset_code = ErrorCode.ORIGIN_TIMEOUT


class AdminApiError(ConnectorError):
    """The admin API answered with an error body ``{"error", "message", "hint"}``."""

    exit_code = EXIT_API_ERROR

    def __init__(self, message: str, *, status: int = 0, code: str = "", hint: str = "") -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.code = code


class AdminApiUnreachable(AdminApiError):
    """No HTTP answer at all: wrong URL, edge down, TLS trouble."""
