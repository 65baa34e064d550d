"""The tasks that run the handlers of incoming streams (the connector's side of a session).

A task per stream is the natural shape, but starting a trio task (coroutine, context copy,
nursery bookkeeping) and retiring it cost more than the rest of the connector's work for a
small request. So a task that finished its stream waits for the next one instead of ending:
handing a stream to a waiting task is one reschedule. At most ``max_idle`` tasks wait; beyond
that a finished task ends, so a burst leaves no more than that behind. Nothing is shared
between the streams a task serves but the task: trio context variables are not used on this
path, and a handler's failure ends with its stream.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import trio

S = TypeVar("S")

MAX_IDLE_WORKERS = 32
"""Waiting tasks kept per session: enough for the streams a busy connection has at once."""


class _Worker(Generic[S]):
    __slots__ = ("stream", "task")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.stream: S | None = None


class StreamWorkers(Generic[S]):
    """``start(stream)`` runs ``serve(stream)`` in a waiting task, or in a new one."""

    def __init__(
        self,
        nursery: trio.Nursery,
        serve: Callable[[S], Awaitable[None]],
        *,
        max_idle: int = MAX_IDLE_WORKERS,
    ) -> None:
        self._nursery = nursery
        self._serve = serve
        self._max_idle = max_idle
        self._idle: list[_Worker[S]] = []

    @property
    def idle(self) -> int:
        return len(self._idle)

    def start(self, stream: S) -> None:
        if self._idle:
            worker = self._idle.pop()  # the most recently used: its frames are still warm
            worker.stream = stream
            trio.lowlevel.reschedule(worker.task)
        else:
            self._nursery.start_soon(self._work, stream)

    async def _work(self, first: S) -> None:
        worker: _Worker[S] = _Worker(trio.lowlevel.current_task())
        stream: S | None = first
        while stream is not None:
            await self._serve(stream)
            worker.stream = stream = None  # the finished stream is not kept alive meanwhile
            if len(self._idle) >= self._max_idle:
                return
            stream = await self._next(worker)

    async def _next(self, worker: _Worker[S]) -> S | None:
        idle = self._idle
        idle.append(worker)

        def abort(_: object) -> trio.lowlevel.Abort:
            idle.remove(worker)
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        return worker.stream
