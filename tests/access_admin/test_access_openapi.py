"""The OpenAPI document covers every Access endpoint, and real answers match its schemas."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any

import pytest

from edge.admin import AdminApi, AdminResponse, openapi_document

from .conftest import Client, engineers_policy, grafana_app, oidc_idp, otp_idp
from .test_apply import document as apply_document_sample

ACCESS_PREFIXES = (
    "/v1/apps",
    "/v1/idps",
    "/v1/service-tokens",
    "/v1/sessions",
    "/v1/keys",
    "/v1/audit",
    "/v1/apply",
)


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        target: Any = document
        for part in node["$ref"][2:].split("/"):
            target = target[part]
        node = target
    return node


def _type_matches(kind: str, value: Any) -> bool:
    return {
        "object": isinstance(value, dict),
        "array": isinstance(value, list),
        "string": isinstance(value, str),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "boolean": isinstance(value, bool),
        "null": value is None,
    }[kind]


def validate(
    document: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "$"
) -> None:
    """A JSON Schema check of the keywords the document uses (types may be lists)."""
    schema = resolve(document, schema)
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    matching = [kind for kind in kinds if _type_matches(kind, value)]
    assert matching, f"{where}: {value!r} is not {kinds}"
    kind = matching[0]
    if kind == "object":
        for name in schema.get("required", []):
            assert name in value, f"{where}: missing {name}"
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            extra = set(value) - set(properties)
            assert not extra, f"{where}: undocumented {sorted(extra)}"
        assert len(value) >= schema.get("minProperties", 0), where
        assert len(value) <= schema.get("maxProperties", len(value)), where
        for name, sub in properties.items():
            if name in value:
                validate(document, sub, value[name], f"{where}.{name}")
    elif kind == "array":
        for index, item in enumerate(value):
            validate(document, schema["items"], item, f"{where}[{index}]")
    elif kind == "string":
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), f"{where}: {value!r} vs pattern"
        if schema.get("format") == "uuid":
            uuid.UUID(value)
        if schema.get("format") == "date-time":
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        if "enum" in schema:
            assert value in schema["enum"], f"{where}: {value!r} not in enum"
    elif kind == "integer":
        assert value >= schema.get("minimum", value), where


def test_documented_operations_and_routed_endpoints_are_the_same(api: AdminApi) -> None:
    document = openapi_document()
    routed = {
        (method, pattern.pattern)
        for pattern, handlers in api._routes
        for method in handlers
        if pattern.pattern.startswith(ACCESS_PREFIXES)
    }
    documented: set[tuple[str, str]] = set()
    for path, item in document["paths"].items():
        if not path.startswith(ACCESS_PREFIXES):
            continue
        concrete = re.sub(r"{\w+}", "sample", path)
        patterns = [p for p, _ in api._routes if p.fullmatch(concrete)]
        assert len(patterns) == 1, path
        documented |= {(method.upper(), patterns[0].pattern) for method in item}
    assert documented == routed
    assert len(routed) == 20


def check(document: dict[str, Any], method: str, path: str, response: AdminResponse) -> None:
    operation = document["paths"][path][method.lower()]
    documented = operation["responses"].get(str(response.status))
    assert documented is not None, f"{method} {path} answered undocumented {response.status}"
    if "content" in documented:
        schema = documented["content"]["application/json"]["schema"]
        validate(document, schema, json.loads(response.body), f"{method} {path}")
    else:
        assert response.status == 204


async def test_every_access_operation_answers_as_documented(client: Client) -> None:
    document = openapi_document()
    exercised: set[tuple[str, str]] = set()

    async def call(method: str, path: str, target: str, payload: Any = None) -> int:
        response = await client.call(method, target, payload)
        check(document, method, path, response)
        exercised.add((method, path))
        return response.status

    unauthenticated = await client.call("GET", "/v1/apps", token="")
    check(document, "GET", "/v1/apps", unauthenticated)
    assert await call("POST", "/v1/idps", "/v1/idps", oidc_idp()) == 201
    assert await call("POST", "/v1/idps", "/v1/idps", otp_idp()) == 201
    assert await call("POST", "/v1/idps", "/v1/idps", oidc_idp()) == 409
    assert await call("POST", "/v1/idps", "/v1/idps", {"name": "x"}) == 400
    assert await call("GET", "/v1/idps", "/v1/idps") == 200
    one_idp = "/v1/idps/{name}"
    assert await call("GET", one_idp, "/v1/idps/corp") == 200
    assert await call("GET", one_idp, "/v1/idps/nope") == 404
    assert await call("PUT", one_idp, "/v1/idps/pin", otp_idp(code_length=8)) == 200
    assert await call("PUT", one_idp, "/v1/idps/nope", otp_idp("nope")) == 404
    assert await call("PUT", one_idp, "/v1/idps/pin", otp_idp(delivery="fax")) == 400

    app = grafana_app(policies=[engineers_policy()])
    assert await call("POST", "/v1/apps", "/v1/apps", app) == 201
    assert await call("POST", "/v1/apps", "/v1/apps", app) == 409
    assert (
        await call(
            "POST", "/v1/apps", "/v1/apps", grafana_app(name="x", domain="x.io", idps=["no"])
        )
        == 400
    )
    assert await call("GET", "/v1/apps", "/v1/apps") == 200
    one_app = "/v1/apps/{name}"
    assert await call("GET", one_app, "/v1/apps/grafana") == 200
    assert await call("GET", one_app, "/v1/apps/nope") == 404
    assert await call("PUT", one_app, "/v1/apps/grafana", grafana_app(type="tcp")) == 200
    assert await call("PUT", one_app, "/v1/apps/grafana", grafana_app(type="udp")) == 400
    assert await call("PUT", one_app, "/v1/apps/nope", grafana_app(name="nope")) == 404
    assert await call("POST", "/v1/apps", "/v1/apps", grafana_app(name="b")) == 409
    assert await call("PUT", one_app, "/v1/apps/b", grafana_app(name="b")) == 404
    policies = "/v1/apps/{name}/policies"
    assert await call("GET", policies, "/v1/apps/grafana/policies") == 200
    assert await call("GET", policies, "/v1/apps/nope/policies") == 404
    payload = {"policies": [engineers_policy()]}
    assert await call("PUT", policies, "/v1/apps/grafana/policies", payload) == 200
    assert await call("PUT", policies, "/v1/apps/nope/policies", payload) == 404
    assert await call("PUT", policies, "/v1/apps/grafana/policies", {"policies": 1}) == 400
    assert await call("DELETE", one_idp, "/v1/idps/corp") == 409

    tokens, one_token = "/v1/service-tokens", "/v1/service-tokens/{name}"
    assert await call("POST", tokens, tokens, {"name": "ci", "duration": 3600}) == 201
    assert await call("POST", tokens, tokens, {"name": "ci"}) == 409
    assert await call("POST", tokens, tokens, {"name": "ci", "duration": "x"}) == 400
    assert await call("GET", tokens, tokens) == 200
    assert await call("DELETE", one_token, "/v1/service-tokens/ci") == 204
    assert await call("DELETE", one_token, "/v1/service-tokens/ci") == 404

    revoke = "/v1/sessions/revoke"
    assert await call("POST", revoke, revoke, {"email": "a@example.com"}) == 200
    assert await call("POST", revoke, revoke, {"app": "grafana"}) == 200
    assert await call("POST", revoke, revoke, {"app": "nope"}) == 404
    assert await call("POST", revoke, revoke, {}) == 400

    assert await call("GET", "/v1/keys", "/v1/keys") == 200
    assert await call("POST", "/v1/keys/rotate", "/v1/keys/rotate") == 200
    assert await call("POST", "/v1/keys/rotate", "/v1/keys/rotate", {"algorithm": "x"}) == 400
    assert await call("GET", "/v1/keys", "/v1/keys") == 200

    assert await call("GET", "/v1/audit", "/v1/audit?limit=5&app=grafana") == 200
    assert await call("GET", "/v1/audit", "/v1/audit?limit=0") == 400

    apply = "/v1/apply"
    assert await call("POST", apply, "/v1/apply?dry_run=true", apply_document_sample()) == 200
    assert await call("POST", apply, "/v1/apply?prune=true", apply_document_sample()) == 200
    assert await call("POST", apply, apply, {"app": [{"name": "x"}]}) == 400
    assert await call("POST", apply, "/v1/apply?dry_run=1", {}) == 400

    one_app_delete = await client.call("DELETE", "/v1/apps/grafana")
    check(document, "DELETE", one_app, one_app_delete)
    assert one_app_delete.status == 204
    assert await call("DELETE", one_app, "/v1/apps/grafana") == 404
    assert await call("DELETE", one_idp, "/v1/idps/pin") == 409  # the applied wiki lists it
    assert await call("DELETE", one_idp, "/v1/idps/nope") == 404
    access_operations = {
        (method.upper(), path)
        for path, item in document["paths"].items()
        if path.startswith(ACCESS_PREFIXES)
        for method in item
    }
    assert exercised == access_operations


@pytest.mark.parametrize(
    ("name", "sample"),
    [
        ("AppInput", grafana_app(policies=[engineers_policy()])),
        ("Idp", oidc_idp()),
        ("Idp", otp_idp(delivery="smtp", smtp_host="m", smtp_from="a@b.c", smtp_port=25)),
        ("PolicyList", {"policies": [engineers_policy()]}),
        ("CreateServiceToken", {"name": "ci", "duration": "8760h"}),
        ("RevokeSessions", {"email": "a@example.com"}),
        ("RotateKeys", {"algorithm": "ES256"}),
        ("ApplyDocument", apply_document_sample()),
    ],
)
def test_request_schemas_accept_what_the_api_accepts(name: str, sample: dict[str, Any]) -> None:
    document = openapi_document()
    validate(document, {"$ref": f"#/components/schemas/{name}"}, sample)
    with pytest.raises(AssertionError):
        validate(document, {"$ref": f"#/components/schemas/{name}"}, {**sample, "extra": 1})
