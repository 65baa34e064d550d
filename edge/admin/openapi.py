"""The OpenAPI 3.1 document of the admin API, served at ``/v1/openapi.json``.

It is written out by hand rather than derived from the handlers so that it can say what each
error code means; the tests check that every documented operation exists and that real
responses match the documented schemas, which keeps the two from drifting apart. The Access
part (applications, policies, IdPs, service tokens, sessions, keys, audit, apply) is described
in :mod:`edge.admin.openapi_access` with the builders defined here.
"""

from __future__ import annotations

import functools
import json
from typing import Any


def _object(properties: dict[str, Any], *, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "required": sorted(set(properties) - set(optional)),
        "properties": properties,
        "additionalProperties": False,
    }


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def _operation(
    operation_id: str,
    summary: str,
    responses: dict[int, tuple[str, str | None]],
    *,
    body: str | None = None,
    parameters: tuple[str, ...] = (),
    secured: bool = True,
) -> dict[str, Any]:
    """One OpenAPI operation; responses map status -> (description, schema name or None)."""
    operation: dict[str, Any] = {"operationId": operation_id, "summary": summary}
    if parameters:
        operation["parameters"] = [{"$ref": f"#/components/parameters/{p}"} for p in parameters]
    if body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": _ref(body)}},
        }
    if secured:
        responses = {**responses, 401: ("missing or invalid admin token (unauthorized)", "Error")}
    else:
        operation["security"] = []
    documented: dict[str, Any] = {}
    for status, (description, schema) in sorted(responses.items()):
        entry: dict[str, Any] = {"description": description}
        if schema is not None:
            entry["content"] = {"application/json": {"schema": _ref(schema)}}
        documented[str(status)] = entry
    operation["responses"] = documented
    return operation


@functools.cache
def _openapi_json() -> str:
    text = {"type": "string"}
    timestamp = {"type": "string", "format": "date-time"}
    tunnel_id = {"type": "string", "format": "uuid"}
    hostname = {"type": "string", "examples": ["app.example.com", "*.example.com"]}
    connection = _object(
        {
            "connection_id": text,
            "connector_id": text,
            "conn_index": {"type": "integer", "minimum": 0},
            "edge_id": text,
            "since": timestamp,
            "client": text,
        }
    )
    schemas = {
        "Error": _object({"error": text, "message": text, "hint": text}),
        "CreateTunnel": _object(
            {"name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"}}
        ),
        "AddRoute": _object({"hostname": hostname}),
        "Credentials": _object(
            {"tunnel_id": tunnel_id, "tunnel_name": text, "tunnel_secret": text, "edge_url": text}
        ),
        "TunnelCreated": _object(
            {
                "id": tunnel_id,
                "name": text,
                "created_at": timestamp,
                "credentials": _ref("Credentials"),
                "token": text,
            }
        ),
        "Connection": connection,
        "Tunnel": _object(
            {
                "id": tunnel_id,
                "name": text,
                "created_at": timestamp,
                "routes": _array(text),
                "connections": _array(_ref("Connection")),
            }
        ),
        "TunnelList": _object({"tunnels": _array(_ref("Tunnel"))}),
        "RunToken": _object({"token": text}),
        "Route": _object({"hostname": text, "tunnel_id": tunnel_id, "tunnel_name": text}),
        "RouteList": _object({"routes": _array(_ref("Route"))}),
    }
    parameters = {
        "ref": {
            "name": "ref",
            "in": "path",
            "required": True,
            "schema": text,
            "description": "tunnel name or id",
        },
        "hostname": {"name": "hostname", "in": "path", "required": True, "schema": text},
        "force": {
            "name": "force",
            "in": "query",
            "required": False,
            "schema": {"type": "string", "enum": ["true", "false"]},
            "description": "delete even with live connections, disconnecting them",
        },
    }
    missing = ("no such tunnel (tunnel_not_found)", "Error")
    paths = {
        "/v1/openapi.json": {
            "get": _operation(
                "getOpenApi",
                "This document",
                {200: ("OpenAPI 3.1 document", None)},
                secured=False,
            )
        },
        "/v1/tunnels": {
            "get": _operation(
                "listTunnels",
                "List tunnels with routes and live connections",
                {200: ("all tunnels", "TunnelList")},
            ),
            "post": _operation(
                "createTunnel",
                "Create a tunnel; its secret and run token are shown only here",
                {
                    201: ("created", "TunnelCreated"),
                    400: ("invalid_name, invalid_json or invalid_body", "Error"),
                    409: ("a tunnel with this name exists (tunnel_exists)", "Error"),
                },
                body="CreateTunnel",
            ),
        },
        "/v1/tunnels/{ref}": {
            "get": _operation(
                "getTunnel",
                "Show one tunnel",
                {200: ("the tunnel", "Tunnel"), 404: missing},
                parameters=("ref",),
            ),
            "delete": _operation(
                "deleteTunnel",
                "Delete a tunnel with its routes and credentials",
                {
                    204: ("deleted", None),
                    400: ("invalid force value (invalid_query)", "Error"),
                    404: missing,
                    409: ("live connections and no force (tunnel_connected)", "Error"),
                },
                parameters=("ref", "force"),
            ),
        },
        "/v1/tunnels/{ref}/tokens": {
            "post": _operation(
                "createRunToken",
                "Add a credential; its run token is shown once",
                {201: ("the new run token", "RunToken"), 404: missing},
                parameters=("ref",),
            ),
        },
        "/v1/tunnels/{ref}/routes": {
            "post": _operation(
                "addRoute",
                "Route a hostname (or *.wildcard) to the tunnel",
                {
                    200: ("already routed to this tunnel", "Route"),
                    201: ("routed", "Route"),
                    400: ("invalid_hostname, invalid_json or invalid_body", "Error"),
                    404: missing,
                    409: ("routed to another tunnel (route_exists)", "Error"),
                },
                body="AddRoute",
                parameters=("ref",),
            ),
        },
        "/v1/routes": {
            "get": _operation("listRoutes", "List routes", {200: ("all routes", "RouteList")}),
        },
        "/v1/routes/{hostname}": {
            "delete": _operation(
                "deleteRoute",
                "Remove a route",
                {
                    204: ("removed", None),
                    400: ("invalid hostname (invalid_hostname)", "Error"),
                    404: ("no such route (route_not_found)", "Error"),
                },
                parameters=("hostname",),
            ),
        },
    }
    from edge.admin.openapi_access import access_parameters, access_paths, access_schemas

    schemas.update(access_schemas())
    parameters.update(access_parameters())
    paths.update(access_paths())
    document = {
        "openapi": "3.1.0",
        "info": {
            "title": "tunnelgate edge admin API",
            "version": "1",
            "description": (
                "Tunnels, run tokens and hostname routes of one tunnelgate edge, and its Access "
                "configuration: applications, policies, identity providers, service tokens, "
                "session revocation, signing keys, the audit log and declarative apply."
            ),
        },
        "security": [{"adminToken": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "parameters": parameters,
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an admin token minted by tunnelgate-edge init",
                },
            },
        },
    }
    return json.dumps(document, separators=(",", ":"))


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 description of this API (a fresh copy each call)."""
    result: dict[str, Any] = json.loads(_openapi_json())
    return result
