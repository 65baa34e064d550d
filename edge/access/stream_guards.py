"""Long-lived streams re-checked against their Access grant by one task, not one task each.

A WebSocket or TCP stream that Access let through stays open for as long as its grant holds:
it is closed when its session ends, its app is revoked or the policy stops granting it
(DESIGN.md section 4). Each stream used to carry a task, a nursery and a timer of its own for
that, which cost the edge about 6 KiB per idle WebSocket (17.8 KiB per stream with Access,
12.0 without, in the bench's idle-streams row with 10,000 streams; 14.0 with this table) and a
wake-up per stream every interval.
Here a guarded stream is an entry in one table: one task wakes at every change that can end
sessions (``AccessRuntime.changed()``) and at least every ``interval`` seconds, asks each
entry's ``still_valid()`` and cancels the scope of every stream whose grant no longer holds.
The check yields every ``batch`` entries, so ten thousand open streams never hold the edge up
for one long pass. A ``still_valid`` that raises is logged and ends its stream, as it did when
each guard failed on its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

log = logging.getLogger(__name__)

CHECK_BATCH = 256


class StreamGuards:
    def __init__(
        self, changed: Callable[[], trio.Event], interval: float, batch: int = CHECK_BATCH
    ) -> None:
        self._changed = changed
        self._interval = interval
        self._batch = batch
        self._watched: dict[trio.CancelScope, Callable[[], bool]] = {}

    @property
    def watched(self) -> int:
        """Streams guarded right now."""
        return len(self._watched)

    async def guard(
        self, still_valid: Callable[[], bool], work: Callable[[], Awaitable[None]]
    ) -> None:
        """Run ``work`` (a relay) until it ends or ``still_valid()`` turns false; then return."""
        with trio.CancelScope() as scope:
            self._watched[scope] = still_valid
            try:
                await work()
            finally:
                self._watched.pop(scope, None)

    async def run(self) -> None:
        """The watcher; runs until cancelled."""
        while True:
            with trio.move_on_after(self._interval):
                await self._changed().wait()
            await self.check()

    async def check(self) -> int:
        """Check every guarded stream now; how many were closed."""
        closed = 0
        for position, (scope, still_valid) in enumerate(list(self._watched.items()), 1):
            if scope in self._watched:  # not finished while an earlier batch yielded
                try:
                    valid = still_valid()
                except Exception:
                    log.exception("checking an open stream's access grant failed; closing it")
                    valid = False
                if not valid:
                    log.info("closing a stream whose access grant ended")
                    self._watched.pop(scope, None)
                    scope.cancel()
                    closed += 1
            if position % self._batch == 0:
                await trio.lowlevel.checkpoint()
        return closed
