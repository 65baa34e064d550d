"""sd_notify in-process: what reaches a real datagram socket, and when the watchdog pings."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from tunnel.systemd_notify import (
    SystemdNotifier,
    event_loop_turns,
    http_health_check,
    run_watchdog,
)


@pytest.fixture
def datagram_socket() -> Iterator[tuple[socket.socket, str]]:
    # AF_UNIX paths are limited to 107 bytes, which a deep tmp_path can exceed: use a short
    # private directory instead of skipping.
    with tempfile.TemporaryDirectory(prefix="tg-") as short_dir:
        path = Path(short_dir) / "n.sock"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(5)
            yield sock, str(path)


def fields(data: bytes) -> dict[str, str]:
    return dict(line.split("=", 1) for line in data.decode().splitlines())


def test_ready_and_status_reach_the_socket_as_one_datagram(
    datagram_socket: tuple[socket.socket, str]
) -> None:
    sock, path = datagram_socket
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    notifier.ready("serving\nedge   one")
    assert fields(sock.recv(4096)) == {"READY": "1", "STATUS": "serving edge one"}
    notifier.stopping()
    assert fields(sock.recv(4096)) == {"STOPPING": "1"}
    notifier.watchdog()
    assert fields(sock.recv(4096)) == {"WATCHDOG": "1"}


def test_abstract_namespace_socket_is_addressed_with_at() -> None:
    name = f"tunnelgate-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        SystemdNotifier.from_environment({"NOTIFY_SOCKET": "@" + name}).ready()
        assert fields(sock.recv(4096)) == {"READY": "1"}


def test_without_notify_socket_every_call_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_environment({"WATCHDOG_USEC": "1000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert notifier.notify("READY=1") is False


def test_relative_notify_socket_is_ignored() -> None:
    assert not SystemdNotifier.from_environment({"NOTIFY_SOCKET": "relative.sock"}).enabled


def test_a_gone_socket_does_not_raise(tmp_path: Path) -> None:
    notifier = SystemdNotifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert notifier.notify("READY=1") is False


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "4000000"}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "OWN"}, 2.0),
        ({"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_pid(
    environ: dict[str, str], interval: float | None
) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify", **environ}
    if env.get("WATCHDOG_PID") == "OWN":
        env["WATCHDOG_PID"] = str(os.getpid())
    assert SystemdNotifier.from_environment(env).watchdog_interval == interval


class CountingNotifier(SystemdNotifier):
    def __init__(self, interval: float) -> None:
        super().__init__("/run/test.sock", watchdog_interval=interval)
        self.sent: list[tuple[float, tuple[str, ...]]] = []

    def notify(self, *assignments: str) -> bool:
        self.sent.append((trio.current_time(), assignments))
        return True


async def test_watchdog_pings_only_after_a_passing_health_check(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    notifier = CountingNotifier(interval=1.0)
    healthy = [True, True, False, True, False, False, True]
    checks = 0

    async def check() -> bool:
        nonlocal checks
        checks += 1
        return healthy[(checks - 1) % len(healthy)]

    with trio.move_on_after(len(healthy) - 0.5):
        await run_watchdog(notifier, check)
    assert checks == len(healthy)
    assert [when for when, _ in notifier.sent] == [0.0, 1.0, 3.0, 6.0]
    assert all(fields_ == ("WATCHDOG=1",) for _, fields_ in notifier.sent)


async def test_a_hanging_health_check_withholds_the_ping(
    mock_clock: trio.testing.MockClock,
) -> None:
    mock_clock.autojump_threshold = 0
    notifier = CountingNotifier(interval=2.0)

    async def hangs() -> bool:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    with trio.move_on_after(10):
        await run_watchdog(notifier, hangs)
    assert notifier.sent == []


async def test_watchdog_returns_at_once_without_a_watchdog() -> None:
    with trio.fail_after(1):
        await run_watchdog(SystemdNotifier(), event_loop_turns)


async def serve_status(status: int, *, task_status: trio.TaskStatus[str]) -> None:
    async def answer(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.receive_some(4096)
            await stream.send_all(f"HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n".encode())

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, answer, listeners)
        task_status.started(f"127.0.0.1:{port}")


async def test_http_health_check_passes_only_on_200(nursery: trio.Nursery) -> None:
    healthy = await nursery.start(serve_status, 200)
    unhealthy = await nursery.start(serve_status, 503)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = f"127.0.0.1:{probe.getsockname()[1]}"
    assert await http_health_check(healthy)() is True
    assert await http_health_check(unhealthy)() is False
    assert await http_health_check(closed)() is False
