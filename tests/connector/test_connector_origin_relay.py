"""WebSocket and raw TCP relays, and TLS origins, through the dispatcher."""

from __future__ import annotations

import ssl
from dataclasses import replace
from functools import partial
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
import trustme
from connector_fake_stream import FakeTunnelStream, http_head, run_exchange
from connector_test_origins import (
    H11Origin,
    never_speaks,
    serve_tcp,
    shout_after_eof,
    websocket_echo,
)
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, CloseConnection, Message, Request, TextMessage

from connector.ingress import IngressRule, IngressTable, OriginRequest, parse_service
from connector.origin import OriginDispatcher
from tunnel.protocol import ErrorCode


def table_for(service: str, **options: object) -> IngressTable:
    return IngressTable([IngressRule(None, None, parse_service(service),
                                     replace(OriginRequest(), **options))])


def edge_head_for_websocket(client: WSConnection) -> dict[str, object]:
    """What the edge would send for the visitor's handshake: its headers, as a request head."""
    parser = h11.Connection(h11.SERVER)
    parser.receive_data(client.send(Request(host="ws.example.com", target="/chat")))
    request = parser.next_event()
    assert isinstance(request, h11.Request)
    headers = [(n.decode(), v.decode()) for n, v in request.headers.raw_items()
               if n.lower() != b"host"]
    return http_head("/chat", host="ws.example.com", headers=headers)


async def test_websocket_upgrade_relays_messages_both_ways(nursery: trio.Nursery) -> None:
    port = await serve_tcp(nursery, websocket_echo)
    client = WSConnection(ConnectionType.CLIENT)
    stream = FakeTunnelStream(edge_head_for_websocket(client))
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{port}")) as dispatcher, \
            trio.open_nursery() as exchange:
        exchange.start_soon(dispatcher.serve_stream, stream)
        await stream.head_sent.wait()
        assert stream.response_head is not None
        assert stream.response_head["status"] == 101
        # The edge writes the 101 to the visitor; the visitor's WebSocket accepts it.
        response = b"HTTP/1.1 101 Switching Protocols\r\n" + b"".join(
            f"{n}: {v}\r\n".encode() for n, v in stream.response_head["headers"]) + b"\r\n"
        client.receive_data(response)
        assert isinstance(next(client.events()), AcceptConnection)

        async def roundtrip(event: Message | CloseConnection) -> list[object]:
            await stream.edge.send_all(client.send(event))
            while True:
                client.receive_data(await stream.edge.receive_some(65536))
                events = list(client.events())
                if events:
                    return events

        for text in ("hello", "x" * 200_000):
            events = await roundtrip(TextMessage(data=text))
            received = "".join(e.data for e in events if isinstance(e, TextMessage))
            while len(received) < len(text):
                client.receive_data(await stream.edge.receive_some(65536))
                received += "".join(e.data for e in client.events()
                                    if isinstance(e, TextMessage))
            assert received == text
        events = await roundtrip(CloseConnection(code=1000))
        assert isinstance(events[0], CloseConnection)
        await stream.edge.send_eof()  # type: ignore[attr-defined]
        assert await stream.edge.receive_some(10) == b""  # origin closed: relay ended
    assert stream.reset_code is None
    assert stream.closed
    assert len(dispatcher.pool) == 0


async def test_websocket_refused_by_origin_passes_the_answer_through(
        nursery: trio.Nursery) -> None:
    server = H11Origin()  # no WebSocket support: answers an ordinary 200
    port = await serve_tcp(nursery, server.serve_connection)
    client = WSConnection(ConnectionType.CLIENT)
    async with OriginDispatcher(table_for(f"http://127.0.0.1:{port}")) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream, edge_head_for_websocket(client))
    assert view.status == 200
    headers = server.requests[0][2]
    assert headers["upgrade"] == "websocket"
    assert headers["connection"] == "Upgrade"


async def test_tcp_relay_passes_half_close(nursery: trio.Nursery) -> None:
    port = await serve_tcp(nursery, shout_after_eof)
    async with OriginDispatcher(table_for(f"tcp://127.0.0.1:{port}")) as dispatcher:
        view = await run_exchange(
            dispatcher.serve_stream,
            {"kind": "tcp", "host": "ssh.example.com", "client": "203.0.113.9"},
            [b"hello ", b"world"])
    assert view.head == {"status": 200}
    assert view.body == b"got:HELLO WORLD"
    assert view.reset_code is None


async def test_tcp_origin_refused_resets_unreachable() -> None:
    with trio.socket.socket() as probe:
        await probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with OriginDispatcher(table_for(f"ssh://127.0.0.1:{port}")) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream,
                                  {"kind": "tcp", "host": "ssh.example.com", "client": "x"})
    assert view.reset_code == ErrorCode.ORIGIN_UNREACHABLE


@pytest.fixture(scope="module")
def certificate_authority() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
async def tls_origin(nursery: trio.Nursery, certificate_authority: trustme.CA
                     ) -> tuple[H11Origin, int]:
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    certificate_authority.issue_cert("origin.internal").configure_cert(server_context)
    server = H11Origin()
    listeners = await nursery.start(
        partial(trio.serve_ssl_over_tcp, host="127.0.0.1"), server.serve_connection, 0,
        server_context)
    return server, listeners[0].transport_listener.socket.getsockname()[1]


async def test_https_origin_verified_with_ca_pool(
        tls_origin: tuple[H11Origin, int], certificate_authority: trustme.CA,
        tmp_path: Path) -> None:
    server, port = tls_origin
    ca_file = tmp_path / "ca.pem"
    certificate_authority.cert_pem.write_to_path(str(ca_file))
    table = table_for(f"https://127.0.0.1:{port}", ca_pool=ca_file,
                      origin_server_name="origin.internal")
    async with OriginDispatcher(table) as dispatcher:
        for _ in range(2):
            view = await run_exchange(dispatcher.serve_stream, http_head("/hello"))
            assert view.status == 200
    assert server.accepted == 1


async def test_https_origin_with_unknown_ca_is_unreachable(
        tls_origin: tuple[H11Origin, int], caplog: pytest.LogCaptureFixture) -> None:
    _server, port = tls_origin
    table = table_for(f"https://127.0.0.1:{port}", origin_server_name="origin.internal")
    async with OriginDispatcher(table) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream, http_head("/hello"))
    assert view.reset_code == ErrorCode.ORIGIN_UNREACHABLE
    assert any("TLS with origin" in r.getMessage() for r in caplog.records)


async def test_https_origin_with_no_tls_verify(tls_origin: tuple[H11Origin, int]) -> None:
    _server, port = tls_origin
    table = table_for(f"https://127.0.0.1:{port}", no_tls_verify=True)
    async with OriginDispatcher(table) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream, http_head("/hello"))
    assert view.status == 200


async def test_tls_handshake_that_never_completes_hits_connect_timeout(
        nursery: trio.Nursery, autojump_clock: trio.testing.MockClock) -> None:
    port = await serve_tcp(nursery, never_speaks)
    table = table_for(f"https://127.0.0.1:{port}", connect_timeout=10.0)
    async with OriginDispatcher(table) as dispatcher:
        start = trio.current_time()
        view = await run_exchange(dispatcher.serve_stream, http_head("/"))
        assert trio.current_time() - start == pytest.approx(10.0, abs=0.1)
    assert view.reset_code == ErrorCode.ORIGIN_TIMEOUT
