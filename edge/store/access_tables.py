"""The Access configuration tables, written once for both store backends: IdPs, applications,
policies and service tokens (the runtime state, keys to decisions, is in the backends'
``*_runtime`` modules).

How each database spells what differs (placeholders, timestamps, JSON, flags, byte order,
notices to the other edges) is :class:`edge.store.store_tables.StoreTables`'s, answered by
:mod:`edge.store.sqlite_tables` and :mod:`edge.store.postgres_tables`. Writes notify the other
edges with ``app_changed``, ``idp_changed`` and ``service_token_changed``.

A mixin rather than a second store, so that all tables share one connection and one
transaction: ``apply`` changes IdPs, apps and policies together, and a batch commits all of it
or nothing. Every record is re-validated with the parsers the admin API and ``apply`` use
(:mod:`edge.store.access_records`), so a caller that builds a record by hand cannot store a
value no other way in would accept; every write appends to the audit log in its transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, timedelta
from typing import Any

from edge.access.policy import AppPolicySet
from edge.access.tokens import new_aud_tag
from edge.store import Conflict, InvalidInput, NotFound
from edge.store.access_records import (
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
from edge.store.record_fields import MAX_SERVICE_TOKEN_DURATION
from edge.store.store_tables import StoreTables
from tunnel.auth import hash_secret

__all__ = ["AccessConfigTables", "app_not_found", "idp_not_found"]

_APP_COLUMNS = (
    "id, name, domain, aud, type, session_duration, idps, cookie_name, header_name, "
    "email_header_name, allow_websockets, allow_encoded_slash, created_at, updated_at"
)
_TOKEN_COLUMNS = "id, name, client_id, secret_hash, created_at, expires_at"
MIN_SERVICE_TOKEN_DURATION = 60


def app_not_found(name: str) -> NotFound:
    return NotFound(
        f"no application named {name!r}", code="app_not_found", hint="list them with GET /v1/apps"
    )


def idp_not_found(name: str) -> NotFound:
    return NotFound(
        f"no identity provider named {name!r}",
        code="idp_not_found",
        hint="list them with GET /v1/idps",
    )


class AccessConfigTables(StoreTables):
    """The Access configuration methods of :class:`edge.store.Store` (see there for what each
    promises), on whichever database the concrete store holds."""

    # -- rows ------------------------------------------------------------------------------

    def _app_from_row(self, row: Sequence[Any]) -> AppRecord:
        spec = AppSpec(
            name=row[1],
            domain=row[2],
            type=row[4],
            session_duration=int(row[5]),
            idps=tuple(self._json_out(row[6])),
            cookie_name=row[7],
            header_name=row[8],
            email_header_name=row[9],
            allow_websockets=bool(row[10]),
            allow_encoded_slash=bool(row[11]),
        )
        return AppRecord(
            id=row[0],
            aud=row[3],
            spec=spec,
            created_at=self._time_out(row[12]),
            updated_at=self._time_out(row[13]),
        )

    def _idp_from_row(self, row: Sequence[Any]) -> IdpRecord:
        return parse_idp({"name": row[0], "type": row[1], **self._json_out(row[2])})

    def _token_from_row(self, row: Sequence[Any]) -> ServiceToken:
        return ServiceToken(
            id=row[0],
            name=row[1],
            client_id=row[2],
            secret_hash=row[3],
            created_at=self._time_out(row[4]),
            expires_at=self._time_out(row[5]),
        )

    # -- identity providers ----------------------------------------------------------------

    def create_idp(self, idp: IdpRecord) -> IdpRecord:
        checked = parse_idp(idp.to_input())
        now = self._time_in(self._clock())
        with self._transaction() as conn:
            if self._run(conn, "SELECT 1 FROM idps WHERE name = ?", (checked.name,)).fetchone():
                raise Conflict(
                    f"an identity provider named {checked.name!r} already exists",
                    code="idp_exists",
                    hint=f"change it with PUT /v1/idps/{checked.name}",
                )
            self._run(
                conn,
                "INSERT INTO idps (name, type, config, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (checked.name, checked.type, self._idp_config(checked), now, now),
            )
            self._audit(conn, "idp.created", {"name": checked.name, "type": checked.type})
            self._notify(conn, "idp_changed", checked.name)
        return checked

    def _idp_config(self, idp: IdpRecord) -> object:
        settings = idp.to_input()
        del settings["name"], settings["type"]
        return self._json_in(settings)

    def replace_idp(self, idp: IdpRecord) -> IdpRecord:
        checked = parse_idp(idp.to_input())
        with self._transaction() as conn:
            updated = self._run(
                conn,
                "UPDATE idps SET type = ?, config = ?, updated_at = ? WHERE name = ?",
                (
                    checked.type,
                    self._idp_config(checked),
                    self._time_in(self._clock()),
                    checked.name,
                ),
            )
            if updated.rowcount == 0:
                raise idp_not_found(checked.name)
            self._audit(conn, "idp.updated", {"name": checked.name, "type": checked.type})
            self._notify(conn, "idp_changed", checked.name)
        return checked

    def get_idp(self, name: str) -> IdpRecord:
        with self._reading() as conn:
            row = self._one(
                conn,
                "SELECT name, type, config FROM idps WHERE name = ?",
                (name,),
                idp_not_found(name),
            )
        return self._idp_from_row(row)

    def list_idps(self) -> list[IdpRecord]:
        with self._reading() as conn:
            rows = self._run(
                conn, f"SELECT name, type, config FROM idps ORDER BY {self._byte_order('name')}"
            ).fetchall()
        return [self._idp_from_row(row) for row in rows]

    def delete_idp(self, name: str) -> None:
        with self._transaction() as conn:
            self._one(conn, "SELECT 1 FROM idps WHERE name = ?", (name,), idp_not_found(name))
            users = [
                app_name
                for app_name, idps in self._run(
                    conn, f"SELECT name, idps FROM apps ORDER BY {self._byte_order('name')}"
                )
                if name in self._json_out(idps)
            ]
            if users:
                raise Conflict(
                    f"identity provider {name!r} is used by application(s) {', '.join(users)}",
                    code="idp_in_use",
                    hint="remove it from those applications' idps first",
                )
            self._run(conn, "DELETE FROM idps WHERE name = ?", (name,))
            self._audit(conn, "idp.deleted", {"name": name})
            self._notify(conn, "idp_changed", name)

    # -- applications ----------------------------------------------------------------------

    def _check_app_refs(self, conn: Any, spec: AppSpec, app_id: str) -> None:
        taken = self._run(
            conn, "SELECT name FROM apps WHERE domain = ? AND id != ?", (spec.domain, app_id)
        ).fetchone()
        if taken is not None:
            raise Conflict(
                f"{spec.domain} is already the domain of application {taken[0]!r}",
                code="domain_taken",
                hint="each host and path prefix belongs to one application",
            )
        known = {row[0] for row in self._run(conn, "SELECT name FROM idps")}
        for index, idp in enumerate(spec.idps):
            if idp not in known:
                raise InvalidInput(
                    f"no identity provider named {idp!r}",
                    code="unknown_idp",
                    key_path=f"idps[{index}]",
                    hint="add it first (POST /v1/idps) or list it in the same apply file",
                )

    def _app_values(self, spec: AppSpec) -> tuple[object, ...]:
        return (
            spec.type,
            spec.session_duration,
            self._json_in(list(spec.idps)),
            spec.cookie_name,
            spec.header_name,
            spec.email_header_name,
            self._flag_in(spec.allow_websockets),
            self._flag_in(spec.allow_encoded_slash),
        )

    def create_app(self, spec: AppSpec) -> AppRecord:
        checked = parse_app_spec(spec.to_input())
        now = self._clock().astimezone(UTC)
        app_id, aud = self._new_id(), new_aud_tag(self._random_bytes)
        with self._transaction() as conn:
            if self._run(conn, "SELECT 1 FROM apps WHERE name = ?", (checked.name,)).fetchone():
                raise Conflict(
                    f"an application named {checked.name!r} already exists",
                    code="app_exists",
                    hint=f"change it with PUT /v1/apps/{checked.name}",
                )
            self._check_app_refs(conn, checked, app_id)
            stamp = self._time_in(now)
            placeholders = ", ".join(["?"] * 14)
            self._run(
                conn,
                f"INSERT INTO apps ({_APP_COLUMNS}) VALUES ({placeholders})",
                (
                    app_id,
                    checked.name,
                    checked.domain,
                    aud,
                    *self._app_values(checked),
                    stamp,
                    stamp,
                ),
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
            current = self._app(conn, name)
            self._check_app_refs(conn, checked, current.id)
            self._run(
                conn,
                "UPDATE apps SET domain = ?, type = ?, session_duration = ?, idps = ?, "
                "cookie_name = ?, header_name = ?, email_header_name = ?, "
                "allow_websockets = ?, allow_encoded_slash = ?, updated_at = ? WHERE id = ?",
                (checked.domain, *self._app_values(checked), self._time_in(now), current.id),
            )
            self._audit(conn, "app.updated", {"domain": checked.domain}, app=name)
            self._notify(conn, "app_changed", name)
        return AppRecord(current.id, current.aud, checked, current.created_at, now)

    def _app(self, conn: Any, name: str) -> AppRecord:
        row = self._one(
            conn, f"SELECT {_APP_COLUMNS} FROM apps WHERE name = ?", (name,), app_not_found(name)
        )
        return self._app_from_row(row)

    def get_app(self, name: str) -> AppRecord:
        with self._reading() as conn:
            return self._app(conn, name)

    def list_apps(self) -> list[AppRecord]:
        with self._reading() as conn:
            rows = self._run(
                conn, f"SELECT {_APP_COLUMNS} FROM apps ORDER BY {self._byte_order('name')}"
            ).fetchall()
        return [self._app_from_row(row) for row in rows]

    def delete_app(self, name: str) -> AppRecord:
        with self._transaction() as conn:
            app = self._app(conn, name)
            self._run(conn, "DELETE FROM policies WHERE app_id = ?", (app.id,))
            self._run(conn, "DELETE FROM apps WHERE id = ?", (app.id,))
            self._run(
                conn, "DELETE FROM revocations WHERE kind = 'app' AND subject = ?", (app.aud,)
            )
            self._audit(conn, "app.deleted", {"domain": app.spec.domain, "aud": app.aud}, app=name)
            self._notify(conn, "app_changed", name)
        return app

    # -- policies --------------------------------------------------------------------------

    def _app_id(self, conn: Any, app_name: str) -> str:
        row = self._one(
            conn, "SELECT id FROM apps WHERE name = ?", (app_name,), app_not_found(app_name)
        )
        return str(row[0])

    def get_policies(self, app_name: str) -> AppPolicySet:
        with self._reading() as conn:
            app = self._app_id(conn, app_name)
            rows = self._run(
                conn,
                "SELECT name, action, include, require, exclude FROM policies "
                "WHERE app_id = ? ORDER BY position",
                (app,),
            ).fetchall()
        configs: list[dict[str, object]] = []
        for name, action, include, require, exclude in rows:
            config: dict[str, object] = {"name": name, "action": action}
            for key, stored in (("include", include), ("require", require), ("exclude", exclude)):
                rules = self._json_out(stored)
                if rules:
                    config[key] = rules
            configs.append(config)
        return parse_policy_list(configs)

    def set_policies(self, app_name: str, policies: AppPolicySet) -> AppPolicySet:
        checked = parse_policy_list([policy.to_config() for policy in policies.policies])
        with self._transaction() as conn:
            app = self._app_id(conn, app_name)
            self._run(conn, "DELETE FROM policies WHERE app_id = ?", (app,))
            for position, policy in enumerate(checked.policies):
                config = policy.to_config()
                self._run(
                    conn,
                    "INSERT INTO policies (app_id, position, name, action, include, require, "
                    "exclude) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        app,
                        position,
                        policy.name,
                        policy.action,
                        self._json_in(config.get("include", [])),
                        self._json_in(config.get("require", [])),
                        self._json_in(config.get("exclude", [])),
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
        parse_access_name(name, "name", what="service token")
        seconds = parse_seconds(
            duration, "duration", low=MIN_SERVICE_TOKEN_DURATION, high=MAX_SERVICE_TOKEN_DURATION
        )
        # The secret is shown once; only its hash is kept.
        secret = self._random_bytes(32).hex()
        client_id = self._random_bytes(16).hex() + ".access"
        now = self._clock().astimezone(UTC)
        token = ServiceToken(
            id=self._new_id(),
            name=name,
            client_id=client_id,
            secret_hash=hash_secret(secret),
            created_at=now,
            expires_at=now + timedelta(seconds=seconds),
        )
        with self._transaction() as conn:
            if self._run(conn, "SELECT 1 FROM service_tokens WHERE name = ?", (name,)).fetchone():
                raise Conflict(
                    f"a service token named {name!r} already exists",
                    code="service_token_exists",
                    hint="delete it first to issue a new secret",
                )
            self._run(
                conn,
                f"INSERT INTO service_tokens ({_TOKEN_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    token.id,
                    name,
                    client_id,
                    token.secret_hash,
                    self._time_in(token.created_at),
                    self._time_in(token.expires_at),
                ),
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
            rows = self._run(
                conn, f"SELECT {_TOKEN_COLUMNS} FROM service_tokens ORDER BY {self._byte_order('name')}"
            ).fetchall()
        return [self._token_from_row(row) for row in rows]

    def delete_service_token(self, name: str) -> ServiceToken:
        with self._transaction() as conn:
            row = self._one(
                conn,
                f"SELECT {_TOKEN_COLUMNS} FROM service_tokens WHERE name = ?",
                (name,),
                NotFound(
                    f"no service token named {name!r}",
                    code="service_token_not_found",
                    hint="list them with GET /v1/service-tokens",
                ),
            )
            self._run(conn, "DELETE FROM service_tokens WHERE id = ?", (row[0],))
            self._audit(conn, "service_token.deleted", {"name": name}, subject=name)
            self._notify(conn, "service_token_changed", name)
        return self._token_from_row(row)
