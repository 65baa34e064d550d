"""Negotiated limits of a tunnel connection.

Each side advertises its ``Limits`` in HELLO; they bind what the *peer* may send.
Every limit is checked before the offending bytes are buffered, so a hostile peer
can cost at most ``max_frame_size`` bytes of parse buffer plus, per stream,
``initial_window`` bytes of unread data, or ``max_window`` for a stream whose reader has
kept up with it.

``max_window`` is not advertised: the receiver alone decides to give a busy stream more
credit, and the peer sees only bigger WINDOW_UPDATEs. A stream starts at ``initial_window``
(256 KiB, which keeps small requests sharing a connection with a bulk transfer fast); each
time its reader has taken a whole window's worth, the window doubles, up to ``max_window``
(1 MiB). Measured on one 2-core machine, a 64 MiB transfer went from about 250 MB/s at a
fixed 256 KiB to about 450 MB/s with the window grown to 1 MiB: fewer WINDOW_UPDATEs, and the
sender stops waiting for them.

A window grows only while the stream has its connection to itself: once another stream has
opened since its last update, the next update brings the window back to ``initial_window``,
holding back the credit the growth added. Everything a stream has in flight is ahead of a small
request opened beside it on the same connection; 1 MiB on a 100 Mbit/s link is 80 ms.

``max_frame_size`` is 256 KiB: a bulk transfer costs the reader and the writer a fixed amount
of Python work per frame, and at 64 KiB a 64 MiB download through the tunnel ran at 811-843
MB/s against 895-1,011 MB/s at 256 KiB (medians of two 3-run bench rows each; 1 MiB was no
faster). A peer that announces less still gets frames of at most what it announced.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
    header_table_size: room for header pairs the peer may index here, in bytes of names and
        values plus 32 per entry (``tunnel.protocol.header_table``); 0 turns indexing off.
    max_window: the most credit a stream grows to while its reader keeps up (local only).
    """

    max_frame_size: int = 262144
    max_concurrent_streams: int = 16384
    initial_window: int = 262144
    max_header_block: int = 65536
    header_table_size: int = 65536
    max_window: int = field(default=1048576, compare=False)  # local: not in HELLO or ==

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
            ("header_table_size", self.header_table_size, 0, MAX_FRAME_SIZE),
            ("max_window", self.max_window, 1, MAX_WINDOW),
        )
        for name, value, low, high in checks:
            if type(value) is not int or not low <= value <= high:
                return f"{name} must be an integer in [{low}, {high}], got {value!r}"
        return None

    def as_json(self) -> dict[str, int]:
        """What HELLO announces: everything but ``max_window``, which is this side's own."""
        return {
            "max_frame_size": self.max_frame_size,
            "initial_window": self.initial_window,
            "max_concurrent_streams": self.max_concurrent_streams,
            "max_header_block": self.max_header_block,
            "header_table_size": self.header_table_size,
        }


DEFAULT_LIMITS = Limits()
