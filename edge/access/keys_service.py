"""Signing keys kept in the store: the first key, rotation on demand and on schedule.

The key ring itself (:class:`edge.access.tokens.KeyRing`) is pure; this module is where it meets
the store. Every change is one read-modify-write transaction (``Store.update_signing_keys``),
so two edges sharing a store that decide to rotate at the same moment produce one new key, not
two: the second one sees the first one's fresh key and finds nothing due.

The running edge holds its ring in a :class:`KeyRingHolder` and swaps in a new ring whenever
the store's keys change (after ``keys rotate``, or when :func:`rotation_task` rotates on
schedule), so the request path reads ``holder.current`` and never touches the store.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn

import trio

from edge.access.tokens import (
    DEFAULT_OVERLAP,
    DEFAULT_ROTATION_PERIOD,
    Algorithm,
    KeyRing,
)
from edge.store import KeyRecord, Store

__all__ = [
    "DEFAULT_CHECK_INTERVAL",
    "KeyRingHolder",
    "KeySettings",
    "ensure_signing_key",
    "load_keyring",
    "rotate_if_due",
    "rotate_signing_keys",
    "rotation_task",
]

log = logging.getLogger(__name__)

DEFAULT_CHECK_INTERVAL = 3600.0


@dataclass(frozen=True)
class KeySettings:
    """How the edge's keys rotate: every ``rotation_period`` seconds (6 weeks), the previous
    key published ``overlap`` seconds more (7 days); the schedule is checked every
    ``check_interval`` seconds."""

    algorithm: Algorithm = "RS256"
    overlap: float = DEFAULT_OVERLAP
    rotation_period: float = DEFAULT_ROTATION_PERIOD
    check_interval: float = DEFAULT_CHECK_INTERVAL


def _ring(records: list[KeyRecord], settings: KeySettings) -> KeyRing:
    return KeyRing.from_records(
        records, overlap=settings.overlap, rotation_period=settings.rotation_period
    )


def load_keyring(store: Store, settings: KeySettings = KeySettings()) -> KeyRing:
    """The ring as stored (possibly empty: see :func:`ensure_signing_key`)."""
    return _ring(store.signing_key_records(), settings)


def _update(
    store: Store,
    settings: KeySettings,
    decide: Callable[[KeyRing], bool],
) -> tuple[KeyRing, bool]:
    changed = False

    def change(records: list[KeyRecord]) -> list[KeyRecord] | None:
        nonlocal changed
        ring = _ring(records, settings)
        changed = decide(ring)
        return ring.to_records() if changed else None

    return _ring(store.update_signing_keys(change), settings), changed


def _fallback_algorithm(ring: KeyRing, settings: KeySettings) -> Algorithm | None:
    """None keeps the active key's algorithm; without an active key, the configured one."""
    return None if any(key.not_after is None for key in ring.keys) else settings.algorithm


def ensure_signing_key(
    store: Store, *, now: float, settings: KeySettings = KeySettings()
) -> tuple[KeyRing, bool]:
    """Make sure an active key exists (first start, ``migrate``); returns the ring and whether
    a key was generated."""

    def decide(ring: KeyRing) -> bool:
        if any(key.not_after is None for key in ring.keys):
            return False
        ring.generate_key(settings.algorithm, now=now)
        return True

    ring, created = _update(store, settings, decide)
    if created:
        log.info("generated signing key %s (%s)", ring.active.kid, ring.active.algorithm)
    return ring, created


def rotate_signing_keys(
    store: Store,
    *,
    now: float,
    settings: KeySettings = KeySettings(),
    algorithm: Algorithm | None = None,
) -> KeyRing:
    """Make a new active key now; the previous one stays published for the overlap."""

    def decide(ring: KeyRing) -> bool:
        ring.prune(now)
        ring.rotate(now=now, algorithm=algorithm or _fallback_algorithm(ring, settings))
        return True

    ring, _ = _update(store, settings, decide)
    log.info("rotated signing keys; %s (%s) is active", ring.active.kid, ring.active.algorithm)
    return ring


def rotate_if_due(store: Store, *, now: float, settings: KeySettings = KeySettings()) -> KeyRing:
    """Rotate when the active key is older than the rotation period (or missing), and forget
    keys whose overlap ended; returns the ring as now stored."""

    def decide(ring: KeyRing) -> bool:
        dropped = ring.prune(now)
        if ring.due_for_rotation(now):
            ring.rotate(now=now, algorithm=_fallback_algorithm(ring, settings))
            return True
        return bool(dropped)

    ring, changed = _update(store, settings, decide)
    if changed:
        log.info("scheduled key maintenance done; %s is active", ring.active.kid)
    return ring


class KeyRingHolder:
    """The ring the request path signs and verifies with; replaced, never mutated."""

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring

    @property
    def current(self) -> KeyRing:
        return self._ring

    def replace(self, ring: KeyRing) -> None:
        self._ring = ring


def _fingerprint(ring: KeyRing) -> tuple[tuple[str, float | None], ...]:
    return tuple((key.kid, key.not_after) for key in ring.keys)


async def rotation_task(
    store: Store,
    keyring_holder: KeyRingHolder,
    clock: Callable[[], float],
    *,
    settings: KeySettings = KeySettings(),
    on_rotated: Callable[[KeyRing], Awaitable[None] | None] | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Keep the keys on schedule for as long as the edge runs.

    Every ``settings.check_interval`` (trio time, so tests drive it with ``MockClock``) it
    rotates what is due and picks up keys another edge or ``keys rotate`` stored. ``clock``
    gives Unix seconds for key dates (tests pass ``lambda: START + trio.current_time()``).
    ``on_rotated`` hears about every ring that replaced the held one.
    """
    task_status.started()
    while True:
        now = clock()  # read on the trio thread: a test clock may be trio's own
        try:
            ring = await trio.to_thread.run_sync(
                functools.partial(rotate_if_due, store, now=now, settings=settings)
            )
        except Exception:
            # A store hiccup must not end key maintenance: the current ring stays valid.
            log.exception(
                "signing key maintenance failed; retrying in %.0fs", settings.check_interval
            )
        else:
            if _fingerprint(ring) != _fingerprint(keyring_holder.current):
                keyring_holder.replace(ring)
                if on_rotated is not None:
                    result = on_rotated(ring)
                    if result is not None:
                        await result
        await trio.sleep(settings.check_interval)
