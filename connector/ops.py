"""The connector's ops listener (``tunnel run --metrics HOST:PORT``), like cloudflared's.

    GET /metrics   Prometheus text exposition of ``ConnectorMetrics``
    GET /ready     {"status": 200|503, "readyConnections": N, "connectorId": ...};
                   HTTP 200 once at least one tunnel connection is registered and the
                   connector is not draining, 503 otherwise (load balancers, k8s probes)
    GET /healthz   200 {"status": "ok"} while the process serves (liveness, the watchdog)

It is a separate listener on purpose: nothing here is ever reachable through the tunnel. Each
connection carries one request (``Connection: close``); heads are size-capped and must arrive
within ``REQUEST_TIMEOUT``, so a stuck scraper costs one task for a few seconds at most.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Protocol

import h11
import trio

from connector.metrics import CONTENT_TYPE, ConnectorMetrics

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
MAX_REQUEST_HEAD = 16 * 1024


class Readiness(Protocol):
    """What ``/ready`` reports, read from ``connector.supervisor.ConnectorState``."""

    @property
    def ready_connections(self) -> int: ...

    draining: bool


class OpsEndpoints:
    """Answers the three paths; the HTTP plumbing lives in ``serve_ops``."""

    def __init__(self, state: Readiness, metrics: ConnectorMetrics, connector_id: str) -> None:
        self._state = state
        self._metrics = metrics
        self._connector_id = connector_id

    def answer(self, method: str, path: str) -> tuple[int, str, bytes]:
        """(status, content type, body) for one request."""
        if method not in ("GET", "HEAD"):
            return _json(405, {"error": "method_not_allowed", "message": "use GET"})
        if path == "/metrics":
            return 200, CONTENT_TYPE, self._metrics.exposition()
        if path == "/ready":
            connections = self._state.ready_connections
            status = 200 if connections >= 1 and not self._state.draining else 503
            return _json(status, {"status": status, "readyConnections": connections,
                                  "connectorId": self._connector_id})
        if path == "/healthz":
            return _json(200, {"status": "ok"})
        return _json(404, {"error": "not_found",
                           "message": "the ops listener serves /metrics, /ready and /healthz"})


def _json(status: int, document: object) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(document).encode() + b"\n"


async def open_ops_listener(address: str) -> trio.SocketListener:
    """Bind ``HOST:PORT`` (``[::1]:PORT`` for IPv6; port 0 picks a free one)."""
    host, _, port = address.rpartition(":")
    listeners = await trio.open_tcp_listeners(int(port), host=host.strip("[]"))
    for extra in listeners[1:]:
        await extra.aclose()
    return listeners[0]


def listener_address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _serve_connection(stream: trio.SocketStream,
                            answer: Callable[[str, str], tuple[int, str, bytes]]) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_HEAD)
    async with stream:
        request: h11.Request | None = None
        with trio.move_on_after(REQUEST_TIMEOUT):
            while request is None:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(65536)
                    if not data:
                        return
                    conn.receive_data(data)
                elif isinstance(event, h11.Request):
                    request = event
                else:
                    return
        if request is None:
            return
        method = request.method.decode("ascii", "replace")
        path = request.target.decode("ascii", "replace").partition("?")[0]
        status, content_type, body = answer(method, path)
        headers = [("content-type", content_type), ("content-length", str(len(body))),
                   ("cache-control", "no-store"), ("connection", "close")]
        out = conn.send(h11.Response(status_code=status, headers=headers)) or b""
        if method != "HEAD":
            out += conn.send(h11.Data(data=body)) or b""
        out += conn.send(h11.EndOfMessage()) or b""
        await stream.send_all(out)


async def serve_ops(listener: trio.SocketListener, endpoints: OpsEndpoints) -> None:
    """Serve until cancelled; a client that misbehaves only loses its own connection."""

    async def guarded(stream: trio.SocketStream) -> None:
        try:
            await _serve_connection(stream, endpoints.answer)
        except (h11.RemoteProtocolError, trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            log.exception("ops request failed")

    await trio.serve_listeners(guarded, [listener])


__all__ = ["OpsEndpoints", "Readiness", "listener_address", "open_ops_listener", "serve_ops"]
