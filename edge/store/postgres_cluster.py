"""The cluster tables of the PostgreSQL store: which edges are alive, and which tunnel
connections each one holds.

Every edge writes its own rows only, with heartbeats stamped by the database clock (``now()``),
so edges whose clocks disagree still agree on who went quiet. An edge that stops heartbeating
(killed, partitioned) simply ages out: readers ignore rows older than the expiry they pass, and
each heartbeat deletes rows that have been expired for a while. A change in an edge's set of
connections is announced with ``NOTIFY tunnelgate, 'connections_changed:<edge id>'`` so the
other edges refresh their view at once rather than at their next poll.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from edge.store.postgres_tables import PgTables

__all__ = ["ClusterConnection", "ClusterEdge", "ClusterSnapshot", "PgClusterTables"]


@dataclass(frozen=True)
class ClusterConnection:
    """One tunnel connection held by some edge."""

    connection_id: str
    edge_id: str
    tunnel_id: str
    connector_id: str
    conn_index: int
    client: str
    since: datetime


@dataclass(frozen=True)
class ClusterEdge:
    edge_id: str
    internal_url: str
    started_at: datetime
    heartbeat_age: float
    """Seconds since its last heartbeat, by the database clock."""


@dataclass(frozen=True)
class ClusterSnapshot:
    """The live edges and the connections they hold, as of one read."""

    edges: tuple[ClusterEdge, ...]
    connections: tuple[ClusterConnection, ...]


class PgClusterTables(PgTables):
    """Edge and live-connection rows for :mod:`edge.cluster`."""

    def announce_edge(self, edge_id: str, internal_url: str) -> None:
        """Record this edge as alive; connections a previous run of it left are dropped."""
        with self._transaction(exclusive=False) as conn:
            conn.execute(
                "INSERT INTO cluster_edges (edge_id, internal_url, started_at, heartbeat_at) "
                "VALUES (%s, %s, now(), now()) ON CONFLICT (edge_id) DO UPDATE SET "
                "internal_url = EXCLUDED.internal_url, started_at = now(), heartbeat_at = now()",
                (edge_id, internal_url),
            )
            conn.execute("DELETE FROM live_connections WHERE edge_id = %s", (edge_id,))
            self._notify(conn, "connections_changed", edge_id)

    def heartbeat_edge(
        self,
        edge_id: str,
        connections: Sequence[ClusterConnection],
        *,
        changed: bool,
        expiry: float,
    ) -> None:
        """Refresh this edge and exactly the connections it holds now; purge long-dead rows."""
        with self._transaction(exclusive=False) as conn:
            updated = conn.execute(
                "UPDATE cluster_edges SET heartbeat_at = now() WHERE edge_id = %s", (edge_id,)
            )
            if updated.rowcount == 0:
                raise LookupError(f"edge {edge_id} is not announced")
            ids = [c.connection_id for c in connections]
            conn.execute(
                "DELETE FROM live_connections WHERE edge_id = %s AND NOT connection_id = ANY(%s)",
                (edge_id, ids),
            )
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO live_connections (connection_id, edge_id, tunnel_id, "
                    "connector_id, conn_index, client, since, heartbeat_at) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, now()) ON CONFLICT (connection_id) "
                    "DO UPDATE SET heartbeat_at = now()",
                    [
                        (
                            c.connection_id,
                            edge_id,
                            c.tunnel_id,
                            c.connector_id,
                            c.conn_index,
                            c.client,
                            c.since,
                        )
                        for c in connections
                    ],
                )
            # Rows expired long ago belong to edges that are gone; anyone may sweep them.
            conn.execute(
                "DELETE FROM live_connections WHERE heartbeat_at < now() - make_interval(secs => %s)",
                (expiry * 10,),
            )
            if changed:
                self._notify(conn, "connections_changed", edge_id)

    def retire_edge(self, edge_id: str) -> None:
        """A clean shutdown: forget this edge and its connections now, not at expiry."""
        with self._transaction(exclusive=False) as conn:
            conn.execute("DELETE FROM live_connections WHERE edge_id = %s", (edge_id,))
            conn.execute("DELETE FROM cluster_edges WHERE edge_id = %s", (edge_id,))
            self._notify(conn, "connections_changed", edge_id)

    def cluster_snapshot(self, expiry: float) -> ClusterSnapshot:
        """Edges and connections that heartbeated within ``expiry`` seconds."""
        with self._reading() as conn:
            edge_rows = conn.execute(
                "SELECT edge_id, internal_url, started_at, "
                "EXTRACT(EPOCH FROM now() - heartbeat_at) FROM cluster_edges "
                "WHERE heartbeat_at >= now() - make_interval(secs => %s) "
                'ORDER BY edge_id COLLATE "C"',
                (expiry,),
            ).fetchall()
            connection_rows = conn.execute(
                "SELECT c.connection_id, c.edge_id, c.tunnel_id, c.connector_id, c.conn_index, "
                "c.client, c.since FROM live_connections c "
                "JOIN cluster_edges e ON e.edge_id = c.edge_id "
                "WHERE c.heartbeat_at >= now() - make_interval(secs => %s) "
                "AND e.heartbeat_at >= now() - make_interval(secs => %s) "
                'ORDER BY c.tunnel_id, c.edge_id COLLATE "C", c.conn_index',
                (expiry, expiry),
            ).fetchall()
        return ClusterSnapshot(
            edges=tuple(
                ClusterEdge(row[0], row[1], row[2], float(row[3])) for row in edge_rows
            ),
            connections=tuple(ClusterConnection(*row) for row in connection_rows),
        )
