"""Revocation and logout take effect on the next request, and close open WebSocket streams."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    RejectConnection,
    Request,
    TextMessage,
)

from edge.admin.api import ChangeEvent, ChangeKind

from .conftest import PinDeployment
from .harness import PREFIX, Stack, location, new_visitor, raw_get

pytestmark = pytest.mark.e2e

GUARD = 20.0


class Socket:
    """A WebSocket client over a plain trio socket, with the headers a browser would send."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.ws = WSConnection(ConnectionType.CLIENT)

    async def handshake(self, host: str, headers: list[tuple[str, str]]) -> int:
        await self.stream.send_all(self.ws.send(Request(host=host, target="/ws",
                                                        extra_headers=headers)))
        while True:
            for event in self.ws.events():
                if isinstance(event, AcceptConnection):
                    return 101
                if isinstance(event, RejectConnection):
                    return int(event.status_code)
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(data or None)
            if not data:
                return 0

    async def echo(self, text: str) -> str:
        await self.stream.send_all(self.ws.send(TextMessage(data=text)))
        while True:
            for event in self.ws.events():
                if isinstance(event, TextMessage):
                    return str(event.data)
            data = await self.stream.receive_some(65536)
            if not data:
                raise trio.BrokenResourceError("closed")
            self.ws.receive_data(data)

    async def wait_closed(self) -> None:
        """Until the edge drops the connection (or closes the WebSocket)."""
        while True:
            try:
                data = await self.stream.receive_some(65536)
            except trio.BrokenResourceError:
                return
            if not data:
                return
            self.ws.receive_data(data)
            if any(isinstance(event, CloseConnection) for event in self.ws.events()):
                return


async def open_socket(
    stack: Stack, cookie: str, *, origin: str | None = "same"
) -> tuple[Socket, int]:
    address, port = stack.public.rsplit(":", 1)
    stream = await trio.open_tcp_stream(address, int(port))
    host = f"app1.localhost:{stack.port}"
    headers = [("Cookie", f"CF_Authorization={cookie}")]
    if origin is not None:
        headers.append(("Origin", f"http://{host}" if origin == "same" else origin))
    client = Socket(stream)
    return client, await client.handshake(host, headers)


async def sign_in(pin: PinDeployment, visitor: Any, email: str = "rita@corp.com") -> str:
    page = await pin.stack.otp_login(visitor, pin.inbox, pin.stack.url("app1.localhost"), email)
    assert page.status_code == 200
    return str(visitor.cookies.get("CF_Authorization", domain="app1.localhost"))


async def test_revoking_a_person_closes_their_stream_and_refuses_the_next_request(
    pin: PinDeployment,
) -> None:
    stack = pin.stack
    async with new_visitor() as visitor, new_visitor() as bystander:
        cookie = await sign_in(pin, visitor)
        other = await sign_in(pin, bystander, "sam@corp.com")
        client, status = await open_socket(stack, cookie)
        keeper, keeper_status = await open_socket(stack, other)
        async with client.stream, keeper.stream:
            assert (status, keeper_status) == (101, 101)
            assert await client.echo("hello") == "hello"
            store = stack.edge.state.store
            await trio.to_thread.run_sync(store.revoke_email_sessions, "rita@corp.com")
            await stack.access.on_change(
                ChangeEvent(ChangeKind.SESSIONS_REVOKED, email="rita@corp.com")
            )
            with trio.fail_after(GUARD):
                await client.wait_closed()
            assert await keeper.echo("still here") == "still here"
        assert (await visitor.get(stack.url("app1.localhost"))).status_code == 302
        assert (await bystander.get(stack.url("app1.localhost"))).status_code == 200


async def test_logout_closes_open_streams(pin: PinDeployment) -> None:
    stack = pin.stack
    async with new_visitor() as visitor:
        cookie = await sign_in(pin, visitor)
        client, status = await open_socket(stack, cookie)
        async with client.stream:
            assert status == 101
            logout = await visitor.get(stack.url("app1.localhost", f"{PREFIX}/logout"))
            await visitor.get(location(logout))
            with trio.fail_after(GUARD):
                await client.wait_closed()


async def test_revoking_an_app_requires_a_new_login_at_the_provider(pin: PinDeployment) -> None:
    stack = pin.stack
    async with new_visitor() as visitor:
        await sign_in(pin, visitor)
        store = stack.edge.state.store
        revocation = await trio.to_thread.run_sync(store.revoke_app_sessions, "one")
        await stack.access.on_change(
            ChangeEvent(ChangeKind.SESSIONS_REVOKED, name="one", aud=revocation.subject)
        )
        login = location(await visitor.get(stack.url("app1.localhost")))
        page = await visitor.get(login)
        # Not an immediate hand-off: the one-time PIN form again.
        assert page.status_code == 200
        assert f"{PREFIX}/otp/email" in page.text


@pytest.mark.parametrize(
    ("origin", "expected"),
    [("same", 101), (None, 403), ("http://evil.localhost", 403),
     ("http://app1.localhost", 403), ("null", 403)],
)
async def test_websocket_origin_must_be_the_app(
    pin: PinDeployment, origin: str | None, expected: int
) -> None:
    async with new_visitor() as visitor:
        cookie = await sign_in(pin, visitor)
    client, status = await open_socket(pin.stack, cookie, origin=origin)
    async with client.stream:
        assert status == expected


async def test_apps_without_websockets_refuse_the_upgrade(pin: PinDeployment) -> None:
    stack = pin.stack
    store = stack.edge.state.store
    record = stack.apps["one"]
    await trio.to_thread.run_sync(
        store.replace_app, "one", replace(record.spec, allow_websockets=False)
    )
    await stack.access.on_change(ChangeEvent(ChangeKind.APP_CHANGED, name="one"))
    async with new_visitor() as visitor:
        cookie = await sign_in(pin, visitor)
    client, status = await open_socket(stack, cookie)
    async with client.stream:
        assert status == 403
    status, _ = await raw_get(
        stack, "app1.localhost", "/", [("Cookie", f"CF_Authorization={cookie}")]
    )
    assert status == 200
