"""The connector's response-head timeout (kept by tunnel.deadlines), against origins that
answer in time, halfway or not at all."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio
import trio.testing
from connector_fake_stream import http_head, run_exchange
from connector_test_origins import H11Origin, serve_tcp

from connector.ingress import IngressRule, IngressTable, OriginRequest, parse_service
from connector.origin import OriginDispatcher
from tunnel.protocol import ErrorCode


def table_for(port: int, timeout: float) -> IngressTable:
    options = replace(OriginRequest(), response_header_timeout=timeout)
    return IngressTable([IngressRule(None, None, parse_service(f"http://127.0.0.1:{port}"),
                                     options)])


async def half_a_head(stream: trio.abc.Stream) -> None:
    """Reads a request, sends part of a response head, then says nothing more."""
    async with stream:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Le")
        await trio.sleep_forever()


async def test_a_head_that_stops_halfway_times_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    port = await serve_tcp(nursery, half_a_head)
    async with OriginDispatcher(table_for(port, 5.0)) as dispatcher:
        start = trio.current_time()
        view = await run_exchange(dispatcher.serve_stream, http_head("/"))
        assert trio.current_time() - start == pytest.approx(5.0, abs=0.01)
        assert dispatcher.deadlines.pending == 0
    assert view.reset_code == ErrorCode.ORIGIN_TIMEOUT


async def test_a_timed_out_connection_is_not_reused_and_answers_leave_no_wait(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    origin = H11Origin()
    port = await serve_tcp(nursery, origin.serve_connection)
    async with OriginDispatcher(table_for(port, 5.0)) as dispatcher:
        answered = await run_exchange(dispatcher.serve_stream, http_head("/hello"))
        assert answered.status == 200
        assert dispatcher.deadlines.pending == 0
        assert len(dispatcher.pool) == 1
        silent = await run_exchange(dispatcher.serve_stream, http_head("/silent"))
        assert silent.reset_code == ErrorCode.ORIGIN_TIMEOUT
        assert len(dispatcher.pool) == 0  # the connection that timed out is gone
        again = await run_exchange(dispatcher.serve_stream, http_head("/hello"))
        assert again.status == 200
    assert origin.accepted == 2
