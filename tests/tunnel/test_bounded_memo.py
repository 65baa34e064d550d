"""The bounded tables behind the per-request memos: hits, misses, and starting over when full."""

from __future__ import annotations

from tunnel.bounded_memo import BoundedMemo


def test_a_remembered_value_is_found_and_a_full_table_starts_over() -> None:
    memo: BoundedMemo[str, int] = BoundedMemo(3)
    assert memo.get("a") is None
    assert memo.remember("a", 1) == 1
    assert memo.get("a") == 1
    assert "a" in memo
    memo.remember("b", 2)
    memo.remember("c", 3)
    assert len(memo) == 3
    memo.remember("d", 4)  # the table was full: it holds only the newest entry now
    assert len(memo) == 1
    assert memo.get("a") is None
    assert memo.get("d") == 4
