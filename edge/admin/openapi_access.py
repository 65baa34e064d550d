"""The Access half of the admin API's OpenAPI document (merged in by ``edge.admin.openapi``).

Error codes are listed per status so a client can tell ``app_exists`` from ``domain_taken``
without reading messages; the tests check real answers against these schemas.
"""

from __future__ import annotations

from typing import Any

from edge.admin.openapi import _array, _object, _operation, _ref

__all__ = ["access_parameters", "access_paths", "access_schemas"]

_TEXT = {"type": "string"}
_NULLABLE_TEXT = {"type": ["string", "null"]}
_TIMESTAMP = {"type": "string", "format": "date-time"}
_NULLABLE_TIMESTAMP = {"type": ["string", "null"], "format": "date-time"}
_BOOLEAN = {"type": "boolean"}
_DURATION_INPUT = {
    "type": ["integer", "string"],
    "description": 'seconds, or a duration like "24h", "90m", "1h30m"',
}
_SECONDS = {"type": "integer", "minimum": 1, "description": "seconds"}


def access_schemas() -> dict[str, Any]:
    rule = {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "description": (
            "one selector: everyone, email, email_domain, email_list, group, idp, ip, "
            "service_token, any_service_token, auth_method, country, certificate"
        ),
    }
    policy = _object(
        {
            "name": _TEXT,
            "action": {"type": "string", "enum": ["allow", "block", "bypass", "service_auth"]},
            "include": _array(_ref("Rule")),
            "require": _array(_ref("Rule")),
            "exclude": _array(_ref("Rule")),
        },
        optional=("require", "exclude"),
    )
    app_settings: dict[str, Any] = {
        "name": _TEXT,
        "domain": {"type": "string", "examples": ["grafana.example.com", "app.example.com/admin"]},
        "type": {"type": "string", "enum": ["http", "tcp"]},
        "idps": _array(_TEXT),
        "cookie_name": _TEXT,
        "header_name": _TEXT,
        "email_header_name": _TEXT,
        "allow_websockets": _BOOLEAN,
        "allow_encoded_slash": _BOOLEAN,
    }
    optional_settings = tuple(name for name in app_settings if name not in ("name", "domain"))
    idp = _object(
        {
            "name": _TEXT,
            "type": {"type": "string", "enum": ["oidc", "github", "otp"]},
            "issuer": _TEXT,
            "client_id": _TEXT,
            "client_secret_file": _TEXT,
            "groups_claim": _TEXT,
            "scopes": _array(_TEXT),
            "trust_email_without_verified_claim": _BOOLEAN,
            "web_base": _TEXT,
            "api_base": _TEXT,
            "delivery": {"type": "string", "enum": ["smtp", "log"]},
            "smtp_host": _TEXT,
            "smtp_port": {"type": "integer", "minimum": 1},
            "smtp_from": _TEXT,
            "smtp_starttls": _BOOLEAN,
            "smtp_username": _TEXT,
            "smtp_password_file": _TEXT,
            "code_length": {"type": "integer", "minimum": 4},
            "code_lifetime": _DURATION_INPUT,
            "max_attempts": {"type": "integer", "minimum": 1},
        },
        optional=(
            "issuer",
            "client_id",
            "client_secret_file",
            "groups_claim",
            "scopes",
            "trust_email_without_verified_claim",
            "web_base",
            "api_base",
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
        ),
    )
    service_token = {
        "id": {"type": "string", "format": "uuid"},
        "name": _TEXT,
        "client_id": _TEXT,
        "created_at": _TIMESTAMP,
        "expires_at": _TIMESTAMP,
    }
    create_token = _object({"name": _TEXT, "duration": _DURATION_INPUT}, optional=("duration",))
    return {
        "Rule": rule,
        "Policy": policy,
        "PolicyList": _object({"policies": _array(_ref("Policy"))}),
        "AppInput": _object(
            {
                **app_settings,
                "session_duration": _DURATION_INPUT,
                "policies": _array(_ref("Policy")),
            },
            optional=(*optional_settings, "session_duration", "policies"),
        ),
        "App": _object(
            {
                "id": {"type": "string", "format": "uuid"},
                **app_settings,
                "session_duration": _SECONDS,
                "aud": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "created_at": _TIMESTAMP,
                "updated_at": _TIMESTAMP,
                "policies": _array(_ref("Policy")),
            }
        ),
        "AppList": _object({"apps": _array(_ref("App"))}),
        "Idp": idp,
        "IdpList": _object({"idps": _array(_ref("Idp"))}),
        "CreateServiceToken": create_token,
        "ServiceToken": _object(service_token),
        "ServiceTokenCreated": _object({**service_token, "client_secret": _TEXT}),
        "ServiceTokenList": _object({"service_tokens": _array(_ref("ServiceToken"))}),
        "RevokeSessions": {
            **_object({"email": _TEXT, "app": _TEXT}, optional=("email", "app")),
            "minProperties": 1,
            "maxProperties": 1,
        },
        "Revoked": _object(
            {
                "email": _TEXT,
                "sessions_ended": {"type": "integer", "minimum": 0},
                "app": _TEXT,
                "aud": _TEXT,
                "revoked_at": _TIMESTAMP,
            },
            optional=("email", "sessions_ended", "app", "aud"),
        ),
        "SigningKey": _object(
            {
                "kid": _TEXT,
                "algorithm": {"type": "string", "enum": ["RS256", "ES256"]},
                "created_at": _TIMESTAMP,
                "not_after": _NULLABLE_TIMESTAMP,
                "active": _BOOLEAN,
                "published": _BOOLEAN,
            }
        ),
        "KeyList": _object({"active": _NULLABLE_TEXT, "keys": _array(_ref("SigningKey"))}),
        "RotateKeys": _object(
            {"algorithm": {"type": "string", "enum": ["RS256", "ES256"]}}, optional=("algorithm",)
        ),
        "AuditEvent": _object(
            {
                "time": _TIMESTAMP,
                "kind": _TEXT,
                "app": _NULLABLE_TEXT,
                "subject": _NULLABLE_TEXT,
                "detail": {"type": "object"},
            }
        ),
        "AuditLog": _object({"events": _array(_ref("AuditEvent"))}),
        "ApplyDocument": _object(
            {
                "idp": _array(_ref("Idp")),
                "app": _array(
                    _object(
                        {
                            **app_settings,
                            "session_duration": _DURATION_INPUT,
                            "policy": _array(_ref("Policy")),
                        },
                        optional=(*optional_settings, "session_duration", "policy"),
                    )
                ),
                "service_token": _array(_ref("CreateServiceToken")),
            },
            optional=("idp", "app", "service_token"),
        ),
        "Change": _object(
            {
                "action": {"type": "string", "enum": ["create", "update", "delete"]},
                "target": {
                    "type": "string",
                    "enum": ["idp", "app", "policies", "service_token"],
                },
                "name": _TEXT,
                "fields": _array(_TEXT),
                "summary": _TEXT,
            }
        ),
        "ApplyResult": _object(
            {
                "dry_run": _BOOLEAN,
                "prune": _BOOLEAN,
                "changes": _array(_ref("Change")),
                "service_tokens": _array(_ref("ServiceTokenCreated")),
            }
        ),
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def access_parameters() -> dict[str, Any]:
    flag = {"type": "string", "enum": ["true", "false"]}
    return {
        "name": {
            "name": "name",
            "in": "path",
            "required": True,
            "schema": _TEXT,
            "description": "application, identity provider or service token name",
        },
        "limit": _query("limit", {"type": "integer", "minimum": 1}, "at most this many (1-1000)"),
        "app": _query("app", _TEXT, "only entries about this application"),
        "email": _query("email", _TEXT, "only entries about this e-mail or service token"),
        "dry_run": _query("dry_run", flag, "report the plan, change nothing"),
        "prune": _query("prune", flag, "also delete apps, IdPs and tokens the document omits"),
    }


def access_paths() -> dict[str, Any]:
    invalid = (
        "invalid_json, invalid_body, invalid_name, invalid_domain, invalid_app, invalid_policy, "
        "invalid_duration or unknown_idp; the message starts with the key path",
        "Error",
    )
    rotate = _operation(
        "rotateKeys",
        "Make a new active signing key; the previous one stays published for the overlap",
        {200: ("rotated", "KeyList"), 400: ("invalid_json or invalid_body", "Error")},
        body="RotateKeys",
    )
    rotate["requestBody"]["required"] = False  # an empty body keeps the algorithm
    no_app = ("no such application (app_not_found)", "Error")
    no_idp = ("no such identity provider (idp_not_found)", "Error")
    app_conflict = ("app_exists or domain_taken", "Error")
    return {
        "/v1/apps": {
            "get": _operation(
                "listApps", "List applications with their policies", {200: ("all", "AppList")}
            ),
            "post": _operation(
                "createApp",
                "Create an application (and, optionally, its policies); a new AUD tag is made",
                {201: ("created", "App"), 400: invalid, 409: app_conflict},
                body="AppInput",
            ),
        },
        "/v1/apps/{name}": {
            "get": _operation(
                "getApp",
                "Show one application",
                {200: ("the app", "App"), 404: no_app},
                parameters=("name",),
            ),
            "put": _operation(
                "replaceApp",
                "Replace an application's settings (policies too when given); id and AUD stay",
                {200: ("replaced", "App"), 400: invalid, 404: no_app, 409: app_conflict},
                body="AppInput",
                parameters=("name",),
            ),
            "delete": _operation(
                "deleteApp",
                "Delete an application with its policies",
                {204: ("deleted", None), 404: no_app},
                parameters=("name",),
            ),
        },
        "/v1/apps/{name}/policies": {
            "get": _operation(
                "getPolicies",
                "An application's ordered policies",
                {200: ("the policies", "PolicyList"), 404: no_app},
                parameters=("name",),
            ),
            "put": _operation(
                "setPolicies",
                "Replace an application's ordered policy list",
                {200: ("stored", "PolicyList"), 400: invalid, 404: no_app},
                body="PolicyList",
                parameters=("name",),
            ),
        },
        "/v1/idps": {
            "get": _operation("listIdps", "List identity providers", {200: ("all", "IdpList")}),
            "post": _operation(
                "createIdp",
                "Add an identity provider (secrets by file path only)",
                {
                    201: ("created", "Idp"),
                    400: ("invalid_json, invalid_body, invalid_name or invalid_idp", "Error"),
                    409: ("an IdP with this name exists (idp_exists)", "Error"),
                },
                body="Idp",
            ),
        },
        "/v1/idps/{name}": {
            "get": _operation(
                "getIdp",
                "Show one identity provider",
                {200: ("the IdP", "Idp"), 404: no_idp},
                parameters=("name",),
            ),
            "put": _operation(
                "replaceIdp",
                "Replace an identity provider's settings",
                {
                    200: ("replaced", "Idp"),
                    400: ("invalid_json, invalid_body or invalid_idp", "Error"),
                    404: no_idp,
                },
                body="Idp",
                parameters=("name",),
            ),
            "delete": _operation(
                "deleteIdp",
                "Delete an identity provider no application lists",
                {
                    204: ("deleted", None),
                    404: no_idp,
                    409: ("applications still list it (idp_in_use)", "Error"),
                },
                parameters=("name",),
            ),
        },
        "/v1/service-tokens": {
            "get": _operation(
                "listServiceTokens",
                "List service tokens (never their secrets)",
                {200: ("all", "ServiceTokenList")},
            ),
            "post": _operation(
                "createServiceToken",
                "Create a service token; its client secret is shown only here",
                {
                    201: ("created", "ServiceTokenCreated"),
                    400: ("invalid_json, invalid_body, invalid_name or invalid_duration", "Error"),
                    409: ("a token with this name exists (service_token_exists)", "Error"),
                },
                body="CreateServiceToken",
            ),
        },
        "/v1/service-tokens/{name}": {
            "delete": _operation(
                "deleteServiceToken",
                "Delete a service token; requests presenting it are refused from then on",
                {
                    204: ("deleted", None),
                    404: ("no such token (service_token_not_found)", "Error"),
                },
                parameters=("name",),
            ),
        },
        "/v1/sessions/revoke": {
            "post": _operation(
                "revokeSessions",
                "End one person's sessions everywhere, or every session of one application",
                {
                    200: ("revoked", "Revoked"),
                    400: ("invalid_json, invalid_body or invalid_email", "Error"),
                    404: no_app,
                },
                body="RevokeSessions",
            ),
        },
        "/v1/keys": {
            "get": _operation(
                "listKeys", "Signing keys (metadata only)", {200: ("the keys", "KeyList")}
            ),
        },
        "/v1/keys/rotate": {
            "post": rotate,
        },
        "/v1/audit": {
            "get": _operation(
                "getAudit",
                "The newest audit log entries (changes and access decisions), newest first",
                {200: ("entries", "AuditLog"), 400: ("invalid_query", "Error")},
                parameters=("limit", "app", "email"),
            ),
        },
        "/v1/apply": {
            "post": _operation(
                "applyDocument",
                "Make the store match a document of IdPs, apps with policies and service tokens",
                {
                    200: ("the changes made (or planned, with dry_run)", "ApplyResult"),
                    400: (
                        invalid[0].replace("or unknown_idp", "unknown_idp or invalid_query"),
                        "Error",
                    ),
                    409: ("domain_taken and other conflicts found while writing", "Error"),
                },
                body="ApplyDocument",
                parameters=("dry_run", "prune"),
            ),
        },
    }
