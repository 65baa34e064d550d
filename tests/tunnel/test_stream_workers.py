"""The tasks behind incoming streams: reused once their stream is done, bounded when idle."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from tunnel.stream_workers import StreamWorkers


async def test_a_finished_task_serves_the_next_stream() -> None:
    served: list[tuple[str, trio.lowlevel.Task]] = []

    async def serve(stream: str) -> None:
        served.append((stream, trio.lowlevel.current_task()))
        await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        workers: StreamWorkers[str] = StreamWorkers(nursery, serve)
        workers.start("first")
        await trio.testing.wait_all_tasks_blocked()
        assert workers.idle == 1
        workers.start("second")
        await trio.testing.wait_all_tasks_blocked()
        assert [name for name, _ in served] == ["first", "second"]
        assert served[0][1] is served[1][1]
        nursery.cancel_scope.cancel()  # a waiting task ends with its session


async def test_streams_at_once_get_tasks_of_their_own_and_few_stay_waiting() -> None:
    release = trio.Event()
    tasks: set[trio.lowlevel.Task] = set()

    async def serve(stream: int) -> None:
        tasks.add(trio.lowlevel.current_task())
        await release.wait()

    async with trio.open_nursery() as nursery:
        workers: StreamWorkers[int] = StreamWorkers(nursery, serve, max_idle=3)
        for stream in range(10):
            workers.start(stream)
        await trio.testing.wait_all_tasks_blocked()
        assert len(tasks) == 10
        release.set()
        await trio.testing.wait_all_tasks_blocked()
        assert workers.idle == 3  # the other seven ended
        assert len(nursery.child_tasks) == 3
        nursery.cancel_scope.cancel()
    assert workers.idle == 0


async def test_a_failing_stream_ends_its_task_instead_of_serving_another() -> None:
    class Boom(Exception):
        pass

    async def serve(stream: str) -> None:
        if stream == "bad":
            raise Boom

    workers: list[StreamWorkers[str]] = []

    async def one_bad_stream() -> None:
        async with trio.open_nursery() as nursery:
            workers.append(StreamWorkers(nursery, serve))
            workers[0].start("bad")
            await trio.testing.wait_all_tasks_blocked()

    # The session's wrapper turns a handler's failure into a reset; bare, it ends the nursery.
    with pytest.raises(ExceptionGroup) as caught:
        await one_bad_stream()
    assert caught.group_contains(Boom)
    assert workers[0].idle == 0
