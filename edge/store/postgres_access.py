"""The Access configuration tables of the PostgreSQL store: IdPs, applications, policies and
service tokens (runtime state, keys to decisions, is in :mod:`edge.store.postgres_runtime`).

A mixin of :class:`edge.store.postgres.PostgresStore` for the same reason as its SQLite
counterpart (:mod:`edge.store.sqlite_access`): every table shares one connection and one
transaction, so ``apply`` commits all of a document or none of it. Records are re-validated with
the parsers of :mod:`edge.store.access_records`, every write appends to the audit log, and every
write notifies the other edges (``app_changed``, ``idp_changed``, ``service_token_changed``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from edge.access.policy import AppPolicySet
from edge.access.tokens import new_aud_tag
from edge.store import Conflict, InvalidInput, NotFound
from edge.store.access_records import (
    AppRecord,
    AppSpec,
    IdpRecord,
    ServiceToken,
    parse_app_spec,
    parse_idp,
    parse_policy_list,
)
from edge.store.service_tokens import (
    new_service_token,
    service_token_exists,
    service_token_not_found,
)
from edge.store.sqlite_access import app_not_found

__all__ = ["PgAccessTables", "PgTables"]

Connection = psycopg.Connection[Any]
_APP_COLUMNS = (
    "id, name, domain, aud, type, session_duration, idps, cookie_name, header_name, "
    "email_header_name, allow_websockets, allow_encoded_slash, created_at, updated_at"
)
_TOKEN_COLUMNS = "id, name, client_id, secret_hash, created_at, expires_at"


def _idp_not_found(name: str) -> NotFound:
    return NotFound(
        f"no identity provider named {name!r}",
        code="idp_not_found",
        hint="list them with GET /v1/idps",
    )


def _app_from_row(row: Sequence[Any]) -> AppRecord:
    spec = AppSpec(
        name=row[1],
        domain=row[2],
        type=row[4],
        session_duration=int(row[5]),
        idps=tuple(row[6]),
        cookie_name=row[7],
        header_name=row[8],
        email_header_name=row[9],
        allow_websockets=bool(row[10]),
        allow_encoded_slash=bool(row[11]),
    )
    return AppRecord(id=row[0], aud=row[3], spec=spec, created_at=row[12], updated_at=row[13])


def _idp_from_row(row: Sequence[Any]) -> IdpRecord:
    return parse_idp({"name": row[0], "type": row[1], **row[2]})


def _token_from_row(row: Sequence[Any]) -> ServiceToken:
    return ServiceToken(
        id=row[0],
        name=row[1],
        client_id=row[2],
        secret_hash=row[3],
        created_at=row[4],
        expires_at=row[5],
    )


class PgTables(ABC):
    """What the table mixins need from :class:`edge.store.postgres.PostgresStore`."""

    _clock: Callable[[], datetime]
    _new_id: Callable[[], str]
    _random_bytes: Callable[[int], bytes]

    @abstractmethod
    def _transaction(self, *, exclusive: bool = True) -> AbstractContextManager[Connection]:
        ...

    @abstractmethod
    def _reading(self) -> AbstractContextManager[Connection]:
        ...

    @abstractmethod
    def _audit(
        self,
        conn: Connection,
        kind: str,
        detail: dict[str, Any],
        *,
        app: str | None = None,
        subject: str | None = None,
        time: datetime | None = None,
    ) -> None:
        ...

    @staticmethod
    @abstractmethod
    def _notify(conn: Connection, kind: str, ident: str = "") -> None:
        ...


class PgAccessTables(PgTables):
    """The Access configuration methods of :class:`edge.store.Store` on PostgreSQL."""

    # -- identity providers ----------------------------------------------------------------

    def create_idp(self, idp: IdpRecord) -> IdpRecord:
        checked = parse_idp(idp.to_input())
        now = self._clock()
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM idps WHERE name = %s", (checked.name,)).fetchone():
                raise Conflict(
                    f"an identity provider named {checked.name!r} already exists",
                    code="idp_exists",
                    hint=f"change it with PUT /v1/idps/{checked.name}",
                )
            conn.execute(
                "INSERT INTO idps (name, type, config, created_at, updated_at) "
                "VALUES (%s, %s, %s, %s, %s)",
                (checked.name, checked.type, self._idp_config(checked), now, now),
            )
            self._audit(conn, "idp.created", {"name": checked.name, "type": checked.type})
            self._notify(conn, "idp_changed", checked.name)
        return checked

    @staticmethod
    def _idp_config(idp: IdpRecord) -> Jsonb:
        settings = idp.to_input()
        del settings["name"], settings["type"]
        return Jsonb(settings)

    def replace_idp(self, idp: IdpRecord) -> IdpRecord:
        checked = parse_idp(idp.to_input())
        with self._transaction() as conn:
            updated = conn.execute(
                "UPDATE idps SET type = %s, config = %s, updated_at = %s WHERE name = %s",
                (checked.type, self._idp_config(checked), self._clock(), checked.name),
            )
            if updated.rowcount == 0:
                raise _idp_not_found(checked.name)
            self._audit(conn, "idp.updated", {"name": checked.name, "type": checked.type})
            self._notify(conn, "idp_changed", checked.name)
        return checked

    def get_idp(self, name: str) -> IdpRecord:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT name, type, config FROM idps WHERE name = %s", (name,)
            ).fetchone()
        if row is None:
            raise _idp_not_found(name)
        return _idp_from_row(row)

    def list_idps(self) -> list[IdpRecord]:
        with self._reading() as conn:
            rows = conn.execute(
                'SELECT name, type, config FROM idps ORDER BY name COLLATE "C"'
            ).fetchall()
        return [_idp_from_row(row) for row in rows]

    def delete_idp(self, name: str) -> None:
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM idps WHERE name = %s", (name,)).fetchone() is None:
                raise _idp_not_found(name)
            users = [
                app_name
                for app_name, idps in conn.execute(
                    'SELECT name, idps FROM apps ORDER BY name COLLATE "C"'
                )
                if name in idps
            ]
            if users:
                raise Conflict(
                    f"identity provider {name!r} is used by application(s) {', '.join(users)}",
                    code="idp_in_use",
                    hint="remove it from those applications' idps first",
                )
            conn.execute("DELETE FROM idps WHERE name = %s", (name,))
            self._audit(conn, "idp.deleted", {"name": name})
            self._notify(conn, "idp_changed", name)

    # -- applications ----------------------------------------------------------------------

    def _check_app_refs(self, conn: Connection, spec: AppSpec, app_id: str) -> None:
        taken = conn.execute(
            "SELECT name FROM apps WHERE domain = %s AND id != %s", (spec.domain, app_id)
        ).fetchone()
        if taken is not None:
            raise Conflict(
                f"{spec.domain} is already the domain of application {taken[0]!r}",
                code="domain_taken",
                hint="each host and path prefix belongs to one application",
            )
        known = {row[0] for row in conn.execute("SELECT name FROM idps")}
        for index, idp in enumerate(spec.idps):
            if idp not in known:
                raise InvalidInput(
                    f"no identity provider named {idp!r}",
                    code="unknown_idp",
                    key_path=f"idps[{index}]",
                    hint="add it first (POST /v1/idps) or list it in the same apply file",
                )

    @staticmethod
    def _app_values(spec: AppSpec) -> tuple[object, ...]:
        return (
            spec.type,
            spec.session_duration,
            Jsonb(list(spec.idps)),
            spec.cookie_name,
            spec.header_name,
            spec.email_header_name,
            spec.allow_websockets,
            spec.allow_encoded_slash,
        )

    def create_app(self, spec: AppSpec) -> AppRecord:
        checked = parse_app_spec(spec.to_input())
        now = self._clock().astimezone(UTC)
        app_id, aud = self._new_id(), new_aud_tag(self._random_bytes)
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM apps WHERE name = %s", (checked.name,)).fetchone():
                raise Conflict(
                    f"an application named {checked.name!r} already exists",
                    code="app_exists",
                    hint=f"change it with PUT /v1/apps/{checked.name}",
                )
            self._check_app_refs(conn, checked, app_id)
            placeholders = ", ".join(["%s"] * 14)
            conn.execute(
                f"INSERT INTO apps ({_APP_COLUMNS}) VALUES ({placeholders})",
                (app_id, checked.name, checked.domain, aud, *self._app_values(checked), now, now),
            )
            self._audit(
                conn, "app.created", {"domain": checked.domain, "aud": aud}, app=checked.name
            )
            self._notify(conn, "app_changed", checked.name)
        return AppRecord(id=app_id, aud=aud, spec=checked, created_at=now, updated_at=now)

    def replace_app(self, name: str, spec: AppSpec) -> AppRecord:
        checked = parse_app_spec(spec.to_input())
        if checked.name != name:
            raise InvalidInput(
                f"the body names {checked.name!r}, the path {name!r}",
                code="invalid_app",
                key_path="name",
                hint="applications cannot be renamed; create a new one and delete the old",
            )
        now = self._clock().astimezone(UTC)
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT {_APP_COLUMNS} FROM apps WHERE name = %s", (name,)
            ).fetchone()
            if row is None:
                raise app_not_found(name)
            current = _app_from_row(row)
            self._check_app_refs(conn, checked, current.id)
            conn.execute(
                "UPDATE apps SET domain = %s, type = %s, session_duration = %s, idps = %s, "
                "cookie_name = %s, header_name = %s, email_header_name = %s, "
                "allow_websockets = %s, allow_encoded_slash = %s, updated_at = %s WHERE id = %s",
                (checked.domain, *self._app_values(checked), now, current.id),
            )
            self._audit(conn, "app.updated", {"domain": checked.domain}, app=name)
            self._notify(conn, "app_changed", name)
        return AppRecord(current.id, current.aud, checked, current.created_at, now)

    def get_app(self, name: str) -> AppRecord:
        with self._reading() as conn:
            row = conn.execute(
                f"SELECT {_APP_COLUMNS} FROM apps WHERE name = %s", (name,)
            ).fetchone()
        if row is None:
            raise app_not_found(name)
        return _app_from_row(row)

    def list_apps(self) -> list[AppRecord]:
        with self._reading() as conn:
            rows = conn.execute(
                f'SELECT {_APP_COLUMNS} FROM apps ORDER BY name COLLATE "C"'
            ).fetchall()
        return [_app_from_row(row) for row in rows]

    def delete_app(self, name: str) -> AppRecord:
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT {_APP_COLUMNS} FROM apps WHERE name = %s", (name,)
            ).fetchone()
            if row is None:
                raise app_not_found(name)
            app = _app_from_row(row)
            conn.execute("DELETE FROM policies WHERE app_id = %s", (app.id,))
            conn.execute("DELETE FROM apps WHERE id = %s", (app.id,))
            conn.execute(
                "DELETE FROM revocations WHERE kind = 'app' AND subject = %s", (app.aud,)
            )
            self._audit(conn, "app.deleted", {"domain": app.spec.domain, "aud": app.aud}, app=name)
            self._notify(conn, "app_changed", name)
        return app

    # -- policies --------------------------------------------------------------------------

    def get_policies(self, app_name: str) -> AppPolicySet:
        with self._reading() as conn:
            app = conn.execute("SELECT id FROM apps WHERE name = %s", (app_name,)).fetchone()
            if app is None:
                raise app_not_found(app_name)
            rows = conn.execute(
                "SELECT name, action, include, require, exclude FROM policies "
                "WHERE app_id = %s ORDER BY position",
                (app[0],),
            ).fetchall()
        configs: list[dict[str, object]] = []
        for name, action, include, require, exclude in rows:
            config: dict[str, object] = {"name": name, "action": action}
            for key, rules in (("include", include), ("require", require), ("exclude", exclude)):
                if rules:
                    config[key] = rules
            configs.append(config)
        return parse_policy_list(configs)

    def set_policies(self, app_name: str, policies: AppPolicySet) -> AppPolicySet:
        checked = parse_policy_list([policy.to_config() for policy in policies.policies])
        with self._transaction() as conn:
            app = conn.execute("SELECT id FROM apps WHERE name = %s", (app_name,)).fetchone()
            if app is None:
                raise app_not_found(app_name)
            conn.execute("DELETE FROM policies WHERE app_id = %s", (app[0],))
            for position, policy in enumerate(checked.policies):
                config = policy.to_config()
                conn.execute(
                    "INSERT INTO policies (app_id, position, name, action, include, require, "
                    "exclude) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        app[0],
                        position,
                        policy.name,
                        policy.action,
                        Jsonb(config.get("include", [])),
                        Jsonb(config.get("require", [])),
                        Jsonb(config.get("exclude", [])),
                    ),
                )
            self._audit(
                conn,
                "app.policies_set",
                {"policies": [policy.name for policy in checked.policies]},
                app=app_name,
            )
            self._notify(conn, "app_changed", app_name)
        return checked

    # -- service tokens --------------------------------------------------------------------

    def create_service_token(self, name: str, *, duration: int) -> tuple[ServiceToken, str]:
        token, secret = new_service_token(
            name, duration, random_bytes=self._random_bytes, now=self._clock(), new_id=self._new_id
        )
        client_id = token.client_id
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM service_tokens WHERE name = %s", (name,)).fetchone():
                raise service_token_exists(name)
            conn.execute(
                f"INSERT INTO service_tokens ({_TOKEN_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                (token.id, name, client_id, token.secret_hash, token.created_at, token.expires_at),
            )
            self._audit(
                conn,
                "service_token.created",
                {
                    "name": name,
                    "client_id": client_id,
                    "expires_at": token.expires_at.isoformat(),
                },
                subject=name,
            )
            self._notify(conn, "service_token_changed", name)
        return token, secret

    def list_service_tokens(self) -> list[ServiceToken]:
        with self._reading() as conn:
            rows = conn.execute(
                f'SELECT {_TOKEN_COLUMNS} FROM service_tokens ORDER BY name COLLATE "C"'
            ).fetchall()
        return [_token_from_row(row) for row in rows]

    def delete_service_token(self, name: str) -> ServiceToken:
        with self._transaction() as conn:
            row = conn.execute(
                f"SELECT {_TOKEN_COLUMNS} FROM service_tokens WHERE name = %s", (name,)
            ).fetchone()
            if row is None:
                raise service_token_not_found(name)
            conn.execute("DELETE FROM service_tokens WHERE id = %s", (row[0],))
            self._audit(conn, "service_token.deleted", {"name": name}, subject=name)
            self._notify(conn, "service_token_changed", name)
        return _token_from_row(row)
