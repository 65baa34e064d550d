"""An open WebSocket at the edge: relayed without the request's objects, and still counted.

The relay runs after the public handler chain returned (``edge.http_messages.Handler``), so an
idle WebSocket holds its two streams and little else; it still counts as in flight for a drain,
and as an answered request only once it ends.
"""

from __future__ import annotations

import gc
import logging

import pytest
import trio
import trio.testing

from edge.http_messages import IncomingRequest, RequestBody, ResponseWriter

from .conftest import ConnectorFactory, RunningEdge
from .origin import Origin
from .visitor import WebSocketClient, open_connection

pytestmark = pytest.mark.e2e

HANG_GUARD = 20.0
EXCHANGE_TYPES = (IncomingRequest, RequestBody, ResponseWriter)


def _exchange_objects() -> list[str]:
    gc.collect()
    return [type(obj).__name__ for obj in gc.get_objects() if isinstance(obj, EXCHANGE_TYPES)]


def _answered_1xx(edge: RunningEdge) -> float:
    value = edge.runtime.metrics.registry.get_sample_value(
        "tunnelgate_edge_requests_total", {"status_class": "1xx"}
    )
    return value or 0.0


async def test_an_open_websocket_keeps_no_request_objects_alive(
    edge: RunningEdge, origin: tuple[Origin, str], connector_factory: ConnectorFactory
) -> None:
    credentials = edge.create_tunnel("chat", "chat.example.test")
    await connector_factory(edge, credentials, origin[1])
    with trio.fail_after(HANG_GUARD):
        async with await open_connection(edge.public) as stream:
            client = WebSocketClient(stream)
            assert await client.handshake("chat.example.test", "/ws") == 101
            await client.send("first")
            assert await client.receive() == "first"
            assert _exchange_objects() == []
            await client.send("still relayed")
            assert await client.receive() == "still relayed"
            assert await client.close() == 1000


async def test_a_drain_waits_for_an_open_websocket_which_counts_once_it_ends(
    edge: RunningEdge,
    origin: tuple[Origin, str],
    connector_factory: ConnectorFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="edge.server")
    credentials = edge.create_tunnel("chat", "chat.example.test")
    await connector_factory(edge, credentials, origin[1])
    drained = trio.Event()

    async def drain() -> None:
        await edge.runtime.drain(60.0)
        drained.set()

    with trio.fail_after(HANG_GUARD):
        async with await open_connection(edge.public) as stream, trio.open_nursery() as nursery:
            client = WebSocketClient(stream)
            assert await client.handshake("chat.example.test", "/ws") == 101
            await client.send("before the drain")
            assert await client.receive() == "before the drain"
            assert _answered_1xx(edge) == 0

            nursery.start_soon(drain)
            await trio.testing.wait_all_tasks_blocked()
            await client.send("during the drain")
            assert await client.receive() == "during the drain"
            assert not drained.is_set()
            assert _answered_1xx(edge) == 0

            assert await client.close() == 1000
            await drained.wait()
    draining = [r.getMessage() for r in caplog.records if "edge draining" in r.getMessage()]
    assert len(draining) == 1
    assert "in_flight=1 " in draining[0]
    assert not [r for r in caplog.records if "grace period over" in r.getMessage()]
    assert _answered_1xx(edge) == 1
