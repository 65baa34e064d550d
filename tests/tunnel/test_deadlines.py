"""Deadlines kept by one task (tunnel.deadlines): on time, never for a finished wait, several
timeout values, no timer while idle, one keeper per run, a failing target."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tunnel.deadlines import MAX_TICK, DeadlineKeeper, deadline_keeper


class Waiter:
    def __init__(self) -> None:
        self.timed_out_at: list[float] = []

    def deadline_passed(self) -> None:
        self.timed_out_at.append(trio.current_time())


@pytest.fixture
async def timeouts(nursery: trio.Nursery) -> DeadlineKeeper:
    keeper = DeadlineKeeper()
    nursery.start_soon(keeper.run)
    return keeper


async def test_a_late_head_times_out_on_its_deadline(
    timeouts: DeadlineKeeper, autojump_clock: trio.testing.MockClock
) -> None:
    waiter = Waiter()
    start = trio.current_time()
    timeouts.start(waiter, 7.0)
    await trio.sleep(30)
    assert waiter.timed_out_at == [pytest.approx(start + 7.0)]
    assert timeouts.pending == 0


async def test_a_finished_wait_never_times_out(
    timeouts: DeadlineKeeper, autojump_clock: trio.testing.MockClock
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
    timeouts: DeadlineKeeper, autojump_clock: trio.testing.MockClock
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
    timeouts: DeadlineKeeper, autojump_clock: trio.testing.MockClock
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
    timeouts: DeadlineKeeper, autojump_clock: trio.testing.MockClock
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
async def test_no_timeout_means_no_wait(timeouts: DeadlineKeeper, seconds: float) -> None:
    assert timeouts.start(Waiter(), seconds) is None
    timeouts.finish(None)
    assert timeouts.pending == 0


class Failing:
    def deadline_passed(self) -> None:
        raise RuntimeError("broken target")


async def test_a_failing_target_is_logged_and_the_others_still_fire(
    timeouts: DeadlineKeeper, autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    later = Waiter()
    timeouts.start(Failing(), 1.0)
    timeouts.start(later, 2.0)
    await trio.sleep(5)
    assert len(later.timed_out_at) == 1
    assert "failed to act on it" in caplog.text


async def test_the_run_has_one_keeper_whose_task_starts_by_itself(
    autojump_clock: trio.testing.MockClock,
) -> None:
    keeper = deadline_keeper()
    assert deadline_keeper() is keeper
    waiter = Waiter()
    start = trio.current_time()
    keeper.start(waiter, 3.0)
    await trio.sleep(10)
    assert waiter.timed_out_at == [pytest.approx(start + 3.0)]
