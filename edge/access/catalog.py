"""The Access catalog: an immutable snapshot of applications, policies, IdPs, service tokens and
revocations, which is all the request path reads.

The running edge builds one with :func:`build_catalog` at start and again whenever the admin
API reports an Access change (``app_changed``, ``idp_changed``, ``service_token_changed``,
``sessions_revoked``), and swaps it in with one assignment: a request sees either the old or the
new catalog, never half of each, and never waits on the store.

Application lookup runs on the canonical host and path (``edge.canonical``): the host must match
exactly, the path prefix matches on segment boundaries only (``/admin`` covers ``/admin`` and
``/admin/x``, never ``/administrator``), and of several applications on one host the longest
matching prefix wins, so ``app.example.com/admin`` can be stricter than ``app.example.com``.

Service-token secrets are checked against their SHA-256 in constant time, and an unknown client
id costs the same comparison as a known one, so timing tells nothing about which ids exist.

A missing auth domain is not a start-up error (an edge may serve tunnels without Access), but
with applications configured nobody could log in; :attr:`AccessCatalog.warnings` says so, and
:func:`build_catalog` logs every warning each time it builds a catalog (at start-up first).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from edge.access.policy import AppPolicySet
from edge.canonical import path_matches_prefix
from edge.store import Store
from edge.store.access_records import AppRecord, AppSpec, IdpRecord, Revocation

__all__ = [
    "AccessCatalog",
    "CatalogApp",
    "ServiceTokenEntry",
    "build_catalog",
]

log = logging.getLogger(__name__)

_DUMMY_HASH = hashlib.sha256(b"no such service token").hexdigest()


@dataclass(frozen=True, slots=True)
class CatalogApp:
    """One application ready for the request path: settings, policies and resolved IdPs.

    ``idps`` are the IdPs its login page offers: those it lists, or every configured IdP when
    it lists none.
    """

    record: AppRecord
    policies: AppPolicySet
    idps: tuple[IdpRecord, ...]
    # The record's fields the request path reads, copied once: plain slots, not properties
    # (every authenticated request reads them several times).
    name: str = field(init=False, compare=False, repr=False)
    aud: str = field(init=False, compare=False, repr=False)
    spec: AppSpec = field(init=False, compare=False, repr=False)
    host: str = field(init=False, compare=False, repr=False)
    path_prefix: str = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        record = self.record
        for name in ("name", "aud", "spec", "host", "path_prefix"):
            object.__setattr__(self, name, getattr(record, name))


@dataclass(frozen=True, slots=True)
class ServiceTokenEntry:
    """A service token as the request path needs it; ``expires_at`` in Unix seconds."""

    name: str
    client_id: str
    secret_hash: str
    expires_at: float


class AccessCatalog:
    """Read-only lookups for the request path; build a new one instead of changing one."""

    __slots__ = (
        "_app_revocations",
        "_apps_by_aud",
        "_apps_by_host",
        "_apps_by_name",
        "_email_revocations",
        "_idps",
        "_tokens",
        "auth_domain",
        "encoded_slash_hosts",
        "warnings",
    )

    def __init__(
        self,
        apps: Iterable[CatalogApp] = (),
        idps: Iterable[IdpRecord] = (),
        service_tokens: Iterable[ServiceTokenEntry] = (),
        revocations: Iterable[Revocation] = (),
        *,
        auth_domain: str = "",
        warnings: Iterable[str] = (),
    ) -> None:
        by_host: dict[str, list[CatalogApp]] = {}
        apps = tuple(apps)
        for app in apps:
            by_host.setdefault(app.host, []).append(app)
        self._apps_by_host: Mapping[str, tuple[CatalogApp, ...]] = MappingProxyType(
            {
                host: tuple(
                    sorted(group, key=lambda a: len(a.path_prefix.rstrip("/")), reverse=True)
                )
                for host, group in by_host.items()
            }
        )
        self._apps_by_name = MappingProxyType({app.name: app for app in apps})
        self.encoded_slash_hosts = frozenset(
            app.host for app in apps if app.spec.allow_encoded_slash
        )
        """Hosts with an application that opted in to ``%2F`` and ``%5C`` in paths."""
        self._apps_by_aud = MappingProxyType({app.aud: app for app in apps})
        self._idps = MappingProxyType({idp.name: idp for idp in idps})
        self._tokens = MappingProxyType({token.client_id: token for token in service_tokens})
        revocations = tuple(revocations)
        self._email_revocations = MappingProxyType(
            {r.subject: r.epoch for r in revocations if r.kind == "email"}
        )
        self._app_revocations = MappingProxyType(
            {r.subject: r.epoch for r in revocations if r.kind == "app"}
        )
        self.auth_domain = auth_domain
        self.warnings: tuple[str, ...] = tuple(warnings)

    # -- applications ----------------------------------------------------------------------

    def app_for(self, host: str, path: str) -> CatalogApp | None:
        """The application serving canonical ``host`` and ``path``; longest prefix wins."""
        for app in self._apps_by_host.get(host, ()):
            if path_matches_prefix(path, app.path_prefix):
                return app
        return None

    def app_named(self, name: str) -> CatalogApp | None:
        return self._apps_by_name.get(name)

    def app_by_aud(self, aud: str) -> CatalogApp | None:
        return self._apps_by_aud.get(aud)

    @property
    def apps(self) -> tuple[CatalogApp, ...]:
        return tuple(self._apps_by_name.values())

    @property
    def hosts(self) -> frozenset[str]:
        """Every host with an application (plus the auth domain): valid redirect targets."""
        hosts = set(self._apps_by_host)
        if self.auth_domain:
            hosts.add(self.auth_domain.partition(":")[0])
        return frozenset(hosts)

    # -- identity providers ----------------------------------------------------------------

    def idp(self, name: str) -> IdpRecord | None:
        return self._idps.get(name)

    @property
    def idps(self) -> tuple[IdpRecord, ...]:
        return tuple(self._idps.values())

    # -- service tokens --------------------------------------------------------------------

    def verify_service_token(
        self, client_id: str, client_secret: str, *, now: float
    ) -> ServiceTokenEntry | None:
        """The token these credentials prove, or None (unknown, wrong secret or expired)."""
        entry = self._tokens.get(client_id)
        presented = hashlib.sha256(client_secret.encode("utf-8", "replace")).hexdigest()
        expected = entry.secret_hash if entry is not None else _DUMMY_HASH
        matched = hmac.compare_digest(presented.encode("ascii"), expected.encode("ascii"))
        if entry is None or not matched or now >= entry.expires_at:
            return None
        return entry

    # -- revocations -----------------------------------------------------------------------

    def email_revoked_at(self, email: str) -> float | None:
        return self._email_revocations.get(email.lower())

    def app_revoked_at(self, aud: str) -> float | None:
        return self._app_revocations.get(aud)

    def is_revoked(self, *, email: str, aud: str | None, created_at: float) -> bool:
        """Whether a session of ``email`` created at ``created_at`` was revoked since, for
        everything (by e-mail) or for the app ``aud``."""
        for epoch in (
            self.email_revoked_at(email),
            None if aud is None else self.app_revoked_at(aud),
        ):
            if epoch is not None and created_at <= epoch:
                return True
        return False


def _warnings(
    apps: tuple[CatalogApp, ...], idps: tuple[IdpRecord, ...], auth_domain: str
) -> list[str]:
    found: list[str] = []
    http_apps = [app.name for app in apps if app.spec.type == "http"]
    if http_apps and not auth_domain:
        found.append(
            "access.auth_domain is not set, so nobody can log in to "
            f"{', '.join(http_apps)}; set it in the edge config (tunnelgate-edge init "
            "--auth-domain HOST writes it)"
        )
    if apps and not idps:
        found.append("no identity provider is configured; only service tokens can get in")
    for app in apps:
        if not app.policies.policies:
            found.append(f"application {app.name} has no policies: every request is denied")
    return found


def build_catalog(store: Store, *, auth_domain: str, now: float | None = None) -> AccessCatalog:
    """Read everything the request path needs from the store (run it in a worker thread).

    ``now`` (Unix seconds), when given, leaves out service tokens that have expired already.
    """
    idps = tuple(store.list_idps())
    idps_by_name = {idp.name: idp for idp in idps}
    apps: list[CatalogApp] = []
    for record in store.list_apps():
        offered = (
            tuple(idps_by_name[name] for name in record.spec.idps if name in idps_by_name)
            if record.spec.idps
            else idps
        )
        apps.append(CatalogApp(record, store.get_policies(record.name), offered))
    tokens = [
        ServiceTokenEntry(
            name=token.name,
            client_id=token.client_id,
            secret_hash=token.secret_hash,
            expires_at=token.expires_at.timestamp(),
        )
        for token in store.list_service_tokens()
        if now is None or token.expires_at.timestamp() > now
    ]
    frozen_apps = tuple(apps)
    warnings = _warnings(frozen_apps, idps, auth_domain)
    for warning in warnings:
        log.warning("access: %s", warning)
    return AccessCatalog(
        frozen_apps,
        idps,
        tokens,
        store.revocations(),
        auth_domain=auth_domain,
        warnings=warnings,
    )
