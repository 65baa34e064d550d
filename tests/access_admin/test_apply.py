"""Declarative apply: create, idempotence, updates, dry runs, prune, and key-path errors."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from edge.access.apply import apply_document, parse_document
from edge.admin import ChangeEvent, ChangeKind
from edge.store import InvalidInput
from edge.store.access_records import parse_app_spec, parse_idp
from edge.store.sqlite import SqliteStore

from .conftest import Client, FakeEdge, engineers_policy, grafana_app, oidc_idp, otp_idp


def document() -> dict[str, Any]:
    """The shape of the Interface section of the Access issue, plus the extra tables."""
    return {
        "idp": [oidc_idp(), otp_idp()],
        "app": [
            {**grafana_app(), "policy": [engineers_policy()]},
            {
                "name": "wiki",
                "domain": "wiki.example.com/docs",
                "idps": ["pin"],
                "cookie_name": "WikiAuth",
                "allow_websockets": False,
                "type": "http",
                "policy": [
                    {"name": "public", "action": "bypass", "include": [{"everyone": True}]},
                ],
            },
        ],
        "service_token": [{"name": "ci", "duration": "720h"}],
    }


def summaries(result: Any) -> list[str]:
    return [change.summary() for change in result.changes]


def test_first_apply_creates_everything_and_the_second_changes_nothing(
    store: SqliteStore,
) -> None:
    result = apply_document(store, document())
    assert summaries(result) == [
        "create idp corp",
        "create idp pin",
        "create app grafana",
        "create policies of app grafana (engineers)",
        "create app wiki",
        "create policies of app wiki (public)",
        "create service token ci",
    ]
    ((token, secret),) = result.created_tokens
    assert token.name == "ci"
    assert len(secret) == 64
    assert store.get_app("wiki").spec.cookie_name == "WikiAuth"
    assert store.get_app("wiki").spec.allow_websockets is False
    assert [p.name for p in store.get_policies("grafana").policies] == ["engineers"]
    aud = store.get_app("grafana").aud

    again = apply_document(store, document())
    assert again.changes == ()
    assert again.created_tokens == ()
    assert store.get_app("grafana").aud == aud


def test_updates_touch_only_what_changed(store: SqliteStore) -> None:
    apply_document(store, document())
    aud = store.get_app("grafana").aud
    changed = document()
    changed["idp"][0]["groups_claim"] = "roles"
    changed["app"][0]["session_duration"] = "8h"
    changed["app"][1]["policy"].append(
        {"name": "staff", "action": "allow", "include": [{"email_domain": "example.com"}]}
    )
    result = apply_document(store, changed)
    assert summaries(result) == [
        "update idp corp (groups_claim)",
        "update app grafana (session_duration)",
        "update policies of app wiki (public, staff)",
    ]
    assert store.get_idp("corp").settings["groups_claim"] == "roles"
    assert store.get_app("grafana").spec.session_duration == 8 * 3600
    assert store.get_app("grafana").aud == aud
    # Leaving out a setting returns it to its default; leaving out policies removes them.
    fewer = copy.deepcopy(changed)
    del fewer["app"][1]["cookie_name"]
    fewer["app"][0]["policy"] = []
    assert summaries(apply_document(store, fewer)) == [
        "update policies of app grafana",
        "update app wiki (cookie_name)",
    ]
    assert store.get_app("wiki").spec.cookie_name == "CF_Authorization"
    assert store.get_policies("grafana").policies == ()


def test_dry_run_reports_the_plan_and_writes_nothing(store: SqliteStore) -> None:
    planned = apply_document(store, document(), dry_run=True)
    assert len(planned.changes) == 7
    assert planned.dry_run
    assert planned.created_tokens == ()
    assert store.list_idps() == []
    assert store.list_apps() == []
    assert store.list_service_tokens() == []
    assert store.audit_events() == []


def test_things_missing_from_the_file_go_only_with_prune(store: SqliteStore) -> None:
    apply_document(store, document())
    store.create_idp(parse_idp({"name": "spare", "type": "otp", "delivery": "log"}))
    store.create_app(parse_app_spec({"name": "manual", "domain": "manual.example.com"}))
    store.create_service_token("legacy", duration=3600)
    smaller = document()
    smaller["app"] = smaller["app"][:1]
    smaller["idp"] = smaller["idp"][:1]
    assert apply_document(store, smaller).changes == ()
    assert {app.name for app in store.list_apps()} == {"grafana", "wiki", "manual"}

    planned = apply_document(store, smaller, prune=True, dry_run=True)
    assert summaries(planned) == [
        "delete app manual",
        "delete app wiki",
        "delete idp pin",
        "delete idp spare",
        "delete service token legacy",
    ]
    assert len(store.list_apps()) == 3
    assert summaries(apply_document(store, smaller, prune=True)) == summaries(planned)
    assert [app.name for app in store.list_apps()] == ["grafana"]
    assert [idp.name for idp in store.list_idps()] == ["corp"]
    assert [token.name for token in store.list_service_tokens()] == ["ci"]
    assert apply_document(store, smaller, prune=True).changes == ()


def test_references_are_checked_against_the_store_before_anything_is_written(
    store: SqliteStore,
) -> None:
    store.create_idp(parse_idp(otp_idp("kept")))
    store.create_app(parse_app_spec({"name": "old", "domain": "grafana.example.com"}))
    uses_kept = {"app": [{"name": "x", "domain": "x.example.com", "idps": ["kept"]}]}
    assert summaries(apply_document(store, uses_kept)) == ["create app x"]
    with pytest.raises(InvalidInput) as pruned_away:
        apply_document(
            store, {"app": [{"name": "y", "domain": "y.io", "idps": ["kept"]}]}, prune=True
        )
    assert str(pruned_away.value).startswith("app[0].idps[0]: ")
    with pytest.raises(InvalidInput) as taken:
        apply_document(store, {"idp": [oidc_idp()], "app": [grafana_app()]})
    assert taken.value.code == "domain_taken"
    assert str(taken.value).startswith("app[0].domain: ")
    assert [idp.name for idp in store.list_idps()] == ["kept"]
    # With prune the old holder of the domain goes first, so the file can take it over.
    result = apply_document(store, {"idp": [oidc_idp()], "app": [grafana_app()]}, prune=True)
    assert "delete app old" in summaries(result)
    assert store.get_app("grafana").spec.domain == "grafana.example.com"


@pytest.mark.parametrize(
    ("mutate", "message_start"),
    [
        (lambda d: d.update(tunnels=[]), "tunnels: unknown key"),
        (lambda d: d.update(app={}), "app: expected a list of tables"),
        (lambda d: d["idp"][0].update(client_secret="x"), "idp[0].client_secret: unknown key"),
        (lambda d: d["idp"][1].update(name="corp"), "idp[1].name: 'corp' is already used by"),
        (
            lambda d: d["app"][0]["policy"].append(
                engineers_policy(
                    include=[{"email_domain": "example.com"}, {"email_domain": "not a domain"}]
                )
            ),
            "app[0].policy[1].include[1].email_domain: ",
        ),
        (
            lambda d: d["app"][0]["policy"][0].update(colour="red"),
            "app[0].policy[0].colour: unknown key",
        ),
        (
            lambda d: d["app"][0]["policy"].append(engineers_policy()),
            "app[0].policy[1].name: duplicate name",
        ),
        (
            lambda d: d["app"][1].update(domain="grafana.example.com"),
            "app[1].domain: 'grafana.example.com' is already used by app[0]",
        ),
        (lambda d: d["app"][1].update(idps=["gh"]), "app[1].idps[0]: "),
        (lambda d: d["app"][0].update(session_duration="a day"), "app[0].session_duration: "),
        (
            lambda d: d["service_token"][0].update(scope="all"),
            "service_token[0].scope: unknown key",
        ),
        (
            lambda d: d["service_token"].append({"name": "ci"}),
            "service_token[1].name: 'ci' is already used by",
        ),
        (lambda d: d["service_token"][0].update(duration="5s"), "service_token[0].duration: "),
    ],
)
def test_bad_documents_fail_with_a_key_path_and_change_nothing(
    store: SqliteStore, mutate: Any, message_start: str
) -> None:
    bad = document()
    mutate(bad)
    with pytest.raises(InvalidInput) as error:
        apply_document(store, bad)
    assert str(error.value).startswith(message_start), str(error.value)
    assert store.list_idps() == []
    assert store.list_apps() == []


def test_the_document_parser_alone_needs_no_store() -> None:
    parsed = parse_document(document())
    assert [idp.name for idp in parsed.idps] == ["corp", "pin"]
    assert parsed.apps[1].spec.domain == "wiki.example.com/docs"
    assert parsed.service_tokens[0].duration == 720 * 3600
    assert parse_document({}).apps == ()


async def test_apply_through_the_admin_api(client: Client, fake_edge: FakeEdge) -> None:
    dry = await client.call("POST", "/v1/apply?dry_run=true", document())
    assert dry.status == 200
    assert dry.json()["dry_run"] is True
    assert len(dry.json()["changes"]) == 7
    assert dry.json()["service_tokens"] == []
    assert fake_edge.events == []
    applied = await client.call("POST", "/v1/apply", document())
    body = applied.json()
    assert body["changes"][0] == {
        "action": "create",
        "target": "idp",
        "name": "corp",
        "fields": [],
        "summary": "create idp corp",
    }
    (token,) = body["service_tokens"]
    assert token["name"] == "ci"
    assert len(token["client_secret"]) == 64
    assert fake_edge.events == [
        ChangeEvent(ChangeKind.IDP_CHANGED),
        ChangeEvent(ChangeKind.APP_CHANGED),
        ChangeEvent(ChangeKind.SERVICE_TOKEN_CHANGED),
    ]
    again = await client.call("POST", "/v1/apply?prune=false", document())
    assert again.json()["changes"] == []
    assert len(fake_edge.events) == 3
    pruned = await client.call("POST", "/v1/apply?prune=true", {"idp": [oidc_idp()]})
    assert {c["summary"] for c in pruned.json()["changes"]} == {
        "delete app grafana",
        "delete app wiki",
        "delete idp pin",
        "delete service token ci",
    }
    for target, body_bytes, code in [
        ("/v1/apply?dry_run=maybe", b"{}", "invalid_query"),
        ("/v1/apply?force=true", b"{}", "invalid_query"),
        ("/v1/apply", b"[]", "invalid_body"),
        ("/v1/apply", b"{", "invalid_json"),
        ("/v1/apply", b'{"app": [{"name": "x"}]}', "invalid_domain"),
    ]:
        refused = await client.call("POST", target, raw=body_bytes)
        assert (refused.status, refused.json()["error"]) == (400, code), target
