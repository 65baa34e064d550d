"""Many streams share one tunnel: they all arrive intact, and one stalled stream holds up
none of the others (per-stream flow control, not head-of-line blocking)."""

from __future__ import annotations

import pytest
import trio

from .conftest import ConnectorFactory, RunningEdge, mib
from .origin import Origin, pattern_sha256
from .visitor import HttpConnection, fetch, open_connection

pytestmark = pytest.mark.e2e

HANG_GUARD = 60.0


async def test_200_concurrent_requests_on_one_tunnel(
    edge: RunningEdge, origin: tuple[Origin, str], connector_factory: ConnectorFactory
) -> None:
    credentials = edge.create_tunnel("busy", "busy.example.test")
    await connector_factory(edge, credentials, origin[1])
    answers: dict[int, tuple[int, bytes]] = {}

    async def one(index: int) -> None:
        response = await fetch(edge.public, "busy.example.test", f"/item/{index}")
        answers[index] = (response.status, response.body)

    with trio.fail_after(HANG_GUARD):
        async with trio.open_nursery() as nursery:
            for index in range(200):
                nursery.start_soon(one, index)
    assert answers == {index: (200, f"item {index}".encode()) for index in range(200)}
    assert origin[0].requests == 200


async def test_a_stalled_download_does_not_hold_up_other_streams(
    edge: RunningEdge, origin: tuple[Origin, str], connector_factory: ConnectorFactory
) -> None:
    # One tunnel connection, so the stalled stream and the small ones share the same link.
    credentials = edge.create_tunnel("shared", "shared.example.test")
    await connector_factory(edge, credentials, origin[1], ha_connections=1)
    size = mib(32)  # far more than the stream window plus every socket buffer on the way
    with trio.fail_after(HANG_GUARD):
        async with await open_connection(edge.public) as slow_stream:
            slow = HttpConnection(slow_stream)
            await slow.send_request("shared.example.test", f"/download/{size}")
            head = await slow.receive_response()
            assert head.status == 200
            # The visitor now reads nothing: the edge's socket buffer fills, the stream's
            # credit runs out, and the connector must park this stream alone.
            statuses: list[tuple[int, bytes]] = []

            async def small(index: int) -> None:
                response = await fetch(edge.public, "shared.example.test", f"/item/{index}")
                statuses.append((response.status, response.body))

            async with trio.open_nursery() as nursery:
                for index in range(50):
                    nursery.start_soon(small, index)
            assert sorted(statuses) == sorted((200, f"item {i}".encode()) for i in range(50))
            # Backpressure reached the origin: the download really was held up meanwhile.
            assert origin[0].downloads_finished == 0
            # The stalled stream resumes intact once its reader wakes up.
            digest, received = await slow.hash_body()
    assert received == size
    assert digest == pattern_sha256(size)
