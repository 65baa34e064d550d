"""decide(): the Include/Require/Exclude algebra, evaluation order, and algebraic properties."""

from __future__ import annotations

import copy
import ipaddress
import tomllib
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.access.errors import PolicyConfigError
from edge.access.identity import Identity, RequestFacts
from edge.access.policy import (
    AnyServiceToken,
    AppPolicySet,
    AuthMethod,
    CountryIs,
    Decision,
    EmailDomain,
    EmailIs,
    EmailList,
    Everyone,
    GroupIs,
    IdpIs,
    IpRange,
    Policy,
    Rule,
    ServiceTokenIs,
    ValidCertificate,
    decide,
    parse_policies,
)

from .builders import T0, facts, person


def policies(text: str) -> AppPolicySet:
    return parse_policies(tomllib.loads(text)["policies"], "apps[0].policies")


STAFF = policies(
    """
    [[policies]]
    name = "public-health"
    action = "bypass"
    include = [{ ip = "203.0.113.0/24" }]

    [[policies]]
    name = "ci"
    action = "service_auth"
    include = [{ service_token = "ci-bot" }]

    [[policies]]
    name = "no-contractors"
    action = "block"
    include = [{ group = "contractors" }]

    [[policies]]
    name = "staff"
    action = "allow"
    include = [{ email_domain = "corp.com" }, { email = "friend@partner.org" }]
    require = [{ auth_method = "mfa" }]
    exclude = [{ email = "fired@corp.com" }]
    """
)
MFA = ("pwd", "mfa")


def test_allow_needs_any_include_all_require_and_no_exclude() -> None:
    request = facts()
    assert decide(person(amr=MFA), STAFF, request) == Decision(
        "allow", "allowed_by_policy", "staff"
    )
    assert decide(person("friend@partner.org", amr=MFA), STAFF, request).granted
    assert decide(person(amr=("pwd",)), STAFF, request) == Decision("deny", "no_policy_matched")
    assert decide(person("fired@corp.com", amr=MFA), STAFF, request) == Decision(
        "deny", "no_policy_matched"
    )
    assert decide(person("x@other.org", amr=MFA), STAFF, request).reason == "no_policy_matched"


def test_block_policy_written_first_wins_over_later_allow() -> None:
    contractor = person(amr=MFA, groups=("contractors",))
    assert decide(contractor, STAFF, facts()) == Decision(
        "deny", "blocked_by_policy", "no-contractors"
    )


def test_bypass_is_evaluated_first_and_needs_no_identity() -> None:
    inside = facts("203.0.113.50")
    assert decide(None, STAFF, inside) == Decision("bypass", "bypass", "public-health")
    contractor = person(amr=MFA, groups=("contractors",))
    assert decide(contractor, STAFF, inside).action == "bypass"


def test_no_identity_and_no_bypass_means_authenticate() -> None:
    decision = decide(None, STAFF, facts())
    assert decision == Decision("authenticate", "not_authenticated")
    assert not decision.granted


def test_service_tokens_pass_only_service_auth_policies() -> None:
    ci = Identity.for_service_token("ci-bot", issued_at=T0)
    assert decide(ci, STAFF, facts()) == Decision("service_auth", "service_token", "ci")
    other = Identity.for_service_token("other-bot", issued_at=T0)
    assert decide(other, STAFF, facts()) == Decision("deny", "no_policy_matched")
    everyone = policies(
        """
        [[policies]]
        name = "everyone"
        action = "allow"
        include = [{ everyone = true }]
        """
    )
    assert decide(ci, everyone, facts()).reason == "no_policy_matched"
    assert decide(person(), everyone, facts()).action == "allow"


def test_people_never_pass_service_auth_policies() -> None:
    only_ci = policies(
        """
        [[policies]]
        name = "ci"
        action = "service_auth"
        include = [{ everyone = true }]
        """
    )
    assert decide(person(), only_ci, facts()) == Decision("deny", "no_policy_matched")


def test_first_matching_policy_decides_in_written_order() -> None:
    ordered = policies(
        """
        [[policies]]
        name = "eng-allowed"
        action = "allow"
        include = [{ group = "eng" }]

        [[policies]]
        name = "all-blocked"
        action = "block"
        include = [{ everyone = true }]

        [[policies]]
        name = "never-reached"
        action = "allow"
        include = [{ everyone = true }]
        """
    )
    assert decide(person(groups=("eng",)), ordered, facts()).policy == "eng-allowed"
    assert decide(person(groups=("ops",)), ordered, facts()).policy == "all-blocked"


def test_bypass_listed_last_still_goes_first() -> None:
    late_bypass = policies(
        """
        [[policies]]
        name = "block-all"
        action = "block"
        include = [{ everyone = true }]

        [[policies]]
        name = "office"
        action = "bypass"
        include = [{ ip = "10.0.0.0/8" }]
        """
    )
    assert decide(person(), late_bypass, facts("10.2.3.4")).policy == "office"
    assert decide(person(), late_bypass, facts("11.2.3.4")).policy == "block-all"


def test_empty_policy_set_denies_everyone_signed_in() -> None:
    assert decide(person(), AppPolicySet(()), facts()) == Decision("deny", "no_policy_matched")


@pytest.mark.parametrize(
    ("action", "selector", "path"),
    [
        ("bypass", '{ email = "a@corp.com" }', "apps[0].policies[0].include[0].email"),
        ("bypass", '{ group = "eng" }', "apps[0].policies[0].include[0].group"),
        ("bypass", "{ any_service_token = true }", "apps[0].policies[0].include[0]"),
        ("service_auth", '{ email_domain = "corp.com" }', "apps[0].policies[0].include[0]"),
        ("allow", '{ service_token = "ci" }', "apps[0].policies[0].include[0].service_token"),
        ("block", "{ any_service_token = true }", "apps[0].policies[0].include[0]"),
    ],
)
def test_selectors_that_cannot_match_in_a_phase_are_refused(
    action: str, selector: str, path: str
) -> None:
    text = f'[[policies]]\nname = "p"\naction = "{action}"\ninclude = [{selector}]\n'
    with pytest.raises(PolicyConfigError) as caught:
        policies(text)
    assert caught.value.key_path.startswith(path)


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ('[[policies]]\naction = "allow"\ninclude = [{ everyone = true }]', "[0].name"),
        ('[[policies]]\nname = "p"\naction = "permit"\ninclude = []', "[0].action"),
        ('[[policies]]\nname = "p"\naction = "allow"\ninclude = []', "[0].include"),
        ('[[policies]]\nname = "p"\naction = "allow"', "[0].include"),
        (
            '[[policies]]\nname = "p"\naction = "allow"\ninclude = [{ everyone = true }]\n'
            "requires = []",
            "[0].requires",
        ),
        (
            '[[policies]]\nname = "p"\naction = "allow"\ninclude = [{ everyone = true }]\n'
            '[[policies]]\nname = "p"\naction = "block"\ninclude = [{ everyone = true }]',
            "[1].name",
        ),
    ],
)
def test_bad_policies_name_the_key_path(text: str, path: str) -> None:
    with pytest.raises(PolicyConfigError) as caught:
        policies(text)
    assert caught.value.key_path == f"apps[0].policies{path}"


def test_policies_round_trip_through_their_config_shape() -> None:
    again = parse_policies([p.to_config() for p in STAFF.policies], "x")
    assert again == STAFF


# --- properties ---------------------------------------------------------------------------------

emails = st.sampled_from(
    [
        "a@corp.com",
        "b@corp.com",
        "c@sub.corp.com",
        "x@evil.com",
        "a@corp.com@evil.com",
        "AB@CORP.COM",
    ]
)
groups = st.sampled_from(["eng", "ops", "contractors"])
identities = st.one_of(
    st.none(),
    st.builds(
        Identity,
        sub=st.just("sub"),
        email=emails,
        email_verified=st.booleans(),
        name=st.just("n"),
        groups=st.lists(groups, max_size=2).map(tuple),
        idp=st.sampled_from(["okta", "github"]),
        amr=st.lists(st.sampled_from(["pwd", "mfa"]), max_size=2).map(tuple),
        country=st.none(),
        service_token=st.none(),
        issued_at=st.just(T0),
    ),
    st.sampled_from(["ci-bot", "deploy"]).map(
        lambda n: Identity.for_service_token(n, issued_at=T0)
    ),
)
requests = st.builds(
    RequestFacts,
    client_ip=st.sampled_from(["10.0.0.1", "10.9.0.1", "192.0.2.1", "::ffff:10.0.0.1"]).map(
        ipaddress.ip_address
    ),
    country=st.sampled_from([None, "DE", "US"]),
    client_cert_fingerprint=st.sampled_from([None, "ab" * 32]),
    path=st.just("/"),
)
identity_free_rules: st.SearchStrategy[Rule] = st.one_of(
    st.just(Everyone()),
    st.sampled_from(["10.0.0.0/8", "10.9.0.0/16", "192.0.2.0/24"]).map(
        lambda c: IpRange(ipaddress.ip_network(c))
    ),
    st.sampled_from(["DE", "US"]).map(CountryIs),
    st.just(ValidCertificate()),
)
person_rules: st.SearchStrategy[Rule] = st.one_of(
    emails.filter(lambda e: e.count("@") == 1).map(lambda e: EmailIs(e.casefold())),
    st.sampled_from(["corp.com", "evil.com"]).flatmap(
        lambda d: st.booleans().map(lambda sub: EmailDomain(d, sub))
    ),
    st.just(EmailList(frozenset({"a@corp.com", "x@evil.com"}))),
    groups.map(GroupIs),
    st.sampled_from(["okta", "github"]).map(IdpIs),
    st.sampled_from(["pwd", "mfa"]).map(AuthMethod),
)
service_rules: st.SearchStrategy[Rule] = st.one_of(
    st.sampled_from(["ci-bot", "deploy"]).map(ServiceTokenIs), st.just(AnyServiceToken())
)


def rules_for(action: str) -> st.SearchStrategy[Rule]:
    if action == "bypass":
        return identity_free_rules
    if action == "service_auth":
        return st.one_of(identity_free_rules, service_rules)
    return st.one_of(identity_free_rules, person_rules)


@st.composite
def policy(draw: st.DrawFn, action: str | None = None) -> Policy:
    chosen = action or draw(st.sampled_from(["allow", "block", "bypass", "service_auth"]))
    rules = rules_for(chosen)
    return Policy(
        name="p",
        action=chosen,  # type: ignore[arg-type]
        include=tuple(draw(st.lists(rules, min_size=1, max_size=3))),
        require=tuple(draw(st.lists(rules, max_size=2))),
        exclude=tuple(draw(st.lists(rules, max_size=2))),
    )


policy_sets = st.lists(policy(), max_size=5).map(
    lambda ps: AppPolicySet(tuple(replace(p, name=f"p{i}") for i, p in enumerate(ps)))
)


@st.composite
def narrowing(draw: st.DrawFn, field: str) -> tuple[AppPolicySet, AppPolicySet]:
    """A policy set and the same set with one extra rule in one granting policy's ``field``."""
    app = draw(policy_sets)
    granting = [i for i, p in enumerate(app.policies) if p.action != "block"]
    if not granting:
        extra = draw(policy(draw(st.sampled_from(["allow", "bypass", "service_auth"]))))
        app = AppPolicySet((*app.policies, replace(extra, name="extra")))
        granting = [len(app.policies) - 1]
    index = draw(st.sampled_from(granting))
    target = app.policies[index]
    rule = draw(rules_for(target.action))
    if field == "exclude":
        changed = replace(target, exclude=(*target.exclude, rule))
    else:
        changed = replace(target, require=(*target.require, rule))
    narrowed = AppPolicySet((*app.policies[:index], changed, *app.policies[index + 1 :]))
    return app, narrowed


@given(narrowing("exclude"), identities, requests)
def test_adding_an_exclude_to_a_granting_policy_never_widens_access(
    sets: tuple[AppPolicySet, AppPolicySet], identity: Identity | None, request: RequestFacts
) -> None:
    before, after = sets
    if decide(identity, after, request).granted:
        assert decide(identity, before, request).granted


@given(narrowing("require"), identities, requests)
def test_adding_a_require_to_a_granting_policy_never_widens_access(
    sets: tuple[AppPolicySet, AppPolicySet], identity: Identity | None, request: RequestFacts
) -> None:
    before, after = sets
    if decide(identity, after, request).granted:
        assert decide(identity, before, request).granted


@given(policy_sets, policy("block"), identities, requests)
def test_adding_a_block_policy_anywhere_never_widens_access(
    app: AppPolicySet, block: Policy, identity: Identity | None, request: RequestFacts
) -> None:
    for position in range(len(app.policies) + 1):
        with_block = AppPolicySet((*app.policies[:position], block, *app.policies[position:]))
        if decide(identity, with_block, request).granted:
            assert decide(identity, app, request).granted


@given(policy_sets, identities, requests)
def test_decide_is_deterministic_and_ignores_object_identity(
    app: AppPolicySet, identity: Identity | None, request: RequestFacts
) -> None:
    first = decide(identity, app, request)
    assert decide(identity, app, request) == first
    assert decide(copy.deepcopy(identity), copy.deepcopy(app), copy.deepcopy(request)) == first


@given(policy_sets, identities, requests)
def test_granted_only_by_a_matching_policy_of_the_right_phase(
    app: AppPolicySet, identity: Identity | None, request: RequestFacts
) -> None:
    decision = decide(identity, app, request)
    by_name = {p.name: p for p in app.policies}
    if decision.policy is None:
        assert not decision.granted
        return
    chosen = by_name[decision.policy]
    if decision.action == "bypass":
        assert chosen.action == "bypass"
        assert chosen.matches(None, request)
    elif decision.action == "service_auth":
        assert identity is not None
        assert identity.is_service_token
        assert chosen.action == "service_auth"
        assert chosen.matches(identity, request)
    else:
        assert identity is not None
        assert not identity.is_service_token
        assert chosen.matches(identity, request)
        assert chosen.action == ("allow" if decision.action == "allow" else "block")
