"""The end user's side of ``tunnelgate access``: TCP through the edge, and cached app tokens.

A TCP application is reached by opening a WebSocket to the edge for its hostname, marked with
``Tunnelgate-Stream: tcp`` (``edge.tcp_access``), and relaying bytes: the local side is either
stdin/stdout (an SSH ``ProxyCommand``) or each connection accepted on a local listener. The
upgrade carries the caller's credentials: a service token (``CF-Access-Client-Id`` /
``CF-Access-Client-Secret``) or the app token ``tunnelgate access login`` cached, sent as
``cf-access-token``. A refusal (401/403) ends the command with the edge's reason.

WebSocket has no half-close, so when the local side ends first the relay keeps delivering what
the remote side still sends until the edge closes the WebSocket.

Errors::

    AccessClientError            base; .exit_code for the CLI
     +-- AccessRefused           the edge answered the upgrade with a non-101 status (permanent)
     +-- EdgeUnreachable         no connection to the edge (retryable)
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import trio

from tunnel.errors import HandshakeError, HandshakeRefused, TransportClosed
from tunnel.transport import WebSocketTransport
from tunnel.websocket_handshake import connect_websocket

__all__ = [
    "AccessClientError",
    "AccessRefused",
    "EdgeTarget",
    "EdgeUnreachable",
    "load_app_token",
    "open_tcp_websocket",
    "relay_stdio",
    "relay_websocket",
    "save_app_token",
    "serve_local_listener",
    "token_path",
]

log = logging.getLogger(__name__)

CHUNK = 65536
TCP_STREAM_HEADER = "Tunnelgate-Stream"


class AccessClientError(Exception):
    exit_code = 1


class AccessRefused(AccessClientError):
    """The edge refused the stream: the credentials or the policy say no. Retrying won't help."""

    exit_code = 3

    def __init__(self, status: int, body: bytes) -> None:
        self.status = status
        self.body = body
        reason = body.decode("utf-8", "replace").strip()[:300]
        super().__init__(f"the edge refused access ({status}): {reason}")


class EdgeUnreachable(AccessClientError):
    exit_code = 2


@dataclass(frozen=True)
class EdgeTarget:
    """Where and as whom to connect: the app's hostname, the edge's address (``https://HOST``
    unless an explicit URL points elsewhere, e.g. a loopback edge), and credential headers."""

    hostname: str
    edge_url: str | None = None
    service_token_id: str | None = None
    service_token_secret: str | None = None
    app_token: str | None = None
    ca_file: Path | None = None

    def headers(self) -> list[tuple[str, str]]:
        headers = [(TCP_STREAM_HEADER, "tcp")]
        if self.service_token_id is not None and self.service_token_secret is not None:
            headers += [("CF-Access-Client-Id", self.service_token_id),
                        ("CF-Access-Client-Secret", self.service_token_secret)]
        elif self.app_token is not None:
            headers.append(("cf-access-token", self.app_token))
        return headers

    def address(self) -> tuple[str, int, bool]:
        """Host, port and whether TLS is used to reach the edge."""
        url = urlsplit(self.edge_url or f"https://{self.hostname}")
        tls = url.scheme in ("https", "wss")
        if url.scheme not in ("http", "https", "ws", "wss") or not url.hostname:
            raise AccessClientError(f"not an edge URL: {self.edge_url!r}")
        return url.hostname, url.port or (443 if tls else 80), tls


async def open_tcp_websocket(target: EdgeTarget) -> WebSocketTransport:
    """The WebSocket that carries one TCP connection; raises AccessRefused or EdgeUnreachable."""
    host, port, tls = target.address()
    try:
        stream: trio.abc.Stream
        stream = await trio.open_tcp_stream(host, port)
        if tls:
            context = ssl.create_default_context(
                cafile=str(target.ca_file) if target.ca_file else None)
            # The certificate must name the app's host, not the address dialled.
            stream = trio.SSLStream(stream, context, server_hostname=target.hostname,
                                    https_compatible=True)
    except OSError as error:
        raise EdgeUnreachable(f"cannot reach the edge at {host}:{port}: {error}") from None
    try:
        return await connect_websocket(stream, host=target.hostname, path="/",
                                       headers=target.headers())
    except HandshakeRefused as refused:
        await stream.aclose()
        raise AccessRefused(refused.status_code, refused.body) from None
    except HandshakeError as error:
        await stream.aclose()
        raise EdgeUnreachable(f"the WebSocket upgrade failed: {error}") from None


async def relay_websocket(
    websocket: WebSocketTransport, receive: trio.abc.ReceiveStream, send: trio.abc.SendStream
) -> None:
    """Copy ``receive`` into the WebSocket and the WebSocket's payload into ``send`` until the
    remote side ends (the local side ending alone only stops that direction)."""

    async def local_to_remote() -> None:
        try:
            while chunk := await receive.receive_some(CHUNK):
                await websocket.send_message(chunk)
        except (TransportClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            nursery.cancel_scope.cancel()

    async def remote_to_local() -> None:
        try:
            while True:
                data = await websocket.receive_data()
                if data:
                    await send.send_all(bytes(data))
        except (TransportClosed, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(local_to_remote)
            nursery.start_soon(remote_to_local)
    finally:
        with trio.CancelScope(shield=True):
            await websocket.aclose()


async def relay_stdio(target: EdgeTarget) -> None:
    """One TCP connection on stdin/stdout: the SSH ``ProxyCommand`` mode."""
    websocket = await open_tcp_websocket(target)
    stdin = trio.lowlevel.FdStream(os.dup(0))
    stdout = trio.lowlevel.FdStream(os.dup(1))
    async with stdin, stdout:
        await relay_websocket(websocket, stdin, stdout)


async def serve_local_listener(
    target: EdgeTarget,
    listen_host: str,
    listen_port: int,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Accept local connections and carry each in its own WebSocket; reports the bound port."""
    listeners = await trio.open_tcp_listeners(listen_port, host=listen_host)

    async def serve_one(local: trio.SocketStream) -> None:
        async with local:
            try:
                websocket = await open_tcp_websocket(target)
            except AccessClientError as error:
                log.warning("connection to %s refused: %s", target.hostname, error)
                return
            await relay_websocket(websocket, local, local)

    bound = listeners[0].socket.getsockname()[1]
    log.info("listening on %s:%d for %s", listen_host, bound, target.hostname)
    async with trio.open_nursery() as nursery:
        task_status.started(bound)
        await trio.serve_listeners(serve_one, listeners, handler_nursery=nursery)


# -- cached app tokens ---------------------------------------------------------------------

def tokens_dir(home: Path | None = None) -> Path:
    return (home or Path.home()) / ".tunnelgate" / "tokens"


def token_path(hostname: str, home: Path | None = None) -> Path:
    """``~/.tunnelgate/tokens/<host>.jwt``; the host is checked so it cannot name another
    file."""
    host = hostname.strip().lower().rstrip(".")
    if not host or any(ch in host for ch in "/\\\0") or host.startswith("."):
        raise AccessClientError(f"not a hostname: {hostname!r}")
    return tokens_dir(home) / f"{host}.jwt"


def save_app_token(hostname: str, token: str, home: Path | None = None) -> Path:
    """Write the token readable by its owner only (the file is created 0600, never widened)."""
    path = token_path(hostname, home)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as file:
        os.fchmod(file.fileno(), 0o600)
        file.write(token.strip() + "\n")
    return path


def load_app_token(hostname: str, home: Path | None = None) -> str | None:
    path = token_path(hostname, home)
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return text or None


def read_secret_file(path: Path) -> str:
    return path.read_text().strip()


def hostname_of(url_or_host: str) -> str:
    """The host of ``https://host/path`` or of a bare ``host``."""
    text = url_or_host if "://" in url_or_host else f"https://{url_or_host}"
    host = urlsplit(text).hostname
    if not host:
        raise AccessClientError(f"no hostname in {url_or_host!r}")
    return host


def curl_arguments(url: str, extra: Sequence[str]) -> list[str]:
    """``curl`` reading the app token header from stdin (``-H @-``), so the token never
    appears in the process list."""
    return ["curl", "-H", "@-", *extra, url]
