"""Plain injected time and randomness for the access-flow tests."""

from __future__ import annotations

import hashlib


class SteppedClock:
    """A clock that only moves when a test moves it."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingRandom:
    """Distinct, reproducible bytes: SHA-256 of a counter, stretched to the size asked for."""

    def __init__(self, seed: bytes = b"tests") -> None:
        self._seed = seed
        self._counter = 0
        self.requests: list[int] = []

    def __call__(self, size: int) -> bytes:
        self._counter += 1
        self.requests.append(size)
        out = b""
        block = 0
        while len(out) < size:
            material = self._seed + self._counter.to_bytes(8, "big") + block.to_bytes(4, "big")
            out += hashlib.sha256(material).digest()
            block += 1
        return out[:size]


SECRET = bytes(range(32))
OTHER_SECRET = bytes(range(1, 33))
