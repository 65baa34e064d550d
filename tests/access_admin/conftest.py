"""Fixtures for the Access state and its management surface: a store on a temporary file with a
stepping clock, the admin API wired to a fake edge that records change events, and sample
documents shaped like the ones administrators write."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from edge.admin import AdminApi, AdminResponse, ChangeEvent
from edge.store.sqlite import SqliteStore

START = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
WALL_START = START.timestamp()


class SteppingClock:
    """Each call returns a time one second after the previous one."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def clock() -> SteppingClock:
    return SteppingClock()


@pytest.fixture
def store(tmp_path: Path, clock: SteppingClock) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "state" / "tunnelgate.db", clock=clock) as opened:
        yield opened


@dataclass
class FakeEdge:
    """Stands in for the running edge: records the changes it is told about."""

    events: list[ChangeEvent] = field(default_factory=list)

    def on_change(self, event: ChangeEvent) -> None:
        self.events.append(event)


@pytest.fixture
def fake_edge() -> FakeEdge:
    return FakeEdge()


@dataclass
class WallClock:
    """Unix seconds the admin API dates key rotations with; tests move it by hand."""

    now: float = WALL_START

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wall_clock() -> WallClock:
    return WallClock()


@pytest.fixture
def api(store: SqliteStore, fake_edge: FakeEdge, wall_clock: WallClock) -> AdminApi:
    return AdminApi(
        store,
        live_connections=dict,
        edge_url=lambda: "wss://edge.test:7844",
        on_change=fake_edge.on_change,
        clock=wall_clock,
    )


@pytest.fixture
def admin_token(store: SqliteStore) -> str:
    return store.add_admin_token()


@dataclass
class Client:
    """Calls AdminApi.handle the way the HTTP listener would, with the admin token."""

    api: AdminApi
    token: str

    async def call(
        self,
        method: str,
        target: str,
        payload: Any = None,
        *,
        raw: bytes | None = None,
        token: str | None = None,
    ) -> AdminResponse:
        body = raw if raw is not None else b"" if payload is None else json.dumps(payload).encode()
        bearer = self.token if token is None else token
        headers = [(b"authorization", f"Bearer {bearer}".encode())] if bearer else []
        return await self.api.handle(method, target, headers, body)


@pytest.fixture
def client(api: AdminApi, admin_token: str) -> Client:
    return Client(api, admin_token)


def oidc_idp(name: str = "corp", **overrides: object) -> dict[str, object]:
    return {
        "name": name,
        "type": "oidc",
        "issuer": "https://idp.example.com",
        "client_id": "edge",
        "client_secret_file": "/etc/tunnelgate/corp.secret",
        "groups_claim": "groups",
        **overrides,
    }


def otp_idp(name: str = "pin", **overrides: object) -> dict[str, object]:
    return {"name": name, "type": "otp", "delivery": "log", **overrides}


def engineers_policy(**overrides: object) -> dict[str, object]:
    return {
        "name": "engineers",
        "action": "allow",
        "include": [{"email_domain": "example.com"}, {"group": "eng"}],
        "require": [{"idp": "corp"}],
        "exclude": [{"email": "mallory@example.com"}],
        **overrides,
    }


def grafana_app(**overrides: object) -> dict[str, object]:
    return {
        "name": "grafana",
        "domain": "grafana.example.com",
        "idps": ["corp"],
        "session_duration": "24h",
        **overrides,
    }
