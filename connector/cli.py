"""``tunnelgate``: manage tunnels through the edge's admin API, and run the connector.

Habits follow cloudflared (``tunnel create|route|list|info|delete|token|run``, ``tunnel ingress
validate|rule``) so its users feel at home. Exit codes: 0 success, 1 the admin API refused or
could not be reached, 2 a usage or configuration error, 3 (from ``run``) the edge refused the
tunnel for good (deleted, bad credentials), which a service manager must not restart on.

Secrets never travel in argv: the admin token comes from ``--api-token-file`` or the
``TUNNELGATE_API_TOKEN`` variable, a run token from ``--token-file`` or ``TUNNELGATE_TUNNEL_TOKEN``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import quote

import click

from connector.access_cli import access
from connector.config import (
    DEFAULT_GRACE_PERIOD,
    DEFAULT_HA_CONNECTIONS,
    ConnectorConfig,
    Credentials,
    RunSettings,
    credentials_from_mapping,
    credentials_from_token,
    load_connector_config,
    load_credentials,
    parse_duration,
    validate_edge_url,
    validate_ha_connections,
    validate_metrics_address,
    write_credentials,
    write_private_file,
)
from connector.errors import AdminApiError, AdminApiUnreachable, ConfigError, ConnectorError
from connector.ingress import IngressTable, OriginRequest
from tunnel.garbage_collection import settle_after_startup
from tunnel.logging_setup import LOG_FORMATS, configure_logging, remember_secret
from tunnel.malloc_tuning import tune_allocator

if TYPE_CHECKING:
    import httpx

    from connector.supervisor import ReloadResult

log = logging.getLogger(__name__)

API_TIMEOUT = 15.0
API_HINT = "pass --api URL or set TUNNELGATE_API to the edge's admin listener"


def credentials_dir() -> Path:
    return Path.home() / ".tunnelgate"


def default_config_paths() -> list[Path]:
    return [credentials_dir() / "config.toml", Path("/etc/tunnelgate/config.toml")]


def format_error(exc: ConnectorError) -> str:
    where = f"{exc.source}: " if isinstance(exc, ConfigError) and exc.source else ""
    hint = f" ({exc.hint})" if exc.hint else ""
    return f"error: {where}{exc.message}{hint}"


# -- admin API client ----------------------------------------------------------------------


class AdminClient:
    """A thin JSON client; every failure becomes an :class:`AdminApiError` with a hint.

    httpx is imported here rather than with the module: ``tunnel run`` never talks to the
    admin API, and a long-running connector should not carry the HTTP client in memory.
    """

    def __init__(self, api: str, token: str, *, transport: httpx.BaseTransport | None = None):
        import httpx

        self.api = api.rstrip("/")
        self._client = httpx.Client(
            base_url=self.api, timeout=API_TIMEOUT, transport=transport,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})

    def close(self) -> None:
        self._client.close()

    def request(self, method: str, path: str, body: Any = None,
                params: dict[str, str] | None = None) -> tuple[int, Any]:
        import httpx

        try:
            response = self._client.request(method, path, json=body, params=params)
        except (httpx.TransportError, httpx.InvalidURL) as exc:
            raise AdminApiUnreachable(
                f"cannot reach the admin API at {self.api}: {exc or type(exc).__name__}",
                hint=API_HINT) from None
        try:
            document = response.json() if response.content else None
        except ValueError:
            document = None
        if response.is_success:
            return response.status_code, document
        error = document if isinstance(document, dict) else {}
        raise AdminApiError(
            str(error.get("message") or f"HTTP {response.status_code} from {self.api}{path}"),
            status=response.status_code, code=str(error.get("error") or ""),
            hint=str(error.get("hint") or ""))


def tunnel_path(ref: str, *suffix: str) -> str:
    return "/".join([f"/v1/tunnels/{quote(ref, safe='')}", *suffix])


# -- click plumbing ------------------------------------------------------------------------


class CliGroup(click.Group):
    """Turns the connector's own errors into ``error: message (hint)`` and their exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConnectorError as exc:
            click.echo(format_error(exc), err=True)
            ctx.exit(exc.exit_code)


class GlobalOptions:
    def __init__(self, api: str | None, api_token_file: Path | None, log_level: str,
                 log_format: str) -> None:
        self.api = api
        self.api_token_file = api_token_file
        self.log_level = log_level
        self.log_format = log_format
        self._client: AdminClient | None = None

    def admin(self) -> AdminClient:
        if self._client is None:
            if not self.api:
                raise ConfigError("--api", "no admin API URL", hint=API_HINT)
            self._client = AdminClient(self.api, self.admin_token())
        return self._client

    def admin_token(self) -> str:
        if self.api_token_file is not None:
            try:
                token = self.api_token_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ConfigError("--api-token-file",
                                  f"cannot read {self.api_token_file}: {exc.strerror}") from None
        else:
            token = os.environ.get("TUNNELGATE_API_TOKEN", "").strip()
        if not token:
            raise ConfigError("--api-token-file", "no admin API token",
                              hint="pass --api-token-file FILE or set TUNNELGATE_API_TOKEN")
        return token

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _options(ctx: click.Context) -> GlobalOptions:
    return ctx.find_object(GlobalOptions) or GlobalOptions(None, None, "info", "text")


@click.group(cls=CliGroup)
@click.option("--api", envvar="TUNNELGATE_API", metavar="URL",
              help="Admin API URL of the edge (env TUNNELGATE_API).")
@click.option("--api-token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="File holding the admin token (or set TUNNELGATE_API_TOKEN to the token).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--log-format", default="text", show_default=True,
              type=click.Choice(LOG_FORMATS),
              help="text: key=value lines (journald); json: one object per line.")
@click.pass_context
def cli(ctx: click.Context, api: str | None, api_token_file: Path | None, log_level: str,
        log_format: str) -> None:
    """tunnelgate connector: create tunnels, route hostnames, run the connector."""
    options = GlobalOptions(api, api_token_file, log_level, log_format)
    ctx.obj = options
    ctx.call_on_close(options.close)


@cli.group(cls=CliGroup)
def tunnel() -> None:
    """Manage and run tunnels."""


# -- admin commands ------------------------------------------------------------------------


@tunnel.command()
@click.argument("name")
@click.option("--credentials-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Where to write the credentials [default: ~/.tunnelgate/<tunnel-id>.json].")
@click.pass_context
def create(ctx: click.Context, name: str, credentials_file: Path | None) -> None:
    """Create a tunnel and write its credentials file (mode 0600)."""
    if credentials_file is not None and credentials_file.exists():
        raise ConfigError("--credentials-file", f"{credentials_file} already exists",
                          hint="choose another path; an existing file is never overwritten")
    _status, document = _options(ctx).admin().request("POST", "/v1/tunnels", {"name": name})
    credentials = credentials_from_mapping(document.get("credentials"), "the admin API answer")
    path = credentials_file or credentials_dir() / f"{credentials.tunnel_id}.json"
    try:
        write_credentials(path, credentials)
    except OSError as exc:
        raise ConfigError("--credentials-file", f"cannot write {path}: {exc.strerror}",
                          hint=f"the tunnel {name} exists now; get a credential for it with "
                               f"`tunnelgate tunnel token --cred-file PATH {name}`") from None
    click.echo(f"Created tunnel {credentials.tunnel_name} with id {credentials.tunnel_id}")
    click.echo(f"Credentials written to {path} (keep it private: it runs this tunnel)")


@tunnel.command()
@click.argument("args", nargs=-1, required=True, metavar="[dns] NAME HOSTNAME")
@click.pass_context
def route(ctx: click.Context, args: tuple[str, ...]) -> None:
    """Route HOSTNAME (or *.domain) to the tunnel NAME."""
    if len(args) == 3 and args[0] == "dns":
        args = args[1:]
    if len(args) != 2:
        raise click.UsageError("expected NAME HOSTNAME (or: dns NAME HOSTNAME)")
    name, hostname = args
    status, document = _options(ctx).admin().request(
        "POST", tunnel_path(name, "routes"), {"hostname": hostname})
    routed = document.get("hostname", hostname)
    target = f"{document.get('tunnel_name', name)} ({document.get('tunnel_id', '?')})"
    if status == 200:
        click.echo(f"{routed} already routes to tunnel {target}")
    else:
        click.echo(f"Added route {routed} -> tunnel {target}")


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


@tunnel.command("list")
@click.option("--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_context
def list_tunnels(ctx: click.Context, output: str) -> None:
    """List tunnels with their routes and live connections."""
    _status, document = _options(ctx).admin().request("GET", "/v1/tunnels")
    tunnels = document.get("tunnels", [])
    if output == "json":
        click.echo(json.dumps(tunnels, indent=2))
        return
    if not tunnels:
        click.echo("No tunnels yet; create one with `tunnelgate tunnel create NAME`.")
        return
    rows = [["ID", "NAME", "CREATED", "ROUTES", "CONNECTIONS"]]
    for item in tunnels:
        rows.append([str(item.get("id", "")), str(item.get("name", "")),
                     str(item.get("created_at", "")), ", ".join(item.get("routes") or []) or "-",
                     str(len(item.get("connections") or []))])
    click.echo(_table(rows))


@tunnel.command()
@click.argument("name")
@click.option("--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True)
@click.pass_context
def info(ctx: click.Context, name: str, output: str) -> None:
    """Show a tunnel and its live connections."""
    _status, item = _options(ctx).admin().request("GET", tunnel_path(name))
    if output == "json":
        click.echo(json.dumps(item, indent=2))
        return
    click.echo(f"NAME:     {item.get('name', '')}")
    click.echo(f"ID:       {item.get('id', '')}")
    click.echo(f"CREATED:  {item.get('created_at', '')}")
    click.echo(f"ROUTES:   {', '.join(item.get('routes') or []) or '-'}")
    connections = item.get("connections") or []
    if not connections:
        click.echo("No live connections: is `tunnelgate tunnel run` running?")
        return
    rows = [["CONNECTOR ID", "INDEX", "SINCE", "EDGE", "CLIENT"]]
    for conn in connections:
        rows.append([str(conn.get("connector_id", "")), str(conn.get("conn_index", "")),
                     str(conn.get("since", "")), str(conn.get("edge_id", "")),
                     str(conn.get("client", ""))])
    click.echo(_table(rows))


@tunnel.command()
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete even with live connections (they are cut).")
@click.pass_context
def delete(ctx: click.Context, name: str, force: bool) -> None:
    """Delete a tunnel (refused while connectors are connected, unless --force)."""
    try:
        _options(ctx).admin().request("DELETE", tunnel_path(name),
                                      params={"force": "true"} if force else None)
    except AdminApiError as exc:
        if exc.code == "tunnel_connected" and not exc.hint:
            exc.hint = "stop its connectors first, or pass --force to cut them"
        raise
    click.echo(f"Deleted tunnel {name}")


@tunnel.command()
@click.argument("name")
@click.option("--cred-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a credentials file (mode 0600) instead of printing the token.")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the token to this file (mode 0600) instead of printing it.")
@click.pass_context
def token(ctx: click.Context, name: str, cred_file: Path | None, token_file: Path | None) -> None:
    """Mint a run token for NAME (a new credential, shown once)."""
    for option, path in (("--cred-file", cred_file), ("--token-file", token_file)):
        if path is not None and path.exists():
            raise ConfigError(option, f"{path} already exists",
                              hint="choose another path; an existing file is never overwritten")
    admin = _options(ctx).admin()
    _status, document = admin.request("POST", tunnel_path(name, "tokens"))
    run_token = str(document.get("token", ""))
    if cred_file is not None:
        decoded = credentials_from_token(run_token)
        _status, item = admin.request("GET", tunnel_path(name))
        write_credentials(cred_file, Credentials(
            decoded.tunnel_id, str(item.get("name") or name), decoded.secret, decoded.edge_url))
        click.echo(f"Credentials written to {cred_file}")
    if token_file is not None:
        write_private_file(token_file, run_token + "\n")
        click.echo(f"Run token written to {token_file}")
    if cred_file is None and token_file is None:
        click.echo(run_token)


# -- running -------------------------------------------------------------------------------


def find_config(path: Path | None, *, required: bool) -> ConnectorConfig | None:
    if path is not None:
        return load_connector_config(path)
    for candidate in default_config_paths():
        if candidate.is_file():
            return load_connector_config(candidate)
    if required:
        raise ConfigError("--config", "no config file given and none found in " +
                          ", ".join(str(p) for p in default_config_paths()))
    return None


def find_credentials_by_name(name: str, options: GlobalOptions) -> Credentials:
    """A credentials file in ~/.tunnelgate for NAME (a name or an id); the API if it knows."""
    directory = credentials_dir()
    for path in sorted(directory.glob("*.json")) if directory.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and name in (data.get("tunnel_name"), data.get("tunnel_id")):
            return load_credentials(path)
    if options.api:
        _status, item = options.admin().request("GET", tunnel_path(name))
        path = directory / f"{item.get('id')}.json"
        if path.is_file():
            return load_credentials(path)
    raise ConfigError("NAME", f"no credentials file for tunnel {name!r} in {directory}",
                      hint="pass --credentials-file or --token-file, or mint one with "
                           f"`tunnelgate tunnel token --cred-file PATH {name}`")


def build_run_settings(
    options: GlobalOptions, *, name: str | None, credentials_file: Path | None,
    token_file: Path | None, config_path: Path | None, url: str | None,
    edges: Sequence[str], ha_connections: int | None, metrics: str | None,
    grace_period: str | None,
) -> RunSettings:
    """Flags win over the config file, which wins over the credentials' own edge URL."""
    config = find_config(config_path, required=False) if url is None or config_path else None
    if token_file is not None:
        try:
            token_text = token_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError("--token-file", f"cannot read {token_file}: {exc.strerror}") \
                from None
        credentials = credentials_from_token(token_text)
    elif os.environ.get("TUNNELGATE_TUNNEL_TOKEN"):
        credentials = credentials_from_token(os.environ["TUNNELGATE_TUNNEL_TOKEN"])
    elif credentials_file is not None:
        credentials = load_credentials(credentials_file)
    elif config is not None and config.credentials_file is not None:
        credentials = load_credentials(config.credentials_file)
    elif name or (config is not None and config.tunnel):
        credentials = find_credentials_by_name(name or (config.tunnel if config else "") or "",
                                               options)
    else:
        raise ConfigError("NAME", "which tunnel? give NAME, --credentials-file, --token-file, "
                                  "or a config file with `tunnel`")
    if edges:
        edge_urls = tuple(validate_edge_url(e, "--edge") for e in edges)
    elif config is not None and config.edges:
        edge_urls = config.edges
    elif credentials.edge_url:
        edge_urls = (credentials.edge_url,)
    else:
        raise ConfigError("--edge", "no edge URL: the credentials carry none",
                          hint="pass --edge wss://EDGE:7844 or set `edge` in the config")
    defaults = config.origin_request if config is not None else OriginRequest()
    if url is not None:
        try:
            ingress = IngressTable.single(url, defaults)
        except ValueError as exc:
            raise ConfigError("--url", str(exc)) from None
    elif config is not None and config.ingress is not None:
        ingress = config.ingress
    else:
        raise ConfigError("ingress", "nothing to serve",
                          hint="pass --url http://127.0.0.1:PORT or a config with [[ingress]] "
                               "rules")
    ha = validate_ha_connections(ha_connections, "--ha-connections") \
        if ha_connections is not None else \
        (config.ha_connections if config and config.ha_connections else DEFAULT_HA_CONNECTIONS)
    return RunSettings(
        credentials=credentials, edges=edge_urls, ingress=ingress, ha_connections=ha,
        metrics=validate_metrics_address(metrics, "--metrics") if metrics is not None
        else (config.metrics if config else None),
        grace_period=parse_duration(grace_period, "--grace-period") if grace_period is not None
        else (config.grace_period if config and config.grace_period is not None
              else DEFAULT_GRACE_PERIOD),
        log_level=options.log_level, log_format=options.log_format)


@tunnel.command()
@click.argument("name", required=False)
@click.option("--credentials-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="File holding a run token (or set TUNNELGATE_TUNNEL_TOKEN).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Connector config (TOML) [default: ~/.tunnelgate/config.toml, "
                   "/etc/tunnelgate/config.toml].")
@click.option("--url", help="Serve this one origin for every hostname (no config needed).")
@click.option("--edge", "edges", multiple=True, metavar="URL",
              help="Edge tunnel URL, ws:// or wss:// (repeatable).")
@click.option("--ha-connections", type=int, help="Connections to keep [default: 4].")
@click.option("--metrics", metavar="HOST:PORT", help="Serve metrics and readiness here.")
@click.option("--grace-period", metavar="DURATION",
              help="How long in-flight requests may finish on shutdown [default: 30s].")
@click.pass_context
def run(ctx: click.Context, name: str | None, credentials_file: Path | None,
        token_file: Path | None, config_path: Path | None, url: str | None,
        edges: tuple[str, ...], ha_connections: int | None, metrics: str | None,
        grace_period: str | None) -> None:
    """Run the connector for a tunnel until stopped (SIGTERM drains)."""
    settings = build_run_settings(
        _options(ctx), name=name, credentials_file=credentials_file, token_file=token_file,
        config_path=config_path, url=url, edges=edges, ha_connections=ha_connections,
        metrics=metrics, grace_period=grace_period)
    import trio

    from connector.supervisor import ConnectorState, run_connector
    from tunnel.systemd_notify import SystemdNotifier

    configure_logging(settings.log_level, settings.log_format)
    remember_secret(settings.credentials.secret)
    log.info("starting tunnel %s (%s) connector=%s connections=%d edges=%s",
             settings.credentials.tunnel_name, settings.credentials.tunnel_id,
             settings.connector_id, settings.ha_connections, ",".join(settings.edges))
    def announce_ready(state: ConnectorState) -> None:
        # One machine-readable line on stdout once the first connection is registered;
        # scripts and tests wait on it. Logs go to stderr.
        click.echo(json.dumps({"event": "ready", "tunnel_id": settings.credentials.tunnel_id,
                               "connector_id": settings.connector_id}))
        sys.stdout.flush()
        settle_after_startup()
        tune_allocator()

    def announce_metrics(address: str) -> None:
        click.echo(json.dumps({"event": "metrics", "address": address}))
        sys.stdout.flush()

    def announce_reload(result: ReloadResult) -> None:
        click.echo(json.dumps({"event": "reload", "ok": result.ok, "rules": result.rules,
                               "error": result.error}))
        sys.stdout.flush()

    # SIGHUP re-reads the rules from the file they came from (not when --url gave them).
    reload_path = None
    if url is None:
        reload_path = config_path or next(
            (candidate for candidate in default_config_paths() if candidate.is_file()), None)
    ctx.exit(trio.run(partial(
        run_connector, settings, on_ready=announce_ready, on_metrics=announce_metrics,
        on_reload=announce_reload, config_path=reload_path,
        notifier=SystemdNotifier.from_environment())))


@tunnel.group(cls=CliGroup)
def ingress() -> None:
    """Check ingress rules."""


@ingress.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path))
def validate(config_path: Path | None) -> None:
    """Check the config file's ingress rules."""
    config = find_config(config_path, required=True)
    assert config is not None
    click.echo(f"Validating rules from {config.path}")
    if config.ingress is None:
        raise ConfigError("ingress", f"{config.path} has no [[ingress]] rules")
    click.echo(f"OK ({len(config.ingress)} rules)")


@ingress.command("rule")
@click.argument("url")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path))
def ingress_rule(url: str, config_path: Path | None) -> None:
    """Show which rule would serve URL."""
    config = find_config(config_path, required=True)
    assert config is not None
    if config.ingress is None:
        raise ConfigError("ingress", f"{config.path} has no [[ingress]] rules")
    click.echo(f"Using rules from {config.path}")
    click.echo(config.ingress.explain(url))


@cli.group(cls=CliGroup)
def service() -> None:
    """Install the connector as a systemd service."""


@service.command("install")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
              show_default=True, help="Install under this folder instead of /.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Connector config to install [default: ~/.tunnelgate/config.toml].")
@click.option("--credentials-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Tunnel credential to install [default: the config's credentials-file].")
def service_install(root: Path, config_path: Path | None,
                    credentials_file: Path | None) -> None:
    """Write the unit, the config and the credential (0600); print the systemctl commands."""
    from connector.service import install_service, systemctl_commands

    config = find_config(config_path, required=True)
    assert config is not None
    files = install_service(root=root, config_file=config.path,
                            credentials_file=credentials_file)
    click.echo(f"Wrote {files.unit} (0644)")
    click.echo(f"Wrote {files.config} (0644)")
    click.echo(f"Wrote {files.credentials} (0600)")
    if root.resolve() != Path("/"):
        click.echo(f"Installed under {root}; systemctl was not run.")
    click.echo("Start the service with:")
    for command in systemctl_commands():
        click.echo(f"  {command}")


@service.command("uninstall")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
              show_default=True, help="Remove from under this folder instead of /.")
def service_uninstall(root: Path) -> None:
    """Stop and disable the service (only without --root), then remove its files."""
    import shutil
    import subprocess

    from connector.service import UNIT_NAME, uninstall_service

    live_system = root.resolve() == Path("/")
    systemctl = shutil.which("systemctl") if live_system else None
    if systemctl is not None:
        subprocess.run([systemctl, "disable", "--now", UNIT_NAME], check=False)
    removed = uninstall_service(root=root)
    for path in removed:
        click.echo(f"Removed {path}")
    if not removed:
        click.echo(f"Nothing to remove under {root}")
    if systemctl is not None:
        subprocess.run([systemctl, "daemon-reload"], check=False)


cli.add_command(access)


def main(argv: Sequence[str] | None = None) -> NoReturn:
    cli.main(args=list(argv) if argv is not None else None, prog_name="tunnelgate")
    raise SystemExit(0)
