"""Reconnect backoff: growth, cap, jitter bounds, reset only after a stable period."""

from __future__ import annotations

import random

import pytest

from connector.backoff import Backoff


def test_ceiling_grows_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(base=1.0, factor=2.0, cap=20.0, rng=random.Random(1))
    ceilings = []
    for _ in range(7):
        ceilings.append(backoff.ceiling())
        backoff.next_delay()
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 20.0, 20.0]
    assert backoff.attempts == 7


def test_delays_stay_within_full_jitter_bounds() -> None:
    backoff = Backoff(base=0.5, factor=3.0, cap=30.0, rng=random.Random(42))
    delays = []
    for _ in range(200):
        ceiling = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= ceiling
        delays.append(delay)
    capped = delays[10:]
    assert max(capped) <= 30.0
    # Jitter spreads delays over the whole range rather than sitting at the ceiling.
    assert min(capped) < 10.0 < max(capped)


def test_same_seed_same_schedule() -> None:
    first = Backoff(rng=random.Random(7))
    second = Backoff(rng=random.Random(7))
    assert [first.next_delay() for _ in range(10)] == [second.next_delay() for _ in range(10)]


def test_long_outage_does_not_overflow() -> None:
    backoff = Backoff(base=1.0, factor=10.0, cap=60.0, rng=random.Random(3))
    for _ in range(5000):
        assert backoff.next_delay() <= 60.0


def test_resets_after_a_stable_period() -> None:
    backoff = Backoff(base=1.0, cap=60.0, reset_after=60.0, rng=random.Random(0))
    for _ in range(5):
        backoff.next_delay()
    backoff.record_success(now=1000.0)
    backoff.record_failure(now=1060.0)
    assert backoff.attempts == 0
    assert backoff.ceiling() == 1.0


def test_does_not_reset_before_the_stable_period() -> None:
    backoff = Backoff(base=1.0, cap=60.0, reset_after=60.0, rng=random.Random(0))
    for _ in range(5):
        backoff.next_delay()
    backoff.record_success(now=1000.0)
    backoff.record_failure(now=1059.9)
    assert backoff.attempts == 5
    assert backoff.ceiling() == 32.0


def test_failure_without_success_does_not_reset() -> None:
    backoff = Backoff(rng=random.Random(0))
    backoff.next_delay()
    backoff.record_failure(now=10_000.0)
    assert backoff.attempts == 1


def test_record_uptime() -> None:
    backoff = Backoff(reset_after=30.0, rng=random.Random(0))
    backoff.next_delay()
    backoff.record_uptime(29.0)
    assert backoff.attempts == 1
    backoff.record_uptime(30.0)
    assert backoff.attempts == 0


@pytest.mark.parametrize("kwargs", [
    {"base": 0.0}, {"factor": 0.5}, {"base": 10.0, "cap": 5.0}, {"reset_after": -1.0},
])
def test_rejects_nonsense_parameters(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="need base"):
        Backoff(**kwargs)
