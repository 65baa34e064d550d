"""Authentication and authorization: who may reach which application, and the proof of it.

The pure core lives here: identities and request facts (``identity``), policies and the
decision function (``policy``), signing keys and tokens (``tokens``) and their errors
(``errors``). The login flow, identity providers and sessions build on it.
"""

from edge.access.errors import AccessError, KeyRingError, PolicyConfigError, TokenInvalid
from edge.access.identity import Identity, RequestFacts
from edge.access.policy import (
    AppPolicySet,
    Decision,
    Policy,
    Rule,
    decide,
    parse_policies,
    parse_policy,
    parse_rule,
)
from edge.access.tokens import (
    KeyRing,
    SigningKey,
    TokenMinter,
    TokenVerifier,
    new_aud_tag,
)

__all__ = [
    "AccessError",
    "AppPolicySet",
    "Decision",
    "Identity",
    "KeyRing",
    "KeyRingError",
    "Policy",
    "PolicyConfigError",
    "RequestFacts",
    "Rule",
    "SigningKey",
    "TokenInvalid",
    "TokenMinter",
    "TokenVerifier",
    "decide",
    "new_aud_tag",
    "parse_policies",
    "parse_policy",
    "parse_rule",
]
