"""The edge's accept loop: bursts taken from the backlog in batches, every connection handled
and closed once, capacity errors survived, and the listening socket really closed at the end."""

from __future__ import annotations

import errno
import socket
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing

from edge.accepting import MAX_ACCEPT_BATCH, serve_listener


async def _listener() -> trio.SocketListener:
    (listener,) = await trio.open_tcp_listeners(0, host="127.0.0.1", backlog=512)
    return listener


def _port(listener: trio.SocketListener) -> int:
    return int(listener.socket.getsockname()[1])


async def test_a_burst_of_connections_is_accepted_in_batches_and_each_is_served() -> None:
    listener = await _listener()
    port = _port(listener)
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(150)]
    waits = 0
    real_accept = listener.accept

    async def counting_accept() -> trio.SocketStream:
        nonlocal waits
        waits += 1
        return await real_accept()

    listener.accept = counting_accept  # type: ignore[method-assign]
    served = 0
    all_served = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal served
        await stream.send_all(b"hi")
        served += 1
        if served == len(clients):
            all_served.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_listener, listener, handler)
        await all_served.wait()
        nursery.cancel_scope.cancel()
    for client in clients:
        assert client.recv(2) == b"hi"
        client.close()
    # One accept that waited per batch of MAX_ACCEPT_BATCH, not one per connection.
    assert waits <= len(clients) // MAX_ACCEPT_BATCH + 2


async def test_the_listening_socket_is_closed_with_the_loop() -> None:
    listener = await _listener()
    port = _port(listener)

    async def handler(stream: trio.SocketStream) -> None:
        await stream.send_all(b"hi")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_listener, listener, handler)
        async with await trio.open_tcp_stream("127.0.0.1", port) as client:
            assert await client.receive_some(2) == b"hi"
        nursery.cancel_scope.cancel()
    # The batch reader's duplicate descriptor went too: nothing listens on the port any more.
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


async def test_each_connection_is_closed_once_even_when_its_handler_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener = await _listener()
    port = _port(listener)
    done = trio.Event()

    async def handler(stream: trio.SocketStream) -> None:
        done.set()
        raise RuntimeError("handler bug")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_listener, listener, handler)
        client = await trio.open_tcp_stream("127.0.0.1", port)
        await done.wait()
        assert await client.receive_some(10) == b""  # closed by the loop
        await client.aclose()
        nursery.cancel_scope.cancel()
    assert "connection handler failed" in caplog.text


class _FlakyListener(trio.abc.Listener[Any]):
    """Accept fails with ``errno`` once, then yields one stream, then waits forever."""

    def __init__(self, error: int) -> None:
        self.error: int | None = error
        self.calls = 0

    async def accept(self) -> Any:
        self.calls += 1
        if self.error is not None:
            code, self.error = self.error, None
            raise OSError(code, "accept failed")
        if self.calls == 2:
            return trio.testing.MemorySendStream()
        await trio.sleep_forever()

    async def aclose(self) -> None:
        pass


async def test_running_out_of_descriptors_is_logged_and_retried(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = _FlakyListener(errno.EMFILE)
    handled = trio.Event()

    async def handler(stream: Any) -> None:
        handled.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_listener, flaky, handler)
        await handled.wait()
        nursery.cancel_scope.cancel()
    assert "accept failed (Too many open files); retrying" in caplog.text


async def _ignore(stream: Any) -> None:
    await trio.lowlevel.checkpoint()


async def test_any_other_accept_error_ends_the_loop() -> None:
    with pytest.raises(ExceptionGroup) as raised:
        await serve_listener(_FlakyListener(errno.EBADF), _ignore)
    assert raised.group_contains(OSError, match="accept failed")
