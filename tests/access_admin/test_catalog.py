"""The catalog the request path reads: app lookup, IdPs, service tokens and revocations."""

from __future__ import annotations

import logging

import pytest

from edge.access.apply import apply_document
from edge.access.catalog import AccessCatalog, build_catalog
from edge.store.access_records import parse_app_spec, parse_idp
from edge.store.sqlite import SqliteStore

from .conftest import engineers_policy, oidc_idp, otp_idp


def catalog_with_apps(store: SqliteStore, *domains: str) -> AccessCatalog:
    for index, domain in enumerate(domains):
        store.create_app(parse_app_spec({"name": f"app{index}", "domain": domain}))
    return build_catalog(store, auth_domain="auth.example.com")


@pytest.mark.parametrize(
    ("host", "path", "expected"),
    [
        ("app.example.com", "/", "app0"),
        ("app.example.com", "/other", "app0"),
        ("app.example.com", "/admin", "app1"),
        ("app.example.com", "/admin/", "app1"),
        ("app.example.com", "/admin/users", "app1"),
        ("app.example.com", "/administrator", "app0"),
        ("app.example.com", "/ADMIN", "app0"),
        ("app.example.com", "/admin/reports", "app2"),
        ("app.example.com", "/admin/reports/q1", "app2"),
        ("app.example.com", "/admin/reportsx", "app1"),
        ("docs.example.com", "/guide", "app3"),
        ("docs.example.com", "/", None),
        ("docs.example.com", "/guides", None),
        ("example.com", "/", None),
        ("sub.app.example.com", "/", None),
    ],
)
def test_longest_segment_prefix_wins_on_an_exact_host(
    store: SqliteStore, host: str, path: str, expected: str | None
) -> None:
    catalog = catalog_with_apps(
        store,
        "app.example.com",
        "app.example.com/admin",
        "app.example.com/admin/reports",
        "docs.example.com/guide",
    )
    found = catalog.app_for(host, path)
    assert (found.name if found else None) == expected


def test_apps_carry_policies_idps_and_are_found_by_name_and_aud(store: SqliteStore) -> None:
    apply_document(
        store,
        {
            "idp": [oidc_idp(), otp_idp()],
            "app": [
                {
                    "name": "grafana",
                    "domain": "grafana.example.com",
                    "idps": ["corp"],
                    "policy": [engineers_policy()],
                },
                {"name": "wiki", "domain": "wiki.example.com"},
            ],
        },
    )
    catalog = build_catalog(store, auth_domain="auth.example.com:8443")
    grafana = catalog.app_named("grafana")
    assert grafana is not None
    assert [idp.name for idp in grafana.idps] == ["corp"]
    assert [p.name for p in grafana.policies.policies] == ["engineers"]
    assert catalog.app_by_aud(grafana.aud) is grafana
    wiki = catalog.app_named("wiki")
    assert wiki is not None
    assert [idp.name for idp in wiki.idps] == ["corp", "pin"]  # none listed: all offered
    assert catalog.idp("pin") is not None
    assert catalog.idp("nope") is None
    assert catalog.hosts == {"grafana.example.com", "wiki.example.com", "auth.example.com"}
    assert catalog.app_named("nope") is None


def test_a_catalog_is_a_snapshot(store: SqliteStore) -> None:
    catalog = catalog_with_apps(store, "app.example.com")
    store.delete_app("app0")
    assert catalog.app_for("app.example.com", "/") is not None
    assert build_catalog(store, auth_domain="").app_for("app.example.com", "/") is None


def test_service_tokens_are_checked_by_hash_and_expiry(store: SqliteStore) -> None:
    token, secret = store.create_service_token("ci", duration=3600)
    catalog = build_catalog(store, auth_domain="auth.example.com")
    now = token.created_at.timestamp() + 10
    entry = catalog.verify_service_token(token.client_id, secret, now=now)
    assert entry is not None
    assert entry.name == "ci"
    altered = secret[:-1] + ("1" if secret.endswith("0") else "0")
    assert catalog.verify_service_token(token.client_id, altered, now=now) is None
    assert catalog.verify_service_token(token.client_id, "", now=now) is None
    assert catalog.verify_service_token("unknown.access", secret, now=now) is None
    assert catalog.verify_service_token(token.client_id, secret, now=now + 3600) is None
    expired_left_out = build_catalog(store, auth_domain="", now=now + 3600)
    assert expired_left_out.verify_service_token(token.client_id, secret, now=now) is None


def test_revocations_void_sessions_created_before_them(store: SqliteStore) -> None:
    store.create_app(parse_app_spec({"name": "wiki", "domain": "wiki.example.com"}))
    aud = store.get_app("wiki").aud
    email_revocation, _ = store.revoke_email_sessions("alice@example.com")
    app_revocation = store.revoke_app_sessions("wiki")
    catalog = build_catalog(store, auth_domain="auth.example.com")
    before, after = email_revocation.epoch - 1, app_revocation.epoch + 1
    assert catalog.email_revoked_at("Alice@Example.com") == email_revocation.epoch
    assert catalog.is_revoked(email="alice@example.com", aud=None, created_at=before)
    assert not catalog.is_revoked(email="alice@example.com", aud=aud, created_at=after)
    assert catalog.is_revoked(email="bob@example.com", aud=aud, created_at=before)
    assert not catalog.is_revoked(email="bob@example.com", aud="other", created_at=before)
    assert catalog.app_revoked_at(aud) == app_revocation.epoch


def test_warnings_say_what_keeps_people_out(
    store: SqliteStore, caplog: pytest.LogCaptureFixture
) -> None:
    assert build_catalog(store, auth_domain="").warnings == ()
    store.create_app(parse_app_spec({"name": "wiki", "domain": "wiki.example.com"}))
    with caplog.at_level(logging.WARNING, logger="edge.access.catalog"):
        warnings = build_catalog(store, auth_domain="").warnings
    assert any(w.startswith("access.auth_domain is not set") and "wiki" in w for w in warnings)
    assert any("no identity provider" in w for w in warnings)
    assert any("wiki has no policies" in w for w in warnings)
    assert any("auth_domain is not set" in r.getMessage() for r in caplog.records)
    store.create_idp(parse_idp(otp_idp()))
    configured = build_catalog(store, auth_domain="auth.example.com").warnings
    assert configured == ("application wiki has no policies: every request is denied",)
