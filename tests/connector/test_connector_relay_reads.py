"""The raw relay reads an origin both ways it can: waiting for a quiet socket to turn readable,
and reading straight on while a busy one keeps filling whole chunks."""

from __future__ import annotations

import hashlib
import os

import trio
from connector_fake_stream import run_exchange
from connector_test_origins import serve_tcp

from connector.ingress import IngressRule, IngressTable, OriginRequest, parse_service
from connector.origin import CHUNK, OriginDispatcher

PAYLOAD = os.urandom(3 * 1024 * 1024 + 17)


def table_for(service: str) -> IngressTable:
    return IngressTable([IngressRule(None, None, parse_service(service),
                                     OriginRequest())])


async def send_payload_then_close(stream: trio.abc.Stream) -> None:
    async with stream:
        await stream.send_all(PAYLOAD)


async def answer_each_line(stream: trio.abc.Stream) -> None:
    """Answers every line as it comes, so the relay waits on a quiet socket between them."""
    async with stream:
        pending = b""
        while data := await stream.receive_some(1024):
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                await stream.send_all(b"ack " + line + b"\n")


async def test_a_large_download_arrives_whole_and_in_order(nursery: trio.Nursery) -> None:
    assert len(PAYLOAD) > 40 * CHUNK
    port = await serve_tcp(nursery, send_payload_then_close)
    async with OriginDispatcher(table_for(f"tcp://127.0.0.1:{port}")) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream,
                                  {"kind": "tcp", "host": "files.example.com", "client": "x"})
    assert view.head == {"status": 200}
    assert view.reset_code is None
    assert len(view.body) == len(PAYLOAD)
    assert hashlib.sha256(view.body).digest() == hashlib.sha256(PAYLOAD).digest()


async def test_small_messages_back_and_forth(nursery: trio.Nursery) -> None:
    port = await serve_tcp(nursery, answer_each_line)
    lines = [b"line %d\n" % number for number in range(50)]
    async with OriginDispatcher(table_for(f"tcp://127.0.0.1:{port}")) as dispatcher:
        view = await run_exchange(dispatcher.serve_stream,
                                  {"kind": "tcp", "host": "chat.example.com", "client": "x"},
                                  lines)
    assert view.reset_code is None
    assert view.body == b"".join(b"ack " + line for line in lines)
