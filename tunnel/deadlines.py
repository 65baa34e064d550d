"""Deadlines of many short waits, kept by one task per trio run instead of a scope per wait.

Why: the request path waits with a deadline at least once per request: the edge for the next
request head (its header and idle timeouts), the connector for the origin's response head. A
trio cancel scope entered and left, or its deadline moved, costs 12-25 Python calls each time;
at the connector that was about an eighth of its instructions per small request (measured with
callgrind: 458,000 per request with the scope, 408,000 with this keeper). Here a wait is an
entry in a table: ``start`` adds it with its deadline, ``finish`` removes it, and one task
sleeps until the earliest deadline and calls ``deadline_passed()`` on the target of every wait
past its own. What that does is the target's business: the edge cancels the connection's one
long-lived cancel scope, the connector wakes the read of a late origin.

Waits are kept per timeout value in insertion-ordered dicts, so each table is sorted by deadline
by construction and its oldest entry is the next to expire; a finished wait leaves at once, so
memory follows the waits in progress, not the request rate. The task wakes at the earliest
deadline, and at least every ``tick`` (a quarter of the shortest timeout seen, at most one
second) while waits are pending, to pick up tables that were empty when it went to sleep. With
no wait pending it sleeps without a deadline: an idle process sets no timers.

``deadline_keeper()`` is the keeper of the current trio run; its task is a trio system task,
started the first time it is asked for and cancelled when the run ends. A ``deadline_passed``
that raises is logged and does not stop the keeper.

Whoever calls ``start`` must ``finish`` as soon as the wait is over, before awaiting anything
else: a wait left running would fire on whatever its target does next.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Protocol

import trio

log = logging.getLogger(__name__)

MAX_TICK = 1.0


class Expirable(Protocol):
    """The target of a wait: told once when its deadline passed (never after ``finish``)."""

    def deadline_passed(self) -> None: ...


class Wait:
    """One wait, in the table of its timeout value."""

    __slots__ = ("deadline", "table", "target")

    def __init__(self, deadline: float, target: Expirable, table: dict[Wait, None]) -> None:
        self.deadline = deadline
        self.target = target
        self.table = table


class DeadlineKeeper:
    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._tables: dict[float, dict[Wait, None]] = {}
        self._tick = MAX_TICK
        self._idle = True
        self._wake = trio.Event()
        self.next_wake: float | None = None
        """When the task wakes next; None while it sleeps without a deadline (nothing pending)."""

    @property
    def pending(self) -> int:
        """Waits in progress."""
        return sum(len(table) for table in self._tables.values())

    def start(self, target: Expirable, timeout: float) -> Wait | None:
        """Tell ``target`` once ``timeout`` seconds have passed, unless finished first (None:
        no deadline)."""
        if not 0 < timeout < math.inf:
            return None
        table = self._tables.get(timeout)
        if table is None:
            table = self._tables[timeout] = {}
            self._tick = min(self._tick, timeout / 4)
        wait = Wait(self._clock() + timeout, target, table)
        table[wait] = None
        if self._idle:
            self._idle = False
            self._wake.set()
        return wait

    @staticmethod
    def finish(wait: Wait | None) -> None:
        if wait is not None:
            wait.table.pop(wait, None)

    async def run(self) -> None:
        """The timekeeper; runs until cancelled."""
        while True:
            if self._idle:
                await self._wake.wait()
                self._wake = trio.Event()
            now = self._clock()
            next_deadline = self._expire(now)
            if next_deadline is None:
                self._idle = True
                self.next_wake = None
            else:
                self.next_wake = min(next_deadline, now + self._tick)
                await trio.sleep_until(self.next_wake)

    def _expire(self, now: float) -> float | None:
        """Tell the targets past their deadline; the earliest deadline left, if any."""
        earliest = None
        for table in self._tables.values():
            while table:
                wait = next(iter(table))
                if wait.deadline > now:
                    if earliest is None or wait.deadline < earliest:
                        earliest = wait.deadline
                    break
                del table[wait]
                try:
                    wait.target.deadline_passed()
                except Exception:
                    log.exception("a deadline's target failed to act on it")
        return earliest


_KEEPER: trio.lowlevel.RunVar[DeadlineKeeper] = trio.lowlevel.RunVar("tunnelgate_deadlines")


def deadline_keeper() -> DeadlineKeeper:
    """The current trio run's keeper; its task starts the first time it is asked for."""
    try:
        return _KEEPER.get()
    except LookupError:
        keeper = DeadlineKeeper()
        _KEEPER.set(keeper)
        trio.lowlevel.spawn_system_task(keeper.run, name="tunnelgate deadlines")
        return keeper
