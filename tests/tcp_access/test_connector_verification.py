"""The connector itself refuses streams without a valid assertion (``originRequest.access``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from connector.access_client import AccessRefused, EdgeTarget, open_tcp_websocket
from tunnel.errors import TransportClosed

from .conftest import ECHO_HOST, SIGNAL_TIMEOUT, start_deployment

pytestmark = pytest.mark.e2e

UNPROTECTED = "open.localhost"


async def test_the_connector_refuses_a_route_whose_edge_app_is_missing(
    nursery: trio.Nursery, tmp_path: Path, echo_port: int
) -> None:
    service = f"tcp://127.0.0.1:{echo_port}"
    deployment = await start_deployment(
        nursery, tmp_path / "edge", {ECHO_HOST: service, UNPROTECTED: service},
        protected=(ECHO_HOST,), verify_for=ECHO_HOST,
    )
    allowed = deployment.allowed
    with trio.fail_after(SIGNAL_TIMEOUT):
        # With Access at the edge the assertion verifies at the connector: bytes flow.
        websocket = await open_tcp_websocket(
            EdgeTarget(ECHO_HOST, deployment.edge_url, allowed.client_id, allowed.secret))
        try:
            await websocket.send_message(b"ping")
            assert bytes(await websocket.receive_data()) == b"PING"
        finally:
            await websocket.aclose()
        # The edge has no app for this host, so it forwards without an assertion: the
        # connector resets the stream (ACCESS_DENIED) and the edge answers 403.
        with pytest.raises(AccessRefused) as refused:
            await open_tcp_websocket(EdgeTarget(UNPROTECTED, deployment.edge_url))
        assert refused.value.status == 403
        assert b"identity assertion" in refused.value.body


async def test_without_verification_an_unprotected_route_is_open(
    nursery: trio.Nursery, tmp_path: Path, echo_port: int
) -> None:
    """The control case: the refusal above comes from the connector's check, nothing else."""
    service = f"tcp://127.0.0.1:{echo_port}"
    deployment = await start_deployment(
        nursery, tmp_path / "edge", {ECHO_HOST: service, UNPROTECTED: service},
        protected=(ECHO_HOST,),
    )
    with trio.fail_after(SIGNAL_TIMEOUT):
        websocket = await open_tcp_websocket(EdgeTarget(UNPROTECTED, deployment.edge_url))
        try:
            await websocket.send_message(b"open")
            assert bytes(await websocket.receive_data()) == b"OPEN"
        except TransportClosed:
            pytest.fail("the open route closed the stream")
        finally:
            await websocket.aclose()
