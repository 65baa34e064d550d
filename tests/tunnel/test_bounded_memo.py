"""The bounded tables behind the per-request memos: hits, misses, and starting over when full."""

from __future__ import annotations

from tunnel.bounded_memo import BoundedMemo


def test_a_remembered_value_is_found_and_a_full_table_starts_over() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(3, 10)
    assert memo.get("a") is None
    assert memo.remember("a", 1, 1) == 1
    assert memo.get("a") == 1
    assert "a" in memo
    memo.remember("b", 2, 1)
    memo.remember("c", 3, 1)
    assert len(memo) == 3
    memo.remember("d", 4, 1)  # the table was full: it holds only the newest entry now
    assert len(memo) == 1
    assert memo.get("a") is None
    assert memo.get("d") == 4


def test_large_inputs_and_unhashable_keys_are_answered_but_not_kept() -> None:
    memo: BoundedMemo[object, int] = BoundedMemo(3, 10)
    assert memo.remember("large", 5, 11) == 5
    assert "large" not in memo
    assert memo.remember((b"a", bytearray(b"b")), 6, 2) == 6  # a bytearray cannot be a key
    assert len(memo) == 0
