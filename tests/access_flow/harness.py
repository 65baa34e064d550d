"""A whole Access deployment in the test's trio run: edge, connector, origin, visitors.

Everything listens on 127.0.0.1 with OS-chosen ports. Host names are ``*.localhost``; the
visitor's HTTP client (:class:`LoopbackTransport`) connects every ``*.localhost`` name to
127.0.0.1 and keeps the name in ``Host``, as a browser with a resolver rule would. The auth
domain is configured without a port (``auth.localhost``), so the edge sends visitors to it on
the port they already use.

Applications and IdPs are written to the edge's store and announced with the same change
events the admin API sends, so the running edge rebuilds its catalog exactly as in production.
"""

from __future__ import annotations

import logging
import re
import ssl
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import trio

from connector.config import Credentials, RunSettings
from connector.ingress import IngressTable
from connector.supervisor import Supervisor
from edge.access.runtime import AccessRuntime
from edge.admin.api import ChangeEvent, ChangeKind
from edge.config import load_edge_config
from edge.server import EdgeRuntime, serve_edge
from edge.store import NotFound
from edge.store.access_records import AppRecord, parse_app_spec, parse_idp, parse_policy_list

from .origin import AccessOrigin, AssertionChecker, serve_origin

AUTH = "auth.localhost"
PREFIX = "/cdn-cgi/access"
SIGNAL_TIMEOUT = 20.0
_OTP_LINE = re.compile(r"one-time code for (?P<email>\S+): (?P<code>\d+)")


class LoopbackTransport(httpx.AsyncBaseTransport):
    """Connects ``*.localhost`` to 127.0.0.1, leaving the URL's host in ``Host`` (and in the
    TLS server name)."""

    def __init__(self, verify: ssl.SSLContext | bool = True) -> None:
        self._inner = httpx.AsyncHTTPTransport(verify=verify)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host.endswith(".localhost"):
            request = httpx.Request(
                request.method,
                request.url.copy_with(host="127.0.0.1"),
                headers=request.headers,
                stream=request.stream,
                extensions={**request.extensions, "sni_hostname": request.url.host},
            )
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


def new_visitor(verify: ssl.SSLContext | bool = True) -> httpx.AsyncClient:
    """A browser stand-in: keeps cookies, follows nothing on its own."""
    return httpx.AsyncClient(
        transport=LoopbackTransport(verify), follow_redirects=False, timeout=20
    )


def query_of(url: str | httpx.URL) -> dict[str, str]:
    return {key: values[0] for key, values in parse_qs(urlsplit(str(url)).query).items()}


def location(response: httpx.Response) -> str:
    assert response.status_code == 302, (response.status_code, response.text[:500])
    return str(response.url.join(response.headers["location"]))


class OtpInbox(logging.Handler):
    """Codes the one-time PIN IdP with ``delivery = "log"`` wrote to the ``tunnelgate.otp`` log."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.codes: dict[str, str] = {}
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        match = _OTP_LINE.search(record.getMessage())
        if match:
            self.codes[match["email"]] = self.last = match["code"]


@contextmanager
def otp_inbox() -> Iterator[OtpInbox]:
    inbox = OtpInbox()
    logger = logging.getLogger("tunnelgate.otp")
    logger.addHandler(inbox)
    try:
        yield inbox
    finally:
        logger.removeHandler(inbox)


@dataclass
class Stack:
    edge: EdgeRuntime
    origin: AccessOrigin
    folder: Path
    apps: dict[str, AppRecord] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(self.edge.listeners["public"].rsplit(":", 1)[1])

    @property
    def public(self) -> str:
        return self.edge.listeners["public"]

    @property
    def access(self) -> AccessRuntime:
        assert self.edge.access is not None
        return self.edge.access

    def url(self, host: str, path: str = "/") -> str:
        return f"http://{host}:{self.port}{path}"

    async def add_idp(self, table: dict[str, Any]) -> None:
        store = self.edge.state.store
        await trio.to_thread.run_sync(store.create_idp, parse_idp(table))
        await self.access.on_change(ChangeEvent(ChangeKind.IDP_CHANGED, name=table["name"]))

    async def add_app(self, table: dict[str, Any], policies: Sequence[dict[str, Any]]) -> AppRecord:
        store = self.edge.state.store
        spec = parse_app_spec(table)

        def write() -> AppRecord:
            record = store.create_app(spec)
            store.set_policies(spec.name, parse_policy_list(list(policies)))
            return record

        record = await trio.to_thread.run_sync(write)
        self.apps[spec.name] = record
        self.origin.checker.audiences[record.host] = record.aud
        await self.access.on_change(ChangeEvent(ChangeKind.APP_CHANGED, name=spec.name))
        return record

    async def set_policies(self, app: str, policies: Sequence[dict[str, Any]]) -> None:
        store = self.edge.state.store
        await trio.to_thread.run_sync(
            store.set_policies, app, parse_policy_list(list(policies))
        )
        await self.access.on_change(ChangeEvent(ChangeKind.APP_CHANGED, name=app))

    async def otp_login(
        self, visitor: httpx.AsyncClient, inbox: OtpInbox, url: str, email: str
    ) -> httpx.Response:
        """Sign in with the one-time PIN from ``url`` (an app URL); returns the final answer."""
        response = await visitor.get(url)
        login = location(response)
        page = await visitor.get(login)
        assert page.status_code == 200, page.text[:500]
        form = hidden_fields(page.text)
        sent = await visitor.post(
            self.url(AUTH, f"{PREFIX}/otp/email"), data={**form, "email": email}
        )
        assert sent.status_code == 200, sent.text[:500]
        code_form = hidden_fields(sent.text)
        answer = await visitor.post(
            self.url(AUTH, f"{PREFIX}/otp/code"), data={**code_form, "code": inbox.codes[email]}
        )
        return await follow(visitor, answer)


_HIDDEN = re.compile(r'<input type="hidden" name="([^"]+)" value="([^"]*)">')


def hidden_fields(page: str) -> dict[str, str]:
    import html

    return {name: html.unescape(value) for name, value in _HIDDEN.findall(page)}


async def follow(
    visitor: httpx.AsyncClient, response: httpx.Response, *, hops: int = 8
) -> httpx.Response:
    """Follow redirects (each one a real request) until an answer that is not a redirect."""
    for _ in range(hops):
        if response.status_code not in (301, 302, 303, 307, 308):
            return response
        response = await visitor.get(location(response))
    pytest.fail(f"more than {hops} redirects, last at {response.url}")


async def raw_get(
    stack: Stack, host: str, target: str, headers: list[tuple[str, str]]
) -> tuple[int, bytes]:
    """One request written byte for byte (no client library normalises anything)."""
    lines = [f"GET {target} HTTP/1.1", f"Host: {host}:{stack.port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in headers]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    address, port = stack.public.rsplit(":", 1)
    with trio.fail_after(20):
        async with await trio.open_tcp_stream(address, int(port)) as stream:
            await stream.send_all(request)
            received = bytearray()
            while chunk := await stream.receive_some(65536):
                received += chunk
    head, _, body = bytes(received).partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def edge_toml(state_dir: Path, tls: tuple[Path, Path] | None = None) -> str:
    text = (
        "[edge]\n"
        'id = "edge-access"\n'
        f'state_dir = "{state_dir}"\n'
        "[listen]\n"
        'public = "127.0.0.1:0"\n'
        'tunnel = "127.0.0.1:0"\n'
        'admin = "127.0.0.1:0"\n'
        'ops = "127.0.0.1:0"\n'
    )
    if tls is not None:
        text += 'public_tls = "127.0.0.1:0"\n'
    text += f'[access]\nauth_domain = "{AUTH}"\n'
    if tls is not None:
        text += f'[[tls.certificate]]\ncert_file = "{tls[0]}"\nkey_file = "{tls[1]}"\n'
    return text


async def start_stack(
    nursery: trio.Nursery,
    folder: Path,
    hosts: Sequence[str],
    *,
    tls: tuple[Path, Path] | None = None,
) -> Stack:
    """Edge, origin and a connector whose tunnel serves ``hosts``; ``tls`` (certificate and
    key files) adds an HTTPS listener."""
    await trio.Path(folder).mkdir(parents=True, exist_ok=True)
    config_path = folder / "edge.toml"
    await trio.Path(config_path).write_text(edge_toml(folder, tls))
    config = load_edge_config(config_path)
    edge: EdgeRuntime = await nursery.start(serve_edge, config)
    checker = AssertionChecker(
        certs_url=f"http://{edge.listeners['public']}{PREFIX}/certs", issuer=f"http://{AUTH}"
    )
    origin = AccessOrigin(checker)
    origin_url: str = await nursery.start(serve_origin, origin)
    store = edge.state.store
    try:
        tunnel = store.get_tunnel("access-tests")  # a restarted edge: same store
        secret = store.add_tunnel_credential(tunnel.id)
    except NotFound:
        tunnel, secret = store.create_tunnel("access-tests")
    for host in hosts:
        store.add_route(tunnel.id, host)
    edge.state.reload()
    edge_url = f"ws://{edge.listeners['tunnel']}"
    credentials = Credentials(tunnel.id, tunnel.name, secret, edge_url)
    settings = RunSettings(
        credentials=credentials,
        edges=(edge_url,),
        ingress=IngressTable.single(origin_url),
        ha_connections=1,
        grace_period=1.0,
    )
    supervisor = Supervisor(settings)
    await nursery.start(supervisor.run)
    with trio.fail_after(SIGNAL_TIMEOUT):
        await supervisor.state.first_registered.wait()
        while not edge.registry.connections(tunnel.id):
            await edge.registry.changed.wait()
    return Stack(edge, origin, folder)
