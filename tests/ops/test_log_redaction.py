"""Real traffic carrying known credentials through a real edge and connector at debug level:
none of the values reaches either process's log, in either log format."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio

from .daemons import connector_command, daemon, edge_command, prepare_edge
from .web import Origin, request, serve_origin

BEARER = "bearer-value-2b7e151628aed2a6abf7"
COOKIE = "cookie-value-3243f6a8885a308d3131"
CLIENT_SECRET = "client-secret-value-c0ffee5eed1234"
QUERY_TOKEN = "query-token-value-deadbeef42"
ORIGIN_COOKIE = "origin-cookie-value-7731"  # what the origin sets in its responses


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_no_token_secret_or_cookie_reaches_the_logs(
    tmp_path: Path, nursery: trio.Nursery, log_format: str
) -> None:
    origin = Origin()
    origin_url = await nursery.start(serve_origin, origin)
    setup = prepare_edge(tmp_path / "edge", "app.example.test")
    verbose = ("--log-level", "debug", "--log-format", log_format)
    async with daemon(edge_command(setup, *verbose), name="edge", log_dir=tmp_path) as edge:
        listeners = (await edge.next_event("ready"))["listeners"]
        tunnel_url = f"ws://{listeners['tunnel']}"
        credentials = setup.write_credentials(tunnel_url)
        async with daemon(connector_command(credentials, tunnel_url, "--url", origin_url,
                                            "--ha-connections", "1", global_options=verbose),
                          name="connector", log_dir=tmp_path) as connector:
            await connector.next_event("ready")
            headers = [
                ("authorization", f"Bearer {BEARER}"),
                ("cookie", f"session={COOKIE}; CF_Authorization={COOKIE}"),
                ("cf-access-client-id", "client-id.access"),
                ("cf-access-client-secret", CLIENT_SECRET),
            ]
            for path in (f"/api?token={QUERY_TOKEN}", f"/login?client_secret={CLIENT_SECRET}"):
                response = await request(listeners["public"], "app.example.test", path,
                                         headers=headers)
                assert response.status == 200
                assert ("set-cookie", f"origin_session={ORIGIN_COOKIE}; Path=/") in \
                    response.headers
            upload = await request(listeners["public"], "app.example.test", "/upload",
                                   method="POST", headers=headers, body=b"x" * 100)
            assert upload.status == 200
            # The credentials did travel: the origin saw them (the edge only strips its own).
            assert any(value == f"Bearer {BEARER}" for value in
                       dict_values(origin.seen_headers[0], "authorization"))
        # Both stopped (and flushed) before their logs are read.
    logs = {"edge": edge.stderr_text(), "connector": connector.stderr_text()}
    secrets = {"bearer": BEARER, "cookie": COOKIE, "client secret": CLIENT_SECRET,
               "query token": QUERY_TOKEN, "origin cookie": ORIGIN_COOKIE,
               "tunnel secret": setup.secret}
    for process, text in logs.items():
        assert "tunnel connection registered" in text, f"{process} logged nothing useful"
        for what, value in secrets.items():
            assert value not in text, f"the {what} reached the {process} log"
    # The connector logs each stream's target at debug level: the query token was there and
    # was redacted, so this test exercises the redaction rather than passing by silence.
    assert "token=[redacted]" in logs["connector"]
    if log_format == "json":
        for process, text in logs.items():
            for line in text.splitlines():
                assert isinstance(json.loads(line), dict), f"{process}: {line}"


def dict_values(headers: list[tuple[str, str]], name: str) -> list[str]:
    return [value for key, value in headers if key.lower() == name]
