"""A writer holding more than one message's worth of frames cuts it into bounded messages
without losing, reordering or duplicating a byte (frames may straddle two messages)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tunnel.session import _batches


@given(
    parts=st.lists(st.binary(min_size=1, max_size=300), max_size=30),
    limit=st.integers(min_value=1, max_value=500),
)
def test_batches_keep_every_byte_in_order_within_the_limit(parts: list[bytes], limit: int) -> None:
    batches = list(_batches(parts, limit))
    assert b"".join(b"".join(bytes(piece) for piece in batch) for batch in batches) == b"".join(
        parts
    )
    sizes = [sum(len(piece) for piece in batch) for batch in batches]
    assert all(0 < size <= limit for size in sizes)
    assert all(size == limit for size in sizes[:-1]), "only the last message may be short"
