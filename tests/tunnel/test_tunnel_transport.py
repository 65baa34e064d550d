"""WebSocket transport: upgrade, refusal before upgrade, message limits, closing."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from tunnel_pairs import websocket_pair

from tunnel.auth import bearer_authorization, parse_bearer
from tunnel.errors import (
    HandshakeError,
    HandshakeRefused,
    HandshakeRejected,
    MessageTooLarge,
    TransportClosed,
)
from tunnel.websocket_handshake import (
    HandshakeRequest,
    Rejection,
    accept_websocket,
    connect_websocket,
)


async def test_messages_flow_both_ways() -> None:
    client, server = await websocket_pair()
    async with client.stream, server.stream:
        await client.send_message(b"from client")
        await server.send_message(b"from server")
        assert await server.receive_message() == b"from client"
        assert await client.receive_message() == b"from server"
        big = bytes(range(256)) * 4096
        await client.send_message(big)
        assert await server.receive_message() == big


async def test_bad_credential_gets_401_before_any_websocket() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    seen: list[HandshakeRequest] = []

    def authorize(request: HandshakeRequest) -> Rejection | None:
        seen.append(request)
        if parse_bearer(request.header("Authorization")) != "right-token":
            return Rejection(401, b'{"error": "bad_credentials"}', "application/json")
        return None

    async def serve() -> None:
        with pytest.raises(HandshakeRejected) as caught:
            await accept_websocket(server_stream, authorize)
        assert caught.value.status_code == 401
        await server_stream.aclose()

    async with client_stream, trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        with pytest.raises(HandshakeRefused) as refused:
            await connect_websocket(
                client_stream,
                host="edge.test",
                path="/tunnel",
                headers=[bearer_authorization("wrong-token")],
            )
    assert refused.value.status_code == 401
    assert refused.value.permanent
    assert refused.value.body == b'{"error": "bad_credentials"}'
    assert seen[0].path == "/tunnel"
    assert seen[0].host == "edge.test"
    assert seen[0].header("authorization") == "Bearer wrong-token"


async def test_rejection_is_plain_http_that_closes() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    request = (
        b"GET / HTTP/1.1\r\nHost: edge.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )

    async def serve() -> None:
        with pytest.raises(HandshakeRejected):
            await accept_websocket(server_stream, lambda request: Rejection(401, b"no"))
        await server_stream.aclose()

    async with client_stream, trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client_stream.send_all(request)
        response = b""
        while chunk := await client_stream.receive_some():
            response += chunk
    assert response.startswith(b"HTTP/1.1 401 ")
    assert b"upgrade" not in response.lower().split(b"\r\n\r\n")[0]
    assert response.endswith(b"\r\n\r\nno")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: edge.test\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: edge.test\r\nContent-Length: 0\r\n\r\n", 400),
        (b"\x16\x03\x01\x02\x00garbage\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: edge.test\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
    ],
    ids=["plain-get", "post", "tls-bytes", "oversized"],
)
async def test_malformed_upgrades_are_answered_and_refused(
    request_bytes: bytes, status: int
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with client_stream, server_stream:
        await client_stream.send_all(request_bytes)
        with pytest.raises(HandshakeError) as caught:
            await accept_websocket(server_stream, lambda request: None)
        assert caught.value.status_code == status
        response = await client_stream.receive_some()
        assert response.startswith(b"HTTP/1.1 %d " % status)


async def test_message_over_the_limit_closes_the_transport() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    result = {}

    async def serve() -> None:
        result["server"], _ = await accept_websocket(
            server_stream, lambda request: None, max_message_size=1000
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        client = await connect_websocket(client_stream, host="edge.test")
    server = result["server"]
    async with client_stream, server_stream:
        await client.send_message(b"x" * 1001)
        with pytest.raises(MessageTooLarge):
            await server.receive_message()
        # The server told the client why: close code 1009.
        with pytest.raises(TransportClosed) as caught:
            await client.receive_message()
        assert caught.value.code == 1009


async def test_close_is_seen_by_the_peer_as_transport_closed() -> None:
    client, server = await websocket_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.aclose)
        with pytest.raises(TransportClosed) as caught:
            await server.receive_message()
    assert caught.value.code == 1000
    await server.aclose()
    with pytest.raises(TransportClosed):
        await client.send_message(b"after close")


async def test_abrupt_end_of_stream_is_transport_closed() -> None:
    client, server = await websocket_pair()
    await client.stream.aclose()
    with pytest.raises(TransportClosed) as caught:
        await server.receive_message()
    assert caught.value.code == 1006
    await server.aclose()


async def test_server_that_is_not_a_websocket_fails_the_client() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with client_stream, server_stream:
        await server_stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n" * 2000)
        await server_stream.send_eof()
        with pytest.raises(HandshakeError):
            await connect_websocket(client_stream, host="edge.test")


@pytest.mark.parametrize("small_buffer", [False, True], ids=["roomy", "partial-writes"])
async def test_large_messages_of_many_odd_parts_are_written_vectored_and_arrive_intact(
    small_buffer: bool,
) -> None:
    import socket as stdlib_socket

    from tunnel.transport import VECTORED_MIN_BYTES

    a, b = trio.socket.socketpair()
    if small_buffer:  # the socket takes only part of each message: the rest follows via trio
        a.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, 8192)
        b.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_SNDBUF, 8192)
    client, server = await websocket_pair(
        client_stream=trio.SocketStream(a), server_stream=trio.SocketStream(b)
    )
    # Parts whose sizes are not multiples of 4 turn the masking key between parts.
    parts = [bytes([n % 251]) * (4096 * n + n) for n in range(1, 12)]
    whole = b"".join(parts)
    assert len(whole) >= VECTORED_MIN_BYTES
    async with client.stream, server.stream:
        for sender, receiver in ((client, server), (server, client)):  # masked, then not
            async with trio.open_nursery() as nursery:
                nursery.start_soon(sender.send_parts, parts)
                assert await receiver.receive_message() == whole
            await sender.send_message(b"and the framing still holds")
            assert await receiver.receive_message() == b"and the framing still holds"
