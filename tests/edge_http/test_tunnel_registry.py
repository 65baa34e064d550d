"""Which live connection of a tunnel the edge opens a stream on (edge.tunnels.TunnelRegistry)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from edge.tunnels import BULK_STREAM_WEIGHT, LiveConnection, TunnelRegistry

TUNNEL = "6f1c9a52-8d0e-4a57-9c3b-2f4d5e6a7b8c"


@dataclass
class _Session:
    """What ``pick`` reads of a session."""

    open_streams: int = 0
    bulk_streams: set[object] = field(default_factory=set)
    draining: bool = False


def _registry(*sessions: _Session) -> tuple[TunnelRegistry, list[LiveConnection]]:
    registry = TunnelRegistry()
    conns = []
    for index, session in enumerate(sessions):
        conn = LiveConnection(f"conn-{index}", TUNNEL, "connector-a", index, "127.0.0.1", 0.0,
                              cast(Any, session))
        registry.add(conn)
        conns.append(conn)
    return registry, conns


def test_the_connection_with_the_fewest_open_streams_is_picked() -> None:
    registry, conns = _registry(_Session(3), _Session(1), _Session(2))
    assert all(registry.pick(TUNNEL) is conns[1] for _ in range(6))


def test_ties_rotate_and_draining_connections_are_skipped() -> None:
    sessions = [_Session(0), _Session(0), _Session(0, draining=True)]
    registry, conns = _registry(*sessions)
    picked = {id(registry.pick(TUNNEL)) for _ in range(6)}
    assert picked == {id(conns[0]), id(conns[1])}
    for session in sessions[:2]:
        session.draining = True
    assert registry.pick(TUNNEL) is None
    assert registry.pick("another-tunnel") is None


def test_a_connection_carrying_a_bulk_transfer_is_avoided_while_others_have_room() -> None:
    busy, quiet, quieter = _Session(1, {object()}), _Session(12), _Session(20)
    registry, conns = _registry(busy, quiet, quieter)
    # One bulk stream weighs as much as BULK_STREAM_WEIGHT small ones.
    assert all(registry.pick(TUNNEL) is conns[1] for _ in range(4))
    quiet.open_streams = quieter.open_streams = BULK_STREAM_WEIGHT + 2
    assert registry.pick(TUNNEL) is conns[0]
    busy.bulk_streams.clear()  # the transfer ended
    quiet.open_streams = quieter.open_streams = 2
    assert registry.pick(TUNNEL) is conns[0]
