"""The internal hop: forwarding a request to the edge that holds its tunnel's connections.

With several edges behind DNS or a load balancer, a visitor can reach an edge that holds no
connection of the tunnel its host is routed to. That edge has already done everything a request
needs (canonical host and path, header hygiene, Access) and built the stream head a connector
would receive. It sends that head to an edge that holds a connection (known from the registry,
:mod:`edge.cluster`) as one HTTP/1.1 request to the peer's internal listener:

    <METHOD> <target> HTTP/1.1
    Host: <canonical host>
    Tunnelgate-Hop: base64url(JSON {"tunnel_id", "head", "edge", "ts", "nonce"})
    Tunnelgate-Hop-Signature: hex HMAC-SHA256(cluster secret, the Tunnelgate-Hop value)
    <the request body, chunked>

The receiving edge trusts nothing in the request but the signed envelope: it checks the HMAC in
constant time, the age (``MAX_SKEW``) and that the nonce was not seen before, then opens a
stream with the envelope's head on one of its own connections. It does not run Access again:
the head carries the identity the first edge verified, and the HMAC is what makes that safe.
It never forwards further, so a request crosses at most one hop. The body is not covered by
the signature; keep the internal listener on a private network (or a TLS-terminating tunnel).

Errors::

    EdgeError (edge.errors)
    └── HopRefused      401 hop_unauthenticated / 400 hop_invalid: the envelope is missing,
                        forged, stale or replayed; the request is refused, never served
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import select
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import h11
import trio

from edge.errors import EdgeError
from edge.http11 import IncomingRequest, RequestBody, ResponseWriter

__all__ = [
    "HOP_HEADER",
    "HOP_SIGNATURE_HEADER",
    "ForwardedRequestHandler",
    "HopAuthenticator",
    "HopClient",
    "HopRefused",
    "load_cluster_secret",
]

log = logging.getLogger(__name__)

HOP_HEADER = b"tunnelgate-hop"
HOP_SIGNATURE_HEADER = b"tunnelgate-hop-signature"
MAX_SKEW = 30.0
MIN_SECRET_BYTES = 32
RELAY_CHUNK = 65536
CONNECT_TIMEOUT = 3.0
_HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te",
     b"trailer", b"upgrade"}
)

Head = dict[str, Any]
ServeHead = Callable[[IncomingRequest, RequestBody, ResponseWriter, str, Head], Awaitable[None]]


class Peer(Protocol):
    """An edge to forward to (``edge.cluster.PeerEdge``)."""

    @property
    def edge_id(self) -> str: ...

    @property
    def internal_url(self) -> str: ...


class HopRefused(EdgeError):
    code = "hop_unauthenticated"
    status = 401


def load_cluster_secret(path: Path) -> bytes:
    """The shared secret of the hop: the same file on every edge, at least 32 bytes."""
    try:
        secret = path.read_bytes().strip()
    except OSError as exc:
        raise EdgeError(
            f"cannot read the cluster secret {path}: {exc.strerror or exc}",
            hint="cluster.secret_file must name a file readable by the edge (mode 0600)",
        ) from None
    if len(secret) < MIN_SECRET_BYTES:
        raise EdgeError(
            f"the cluster secret in {path} is shorter than {MIN_SECRET_BYTES} bytes",
            hint="write one with: openssl rand -hex 32 > cluster.secret",
        )
    return secret


class HopAuthenticator:
    """Seals and opens hop envelopes; remembers nonces for twice ``max_skew``."""

    def __init__(
        self,
        secret: bytes,
        *,
        clock: Callable[[], float] = time.time,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        max_skew: float = MAX_SKEW,
    ) -> None:
        self._key = hashlib.sha256(b"tunnelgate hop v1\0" + secret).digest()
        self._clock = clock
        self._random_bytes = random_bytes
        self._max_skew = max_skew
        self._seen: dict[str, float] = {}

    def _mac(self, blob: bytes) -> bytes:
        return hmac.new(self._key, blob, hashlib.sha256).hexdigest().encode()

    def seal(self, envelope: Mapping[str, object]) -> tuple[bytes, bytes]:
        """The hop header value and its signature."""
        payload = {**envelope, "ts": self._clock(), "nonce": self._random_bytes(16).hex()}
        text = json.dumps(payload, separators=(",", ":")).encode()
        blob = base64.urlsafe_b64encode(text).rstrip(b"=")
        return blob, self._mac(blob)

    def open(self, blob: bytes | None, signature: bytes | None) -> dict[str, Any]:
        """The envelope, or HopRefused: nothing is read from it before the MAC checks out."""
        if not blob or not signature:
            raise HopRefused("not a forwarded request: the hop envelope is missing")
        if not hmac.compare_digest(self._mac(blob), signature.strip()):
            raise HopRefused("the hop signature is wrong")
        try:
            envelope = json.loads(base64.urlsafe_b64decode(blob + b"=" * (-len(blob) % 4)))
        except (binascii.Error, ValueError):
            raise HopRefused("the hop envelope is not JSON", code="hop_invalid") from None
        if not isinstance(envelope, dict):
            raise HopRefused("the hop envelope is not an object", code="hop_invalid")
        now = self._clock()
        sent, nonce = envelope.get("ts"), envelope.get("nonce")
        if not isinstance(sent, int | float) or abs(now - sent) > self._max_skew:
            raise HopRefused("the hop envelope is too old (or the edges' clocks disagree)")
        if not isinstance(nonce, str) or nonce in self._seen:
            raise HopRefused("the hop envelope was already used")
        if len(self._seen) > 100_000:
            self._seen = {n: t for n, t in self._seen.items() if t > now}
        self._seen[nonce] = now + 2 * self._max_skew
        return envelope


class ForwardedRequestHandler:
    """The internal listener's handler: authenticate the hop, then serve the head locally."""

    def __init__(self, authenticator: HopAuthenticator, serve_head: ServeHead) -> None:
        self._authenticator = authenticator
        self._serve_head = serve_head

    async def __call__(
        self, request: IncomingRequest, body: RequestBody, respond: ResponseWriter
    ) -> None:
        try:
            envelope = self._authenticator.open(
                request.header(HOP_HEADER), request.header(HOP_SIGNATURE_HEADER)
            )
            head, tunnel_id = envelope.get("head"), envelope.get("tunnel_id")
            if not isinstance(head, dict) or not isinstance(tunnel_id, str):
                raise HopRefused("the hop envelope lacks a head", code="hop_invalid")
            if head.get("method") != request.method or head.get("target") != request.target:
                raise HopRefused("the request line differs from the signed head",
                                 code="hop_invalid")
        except HopRefused as refused:
            log.warning("forwarded request refused peer=%s reason=%s", request.peer_ip, refused)
            status = 400 if refused.code == "hop_invalid" else 401
            await respond.error(status, "Forwarded request refused", refused.message,
                                code=refused.code)
            return
        log.debug("serving forwarded request from edge=%s tunnel=%s",
                  envelope.get("edge"), tunnel_id)
        await self._serve_head(request, body, respond, tunnel_id, head)


class _HopConnection:
    """One HTTP/1.1 client connection to a peer's internal listener."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=1 << 20)
        self.reused = False

    async def send(self, *events: h11.Event) -> None:
        """Send the events in one write (a request head and its end go out together)."""
        data = b"".join(self.conn.send(event) or b"" for event in events)
        if data:
            await self.stream.send_all(data)

    def buffered_body(self) -> tuple[bytes, bool]:
        """Body bytes already received, and whether the response ended with them."""
        body = bytearray()
        while True:
            event = self.conn.next_event()
            if isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                return bytes(body), True
            elif event is h11.NEED_DATA:
                return bytes(body), False
            else:
                raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")

    async def next_event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                assert isinstance(event, h11.Event)
                return event
            data = await self.stream.receive_some(RELAY_CHUNK)
            self.conn.receive_data(data)


class HopClient:
    """Sends requests to peers, keeping idle connections per peer for the next ones."""

    def __init__(
        self, authenticator: HopAuthenticator, *, edge_id: str, pool_size: int = 32
    ) -> None:
        self._authenticator = authenticator
        self._edge_id = edge_id
        self._pool_size = pool_size
        self._idle: dict[str, list[_HopConnection]] = {}
        self._turn = 0
        self.forwarded = 0
        self.connections_opened = 0

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for hop in conns:
                await hop.stream.aclose()
        self._idle.clear()

    async def _connect(self, url: str) -> _HopConnection:
        idle = self._idle.get(url, [])
        while idle:
            hop = idle.pop()
            if _peer_closed(hop.stream):
                # The peer closed it while idle (restart, crash, idle timeout).
                await hop.stream.aclose()
                continue
            hop.reused = True
            return hop
        parts = urllib.parse.urlsplit(url)
        with trio.fail_after(CONNECT_TIMEOUT):
            stream = await trio.open_tcp_stream(parts.hostname or "", parts.port or 80)
        self.connections_opened += 1
        return _HopConnection(stream)

    async def _release(self, url: str, hop: _HopConnection) -> None:
        conns = self._idle.setdefault(url, [])
        if hop.conn.our_state is h11.DONE and hop.conn.their_state is h11.DONE and (
            len(conns) < self._pool_size
        ):
            hop.conn.start_next_cycle()
            conns.append(hop)
        else:
            await hop.stream.aclose()

    async def forward(
        self,
        peers: Sequence[Peer],
        request: IncomingRequest,
        body: RequestBody,
        respond: ResponseWriter,
        tunnel_id: str,
        head: Head,
        guard: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]] | None = None,
    ) -> bool:
        """Answer ``request`` through a peer; False (nothing sent) when no peer was reachable."""
        blob, signature = self._authenticator.seal(
            {"tunnel_id": tunnel_id, "head": head, "edge": self._edge_id}
        )
        upgrade = request.is_websocket_upgrade
        headers = [(b"host", request.host.encode("ascii")), (HOP_HEADER, blob),
                   (HOP_SIGNATURE_HEADER, signature)]
        if upgrade:
            headers += [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]
        elif request.has_body:
            headers.append((b"transfer-encoding", b"chunked"))
        else:
            headers.append((b"content-length", b"0"))
        event = h11.Request(method=request.method, target=request.target, headers=headers)
        self._turn += 1
        ordered = [peers[(self._turn + i) % len(peers)] for i in range(len(peers))]
        for peer in ordered:
            for _attempt in range(2):
                try:
                    hop = await self._connect(peer.internal_url)
                except (OSError, trio.TooSlowError) as exc:
                    log.info("peer edge unreachable edge=%s url=%s error=%s",
                             peer.edge_id, peer.internal_url, exc)
                    break
                try:
                    if upgrade:
                        await hop.send(event)
                    elif not request.has_body:
                        await hop.send(event, h11.EndOfMessage())
                    if upgrade or not request.has_body:
                        response = await hop.next_event()
                        if isinstance(response, h11.ConnectionClosed):
                            raise trio.BrokenResourceError("the peer closed the connection")
                    else:
                        await hop.send(event)
                        response = None
                except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError,
                        OSError):
                    # A kept-alive connection the peer had closed: try once on a fresh one.
                    await hop.stream.aclose()
                    if hop.reused:
                        continue
                    break
                self.forwarded += 1
                await self._exchange(peer, hop, request, body, respond, response, guard)
                return True
        return False

    async def _exchange(
        self,
        peer: Peer,
        hop: _HopConnection,
        request: IncomingRequest,
        body: RequestBody,
        respond: ResponseWriter,
        response: h11.Event | None,
        guard: Callable[[Callable[[], Awaitable[None]]], Awaitable[None]] | None,
    ) -> None:
        healthy = False
        try:
            if response is None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._pump, body, hop)
                    response = await hop.next_event()
            if isinstance(response, h11.InformationalResponse) and response.status_code == 101:
                client = await respond.upgrade(101, list(response.headers))
                trailing, _closed = hop.conn.trailing_data
                work = partial(_relay_upgrade, client, hop.stream, bytes(trailing))
                await (guard(work) if guard is not None else work())
                return
            if not isinstance(response, h11.Response):
                raise h11.RemoteProtocolError(f"unexpected {type(response).__name__}")
            headers = [(n, v) for n, v in response.headers if n.lower() not in _HOP_BY_HOP]
            # A small response that arrived whole goes out in one write, as the proxy does.
            first, ended = hop.buffered_body()
            await respond.start(response.status_code, headers, body=first, end=ended)
            while not ended:
                event = await hop.next_event()
                if isinstance(event, h11.Data):
                    await respond.send(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    await respond.end()
                    break
                else:
                    raise h11.RemoteProtocolError(f"unexpected {type(event).__name__}")
            healthy = True
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError) as exc:
            log.info("forwarded request failed edge=%s host=%s error=%s",
                     peer.edge_id, request.host, exc)
            if not respond.started:
                await respond.error(502, "Tunnel connection lost",
                                    "The edge holding the tunnel's connection did not answer.",
                                    code="tunnel_offline")
        finally:
            if healthy:
                await self._release(peer.internal_url, hop)
            else:
                await hop.stream.aclose()

    @staticmethod
    async def _pump(body: RequestBody, hop: _HopConnection) -> None:
        while chunk := await body.receive_some(RELAY_CHUNK):
            await hop.send(h11.Data(data=chunk))
        await hop.send(h11.EndOfMessage())


def _peer_closed(stream: trio.SocketStream) -> bool:
    """Whether an idle connection is readable: between responses that means the peer closed
    it (FIN or RST) or sent junk, and either way it must not carry the next request."""
    poller = select.poll()
    poller.register(stream.socket.fileno(), select.POLLIN)
    return bool(poller.poll(0))


async def _relay_upgrade(
    client: trio.abc.Stream, peer: trio.SocketStream, first: bytes
) -> None:
    """Raw bytes both ways after a forwarded 101, until either side ends."""

    async def peer_to_client() -> None:
        try:
            if first:
                await client.send_all(first)
            while chunk := await peer.receive_some(RELAY_CHUNK):
                await client.send_all(chunk)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()

    async def client_to_peer() -> None:
        try:
            while chunk := await client.receive_some(RELAY_CHUNK):
                await peer.send_all(chunk)
            await peer.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            nursery.cancel_scope.cancel()

    async with client, trio.open_nursery() as nursery:
        nursery.start_soon(peer_to_client)
        nursery.start_soon(client_to_peer)
