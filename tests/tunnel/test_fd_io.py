"""The descriptor reads and writes under the edge's client connections, the connector's origin
connections and the tunnel transport: real sockets, no sleeps."""

from __future__ import annotations

import os
import socket
import struct

import pytest
import trio
import trio.testing

from tunnel import fd_io
from tunnel.fd_io import receive_from_fd, write_without_waiting


def nonblocking_pair() -> tuple[socket.socket, socket.socket]:
    left, right = socket.socketpair()
    left.setblocking(False)
    return left, right


async def test_bytes_already_there_are_returned_and_a_burst_of_them_yields() -> None:
    left, right = nonblocking_pair()
    with left, right:
        right.sendall(b"x" * 1000)
        # Data that was waiting is a cancellation point, and every few such reads also a
        # scheduling point, so a peer that keeps the buffer full cannot hold the loop.
        with trio.testing.assert_checkpoints():
            for _ in range(fd_io.READS_BETWEEN_YIELDS):
                assert await receive_from_fd(left.fileno(), 10) == b"x" * 10
        with trio.CancelScope() as scope:
            scope.cancel()
            await receive_from_fd(left.fileno(), 10)
        assert scope.cancelled_caught


async def test_a_read_waits_for_the_peer_and_then_returns_what_it_sent() -> None:
    left, right = nonblocking_pair()
    with left, right:
        got: list[bytes] = []
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                got.append(await receive_from_fd(left.fileno(), 100))

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # nothing was there: the reader is waiting, not spinning
            right.sendall(b"later")
        assert got == [b"later"]


async def test_the_end_of_the_stream_reads_as_empty_and_a_reset_as_oserror() -> None:
    left, right = nonblocking_pair()
    with left:
        right.close()
        assert await receive_from_fd(left.fileno(), 100) == b""
    first = socket.socket()
    with socket.create_server(("127.0.0.1", 0)) as server:
        first.connect(server.getsockname())
        peer, _ = server.accept()
        with first, peer:
            first.setblocking(False)
            # SO_LINGER 0: the close sends a reset instead of a FIN.
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            peer.close()
            with pytest.raises(ConnectionResetError):
                await receive_from_fd(first.fileno(), 100)


async def test_closing_the_socket_wakes_a_waiting_read() -> None:
    left, right = socket.socketpair()
    stream = trio.SocketStream(trio.socket.from_stdlib_socket(left))
    with right:
        async with trio.open_nursery() as nursery:
            failures: list[BaseException] = []

            async def reader() -> None:
                try:
                    await receive_from_fd(stream.socket.fileno(), 100)
                except trio.ClosedResourceError as error:
                    failures.append(error)

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await stream.aclose()
        assert len(failures) == 1


def test_a_write_takes_what_the_buffer_holds_and_a_full_buffer_writes_nothing() -> None:
    left, right = nonblocking_pair()
    with left, right:
        left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = b"x" * 1_000_000
        written = write_without_waiting(left.fileno(), data)
        assert 0 < written < len(data)
        while write_without_waiting(left.fileno(), data):  # fill whatever room is left
            pass
        assert write_without_waiting(left.fileno(), data) == 0
        right.close()
        with pytest.raises(BrokenPipeError):  # the peer is gone
            write_without_waiting(left.fileno(), b"y")


async def test_a_socket_closed_unwaited_frees_its_descriptor_for_the_next_one() -> None:
    left, right = nonblocking_pair()
    closing = trio.socket.from_stdlib_socket(left)
    with right:
        # A read that waited leaves the descriptor in trio's epoll set (one-shot, disarmed).
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_from_fd, closing.fileno(), 10)
            await trio.testing.wait_all_tasks_blocked()
            right.sendall(b"x")
        number = closing.fileno()
        fd_io.close_unwaited(closing)
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(number)
        assert closing.fileno() == -1
        # The kernel reuses the number; the new socket's reads must wait and wake normally, and
        # closing the old trio socket again must not touch the new one.
        reused, peer = nonblocking_pair()
        with reused, peer:
            assert number in (reused.fileno(), peer.fileno())
            reader = reused if reused.fileno() == number else peer
            writer = peer if reader is reused else reused
            writer.setblocking(True)
            closing.close()
            os.fstat(number)  # still open
            got: list[bytes] = []
            async with trio.open_nursery() as nursery:

                async def read() -> None:
                    reader.setblocking(False)
                    got.append(await receive_from_fd(reader.fileno(), 10))

                nursery.start_soon(read)
                await trio.testing.wait_all_tasks_blocked()
                writer.sendall(b"again")
            assert got == [b"again"]
