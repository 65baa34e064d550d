"""Keeps a connector's HA connections to the edge up, and drains them on shutdown.

Each of the N connections (default 4, spread round-robin over the configured edges) runs its
own loop: dial, upgrade with the run token, register, serve streams until the connection ends,
then wait a backed-off, jittered delay and dial again, the next of the configured edges each
time, so a lost edge's connections move to the others. Errors fall in two kinds:

    permanent   HTTP 401 at the upgrade, or a REFUSED marked permanent (tunnel deleted, bad
                secret, unsupported version): retrying cannot help, so every connection stops
                and the process exits with EXIT_PERMANENT (3); systemd's
                RestartPreventExitStatus keeps it from restarting in a loop.
    retryable   everything else (edge restarting, network down, heartbeat lost): back off and
                dial again, for as long as it takes.

The backoff delay resets once a connection has stayed up for a stable period, so a connector
that lost its edge after a day reconnects in about a second rather than a minute.

Signals (``run_connector``): SIGTERM/SIGINT drain (STOPPING=1, GoAway on every connection,
in-flight streams get the grace period, exit 0); a second one exits at once. SIGHUP re-reads
the ingress rules from the config file: the new table is validated in full, then swapped in
with one assignment (a stream already matched keeps its rule); on any error the running rules
stay and the log says why.

systemd: READY=1 after the first registered connection, WATCHDOG=1 after each passing health
check (the ops listener's /healthz when ``--metrics`` is set, else the event loop turning),
STATUS= with the number of registered connections.

Metrics exist only when something serves them (``--metrics``): without the ops listener nobody
could read them, so the streams are not wrapped for counting and prometheus_client is never
imported, which keeps an idle connector small.
"""

from __future__ import annotations

import logging
import random
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import trio

from connector.backoff import Backoff
from connector.config import RunSettings, load_connector_config
from connector.errors import ConfigError, ConnectorError
from connector.ingress import IngressTable
from connector.origin import OriginDispatcher, TunnelStreamLike
from tunnel.auth import encode_run_token
from tunnel.errors import HandshakeError, HandshakeRefused, RegistrationRefused, TransportError
from tunnel.protocol import RegisterInfo, Role, TunnelConnection
from tunnel.session import SessionTiming, StreamHandler, TunnelSession
from tunnel.systemd_notify import (
    HealthCheck,
    SystemdNotifier,
    event_loop_turns,
    http_health_check,
    run_watchdog,
)
from tunnel.websocket_handshake import connect_websocket

if TYPE_CHECKING:
    from connector.metrics import ConnectorMetrics

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


@dataclass(frozen=True)
class ReloadResult:
    """What a SIGHUP did: the rules now in force, and why a reload was refused."""

    ok: bool
    rules: int
    error: str = ""


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
        metrics: ConnectorMetrics | None = None,
        notifier: SystemdNotifier | None = None,
    ) -> None:
        self.settings = settings
        self.state = ConnectorState()
        self._rng = rng or random.Random()
        self._on_ready = on_ready
        self.metrics = metrics
        if metrics is not None:
            metrics.observe_state(self.state)
        self._notifier = notifier or SystemdNotifier()
        self._dispatcher = OriginDispatcher(settings.ingress)
        self._token = encode_run_token(
            settings.credentials.tunnel_id, settings.credentials.secret, settings.edges[0]
        )
        self._permanent: str | None = None
        self._timing = SessionTiming()

    @property
    def permanent_error(self) -> str | None:
        return self._permanent

    @property
    def ingress(self) -> IngressTable:
        return self._dispatcher.table

    def replace_ingress(self, table: IngressTable) -> None:
        """Swap the rules in one assignment: streams already dispatched keep their rule."""
        self._dispatcher.table = table

    def _stream_handler(self) -> StreamHandler:
        """The dispatcher itself, behind a counting wrapper only when metrics are kept."""
        metrics, serve = self.metrics, self._dispatcher.serve_stream
        if metrics is None:
            return serve

        async def serve_metered(stream: TunnelStreamLike) -> None:
            await serve(metrics.metered(stream))

        return serve_metered

    def _count_error(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.error(kind)

    def _report_connections(self) -> None:
        self._notifier.status(f"{self.state.ready_connections} of "
                              f"{self.settings.ha_connections} tunnel connections registered")

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
        self._notifier.stopping(f"draining {len(sessions)} tunnel connections")
        for session in sessions:
            session.go_away()
        with trio.move_on_after(grace_period) as grace:
            for session in sessions:
                # Closed, not just drained: the last frames of the last stream are flushed
                # and the WebSocket closed cleanly before anything is cancelled.
                await session.wait_closed()
        if grace.cancelled_caught:
            log.warning("grace period over; cutting %d streams",
                        sum(session.open_streams for session in sessions))
        self._nursery.cancel_scope.cancel()

    def stop(self) -> None:
        self._nursery.cancel_scope.cancel()

    async def _keep_connection(self, index: int, first_edge: str) -> None:
        # With several edges, every reconnect goes to the next one: a connection whose edge
        # was lost is replaced on another edge instead of waiting for the lost one to return.
        edges = self.settings.edges
        turn = edges.index(first_edge)
        backoff = Backoff(rng=self._rng)
        while not self.state.draining:
            edge_url = edges[turn % len(edges)]
            turn += 1
            started = trio.current_time()
            try:
                await self._connect_once(index, edge_url)
            except PermanentRefusal as refusal:
                self._count_error("permanent_refusal")
                self._permanent = str(refusal)
                log.error("tunnel refused permanently conn=%d edge=%s reason=%s",
                          index, edge_url, refusal)
                self._nursery.cancel_scope.cancel()
                return
            except HandshakeRefused as exc:
                self._count_error("handshake_refused")
                log.warning("tunnel upgrade refused conn=%d edge=%s status=%d",
                            index, edge_url, exc.status_code)
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError,
                    trio.TooSlowError, TransportError, HandshakeError) as exc:
                self._count_error("connect_failed")
                log.warning("tunnel connection failed conn=%d edge=%s error=%s",
                            index, edge_url, exc or type(exc).__name__)
            except RegistrationRefused as exc:
                self._count_error("registration_refused")
                log.warning("tunnel registration refused conn=%d edge=%s code=%s",
                            index, edge_url, exc.code)
            finally:
                if self.state.registered.pop(index, None) is not None:
                    self._report_connections()
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
            handle_stream=self._stream_handler(),
            timing=self._timing,
            label=f"conn={index} edge={edge_url}",
        )
        # Errors leave the nursery unwrapped (not as an ExceptionGroup), so that
        # _keep_connection can tell a permanent refusal from a retryable failure.
        failure: Exception | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(session.run)
            try:
                await self._register_and_serve(index, edge_url, session)
            except Exception as error:
                failure = error
            nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure

    async def _register_and_serve(self, index: int, edge_url: str,
                                  session: TunnelSession) -> None:
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
        self._report_connections()
        log.info("tunnel connection registered conn=%d edge=%s edge_id=%s connection=%s",
                 index, edge_url, registered.edge_id, registered.connection_id)
        if not self.state.first_registered.is_set():
            self.state.first_registered.set()
            self._notifier.ready(f"tunnel {self.settings.credentials.tunnel_id} connected")
            if self._on_ready is not None:
                self._on_ready(self.state)
        await session.wait_closed()
        answer = session.refusal
        if answer is not None and answer.permanent:
            raise PermanentRefusal(f"{answer.code}: {answer.message}")


async def reload_ingress(supervisor: Supervisor, config_path: Path | None) -> ReloadResult:
    """Re-read the ingress rules from ``config_path``; swap them in only if all of them are
    valid, otherwise keep the running ones and say why."""
    if config_path is None:
        error = "no config file to reload: the rules came from --url"
    else:
        try:
            config = await trio.to_thread.run_sync(load_connector_config, config_path)
            if config.ingress is None:
                raise ConfigError("ingress", "the file has no [[ingress]] rules",
                                  source=str(config_path))
        except ConnectorError as exc:
            source = getattr(exc, "source", "")
            error = f"{source}: {exc}" if source else str(exc)
        else:
            supervisor.replace_ingress(config.ingress)
            if supervisor.metrics is not None:
                supervisor.metrics.config_reload("ok")
            log.info("ingress rules reloaded path=%s rules=%d", config_path, len(config.ingress))
            return ReloadResult(True, len(config.ingress))
    if supervisor.metrics is not None:
        supervisor.metrics.config_reload("error")
    log.error("ingress reload failed, keeping the current %d rules: %s",
              len(supervisor.ingress), error)
    return ReloadResult(False, len(supervisor.ingress), error)


async def run_connector(
    settings: RunSettings,
    *,
    on_ready: Callable[[ConnectorState], None] | None = None,
    on_metrics: Callable[[str], None] | None = None,
    on_reload: Callable[[ReloadResult], None] | None = None,
    config_path: Path | None = None,
    notifier: SystemdNotifier | None = None,
) -> int:
    """The `tunnelgate tunnel run` entry point: run until SIGTERM/SIGINT or a permanent refusal.

    The first signal drains (GoAway, in-flight streams get the grace period); a second one
    exits at once. SIGHUP reloads the ingress rules from ``config_path``. With
    ``settings.metrics`` the ops listener serves /metrics, /ready and /healthz there;
    ``on_metrics`` learns its bound address.
    """
    notifier = notifier or SystemdNotifier()
    ops_address = settings.metrics
    metrics: ConnectorMetrics | None = None
    if ops_address is not None:
        from connector.metrics import ConnectorMetrics

        metrics = ConnectorMetrics()
    supervisor = Supervisor(settings, on_ready=on_ready, notifier=notifier, metrics=metrics)
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async with trio.open_nursery() as nursery:
            health: HealthCheck = event_loop_turns
            if ops_address is not None and metrics is not None:
                from connector.ops import (
                    OpsEndpoints,
                    listener_address,
                    open_ops_listener,
                    serve_ops,
                )

                listener = await open_ops_listener(ops_address)
                address = listener_address(listener)
                endpoints = OpsEndpoints(supervisor.state, metrics, settings.connector_id)
                nursery.start_soon(serve_ops, listener, endpoints)
                health = http_health_check(address)
                log.info("ops listener serving /metrics /ready /healthz address=%s", address)
                if on_metrics is not None:
                    on_metrics(address)
            nursery.start_soon(run_watchdog, notifier, health)

            async def watch_signals() -> None:
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        result = await reload_ingress(supervisor, config_path)
                        if on_reload is not None:
                            on_reload(result)
                        continue
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
