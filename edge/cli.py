"""``tunnelgate-edge``: set up, check, migrate and run an edge.

Exit codes: 0 success, 1 a runtime failure (store cannot be opened, files cannot be written),
2 a usage or config error (the message starts with the key path), 130 interrupted.

Secrets never travel on the command line: ``init`` mints the admin token itself, writes it to
``admin.token`` with mode 0600 and shows it once; everything else reads files.

``init`` and ``migrate`` also make sure the store holds an active Access signing key (RS256),
so a new edge can sign tokens from its first request. The Access administration commands
(``app``, ``policy``, ``idp``, ``service-token``, ``session``, ``keys``, ``audit``, ``apply``)
talk to a running edge's admin API and live in :mod:`edge.cli_access`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import sys
import time
from pathlib import Path
from typing import NoReturn

import click
import trio

from edge.access.keys_service import ensure_signing_key
from edge.cli_access import register_access_commands
from edge.config import (
    DEFAULT_LISTEN,
    ConfigError,
    EdgeConfig,
    load_edge_config,
    parse_auth_domain,
    parse_config,
    parse_duration,
    parse_listen_address,
)
from edge.store import StoreError, open_store
from edge.store.postgres import redact_url
from tunnel.garbage_collection import settle_after_startup
from tunnel.logging_setup import LOG_FORMATS, configure_logging
from tunnel.malloc_tuning import tune_allocator
from tunnel.systemd_notify import SystemdNotifier

__all__ = ["CONFIG_TEMPLATE", "main"]

log = logging.getLogger(__name__)

CONFIG_FILENAME = "edge.toml"
TOKEN_FILENAME = "admin.token"
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130

CONFIG_TEMPLATE = """\
# tunnelgate edge configuration. Check it with: tunnelgate-edge check-config edge.toml
# Relative paths are resolved against the folder that holds this file.
# Durations are written like "250ms", "30s", "5m", "1h" (or sums such as "1m30s").

[edge]
id = "edge-1"                # name of this edge in logs and connection records (unique per cluster)
state_dir = "."              # where the SQLite store (tunnelgate.db) and local secrets live

[listen]
# Each listener is "HOST:PORT" ("[::1]:PORT" for IPv6); "" disables it (not the tunnel).
# Bind "0.0.0.0" only on purpose: it exposes the listener on every interface.
public = "{public}"          # plain HTTP for visitors
public_tls = ""              # HTTPS for visitors; needs at least one [[tls.certificate]]
tunnel = "{tunnel}"          # connectors dial in here (WebSocket)
admin = "{admin}"            # admin API; keep it on loopback or a private network
ops = "{ops}"                # /healthz and /ready for load balancers and systemd

[tunnel]
public_url = ""              # URL connectors dial, written into credentials and run tokens;
                             # "" = ws://<tunnel listener>; behind TLS use "wss://host:port"
heartbeat_interval = "5s"    # how often each side pings an idle tunnel connection
heartbeat_timeout = "15s"    # silence after which a tunnel connection counts as dead

[http]
max_header_bytes = 32768     # request line plus headers; larger heads get 431
max_headers = 100            # header fields per request; more get 431
header_timeout = "10s"       # time to deliver a request head once it starts (slowloris guard)
idle_timeout = "60s"         # how long a kept-alive connection may wait for its next request
max_body_bytes = 0           # request body cap in bytes (413 above it); 0 = unlimited
trusted_proxies = []         # CIDRs whose X-Forwarded-* headers are believed, e.g. ["10.0.0.0/8"]

[store]
url = ""
# "" = SQLite in edge.state_dir; "sqlite:PATH" = SQLite at PATH;
# "postgresql://USER@HOST:PORT/DB" = PostgreSQL shared by several edges
# password_file = "pg.password"   # PostgreSQL password (first line); or use ~/.pgpass
# migrate_on_start = false        # PostgreSQL: let serve apply migrations (else run migrate)

# HTTPS certificates; the edge picks one by the name the client asks for (SNI).
# [[tls.certificate]]
# cert_file = "certs/example.com.pem"    # PEM chain, leaf first
# key_file = "certs/example.com.key"     # PEM private key

[access]
auth_domain = "{auth_domain}"  # host that holds the login session, e.g. "auth.example.com"
"""

CLUSTER_BLOCK = """
[cluster]
# Several edges on one PostgreSQL. An edge that gets a request for a tunnel it holds no
# connection for forwards it to an edge that does, over this internal listener.
listen = "{cluster_listen}"       # internal listener; keep it on a private network
advertise_url = ""                # how other edges reach it; "" = http://<bound address>
secret_file = "cluster.secret"    # shared secret of the hop: the SAME file on every edge
heartbeat_interval = "2s"         # how often this edge refreshes its rows in PostgreSQL
expiry = "10s"                    # an edge silent this long counts as gone
resync_interval = "30s"           # full re-read of the store besides LISTEN/NOTIFY
"""
CLUSTER_SECRET_FILENAME = "cluster.secret"


@click.group()
@click.version_option(package_name="tunnelgate", prog_name="tunnelgate-edge")
def main() -> None:
    """Run and manage a tunnelgate edge."""


register_access_commands(main)


def _fail(message: str, code: int, *, hint: str = "") -> NoReturn:
    click.echo(message, err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(code)


def _load_config(path: Path) -> EdgeConfig:
    try:
        return load_edge_config(path)
    except ConfigError as exc:
        _fail(f"{path}: {exc}", EXIT_CONFIG, hint=exc.hint)


def _listen_option(value: str, name: str) -> str:
    try:
        return str(parse_listen_address(value, key_path=f"listen.{name}"))
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def _write_private_file(path: Path, text: str) -> None:
    """Write a secret so that it is never readable by others, not even for a moment."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@main.command()
@click.option(
    "--dir",
    "directory",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for edge.toml, the store and admin.token (created if missing).",
)
@click.option("--public-listen", default=DEFAULT_LISTEN["public"], show_default=True)
@click.option("--tunnel-listen", default=DEFAULT_LISTEN["tunnel"], show_default=True)
@click.option("--admin-listen", default=DEFAULT_LISTEN["admin"], show_default=True)
@click.option("--ops-listen", default=DEFAULT_LISTEN["ops"], show_default=True)
@click.option("--auth-domain", default="", help="Host of the login session, e.g. auth.example.com.")
@click.option(
    "--store",
    "store_url",
    default="",
    metavar="URL",
    help="postgresql://USER@HOST:PORT/DB to share a store with other edges (default: SQLite in "
    "DIR). No password here: use store.password_file or ~/.pgpass.",
)
@click.option("--edge-id", default="edge-1", show_default=True, help="Name of this edge.")
@click.option(
    "--cluster-listen",
    default="127.0.0.1:7847",
    show_default=True,
    help="With --store postgresql://...: where other edges forward requests to this one.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Overwrite an existing edge.toml; the store and earlier admin tokens are kept.",
)
def init(
    directory: Path,
    public_listen: str,
    tunnel_listen: str,
    admin_listen: str,
    ops_listen: str,
    auth_domain: str,
    store_url: str,
    edge_id: str,
    cluster_listen: str,
    force: bool,
) -> None:
    """Write a commented edge.toml, create the store and mint an admin token.

    With ``--store postgresql://...`` the edge joins a cluster: the schema is migrated, and
    ``cluster.secret`` (the forwarding hop's shared secret) is created unless DIR already has
    one; copy the same file to every edge of the cluster (the access sealing secret is shared
    through the store).
    """
    clustered = store_url.startswith(("postgresql://", "postgres://"))
    values = {
        "public": _listen_option(public_listen, "public"),
        "tunnel": _listen_option(tunnel_listen, "tunnel"),
        "admin": _listen_option(admin_listen, "admin"),
        "ops": _listen_option(ops_listen, "ops"),
        "auth_domain": "",
    }
    try:
        parse_config({"edge": {"id": edge_id}, "store": {"url": store_url}}, config_dir=directory)
    except ConfigError as exc:
        option = "--edge-id" if exc.key_path.startswith("edge") else "--store"
        raise click.BadParameter(str(exc), param_hint=option) from None
    if auth_domain:
        try:
            values["auth_domain"] = parse_auth_domain(auth_domain, key_path="--auth-domain")
        except ConfigError as exc:
            raise click.BadParameter(str(exc), param_hint="--auth-domain") from None
    config_path = directory / CONFIG_FILENAME
    if config_path.exists() and not force:
        _fail(f"{config_path} already exists; pass --force to overwrite it", EXIT_FAILURE)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial_path = config_path.with_name(CONFIG_FILENAME + ".partial")
        text = CONFIG_TEMPLATE.format(**values)
        text = text.replace('id = "edge-1"      ', f"id = {json.dumps(edge_id):<14}", 1)
        if store_url:
            text = text.replace('url = ""\n', f"url = {json.dumps(store_url)}\n", 1)
        if clustered:
            listen = _listen_option(cluster_listen, "cluster.listen")
            text += CLUSTER_BLOCK.format(cluster_listen=listen)
        partial_path.write_text(text, encoding="utf-8")
        partial_path.replace(config_path)
    except OSError as exc:
        _fail(f"cannot write {config_path}: {exc.strerror or exc}", EXIT_FAILURE)
    if clustered:
        secret_path = directory / CLUSTER_SECRET_FILENAME
        if not secret_path.exists():
            _write_private_file(secret_path, secrets.token_hex(32) + "\n")
    config = _load_config(config_path)
    token_path = directory / TOKEN_FILENAME
    try:
        store = open_store(config)
        try:
            token = store.add_admin_token()
            ensure_signing_key(store, now=time.time())
        finally:
            store.close()
        _write_private_file(token_path, token + "\n")
    except StoreError as exc:
        _fail(str(exc), EXIT_FAILURE, hint=exc.hint)
    except OSError as exc:
        _fail(f"cannot write {token_path}: {exc.strerror or exc}", EXIT_FAILURE)
    click.echo(f"Wrote {config_path}")
    click.echo(f"Store ready at {_store_location(config)}")
    click.echo(f"Admin token (saved to {token_path}, mode 0600; it is not shown again):")
    click.echo("")
    click.echo(f"    {token}")
    click.echo("")
    click.echo("Next steps:")
    click.echo(f"  1. Review {config_path}; every key is explained there.")
    click.echo(f"  2. tunnelgate-edge check-config {config_path}")
    click.echo(f"  3. tunnelgate-edge serve --config {config_path}")
    admin_url = f"http://{values['admin']}"
    if values["admin"].endswith(":0"):
        admin_url = "http://<admin address from the edge log>"
    click.echo(
        f'  4. Create a tunnel: curl -H "Authorization: Bearer $(cat {token_path})" '
        f'-d \'{{"name": "home"}}\' {admin_url}/v1/tunnels'
    )


@main.command("check-config")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def check_config(file: Path) -> None:
    """Validate a config file; exit 2 with the offending key path if it is wrong."""
    _load_config(file)
    click.echo(f"{file}: ok")


@main.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)
@click.option(
    "--log-format",
    type=click.Choice(LOG_FORMATS),
    default="text",
    show_default=True,
    help="text: key=value lines (journald); json: one object per line.",
)
@click.option(
    "--grace-period",
    default="30s",
    show_default=True,
    metavar="DURATION",
    help="On SIGTERM, how long in-flight requests may finish; a second signal stops at once.",
)
def serve(config_path: Path, log_level: str, log_format: str, grace_period: str) -> None:
    """Run the edge until SIGTERM or SIGINT (the first drains, a second stops at once)."""
    config = _load_config(config_path)
    try:
        grace = parse_duration(grace_period, key_path="--grace-period")
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="--grace-period") from None
    configure_logging(log_level, log_format)
    notifier = SystemdNotifier.from_environment()
    from edge import server

    async def serve_until_signalled() -> None:
        # stdout carries one machine-readable line when every listener is bound (scripts and
        # tests wait on it); logs go to stderr.
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
            async with trio.open_nursery() as nursery:

                async def run_edge(*, task_status: trio.TaskStatus[server.EdgeRuntime]) -> None:
                    await server.serve_edge(config, notifier=notifier, task_status=task_status)
                    nursery.cancel_scope.cancel()  # drained or stopped: no more signals to wait

                runtime = await nursery.start(run_edge)
                click.echo(
                    json.dumps(
                        {
                            "event": "ready",
                            "edge_id": config.edge.id,
                            "listeners": runtime.listeners,
                        }
                    )
                )
                sys.stdout.flush()
                settle_after_startup()
                tune_allocator()
                draining = False
                async for signum in signals:
                    if draining:
                        log.warning("second signal %s: stopping without waiting", signum)
                        runtime.shutdown()
                        break
                    draining = True
                    nursery.start_soon(runtime.drain, grace)

    try:
        trio.run(serve_until_signalled)
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
    except StoreError as exc:
        _fail(f"store: {exc}", EXIT_FAILURE, hint=exc.hint)
    except OSError as exc:
        _fail(f"cannot serve: {exc}", EXIT_FAILURE)


@main.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path)
)
def migrate(config_path: Path) -> None:
    """Apply pending store migrations (SQLite or PostgreSQL)."""
    config = _load_config(config_path)
    location = _store_location(config)
    try:
        store = open_store(config, apply_migrations=False)
        try:
            applied = store.migrate()
            version = store.schema_version()
            ring, created = ensure_signing_key(store, now=time.time())
        finally:
            store.close()
    except StoreError as exc:
        _fail(f"store: {exc}", EXIT_FAILURE, hint=exc.hint)
    if created:
        click.echo(f"Generated signing key {ring.active.kid} ({ring.active.algorithm})")
    if applied:
        listed = ", ".join(str(number) for number in applied)
        click.echo(f"{location}: applied migrations {listed}; schema version {version}")
    else:
        click.echo(f"{location}: up to date (schema version {version})")


def _store_location(config: EdgeConfig) -> str:
    if config.store.is_postgres:
        return redact_url(config.store.url)
    return str(config.store_path())


@main.command()
@click.option(
    "--config", "config_path", required=True, type=click.Path(dir_okay=False, path_type=Path)
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def status(config_path: Path, as_json: bool) -> None:
    """Show the store's health, the edges of the cluster and their tunnel connections."""
    from edge.cluster_status import format_status, read_status

    config = _load_config(config_path)
    report = read_status(config)
    click.echo(json.dumps(report, indent=2) if as_json else format_status(report))
    if not report["store"]["reachable"]:
        sys.exit(EXIT_FAILURE)
