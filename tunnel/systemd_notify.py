"""Tells systemd how the process is doing (the sd_notify protocol), without libsystemd.

systemd hands a ``Type=notify`` service the variable ``NOTIFY_SOCKET`` (a file path, or
``@name`` for a socket in the abstract namespace) and counts the unit as started only once
``READY=1`` arrives there. With ``WatchdogSec=`` it also sets ``WATCHDOG_USEC`` (and
``WATCHDOG_PID``) and restarts the service when ``WATCHDOG=1`` stops arriving in time;
``STOPPING=1`` tells it a drain has begun and ``STATUS=`` shows up in ``systemctl status``.
Outside systemd the variables are unset and every call here does nothing, so the daemons call
it unconditionally.

A watchdog ping is only worth something if it means "healthy": ``run_watchdog`` pings at half
the interval systemd asked for, and only after a health check passed (the daemons probe their
own ops listener over TCP, which also proves the event loop is turning). A wedged loop or a
dead listener stops the pings and systemd restarts the process.

Errors: sending never raises. A notification that cannot be delivered (systemd went away, the
socket's queue is full) is logged at debug level and dropped: a service must not fail because
its supervisor is not listening.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping

import trio

log = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[bool]]
PROBE_TIMEOUT = 5.0
MAX_STATUS_LENGTH = 512


def _socket_address(value: str) -> str | None:
    """The address to send to: a path as is, ``@name`` as an abstract-namespace name."""
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _watchdog_interval(environ: Mapping[str, str], pid: int) -> float | None:
    raw = environ.get("WATCHDOG_USEC", "")
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid and watchdog_pid != str(pid):
        # The watchdog belongs to another process (our parent, say); pinging it would lie.
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 1_000_000 / 2


class SystemdNotifier:
    """Sends sd_notify messages; every method is a no-op when systemd did not ask for them."""

    def __init__(self, socket_address: str | None = None, *,
                 watchdog_interval: float | None = None) -> None:
        self._address = _socket_address(socket_address) if socket_address else None
        if socket_address and self._address is None:
            log.warning("NOTIFY_SOCKET=%r is neither an absolute path nor @abstract; ignoring it",
                        socket_address)
        self.watchdog_interval = watchdog_interval if self._address is not None else None
        """Seconds between watchdog pings (half of WatchdogSec=), None without a watchdog."""

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, *,
                         pid: int | None = None) -> SystemdNotifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET") or None,
                   watchdog_interval=_watchdog_interval(env, os.getpid() if pid is None else pid))

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True if it was handed to the socket."""
        if self._address is None or not assignments:
            return False
        payload = "\n".join(assignments).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.setblocking(False)
                sock.sendto(payload, self._address)
        except OSError as exc:
            log.debug("sd_notify %s not delivered: %s", assignments[0], exc)
            return False
        return True

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *self._status_line(status))

    def stopping(self, status: str = "") -> None:
        self.notify("STOPPING=1", *self._status_line(status))

    def reloading(self, status: str = "") -> None:
        self.notify("RELOADING=1", *self._status_line(status))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify(*self._status_line(text))

    @staticmethod
    def _status_line(text: str) -> tuple[str, ...]:
        if not text:
            return ()
        flat = " ".join(text.split())[:MAX_STATUS_LENGTH]
        return (f"STATUS={flat}",)


async def run_watchdog(notifier: SystemdNotifier, health_check: HealthCheck) -> None:
    """Ping the watchdog at its interval while ``health_check`` passes; return at once without
    a watchdog. A failing or slow check withholds the ping, it does not stop the loop: the
    process may recover before systemd's deadline."""
    interval = notifier.watchdog_interval
    if interval is None:
        return
    while True:
        healthy = False
        with trio.move_on_after(interval):
            try:
                healthy = await health_check()
            except Exception as exc:
                log.warning("health check raised %s: %s", type(exc).__name__, exc)
        if healthy:
            notifier.watchdog()
        else:
            log.warning("health check failed; withholding the watchdog ping")
        await trio.sleep(interval)


async def event_loop_turns() -> bool:
    """The weakest health check: the loop scheduled this task, so it is not wedged."""
    await trio.lowlevel.checkpoint()
    return True


def http_health_check(address: str, path: str = "/healthz", *,
                      timeout: float = PROBE_TIMEOUT) -> HealthCheck:
    """A check that asks the process's own ops listener (``HOST:PORT``) for ``path`` and
    passes on HTTP 200: the listener accepts, a handler runs, and the loop answers."""
    host, _, port_text = address.rpartition(":")
    host = host.strip("[]")
    port = int(port_text)
    request = (f"GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n"
               "User-Agent: tunnelgate-watchdog\r\n\r\n").encode()

    async def check() -> bool:
        received = b""
        with trio.move_on_after(timeout):
            try:
                stream = await trio.open_tcp_stream(host, port)
                async with stream:
                    await stream.send_all(request)
                    while b"\r\n" not in received and len(received) < 1024:
                        chunk = await stream.receive_some(1024)
                        if not chunk:
                            break
                        received += chunk
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                log.warning("health check of %s failed: %s", address, exc)
                return False
            status_line = received.partition(b"\r\n")[0].split()
            return len(status_line) >= 2 and status_line[1] == b"200"
        log.warning("health check of %s timed out after %gs", address, timeout)
        return False

    return check


__all__ = [
    "HealthCheck",
    "SystemdNotifier",
    "event_loop_turns",
    "http_health_check",
    "run_watchdog",
]
