"""A request through edge, tunnel and connector reaches the origin; each way it can fail
gets its own page, so an operator can tell the tunnel's fault from the origin's."""

from __future__ import annotations

import socket

import pytest
import trio

from connector.ingress import OriginRequest

from .conftest import ConnectorFactory, RunningEdge
from .origin import Origin
from .visitor import fetch, fetch_json_error

pytestmark = pytest.mark.e2e

HANG_GUARD = 20.0


def closed_port() -> int:
    """A loopback port nothing listens on: bound by us, then released."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_request_reaches_the_origin_with_the_visitors_host(
    edge: RunningEdge, origin: tuple[Origin, str], connector_factory: ConnectorFactory
) -> None:
    app, url = origin
    credentials = edge.create_tunnel("app", "app.example.test")
    await connector_factory(edge, credentials, url)
    with trio.fail_after(HANG_GUARD):
        response = await fetch(edge.public, "App.Example.TEST.", "/hello?x=1")
    assert response.status == 200, response.text
    seen = response.json()
    assert seen["tag"] == app.tag
    assert seen["target"] == "/hello?x=1"
    assert seen["headers"]["host"] == "app.example.test"
    assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
    assert response.header("x-origin-tag") == app.tag


async def test_unknown_host_gets_the_404_page(
    edge: RunningEdge, origin: tuple[Origin, str], connector_factory: ConnectorFactory
) -> None:
    credentials = edge.create_tunnel("app", "app.example.test")
    await connector_factory(edge, credentials, origin[1])
    with trio.fail_after(HANG_GUARD):
        response = await fetch_json_error(edge.public, "nobody.example.test")
        html = await fetch(edge.public, "nobody.example.test")
    assert response.status == 404
    assert response.json()["error"] == "unknown_host"
    assert html.status == 404
    assert "nobody.example.test" in html.text
    assert origin[0].requests == 0


async def test_route_without_a_connector_is_tunnel_offline(edge: RunningEdge) -> None:
    edge.create_tunnel("sleepy-tunnel", "sleepy.example.test")
    with trio.fail_after(HANG_GUARD):
        response = await fetch_json_error(edge.public, "sleepy.example.test")
        html = await fetch(edge.public, "sleepy.example.test")
    assert response.status == 502
    assert response.json()["error"] == "tunnel_offline"
    assert html.status == 502
    assert "sleepy-tunnel" in html.text


async def test_origin_down_is_origin_unreachable_not_tunnel_offline(
    edge: RunningEdge, connector_factory: ConnectorFactory
) -> None:
    credentials = edge.create_tunnel("app", "app.example.test")
    await connector_factory(edge, credentials, f"http://127.0.0.1:{closed_port()}")
    with trio.fail_after(HANG_GUARD):
        response = await fetch_json_error(edge.public, "app.example.test")
    assert response.status == 502
    assert response.json()["error"] == "origin_unreachable"


async def test_silent_origin_is_origin_timeout(
    edge: RunningEdge, origin: tuple[Origin, str], connector_factory: ConnectorFactory
) -> None:
    credentials = edge.create_tunnel("app", "app.example.test")
    await connector_factory(edge, credentials, origin[1],
                            origin_request=OriginRequest(response_header_timeout=0.5))
    with trio.fail_after(HANG_GUARD):
        response = await fetch_json_error(edge.public, "app.example.test", "/silent")
    assert response.status == 504
    assert response.json()["error"] == "origin_timeout"
