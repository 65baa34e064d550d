from __future__ import annotations

import json
import re

import pytest

from edge.admin import MAX_BODY_BYTES, AdminApi, ChangeEvent, ChangeKind
from edge.store.sqlite import SqliteStore
from tunnel.auth import decode_run_token, hash_secret

from .conftest import EDGE_URL, Client, FakeEdge


def body(payload: object) -> bytes:
    return json.dumps(payload).encode()


async def create(client: Client, name: str = "home") -> dict[str, object]:
    response = await client.call("POST", "/v1/tunnels", body({"name": name}))
    assert response.status == 201, response.body
    created: dict[str, object] = response.json()
    return created


def header(response_headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    return next((value for key, value in response_headers if key == name), None)


async def test_create_tunnel_shows_credentials_and_run_token_once(
    client: Client, store: SqliteStore, fake_edge: FakeEdge
) -> None:
    response = await client.call("POST", "/v1/tunnels", body({"name": "home"}))
    assert response.status == 201
    data = response.json()
    assert set(data) == {"id", "name", "created_at", "credentials", "token"}
    assert data["name"] == "home"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", data["created_at"])
    credentials = data["credentials"]
    assert credentials["tunnel_id"] == data["id"]
    assert credentials["tunnel_name"] == "home"
    assert credentials["edge_url"] == EDGE_URL
    secret = credentials["tunnel_secret"]
    assert store.tunnel_secret_hashes() == {data["id"]: [hash_secret(secret)]}
    token = decode_run_token(data["token"])
    assert (token.tunnel_id, token.secret, token.edge_url) == (data["id"], secret, EDGE_URL)
    assert header(response.headers, b"cache-control") == b"no-store"
    assert header(response.headers, b"location") == f"/v1/tunnels/{data['id']}".encode()
    assert fake_edge.events == [ChangeEvent(ChangeKind.TUNNEL_CREATED, data["id"])]
    listed = (await client.call("GET", f"/v1/tunnels/{data['id']}")).json()
    assert secret not in json.dumps(listed)


async def test_duplicate_and_invalid_names(client: Client) -> None:
    await create(client)
    duplicate = await client.call("POST", "/v1/tunnels", body({"name": "home"}))
    assert duplicate.status == 409
    assert duplicate.json()["error"] == "tunnel_exists"
    assert duplicate.json()["hint"]
    for bad in ["", "with space", "-x", "x" * 64, 7, None]:
        response = await client.call("POST", "/v1/tunnels", body({"name": bad}))
        assert response.status == 400, bad
        assert response.json()["error"] == "invalid_name"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"", "invalid_json"),
        (b"[]", "invalid_body"),
        (b"{}", "invalid_body"),
        (b'{"name": "a", "extra": 1}', "invalid_body"),
    ],
)
async def test_malformed_bodies(client: Client, raw: bytes, code: str) -> None:
    response = await client.call("POST", "/v1/tunnels", raw)
    assert response.status == 400
    assert response.json()["error"] == code


async def test_oversized_body_is_413(client: Client) -> None:
    response = await client.call("POST", "/v1/tunnels", b" " * (MAX_BODY_BYTES + 1))
    assert response.status == 413
    assert response.json()["error"] == "payload_too_large"


async def test_list_and_get_show_routes_and_live_connections(
    client: Client, fake_edge: FakeEdge
) -> None:
    home = await create(client, "home")
    lab = await create(client, "lab")
    await client.call("POST", "/v1/tunnels/home/routes", body({"hostname": "b.example.com"}))
    await client.call("POST", "/v1/tunnels/home/routes", body({"hostname": "a.example.com"}))
    info = fake_edge.connect(str(home["id"]))
    listed = await client.call("GET", "/v1/tunnels")
    assert listed.status == 200
    tunnels = listed.json()["tunnels"]
    assert [t["name"] for t in tunnels] == ["home", "lab"]
    assert tunnels[0]["routes"] == ["a.example.com", "b.example.com"]
    assert tunnels[0]["connections"] == [info.as_json()]
    assert tunnels[1] == {
        "id": lab["id"],
        "name": "lab",
        "created_at": lab["created_at"],
        "routes": [],
        "connections": [],
    }
    by_name = await client.call("GET", "/v1/tunnels/home")
    by_id = await client.call("GET", f"/v1/tunnels/{home['id']}")
    assert by_name.status == by_id.status == 200
    assert by_name.json() == by_id.json() == tunnels[0]


async def test_connections_reported_as_mappings_are_accepted(
    store: SqliteStore, admin_token: str
) -> None:
    tunnel, _ = store.create_tunnel("home")
    reported = {
        "connection_id": "c1",
        "connector_id": "k1",
        "conn_index": 2,
        "edge_id": "edge-1",
        "since": "2030-01-01T00:00:00Z",
        "client": "198.51.100.4",
    }
    api = AdminApi(
        store,
        live_connections=lambda: {tunnel.id: [reported]},
        edge_url=lambda: EDGE_URL,
        on_change=lambda event: None,
    )
    response = await Client(api, admin_token).call("GET", "/v1/tunnels/home")
    assert response.json()["connections"] == [reported]


async def test_unknown_tunnel_is_404(client: Client) -> None:
    for method, target, payload in [
        ("GET", "/v1/tunnels/ghost", b""),
        ("DELETE", "/v1/tunnels/ghost", b""),
        ("POST", "/v1/tunnels/ghost/tokens", b""),
        ("POST", "/v1/tunnels/ghost/routes", body({"hostname": "a.example.com"})),
    ]:
        response = await client.call(method, target, payload)
        assert response.status == 404, target
        assert response.json()["error"] == "tunnel_not_found"


async def test_run_tokens_add_credentials(
    client: Client, store: SqliteStore, fake_edge: FakeEdge
) -> None:
    home = await create(client)
    response = await client.call("POST", "/v1/tunnels/home/tokens")
    assert response.status == 201
    token = decode_run_token(response.json()["token"])
    assert token.tunnel_id == home["id"]
    assert token.edge_url == EDGE_URL
    assert hash_secret(token.secret) in store.tunnel_secret_hashes()[str(home["id"])]
    assert len(store.tunnel_secret_hashes()[str(home["id"])]) == 2
    assert fake_edge.events[-1] == ChangeEvent(ChangeKind.CREDENTIAL_ADDED, str(home["id"]))


async def test_routes_add_is_idempotent_and_conflicts_across_tunnels(
    client: Client, fake_edge: FakeEdge
) -> None:
    home = await create(client, "home")
    await create(client, "lab")
    fake_edge.events.clear()
    first = await client.call(
        "POST", "/v1/tunnels/home/routes", body({"hostname": "App.Example.com."})
    )
    assert first.status == 201
    expected = {"hostname": "app.example.com", "tunnel_id": home["id"], "tunnel_name": "home"}
    assert first.json() == expected
    again = await client.call(
        "POST", f"/v1/tunnels/{home['id']}/routes", body({"hostname": "app.example.com"})
    )
    assert again.status == 200
    assert again.json() == expected
    other = await client.call(
        "POST", "/v1/tunnels/lab/routes", body({"hostname": "app.example.com"})
    )
    assert other.status == 409
    assert other.json()["error"] == "route_exists"
    assert fake_edge.events == [
        ChangeEvent(ChangeKind.ROUTE_ADDED, str(home["id"]), hostname="app.example.com")
    ]
    routes = await client.call("GET", "/v1/routes")
    assert routes.json() == {"routes": [expected]}


@pytest.mark.parametrize(
    ("hostname", "status"),
    [
        ("*.example.com", 201),
        ("*.Example.com.", 201),
        ("a.*.example.com", 400),
        ("*", 400),
        ("*app.example.com", 400),
        ("app.example.com:8080", 400),
        ("app..example.com", 400),
        ("ex ample.com", 400),
        ("", 400),
    ],
)
async def test_wildcard_and_hostname_validation(client: Client, hostname: str, status: int) -> None:
    await create(client)
    response = await client.call("POST", "/v1/tunnels/home/routes", body({"hostname": hostname}))
    assert response.status == status
    if status == 400:
        assert response.json()["error"] == "invalid_hostname"
    else:
        assert response.json()["hostname"] == "*.example.com"


async def test_route_body_must_carry_a_string_hostname(client: Client) -> None:
    await create(client)
    for payload in [{"hostname": 5}, {"host": "a.example.com"}]:
        response = await client.call("POST", "/v1/tunnels/home/routes", body(payload))
        assert response.status == 400
        assert response.json()["error"] in {"invalid_hostname", "invalid_body"}


async def test_delete_route(client: Client, fake_edge: FakeEdge) -> None:
    home = await create(client)
    await client.call("POST", "/v1/tunnels/home/routes", body({"hostname": "*.example.com"}))
    fake_edge.events.clear()
    response = await client.call("DELETE", "/v1/routes/%2A.example.com")
    assert response.status == 204
    assert response.body == b""
    assert fake_edge.events == [
        ChangeEvent(ChangeKind.ROUTE_DELETED, str(home["id"]), hostname="*.example.com")
    ]
    missing = await client.call("DELETE", "/v1/routes/*.example.com")
    assert missing.status == 404
    assert missing.json()["error"] == "route_not_found"
    invalid = await client.call("DELETE", "/v1/routes/bad_host")
    assert invalid.status == 400
    assert invalid.json()["error"] == "invalid_hostname"


async def test_delete_idle_tunnel(client: Client, store: SqliteStore, fake_edge: FakeEdge) -> None:
    home = await create(client)
    await client.call("POST", "/v1/tunnels/home/routes", body({"hostname": "app.example.com"}))
    response = await client.call("DELETE", "/v1/tunnels/home")
    assert response.status == 204
    assert fake_edge.events[-1] == ChangeEvent(ChangeKind.TUNNEL_DELETED, str(home["id"]))
    assert store.list_routes() == []
    assert store.tunnel_secret_hashes() == {}
    assert (await client.call("GET", "/v1/tunnels/home")).status == 404


async def test_delete_connected_tunnel_needs_force(
    client: Client, store: SqliteStore, fake_edge: FakeEdge
) -> None:
    home = await create(client)
    fake_edge.connect(str(home["id"]), 0)
    fake_edge.connect(str(home["id"]), 1)
    fake_edge.events.clear()
    refused = await client.call("DELETE", "/v1/tunnels/home")
    assert refused.status == 409
    assert refused.json()["error"] == "tunnel_connected"
    assert "force=true" in refused.json()["hint"]
    assert fake_edge.events == []
    assert store.get_tunnel("home").id == home["id"]
    bad = await client.call("DELETE", "/v1/tunnels/home?force=yes")
    assert bad.status == 400
    assert bad.json()["error"] == "invalid_query"
    explicit_no = await client.call("DELETE", "/v1/tunnels/home?force=false")
    assert explicit_no.status == 409
    forced = await client.call("DELETE", "/v1/tunnels/home?force=true")
    assert forced.status == 204
    assert fake_edge.events == [ChangeEvent(ChangeKind.TUNNEL_DELETED, str(home["id"]), force=True)]
    assert store.list_tunnels() == []


async def test_other_tunnels_connections_do_not_block_delete(
    client: Client, fake_edge: FakeEdge
) -> None:
    await create(client, "home")
    lab = await create(client, "lab")
    fake_edge.connect(str(lab["id"]))
    assert (await client.call("DELETE", "/v1/tunnels/home")).status == 204


async def test_async_on_change_is_awaited(store: SqliteStore, admin_token: str) -> None:
    seen: list[ChangeEvent] = []

    async def on_change(event: ChangeEvent) -> None:
        seen.append(event)

    api = AdminApi(store, live_connections=dict, edge_url=lambda: EDGE_URL, on_change=on_change)
    response = await Client(api, admin_token).call("POST", "/v1/tunnels", body({"name": "x"}))
    assert response.status == 201
    assert [e.kind for e in seen] == [ChangeKind.TUNNEL_CREATED]


async def test_a_failing_on_change_does_not_undo_the_write(
    store: SqliteStore, admin_token: str, caplog: pytest.LogCaptureFixture
) -> None:
    def on_change(event: ChangeEvent) -> None:
        raise RuntimeError("edge state broken")

    api = AdminApi(store, live_connections=dict, edge_url=lambda: EDGE_URL, on_change=on_change)
    response = await Client(api, admin_token).call("POST", "/v1/tunnels", body({"name": "x"}))
    assert response.status == 201
    assert store.get_tunnel("x").name == "x"
    assert "in-memory state may be stale" in caplog.text


@pytest.mark.parametrize(
    "authorization",
    [None, b"", b"Bearer", b"Bearer ", b"Basic dXNlcjpwYXNz", b"Bearer wrong", b"bearer tga_x"],
)
async def test_every_endpoint_needs_the_admin_token(
    api: AdminApi, admin_token: str, authorization: bytes | None
) -> None:
    headers = [] if authorization is None else [(b"authorization", authorization)]
    for method, target in [
        ("GET", "/v1/tunnels"),
        ("POST", "/v1/tunnels"),
        ("GET", "/v1/tunnels/x"),
        ("DELETE", "/v1/tunnels/x"),
        ("POST", "/v1/tunnels/x/tokens"),
        ("POST", "/v1/tunnels/x/routes"),
        ("GET", "/v1/routes"),
        ("DELETE", "/v1/routes/a.example.com"),
        ("GET", "/v1/nothing-here"),
        ("PUT", "/v1/tunnels"),
    ]:
        response = await api.handle(method, target, headers, body({"name": "x"}))
        assert response.status == 401, (method, target)
        assert response.json()["error"] == "unauthorized"
        assert header(response.headers, b"www-authenticate") is not None
    assert (await api.handle("GET", "/v1/tunnels", [], b"")).status == 401


async def test_bearer_scheme_is_case_insensitive_and_two_headers_are_refused(
    api: AdminApi, admin_token: str
) -> None:
    lower = await api.handle(
        "GET", "/v1/routes", [(b"Authorization", b"bearer " + admin_token.encode())], b""
    )
    assert lower.status == 200
    doubled = [(b"authorization", b"Bearer " + admin_token.encode())] * 2
    assert (await api.handle("GET", "/v1/routes", doubled, b"")).status == 401


async def test_unknown_paths_and_wrong_methods(client: Client) -> None:
    missing = await client.call("GET", "/v1/unknown")
    assert missing.status == 404
    assert missing.json()["error"] == "not_found"
    assert (await client.call("GET", "/v1/tunnels/a/b/c")).status == 404
    assert (await client.call("GET", "/")).status == 404
    wrong = await client.call("PUT", "/v1/tunnels")
    assert wrong.status == 405
    assert wrong.json()["error"] == "method_not_allowed"
    assert header(wrong.headers, b"allow") == b"GET, POST"
    assert (await client.call("GET", "/v1/tunnels/x/tokens")).status == 405
    assert (await client.call("POST", "/v1/routes")).status == 405
    assert (await client.call("POST", "/v1/openapi.json", token="")).status == 405


async def test_openapi_needs_no_token(api: AdminApi) -> None:
    response = await api.handle("GET", "/v1/openapi.json", [], b"")
    assert response.status == 200
    assert response.json()["openapi"].startswith("3.1")


async def test_store_failures_become_500_without_details(
    client: Client, store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    store.close()
    response = await client.call("GET", "/v1/tunnels")
    assert response.status == 500
    assert response.json()["error"] == "store_error"
    assert "closed" not in response.body.decode()
    assert "closed database" in caplog.text
