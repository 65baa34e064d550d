"""Signing in to an Access application as a browser would, to get its session cookie.

The "tunnelgate + Access" row measures requests that carry a valid `CF_Authorization` cookie.
The harness earns that cookie the honest way: one login through the edge's public listener with
the one-time PIN IdP configured with `delivery = "log"`, so the edge writes the code to its own
log, where the harness reads it. Every `*.localhost` name is connected to 127.0.0.1 and kept in
the Host header; the auth domain has no port, so the edge sends the visitor to it on the port
the visitor already uses.

Errors: `BenchError` (processes.py) with the step that went wrong; the cookie itself is never
part of a message.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import httpx
from processes import BenchError, wait_until

APP_COOKIE = "CF_Authorization"
PREFIX = "/cdn-cgi/access"
MAX_REDIRECTS = 8
_OTP_LINE = re.compile(r"one-time code for (?P<email>\S+): (?P<code>\d+)")
_HIDDEN_FIELD = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')

ACCESS_CONFIG = """\
# Applied with `tunnelgate-edge apply`: a one-time PIN login in front of the bench hostname.
[[idp]]
name = "pin"
type = "otp"
delivery = "log"

[[app]]
name = "bench"
domain = "{domain}"
idps = ["pin"]
session_duration = "24h"

[[app.policy]]
name = "everyone"
action = "allow"
include = [{{ everyone = true }}]

# The idle-WebSocket row's hostname (a second tunnel): the same login and policy.
[[app]]
name = "bench-ws"
domain = "{websocket_domain}"
idps = ["pin"]
session_duration = "24h"

[[app.policy]]
name = "everyone"
action = "allow"
include = [{{ everyone = true }}]
"""


class LoopbackTransport(httpx.BaseTransport):
    """Connects `*.localhost` to 127.0.0.1; the URL's host stays in Host and in the cookie jar."""

    def __init__(self) -> None:
        self._inner = httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host.endswith(".localhost"):
            request = httpx.Request(
                request.method,
                request.url.copy_with(host="127.0.0.1"),
                headers=request.headers,
                stream=request.stream,
                extensions=request.extensions,
            )
        return self._inner.handle_request(request)

    def close(self) -> None:
        self._inner.close()


def _redirect_target(response: httpx.Response, step: str) -> str:
    if response.status_code not in (301, 302, 303, 307, 308):
        raise BenchError(f"Access login, {step}: expected a redirect, got {response.status_code}")
    return str(response.url.join(response.headers["location"]))


def _hidden_fields(page: str) -> dict[str, str]:
    return {name: html.unescape(value) for name, value in _HIDDEN_FIELD.findall(page)}


def _expect_page(response: httpx.Response, step: str) -> dict[str, str]:
    if response.status_code != 200:
        raise BenchError(f"Access login, {step}: expected 200, got {response.status_code}")
    return _hidden_fields(response.text)


def read_code(log_path: Path, email: str, timeout_s: float) -> str:
    """The latest one-time code the edge logged (logger `tunnelgate.otp`) for `email`."""
    codes: list[str] = []

    def logged() -> bool:
        text = log_path.read_text(errors="replace")
        codes.extend(m["code"] for m in _OTP_LINE.finditer(text) if m["email"] == email)
        return bool(codes)

    wait_until(logged, timeout_s=timeout_s, what="one-time code in the edge log")
    return codes[-1]


def sign_in(
    *,
    port: int,
    app_host: str,
    auth_host: str,
    email: str,
    edge_log: Path,
    timeout_s: float,
    final_page: bool = True,
) -> str:
    """Log in to the app on `app_host` with a one-time PIN; the value of its app cookie.

    With `final_page` the login must end on a 200 from the app; without it, it stops once the
    app cookie is set (an origin that only speaks WebSocket answers no plain GET). Each login
    needs its own `email`: the code is read from the edge's log by e-mail."""
    app_url = f"http://{app_host}:{port}/"
    auth = f"http://{auth_host}:{port}{PREFIX}"
    with httpx.Client(
        transport=LoopbackTransport(), follow_redirects=False, timeout=timeout_s
    ) as visitor:
        login = _redirect_target(visitor.get(app_url), "visiting the app")
        form = _expect_page(visitor.get(login), "login page")
        sent = visitor.post(f"{auth}/otp/email", data={**form, "email": email})
        code_form = _expect_page(sent, "asking for a code")
        code = read_code(edge_log, email, timeout_s)
        response = visitor.post(f"{auth}/otp/code", data={**code_form, "code": code})
        for _ in range(MAX_REDIRECTS):
            if response.status_code not in (301, 302, 303, 307, 308):
                break
            if not final_page and visitor.cookies.get(APP_COOKIE, domain=app_host):
                break
            response = visitor.get(_redirect_target(response, "following the login"))
        if final_page and response.status_code != 200:
            raise BenchError(f"Access login ended with HTTP {response.status_code}")
        cookie = visitor.cookies.get(APP_COOKIE, domain=app_host)
    if not cookie:
        raise BenchError(f"Access login set no {APP_COOKIE} cookie for {app_host}")
    return cookie
