"""Reconnect delays: exponential growth, full jitter, a cap, and a reset after a stable period.

Full jitter (each delay uniform in ``[0, min(cap, base * factor**n)]``, AWS architecture blog
"Exponential Backoff And Jitter") is used rather than equal or decorrelated jitter because it
spreads a fleet of connectors that lost the same edge at the same instant the most evenly, so
their reconnects do not arrive as one wave; its mean delay is half the ceiling, which is the
price.

The attempt counter resets only when a connection *stayed up* for ``reset_after`` seconds: a
connection that registers and then drops at once (an edge crash-looping, a refusal right after
registration) keeps growing the delay instead of hammering the edge once a second. Time and
randomness are injected; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """One connection's reconnect schedule.

    Use: call :meth:`record_success` when the connection registers, :meth:`record_failure` when
    it ends or a dial fails, then sleep :meth:`next_delay` seconds before dialling again.
    """

    def __init__(
        self,
        *,
        base: float = 1.0,
        factor: float = 2.0,
        cap: float = 60.0,
        reset_after: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        if base <= 0 or factor < 1 or cap < base or reset_after < 0:
            raise ValueError("need base > 0, factor >= 1, cap >= base and reset_after >= 0")
        self.base = base
        self.factor = factor
        self.cap = cap
        self.reset_after = reset_after
        self._rng = rng if rng is not None else random.Random()
        self._attempts = 0
        self._up_since: float | None = None

    @property
    def attempts(self) -> int:
        """Delays handed out since the last reset."""
        return self._attempts

    def ceiling(self) -> float:
        """Upper bound of the next delay."""
        # Computed by repeated multiplication with an early stop, so a long outage cannot
        # overflow a float the way ``factor ** attempts`` would.
        bound = self.base
        if self.factor == 1:
            return bound
        for _ in range(self._attempts):
            bound *= self.factor
            if bound >= self.cap:
                return self.cap
        return min(bound, self.cap)

    def next_delay(self) -> float:
        """Seconds to wait before the next attempt; each call counts as one attempt."""
        delay = self._rng.uniform(0.0, self.ceiling())
        self._attempts += 1
        return delay

    def record_success(self, now: float) -> None:
        """The connection is up (registered) as of ``now``."""
        self._up_since = now

    def record_failure(self, now: float) -> None:
        """The connection ended or a dial failed at ``now``; resets if it had been stable."""
        if self._up_since is not None and now - self._up_since >= self.reset_after:
            self.reset()
        self._up_since = None

    def record_uptime(self, seconds: float) -> None:
        """A connection ended after being up ``seconds``; resets if that was a stable period.

        The same rule as :meth:`record_success` + :meth:`record_failure`, for a caller that
        measured the duration itself.
        """
        if seconds >= self.reset_after:
            self.reset()
        self._up_since = None

    def reset(self) -> None:
        self._attempts = 0
        self._up_since = None
