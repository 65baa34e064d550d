"""Response-head timeouts kept by one task (connector.head_timeouts): on time, never for a
finished wait, several timeout values, no timer while idle; and through the dispatcher against
origins that answer late, halfway or not at all."""

from __future__ import annotations

from dataclasses import replace

import pytest
import trio
import trio.testing
from connector_fake_stream import http_head, run_exchange
from connector_test_origins import H11Origin, serve_tcp

from connector.head_timeouts import MAX_TICK, HeadTimeouts
from connector.ingress import IngressRule, IngressTable, OriginRequest, parse_service
from connector.origin import OriginDispatcher
from tunnel.protocol import ErrorCode


class Waiter:
    def __init__(self) -> None:
        self.timed_out_at: list[float] = []

    def time_out_head(self) -> None:
        self.timed_out_at.append(trio.current_time())


@pytest.fixture
async def timeouts(nursery: trio.Nursery) -> HeadTimeouts:
    keeper = HeadTimeouts()
    nursery.start_soon(keeper.run)
    return keeper


async def test_a_late_head_times_out_on_its_deadline(
    timeouts: HeadTimeouts, autojump_clock: trio.testing.MockClock
) -> None:
    waiter = Waiter()
    start = trio.current_time()
    timeouts.start(waiter, 7.0)
    await trio.sleep(30)
    assert waiter.timed_out_at == [pytest.approx(start + 7.0)]
    assert timeouts.pending == 0


async def test_a_finished_wait_never_times_out(
    timeouts: HeadTimeouts, autojump_clock: trio.testing.MockClock
) -> None:
    waiter = Waiter()
    wait = timeouts.start(waiter, 7.0)
    await trio.sleep(6.9)
    timeouts.finish(wait)
    timeouts.finish(wait)  # twice is harmless
    assert timeouts.pending == 0
    await trio.sleep(30)
    assert waiter.timed_out_at == []


async def test_a_shorter_timeout_started_later_still_fires_on_time(
    timeouts: HeadTimeouts, autojump_clock: trio.testing.MockClock
) -> None:
    slow, fast = Waiter(), Waiter()
    start = trio.current_time()
    timeouts.start(slow, 100.0)
    await trio.sleep(0.5)  # the task now sleeps toward the long deadline
    timeouts.start(fast, 2.0)
    await trio.sleep(200)
    assert fast.timed_out_at == [pytest.approx(start + 2.5)]
    assert slow.timed_out_at == [pytest.approx(start + 100.0)]


async def test_waits_expire_in_order_and_only_when_due(
    timeouts: HeadTimeouts, autojump_clock: trio.testing.MockClock
) -> None:
    waiters = [Waiter() for _ in range(5)]
    start = trio.current_time()
    waits = []
    for waiter in waiters:
        waits.append(timeouts.start(waiter, 10.0))
        await trio.sleep(1)
    timeouts.finish(waits[2])
    await trio.sleep(60)
    assert [w.timed_out_at for w in waiters] == [
        [pytest.approx(start + 10.0 + n)] if n != 2 else [] for n in range(5)
    ]


async def test_no_timer_is_set_while_nothing_is_pending(
    timeouts: HeadTimeouts, autojump_clock: trio.testing.MockClock
) -> None:
    await trio.testing.wait_all_tasks_blocked()
    assert timeouts.next_wake is None
    wait = timeouts.start(Waiter(), 40.0)
    await trio.testing.wait_all_tasks_blocked()
    assert timeouts.next_wake == pytest.approx(trio.current_time() + MAX_TICK)
    timeouts.finish(wait)
    await trio.sleep(MAX_TICK * 2)
    assert timeouts.next_wake is None


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("inf")])
async def test_no_timeout_means_no_wait(timeouts: HeadTimeouts, seconds: float) -> None:
    assert timeouts.start(Waiter(), seconds) is None
    timeouts.finish(None)
    assert timeouts.pending == 0


# -- through the dispatcher -------------------------------------------------------------------


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
        assert dispatcher.head_timeouts.pending == 0
    assert view.reset_code == ErrorCode.ORIGIN_TIMEOUT


async def test_a_timed_out_connection_is_not_reused_and_answers_leave_no_wait(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    origin = H11Origin()
    port = await serve_tcp(nursery, origin.serve_connection)
    async with OriginDispatcher(table_for(port, 5.0)) as dispatcher:
        answered = await run_exchange(dispatcher.serve_stream, http_head("/hello"))
        assert answered.status == 200
        assert dispatcher.head_timeouts.pending == 0
        assert len(dispatcher.pool) == 1
        silent = await run_exchange(dispatcher.serve_stream, http_head("/silent"))
        assert silent.reset_code == ErrorCode.ORIGIN_TIMEOUT
        assert len(dispatcher.pool) == 0  # the connection that timed out is gone
        again = await run_exchange(dispatcher.serve_stream, http_head("/hello"))
        assert again.status == 200
    assert origin.accepted == 2
