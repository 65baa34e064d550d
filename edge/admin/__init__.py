"""The admin REST API, as JSON under ``/v1/``: tunnels, run tokens and hostname routes, and the
Access configuration (applications, policies, IdPs, service tokens, session revocation, signing
keys, the audit log and declarative ``apply``; see ``edge.admin.access_endpoints``).

:class:`AdminApi` is transport-free (``handle(method, target, headers, body)``) so every
endpoint is tested without sockets; :func:`serve_admin` is the small HTTP/1.1 server that puts
it on the admin listener, which never shares a port with public traffic.

Every request but ``GET /v1/openapi.json`` needs ``Authorization: Bearer <admin token>``, and
the token is checked before the path is, so an unauthenticated caller learns nothing about
which paths exist. Store calls run in worker threads (``trio.to_thread.run_sync``); when state
changes the API tells the running edge through ``on_change`` so it can rebuild its in-memory
route table and secret cache (and, for a deleted tunnel, drop its connections).

Errors are JSON ``{"error": code, "message": ..., "hint": ...}``::

    EdgeError (edge.errors)
    ├── edge.store.StoreError   tunnel_not_found, tunnel_exists, invalid_name, route_exists,
    │                           app_not_found, app_exists, domain_taken, idp_in_use,
    │                           invalid_policy (message starts with the key path), ...
    └── AdminError              unauthorized 401, not_found 404, method_not_allowed 405,
                                payload_too_large 413, invalid_json / invalid_body /
                                invalid_query 400, tunnel_connected 409
"""

from edge.admin.api import (
    MAX_BODY_BYTES,
    AdminApi,
    AdminError,
    AdminResponse,
    ChangeEvent,
    ChangeKind,
    ConnectionInfo,
    LiveConnectionView,
)
from edge.admin.listener import AdminServerLimits, serve_admin
from edge.admin.openapi import openapi_document

__all__ = [
    "MAX_BODY_BYTES",
    "AdminApi",
    "AdminError",
    "AdminResponse",
    "AdminServerLimits",
    "ChangeEvent",
    "ChangeKind",
    "ConnectionInfo",
    "LiveConnectionView",
    "openapi_document",
    "serve_admin",
]
