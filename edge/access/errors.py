"""Errors raised by the pure access core (policies, keys, tokens).

Each error carries the HTTP status a caller should answer with, and whether retrying the same
input can ever help, so request handlers map errors without inspecting messages::

    AccessError                      base; .http_status, .permanent
    ├── PolicyConfigError            a policy or rule failed to parse; .key_path names the spot
    ├── KeyRingError                 signing keys unusable (no active key, bad stored record)
    └── TokenInvalid                 a presented token was refused; .reason is a stable code

``TokenInvalid.reason`` values are stable strings that appear in audit logs and tests:
``too_large``, ``malformed``, ``forbidden_header``, ``algorithm_not_allowed``, ``missing_kid``,
``bad_kid``, ``unknown_kid``, ``algorithm_mismatch``, ``bad_signature``, ``missing_claim``,
``bad_claim``, ``expired``, ``not_yet_valid``, ``issued_in_future``, ``wrong_issuer``,
``wrong_audience``, ``wrong_type``.
"""

from __future__ import annotations


class AccessError(Exception):
    """Base of every access-core error; carries how a request handler should answer."""

    http_status: int = 500
    permanent: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class PolicyConfigError(AccessError, ValueError):
    """A policy document is wrong; the message starts with the key path of the bad value."""

    http_status = 400

    def __init__(self, key_path: str, problem: str) -> None:
        super().__init__(f"{key_path}: {problem}" if key_path else problem)
        self.key_path = key_path
        self.problem = problem


class KeyRingError(AccessError):
    """Signing keys cannot be used: the edge must not serve tokens until this is fixed."""

    http_status = 500


class TokenInvalid(AccessError):
    """A token was refused. The reason is safe to log; the token itself never is."""

    http_status = 401

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"token refused: {reason}" + (f" ({detail})" if detail else ""))
        self.reason = reason
        self.detail = detail
