"""The PostgreSQL schema of the store, as versioned migrations.

Versions 1 and 2 hold the same tables as the SQLite migrations of the same numbers (see
:data:`edge.store.sqlite.MIGRATIONS`), written with PostgreSQL's own types: ``timestamptz`` for
moments, ``jsonb`` for structured settings, ``boolean``, ``double precision`` for the Unix times
the Access layer keeps. Version 3 exists only here: the cluster tables several edges share (who
is alive, which edge holds which tunnel connection), which a single SQLite edge never needs.
Version 4 (``edge_secrets``) is SQLite's version 4 again.

The list is append-only: a released migration is never edited, a change is a new entry. Every
migration runs in one transaction together with its ``schema_migrations`` row, under an
advisory lock, so two edges starting at once cannot both apply it.
"""

from __future__ import annotations

from edge.store.sqlite import Migration

__all__ = ["PG_MIGRATIONS"]

PG_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "tunnels, credentials, routes, admin tokens, audit log",
        (
            """CREATE TABLE tunnels (
                id text PRIMARY KEY,
                name text NOT NULL,
                created_at timestamptz NOT NULL,
                deleted_at timestamptz
            )""",
            # A deleted tunnel keeps its row (its id stays known) but frees its name.
            "CREATE UNIQUE INDEX tunnels_live_name ON tunnels(name) WHERE deleted_at IS NULL",
            """CREATE TABLE tunnel_credentials (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                tunnel_id text NOT NULL REFERENCES tunnels(id),
                secret_hash text NOT NULL UNIQUE,
                created_at timestamptz NOT NULL
            )""",
            "CREATE INDEX tunnel_credentials_tunnel ON tunnel_credentials(tunnel_id)",
            """CREATE TABLE routes (
                hostname text PRIMARY KEY,
                tunnel_id text NOT NULL REFERENCES tunnels(id),
                created_at timestamptz NOT NULL
            )""",
            "CREATE INDEX routes_tunnel ON routes(tunnel_id)",
            """CREATE TABLE admin_tokens (
                hash text PRIMARY KEY,
                created_at timestamptz NOT NULL
            )""",
            """CREATE TABLE audit_log (
                id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                time timestamptz NOT NULL,
                kind text NOT NULL,
                detail jsonb NOT NULL
            )""",
        ),
    ),
    Migration(
        2,
        "access: idps, apps, policies, service tokens, signing keys, sessions, revocations",
        (
            """CREATE TABLE idps (
                name text PRIMARY KEY,
                type text NOT NULL CHECK (type IN ('oidc', 'github', 'otp')),
                config jsonb NOT NULL,
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL
            )""",
            """CREATE TABLE apps (
                id text PRIMARY KEY,
                name text NOT NULL UNIQUE,
                domain text NOT NULL UNIQUE,
                aud text NOT NULL UNIQUE,
                type text NOT NULL CHECK (type IN ('http', 'tcp')),
                session_duration integer NOT NULL,
                idps jsonb NOT NULL,
                cookie_name text NOT NULL,
                header_name text NOT NULL,
                email_header_name text NOT NULL,
                allow_websockets boolean NOT NULL,
                allow_encoded_slash boolean NOT NULL,
                created_at timestamptz NOT NULL,
                updated_at timestamptz NOT NULL
            )""",
            """CREATE TABLE policies (
                app_id text NOT NULL REFERENCES apps(id) ON DELETE CASCADE,
                position integer NOT NULL,
                name text NOT NULL,
                action text NOT NULL,
                include jsonb NOT NULL,
                require jsonb NOT NULL,
                exclude jsonb NOT NULL,
                PRIMARY KEY (app_id, position),
                UNIQUE (app_id, name)
            )""",
            """CREATE TABLE service_tokens (
                id text PRIMARY KEY,
                name text NOT NULL UNIQUE,
                client_id text NOT NULL UNIQUE,
                secret_hash text NOT NULL,
                created_at timestamptz NOT NULL,
                expires_at timestamptz NOT NULL
            )""",
            # not_after: when a retired key stops being published (NULL for the active key).
            """CREATE TABLE signing_keys (
                kid text PRIMARY KEY,
                algorithm text NOT NULL,
                private_key_pem text NOT NULL,
                certificate_pem text NOT NULL,
                created_at double precision NOT NULL,
                not_after double precision
            )""",
            """CREATE TABLE sessions (
                id_hash text PRIMARY KEY,
                email text NOT NULL,
                identity jsonb NOT NULL,
                created_at double precision NOT NULL,
                expires_at double precision NOT NULL,
                revoked boolean NOT NULL DEFAULT false
            )""",
            "CREATE INDEX sessions_email ON sessions(email)",
            """CREATE TABLE revocations (
                kind text NOT NULL CHECK (kind IN ('email', 'app')),
                subject text NOT NULL,
                epoch double precision NOT NULL,
                PRIMARY KEY (kind, subject)
            )""",
            "ALTER TABLE audit_log ADD COLUMN app text",
            "ALTER TABLE audit_log ADD COLUMN subject text",
            "CREATE INDEX audit_log_app ON audit_log(app, id)",
            "CREATE INDEX audit_log_subject ON audit_log(subject, id)",
        ),
    ),
    Migration(
        3,
        "cluster: edges and the live tunnel connections each one holds",
        (
            # Times are the database's own clock (now()), so edges with skewed clocks still
            # agree on who missed heartbeats.
            """CREATE TABLE cluster_edges (
                edge_id text PRIMARY KEY,
                internal_url text NOT NULL,
                started_at timestamptz NOT NULL,
                heartbeat_at timestamptz NOT NULL
            )""",
            """CREATE TABLE live_connections (
                connection_id text PRIMARY KEY,
                edge_id text NOT NULL,
                tunnel_id text NOT NULL,
                connector_id text NOT NULL,
                conn_index integer NOT NULL,
                client text NOT NULL,
                since timestamptz NOT NULL,
                heartbeat_at timestamptz NOT NULL
            )""",
            "CREATE INDEX live_connections_tunnel ON live_connections(tunnel_id)",
            "CREATE INDEX live_connections_edge ON live_connections(edge_id)",
        ),
    ),
    Migration(
        4,
        "edge secrets: values every edge of the store shares (the access sealing secret)",
        (
            """CREATE TABLE edge_secrets (
                name text PRIMARY KEY,
                value bytea NOT NULL,
                created_at timestamptz NOT NULL
            )""",
        ),
    ),
)
