"""The Access endpoints of the admin API, through ``AdminApi.handle``: happy paths, every error,
and the change events the running edge is told about."""

from __future__ import annotations

import re

import pytest

from edge.admin import ChangeEvent, ChangeKind
from edge.store.sqlite import SqliteStore

from .conftest import Client, FakeEdge, WallClock, engineers_policy, grafana_app, oidc_idp, otp_idp


async def setup_corp_and_grafana(client: Client) -> dict[str, object]:
    assert (await client.call("POST", "/v1/idps", oidc_idp())).status == 201
    created = await client.call("POST", "/v1/apps", grafana_app(policies=[engineers_policy()]))
    assert created.status == 201, created.json()
    result: dict[str, object] = created.json()
    return result


async def test_every_access_endpoint_needs_the_admin_token(client: Client) -> None:
    for method, target in [
        ("GET", "/v1/apps"),
        ("POST", "/v1/apps"),
        ("GET", "/v1/apps/grafana"),
        ("PUT", "/v1/apps/grafana/policies"),
        ("GET", "/v1/idps"),
        ("DELETE", "/v1/idps/corp"),
        ("POST", "/v1/service-tokens"),
        ("POST", "/v1/sessions/revoke"),
        ("GET", "/v1/keys"),
        ("POST", "/v1/keys/rotate"),
        ("GET", "/v1/audit"),
        ("POST", "/v1/apply"),
    ]:
        for token in ("", "tga_wrong"):
            response = await client.call(method, target, {}, token=token)
            assert response.status == 401, (method, target)
            assert response.json()["error"] == "unauthorized"


async def test_apps_are_created_shown_replaced_and_deleted(
    client: Client, fake_edge: FakeEdge
) -> None:
    created = await setup_corp_and_grafana(client)
    assert re.fullmatch(r"[0-9a-f]{64}", str(created["aud"]))
    assert created["session_duration"] == 86400
    assert created["policies"] == [engineers_policy()]
    assert created["cookie_name"] == "CF_Authorization"
    assert fake_edge.events == [
        ChangeEvent(ChangeKind.IDP_CHANGED, name="corp"),
        ChangeEvent(ChangeKind.APP_CHANGED, name="grafana"),
    ]
    listed = (await client.call("GET", "/v1/apps")).json()["apps"]
    assert listed == [created]
    shown = await client.call("GET", "/v1/apps/grafana")
    assert shown.json() == created

    replaced = await client.call(
        "PUT", "/v1/apps/grafana", {"domain": "grafana.example.com/ui", "session_duration": 3600}
    )
    assert replaced.status == 200
    body = replaced.json()
    assert (body["aud"], body["id"]) == (created["aud"], created["id"])
    assert body["domain"] == "grafana.example.com/ui"
    assert body["idps"] == []  # a replace resets what it does not name
    assert body["policies"] == [engineers_policy()]  # policies stay unless given
    assert fake_edge.events[-1] == ChangeEvent(ChangeKind.APP_CHANGED, name="grafana")

    deleted = await client.call("DELETE", "/v1/apps/grafana")
    assert deleted.status == 204
    assert fake_edge.events[-1] == ChangeEvent(
        ChangeKind.APP_CHANGED, name="grafana", aud=str(created["aud"])
    )
    assert (await client.call("GET", "/v1/apps/grafana")).status == 404


@pytest.mark.parametrize(
    ("payload", "status", "code", "message_start"),
    [
        (grafana_app(name="twin"), 409, "domain_taken", ""),
        (grafana_app(), 409, "app_exists", ""),
        (
            grafana_app(name="x", domain="x.example.com", idps=["gh"]),
            400,
            "unknown_idp",
            "idps[0]: ",
        ),
        (grafana_app(name="x", domain="x.example.com:80"), 400, "invalid_domain", "domain: "),
        (grafana_app(name="x", bogus=1), 400, "invalid_app", "bogus: "),
        (
            grafana_app(name="x", domain="x.io", policies=[engineers_policy(action="maybe")]),
            400,
            "invalid_policy",
            "policies[0].action: ",
        ),
        ([grafana_app()], 400, "invalid_body", ""),
    ],
)
async def test_app_creation_errors(
    client: Client, payload: object, status: int, code: str, message_start: str
) -> None:
    await setup_corp_and_grafana(client)
    response = await client.call("POST", "/v1/apps", payload)
    assert (response.status, response.json()["error"]) == (status, code)
    assert response.json()["message"].startswith(message_start)


async def test_app_errors_on_other_methods(client: Client) -> None:
    await setup_corp_and_grafana(client)
    bad_json = await client.call("POST", "/v1/apps", raw=b"{nope")
    assert (bad_json.status, bad_json.json()["error"]) == (400, "invalid_json")
    renamed = await client.call("PUT", "/v1/apps/grafana", grafana_app(name="other"))
    assert (renamed.status, renamed.json()["error"]) == (400, "invalid_app")
    missing = await client.call("PUT", "/v1/apps/nope", grafana_app(name="nope", domain="n.io"))
    assert (missing.status, missing.json()["error"]) == (404, "app_not_found")
    assert (await client.call("DELETE", "/v1/apps/nope")).status == 404
    not_allowed = await client.call("PATCH", "/v1/apps/grafana")
    assert not_allowed.status == 405
    assert (b"allow", b"DELETE, GET, PUT") in not_allowed.headers


async def test_policies_are_listed_and_replaced_in_order(
    client: Client, fake_edge: FakeEdge
) -> None:
    await setup_corp_and_grafana(client)
    bypass = {"name": "health", "action": "bypass", "include": [{"ip": "10.0.0.0/8"}]}
    response = await client.call(
        "PUT", "/v1/apps/grafana/policies", {"policies": [bypass, engineers_policy()]}
    )
    assert response.status == 200
    assert [p["name"] for p in response.json()["policies"]] == ["health", "engineers"]
    assert fake_edge.events[-1] == ChangeEvent(ChangeKind.APP_CHANGED, name="grafana")
    listed = await client.call("GET", "/v1/apps/grafana/policies")
    assert listed.json() == response.json()

    wrong = await client.call(
        "PUT",
        "/v1/apps/grafana/policies",
        {"policies": [bypass, engineers_policy(include=[{"email_domain": "a@b"}])]},
    )
    assert (wrong.status, wrong.json()["error"]) == (400, "invalid_policy")
    assert wrong.json()["message"].startswith("policies[1].include[0].email_domain: ")
    mixed = await client.call(
        "PUT",
        "/v1/apps/grafana/policies",
        {"policies": [{"name": "b", "action": "bypass", "include": [{"email": "a@b.co"}]}]},
    )
    assert mixed.json()["message"].startswith("policies[0].include[0].email: bypass policies")
    for body, code in [({}, "invalid_body"), ({"policies": [], "x": 1}, "invalid_body")]:
        refused = await client.call("PUT", "/v1/apps/grafana/policies", body)
        assert (refused.status, refused.json()["error"]) == (400, code)
    nope = await client.call("PUT", "/v1/apps/nope/policies", {"policies": []})
    assert nope.status == 404
    assert (await client.call("GET", "/v1/apps/nope/policies")).status == 404
    assert len((await client.call("GET", "/v1/apps/grafana/policies")).json()["policies"]) == 2


async def test_idps_endpoints(client: Client, fake_edge: FakeEdge) -> None:
    created = await client.call("POST", "/v1/idps", oidc_idp())
    assert created.status == 201
    assert created.json()["scopes"] == ["openid", "email", "profile"]
    assert (b"location", b"/v1/idps/corp") in created.headers
    assert (await client.call("POST", "/v1/idps", otp_idp())).status == 201
    listed = (await client.call("GET", "/v1/idps")).json()["idps"]
    assert [idp["name"] for idp in listed] == ["corp", "pin"]
    shown = (await client.call("GET", "/v1/idps/pin")).json()
    assert shown == {
        "name": "pin",
        "type": "otp",
        "delivery": "log",
        "code_length": 6,
        "code_lifetime": 600,
        "max_attempts": 5,
    }
    replaced = await client.call(
        "PUT", "/v1/idps/pin", {"type": "otp", "delivery": "log", "code_length": 8}
    )
    assert replaced.json()["code_length"] == 8
    assert fake_edge.events[-1] == ChangeEvent(ChangeKind.IDP_CHANGED, name="pin")

    conflict = await client.call("POST", "/v1/idps", oidc_idp())
    assert (conflict.status, conflict.json()["error"]) == (409, "idp_exists")
    invalid = await client.call("POST", "/v1/idps", oidc_idp("gh", client_secret="x"))
    assert (invalid.status, invalid.json()["error"]) == (400, "invalid_idp")
    assert invalid.json()["message"].startswith("client_secret: unknown key")
    renamed = await client.call("PUT", "/v1/idps/pin", otp_idp("other"))
    assert (renamed.status, renamed.json()["error"]) == (400, "invalid_body")
    for method in ("GET", "DELETE"):
        assert (await client.call(method, "/v1/idps/nope")).status == 404
    assert (await client.call("PUT", "/v1/idps/nope", otp_idp("nope"))).status == 404

    await client.call("POST", "/v1/apps", grafana_app())
    in_use = await client.call("DELETE", "/v1/idps/corp")
    assert (in_use.status, in_use.json()["error"]) == (409, "idp_in_use")
    assert (await client.call("DELETE", "/v1/idps/pin")).status == 204
    assert fake_edge.events[-1] == ChangeEvent(ChangeKind.IDP_CHANGED, name="pin")


async def test_service_token_secret_appears_once(
    client: Client, store: SqliteStore, fake_edge: FakeEdge
) -> None:
    created = await client.call("POST", "/v1/service-tokens", {"name": "ci", "duration": "1h"})
    assert created.status == 201
    token = created.json()
    assert re.fullmatch(r"[0-9a-f]{64}", token["client_secret"])
    assert fake_edge.events == [ChangeEvent(ChangeKind.SERVICE_TOKEN_CHANGED, name="ci")]
    listed = await client.call("GET", "/v1/service-tokens")
    assert token["client_secret"] not in listed.body.decode()
    (entry,) = listed.json()["service_tokens"]
    assert entry == {k: v for k, v in token.items() if k != "client_secret"}
    default = (await client.call("POST", "/v1/service-tokens", {"name": "bot"})).json()
    assert default["expires_at"][:4] == str(int(default["created_at"][:4]) + 1)

    for body, status, code in [
        ({"name": "ci"}, 409, "service_token_exists"),
        ({"name": "x", "duration": "1s"}, 400, "invalid_duration"),
        ({"name": "a b"}, 400, "invalid_name"),
        ({"duration": "1h"}, 400, "invalid_body"),
        ({"name": "x", "secret": "mine"}, 400, "invalid_body"),
    ]:
        refused = await client.call("POST", "/v1/service-tokens", body)
        assert (refused.status, refused.json()["error"]) == (status, code), body
    assert (await client.call("DELETE", "/v1/service-tokens/ci")).status == 204
    assert fake_edge.events[-1] == ChangeEvent(ChangeKind.SERVICE_TOKEN_CHANGED, name="ci")
    gone = await client.call("DELETE", "/v1/service-tokens/ci")
    assert (gone.status, gone.json()["error"]) == (404, "service_token_not_found")
    assert [t.name for t in store.list_service_tokens()] == ["bot"]


async def test_sessions_are_revoked_by_email_or_app(client: Client, fake_edge: FakeEdge) -> None:
    app = await setup_corp_and_grafana(client)
    by_email = await client.call("POST", "/v1/sessions/revoke", {"email": "Alice@Example.com"})
    assert by_email.status == 200
    assert by_email.json()["email"] == "alice@example.com"
    assert by_email.json()["sessions_ended"] == 0
    assert fake_edge.events[-1] == ChangeEvent(
        ChangeKind.SESSIONS_REVOKED, email="alice@example.com"
    )
    by_app = await client.call("POST", "/v1/sessions/revoke", {"app": "grafana"})
    assert by_app.json()["aud"] == app["aud"]
    assert fake_edge.events[-1] == ChangeEvent(
        ChangeKind.SESSIONS_REVOKED, name="grafana", aud=str(app["aud"])
    )
    for body, status, code in [
        ({}, 400, "invalid_body"),
        ({"email": "a@b.co", "app": "grafana"}, 400, "invalid_body"),
        ({"user": "a"}, 400, "invalid_body"),
        ({"email": 5}, 400, "invalid_body"),
        ({"email": "nobody"}, 400, "invalid_email"),
        ({"app": "nope"}, 404, "app_not_found"),
    ]:
        refused = await client.call("POST", "/v1/sessions/revoke", body)
        assert (refused.status, refused.json()["error"]) == (status, code), body


async def test_keys_rotate_and_list_metadata_only(
    client: Client, fake_edge: FakeEdge, wall_clock: WallClock
) -> None:
    assert (await client.call("GET", "/v1/keys")).json() == {"active": None, "keys": []}
    first = await client.call("POST", "/v1/keys/rotate")
    assert first.status == 200
    assert fake_edge.events == [ChangeEvent(ChangeKind.KEYS_ROTATED)]
    first_kid = first.json()["active"]
    wall_clock.now += 3600
    second = (await client.call("POST", "/v1/keys/rotate", {"algorithm": "ES256"})).json()
    keys = {key["kid"]: key for key in second["keys"]}
    assert second["active"] != first_kid
    assert keys[second["active"]]["algorithm"] == "ES256"
    old = keys[first_kid]
    assert (old["active"], old["published"]) == (False, True)
    assert old["not_after"] is not None
    listed = await client.call("GET", "/v1/keys")
    assert listed.json()["active"] == second["active"]
    assert "PRIVATE KEY" not in listed.body.decode()
    wall_clock.now += 8 * 24 * 3600
    third = (await client.call("POST", "/v1/keys/rotate")).json()
    assert first_kid not in {key["kid"] for key in third["keys"]}
    assert {key["algorithm"] for key in third["keys"]} == {"ES256"}
    bad = await client.call("POST", "/v1/keys/rotate", {"algorithm": "HS256"})
    assert (bad.status, bad.json()["error"]) == (400, "invalid_body")


async def test_audit_filters_and_limits(client: Client) -> None:
    await setup_corp_and_grafana(client)
    await client.call("POST", "/v1/sessions/revoke", {"email": "alice@example.com"})
    everything = (await client.call("GET", "/v1/audit")).json()["events"]
    assert [event["kind"] for event in everything][:2] == ["sessions.revoked", "app.policies_set"]
    one = (await client.call("GET", "/v1/audit?limit=1")).json()["events"]
    assert one == everything[:1]
    grafana = (await client.call("GET", "/v1/audit?app=grafana")).json()["events"]
    assert {event["app"] for event in grafana} == {"grafana"}
    alice = (await client.call("GET", "/v1/audit?email=ALICE%40example.com")).json()["events"]
    assert [event["subject"] for event in alice] == ["alice@example.com"]
    for target in (
        "/v1/audit?limit=0",
        "/v1/audit?limit=1001",
        "/v1/audit?limit=x",
        "/v1/audit?colour=red",
        "/v1/audit?app=a&app=b",
    ):
        refused = await client.call("GET", target)
        assert (refused.status, refused.json()["error"]) == (400, "invalid_query"), target
