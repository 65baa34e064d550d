"""An in-memory tunnel stream: the dispatcher sees a TunnelStream, the test plays the edge.

Built on a lockstep stream pair, so a send blocks until the other side reads: a dispatcher that
buffered a whole body, or ignored backpressure, would deadlock or fail the tests instead of
passing them by accident.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from tunnel.protocol import ErrorCode


class FakeTunnelStream(trio.abc.HalfCloseableStream):
    def __init__(self, head: dict[str, Any], *, ended: bool = False) -> None:
        self.head = head
        # ``ended``: the edge opened the stream already ended (a request without a body);
        # then nothing may be read from it.
        self.ended = ended
        self.receives = 0
        connector_side, edge_side = trio.testing.lockstep_stream_pair()
        self._inner = connector_side
        self.edge = edge_side
        self.response_head: dict[str, Any] | None = None
        self.end_stream_on_head = False
        self.head_sent = trio.Event()
        self.reset_code: ErrorCode | None = None
        self.closed = False
        self.whole_responses = 0

    async def send_head(self, head: dict[str, Any], end_stream: bool = False) -> None:
        assert self.response_head is None, "response head sent twice"
        self.response_head = head
        self.end_stream_on_head = end_stream
        self.head_sent.set()
        if end_stream:
            await self._inner.send_eof()  # type: ignore[attr-defined]

    async def send_response(self, head: dict[str, Any], body: bytes) -> bool:
        self.whole_responses += 1
        await self.send_head(head, end_stream=not body)
        if body:
            await self.send_all(body)
            await self._inner.send_eof()  # type: ignore[attr-defined]
        return True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        assert self.response_head is not None, "body sent before the head"
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    @property
    def remote_finished(self) -> bool:
        return self.ended

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        self.receives += 1
        if self.ended:
            await trio.lowlevel.checkpoint()
            return b""
        return await self._inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self._inner.send_eof()  # type: ignore[attr-defined]

    async def reset(self, code: ErrorCode) -> None:
        self.reset_code = code
        self.head_sent.set()
        await self._inner.aclose()

    async def aclose(self) -> None:
        self.closed = True
        await self._inner.aclose()


@dataclass
class EdgeView:
    """What the edge saw of one exchange."""

    head: dict[str, Any] | None
    end_stream_on_head: bool
    body: bytes
    reset_code: ErrorCode | None
    closed: bool
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def status(self) -> int:
        assert self.head is not None, f"no response head (reset {self.reset_code!r})"
        return int(self.head["status"])

    def header(self, name: str) -> str | None:
        assert self.head is not None
        for key, value in self.head.get("headers", []):
            if key.lower() == name:
                return str(value)
        return None


def http_head(target: str = "/", *, method: str = "GET", host: str = "app.example.com",
              headers: Iterable[tuple[str, str]] = ()) -> dict[str, Any]:
    return {"kind": "http", "method": method, "target": target, "host": host,
            "scheme": "https", "headers": [[n, v] for n, v in headers],
            "client": "203.0.113.9", "identity": None}


async def run_exchange(serve: Any, head: dict[str, Any],
                       body: Iterable[bytes] = (), *, ended: bool = False) -> EdgeView:
    """Serve one stream while the edge sends ``body`` then EOF and reads the whole answer
    (``ended``: the stream was opened already ended, as the edge opens bodiless requests)."""
    stream = FakeTunnelStream(head, ended=ended)
    received = bytearray()

    async def edge_sends() -> None:
        if ended:
            return
        try:
            for chunk in body:
                await stream.edge.send_all(chunk)
            await stream.edge.send_eof()  # type: ignore[attr-defined]
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the connector closed its side: it answered without reading everything

    async def edge_receives() -> None:
        try:
            while data := await stream.edge.receive_some(65536):
                received.extend(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async with trio.open_nursery() as nursery:
        nursery.start_soon(edge_sends)
        nursery.start_soon(edge_receives)
        await serve(stream)
    await stream.edge.aclose()
    return EdgeView(stream.response_head, stream.end_stream_on_head, bytes(received),
                    stream.reset_code, stream.closed,
                    {"receives": stream.receives, "whole_responses": stream.whole_responses})
