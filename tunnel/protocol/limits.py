"""Negotiated limits of a tunnel connection.

Each side advertises its ``Limits`` in HELLO; they bind what the *peer* may send.
Every limit is checked before the offending bytes are buffered, so a hostile peer
can cost at most ``max_frame_size`` bytes of parse buffer plus, per stream,
``initial_window`` bytes of unread data.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_FRAME_SIZE = 1024
MAX_FRAME_SIZE = 1 << 24
MAX_WINDOW = (1 << 31) - 1
MAX_STREAMS = (1 << 31) - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """What this side accepts from its peer.

    max_frame_size: largest frame payload, in bytes (a bigger header is refused at once).
    max_concurrent_streams: streams the peer may have open here at one time.
    initial_window: per-stream credit, in bytes of DATA the peer may send unacknowledged.
    max_header_block: largest HEAD payload (its JSON), in bytes.
    """

    max_frame_size: int = 65536
    max_concurrent_streams: int = 16384
    initial_window: int = 262144
    max_header_block: int = 65536

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise ValueError(problem)

    def problem(self) -> str | None:
        """Describe the first out-of-range value, or None when all are valid."""
        checks = (
            ("max_frame_size", self.max_frame_size, MIN_FRAME_SIZE, MAX_FRAME_SIZE),
            ("max_concurrent_streams", self.max_concurrent_streams, 0, MAX_STREAMS),
            ("initial_window", self.initial_window, 1, MAX_WINDOW),
            ("max_header_block", self.max_header_block, MIN_FRAME_SIZE, MAX_FRAME_SIZE),
        )
        for name, value, low, high in checks:
            if type(value) is not int or not low <= value <= high:
                return f"{name} must be an integer in [{low}, {high}], got {value!r}"
        return None

    def as_json(self) -> dict[str, int]:
        return {
            "max_frame_size": self.max_frame_size,
            "initial_window": self.initial_window,
            "max_concurrent_streams": self.max_concurrent_streams,
            "max_header_block": self.max_header_block,
        }


DEFAULT_LIMITS = Limits()
