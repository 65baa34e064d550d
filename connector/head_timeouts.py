"""Response-head timeouts of origin connections, kept by one task instead of a scope per wait.

Why: a trio cancel scope entered and left around every wait for an origin's answer cost about
an eighth of the connector's instructions per small request (measured with callgrind: 458,000
instructions per request with the scope, 403,000 without it). Here a wait is an entry in a
table: ``start`` adds it with its deadline, ``finish`` removes it, and one task (``run``)
sleeps until the earliest deadline and times out the waits past theirs with
``OriginConnection.time_out_head``, which wakes the waiting read; the exchange then answers
``OriginTimeout`` and the connection is not reused.

Waits are kept per timeout value in insertion-ordered dicts, so each table is sorted by deadline
by construction and its oldest entry is the next to expire; a finished wait leaves at once, so
memory follows the waits in progress, not the request rate. The task wakes at the earliest
deadline, and at least every ``tick`` (a quarter of the shortest timeout seen, at most one
second) while waits are pending, to pick up tables that were empty when it went to sleep. With
no wait pending it sleeps without a deadline: an idle connector sets no timers.

Whoever calls ``start`` must call ``finish`` as soon as the head has arrived, before awaiting
anything else: a wait left running could time out the connection's next exchange.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Protocol

import trio

MAX_TICK = 1.0


class HeadWaiter(Protocol):
    """What a timeout does to the connection whose head is late (``OriginConnection``)."""

    def time_out_head(self) -> None: ...


class HeadWait:
    """One wait for a response head, in the table of its timeout value."""

    __slots__ = ("connection", "deadline", "table")

    def __init__(self, deadline: float, connection: HeadWaiter,
                 table: dict[HeadWait, None]) -> None:
        self.deadline = deadline
        self.connection = connection
        self.table = table


class HeadTimeouts:
    def __init__(self, clock: Callable[[], float] = trio.current_time) -> None:
        self._clock = clock
        self._tables: dict[float, dict[HeadWait, None]] = {}
        self._tick = MAX_TICK
        self._idle = True
        self._wake = trio.Event()
        self.next_wake: float | None = None
        """When the task wakes next; None while it sleeps without a deadline (nothing pending)."""

    @property
    def pending(self) -> int:
        """Waits in progress."""
        return sum(len(table) for table in self._tables.values())

    def start(self, connection: HeadWaiter, timeout: float) -> HeadWait | None:
        """Time out ``connection``'s head after ``timeout`` seconds (None: never)."""
        if not 0 < timeout < math.inf:
            return None
        table = self._tables.get(timeout)
        if table is None:
            table = self._tables[timeout] = {}
            self._tick = min(self._tick, timeout / 4)
        wait = HeadWait(self._clock() + timeout, connection, table)
        table[wait] = None
        if self._idle:
            self._idle = False
            self._wake.set()
        return wait

    @staticmethod
    def finish(wait: HeadWait | None) -> None:
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
        """Time out the waits past their deadline; the earliest deadline left, if any."""
        earliest = None
        for table in self._tables.values():
            while table:
                wait = next(iter(table))
                if wait.deadline > now:
                    if earliest is None or wait.deadline < earliest:
                        earliest = wait.deadline
                    break
                del table[wait]
                wait.connection.time_out_head()
        return earliest
