"""Open many WebSocket connections through one endpoint and hold them idle until told to stop.

Used by the idle-streams row: the harness reads the tunnel's memory while these connections are
open. Progress is one JSON line per phase on stdout:

- `{"event": "held", "opened": N, "failed": F, "failures": {...}, "seconds": S}` once every
  connection was attempted (or the open phase timed out),
- `{"event": "verified", "sample": K, "echoed": E}` after a message was echoed on a sample of the
  held connections (proof that they are live streams, not half-dead sockets),
- `{"event": "closed", "dropped": D}` after stdin reached end of file, when all are closed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Message,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

READ_SIZE = 4096
HANDSHAKE_TIMEOUT_S = 30.0
ECHO_TIMEOUT_S = 15.0
SAMPLE_SIZE = 100


def emit(event: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(event) + "\n")
    sys.stdout.flush()


@dataclass
class HeldConnection:
    stream: trio.SocketStream
    websocket: WSConnection
    echoed: trio.Event = field(default_factory=trio.Event)


@dataclass
class Holder:
    port: int
    host: str
    path: str
    count: int
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    opened: int = 0
    failed: int = 0
    dropped: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    held: list[HeldConnection] = field(default_factory=list)
    all_attempted: trio.Event = field(default_factory=trio.Event)

    def _attempted(self) -> None:
        if self.opened + self.failed == self.count:
            self.all_attempted.set()

    async def _open(self) -> HeldConnection:
        stream = await trio.open_tcp_stream("127.0.0.1", self.port)
        try:
            websocket = WSConnection(ConnectionType.CLIENT)
            request = Request(host=self.host, target=self.path, extra_headers=self.headers)
            await stream.send_all(websocket.send(request))
            while True:
                data = await stream.receive_some(READ_SIZE)
                if not data:
                    raise ConnectionError("closed during handshake")
                websocket.receive_data(data)
                for event in websocket.events():
                    if isinstance(event, AcceptConnection):
                        return HeldConnection(stream, websocket)
                    if isinstance(event, RejectConnection):
                        raise ConnectionError(f"rejected with HTTP {event.status_code}")
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise

    async def hold_one(self, limiter: trio.CapacityLimiter) -> None:
        try:
            async with limiter:
                with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                    connection = await self._open()
        except (OSError, trio.TooSlowError, ConnectionError, RemoteProtocolError) as error:
            self.failed += 1
            self.failures[f"{type(error).__name__}: {error}"[:120]] += 1
            self._attempted()
            return
        self.opened += 1
        self.held.append(connection)
        self._attempted()
        async with connection.stream:
            await self._read_until_closed(connection)

    async def _read_until_closed(self, connection: HeldConnection) -> None:
        try:
            while True:
                data = await connection.stream.receive_some(READ_SIZE)
                if not data:
                    break
                connection.websocket.receive_data(data)
                for event in connection.websocket.events():
                    if isinstance(event, TextMessage):
                        connection.echoed.set()
                    elif isinstance(event, CloseConnection):
                        self.dropped += 1
                        return
        except (trio.BrokenResourceError, trio.ClosedResourceError, RemoteProtocolError):
            pass
        self.dropped += 1

    async def verify_sample(self) -> None:
        step = max(1, len(self.held) // SAMPLE_SIZE)
        sample = self.held[::step][:SAMPLE_SIZE]
        for connection in sample:
            try:
                payload = connection.websocket.send(Message(data="still there?"))
                await connection.stream.send_all(payload)
            except (trio.BrokenResourceError, trio.ClosedResourceError, LocalProtocolError):
                continue
        with trio.move_on_after(ECHO_TIMEOUT_S):
            for connection in sample:
                await connection.echoed.wait()
        echoed = sum(1 for connection in sample if connection.echoed.is_set())
        emit({"event": "verified", "sample": len(sample), "echoed": echoed})


async def wait_for_stdin_eof() -> None:
    async with trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())) as stdin:
        while await stdin.receive_some(1024):
            pass


async def main(arguments: argparse.Namespace) -> None:
    holder = Holder(arguments.port, arguments.host, arguments.path, arguments.count,
                    read_headers(arguments.headers_file))
    limiter = trio.CapacityLimiter(arguments.parallel)
    started = time.monotonic()
    async with trio.open_nursery() as nursery:
        for _ in range(arguments.count):
            nursery.start_soon(holder.hold_one, limiter)
        with trio.move_on_after(arguments.open_timeout):
            await holder.all_attempted.wait()
        emit(
            {
                "event": "held",
                "opened": holder.opened,
                "failed": holder.failed,
                "failures": dict(holder.failures.most_common(5)),
                "seconds": round(time.monotonic() - started, 2),
            }
        )
        await holder.verify_sample()
        await wait_for_stdin_eof()
        emit({"event": "closed", "dropped": holder.dropped})
        nursery.cancel_scope.cancel()


def read_headers(path: str | None) -> list[tuple[bytes, bytes]]:
    """``Name: value`` lines (a session cookie, say) that every upgrade request carries; they
    come from a file, not argv, so a cookie never shows in the process list."""
    if path is None:
        return []
    with open(path, encoding="latin-1") as lines:
        pairs = [line.rstrip("\r\n").split(":", 1) for line in lines if line.strip()]
    return [(name.strip().encode("latin-1"), value.strip().encode("latin-1"))
            for name, value in pairs]


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--host", required=True, help="Host header of the upgrade request")
    parser.add_argument("--path", default="/ws")
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--parallel", type=int, default=100, help="handshakes in flight")
    parser.add_argument("--open-timeout", type=float, default=300.0)
    parser.add_argument("--headers-file", help="extra upgrade headers, one 'Name: value' a line")
    return parser.parse_args()


if __name__ == "__main__":
    trio.run(main, parse_arguments())
