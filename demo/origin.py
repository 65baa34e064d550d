"""The demo's sample origin: a page that shows the request it received.

It listens on loopback only, like any origin behind a connector. It is deliberately separate
from the product's packages: it stands for the operator's own application.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import sys

import h11
import trio

PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>tunnelgate demo origin</title>
<style>body{{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;width:100%}}td,th{{border:1px solid #ccc;padding:.3rem .5rem;
text-align:left;vertical-align:top;font-family:monospace;word-break:break-all}}
td:first-child{{white-space:nowrap;word-break:normal;width:1%}}</style></head>
<body><h1>Hello from a private origin</h1>
<p>This page is served by a process that listens only on <code>{listen}</code>. You reached it
through the tunnelgate edge and the connector's outbound tunnel.</p>
<h2>Identity</h2>{identity}
<h2>Request</h2><p><code>{method} {target}</code></p>
<table><tr><th>header</th><th>value</th></tr>{rows}</table>
</body></html>
"""


def describe_identity(headers: list[tuple[bytes, bytes]]) -> str:
    """Show the identity the edge asserted; the demo does not verify the signature itself."""
    for name, value in headers:
        if name.lower() == b"cf-access-jwt-assertion":
            try:
                payload = value.split(b".")[1]
                claims = json.loads(base64.urlsafe_b64decode(payload + b"=" * (-len(payload) % 4)))
            except (IndexError, ValueError):
                return "<p>An assertion arrived but could not be decoded.</p>"
            return "<pre>" + html.escape(json.dumps(claims, indent=2)) + "</pre>"
    return "<p>No identity assertion (this hostname has no Access application).</p>"


async def serve_client(stream: trio.SocketStream, listen: str) -> None:
    conn = h11.Connection(h11.SERVER)
    async with stream:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                data = await stream.receive_some(65536)
                if not data:
                    return
                conn.receive_data(data)
                continue
            if isinstance(event, h11.Request):
                headers = list(event.headers)
                rows = "".join(
                    f"<tr><td>{html.escape(n.decode('latin-1'))}</td>"
                    f"<td>{html.escape(v.decode('latin-1'))}</td></tr>"
                    for n, v in headers
                )
                body = PAGE.format(
                    listen=html.escape(listen),
                    identity=describe_identity(headers),
                    method=html.escape(event.method.decode()),
                    target=html.escape(event.target.decode("latin-1")),
                    rows=rows,
                ).encode()
                await stream.send_all(
                    conn.send(
                        h11.Response(
                            status_code=200,
                            headers=[
                                ("content-type", "text/html; charset=utf-8"),
                                ("content-length", str(len(body))),
                            ],
                        )
                    )
                    or b""
                )
                await stream.send_all(conn.send(h11.Data(data=body)) or b"")
                await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                continue
            if isinstance(event, h11.EndOfMessage | h11.Data):
                continue
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
                continue
            return


async def main(port: int) -> None:
    listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
    sockname = listeners[0].socket.getsockname()
    listen = f"{sockname[0]}:{sockname[1]}"
    sys.stdout.write(json.dumps({"event": "ready", "listen": listen}) + "\n")
    sys.stdout.flush()

    async def handler(stream: trio.SocketStream) -> None:
        try:
            await serve_client(stream, listen)
        except (trio.BrokenResourceError, h11.RemoteProtocolError, h11.LocalProtocolError):
            return

    await trio.serve_listeners(handler, listeners)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    trio.run(main, parser.parse_args().port)
