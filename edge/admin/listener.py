"""The admin listener: a small HTTP/1.1 server (h11) in front of :class:`AdminApi`.

The admin API needs far less than the public front: bodies are JSON with a Content-Length
(chunked uploads get 411), every answer is buffered, and nothing is proxied. What it keeps
from the public front are the limits that stop one client from holding the server: a head
size and header count cap (431), a deadline for a head once it starts (408), an idle
deadline between kept-alive requests, a body cap (413), and 400 for bytes h11 cannot parse.
After any such refusal the connection is closed, since its framing can no longer be trusted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import NoReturn
from urllib.parse import urlsplit

import h11
import trio

from edge.admin.api import MAX_BODY_BYTES, AdminApi, AdminResponse, json_response

__all__ = ["AdminServerLimits", "serve_admin"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AdminServerLimits:
    """``header_timeout`` bounds a request head once it starts; ``idle_timeout`` bounds the
    wait for the next request on a kept-alive connection and, once a head arrived, its body."""

    max_header_bytes: int = 32768
    max_headers: int = 100
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_body_bytes: int = MAX_BODY_BYTES


class _Closed(Exception):
    """The connection is over: the peer left, timed out, or broke the protocol."""


async def serve_admin(
    listener: trio.abc.Listener[trio.abc.Stream],
    api: AdminApi,
    *,
    limits: AdminServerLimits = AdminServerLimits(),
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """Serve the admin API on one listener until cancelled (the listener is closed then)."""

    async def handler(stream: trio.abc.Stream) -> None:
        await _AdminConnection(stream, api, limits).run()

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handler, [listener])
        task_status.started()
        await trio.sleep_forever()
    raise AssertionError("unreachable")  # pragma: no cover


class _AdminConnection:
    def __init__(self, stream: trio.abc.Stream, api: AdminApi, limits: AdminServerLimits) -> None:
        self._stream = stream
        self._api = api
        self._limits = limits
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)

    async def run(self) -> None:
        try:
            while await self._serve_one():
                self._conn.start_next_cycle()
        except _Closed:
            pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:
            # One broken connection must never take the admin listener down with it.
            log.exception("admin connection failed")

    async def _next_event(self, deadline: float, *, head: bool = False) -> object:
        # A head already partly buffered (pipelined behind the last request) has started.
        started = head and bool(self._conn.trailing_data[0])
        if started:
            deadline = trio.current_time() + self._limits.header_timeout
        while True:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError as exc:
                await self._refuse(exc.error_status_hint, "bad_request", str(exc))
            if event is not h11.NEED_DATA:
                return event
            with trio.move_on_at(deadline):
                data = await self._stream.receive_some(65536)
                if head and not started and data:
                    started = True
                    deadline = trio.current_time() + self._limits.header_timeout
                self._conn.receive_data(bytes(data))
                continue
            if started or not head:
                await self._refuse(408, "request_timeout", "the request took too long to arrive")
            raise _Closed

    async def _refuse(self, status: int, code: str, message: str) -> NoReturn:
        """Answer a broken or over-limit request, then close: its framing can't be trusted."""
        if self._conn.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
            payload = {"error": code, "message": message, "hint": ""}
            await self._send(
                json_response(status, payload, [(b"connection", b"close")]), closing=True
            )
        raise _Closed

    async def _serve_one(self) -> bool:
        idle_deadline = trio.current_time() + self._limits.idle_timeout
        event = await self._next_event(idle_deadline, head=True)
        if isinstance(event, h11.ConnectionClosed):
            return False
        if not isinstance(event, h11.Request):
            raise _Closed
        body_deadline = trio.current_time() + self._limits.idle_timeout
        headers = list(event.headers)
        if len(headers) > self._limits.max_headers:
            await self._refuse(431, "too_many_headers", "the request has too many header fields")
        if any(name == b"transfer-encoding" for name, _ in headers):
            await self._refuse(411, "length_required", "send the body with a Content-Length")
        length = next((int(value) for name, value in headers if name == b"content-length"), 0)
        if length > self._limits.max_body_bytes:
            await self._refuse(
                413,
                "payload_too_large",
                f"bodies are capped at {self._limits.max_body_bytes} bytes",
            )
        if self._conn.they_are_waiting_for_100_continue:
            await self._stream.send_all(
                self._conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b""
            )
        chunks: list[bytes] = []
        while True:
            part = await self._next_event(body_deadline)
            if isinstance(part, h11.Data):
                chunks.append(bytes(part.data))
            elif isinstance(part, h11.EndOfMessage):
                break
            else:
                raise _Closed
        method = event.method.decode("ascii", "replace")
        target = event.target.decode("ascii", "replace")
        response = await self._api.handle(method, target, headers, b"".join(chunks))
        log.info("admin %s %s -> %d", method, urlsplit(target).path, response.status)
        await self._send(response, closing=False, head_only=method == "HEAD")
        return self._conn.our_state is h11.DONE and self._conn.their_state is h11.DONE

    async def _send(
        self, response: AdminResponse, *, closing: bool, head_only: bool = False
    ) -> None:
        headers = list(response.headers)
        if response.status != 204:
            headers.append((b"content-length", str(len(response.body)).encode()))
        out = self._conn.send(h11.Response(status_code=response.status, headers=headers)) or b""
        if response.body and not head_only:
            out += self._conn.send(h11.Data(data=response.body)) or b""
        out += self._conn.send(h11.EndOfMessage()) or b""
        await self._stream.send_all(out)
        if closing:
            self._conn.send(h11.ConnectionClosed())
