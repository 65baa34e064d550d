"""The admin API itself, free of any transport: ``AdminApi.handle`` answers one request.

Keeping it transport-free lets every endpoint be tested without sockets; ``edge.admin.listener``
puts it on the admin port. Authentication runs before routing, so an unauthenticated caller
cannot probe which paths exist. Store calls run in worker threads because the store is
synchronous; ``on_change`` runs on the trio thread once a write has committed.

The tunnel and route endpoints live here; the Access endpoints (applications, policies, IdPs,
service tokens, sessions, keys, audit, apply) in :mod:`edge.admin.access_endpoints`.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from edge.access.keys_service import KeySettings
from edge.admin.openapi import openapi_document
from edge.errors import EdgeError
from edge.store import Route, Store, Tunnel
from tunnel.auth import encode_run_token

__all__ = [
    "MAX_BODY_BYTES",
    "AdminApi",
    "AdminError",
    "AdminResponse",
    "ChangeEvent",
    "ChangeKind",
    "ConnectionInfo",
    "Handler",
    "LiveConnectionView",
    "json_response",
    "parse_json_body",
]
log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
_T = TypeVar("_T")


class AdminError(EdgeError):
    """A request the API refuses before it reaches the store."""

    def __init__(self, status: int, code: str, message: str, *, hint: str = "") -> None:
        super().__init__(message, code=code, hint=hint)
        self.status = status


@dataclass(frozen=True)
class ConnectionInfo:
    """One live tunnel connection as the admin API shows it (``since`` is ISO 8601 UTC)."""

    connection_id: str
    connector_id: str
    conn_index: int
    edge_id: str
    since: str
    client: str

    @classmethod
    def from_mapping(cls, data: Mapping[str, object]) -> ConnectionInfo:
        return cls(
            connection_id=str(data["connection_id"]),
            connector_id=str(data["connector_id"]),
            conn_index=int(str(data["conn_index"])),
            edge_id=str(data["edge_id"]),
            since=str(data["since"]),
            client=str(data["client"]),
        )

    def as_json(self) -> dict[str, object]:
        return {
            "connection_id": self.connection_id,
            "connector_id": self.connector_id,
            "conn_index": self.conn_index,
            "edge_id": self.edge_id,
            "since": self.since,
            "client": self.client,
        }


LiveConnectionView = ConnectionInfo | Mapping[str, object]
"""A live connection as the tunnel registry reports it: ConnectionInfo or its JSON mapping."""


class ChangeKind(StrEnum):
    TUNNEL_CREATED = "tunnel_created"
    TUNNEL_DELETED = "tunnel_deleted"
    CREDENTIAL_ADDED = "credential_added"
    ROUTE_ADDED = "route_added"
    ROUTE_DELETED = "route_deleted"
    APP_CHANGED = "app_changed"
    IDP_CHANGED = "idp_changed"
    SERVICE_TOKEN_CHANGED = "service_token_changed"
    SESSIONS_REVOKED = "sessions_revoked"
    KEYS_ROTATED = "keys_rotated"
    # Only another edge of a shared store announces these (a login or logout there).
    SESSION_SAVED = "session_saved"
    SESSION_DELETED = "session_deleted"


@dataclass(frozen=True)
class ChangeEvent:
    """What changed, so the running edge can rebuild what the request path reads.

    On TUNNEL_DELETED the edge drops the tunnel's connections (permanently). The Access kinds
    (APP_CHANGED, IDP_CHANGED, SERVICE_TOKEN_CHANGED) mean: rebuild the Access catalog;
    ``name`` is the app, IdP or token when one was changed, None after an ``apply``.
    SESSIONS_REVOKED carries ``email`` or ``aud`` (and the app's ``name``): end those sessions
    in memory too, and close their open streams. KEYS_ROTATED: reload the key ring.
    SESSION_SAVED / SESSION_DELETED (``name`` is the stored session's id hash): another edge
    of the store signed someone in or out; only the Access sessions change.
    """

    kind: ChangeKind
    tunnel_id: str = ""
    hostname: str | None = None
    force: bool = False
    name: str | None = None
    email: str | None = None
    aud: str | None = None


@dataclass(frozen=True)
class AdminResponse:
    status: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""

    def json(self) -> Any:
        return json.loads(self.body)


def json_response(
    status: int, payload: object, extra: list[tuple[bytes, bytes]] | None = None
) -> AdminResponse:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [
        (b"content-type", b"application/json"),
        # Bodies carry secrets shown once; no cache anywhere may keep them.
        (b"cache-control", b"no-store"),
        *(extra or []),
    ]
    return AdminResponse(status, headers, body)


def _error_response(
    exc: EdgeError, extra: list[tuple[bytes, bytes]] | None = None
) -> AdminResponse:
    payload = {"error": exc.code, "message": exc.message, "hint": exc.hint}
    return json_response(exc.status, payload, extra)


def _format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _route_json(route: Route) -> dict[str, object]:
    return {
        "hostname": route.hostname,
        "tunnel_id": route.tunnel_id,
        "tunnel_name": route.tunnel_name,
    }


def parse_json_body(body: bytes) -> Any:
    """The JSON value of a request body, or AdminError(invalid_json)."""
    try:
        return json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AdminError(400, "invalid_json", f"request body is not JSON: {exc}") from None


def _json_object(body: bytes, fields: set[str]) -> dict[str, Any]:
    """Parse a request body that must be a JSON object with exactly the given fields."""
    data = parse_json_body(body)
    expected = ", ".join(f'"{name}"' for name in sorted(fields))
    if not isinstance(data, dict):
        raise AdminError(400, "invalid_body", f"expected a JSON object with {expected}")
    unknown = sorted(set(data) - fields)
    missing = sorted(fields - set(data))
    if unknown or missing:
        problem = f"unknown field {unknown[0]!r}" if unknown else f"missing field {missing[0]!r}"
        raise AdminError(400, "invalid_body", f"{problem}; expected a JSON object with {expected}")
    return data


Handler = Callable[[dict[str, str], dict[str, list[str]], bytes], Awaitable[AdminResponse]]


class AdminApi:
    """The admin API; ``handle`` answers one request.

    ``clock`` (Unix seconds) dates key rotations; ``key_settings`` says how keys rotate.
    """

    def __init__(
        self,
        store: Store,
        *,
        live_connections: Callable[[], Mapping[str, Sequence[LiveConnectionView]]],
        edge_url: Callable[[], str],
        on_change: Callable[[ChangeEvent], Awaitable[None] | None],
        clock: Callable[[], float] = time.time,
        key_settings: KeySettings | None = None,
    ) -> None:
        # Imported here because the Access endpoints build on this module's types.
        from edge.admin.access_endpoints import AccessEndpoints

        self._store = store
        self._live_connections = live_connections
        self._edge_url = edge_url
        self._on_change = on_change
        self._routes: list[tuple[re.Pattern[str], dict[str, Handler]]] = [
            (re.compile(r"/v1/tunnels"), {"GET": self._list_tunnels, "POST": self._create_tunnel}),
            (
                re.compile(r"/v1/tunnels/(?P<ref>[^/]+)"),
                {"GET": self._get_tunnel, "DELETE": self._delete_tunnel},
            ),
            (re.compile(r"/v1/tunnels/(?P<ref>[^/]+)/tokens"), {"POST": self._add_token}),
            (re.compile(r"/v1/tunnels/(?P<ref>[^/]+)/routes"), {"POST": self._add_route}),
            (re.compile(r"/v1/routes"), {"GET": self._list_routes}),
            (re.compile(r"/v1/routes/(?P<hostname>[^/]+)"), {"DELETE": self._delete_route}),
        ]
        access = AccessEndpoints(
            store, self._notify, clock=clock, key_settings=key_settings or KeySettings()
        )
        self._routes.extend(access.routes())

    async def handle(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> AdminResponse:
        try:
            return await self._dispatch(method, target, headers, body)
        except EdgeError as exc:
            if exc.status >= 500:
                # Details of a failing store stay in the log, not in an answer to any caller.
                log.error("admin %s %s failed: %s", method, target.split("?", 1)[0], exc)
                hidden = AdminError(exc.status, exc.code, "the edge failed to answer this request")
                return _error_response(hidden)
            extra: list[tuple[bytes, bytes]] = []
            if exc.status == 401:
                extra.append((b"www-authenticate", b'Bearer realm="tunnelgate-admin"'))
            if exc.status == 405 and isinstance(exc, _MethodNotAllowed):
                extra.append((b"allow", ", ".join(exc.allowed).encode()))
            return _error_response(exc, extra)
        except Exception:
            log.exception("admin %s %s failed", method, target.split("?", 1)[0])
            error = AdminError(500, "internal_error", "the edge failed to answer this request")
            return _error_response(error)

    async def _dispatch(
        self, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> AdminResponse:
        if len(body) > MAX_BODY_BYTES:
            raise AdminError(
                413, "payload_too_large", f"bodies are capped at {MAX_BODY_BYTES} bytes"
            )
        parts = urlsplit(target)
        path = parts.path
        if path == "/v1/openapi.json":
            if method != "GET":
                raise _MethodNotAllowed(["GET"])
            return json_response(200, openapi_document())
        await self._authenticate(headers)
        for pattern, handlers in self._routes:
            match = pattern.fullmatch(path)
            if match is None:
                continue
            handler = handlers.get(method)
            if handler is None:
                raise _MethodNotAllowed(sorted(handlers))
            params = {name: unquote(value) for name, value in match.groupdict().items()}
            return await handler(params, parse_qs(parts.query), body)
        raise AdminError(404, "not_found", f"no such endpoint: {path}", hint="see /v1/openapi.json")

    async def _authenticate(self, headers: list[tuple[bytes, bytes]]) -> None:
        values = [value for name, value in headers if name.lower() == b"authorization"]
        hint = "send Authorization: Bearer <admin token> (the token init wrote to admin.token)"
        if len(values) != 1:
            raise AdminError(401, "unauthorized", "an admin token is required", hint=hint)
        scheme, _, token = values[0].decode("latin-1").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AdminError(401, "unauthorized", "an admin token is required", hint=hint)
        if not await self._run(self._store.verify_admin_token, token):
            raise AdminError(401, "unauthorized", "the admin token is not valid", hint=hint)

    @staticmethod
    async def _run(function: Callable[..., _T], *args: object) -> _T:
        return await trio.to_thread.run_sync(functools.partial(function, *args))

    def _connections(self) -> dict[str, list[ConnectionInfo]]:
        return {
            tunnel_id: [
                info if isinstance(info, ConnectionInfo) else ConnectionInfo.from_mapping(info)
                for info in infos
            ]
            for tunnel_id, infos in self._live_connections().items()
        }

    async def _notify(self, event: ChangeEvent) -> None:
        try:
            result = self._on_change(event)
            if result is not None:
                await result
        except Exception:
            log.exception(
                "edge failed to apply %s (tunnel %s, name %s); in-memory state may be stale",
                event.kind,
                event.tunnel_id or "-",
                event.name or "-",
            )

    def _tunnel_json(
        self,
        tunnel: Tunnel,
        routes: list[Route],
        live: Mapping[str, list[ConnectionInfo]],
    ) -> dict[str, object]:
        return {
            "id": tunnel.id,
            "name": tunnel.name,
            "created_at": _format_time(tunnel.created_at),
            "routes": [route.hostname for route in routes if route.tunnel_id == tunnel.id],
            "connections": [info.as_json() for info in live.get(tunnel.id, [])],
        }

    def _run_token(self, tunnel_id: str, secret: str) -> str:
        return encode_run_token(tunnel_id, secret, self._edge_url())

    # -- endpoints -------------------------------------------------------------------------

    async def _create_tunnel(
        self, params: dict[str, str], query: dict[str, list[str]], body: bytes
    ) -> AdminResponse:
        name = _json_object(body, {"name"})["name"]
        if not isinstance(name, str):
            raise AdminError(400, "invalid_name", "the tunnel name must be a string")
        tunnel, secret = await self._run(self._store.create_tunnel, name)
        edge_url = self._edge_url()
        log.info("admin: created tunnel %s (%s)", tunnel.id, tunnel.name)
        await self._notify(ChangeEvent(ChangeKind.TUNNEL_CREATED, tunnel.id))
        payload = {
            "id": tunnel.id,
            "name": tunnel.name,
            "created_at": _format_time(tunnel.created_at),
            "credentials": {
                "tunnel_id": tunnel.id,
                "tunnel_name": tunnel.name,
                "tunnel_secret": secret,
                "edge_url": edge_url,
            },
            "token": encode_run_token(tunnel.id, secret, edge_url),
        }
        location = f"/v1/tunnels/{tunnel.id}".encode()
        return json_response(201, payload, [(b"location", location)])

    async def _list_tunnels(
        self, params: dict[str, str], query: dict[str, list[str]], body: bytes
    ) -> AdminResponse:
        def read() -> tuple[list[Tunnel], list[Route]]:
            return self._store.list_tunnels(), self._store.list_routes()

        tunnels, routes = await trio.to_thread.run_sync(read)
        live = self._connections()
        return json_response(
            200, {"tunnels": [self._tunnel_json(t, routes, live) for t in tunnels]}
        )

    async def _get_tunnel(
        self, params: dict[str, str], query: dict[str, list[str]], body: bytes
    ) -> AdminResponse:
        def read() -> tuple[Tunnel, list[Route]]:
            return self._store.get_tunnel(params["ref"]), self._store.list_routes()

        tunnel, routes = await trio.to_thread.run_sync(read)
        return json_response(200, self._tunnel_json(tunnel, routes, self._connections()))

    async def _delete_tunnel(
        self, params: dict[str, str], query: dict[str, list[str]], body: bytes
    ) -> AdminResponse:
        force_values = query.get("force", ["false"])
        if len(force_values) != 1 or force_values[0] not in {"true", "false"}:
            raise AdminError(400, "invalid_query", 'force must be "true" or "false"')
        force = force_values[0] == "true"
        tunnel = await self._run(self._store.get_tunnel, params["ref"])
        connections = self._connections().get(tunnel.id, [])
        if connections and not force:
            raise AdminError(
                409,
                "tunnel_connected",
                f"tunnel {tunnel.name!r} has {len(connections)} live connection(s)",
                hint="stop its connectors first, or add ?force=true to disconnect them",
            )
        await self._run(self._store.delete_tunnel, tunnel.id)
        log.info(
            "admin: deleted tunnel %s (%s), dropping %d connection(s)",
            tunnel.id,
            tunnel.name,
            len(connections),
        )
        await self._notify(ChangeEvent(ChangeKind.TUNNEL_DELETED, tunnel.id, force=force))
        return AdminResponse(204)

    async def _add_token(
        self, params: dict[str, str], query: dict[str, list[str]], body: bytes
    ) -> AdminResponse:
        tunnel = await self._run(self._store.get_tunnel, params["ref"])
        secret = await self._run(self._store.add_tunnel_credential, tunnel.id)
        log.info("admin: added a credential to tunnel %s", tunnel.id)
        await self._notify(ChangeEvent(ChangeKind.CREDENTIAL_ADDED, tunnel.id))
        return json_response(201, {"token": self._run_token(tunnel.id, secret)})

    async def _add_route(
        self, params: dict[str, str], query: dict[str, list[str]], body: bytes
    ) -> AdminResponse:
        hostname = _json_object(body, {"hostname"})["hostname"]
        if not isinstance(hostname, str):
            raise AdminError(400, "invalid_hostname", "the hostname must be a string")
        tunnel = await self._run(self._store.get_tunnel, params["ref"])
        route, created = await self._run(self._store.add_route, tunnel.id, hostname)
        if created:
            log.info("admin: routed %s to tunnel %s", route.hostname, tunnel.id)
            await self._notify(
                ChangeEvent(ChangeKind.ROUTE_ADDED, tunnel.id, hostname=route.hostname)
            )
        return json_response(201 if created else 200, _route_json(route))

    async def _list_routes(
        self, params: dict[str, str], query: dict[str, list[str]], body: bytes
    ) -> AdminResponse:
        routes = await self._run(self._store.list_routes)
        return json_response(200, {"routes": [_route_json(route) for route in routes]})

    async def _delete_route(
        self, params: dict[str, str], query: dict[str, list[str]], body: bytes
    ) -> AdminResponse:
        route = await self._run(self._store.delete_route, params["hostname"])
        log.info("admin: removed route %s from tunnel %s", route.hostname, route.tunnel_id)
        await self._notify(
            ChangeEvent(ChangeKind.ROUTE_DELETED, route.tunnel_id, hostname=route.hostname)
        )
        return AdminResponse(204)


class _MethodNotAllowed(AdminError):
    def __init__(self, allowed: list[str]) -> None:
        super().__init__(405, "method_not_allowed", f"allowed methods: {', '.join(allowed)}")
        self.allowed = allowed
