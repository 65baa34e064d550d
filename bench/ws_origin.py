"""WebSocket origin for the idle-streams row: accepts upgrades, echoes messages, holds the rest.

nginx can proxy WebSockets but cannot be their endpoint, so this small trio server is. It prints
`{"event": "ready", "port": N}` once listening on 127.0.0.1 (port chosen by the kernel) and runs
until it is terminated. Each connection costs one task and one wsproto state machine; nothing is
buffered beyond one read.
"""

from __future__ import annotations

import json
import sys

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

READ_SIZE = 4096


async def serve_websocket(stream: trio.SocketStream) -> None:
    websocket = WSConnection(ConnectionType.SERVER)
    async with stream:
        try:
            while True:
                data = await stream.receive_some(READ_SIZE)
                websocket.receive_data(data or None)
                outgoing = bytearray()
                closing = not data
                for event in websocket.events():
                    if isinstance(event, Request):
                        outgoing += websocket.send(AcceptConnection())
                    elif isinstance(event, TextMessage | BytesMessage):
                        outgoing += websocket.send(event)
                    elif isinstance(event, Ping):
                        outgoing += websocket.send(event.response())
                    elif isinstance(event, CloseConnection):
                        outgoing += websocket.send(event.response())
                        closing = True
                if outgoing:
                    await stream.send_all(outgoing)
                if closing:
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return
        except (RemoteProtocolError, LocalProtocolError):
            return


async def main() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=4096)
    port = listeners[0].socket.getsockname()[1]
    sys.stdout.write(json.dumps({"event": "ready", "port": port}) + "\n")
    sys.stdout.flush()
    await trio.serve_listeners(serve_websocket, listeners)


if __name__ == "__main__":
    trio.run(main)
