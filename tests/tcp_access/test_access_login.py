"""``tunnelgate access login``: the real command against an in-process edge and a real OpenID
provider, the test playing the browser; the edge's ``cli`` endpoint refusing every callback that
is not a loopback listener; the command's callback refusing a foreign state."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
import pytest
import trio
from access_flow.conftest import Corp, corp, start_oidc_provider
from access_flow.harness import AUTH, PREFIX, location, new_visitor, query_of
from idp.fixture import sign_in_at_provider_async

from connector.access_client import load_app_token, token_path
from connector.access_login import (
    LoginTimedOut,
    cli_login_url,
    receive_login_token,
    run_login,
)

__all__ = ["corp", "start_oidc_provider"]  # fixtures, imported so pytest finds them

pytestmark = pytest.mark.e2e

TUNNELGATE = str(Path(sys.executable).with_name("tunnelgate"))
APP = "app1.localhost"
STATE = "s" * 43
PROCESS_TIMEOUT = 60.0


async def _read_line_starting(stream: trio.abc.ReceiveStream, prefix: bytes,
                              seen: bytearray) -> str:
    """The first line of ``stream`` that starts with ``prefix`` (everything read goes into
    ``seen``, so a failure can show it)."""
    while True:
        for line in seen.split(b"\n")[:-1]:
            if line.startswith(prefix):
                return line.decode().strip()
        chunk = await stream.receive_some(4096)
        if not chunk:
            pytest.fail(f"the command ended without printing a URL: {bytes(seen)!r}")
        seen += chunk


async def _read_all(stream: trio.abc.ReceiveStream) -> bytes:
    received = bytearray()
    while chunk := await stream.receive_some(4096):
        received += chunk
    return bytes(received)


def _command_env(home: Path) -> dict[str, str]:
    return {**os.environ, "HOME": str(home)}


async def _signed_in_visitor(corp: Corp, visitor: httpx.AsyncClient) -> None:
    """alice signs in to app1 in ``visitor`` (she ends with app1's cookie)."""
    callback_answer = await corp.sign_in(visitor, corp.stack.url(APP, "/"), "alice")
    authorized = await visitor.get(location(callback_answer))
    assert authorized.status_code == 302
    assert corp.app1.spec.cookie_name in authorized.headers.get("set-cookie", "")


def _cli_endpoint(corp: Corp, redirect_url: str, state: str = STATE) -> str:
    query = urlencode({"redirect_url": redirect_url, "state": state})
    return corp.stack.url(APP, f"{PREFIX}/cli?{query}")


async def test_login_through_the_provider_saves_a_token_the_edge_accepts(
    corp: Corp, tmp_path: Path
) -> None:
    stack = corp.stack
    home = tmp_path / "home"
    command = [TUNNELGATE, "access", "login", f"http://{APP}/", "--no-browser",
               "--edge-url", f"http://127.0.0.1:{stack.port}", "--timeout", "1m"]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_command_env(home)
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        with trio.fail_after(PROCESS_TIMEOUT):
            printed = bytearray()
            url = await _read_line_starting(process.stderr, b"http", printed)
            parts = urlsplit(url)
            assert (parts.hostname, parts.port, parts.path) == (APP, stack.port, f"{PREFIX}/cli")
            asked = query_of(url)
            callback = urlsplit(asked["redirect_url"])
            assert (callback.scheme, callback.hostname, callback.path) == (
                "http", "127.0.0.1", "/callback"
            )
            assert len(asked["state"]) >= 32

            async with new_visitor() as browser:
                # no session yet: the usual login, which comes back to the CLI endpoint
                login = location(await browser.get(url))
                assert urlsplit(login).hostname == AUTH
                to_provider = location(await browser.get(login))
                assert to_provider.startswith(corp.provider.issuer)
                at_callback = await sign_in_at_provider_async(
                    browser, to_provider, login="alice", redirect_uri=corp.callback
                )
                handoff = location(await browser.get(str(at_callback)))
                back_to_cli = location(await browser.get(handoff))
                assert urlsplit(back_to_cli).path == f"{PREFIX}/cli"
                delivery = location(await browser.get(back_to_cli))
                assert delivery.startswith(asked["redirect_url"] + "?")
                delivered = query_of(delivery)
                assert delivered["state"] == asked["state"]
                landing = await browser.get(delivery)
                assert landing.status_code == 200
                assert "Signed in" in landing.text

            assert await process.wait() == 0
            out = await _read_all(process.stdout)
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stdout.aclose()
            await process.stderr.aclose()

    saved = token_path(APP, home)
    assert f"in {saved}" in out.decode()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert load_app_token(APP, home) == delivered["token"]

    # the edge takes the cached token in place of the cookie ...
    async with new_visitor() as fresh:
        without = await fresh.get(stack.url(APP, "/"))
        assert without.status_code == 302
        with_token = await fresh.get(stack.url(APP, "/who"),
                                     headers={"cf-access-token": delivered["token"]})
    assert with_token.status_code == 200
    seen = with_token.json()
    assert seen["target"] == "/who"
    assert seen["assertion"]["claims"]["email"] == "alice@corp.com"

    # ... and so does ``tunnelgate access curl``, reading the same cache
    curl = await trio.run_process(
        [TUNNELGATE, "access", "curl", stack.url(APP, "/by-curl"), "-s",
         "--connect-to", f"{APP}:{stack.port}:127.0.0.1:{stack.port}"],
        capture_stdout=True, capture_stderr=True, env=_command_env(home), check=False,
    )
    assert curl.returncode == 0, curl.stderr
    answer = json.loads(curl.stdout)
    assert answer["target"] == "/by-curl"
    assert answer["assertion"]["claims"]["email"] == "alice@corp.com"


NOT_LOOPBACK = [
    "http://evil.example/cb",
    "http://127.0.0.1.evil.example:80/",
    "https://127.0.0.1:8123/callback",
    "http://127.0.0.1/callback",
    "http://127.0.0.1:0/callback",
    "http://127.0.0.2:8123/callback",
    "http://localhost.:8123/callback",
    "http://user@127.0.0.1:8123/callback",
    "http://127.0.0.1:8123/callback#frag",
    "http://127.0.0.1:8123/callback%0d%0aSet-Cookie:x=1",
    "//127.0.0.1:8123/callback",
    "javascript:alert(1)",
    "",
]


@pytest.mark.parametrize("redirect_url", NOT_LOOPBACK)
async def test_a_non_loopback_callback_never_receives_a_token(
    corp: Corp, redirect_url: str
) -> None:
    async with new_visitor() as browser:
        # refused before any login starts
        anonymous = await browser.get(_cli_endpoint(corp, redirect_url))
        assert anonymous.status_code == 400
        assert "location" not in anonymous.headers
        # and still refused for a signed-in visitor whose token is at hand
        await _signed_in_visitor(corp, browser)
        answer = await browser.get(_cli_endpoint(corp, redirect_url))
    assert answer.status_code == 400
    assert "location" not in answer.headers
    assert "eyJ" not in answer.text


@pytest.mark.parametrize(
    "redirect_url",
    ["http://127.0.0.1:8123/callback", "http://localhost:8123/cb", "http://[::1]:8123/cb?x=1"],
)
async def test_loopback_callbacks_get_the_token_and_the_state(
    corp: Corp, redirect_url: str
) -> None:
    async with new_visitor() as browser:
        await _signed_in_visitor(corp, browser)
        answer = await browser.get(_cli_endpoint(corp, redirect_url))
    target = location(answer)
    assert target.startswith(redirect_url)
    delivered = query_of(target)
    assert delivered["state"] == STATE
    verified = corp.stack.access.verify_app_token(delivered["token"], corp.app1.aud)
    assert verified is not None
    assert verified.claims["email"] == "alice@corp.com"
    # What a tunnel head carries of it: the person, made once and shared by later requests.
    assert verified.identity["email"] == "alice@corp.com"
    assert set(verified.identity) == {"sub", "email", "type", "groups", "idp"}
    again = corp.stack.access.verify_app_token(delivered["token"], corp.app1.aud)
    assert again is not None
    assert again.identity is verified.identity


@pytest.mark.parametrize("state", ["", "short", "x" * 200, "a b c d e f g h i j k l"])
async def test_the_edge_refuses_a_malformed_state(corp: Corp, state: str) -> None:
    async with new_visitor() as browser:
        await _signed_in_visitor(corp, browser)
        answer = await browser.get(_cli_endpoint(corp, "http://127.0.0.1:8123/cb", state))
    assert answer.status_code == 400
    assert "location" not in answer.headers


async def test_the_callback_refuses_a_foreign_state_and_keeps_waiting(
    nursery: trio.Nursery,
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    (listener,) = listeners
    port = listener.socket.getsockname()[1]
    received: list[str] = []
    finished = trio.Event()

    async def wait_for_token() -> None:
        async with listener:
            received.append(await receive_login_token(listener, STATE))
        finished.set()

    nursery.start_soon(wait_for_token)
    base = f"http://127.0.0.1:{port}"
    token = "aaa.bbb.ccc"
    async with httpx.AsyncClient(timeout=20) as client:
        wrong = await client.get(f"{base}/callback", params={"token": token, "state": "t" * 43})
        missing = await client.get(f"{base}/callback", params={"token": token})
        elsewhere = await client.get(f"{base}/other", params={"token": token, "state": STATE})
        no_token = await client.get(f"{base}/callback", params={"state": STATE})
        assert (wrong.status_code, missing.status_code) == (400, 400)
        assert "state mismatch" in wrong.text
        assert (elsewhere.status_code, no_token.status_code) == (404, 400)
        assert received == []
        right = await client.get(f"{base}/callback", params={"token": token, "state": STATE})
    assert right.status_code == 200
    with trio.fail_after(20):
        await finished.wait()
    assert received == [token]


async def test_login_times_out_without_saving_anything(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    printed: list[str] = []
    opened: list[str] = []
    with pytest.raises(LoginTimedOut, match="within 300s"):
        await run_login("https://app.example.com/x", echo=printed.append,
                        open_browser=opened.append, home=tmp_path)
    (url,) = [line for line in printed if line.startswith("https://")]
    assert opened == [url]
    assert urlsplit(url).netloc == "app.example.com"
    assert not token_path("app.example.com", tmp_path).exists()


async def test_the_command_exits_non_zero_with_a_message_on_timeout(tmp_path: Path) -> None:
    done = await trio.run_process(
        [TUNNELGATE, "access", "login", "https://app.example.com", "--no-browser",
         "--timeout", "0s"],
        capture_stdout=True, capture_stderr=True, env=_command_env(tmp_path), check=False,
    )
    assert done.returncode == LoginTimedOut.exit_code
    assert b"no sign-in arrived" in done.stderr
    assert b"https://app.example.com/cdn-cgi/access/cli?" in done.stderr
    assert not token_path("app.example.com", tmp_path).exists()


def test_the_login_url_takes_scheme_and_port_from_the_edge_url() -> None:
    callback = "http://127.0.0.1:5000/callback"
    local = cli_login_url("https://ssh.localhost/x", callback, STATE,
                          edge_url="http://127.0.0.1:8080")
    assert local.startswith("http://ssh.localhost:8080/cdn-cgi/access/cli?")
    assert query_of(local) == {"redirect_url": callback, "state": STATE}
    plain = cli_login_url("grafana.example.com", callback, STATE)
    assert plain.startswith("https://grafana.example.com/cdn-cgi/access/cli?")
