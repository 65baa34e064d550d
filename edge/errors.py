"""Base classes of the edge's errors.

Every error the edge raises on purpose derives from :class:`EdgeError`, so a caller (the admin
API, the CLI, the server) can turn any of them into an answer without knowing the module that
raised it::

    EdgeError                      code, status, hint
    ├── edge.config.ConfigError    message starts with the key path (CLI exit code 2)
    ├── edge.store.StoreError      stable codes shared with the admin API
    │   ├── NotFound               404
    │   ├── Conflict               409
    │   └── InvalidInput           400
    └── edge.admin.AdminError      refusals of the admin API itself (401, 404, 405, 413...)

The ``code`` is stable and machine readable (it appears in admin API error bodies); the
``status`` is the HTTP status that fits; the ``hint`` tells a person what to do next.
"""

from __future__ import annotations


class EdgeError(Exception):
    """Root of the edge's own errors; carries what an HTTP or CLI answer needs."""

    code: str = "internal_error"
    status: int = 500

    def __init__(self, message: str, *, code: str | None = None, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.hint = hint

    def __str__(self) -> str:
        return self.message
