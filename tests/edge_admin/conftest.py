"""Shared fixtures: a store on a temporary file with a controllable clock, and an admin API
wired to fake edge callbacks that record what the running edge would be told."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import trio
import trio.testing

from edge.admin import AdminApi, AdminResponse, ChangeEvent, ConnectionInfo
from edge.store.sqlite import SqliteStore

EDGE_URL = "wss://edge.test:7844"


class SteppingClock:
    """Each call returns a time one second after the previous one."""

    def __init__(self, start: datetime = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    with SqliteStore(tmp_path / "state" / "tunnelgate.db", clock=SteppingClock()) as opened:
        yield opened


@dataclass
class FakeEdge:
    """Stands in for the running edge: live connections it reports, changes it is told."""

    live: dict[str, list[ConnectionInfo]] = field(default_factory=dict)
    events: list[ChangeEvent] = field(default_factory=list)

    def on_change(self, event: ChangeEvent) -> None:
        self.events.append(event)

    def connect(self, tunnel_id: str, index: int = 0) -> ConnectionInfo:
        info = ConnectionInfo(
            connection_id=f"conn-{tunnel_id[:8]}-{index}",
            connector_id="connector-1",
            conn_index=index,
            edge_id="edge-1",
            since="2030-01-02T03:04:05Z",
            client="192.0.2.7",
        )
        self.live.setdefault(tunnel_id, []).append(info)
        return info


@pytest.fixture
def fake_edge() -> FakeEdge:
    return FakeEdge()


@pytest.fixture
def api(store: SqliteStore, fake_edge: FakeEdge) -> AdminApi:
    return AdminApi(
        store,
        live_connections=lambda: fake_edge.live,
        edge_url=lambda: EDGE_URL,
        on_change=fake_edge.on_change,
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
        body: bytes = b"",
        *,
        token: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> AdminResponse:
        sent = list(headers or [])
        bearer = self.token if token is None else token
        if bearer:
            sent.append((b"authorization", f"Bearer {bearer}".encode()))
        return await self.api.handle(method, target, sent, body)


@pytest.fixture
def client(api: AdminApi, admin_token: str) -> Client:
    return Client(api, admin_token)


class MemoryListener(trio.abc.Listener[trio.abc.Stream]):
    """A listener whose connections are in-memory stream pairs (for timing with MockClock)."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[trio.abc.Stream](10)

    async def connect(self) -> trio.abc.Stream:
        client_side, server_side = trio.testing.memory_stream_pair()
        await self._send.send(server_side)
        return client_side

    async def accept(self) -> trio.abc.Stream:
        return await self._receive.receive()

    async def aclose(self) -> None:
        self._send.close()
        self._receive.close()
        await trio.lowlevel.checkpoint()
