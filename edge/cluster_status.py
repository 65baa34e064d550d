"""What ``tunnelgate-edge status`` shows: the store's health, the edges of the cluster (from
their heartbeat rows) and which edge holds how many connections of each tunnel.

It reads the store directly, so it works while every edge is down, and it says plainly when the
store itself cannot be reached (exit code 1).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from edge.config import EdgeConfig
from edge.store import StoreError, open_store
from edge.store.postgres import PostgresStore, redact_url

__all__ = ["format_status", "read_status"]



def read_status(config: EdgeConfig) -> dict[str, Any]:
    """What ``tunnelgate-edge status`` shows: store health, edges, tunnels' connections."""
    started = time.monotonic()
    location = redact_url(config.store.url) if config.store.is_postgres else str(
        config.store_path()
    )
    report: dict[str, Any] = {
        "store": {"backend": "postgresql" if config.store.is_postgres else "sqlite",
                  "location": location, "reachable": False},
        "edges": [],
        "tunnels": [],
    }
    try:
        store = open_store(config, apply_migrations=False)
    except StoreError as exc:
        report["store"]["error"] = exc.message
        return report
    try:
        report["store"].update(
            reachable=True,
            schema_version=store.schema_version(),
            latency_ms=round((time.monotonic() - started) * 1000, 1),
        )
        tunnels = store.list_tunnels()
        snapshot = (
            store.cluster_snapshot(config.cluster.expiry)
            if isinstance(store, PostgresStore) and report["store"]["schema_version"] >= 3
            else None
        )
    except StoreError as exc:
        report["store"]["error"] = exc.message
        return report
    finally:
        store.close()
    if snapshot is None:
        report["edges"] = [{"edge_id": config.edge.id, "note": "single edge (SQLite store); "
                            "live connections are on its admin API"}]
    else:
        report["edges"] = [
            {"edge_id": e.edge_id, "internal_url": e.internal_url,
             "heartbeat_age_s": round(e.heartbeat_age, 1), "started_at": e.started_at.isoformat(),
             "connections": sum(1 for c in snapshot.connections if c.edge_id == e.edge_id)}
            for e in snapshot.edges
        ]
    for tunnel in tunnels:
        entry: dict[str, Any] = {"id": tunnel.id, "name": tunnel.name}
        if snapshot is not None:
            per_edge: dict[str, int] = {}
            for conn in snapshot.connections:
                if conn.tunnel_id == tunnel.id:
                    per_edge[conn.edge_id] = per_edge.get(conn.edge_id, 0) + 1
            entry["connections"] = per_edge
        report["tunnels"].append(entry)
    return report


def format_status(report: Mapping[str, Any]) -> str:
    store = report["store"]
    lines = [f"store     {store['backend']} {store['location']}"]
    if store["reachable"]:
        lines.append(f"          reachable, schema version {store['schema_version']}, "
                     f"{store['latency_ms']} ms")
    else:
        lines.append(f"          UNREACHABLE: {store.get('error', '')}")
    lines.append("")
    lines.append(f"edges     {len(report['edges'])}")
    for edge in report["edges"]:
        if "note" in edge:
            lines.append(f"  {edge['edge_id']}: {edge['note']}")
            continue
        lines.append(f"  {edge['edge_id']:<20} {edge['internal_url'] or '(no internal listener)'}"
                     f"  heartbeat {edge['heartbeat_age_s']}s ago  "
                     f"{edge['connections']} connection(s)")
    lines.append("")
    lines.append(f"tunnels   {len(report['tunnels'])}")
    for tunnel in report["tunnels"]:
        if "connections" not in tunnel:
            lines.append(f"  {tunnel['name']:<20} {tunnel['id']}")
            continue
        spread = ", ".join(f"{edge}: {n}" for edge, n in sorted(tunnel["connections"].items()))
        lines.append(f"  {tunnel['name']:<20} {tunnel['id']}  {spread or 'no live connection'}")
    return "\n".join(lines)
