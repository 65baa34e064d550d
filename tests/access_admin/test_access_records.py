"""The validators every way into the store shares: canonical values, key paths, unknown keys."""

from __future__ import annotations

import pytest

from edge.store import InvalidInput
from edge.store.access_records import (
    AppSpec,
    format_duration,
    parse_app_domain,
    parse_app_spec,
    parse_idp,
    parse_seconds,
)

from .conftest import grafana_app, oidc_idp, otp_idp


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("grafana.example.com", "grafana.example.com"),
        ("Grafana.Example.COM.", "grafana.example.com"),
        ("app.example.com/admin", "app.example.com/admin"),
        ("app.example.com/admin/", "app.example.com/admin"),
        ("app.example.com/a/./b/../c", "app.example.com/a/c"),
        ("app.example.com//admin", "app.example.com/admin"),
        ("app.example.com/", "app.example.com"),
        ("app.example.com/caf%C3%A9", "app.example.com/caf%C3%A9"),
        ("app.example.com/%70ublic", "app.example.com/public"),
        ("xn--bcher-kva.example", "xn--bcher-kva.example"),
    ],
)
def test_domains_are_canonical(raw: str, canonical: str) -> None:
    assert parse_app_domain(raw, "domain") == canonical


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ("https://app.example.com", "without a scheme"),
        ("app.example.com:8443", "port"),
        ("*.example.com", "wildcards"),
        ("app..example.com", "invalid hostname"),
        ("app.example.com/a?b=1", "query"),
        ("app.example.com/a%2Fb", "encoded slash"),
        ("app.example.com/a b", "whitespace"),
        ("", "expected a host name"),
        ("bücher.example", "invalid hostname"),
    ],
)
def test_bad_domains_are_refused_with_their_key_path(raw: str, fragment: str) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_app_domain(raw, "app[2].domain")
    assert error.value.code == "invalid_domain"
    assert str(error.value).startswith("app[2].domain: ")
    assert fragment in str(error.value)


def test_app_defaults_are_filled_in_and_round_trip() -> None:
    spec = parse_app_spec({"name": "wiki", "domain": "wiki.example.com"})
    assert spec == AppSpec(name="wiki", domain="wiki.example.com")
    assert spec.cookie_name == "CF_Authorization"
    assert spec.header_name == "Cf-Access-Jwt-Assertion"
    assert spec.email_header_name == "Cf-Access-Authenticated-User-Email"
    assert (spec.allow_websockets, spec.allow_encoded_slash, spec.type) == (True, False, "http")
    assert spec.session_duration == 24 * 3600
    assert parse_app_spec(spec.to_input()) == spec
    full = parse_app_spec(
        grafana_app(
            type="tcp",
            cookie_name="GrafanaAuth",
            header_name="X-Grafana-Assertion",
            email_header_name="X-Grafana-Email",
            allow_websockets=False,
            allow_encoded_slash=True,
            session_duration=3600,
        )
    )
    assert parse_app_spec(full.to_input()) == full
    assert full.idps == ("corp",)


@pytest.mark.parametrize(
    ("overrides", "key_path", "code"),
    [
        ({"colour": "blue"}, "app[0].colour", "invalid_app"),
        ({"name": "has space"}, "app[0].name", "invalid_name"),
        ({"type": "udp"}, "app[0].type", "invalid_app"),
        ({"type": "tcp", "domain": "ssh.example.com/x"}, "app[0].domain", "invalid_app"),
        ({"session_duration": "forever"}, "app[0].session_duration", "invalid_duration"),
        ({"session_duration": "10s"}, "app[0].session_duration", "invalid_duration"),
        ({"session_duration": True}, "app[0].session_duration", "invalid_duration"),
        ({"idps": "corp"}, "app[0].idps", "invalid_app"),
        ({"idps": ["corp", "corp"]}, "app[0].idps", "invalid_app"),
        ({"idps": ["corp", 3]}, "app[0].idps[1]", "invalid_name"),
        ({"cookie_name": "a=b"}, "app[0].cookie_name", "invalid_app"),
        ({"header_name": "X_Assertion"}, "app[0].header_name", "invalid_app"),
        ({"header_name": "Cookie"}, "app[0].header_name", "invalid_app"),
        (
            {"email_header_name": "cf-access-jwt-assertion"},
            "app[0].email_header_name",
            "invalid_app",
        ),
        ({"allow_websockets": "yes"}, "app[0].allow_websockets", "invalid_app"),
        ({"domain": None}, "app[0].domain", "invalid_domain"),
    ],
)
def test_app_mistakes_name_their_key(
    overrides: dict[str, object], key_path: str, code: str
) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_app_spec(grafana_app(**overrides), "app[0]")
    assert (error.value.key_path or str(error.value).split(": ")[0], error.value.code) == (
        key_path,
        code,
    )
    assert str(error.value).startswith(f"{key_path}: ")


def test_idps_are_canonical_and_hold_no_secrets() -> None:
    oidc = parse_idp(oidc_idp(issuer="https://idp.example.com/"))
    assert oidc.settings["issuer"] == "https://idp.example.com"
    assert parse_idp(oidc.to_input()) == oidc
    github = parse_idp(
        {"name": "gh", "type": "github", "client_id": "abc", "client_secret_file": "/s"}
    )
    assert github.settings["web_base"] == "https://github.com"
    log = parse_idp(otp_idp())
    assert dict(log.settings) == {
        "delivery": "log",
        "code_length": 6,
        "code_lifetime": 600,
        "max_attempts": 5,
    }
    smtp = parse_idp(
        otp_idp(
            delivery="smtp",
            smtp_host="mail.example.com",
            smtp_from="access@example.com",
            smtp_username="access",
            smtp_password_file="/etc/tunnelgate/smtp.secret",
            code_lifetime="5m",
        )
    )
    assert smtp.settings["smtp_port"] == 587
    assert smtp.settings["code_lifetime"] == 300
    assert parse_idp(smtp.to_input()) == smtp
    loopback = parse_idp(oidc_idp(issuer="http://127.0.0.1:9000"))
    assert loopback.settings["issuer"] == "http://127.0.0.1:9000"


@pytest.mark.parametrize(
    ("table", "key_path"),
    [
        (oidc_idp(client_secret="hunter2"), "idp[0].client_secret"),
        (oidc_idp(type="saml"), "idp[0].type"),
        (oidc_idp(issuer="http://idp.example.com"), "idp[0].issuer"),
        (oidc_idp(issuer="https://u:p@idp.example.com"), "idp[0].issuer"),
        (oidc_idp(client_secret_file="corp.secret"), "idp[0].client_secret_file"),
        (oidc_idp(scopes=["email"]), "idp[0].scopes"),
        (oidc_idp(client_id=""), "idp[0].client_id"),
        ({"name": "corp", "type": "oidc", "issuer": "https://i.example"}, "idp[0].client_id"),
        (otp_idp(issuer="https://x.example"), "idp[0].issuer"),
        (otp_idp(delivery="pigeon"), "idp[0].delivery"),
        (otp_idp(smtp_host="mail.example.com"), "idp[0].smtp_host"),
        (otp_idp(delivery="smtp", smtp_from="a@b.c"), "idp[0].smtp_host"),
        (
            otp_idp(delivery="smtp", smtp_host="m", smtp_from="a@b.c", smtp_username="u"),
            "idp[0].smtp_password_file",
        ),
        (otp_idp(code_length=3), "idp[0].code_length"),
        (otp_idp(name="a/b"), "idp[0].name"),
    ],
)
def test_idp_mistakes_name_their_key(table: dict[str, object], key_path: str) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_idp(table, "idp[0]")
    assert str(error.value).startswith(f"{key_path}: ")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("24h", 86400), ("1h30m", 5400), ("90m", 5400), (3600, 3600), (7200.0, 7200)],
)
def test_durations_take_strings_or_seconds(value: object, seconds: int) -> None:
    assert parse_seconds(value, "d") == seconds


@pytest.mark.parametrize("value", ["1.5s", "soon", -5, 0, None, [1], float("inf")])
def test_bad_durations_are_refused(value: object) -> None:
    with pytest.raises(InvalidInput) as error:
        parse_seconds(value, "service_token[0].duration")
    assert str(error.value).startswith("service_token[0].duration: ")


def test_durations_print_in_their_shortest_form() -> None:
    assert [format_duration(s) for s in (86400, 5400, 61, 0)] == ["24h", "1h30m", "1m1s", "0s"]
