"""The OpenAPI document must be structurally sound and must match what the API really does."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime
from typing import Any

import pytest

from edge.admin import AdminResponse, openapi_document
from edge.store.sqlite import SqliteStore

from .conftest import Client, FakeEdge

HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        pointer = node["$ref"]
        assert pointer.startswith("#/"), pointer
        target: Any = document
        for part in pointer[2:].split("/"):
            target = target[part]
        node = target
    return node


def validate(
    document: dict[str, Any], schema: dict[str, Any], value: Any, where: str = "$"
) -> None:
    """A JSON Schema check for the keywords the document uses."""
    schema = resolve(document, schema)
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict), f"{where}: expected object, got {value!r}"
        for name in schema.get("required", []):
            assert name in value, f"{where}: missing {name}"
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is False:
            extra = set(value) - set(properties)
            assert not extra, f"{where}: undocumented {sorted(extra)}"
        for name, sub in properties.items():
            if name in value:
                validate(document, sub, value[name], f"{where}.{name}")
    elif kind == "array":
        assert isinstance(value, list), f"{where}: expected array"
        for index, item in enumerate(value):
            validate(document, schema["items"], item, f"{where}[{index}]")
    elif kind == "string":
        assert isinstance(value, str), f"{where}: expected string, got {value!r}"
        if "pattern" in schema:
            assert re.search(schema["pattern"], value), f"{where}: {value!r} vs pattern"
        if schema.get("format") == "uuid":
            uuid.UUID(value)
        if schema.get("format") == "date-time":
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        if "enum" in schema:
            assert value in schema["enum"]
    elif kind == "integer":
        assert isinstance(value, int), f"{where}: not integer"
        assert not isinstance(value, bool), f"{where}: boolean, not integer"
        assert value >= schema.get("minimum", value)
    else:
        raise AssertionError(f"{where}: schema without a known type: {schema}")


def walk_refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if "$ref" in node else []
        return found + [ref for value in node.values() for ref in walk_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in walk_refs(value)]
    return []


def test_document_is_structurally_openapi_3_1() -> None:
    document = openapi_document()
    assert re.fullmatch(r"3\.1\.\d+", document["openapi"])
    assert document["info"]["title"]
    assert document["info"]["version"]
    json.dumps(document)
    for ref in walk_refs(document):
        resolve(document, {"$ref": ref})
    operation_ids = []
    for path, item in document["paths"].items():
        assert path.startswith("/v1/")
        templated = set(re.findall(r"{(\w+)}", path))
        for method, operation in item.items():
            assert method in HTTP_METHODS
            operation_ids.append(operation["operationId"])
            assert operation["summary"]
            assert operation["responses"]
            for status, response in operation["responses"].items():
                assert re.fullmatch(r"[1-5]\d\d", status)
                assert response["description"]
            parameters = [resolve(document, p) for p in operation.get("parameters", [])]
            for parameter in parameters:
                assert parameter["in"] in {"path", "query", "header", "cookie"}
                assert "schema" in parameter
            path_params = {p["name"] for p in parameters if p["in"] == "path"}
            assert path_params == templated, (path, method)
            assert all(p["required"] for p in parameters if p["in"] == "path")
            if operation.get("security") != []:
                assert "401" in operation["responses"]
    assert len(operation_ids) == len(set(operation_ids))
    scheme = document["components"]["securitySchemes"]["adminToken"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert document["security"] == [{"adminToken": []}]


def test_document_lists_exactly_the_contract_endpoints() -> None:
    document = openapi_document()
    pairs = {(method.upper(), path) for path, item in document["paths"].items() for method in item}
    assert pairs == {
        ("GET", "/v1/openapi.json"),
        ("GET", "/v1/tunnels"),
        ("POST", "/v1/tunnels"),
        ("GET", "/v1/tunnels/{ref}"),
        ("DELETE", "/v1/tunnels/{ref}"),
        ("POST", "/v1/tunnels/{ref}/tokens"),
        ("POST", "/v1/tunnels/{ref}/routes"),
        ("GET", "/v1/routes"),
        ("DELETE", "/v1/routes/{hostname}"),
        ("GET", "/v1/apps"),
        ("POST", "/v1/apps"),
        ("GET", "/v1/apps/{name}"),
        ("PUT", "/v1/apps/{name}"),
        ("DELETE", "/v1/apps/{name}"),
        ("GET", "/v1/apps/{name}/policies"),
        ("PUT", "/v1/apps/{name}/policies"),
        ("GET", "/v1/idps"),
        ("POST", "/v1/idps"),
        ("GET", "/v1/idps/{name}"),
        ("PUT", "/v1/idps/{name}"),
        ("DELETE", "/v1/idps/{name}"),
        ("GET", "/v1/service-tokens"),
        ("POST", "/v1/service-tokens"),
        ("DELETE", "/v1/service-tokens/{name}"),
        ("POST", "/v1/sessions/revoke"),
        ("GET", "/v1/keys"),
        ("POST", "/v1/keys/rotate"),
        ("GET", "/v1/audit"),
        ("POST", "/v1/apply"),
    }


def check_against_document(
    document: dict[str, Any], method: str, path: str, response: AdminResponse
) -> None:
    operation = document["paths"][path][method.lower()]
    documented = operation["responses"].get(str(response.status))
    assert documented is not None, f"{method} {path} answered undocumented {response.status}"
    if "content" in documented:
        schema = documented["content"]["application/json"]["schema"]
        validate(document, schema, json.loads(response.body), f"{method} {path} {response.status}")
    else:
        assert response.status == 204 or path == "/v1/openapi.json"


async def test_every_documented_operation_answers_as_documented(
    client: Client, store: SqliteStore, fake_edge: FakeEdge
) -> None:
    document = openapi_document()

    async def call(method: str, path: str, target: str, payload: object = None) -> AdminResponse:
        raw = b"" if payload is None else json.dumps(payload).encode()
        response = await client.call(method, target, raw)
        check_against_document(document, method, path, response)
        return response

    unauthenticated = await client.call("GET", "/v1/tunnels", token="")
    check_against_document(document, "GET", "/v1/tunnels", unauthenticated)
    spec = await call("GET", "/v1/openapi.json", "/v1/openapi.json")
    assert json.loads(spec.body) == document

    created = (await call("POST", "/v1/tunnels", "/v1/tunnels", {"name": "home"})).json()
    assert (await call("POST", "/v1/tunnels", "/v1/tunnels", {"name": "home"})).status == 409
    assert (await call("POST", "/v1/tunnels", "/v1/tunnels", {"name": "b d"})).status == 400
    await call("POST", "/v1/tunnels", "/v1/tunnels", {"name": "spare"})
    fake_edge.connect(created["id"])

    routes = "/v1/tunnels/{ref}/routes"
    assert (
        await call("POST", routes, "/v1/tunnels/home/routes", {"hostname": "*.a.io"})
    ).status == 201
    assert (
        await call("POST", routes, "/v1/tunnels/home/routes", {"hostname": "*.a.io"})
    ).status == 200
    assert (
        await call("POST", routes, "/v1/tunnels/spare/routes", {"hostname": "*.a.io"})
    ).status == 409
    assert (
        await call("POST", routes, "/v1/tunnels/home/routes", {"hostname": "a..io"})
    ).status == 400
    assert (
        await call("POST", routes, "/v1/tunnels/nope/routes", {"hostname": "b.io"})
    ).status == 404

    assert (await call("GET", "/v1/tunnels", "/v1/tunnels")).status == 200
    assert (await call("GET", "/v1/tunnels/{ref}", "/v1/tunnels/home")).status == 200
    assert (await call("GET", "/v1/tunnels/{ref}", "/v1/tunnels/nope")).status == 404
    tokens = "/v1/tunnels/{ref}/tokens"
    assert (await call("POST", tokens, "/v1/tunnels/home/tokens")).status == 201
    assert (await call("POST", tokens, "/v1/tunnels/nope/tokens")).status == 404
    assert (await call("GET", "/v1/routes", "/v1/routes")).status == 200

    one = "/v1/routes/{hostname}"
    assert (await call("DELETE", one, "/v1/routes/*.a.io")).status == 204
    assert (await call("DELETE", one, "/v1/routes/*.a.io")).status == 404
    assert (await call("DELETE", one, "/v1/routes/a..io")).status == 400

    tunnel = "/v1/tunnels/{ref}"
    assert (await call("DELETE", tunnel, "/v1/tunnels/home")).status == 409
    assert (await call("DELETE", tunnel, "/v1/tunnels/home?force=maybe")).status == 400
    assert (await call("DELETE", tunnel, "/v1/tunnels/home?force=true")).status == 204
    assert (await call("DELETE", tunnel, "/v1/tunnels/home")).status == 404


@pytest.mark.parametrize("name", ["CreateTunnel", "AddRoute"])
def test_request_schemas_accept_what_the_api_accepts(name: str) -> None:
    document = openapi_document()
    sample = {"CreateTunnel": {"name": "home"}, "AddRoute": {"hostname": "*.example.com"}}[name]
    validate(document, {"$ref": f"#/components/schemas/{name}"}, sample)
    with pytest.raises(AssertionError):
        validate(document, {"$ref": f"#/components/schemas/{name}"}, {**sample, "x": 1})
