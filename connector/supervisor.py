"""Keeps a connector's HA connections to the edge up, and drains them on shutdown.

Each of the N connections (default 4, spread round-robin over the configured edges) runs its
own loop: dial, upgrade with the run token, register, serve streams until the connection ends,
then wait a backed-off, jittered delay and dial again. Errors fall in two kinds:

    permanent   HTTP 401 at the upgrade, or a REFUSED marked permanent (tunnel deleted, bad
                secret, unsupported version): retrying cannot help, so every connection stops
                and the process exits with EXIT_PERMANENT (3); systemd's
                RestartPreventExitStatus keeps it from restarting in a loop.
    retryable   everything else (edge restarting, network down, heartbeat lost): back off and
                dial again, for as long as it takes.

The backoff delay resets once a connection has stayed up for a stable period, so a connector
that lost its edge after a day reconnects in about a second rather than a minute.
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import trio

from connector.backoff import Backoff
from connector.config import RunSettings
from connector.origin import OriginDispatcher
from tunnel.auth import encode_run_token
from tunnel.errors import HandshakeError, HandshakeRefused, RegistrationRefused, TransportError
from tunnel.protocol import RegisterInfo, Role, TunnelConnection
from tunnel.session import SessionTiming, TunnelSession
from tunnel.transport import connect_websocket

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_PERMANENT = 3
DIAL_TIMEOUT = 10.0
PROTOCOL_VERSION = "tunnelgate/0.1"


@dataclass
class ConnectorState:
    """Live view of the connections, read by /ready and the metrics."""

    registered: dict[int, str] = field(default_factory=dict)  # conn index -> edge url
    sessions: dict[int, TunnelSession] = field(default_factory=dict)
    reconnects: int = 0
    first_registered: trio.Event = field(default_factory=trio.Event)
    draining: bool = False

    @property
    def ready_connections(self) -> int:
        return len(self.registered)


class PermanentRefusal(Exception):
    """The edge said retrying cannot help; carries its reason for the exit message."""


async def _dial(edge_url: str) -> tuple[trio.abc.Stream, str, str]:
    parts = urlsplit(edge_url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise PermanentRefusal(f"edge URL {edge_url!r} must be ws://HOST:PORT or wss://HOST:PORT")
    port = parts.port or (443 if parts.scheme == "wss" else 80)
    stream: trio.abc.Stream = await trio.open_tcp_stream(parts.hostname, port)
    if parts.scheme == "wss":
        import ssl

        ctx = ssl.create_default_context()
        tls = trio.SSLStream(stream, ctx, server_hostname=parts.hostname, https_compatible=True)
        await tls.do_handshake()
        stream = tls
    host = parts.netloc.rpartition("@")[2]
    return stream, host, parts.path or "/"


class Supervisor:
    def __init__(
        self,
        settings: RunSettings,
        *,
        rng: random.Random | None = None,
        on_ready: Callable[[ConnectorState], None] | None = None,
    ) -> None:
        self.settings = settings
        self.state = ConnectorState()
        self._rng = rng or random.Random()
        self._on_ready = on_ready
        self._dispatcher = OriginDispatcher(settings.ingress)
        self._token = encode_run_token(
            settings.credentials.tunnel_id, settings.credentials.secret, settings.edges[0]
        )
        self._permanent: str | None = None
        self._timing = SessionTiming()

    @property
    def permanent_error(self) -> str | None:
        return self._permanent

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> int:
        async with self._dispatcher, trio.open_nursery() as nursery:
            self._nursery = nursery
            for index in range(self.settings.ha_connections):
                edge = self.settings.edges[index % len(self.settings.edges)]
                nursery.start_soon(self._keep_connection, index, edge)
            task_status.started()
        return EXIT_PERMANENT if self._permanent else EXIT_OK

    async def drain(self, grace_period: float) -> None:
        """GoAway on every connection; wait for in-flight streams, at most grace_period."""
        self.state.draining = True
        sessions = list(self.state.sessions.values())
        for session in sessions:
            session.go_away()
        with trio.move_on_after(grace_period):
            for session in sessions:
                await session.wait_drained()
        self._nursery.cancel_scope.cancel()

    def stop(self) -> None:
        self._nursery.cancel_scope.cancel()

    async def _keep_connection(self, index: int, edge_url: str) -> None:
        backoff = Backoff(rng=self._rng)
        while not self.state.draining:
            started = trio.current_time()
            try:
                await self._connect_once(index, edge_url)
            except PermanentRefusal as refusal:
                self._permanent = str(refusal)
                log.error("tunnel refused permanently conn=%d edge=%s reason=%s",
                          index, edge_url, refusal)
                self._nursery.cancel_scope.cancel()
                return
            except HandshakeRefused as exc:
                log.warning("tunnel upgrade refused conn=%d edge=%s status=%d",
                            index, edge_url, exc.status_code)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                    trio.TooSlowError, TransportError, HandshakeError) as exc:
                log.warning("tunnel connection failed conn=%d edge=%s error=%s",
                            index, edge_url, exc or type(exc).__name__)
            except RegistrationRefused as exc:
                log.warning("tunnel registration refused conn=%d edge=%s code=%s",
                            index, edge_url, exc.code)
            finally:
                self.state.registered.pop(index, None)
                self.state.sessions.pop(index, None)
            if self.state.draining:
                return
            backoff.record_uptime(trio.current_time() - started)
            delay = backoff.next_delay()
            self.state.reconnects += 1
            log.info("tunnel reconnecting conn=%d edge=%s in=%.2fs", index, edge_url, delay)
            await trio.sleep(delay)

    async def _connect_once(self, index: int, edge_url: str) -> None:
        with trio.fail_after(DIAL_TIMEOUT):
            stream, host, path = await _dial(edge_url)
            try:
                transport = await connect_websocket(
                    stream, host=host, path=path,
                    headers=[("Authorization", f"Bearer {self._token}")],
                )
            except HandshakeRefused as exc:
                await stream.aclose()
                if exc.status_code == 401:
                    raise PermanentRefusal(
                        "the edge refused the tunnel credential (HTTP 401): the tunnel was "
                        "deleted or the credentials file is wrong"
                    ) from exc
                raise
        session = TunnelSession(
            transport,
            TunnelConnection(Role.CONNECTOR),
            handle_stream=self._dispatcher.serve_stream,
            timing=self._timing,
            label=f"conn={index} edge={edge_url}",
        )
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            try:
                with trio.fail_after(DIAL_TIMEOUT):
                    registered = await session.register(
                        RegisterInfo(
                            tunnel_id=self.settings.credentials.tunnel_id,
                            connector_id=self.settings.connector_id,
                            conn_index=index,
                            version=PROTOCOL_VERSION,
                        )
                    )
            except RegistrationRefused as refusal:
                if refusal.permanent:
                    raise PermanentRefusal(f"{refusal.code}: {refusal.message}") from refusal
                raise
            self.state.registered[index] = edge_url
            self.state.sessions[index] = session
            log.info("tunnel connection registered conn=%d edge=%s edge_id=%s connection=%s",
                     index, edge_url, registered.edge_id, registered.connection_id)
            if not self.state.first_registered.is_set():
                self.state.first_registered.set()
                if self._on_ready is not None:
                    self._on_ready(self.state)
            await session.wait_closed()
            nursery.cancel_scope.cancel()
            answer = session.refusal
            if answer is not None and answer.permanent:
                raise PermanentRefusal(f"{answer.code}: {answer.message}")


async def run_connector(
    settings: RunSettings, *, on_ready: Callable[[ConnectorState], None] | None = None
) -> int:
    """The `tunnelgate tunnel run` entry point: run until SIGTERM/SIGINT or a permanent refusal.

    The first signal drains (GoAway, in-flight streams get the grace period); a second one
    exits at once.
    """
    supervisor = Supervisor(settings, on_ready=on_ready)
    async with trio.open_nursery() as nursery:

        async def watch_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for _signum in signals:
                    if supervisor.state.draining:
                        supervisor.stop()
                        return
                    log.info("draining connections grace=%.0fs", settings.grace_period)
                    nursery.start_soon(supervisor.drain, settings.grace_period)

        nursery.start_soon(watch_signals)
        code = await supervisor.run()
        nursery.cancel_scope.cancel()
    if supervisor.permanent_error:
        log.error("connector stopped: %s", supervisor.permanent_error)
    return code
