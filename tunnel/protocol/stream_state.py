"""What a connection keeps per open stream, and how much credit a consumed batch gives back.

Credit is the receiver's to decide, so the policy lives here and the peer sees only the
WINDOW_UPDATEs: a batch goes back once a quarter of the window is owed; the window doubles each
time a whole window was taken with no other stream opened on the connection meanwhile (a
reader that keeps up with a transfer running alone), up to ``max_window``; and once another
stream has opened, the next batch brings the window back to ``initial_window`` by holding back
the credit the growth had added, since a small request opened beside a transfer waits behind
all the transfer has in flight. Streams that stay open without new ones (idle WebSockets) do
not hold a transfer back: only an opening counts.
"""

from __future__ import annotations


class StreamState:
    __slots__ = (
        "head_received",
        "head_sent",
        "local_ended",
        "owed",
        "recv_window",
        "remote_ended",
        "returned",
        "seen_id",
        "send_window",
        "window",
    )

    def __init__(self, send_window: int, recv_window: int, stream_id: int) -> None:
        self.send_window = send_window
        self.recv_window = recv_window
        self.window = recv_window  # the credit this stream is allowed to reach
        self.returned = 0  # credit given back since the window last changed
        self.owed = 0  # below 0 while credit is held back after the window shrank
        self.seen_id = stream_id  # the connection's newest stream at the last grant
        self.local_ended = False
        self.remote_ended = False
        self.head_sent = False
        self.head_received = False

    def credit_for(self, consumed: int, newest_stream_id: int, initial: int, maximum: int) -> int:
        """Credit to return now that the application took ``consumed`` more bytes (0: none
        yet); ``newest_stream_id`` is the last stream opened on the connection."""
        owed = self.owed + consumed
        window = self.window
        if owed < window >> 2:
            self.owed = owed
            return 0
        if newest_stream_id != self.seen_id:
            self.seen_id = newest_stream_id
            self.returned = 0
            if window > initial:
                self.window = initial
                owed -= window - initial
                if owed < initial >> 2:
                    self.owed = owed
                    return 0
            return self._grant(owed)
        self.returned += owed
        if self.returned >= window and window < maximum:
            extra = min(window, maximum - window)
            self.window = window + extra
            self.returned = 0
            owed += extra
        return self._grant(owed)

    def _grant(self, credit: int) -> int:
        self.owed = 0
        self.recv_window += credit
        return credit
