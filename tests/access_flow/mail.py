"""A real SMTP server for the one-time PIN tests (aiosmtpd on its own event-loop thread).

The socket is bound and listening before the thread starts, so the edge can connect at once:
the kernel queues the connection until the server accepts it.
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from email import message_from_bytes
from email.message import Message

from aiosmtpd.smtp import SMTP, Envelope, Session

_CODE = re.compile(rb"\b(\d{6})\b")


class SmtpSink:
    """Keeps every message; ``code_for(address)`` is the newest code sent to it."""

    def __init__(self) -> None:
        self.messages: list[tuple[list[str], Message]] = []
        self._arrived = threading.Condition()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = threading.Event()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        with self._arrived:
            self.messages.append(
                (list(envelope.rcpt_tos), message_from_bytes(envelope.content))
            )
            self._arrived.notify_all()
        return "250 Message accepted for delivery"

    def code_for(self, address: str) -> str:
        for recipients, message in reversed(self.messages):
            if address in recipients:
                body = message.get_payload(decode=True)
                assert isinstance(body, bytes)
                match = _CODE.search(body)
                assert match, body
                return match.group(1).decode()
        raise AssertionError(f"no message to {address}; got {len(self.messages)} messages")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(
            self._loop.create_server(lambda: SMTP(self, hostname="sink.test"), sock=self._sock)
        )
        self._started.set()
        self._loop.run_forever()
        server.close()
        self._loop.run_until_complete(server.wait_closed())
        self._loop.close()

    def start(self) -> SmtpSink:
        self._thread.start()
        self._started.wait()
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
