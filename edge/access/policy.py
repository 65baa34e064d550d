"""Access policies and the pure decision function every request goes through.

Semantics follow Cloudflare Access so policies port over unchanged:

* a policy matches when ANY of its Include rules matches, ALL of its Require rules match and
  NONE of its Exclude rules matches;
* ``bypass`` policies are evaluated first and see no identity at all: a bypass decision must not
  depend on whether the visitor happens to be signed in, so bypass policies may only use the
  identity-free selectors (``everyone``, ``ip``, ``country``, ``certificate``);
* ``service_auth`` policies are evaluated next and only for service-token identities; a service
  token is never let in by an ``allow`` policy, so ``service_token`` selectors are only accepted
  in ``service_auth`` policies, and person selectors (e-mail, group, idp, auth method) are
  refused there;
* then ``allow`` and ``block`` policies in their written order; the first match decides;
* nothing matching means deny.

E-mail matching refuses everything look-alike. An address matches only when it has exactly one
``@``; both sides are compared after NFKC normalisation and case folding; an address that is
not already NFKC-normal (full-width letters, ligatures, the Kelvin sign...) never matches,
because it only looks like the address it normalises to; non-ASCII domains must be valid IDNA
2008 and are compared in their ASCII (``xn--``) form. ``email_domain = "corp.com"`` matches
``corp.com`` exactly, as Cloudflare does; writing ``".corp.com"`` also matches every subdomain,
on a label boundary only. An identity whose provider says ``email_verified = false`` never
matches an e-mail selector.

Decisions carry stable reasons that the audit log and the tests rely on: ``bypass``,
``service_token``, ``allowed_by_policy``, ``blocked_by_policy``, ``no_policy_matched``,
``not_authenticated``.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import idna

from edge.access.errors import PolicyConfigError
from edge.access.identity import Identity, IPAddress, RequestFacts

PolicyAction = Literal["allow", "block", "bypass", "service_auth"]
DecisionAction = Literal["allow", "deny", "bypass", "service_auth", "authenticate"]
DecisionReason = Literal[
    "bypass",
    "service_token",
    "allowed_by_policy",
    "blocked_by_policy",
    "no_policy_matched",
    "not_authenticated",
]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_POLICY_ACTIONS: tuple[PolicyAction, ...] = ("allow", "block", "bypass", "service_auth")
_MAX_LABEL = 63
_MAX_DOMAIN = 253


# --- e-mail normalisation -------------------------------------------------------------------


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


def _ascii_domain(domain: str) -> str | None:
    """The domain in ASCII form, or None when it is not a valid host name.

    Only the ASCII full stop separates labels: the ideographic and full-width dots that IDNA
    2003 also accepted are refused, so one domain has one spelling.
    """
    if not domain or len(domain) > _MAX_DOMAIN:
        return None
    labels: list[str] = []
    for label in domain.split("."):
        try:
            if not label.isascii():
                label = idna.alabel(label).decode("ascii")
            elif label.startswith("xn--"):
                idna.ulabel(label)
        except (idna.IDNAError, UnicodeError):
            return None
        if not 0 < len(label) <= _MAX_LABEL or label[0] == "-" or label[-1] == "-":
            return None
        if not all(ch.isalnum() or ch == "-" for ch in label):
            return None
        labels.append(label)
    ascii_domain = ".".join(labels)
    return ascii_domain if len(ascii_domain) <= _MAX_DOMAIN else None


def normalise_email(address: str) -> str | None:
    """The comparable form of an address an identity presents, or None if it can never match."""
    if not address or not unicodedata.is_normalized("NFKC", address):
        return None
    folded = _fold(address)
    if folded.count("@") != 1:
        return None
    if any(ch.isspace() or unicodedata.category(ch).startswith("C") for ch in folded):
        return None
    local, domain = folded.split("@")
    ascii_domain = _ascii_domain(domain)
    if not local or ascii_domain is None:
        return None
    return f"{local}@{ascii_domain}"


def _config_email(value: object, key_path: str) -> str:
    text = _config_string(value, key_path)
    normalised = normalise_email(unicodedata.normalize("NFKC", text))
    if normalised is None:
        raise PolicyConfigError(key_path, f"not a valid e-mail address: {text!r}")
    return normalised


def _config_domain(value: object, key_path: str) -> tuple[str, bool]:
    text = _config_string(value, key_path)
    include_subdomains = text.startswith(".")
    domain = _ascii_domain(_fold(text.removeprefix(".")))
    if domain is None:
        raise PolicyConfigError(key_path, f"not a valid domain name: {text!r}")
    return domain, include_subdomains


def _verified_address(identity: Identity | None) -> str | None:
    if identity is None or not identity.email_verified or identity.is_service_token:
        return None
    return normalise_email(identity.email)


# --- rules ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Everyone:
    """Matches every request (in a bypass policy) or every signed-in identity."""

    def matches(self, identity: Identity | None, request: RequestFacts) -> bool:
        return True

    def to_config(self) -> dict[str, object]:
        return {"everyone": True}


@dataclass(frozen=True, slots=True)
class EmailIs:
    address: str

    def matches(self, identity: Identity | None, request: RequestFacts) -> bool:
        return _verified_address(identity) == self.address

    def to_config(self) -> dict[str, object]:
        return {"email": self.address}


@dataclass(frozen=True, slots=True)
class EmailDomain:
    domain: str
    include_subdomains: bool = False

    def matches(self, identity: Identity | None, request: RequestFacts) -> bool:
        address = _verified_address(identity)
        if address is None:
            return False
        domain = address.rpartition("@")[2]
        if domain == self.domain:
            return True
        return self.include_subdomains and domain.endswith("." + self.domain)

    def to_config(self) -> dict[str, object]:
        return {"email_domain": ("." if self.include_subdomains else "") + self.domain}


@dataclass(frozen=True, slots=True)
class EmailList:
    addresses: frozenset[str]

    def matches(self, identity: Identity | None, request: RequestFacts) -> bool:
        return _verified_address(identity) in self.addresses

    def to_config(self) -> dict[str, object]:
        return {"email_list": sorted(self.addresses)}


@dataclass(frozen=True, slots=True)
class GroupIs:
    group: str

    def matches(self, identity: Identity | None, request: RequestFacts) -> bool:
        return identity is not None and self.group in identity.groups

    def to_config(self) -> dict[str, object]:
        return {"group": self.group}


@dataclass(frozen=True, slots=True)
class IdpIs:
    idp: str

    def matches(self, identity: Identity | None, request: RequestFacts) -> bool:
        return identity is not None and identity.idp == self.idp

    def to_config(self) -> dict[str, object]:
        return {"idp": self.idp}


@dataclass(frozen=True, slots=True)
class IpRange:
    network: IPNetwork

    def matches(self, identity: Identity | None, request: RequestFacts) -> bool:
        address: IPAddress = request.client_ip
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.version == self.network.version and address in self.network

    def to_config(self) -> dict[str, object]:
        return {"ip": str(self.network)}


@dataclass(frozen=True, slots=True)
class ServiceTokenIs:
    name: str

    def matches(self, identity: Identity | None, request: RequestFacts) -> bool:
        return identity is not None and identity.service_token == self.name

    def to_config(self) -> dict[str, object]:
        return {"service_token": self.name}


@dataclass(frozen=True, slots=True)
class AnyServiceToken:
    def matches(self, identity: Identity | None, request: RequestFacts) -> bool:
        return identity is not None and identity.is_service_token

    def to_config(self) -> dict[str, object]:
        return {"any_service_token": True}


@dataclass(frozen=True, slots=True)
class AuthMethod:
    method: str

    def matches(self, identity: Identity | None, request: RequestFacts) -> bool:
        return identity is not None and self.method in identity.amr

    def to_config(self) -> dict[str, object]:
        return {"auth_method": self.method}


@dataclass(frozen=True, slots=True)
class CountryIs:
    code: str

    def matches(self, identity: Identity | None, request: RequestFacts) -> bool:
        return request.country is not None and request.country.upper() == self.code

    def to_config(self) -> dict[str, object]:
        return {"country": self.code}


@dataclass(frozen=True, slots=True)
class ValidCertificate:
    """Matches when the TLS layer verified a client certificate for this request."""

    def matches(self, identity: Identity | None, request: RequestFacts) -> bool:
        return request.client_cert_fingerprint is not None

    def to_config(self) -> dict[str, object]:
        return {"certificate": True}


Rule = (
    Everyone
    | EmailIs
    | EmailDomain
    | EmailList
    | GroupIs
    | IdpIs
    | IpRange
    | ServiceTokenIs
    | AnyServiceToken
    | AuthMethod
    | CountryIs
    | ValidCertificate
)

_IDENTITY_FREE_SELECTORS = frozenset({"everyone", "ip", "country", "certificate"})
_SERVICE_TOKEN_SELECTORS = frozenset({"service_token", "any_service_token"})
_PERSON_SELECTORS = frozenset(
    {"email", "email_domain", "email_list", "group", "idp", "auth_method"}
)
SELECTORS = _IDENTITY_FREE_SELECTORS | _SERVICE_TOKEN_SELECTORS | _PERSON_SELECTORS


def _config_string(value: object, key_path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PolicyConfigError(key_path, "expected a non-empty string")
    if value != value.strip():
        raise PolicyConfigError(key_path, "unexpected leading or trailing whitespace")
    return value


def _config_true(value: object, key_path: str) -> None:
    if value is not True:
        raise PolicyConfigError(key_path, "expected true")


def _config_network(value: object, key_path: str) -> IPNetwork:
    text = _config_string(value, key_path)
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as error:
        raise PolicyConfigError(
            key_path, f'expected an address or CIDR range like "10.0.0.0/8": {error}'
        ) from None


def _config_country(value: object, key_path: str) -> str:
    text = _config_string(value, key_path)
    if len(text) != 2 or not text.isascii() or not text.isalpha():
        raise PolicyConfigError(key_path, 'expected a two-letter ISO 3166 country code like "DE"')
    return text.upper()


def parse_rule(obj: object, key_path: str) -> Rule:
    """One rule from its TOML shape, e.g. ``{ email_domain = "example.com" }``."""
    if not isinstance(obj, Mapping) or len(obj) != 1:
        raise PolicyConfigError(
            key_path, f"expected a table with exactly one selector, one of: {sorted(SELECTORS)}"
        )
    ((selector, value),) = obj.items()
    path = f"{key_path}.{selector}"
    match selector:
        case "everyone":
            _config_true(value, path)
            return Everyone()
        case "email":
            return EmailIs(_config_email(value, path))
        case "email_domain":
            domain, include_subdomains = _config_domain(value, path)
            return EmailDomain(domain, include_subdomains)
        case "email_list":
            if not isinstance(value, list) or not value:
                raise PolicyConfigError(path, "expected a non-empty list of e-mail addresses")
            return EmailList(
                frozenset(_config_email(item, f"{path}[{i}]") for i, item in enumerate(value))
            )
        case "group":
            return GroupIs(_config_string(value, path))
        case "idp":
            return IdpIs(_config_string(value, path))
        case "ip":
            return IpRange(_config_network(value, path))
        case "service_token":
            return ServiceTokenIs(_config_string(value, path))
        case "any_service_token":
            _config_true(value, path)
            return AnyServiceToken()
        case "auth_method":
            return AuthMethod(_config_string(value, path))
        case "country":
            return CountryIs(_config_country(value, path))
        case "certificate":
            _config_true(value, path)
            return ValidCertificate()
    raise PolicyConfigError(
        f"{key_path}.{selector}", f"unknown selector; expected one of: {sorted(SELECTORS)}"
    )


def selector_name(rule: Rule) -> str:
    """The configuration key of a rule, e.g. ``"email_domain"``."""
    return next(iter(rule.to_config()))


# --- policies -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Policy:
    name: str
    action: PolicyAction
    include: tuple[Rule, ...]
    require: tuple[Rule, ...] = ()
    exclude: tuple[Rule, ...] = ()

    def matches(self, identity: Identity | None, request: RequestFacts) -> bool:
        return (
            any(rule.matches(identity, request) for rule in self.include)
            and all(rule.matches(identity, request) for rule in self.require)
            and not any(rule.matches(identity, request) for rule in self.exclude)
        )

    def to_config(self) -> dict[str, object]:
        config: dict[str, object] = {"name": self.name, "action": self.action}
        for key, rules in (
            ("include", self.include),
            ("require", self.require),
            ("exclude", self.exclude),
        ):
            if rules:
                config[key] = [rule.to_config() for rule in rules]
        return config


@dataclass(frozen=True, slots=True)
class AppPolicySet:
    """An application's ordered policies, pre-split by evaluation phase."""

    policies: tuple[Policy, ...]
    bypass: tuple[Policy, ...] = field(init=False, repr=False, compare=False)
    service_auth: tuple[Policy, ...] = field(init=False, repr=False, compare=False)
    ordered: tuple[Policy, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_action = {
            action: tuple(p for p in self.policies if p.action == action)
            for action in _POLICY_ACTIONS
        }
        object.__setattr__(self, "bypass", by_action["bypass"])
        object.__setattr__(self, "service_auth", by_action["service_auth"])
        object.__setattr__(
            self, "ordered", tuple(p for p in self.policies if p.action in ("allow", "block"))
        )


_POLICY_KEYS = frozenset({"name", "action", "include", "require", "exclude"})


def _check_selectors_fit(action: PolicyAction, rules: Sequence[Rule], key_path: str) -> None:
    for index, rule in enumerate(rules):
        selector = selector_name(rule)
        path = f"{key_path}[{index}].{selector}"
        if action == "bypass" and selector not in _IDENTITY_FREE_SELECTORS:
            raise PolicyConfigError(
                path,
                "bypass policies are decided before anyone signs in, so they may only use "
                f"{sorted(_IDENTITY_FREE_SELECTORS)}",
            )
        if action == "service_auth" and selector in _PERSON_SELECTORS:
            raise PolicyConfigError(
                path, "service_auth policies see only service tokens; person selectors never match"
            )
        if action in ("allow", "block") and selector in _SERVICE_TOKEN_SELECTORS:
            raise PolicyConfigError(
                path, 'service tokens are only let in by policies with action = "service_auth"'
            )


def _parse_rules(obj: object, key_path: str, *, required: bool) -> tuple[Rule, ...]:
    if obj is None and not required:
        return ()
    if not isinstance(obj, list) or (required and not obj):
        raise PolicyConfigError(key_path, "expected a non-empty list of rules")
    return tuple(parse_rule(item, f"{key_path}[{index}]") for index, item in enumerate(obj))


def parse_policy(obj: object, key_path: str) -> Policy:
    """One policy from its TOML shape (name, action, include, require?, exclude?)."""
    if not isinstance(obj, Mapping):
        raise PolicyConfigError(key_path, "expected a table")
    for key in obj:
        if key not in _POLICY_KEYS:
            raise PolicyConfigError(f"{key_path}.{key}", "unknown key")
    name = _config_string(obj.get("name"), f"{key_path}.name")
    action = obj.get("action")
    if action not in _POLICY_ACTIONS:
        raise PolicyConfigError(f"{key_path}.action", f"expected one of {list(_POLICY_ACTIONS)}")
    rule_sets = {
        key: _parse_rules(obj.get(key), f"{key_path}.{key}", required=key == "include")
        for key in ("include", "require", "exclude")
    }
    for key, rules in rule_sets.items():
        _check_selectors_fit(action, rules, f"{key_path}.{key}")
    return Policy(name, action, rule_sets["include"], rule_sets["require"], rule_sets["exclude"])


def parse_policies(obj: object, key_path: str) -> AppPolicySet:
    """An application's policy list; names must be unique because decisions cite them."""
    if not isinstance(obj, list):
        raise PolicyConfigError(key_path, "expected a list of policies")
    policies = tuple(parse_policy(item, f"{key_path}[{index}]") for index, item in enumerate(obj))
    seen: set[str] = set()
    for index, policy in enumerate(policies):
        if policy.name in seen:
            raise PolicyConfigError(f"{key_path}[{index}].name", f"duplicate name {policy.name!r}")
        seen.add(policy.name)
    return AppPolicySet(policies)


# --- decisions ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Decision:
    action: DecisionAction
    reason: DecisionReason
    policy: str | None = None

    @property
    def granted(self) -> bool:
        """True when the request may be forwarded to the origin."""
        return self.action in ("allow", "bypass", "service_auth")


NOT_AUTHENTICATED = Decision("authenticate", "not_authenticated")
NO_POLICY_MATCHED = Decision("deny", "no_policy_matched")


def decide(identity: Identity | None, app: AppPolicySet, request: RequestFacts) -> Decision:
    """Decide one request. ``authenticate`` means: send the visitor to log in, then ask again."""
    for policy in app.bypass:
        if policy.matches(None, request):
            return Decision("bypass", "bypass", policy.name)
    if identity is None:
        return NOT_AUTHENTICATED
    if identity.is_service_token:
        for policy in app.service_auth:
            if policy.matches(identity, request):
                return Decision("service_auth", "service_token", policy.name)
        return NO_POLICY_MATCHED
    for policy in app.ordered:
        if policy.matches(identity, request):
            if policy.action == "allow":
                return Decision("allow", "allowed_by_policy", policy.name)
            return Decision("deny", "blocked_by_policy", policy.name)
    return NO_POLICY_MATCHED
