"""Each selector on its own: parsing from TOML shapes, key-path errors, and what it matches."""

from __future__ import annotations

import tomllib
from typing import Any

import pytest

from edge.access.errors import PolicyConfigError
from edge.access.identity import Identity
from edge.access.policy import (
    AnyServiceToken,
    EmailDomain,
    Everyone,
    IpRange,
    normalise_email,
    parse_rule,
)

from .builders import T0, facts, person

SERVICE = Identity.for_service_token("ci-bot", issued_at=T0)


def rule(text: str) -> Any:
    """Parse one rule written exactly as an operator would in TOML."""
    return parse_rule(tomllib.loads(f"r = {text}")["r"], "policies[0].include[0]")


# --- e-mail allow-lists (SECURITY.md "E-mail allow-lists") ----------------------------------

CORP_DOMAIN_CASES = [
    ("a@corp.com", True),
    ("A@CORP.COM", True),
    ("a@Corp.Com", True),
    ("a@evil.com@corp.com", False),
    ("a@corp.com@evil.com", False),
    ("a@corp.com.evil.com", False),
    ("a@evilcorp.com", False),
    ("a@sub.corp.com", False),
    ("a@corp.com.", False),
    ("a@corp..com", False),
    ("corp.com", False),
    ("@corp.com", False),
    ("a@", False),
    ("", False),
    ("a @corp.com", False),
    ("a@corp.com\n", False),
    ("a@corp.com\x00", False),
    # look-alikes: Cyrillic small es (U+0441), full-width letters, Kelvin sign, odd dots
    ("a@\u0441orp.com", False),
    ("a@\uff43\uff4f\uff52\uff50.com", False),
    ("\u212aate@corp.com", False),
    ("a@corp\u3002com", False),
    ("a@corp.com\u200b", False),
]


@pytest.mark.parametrize(("address", "expected"), CORP_DOMAIN_CASES)
def test_email_domain_matches_only_the_exact_domain(address: str, expected: bool) -> None:
    assert rule('{ email_domain = "corp.com" }').matches(person(address), facts()) is expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("a@corp.com", True),
        ("a@sub.corp.com", True),
        ("a@deep.sub.corp.com", True),
        ("a@evilcorp.com", False),
        ("a@sub.evilcorp.com", False),
        ("a@corp.com.evil.com", False),
        ("a@evil.com@sub.corp.com", False),
    ],
)
def test_leading_dot_domain_also_matches_subdomains_on_a_label_boundary(
    address: str, expected: bool
) -> None:
    assert rule('{ email_domain = ".corp.com" }').matches(person(address), facts()) is expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("boss@corp.com", True),
        ("BOSS@corp.com", True),
        ("boss@CORP.com", True),
        ("boss@corp.com@evil.com", False),
        ("boss@evil.com", False),
        ("boss2@corp.com", False),
        ("\uff42\uff4f\uff53\uff53@corp.com", False),
        ("b\u043ess@corp.com", False),
    ],
)
def test_email_matches_one_address_case_insensitively(address: str, expected: bool) -> None:
    assert rule('{ email = "Boss@Corp.com" }').matches(person(address), facts()) is expected


def test_email_list_matches_any_listed_address() -> None:
    listed = rule('{ email_list = ["a@corp.com", "B@partner.org"] }')
    assert listed.matches(person("a@corp.com"), facts())
    assert listed.matches(person("b@partner.org"), facts())
    assert not listed.matches(person("c@corp.com"), facts())
    assert not listed.matches(person("a@corp.com@partner.org"), facts())


@pytest.mark.parametrize(
    "selector",
    [
        '{ email = "a@corp.com" }',
        '{ email_domain = "corp.com" }',
        '{ email_list = ["a@corp.com"] }',
    ],
)
def test_unverified_email_never_matches(selector: str) -> None:
    assert rule(selector).matches(person("a@corp.com"), facts())
    assert not rule(selector).matches(person("a@corp.com", email_verified=False), facts())


def test_internationalised_domains_compare_in_ascii_form() -> None:
    unicode_rule = rule('{ email_domain = "münchen.de" }')
    assert unicode_rule == rule('{ email_domain = "xn--mnchen-3ya.de" }')
    assert unicode_rule.matches(person("a@münchen.de"), facts())
    assert unicode_rule.matches(person("a@xn--mnchen-3ya.de"), facts())
    assert not unicode_rule.matches(person("a@munchen.de"), facts())


@pytest.mark.parametrize("address", ["a@☃.com", "a@-corp.com", "a@xn--zz.com", "a@corp_x.com"])
def test_invalid_domains_never_match(address: str) -> None:
    assert normalise_email(address) is None


# --- the other selectors ----------------------------------------------------------------------


def test_everyone_matches_any_identity_and_the_anonymous_request() -> None:
    assert rule("{ everyone = true }") == Everyone()
    assert Everyone().matches(person(), facts())
    assert Everyone().matches(None, facts())


def test_group_idp_and_auth_method_match_exact_values() -> None:
    alice = person(groups=("eng", "ops"), idp="okta", amr=("pwd", "mfa"))
    assert rule('{ group = "ops" }').matches(alice, facts())
    assert not rule('{ group = "Ops" }').matches(alice, facts())
    assert not rule('{ group = "admins" }').matches(alice, facts())
    assert rule('{ idp = "okta" }').matches(alice, facts())
    assert not rule('{ idp = "github" }').matches(alice, facts())
    assert rule('{ auth_method = "mfa" }').matches(alice, facts())
    assert not rule('{ auth_method = "hwk" }').matches(alice, facts())
    for selector in ('{ group = "ops" }', '{ idp = "okta" }', '{ auth_method = "mfa" }'):
        assert not rule(selector).matches(None, facts())


@pytest.mark.parametrize(
    ("cidr", "ip", "expected"),
    [
        ("10.0.0.0/8", "10.1.2.3", True),
        ("10.0.0.0/8", "11.0.0.1", False),
        ("10.0.0.0/8", "::ffff:10.1.2.3", True),
        ("10.0.0.0/8", "2001:db8::1", False),
        ("2001:db8::/32", "2001:db8:1::5", True),
        ("2001:db8::/32", "2001:db9::5", False),
        ("203.0.113.9", "203.0.113.9", True),
        ("203.0.113.9", "203.0.113.10", False),
    ],
)
def test_ip_matches_client_address_in_range(cidr: str, ip: str, expected: bool) -> None:
    assert rule(f'{{ ip = "{cidr}" }}').matches(None, facts(ip)) is expected


def test_country_comes_from_the_request_facts() -> None:
    german = rule('{ country = "de" }')
    assert german.matches(None, facts(country="DE"))
    assert not german.matches(None, facts(country="FR"))
    assert not german.matches(None, facts(country=None))
    assert not german.matches(person(country="DE"), facts(country=None))


def test_certificate_matches_when_a_verified_client_certificate_is_present() -> None:
    cert = rule("{ certificate = true }")
    assert cert.matches(None, facts(client_cert_fingerprint="ab" * 32))
    assert not cert.matches(person(), facts())


def test_service_token_selectors_match_only_service_tokens() -> None:
    named = rule('{ service_token = "ci-bot" }')
    assert named.matches(SERVICE, facts())
    assert not named.matches(Identity.for_service_token("other", issued_at=T0), facts())
    assert not named.matches(person(), facts())
    assert rule("{ any_service_token = true }") == AnyServiceToken()
    assert AnyServiceToken().matches(SERVICE, facts())
    assert not AnyServiceToken().matches(person(), facts())
    assert not AnyServiceToken().matches(None, facts())


def test_service_token_identity_never_matches_email_selectors() -> None:
    spoof = Identity.for_service_token("ci-bot", issued_at=T0)
    assert not rule('{ email_domain = "corp.com" }').matches(spoof, facts())


# --- parsing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        ("{}", "policies[0].include[0]", "exactly one selector"),
        ('{ email = "a@b.c", group = "x" }', "policies[0].include[0]", "exactly one selector"),
        ('{ emails = "a@b.c" }', "policies[0].include[0].emails", "unknown selector"),
        ('{ email = "not-an-address" }', "policies[0].include[0].email", "e-mail"),
        ('{ email = "a@b@c.com" }', "policies[0].include[0].email", "e-mail"),
        ('{ email_domain = "corp..com" }', "policies[0].include[0].email_domain", "domain"),
        ("{ email_list = [] }", "policies[0].include[0].email_list", "non-empty list"),
        ('{ email_list = ["a@b.c", "x"] }', "policies[0].include[0].email_list[1]", "e-mail"),
        ('{ ip = "10.0.0.1/8" }', "policies[0].include[0].ip", "CIDR"),
        ('{ ip = "ten" }', "policies[0].include[0].ip", "CIDR"),
        ('{ country = "Germany" }', "policies[0].include[0].country", "two-letter"),
        ("{ everyone = false }", "policies[0].include[0].everyone", "expected true"),
        ('{ group = "" }', "policies[0].include[0].group", "non-empty string"),
        ('{ group = " eng" }', "policies[0].include[0].group", "whitespace"),
        ("{ idp = 3 }", "policies[0].include[0].idp", "non-empty string"),
    ],
)
def test_bad_rules_name_the_key_path(text: str, path: str, problem: str) -> None:
    with pytest.raises(PolicyConfigError) as caught:
        rule(text)
    assert caught.value.key_path == path
    assert problem in str(caught.value)
    assert str(caught.value).startswith(f"{path}: ")


@pytest.mark.parametrize(
    "text",
    [
        "{ everyone = true }",
        '{ email = "a@corp.com" }',
        '{ email_domain = ".corp.com" }',
        '{ email_list = ["a@corp.com", "b@corp.com"] }',
        '{ group = "eng" }',
        '{ idp = "okta" }',
        '{ ip = "10.0.0.0/8" }',
        '{ service_token = "ci-bot" }',
        "{ any_service_token = true }",
        '{ auth_method = "mfa" }',
        '{ country = "DE" }',
        "{ certificate = true }",
    ],
)
def test_rules_round_trip_through_their_config_shape(text: str) -> None:
    parsed = rule(text)
    assert parse_rule(parsed.to_config(), "x") == parsed


def test_parsed_rule_types() -> None:
    assert rule('{ email_domain = "Corp.COM" }') == EmailDomain("corp.com", False)
    assert isinstance(rule('{ ip = "10.0.0.0/8" }'), IpRange)
