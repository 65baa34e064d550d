"""Declarative Access configuration: make the store match one document.

The document is the TOML file of ``tunnelgate-edge apply`` (sent as JSON to ``POST /v1/apply``)::

    [[idp]]                 name, type and the type's settings (as for POST /v1/idps)
    [[app]]                 name, domain and the application settings (as for POST /v1/apps)
    [[app.policy]]          the app's ordered policies: name, action, include, require, exclude
    [[service_token]]       name, duration (default "8760h")

The rules:

* **Validate first.** The whole document is parsed and checked against the store (IdP names an
  app refers to, domains held by other apps) before anything is written; an error names the
  key path (``app[0].policy[1].include[0].email_domain: ...``). Unknown keys are errors.
* **What the file lists, it owns.** An IdP or app in the file ends up exactly as written:
  settings left out take their defaults, and an app's policies are exactly its
  ``[[app.policy]]`` tables, in order (none listed: none kept, so every request is denied).
* **Prune is explicit.** Apps, IdPs and service tokens in the store but not in the file are
  left alone, unless ``prune`` is set: then they are deleted.
* **Service tokens are created, never rewritten.** A listed token that does not exist is
  created and its secret returned once; an existing one is left as it is (its secret cannot be
  compared and its expiry was fixed at creation; to reissue one, delete it and apply).
* **All or nothing.** The changes run in one store transaction.
* **Idempotent.** Files and records are compared in canonical form, so applying the same file
  twice changes nothing the second time. ``dry_run`` reports the plan and writes nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from edge.access.policy import AppPolicySet
from edge.store import InvalidInput, Store
from edge.store.access_records import (
    DEFAULT_SERVICE_TOKEN_DURATION,
    AppRecord,
    AppSpec,
    IdpRecord,
    ServiceToken,
    parse_access_name,
    parse_app_spec,
    parse_idp,
    parse_policy_list,
    parse_seconds,
)

__all__ = [
    "AccessDocument",
    "ApplyResult",
    "Change",
    "DesiredApp",
    "DesiredServiceToken",
    "Plan",
    "apply_document",
    "parse_document",
    "plan_changes",
]

log = logging.getLogger(__name__)

ChangeAction = Literal["create", "update", "delete"]
ChangeTarget = Literal["idp", "app", "policies", "service_token"]
_TOP_KEYS = frozenset({"idp", "app", "service_token"})
_TOKEN_KEYS = frozenset({"name", "duration"})


@dataclass(frozen=True)
class DesiredApp:
    spec: AppSpec
    policies: AppPolicySet


@dataclass(frozen=True)
class DesiredServiceToken:
    name: str
    duration: int


@dataclass(frozen=True)
class AccessDocument:
    """A parsed, self-consistent document (not yet checked against the store)."""

    idps: tuple[IdpRecord, ...] = ()
    apps: tuple[DesiredApp, ...] = ()
    service_tokens: tuple[DesiredServiceToken, ...] = ()


def _invalid(key_path: str, problem: str, hint: str = "") -> InvalidInput:
    return InvalidInput(problem, code="invalid_document", key_path=key_path, hint=hint)


def _tables(document: Mapping[str, object], key: str) -> list[object]:
    value = document.get(key, [])
    if not isinstance(value, list):
        raise _invalid(key, f"expected a list of tables ([[{key}]])")
    return value


def _unique(names: list[str], key: str, what: str) -> None:
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise _invalid(
                f"{key}[{index}].{what}", f"{name!r} is already used by {key}[{seen[name]}]"
            )
        seen[name] = index


def parse_document(obj: object) -> AccessDocument:
    """Parse and check a whole document; the first mistake raises InvalidInput with its path."""
    if not isinstance(obj, Mapping):
        raise _invalid("", "expected a document (a table) with [[idp]], [[app]], [[service_token]]")
    for key in obj:
        if key not in _TOP_KEYS:
            raise _invalid(str(key), "unknown key", hint="known: idp, app, service_token")
    idps = tuple(
        parse_idp(table, f"idp[{index}]") for index, table in enumerate(_tables(obj, "idp"))
    )
    _unique([idp.name for idp in idps], "idp", "name")
    apps: list[DesiredApp] = []
    for index, table in enumerate(_tables(obj, "app")):
        path = f"app[{index}]"
        spec = parse_app_spec(table, path, ignore=frozenset({"policy"}))
        raw_policies = table.get("policy", []) if isinstance(table, Mapping) else []
        policies = parse_policy_list(raw_policies, f"{path}.policy")
        apps.append(DesiredApp(spec, policies))
    _unique([app.spec.name for app in apps], "app", "name")
    _unique([app.spec.domain for app in apps], "app", "domain")
    tokens: list[DesiredServiceToken] = []
    for index, table in enumerate(_tables(obj, "service_token")):
        path = f"service_token[{index}]"
        if not isinstance(table, Mapping):
            raise _invalid(path, "expected a table")
        for key in table:
            if key not in _TOKEN_KEYS:
                raise _invalid(f"{path}.{key}", "unknown key", hint="known: name, duration")
        name = parse_access_name(table.get("name"), f"{path}.name", what="service token")
        duration = parse_seconds(
            table.get("duration", DEFAULT_SERVICE_TOKEN_DURATION), f"{path}.duration", low=60
        )
        tokens.append(DesiredServiceToken(name, duration))
    _unique([token.name for token in tokens], "service_token", "name")
    return AccessDocument(idps, tuple(apps), tuple(tokens))


@dataclass(frozen=True)
class Change:
    """One line of the plan; ``fields`` lists the settings an update changes."""

    action: ChangeAction
    target: ChangeTarget
    name: str
    fields: tuple[str, ...] = ()

    def summary(self) -> str:
        if self.target == "policies":
            return f"{self.action} policies of app {self.name}" + (
                f" ({', '.join(self.fields)})" if self.fields else ""
            )
        label = self.target.replace("_", " ")
        suffix = f" ({', '.join(self.fields)})" if self.fields else ""
        return f"{self.action} {label} {self.name}{suffix}"

    def to_json(self) -> dict[str, object]:
        return {
            "action": self.action,
            "target": self.target,
            "name": self.name,
            "fields": list(self.fields),
            "summary": self.summary(),
        }


@dataclass
class Plan:
    """What applying a document would do, in the order it is done."""

    idp_writes: list[tuple[IdpRecord, bool]] = field(default_factory=list)  # (idp, is_new)
    app_deletes: list[str] = field(default_factory=list)
    app_writes: list[tuple[AppSpec, bool]] = field(default_factory=list)  # (spec, is_new)
    policy_writes: list[tuple[str, AppPolicySet]] = field(default_factory=list)
    idp_deletes: list[str] = field(default_factory=list)
    token_creates: list[DesiredServiceToken] = field(default_factory=list)
    token_deletes: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)


def _changed_fields(current: Mapping[str, object], wanted: Mapping[str, object]) -> tuple[str, ...]:
    keys = [*wanted, *(key for key in current if key not in wanted)]
    return tuple(key for key in keys if current.get(key) != wanted.get(key))


def _policy_configs(policies: AppPolicySet) -> list[dict[str, object]]:
    return [policy.to_config() for policy in policies.policies]


def _plan_idps(plan: Plan, document: AccessDocument, current: dict[str, IdpRecord]) -> None:
    for idp in document.idps:
        existing = current.get(idp.name)
        if existing is None:
            plan.idp_writes.append((idp, True))
            plan.changes.append(Change("create", "idp", idp.name))
            continue
        fields = _changed_fields(existing.to_input(), idp.to_input())
        if fields:
            plan.idp_writes.append((idp, False))
            plan.changes.append(Change("update", "idp", idp.name, fields))


def _check_app_references(
    document: AccessDocument,
    remaining_idps: set[str],
    current_apps: dict[str, AppRecord],
    kept_apps: set[str],
) -> None:
    domains = {current_apps[name].spec.domain: name for name in kept_apps}
    for index, app in enumerate(document.apps):
        for position, idp in enumerate(app.spec.idps):
            if idp not in remaining_idps:
                raise InvalidInput(
                    f"no identity provider named {idp!r} in this file or the store",
                    code="unknown_idp",
                    key_path=f"app[{index}].idps[{position}]",
                )
        holder = domains.get(app.spec.domain)
        if holder is not None:
            raise InvalidInput(
                f"{app.spec.domain} is the domain of application {holder!r}, "
                "which this file does not list",
                code="domain_taken",
                key_path=f"app[{index}].domain",
                hint="add that application to the file, or apply with prune to delete it",
            )


def plan_changes(document: AccessDocument, store: Store, *, prune: bool) -> Plan:
    """Compare a document with the store; raises InvalidInput when it cannot be applied."""
    current_idps = {idp.name: idp for idp in store.list_idps()}
    current_apps = {app.name: app for app in store.list_apps()}
    current_tokens = {token.name: token for token in store.list_service_tokens()}
    wanted_idps = {idp.name for idp in document.idps}
    wanted_apps = {app.spec.name for app in document.apps}
    wanted_tokens = {token.name for token in document.service_tokens}

    kept_apps = set() if prune else set(current_apps) - wanted_apps
    remaining_idps = wanted_idps | (set() if prune else set(current_idps))
    _check_app_references(document, remaining_idps, current_apps, kept_apps)

    plan = Plan()
    _plan_idps(plan, document, current_idps)
    if prune:
        for name in sorted(set(current_apps) - wanted_apps):
            plan.app_deletes.append(name)
            plan.changes.append(Change("delete", "app", name))
    for app in document.apps:
        existing = current_apps.get(app.spec.name)
        wanted_policies = _policy_configs(app.policies)
        if existing is None:
            plan.app_writes.append((app.spec, True))
            plan.changes.append(Change("create", "app", app.spec.name))
            if app.policies.policies:
                plan.policy_writes.append((app.spec.name, app.policies))
                names = tuple(policy.name for policy in app.policies.policies)
                plan.changes.append(Change("create", "policies", app.spec.name, names))
            continue
        fields = _changed_fields(existing.spec.to_input(), app.spec.to_input())
        if fields:
            plan.app_writes.append((app.spec, False))
            plan.changes.append(Change("update", "app", app.spec.name, fields))
        if _policy_configs(store.get_policies(app.spec.name)) != wanted_policies:
            plan.policy_writes.append((app.spec.name, app.policies))
            names = tuple(policy.name for policy in app.policies.policies)
            plan.changes.append(Change("update", "policies", app.spec.name, names))
    if prune:
        for name in sorted(set(current_idps) - wanted_idps):
            plan.idp_deletes.append(name)
            plan.changes.append(Change("delete", "idp", name))
    for token in document.service_tokens:
        if token.name not in current_tokens:
            plan.token_creates.append(token)
            plan.changes.append(Change("create", "service_token", token.name))
    if prune:
        for name in sorted(set(current_tokens) - wanted_tokens):
            plan.token_deletes.append(name)
            plan.changes.append(Change("delete", "service_token", name))
    return plan


@dataclass(frozen=True)
class ApplyResult:
    """What was (or, with ``dry_run``, would be) changed, and the secrets of new tokens."""

    changes: tuple[Change, ...]
    dry_run: bool
    created_tokens: tuple[tuple[ServiceToken, str], ...] = ()

    def targets(self) -> frozenset[ChangeTarget]:
        return frozenset(change.target for change in self.changes)


def _execute(plan: Plan, store: Store) -> tuple[tuple[ServiceToken, str], ...]:
    created: list[tuple[ServiceToken, str]] = []
    with store.batch():
        for idp, is_new in plan.idp_writes:
            if is_new:
                store.create_idp(idp)
            else:
                store.replace_idp(idp)
        for name in plan.app_deletes:
            store.delete_app(name)
        for spec, is_new in plan.app_writes:
            if is_new:
                store.create_app(spec)
            else:
                store.replace_app(spec.name, spec)
        for name, policies in plan.policy_writes:
            store.set_policies(name, policies)
        for name in plan.idp_deletes:
            store.delete_idp(name)
        for token in plan.token_creates:
            created.append(store.create_service_token(token.name, duration=token.duration))
        for name in plan.token_deletes:
            store.delete_service_token(name)
    return tuple(created)


def apply_document(
    store: Store, document: object, *, prune: bool = False, dry_run: bool = False
) -> ApplyResult:
    """Parse, plan and (unless ``dry_run``) apply a document in one transaction.

    Blocking: the admin API runs it in a worker thread.
    """
    parsed = parse_document(document)
    with store.batch():
        # Planning inside the transaction: nothing can change between the plan and the writes.
        plan = plan_changes(parsed, store, prune=prune)
        created = () if dry_run else _execute(plan, store)
    changes = tuple(plan.changes)
    if changes and not dry_run:
        log.info("apply: %d change(s): %s", len(changes), "; ".join(c.summary() for c in changes))
    return ApplyResult(changes, dry_run, created)
