"""The Access endpoints of the admin API: applications, policies, IdPs, service tokens, session
revocation, signing keys, the audit log and declarative ``apply``.

Bodies are validated by the store's own parsers (:mod:`edge.store.access_records`), so the API
accepts exactly what ``tunnelgate-edge apply`` accepts and reports the same key paths. After
every committed write the running edge hears about it through ``on_change`` with one of the
Access change kinds, and rebuilds its catalog, key ring or sessions from the store.

Secrets appear in exactly two answers, once each: a new service token's ``client_secret``
(``POST /v1/service-tokens``, and ``POST /v1/apply`` for the tokens it creates).
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import trio

from edge.access.apply import ApplyResult, apply_document
from edge.access.keys_service import KeySettings, rotate_signing_keys
from edge.access.policy import AppPolicySet
from edge.admin.api import (
    AdminError,
    AdminResponse,
    ChangeEvent,
    ChangeKind,
    Handler,
    json_response,
    parse_json_body,
)
from edge.store import KeyRecord, Store
from edge.store.access_records import (
    DEFAULT_SERVICE_TOKEN_DURATION,
    AppRecord,
    IdpRecord,
    ServiceToken,
    parse_app_spec,
    parse_idp,
    parse_policy_list,
)

__all__ = ["MAX_AUDIT_LIMIT", "AccessEndpoints"]

log = logging.getLogger(__name__)

MAX_AUDIT_LIMIT = 1000
DEFAULT_AUDIT_LIMIT = 100
_T = TypeVar("_T")
_Query = dict[str, list[str]]
_Params = dict[str, str]


def _iso(moment: datetime | float | None) -> str | None:
    if moment is None:
        return None
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _body_object(body: bytes, *, allowed: set[str] | None = None) -> dict[str, Any]:
    data = parse_json_body(body)
    if not isinstance(data, dict):
        raise AdminError(400, "invalid_body", "expected a JSON object")
    if allowed is not None:
        unknown = sorted(set(data) - allowed)
        if unknown:
            expected = ", ".join(f'"{name}"' for name in sorted(allowed))
            raise AdminError(
                400, "invalid_body", f"unknown field {unknown[0]!r}; expected {expected}"
            )
    return data


def _flag(query: _Query, name: str) -> bool:
    values = query.get(name, ["false"])
    if len(values) != 1 or values[0] not in {"true", "false"}:
        raise AdminError(400, "invalid_query", f'{name} must be "true" or "false"')
    return values[0] == "true"


def _single(query: _Query, name: str) -> str | None:
    values = query.get(name)
    if values is None:
        return None
    if len(values) != 1 or not values[0]:
        raise AdminError(400, "invalid_query", f"give {name} once, not empty")
    return values[0]


def app_json(app: AppRecord, policies: AppPolicySet) -> dict[str, object]:
    return {
        "id": app.id,
        **app.spec.to_input(),
        "aud": app.aud,
        "created_at": _iso(app.created_at),
        "updated_at": _iso(app.updated_at),
        "policies": [policy.to_config() for policy in policies.policies],
    }


def _token_json(token: ServiceToken) -> dict[str, object]:
    return {
        "id": token.id,
        "name": token.name,
        "client_id": token.client_id,
        "created_at": _iso(token.created_at),
        "expires_at": _iso(token.expires_at),
    }


def _keys_json(records: list[KeyRecord], now: float) -> dict[str, object]:
    candidates = [r for r in records if r["not_after"] is None]
    active = max(
        candidates, key=lambda r: (float(r["created_at"] or 0), str(r["kid"])), default=None
    )
    keys = []
    for record in records:
        not_after = record["not_after"]
        keys.append(
            {
                "kid": record["kid"],
                "algorithm": record["algorithm"],
                "created_at": _iso(float(record["created_at"] or 0)),
                "not_after": _iso(None if not_after is None else float(not_after)),
                "active": record is active,
                "published": not_after is None or now < float(not_after),
            }
        )
    return {"active": None if active is None else active["kid"], "keys": keys}


def _apply_json(result: ApplyResult, prune: bool) -> dict[str, object]:
    return {
        "dry_run": result.dry_run,
        "prune": prune,
        "changes": [change.to_json() for change in result.changes],
        "service_tokens": [
            {**_token_json(token), "client_secret": secret}
            for token, secret in result.created_tokens
        ],
    }


class AccessEndpoints:
    """Handlers for the Access paths; :meth:`routes` plugs them into ``AdminApi``."""

    def __init__(
        self,
        store: Store,
        notify: Callable[[ChangeEvent], Awaitable[None]],
        *,
        clock: Callable[[], float],
        key_settings: KeySettings,
    ) -> None:
        self._store = store
        self._notify = notify
        self._clock = clock
        self._key_settings = key_settings

    def routes(self) -> list[tuple[re.Pattern[str], dict[str, Handler]]]:
        name = r"(?P<name>[^/]+)"
        return [
            (re.compile(r"/v1/apps"), {"GET": self._list_apps, "POST": self._create_app}),
            (
                re.compile(rf"/v1/apps/{name}"),
                {"GET": self._get_app, "PUT": self._replace_app, "DELETE": self._delete_app},
            ),
            (
                re.compile(rf"/v1/apps/{name}/policies"),
                {"GET": self._get_policies, "PUT": self._set_policies},
            ),
            (re.compile(r"/v1/idps"), {"GET": self._list_idps, "POST": self._create_idp}),
            (
                re.compile(rf"/v1/idps/{name}"),
                {"GET": self._get_idp, "PUT": self._replace_idp, "DELETE": self._delete_idp},
            ),
            (
                re.compile(r"/v1/service-tokens"),
                {"GET": self._list_tokens, "POST": self._create_token},
            ),
            (re.compile(rf"/v1/service-tokens/{name}"), {"DELETE": self._delete_token}),
            (re.compile(r"/v1/sessions/revoke"), {"POST": self._revoke_sessions}),
            (re.compile(r"/v1/keys"), {"GET": self._list_keys}),
            (re.compile(r"/v1/keys/rotate"), {"POST": self._rotate_keys}),
            (re.compile(r"/v1/audit"), {"GET": self._audit}),
            (re.compile(r"/v1/apply"), {"POST": self._apply}),
        ]

    @staticmethod
    async def _run(function: Callable[..., _T], *args: object, **kwargs: object) -> _T:
        return await trio.to_thread.run_sync(functools.partial(function, *args, **kwargs))

    # -- applications ----------------------------------------------------------------------

    def _read_app(self, name: str) -> dict[str, object]:
        return app_json(self._store.get_app(name), self._store.get_policies(name))

    async def _list_apps(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        def read() -> list[dict[str, object]]:
            return [
                app_json(app, self._store.get_policies(app.name)) for app in self._store.list_apps()
            ]

        return json_response(200, {"apps": await trio.to_thread.run_sync(read)})

    @staticmethod
    def _app_input(data: dict[str, Any]) -> tuple[dict[str, Any], AppPolicySet | None]:
        raw_policies = data.pop("policies", None)
        policies = None if raw_policies is None else parse_policy_list(raw_policies, "policies")
        return data, policies

    async def _create_app(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        data, policies = self._app_input(_body_object(body))
        spec = parse_app_spec(data)

        def write() -> dict[str, object]:
            with self._store.batch():
                self._store.create_app(spec)
                if policies is not None:
                    self._store.set_policies(spec.name, policies)
                return self._read_app(spec.name)

        created = await trio.to_thread.run_sync(write)
        log.info("admin: created application %s (%s)", spec.name, spec.domain)
        await self._notify(ChangeEvent(ChangeKind.APP_CHANGED, name=spec.name))
        return json_response(201, created, [(b"location", f"/v1/apps/{spec.name}".encode())])

    async def _get_app(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        return json_response(200, await self._run(self._read_app, params["name"]))

    async def _replace_app(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        data, policies = self._app_input(_body_object(body))
        data.setdefault("name", params["name"])
        spec = parse_app_spec(data)

        def write() -> dict[str, object]:
            with self._store.batch():
                self._store.replace_app(params["name"], spec)
                if policies is not None:
                    self._store.set_policies(spec.name, policies)
                return self._read_app(spec.name)

        replaced = await trio.to_thread.run_sync(write)
        log.info("admin: replaced application %s", spec.name)
        await self._notify(ChangeEvent(ChangeKind.APP_CHANGED, name=spec.name))
        return json_response(200, replaced)

    async def _delete_app(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        app = await self._run(self._store.delete_app, params["name"])
        log.info("admin: deleted application %s", app.name)
        await self._notify(ChangeEvent(ChangeKind.APP_CHANGED, name=app.name, aud=app.aud))
        return AdminResponse(204)

    async def _get_policies(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        policies = await self._run(self._store.get_policies, params["name"])
        return json_response(200, {"policies": [p.to_config() for p in policies.policies]})

    async def _set_policies(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        data = _body_object(body, allowed={"policies"})
        if "policies" not in data:
            raise AdminError(400, "invalid_body", 'missing field "policies"')
        policies = parse_policy_list(data["policies"], "policies")
        stored = await self._run(self._store.set_policies, params["name"], policies)
        log.info("admin: set %d policies on application %s", len(stored.policies), params["name"])
        await self._notify(ChangeEvent(ChangeKind.APP_CHANGED, name=params["name"]))
        return json_response(200, {"policies": [p.to_config() for p in stored.policies]})

    # -- identity providers ----------------------------------------------------------------

    async def _list_idps(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        idps = await self._run(self._store.list_idps)
        return json_response(200, {"idps": [idp.to_input() for idp in idps]})

    async def _create_idp(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        idp = parse_idp(_body_object(body))
        created: IdpRecord = await self._run(self._store.create_idp, idp)
        log.info("admin: created identity provider %s (%s)", idp.name, idp.type)
        await self._notify(ChangeEvent(ChangeKind.IDP_CHANGED, name=idp.name))
        location = [(b"location", f"/v1/idps/{idp.name}".encode())]
        return json_response(201, created.to_input(), location)

    async def _get_idp(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        idp = await self._run(self._store.get_idp, params["name"])
        return json_response(200, idp.to_input())

    async def _replace_idp(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        data = _body_object(body)
        data.setdefault("name", params["name"])
        if data["name"] != params["name"]:
            raise AdminError(
                400,
                "invalid_body",
                f"name: the body names {data['name']!r}, the path {params['name']!r}",
                hint="identity providers cannot be renamed",
            )
        replaced = await self._run(self._store.replace_idp, parse_idp(data))
        log.info("admin: replaced identity provider %s", replaced.name)
        await self._notify(ChangeEvent(ChangeKind.IDP_CHANGED, name=replaced.name))
        return json_response(200, replaced.to_input())

    async def _delete_idp(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        await self._run(self._store.delete_idp, params["name"])
        log.info("admin: deleted identity provider %s", params["name"])
        await self._notify(ChangeEvent(ChangeKind.IDP_CHANGED, name=params["name"]))
        return AdminResponse(204)

    # -- service tokens --------------------------------------------------------------------

    async def _list_tokens(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        tokens = await self._run(self._store.list_service_tokens)
        return json_response(200, {"service_tokens": [_token_json(t) for t in tokens]})

    async def _create_token(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        data = _body_object(body, allowed={"name", "duration"})
        if "name" not in data:
            raise AdminError(400, "invalid_body", 'missing field "name"')
        token, secret = await self._run(
            self._store.create_service_token,
            data["name"],
            duration=data.get("duration", DEFAULT_SERVICE_TOKEN_DURATION),
        )
        log.info("admin: created service token %s (%s)", token.name, token.client_id)
        await self._notify(ChangeEvent(ChangeKind.SERVICE_TOKEN_CHANGED, name=token.name))
        location = [(b"location", f"/v1/service-tokens/{token.name}".encode())]
        return json_response(201, {**_token_json(token), "client_secret": secret}, location)

    async def _delete_token(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        token = await self._run(self._store.delete_service_token, params["name"])
        log.info("admin: deleted service token %s", token.name)
        await self._notify(ChangeEvent(ChangeKind.SERVICE_TOKEN_CHANGED, name=token.name))
        return AdminResponse(204)

    # -- sessions and keys -----------------------------------------------------------------

    async def _revoke_sessions(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        data = _body_object(body, allowed={"email", "app"})
        if len(data) != 1:
            raise AdminError(400, "invalid_body", 'give exactly one of "email" or "app"')
        if "email" in data:
            if not isinstance(data["email"], str):
                raise AdminError(400, "invalid_body", "email: expected a string")
            revocation, ended = await self._run(self._store.revoke_email_sessions, data["email"])
            log.info("admin: revoked the sessions of one user (%d stored)", ended)
            event = ChangeEvent(ChangeKind.SESSIONS_REVOKED, email=revocation.subject)
            answer: dict[str, object] = {"email": revocation.subject, "sessions_ended": ended}
        else:
            if not isinstance(data["app"], str):
                raise AdminError(400, "invalid_body", "app: expected a string")
            revocation = await self._run(self._store.revoke_app_sessions, data["app"])
            log.info("admin: revoked every session of application %s", data["app"])
            event = ChangeEvent(
                ChangeKind.SESSIONS_REVOKED, name=data["app"], aud=revocation.subject
            )
            answer = {"app": data["app"], "aud": revocation.subject}
        await self._notify(event)
        return json_response(200, {**answer, "revoked_at": _iso(revocation.epoch)})

    async def _list_keys(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        records = await self._run(self._store.signing_key_records)
        return json_response(200, _keys_json(records, self._clock()))

    async def _rotate_keys(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        data = _body_object(body, allowed={"algorithm"}) if body.strip() else {}
        algorithm = data.get("algorithm")
        if algorithm not in (None, "RS256", "ES256"):
            raise AdminError(400, "invalid_body", 'algorithm: expected "RS256" or "ES256"')
        now = self._clock()
        await self._run(
            rotate_signing_keys,
            self._store,
            now=now,
            settings=self._key_settings,
            algorithm=algorithm,
        )
        records = await self._run(self._store.signing_key_records)
        await self._notify(ChangeEvent(ChangeKind.KEYS_ROTATED))
        return json_response(200, _keys_json(records, now))

    # -- audit and apply -------------------------------------------------------------------

    async def _audit(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        unknown = sorted(set(query) - {"limit", "app", "email"})
        if unknown:
            raise AdminError(400, "invalid_query", f"unknown parameter {unknown[0]!r}")
        limit_text = _single(query, "limit")
        limit = DEFAULT_AUDIT_LIMIT
        if limit_text is not None:
            if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_AUDIT_LIMIT:
                raise AdminError(
                    400, "invalid_query", f"limit must be a number from 1 to {MAX_AUDIT_LIMIT}"
                )
            limit = int(limit_text)
        events = await self._run(
            self._store.audit_events,
            limit,
            app=_single(query, "app"),
            email=_single(query, "email"),
        )
        return json_response(
            200,
            {
                "events": [
                    {
                        "time": _iso(event.time),
                        "kind": event.kind,
                        "app": event.app,
                        "subject": event.subject,
                        "detail": dict(event.detail),
                    }
                    for event in events
                ]
            },
        )

    async def _apply(self, params: _Params, query: _Query, body: bytes) -> AdminResponse:
        unknown = sorted(set(query) - {"dry_run", "prune"})
        if unknown:
            raise AdminError(400, "invalid_query", f"unknown parameter {unknown[0]!r}")
        dry_run, prune = _flag(query, "dry_run"), _flag(query, "prune")
        document = _body_object(body)
        result = await self._run(
            apply_document, self._store, document, prune=prune, dry_run=dry_run
        )
        if not dry_run:
            targets = result.targets()
            if targets & {"idp"}:
                await self._notify(ChangeEvent(ChangeKind.IDP_CHANGED))
            if targets & {"app", "policies"}:
                await self._notify(ChangeEvent(ChangeKind.APP_CHANGED))
            if targets & {"service_token"}:
                await self._notify(ChangeEvent(ChangeKind.SERVICE_TOKEN_CHANGED))
        return json_response(200, _apply_json(result, prune))
