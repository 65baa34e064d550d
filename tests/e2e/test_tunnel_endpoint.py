"""The tunnel listener against connectors that are not what they claim: no credential or a
wrong one is refused with 401 before any WebSocket exists; a deleted tunnel stops the real
connector with exit code 3; an authenticated peer that sends garbage or a frame over the size
limit loses its own connection while another tunnel on the same edge keeps serving."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
import trio

from connector.config import write_credentials
from tunnel.auth import encode_run_token
from tunnel.errors import TransportClosed
from tunnel.protocol import (
    ErrorCode,
    FrameType,
    GoAwayReceived,
    ProtocolError,
    Refused,
    Registered,
    RegisterInfo,
    Role,
    TunnelConnection,
)
from tunnel.protocol.frames import HEADER
from tunnel.transport import WebSocketTransport
from tunnel.websocket_handshake import connect_websocket

from .conftest import ConnectorFactory, RunningEdge, connector_process
from .origin import Origin
from .processes import CONNECTOR_BIN, run_command
from .visitor import WebSocketClient, fetch, open_connection

pytestmark = pytest.mark.e2e

HANG_GUARD = 20.0
EXIT_PERMANENT = 3


async def upgrade_status(edge: RunningEdge, headers: list[tuple[str, str]]) -> int:
    async with await open_connection(edge.runtime.listeners["tunnel"]) as stream:
        with trio.fail_after(HANG_GUARD):
            return await WebSocketClient(stream).handshake("edge.example.test", "/", headers)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("Authorization", f"Bearer {token}")]


async def test_upgrade_without_a_valid_credential_is_refused_with_401(
    edge: RunningEdge
) -> None:
    credentials = edge.create_tunnel("guarded", "guarded.example.test")
    other = edge.create_tunnel("other", "other.example.test")
    good = encode_run_token(credentials.tunnel_id, credentials.secret, edge.tunnel_url)
    wrong_secret = encode_run_token(credentials.tunnel_id, other.secret, edge.tunnel_url)
    unknown_tunnel = encode_run_token("00000000-0000-0000-0000-000000000000",
                                      credentials.secret, edge.tunnel_url)
    not_a_token = base64.urlsafe_b64encode(b"not json at all").decode()

    assert await upgrade_status(edge, []) == 401
    assert await upgrade_status(edge, bearer(wrong_secret)) == 401
    assert await upgrade_status(edge, bearer(unknown_tunnel)) == 401
    assert await upgrade_status(edge, bearer(not_a_token)) == 401
    assert await upgrade_status(edge, [("Authorization", f"Basic {good}")]) == 401
    assert await upgrade_status(edge, bearer(good)) == 101
    assert len(edge.runtime.registry) == 0


async def test_connector_exits_3_for_a_tunnel_deleted_before_it_starts(
    tmp_path: Path, edge: RunningEdge, origin: tuple[Origin, str]
) -> None:
    credentials = edge.create_tunnel("gone", "gone.example.test")
    credentials_file = tmp_path / "gone.json"
    write_credentials(credentials_file, credentials)
    edge.runtime.state.store.delete_tunnel(credentials.tunnel_id)
    edge.runtime.state.reload()
    async with connector_process(credentials_file, origin[1], edge.runtime.listeners["tunnel"],
                                 tmp_path, wait_ready=False) as connector:
        assert await connector.wait_exit(HANG_GUARD) == EXIT_PERMANENT, connector.explain()
    assert connector.ready == {}


async def test_connector_exits_3_when_its_tunnel_is_deleted_while_connected(
    tmp_path: Path, edge: RunningEdge, origin: tuple[Origin, str]
) -> None:
    credentials = edge.create_tunnel("doomed", "doomed.example.test")
    credentials_file = tmp_path / "doomed.json"
    write_credentials(credentials_file, credentials)
    token_file = tmp_path / "admin.token"
    token_file.write_text(edge.runtime.state.store.add_admin_token())
    os.chmod(token_file, 0o600)
    async with connector_process(credentials_file, origin[1], edge.runtime.listeners["tunnel"],
                                 tmp_path) as connector:
        await edge.wait_connections(credentials.tunnel_id, 2)
        await run_command(
            [CONNECTOR_BIN, "--api", f"http://{edge.runtime.listeners['admin']}",
             "--api-token-file", str(token_file), "tunnel", "delete", "doomed", "--force"],
            name="tunnel-delete", log_dir=tmp_path)
        assert await connector.wait_exit(HANG_GUARD) == EXIT_PERMANENT, connector.explain()
    await edge.wait_connections(credentials.tunnel_id, 0)
    with trio.fail_after(HANG_GUARD):
        assert (await fetch(edge.public, "doomed.example.test")).status == 404


class FakeConnector:
    """Authenticates with a real credential, then sends what a test tells it to."""

    def __init__(self, transport: WebSocketTransport) -> None:
        self.transport = transport
        self.protocol = TunnelConnection(Role.CONNECTOR)

    async def register(self, tunnel_id: str) -> Registered:
        self.protocol.register(RegisterInfo(tunnel_id=tunnel_id, connector_id="fake",
                                            conn_index=0, version="fake/1"))
        await self.transport.send_message(self.protocol.data_to_send())
        while True:
            for event in self.protocol.receive_data(await self.transport.receive_message()):
                if isinstance(event, Registered):
                    return event

    async def read_until_closed(self) -> list[GoAwayReceived]:
        """Everything the edge says until it closes the connection; its GOAWAYs."""
        goaways: list[GoAwayReceived] = []
        while True:
            try:
                message = await self.transport.receive_message()
            except TransportClosed:
                return goaways
            try:
                events = self.protocol.receive_data(message)
            except ProtocolError as error:
                raise AssertionError(f"the edge sent an invalid frame: {error}") from None
            goaways += [event for event in events if isinstance(event, GoAwayReceived)]


async def fake_connector(edge: RunningEdge, tunnel_id: str, secret: str) -> FakeConnector:
    stream = await open_connection(edge.runtime.listeners["tunnel"])
    token = encode_run_token(tunnel_id, secret, edge.tunnel_url)
    transport = await connect_websocket(stream, host="edge.example.test",
                                        headers=bearer(token))
    return FakeConnector(transport)


HELLO_MAGIC_BROKEN = HEADER.pack(12, FrameType.HELLO, 0, 0) + b"XYZ" + bytes(9)
UNKNOWN_FRAME_TYPE = HEADER.pack(4, 0x7F, 0, 0) + b"junk"


@pytest.mark.parametrize(
    ("junk", "registered_first", "expected_code"),
    [
        # 01 02 03 04 announces a 16,909,060-byte payload: refused from the header alone.
        pytest.param(bytes(range(1, 256)) * 4, False, ErrorCode.FRAME_TOO_LARGE,
                     id="byte-ramp"),
        pytest.param(HEADER.pack(4, FrameType.DATA, 0, 1) + b"junk", False,
                     ErrorCode.PROTOCOL_ERROR, id="data-before-hello"),
        pytest.param(HELLO_MAGIC_BROKEN, False, ErrorCode.PROTOCOL_ERROR, id="bad-hello"),
        pytest.param(UNKNOWN_FRAME_TYPE, True, ErrorCode.PROTOCOL_ERROR, id="unknown-type"),
        pytest.param(HEADER.pack(1 << 30, FrameType.DATA, 0, 1), True,
                     ErrorCode.FRAME_TOO_LARGE, id="oversized-frame"),
        pytest.param(HEADER.pack(0xFFFFFFFF, FrameType.PING, 0, 0), True,
                     ErrorCode.FRAME_TOO_LARGE, id="max-u32-length"),
    ],
)
async def test_garbage_from_a_connector_closes_only_its_connection(
    edge: RunningEdge, origin: tuple[Origin, str], connector_factory: ConnectorFactory,
    junk: bytes, registered_first: bool, expected_code: ErrorCode,
) -> None:
    healthy = edge.create_tunnel("healthy", "healthy.example.test")
    await connector_factory(edge, healthy, origin[1], ha_connections=1)
    rogue = edge.create_tunnel("rogue", "rogue.example.test")

    with trio.fail_after(HANG_GUARD):
        fake = await fake_connector(edge, rogue.tunnel_id, rogue.secret)
        try:
            if registered_first:
                await fake.register(rogue.tunnel_id)
                assert edge.live_connections(rogue.tunnel_id) == 1
            else:
                # HELLO must be the first frame: the junk goes out in its place.
                fake.protocol.data_to_send()
            await fake.transport.send_message(junk)
            goaways = await fake.read_until_closed()
        finally:
            await fake.transport.aclose()
    assert [g.code for g in goaways] == [expected_code]
    await edge.wait_connections(rogue.tunnel_id, 0)

    with trio.fail_after(HANG_GUARD):
        response = await fetch(edge.public, "healthy.example.test", "/item/1")
    assert (response.status, response.body) == (200, b"item 1")
    assert edge.live_connections(healthy.tunnel_id) == 1


async def test_register_for_another_tunnel_is_refused_permanently(edge: RunningEdge) -> None:
    mine = edge.create_tunnel("mine", "mine.example.test")
    theirs = edge.create_tunnel("theirs", "theirs.example.test")
    with trio.fail_after(HANG_GUARD):
        fake = await fake_connector(edge, mine.tunnel_id, mine.secret)
        try:
            fake.protocol.register(RegisterInfo(tunnel_id=theirs.tunnel_id, connector_id="fake",
                                                conn_index=0, version="fake/1"))
            await fake.transport.send_message(fake.protocol.data_to_send())
            refusal: Refused | None = None
            while refusal is None:
                try:
                    message = await fake.transport.receive_message()
                except TransportClosed:
                    break
                for event in fake.protocol.receive_data(message):
                    if isinstance(event, Refused):
                        refusal = event
        finally:
            await fake.transport.aclose()
    assert refusal is not None
    assert (refusal.code, refusal.permanent) == ("bad_credentials", True)
    assert edge.live_connections(theirs.tunnel_id) == 0
