"""``tunnelgate access login URL``: sign in through the browser and cache the app token.

The command borrows the browser's session (the edge side is :mod:`edge.access.cli_login`)::

    listen on http://127.0.0.1:PORT/callback      (port chosen by the OS)
    open   https://APP/cdn-cgi/access/cli?redirect_url=http://127.0.0.1:PORT/callback&state=S
    the browser signs in if it must; the edge redirects it to the callback with token and state
    state compared (constant time) -> token saved 0600 in ~/.tunnelgate/tokens/APP.jwt

A request to the callback with a wrong or missing state is refused with 400 and the command
keeps waiting: another page or process on this computer can reach the port, and must not be
able to plant a token. Nothing but ``GET /callback`` is answered with anything but an error.

Errors (all :class:`connector.access_client.AccessClientError`, so they carry an exit code)::

    AccessClientError
     +-- LoginFailed          the URL or the edge address cannot be used (permanent)
          +-- LoginTimedOut   no valid callback before the deadline (retrying can help)
"""

from __future__ import annotations

import hmac
import logging
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import h11
import trio

from connector.access_client import AccessClientError, hostname_of, save_app_token

__all__ = [
    "CALLBACK_PATH",
    "DEFAULT_LOGIN_TIMEOUT",
    "DEFAULT_PREFIX",
    "LoginFailed",
    "LoginTimedOut",
    "cli_login_url",
    "receive_login_token",
    "run_login",
]

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/cdn-cgi/access"
CALLBACK_PATH = "/callback"
DEFAULT_LOGIN_TIMEOUT = 300.0
MAX_REQUEST_BYTES = 16 * 1024
REQUEST_READ_TIMEOUT = 10.0
_TOKEN = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")

StateFactory = Callable[[], str]
OpenBrowser = Callable[[str], object]
Echo = Callable[[str], None]


class LoginFailed(AccessClientError):
    exit_code = 2


class LoginTimedOut(LoginFailed):
    exit_code = 4


def new_state() -> str:
    return secrets.token_urlsafe(32)


def cli_login_url(
    app_url: str, callback: str, state: str, *, edge_url: str | None = None,
    prefix: str = DEFAULT_PREFIX,
) -> str:
    """The edge's CLI endpoint for the app of ``app_url``.

    Scheme and port come from ``edge_url`` when given (a loopback edge serving ``*.localhost``
    names), else from ``app_url`` (``https`` when it names only a host); the host is always the
    app's, because the edge picks the application by ``Host``.
    """
    host = hostname_of(app_url)
    source = edge_url or (app_url if "://" in app_url else f"https://{app_url}")
    parts = urlsplit(source)
    if parts.scheme not in ("http", "https"):
        raise LoginFailed(f"not an http(s) URL: {source!r}")
    try:
        port = parts.port
    except ValueError:
        raise LoginFailed(f"bad port in {source!r}") from None
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    query = urlencode({"redirect_url": callback, "state": state})
    return f"{parts.scheme}://{netloc}{prefix.rstrip('/')}/cli?{query}"


_PAGE = (
    "<!doctype html><html><head><meta charset=utf-8><title>{title}</title></head>"
    "<body><h1>{title}</h1><p>{detail}</p></body></html>"
)


async def _answer(
    stream: trio.SocketStream, connection: h11.Connection, status: int, title: str, detail: str
) -> None:
    body = _PAGE.format(title=title, detail=detail).encode()
    headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-store"),
        ("Referrer-Policy", "no-referrer"),
        ("Connection", "close"),
    ]
    data = connection.send(h11.Response(status_code=status, headers=headers))
    data = (data or b"") + (connection.send(h11.Data(data=body)) or b"")
    data += connection.send(h11.EndOfMessage()) or b""
    await stream.send_all(data)


async def _read_request(stream: trio.SocketStream, connection: h11.Connection) -> h11.Request:
    while True:
        event = connection.next_event()
        if event is h11.NEED_DATA:
            chunk = await stream.receive_some(4096)
            connection.receive_data(chunk)
            continue
        if isinstance(event, h11.Request):
            return event
        raise h11.RemoteProtocolError("no request", error_status_hint=400)


def _callback_token(target: bytes, expected_state: str) -> tuple[int, str]:
    """(200, token) for a valid callback target, else (status, why) for the refusal page."""
    parts = urlsplit(target.decode("ascii", "replace"))
    if parts.path != CALLBACK_PATH:
        return 404, "This port only answers the sign-in callback."
    params = {key: values[0] for key, values in parse_qs(parts.query).items()}
    state = params.get("state", "")
    if not hmac.compare_digest(state.encode(), expected_state.encode()):
        return 400, "This sign-in was not started by this command (state mismatch)."
    token = params.get("token", "")
    if _TOKEN.fullmatch(token) is None:
        return 400, "The sign-in did not deliver a token."
    return 200, token


async def receive_login_token(
    listener: trio.SocketListener, state: str,
    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> str:
    """Serve ``listener`` one connection at a time until a callback carries ``state``; the
    token it carried. Wrong states, other paths and garbage are refused and waited past."""
    task_status.started()
    while True:
        stream = await listener.accept()
        async with stream:
            connection = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST_BYTES)
            try:
                with trio.fail_after(REQUEST_READ_TIMEOUT):
                    request = await _read_request(stream, connection)
                if request.method not in (b"GET", b"HEAD"):
                    await _answer(stream, connection, 405, "Not allowed", "Use GET.")
                    continue
                status, result = _callback_token(request.target, state)
                if status != 200:
                    log.warning("login callback refused status=%d", status)
                    await _answer(stream, connection, status, "Sign-in refused", result)
                    continue
                await _answer(stream, connection, 200, "Signed in",
                              "The command line has its token; you can close this tab.")
                return result
            except (h11.ProtocolError, trio.TooSlowError, trio.BrokenResourceError) as error:
                log.warning("login callback connection dropped: %s", type(error).__name__)


async def run_login(
    app_url: str,
    *,
    edge_url: str | None = None,
    give_up_after: float = DEFAULT_LOGIN_TIMEOUT,
    open_browser: OpenBrowser | None = None,
    echo: Echo,
    home: Path | None = None,
    make_state: StateFactory = new_state,
) -> Path:
    """The whole login: listen, show (and maybe open) the URL, wait, save; the token's path."""
    hostname = hostname_of(app_url)
    state = make_state()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    async with listener:
        port = listener.socket.getsockname()[1]
        callback = f"http://127.0.0.1:{port}{CALLBACK_PATH}"
        url = cli_login_url(app_url, callback, state, edge_url=edge_url)
        echo("Sign in to reach this application; open this URL in your browser:")
        echo(url)
        if open_browser is not None:
            try:
                open_browser(url)
            except Exception as error:  # a missing or broken browser is not fatal
                log.warning("could not open a browser: %s", error)
        with trio.move_on_after(give_up_after):
            token = await receive_login_token(listener, state)
            return save_app_token(hostname, token, home)
    raise LoginTimedOut(
        f"no sign-in arrived within {give_up_after:g}s; run the command again "
        "(--timeout gives more time)"
    )
