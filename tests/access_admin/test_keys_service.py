"""Signing keys in the store: the first key, rotation on demand, and the scheduled task."""

from __future__ import annotations

import trio
import trio.testing

from edge.access.keys_service import (
    KeyRingHolder,
    KeySettings,
    ensure_signing_key,
    load_keyring,
    rotate_if_due,
    rotate_signing_keys,
    rotation_task,
)
from edge.access.tokens import DEFAULT_OVERLAP, DEFAULT_ROTATION_PERIOD, KeyRing
from edge.store.sqlite import SqliteStore

from .conftest import WALL_START

DAY = 24 * 3600.0


def test_the_first_key_is_made_once(store: SqliteStore) -> None:
    ring, created = ensure_signing_key(store, now=WALL_START)
    assert created
    assert ring.active.algorithm == "RS256"
    again, created_again = ensure_signing_key(store, now=WALL_START + 10)
    assert not created_again
    assert again.active.kid == ring.active.kid
    assert load_keyring(store).active.kid == ring.active.kid
    assert load_keyring(store).active.private_key.private_numbers() == (
        ring.active.private_key.private_numbers()
    )


def test_rotation_keeps_the_previous_key_published_for_the_overlap(store: SqliteStore) -> None:
    first, _ = ensure_signing_key(store, now=WALL_START)
    rotated = rotate_signing_keys(store, now=WALL_START + DAY)
    assert rotated.active.kid != first.active.kid
    published = {key.kid for key in rotated.published(WALL_START + DAY + DEFAULT_OVERLAP - 1)}
    assert published == {first.active.kid, rotated.active.kid}
    assert {key.kid for key in rotated.published(WALL_START + DAY + DEFAULT_OVERLAP)} == {
        rotated.active.kid
    }
    es = rotate_signing_keys(store, now=WALL_START + 20 * DAY, algorithm="ES256")
    assert es.active.algorithm == "ES256"
    # The first key's overlap had ended, so the rotation forgot it for good.
    assert first.active.kid not in {key.kid for key in load_keyring(store).keys}


def test_rotate_if_due_follows_the_schedule(store: SqliteStore) -> None:
    settings = KeySettings(algorithm="ES256")
    empty = rotate_if_due(store, now=WALL_START, settings=settings)
    assert empty.active.algorithm == "ES256"
    kid = empty.active.kid
    assert rotate_if_due(store, now=WALL_START + DAY, settings=settings).active.kid == kid
    due = rotate_if_due(store, now=WALL_START + DEFAULT_ROTATION_PERIOD, settings=settings)
    assert due.active.kid != kid
    later = rotate_if_due(
        store, now=WALL_START + DEFAULT_ROTATION_PERIOD + DEFAULT_OVERLAP, settings=settings
    )
    assert [key.kid for key in later.keys] == [due.active.kid]


async def test_rotation_task_rotates_on_schedule_with_a_mock_clock(
    store: SqliteStore, mock_clock: trio.testing.MockClock
) -> None:
    mock_clock.autojump_threshold = 0
    settings = KeySettings(rotation_period=10 * DAY, overlap=2 * DAY, check_interval=DAY)

    def clock() -> float:
        return WALL_START + trio.current_time()

    start = clock()
    initial, _ = await trio.to_thread.run_sync(
        lambda: ensure_signing_key(store, now=start, settings=settings)
    )
    holder = KeyRingHolder(initial)
    # The task reports each new ring; waiting on that report (not on a sleep) keeps the test
    # independent of how long key generation takes in its worker thread.
    send, receive = trio.open_memory_channel[KeyRing](10)
    async with trio.open_nursery() as nursery:
        await nursery.start(
            lambda task_status: rotation_task(
                store,
                holder,
                clock,
                settings=settings,
                on_rotated=send.send_nowait,
                task_status=task_status,
            )
        )
        await trio.sleep(9 * DAY + 1)
        assert holder.current is initial
        rotated = await receive.receive()
        assert trio.current_time() >= 10 * DAY
        assert holder.current is rotated
        assert rotated.active.kid != initial.active.kid
        assert {key.kid for key in rotated.keys} == {initial.active.kid, rotated.active.kid}
        pruned = await receive.receive()
        assert trio.current_time() >= 12 * DAY
        assert [key.kid for key in pruned.keys] == [rotated.active.kid]
        # A rotation done elsewhere (keys rotate, another edge) is picked up too.
        now = clock()
        elsewhere = await trio.to_thread.run_sync(
            lambda: rotate_signing_keys(store, now=now, settings=settings)
        )
        picked_up = await receive.receive()
        assert picked_up.active.kid == elsewhere.active.kid == holder.current.active.kid
        nursery.cancel_scope.cancel()
    assert load_keyring(store).active.kid == elsewhere.active.kid
