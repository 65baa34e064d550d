"""Open streams re-checked against their grant by one watcher (edge.access.stream_guards)."""

from __future__ import annotations

from functools import partial

import pytest
import trio
import trio.testing

from edge.access.stream_guards import StreamGuards


class Changes:
    """Stands in for AccessRuntime.changed()/notify_streams()."""

    def __init__(self) -> None:
        self.event = trio.Event()

    def __call__(self) -> trio.Event:
        return self.event

    def notify(self) -> None:
        self.event.set()
        self.event = trio.Event()


async def relay_until_cancelled(ended: list[float]) -> None:
    try:
        await trio.sleep_forever()
    finally:
        ended.append(trio.current_time())


async def test_a_stream_whose_grant_ends_is_closed_at_the_next_check(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    guards = StreamGuards(Changes(), interval=5.0)
    nursery.start_soon(guards.run)
    valid = True
    ended: list[float] = []
    start = trio.current_time()
    async with trio.open_nursery() as streams:
        streams.start_soon(guards.guard, lambda: valid, lambda: relay_until_cancelled(ended))
        await trio.sleep(12)
        assert ended == []
        assert guards.watched == 1
        valid = False
    assert ended == [pytest.approx(start + 15)]  # the check after the grant ended
    assert guards.watched == 0


async def test_a_change_is_checked_at_once(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    changes = Changes()
    guards = StreamGuards(changes, interval=60.0)
    nursery.start_soon(guards.run)
    valid = {"a": True, "b": True}
    ended: dict[str, list[float]] = {"a": [], "b": []}
    async with trio.open_nursery() as streams:
        for name in valid:
            streams.start_soon(guards.guard, lambda n=name: valid[n],
                               lambda n=name: relay_until_cancelled(ended[n]))
        await trio.sleep(1)
        valid["a"] = False
        start = trio.current_time()
        changes.notify()
        await trio.testing.wait_all_tasks_blocked()
        assert ended["a"] == [start]
        assert ended["b"] == []
        streams.cancel_scope.cancel()


async def test_a_relay_that_ends_on_its_own_leaves_the_table(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    guards = StreamGuards(Changes(), interval=5.0)
    nursery.start_soon(guards.run)
    await guards.guard(lambda: True, partial(trio.sleep, 3))
    assert guards.watched == 0


async def test_a_failing_check_is_logged_and_closes_its_stream_only(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guards = StreamGuards(Changes(), interval=5.0)

    def broken() -> bool:
        raise RuntimeError("store gone")

    ended: list[float] = []
    async with trio.open_nursery() as streams:
        streams.start_soon(guards.guard, broken, lambda: relay_until_cancelled(ended))
        streams.start_soon(guards.guard, lambda: True, trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        assert await guards.check() == 1
        await trio.testing.wait_all_tasks_blocked()
        assert len(ended) == 1
        assert guards.watched == 1
        assert "checking an open stream's access grant failed" in caplog.text
        streams.cancel_scope.cancel()


async def test_thousands_of_streams_are_checked_in_batches_that_yield(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    guards = StreamGuards(Changes(), interval=5.0, batch=100)
    checkpoint = trio.lowlevel.checkpoint
    yields = 0

    async def counted() -> None:
        nonlocal yields
        yields += 1
        await checkpoint()

    async with trio.open_nursery() as streams:
        for _ in range(1000):
            streams.start_soon(guards.guard, lambda: True, trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        monkeypatch.setattr(trio.lowlevel, "checkpoint", counted)
        assert await guards.check() == 0
        monkeypatch.undo()
        assert yields == 10  # once every hundred streams
        streams.cancel_scope.cancel()
