"""The internal hop trusts a forwarded request only with a valid, fresh, unused signature; and
notifications map to the admin path's change events."""

from __future__ import annotations

import base64
import json

import pytest
import trio
from e2e.origin import Origin, serve
from e2e.visitor import fetch

from edge.admin import ChangeEvent, ChangeKind
from edge.cluster_changes import parse_notice
from edge.cluster_forward import HOP_HEADER, HOP_SIGNATURE_HEADER, HopAuthenticator, HopRefused

from .conftest import ClusterEdgeFactory, create_tunnel, start_connector

SECRET = b"s" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 1_900_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_sealed_envelope_opens_once_and_only_unaltered_and_fresh() -> None:
    clock = Clock()
    sender = HopAuthenticator(SECRET, clock=clock)
    receiver = HopAuthenticator(SECRET, clock=clock)
    blob, signature = sender.seal({"tunnel_id": "t", "head": {"method": "GET"}})
    assert receiver.open(blob, signature)["tunnel_id"] == "t"
    with pytest.raises(HopRefused, match="already used"):
        receiver.open(blob, signature)

    blob, signature = sender.seal({"tunnel_id": "t", "head": {}})
    tampered = base64.urlsafe_b64encode(
        json.dumps({"tunnel_id": "other", "head": {}, "ts": clock.now, "nonce": "n"}).encode()
    ).rstrip(b"=")
    for bad_blob, bad_signature in [
        (tampered, signature),
        (blob, signature[:-1] + b"0" if signature[-1:] != b"0" else signature[:-1] + b"1"),
        (blob, None),
        (None, signature),
        (blob, HopAuthenticator(b"t" * 32, clock=clock).seal({})[1]),
    ]:
        with pytest.raises(HopRefused) as refused:
            receiver.open(bad_blob, bad_signature)
        assert refused.value.status == 401
    clock.now += 31
    with pytest.raises(HopRefused, match="too old"):
        receiver.open(blob, signature)


@pytest.mark.parametrize(
    ("payload", "event"),
    [
        ("route_added:t1", ChangeEvent(ChangeKind.ROUTE_ADDED, "t1")),
        ("tunnel_deleted:t1", ChangeEvent(ChangeKind.TUNNEL_DELETED, "t1", force=True)),
        ("sessions_revoked:email=a@b.c", ChangeEvent(ChangeKind.SESSIONS_REVOKED, email="a@b.c")),
        ("sessions_revoked:aud=ab12", ChangeEvent(ChangeKind.SESSIONS_REVOKED, aud="ab12")),
        ("app_changed:grafana", ChangeEvent(ChangeKind.APP_CHANGED, name="grafana")),
        ("keys_rotated:", ChangeEvent(ChangeKind.KEYS_ROTATED)),
        ("connections_changed:edge-a", None),
        ("session_saved:abc", ChangeEvent(ChangeKind.SESSION_SAVED, name="abc")),
        ("session_deleted:abc", ChangeEvent(ChangeKind.SESSION_DELETED, name="abc")),
    ],
)
def test_notices_stand_for_the_admin_paths_change_events(
    payload: str, event: ChangeEvent | None
) -> None:
    assert parse_notice(payload).change_event() == event


async def test_the_internal_listener_refuses_unsigned_and_altered_requests(
    cluster_edge: ClusterEdgeFactory, nursery: trio.Nursery
) -> None:
    origin = Origin("guarded")
    address = await nursery.start(serve, origin, "127.0.0.1", 0)
    edge = await cluster_edge("edge-a")
    credentials = await create_tunnel(edge, "home", "guarded.cluster.test")
    await start_connector(nursery, credentials, f"http://{address}", edge)
    internal = edge.runtime.listeners["internal"]
    head = {"kind": "http", "method": "GET", "target": "/admin", "host": "guarded.cluster.test",
            "scheme": "https", "headers": [["host", "guarded.cluster.test"]],
            "client": "203.0.113.9", "identity": {"email": "mallory@example.com"}}
    forged = base64.urlsafe_b64encode(
        json.dumps({"tunnel_id": credentials.tunnel_id, "head": head, "ts": 0, "nonce": "x"})
        .encode()).rstrip(b"=").decode()

    unsigned = await fetch(internal, "guarded.cluster.test", "/admin",
                           headers=[(HOP_HEADER.decode(), forged), ("accept", "application/json")])
    assert unsigned.status == 401
    assert "hop envelope is missing" in unsigned.json()["message"]
    wrong_key = HopAuthenticator(b"w" * 32).seal({"tunnel_id": credentials.tunnel_id,
                                                  "head": head})
    refused = await fetch(internal, "guarded.cluster.test", "/admin", headers=[
        (HOP_HEADER.decode(), wrong_key[0].decode()),
        (HOP_SIGNATURE_HEADER.decode(), wrong_key[1].decode())])
    assert refused.status == 401

    # Signed with the cluster secret, but sent for another path than the one signed.
    authenticator = HopAuthenticator(edge.cluster.secret_file.read_bytes().strip())
    blob, signature = authenticator.seal({"tunnel_id": credentials.tunnel_id, "head": head})
    altered = await fetch(internal, "guarded.cluster.test", "/other", headers=[
        (HOP_HEADER.decode(), blob.decode()), (HOP_SIGNATURE_HEADER.decode(), signature.decode()),
        ("accept", "application/json")])
    assert altered.status == 400
    assert "differs from the signed head" in altered.json()["message"]
    assert origin.requests == 0

    # The genuine article is served without a second Access check, with the signed identity
    # (a fresh envelope: the one above was spent, even though it was refused).
    blob, signature = authenticator.seal({"tunnel_id": credentials.tunnel_id, "head": head})
    served = await fetch(internal, "guarded.cluster.test", "/admin", headers=[
        (HOP_HEADER.decode(), blob.decode()), (HOP_SIGNATURE_HEADER.decode(), signature.decode())])
    assert served.status == 200
    assert served.json()["target"] == "/admin"
    assert origin.requests == 1
    replayed = await fetch(internal, "guarded.cluster.test", "/admin", headers=[
        (HOP_HEADER.decode(), blob.decode()), (HOP_SIGNATURE_HEADER.decode(), signature.decode())])
    assert replayed.status == 401
    assert origin.requests == 1
