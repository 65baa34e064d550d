"""``tunnelgate access ...``: the end user's commands for protected applications.

``tcp`` carries one TCP connection per WebSocket through the edge (stdio for an SSH
``ProxyCommand``, or a local listener with ``--url``); ``login`` signs in through the browser
and caches the app token; ``token`` prints it; ``curl`` runs curl with it. Secrets come from
files or the environment, never from argv.
"""

from __future__ import annotations

import os
import subprocess
import sys
import webbrowser
from functools import partial
from pathlib import Path

import click
import trio

from connector.access_client import (
    AccessClientError,
    EdgeTarget,
    curl_arguments,
    hostname_of,
    load_app_token,
    read_secret_file,
    relay_stdio,
    serve_local_listener,
)
from connector.access_login import DEFAULT_LOGIN_TIMEOUT, run_login
from connector.config import parse_duration
from connector.errors import ConfigError

__all__ = ["access"]

EDGE_URL_ENV = "TUNNELGATE_EDGE_URL"
SERVICE_TOKEN_SECRET_ENV = "TUNNELGATE_SERVICE_TOKEN_SECRET"


def _fail(error: AccessClientError) -> None:
    click.echo(f"Error: {error}", err=True)
    raise SystemExit(error.exit_code)


def build_target(
    hostname: str,
    edge_url: str | None,
    service_token_id: str | None,
    service_token_secret_file: Path | None,
) -> EdgeTarget:
    """Credentials, in order: a service token (secret from a file or the environment), else
    the app token cached by ``access login``; none at all is allowed (an open app)."""
    secret = None
    if service_token_id is not None:
        if service_token_secret_file is not None:
            secret = read_secret_file(service_token_secret_file)
        else:
            secret = os.environ.get(SERVICE_TOKEN_SECRET_ENV)
        if not secret:
            raise click.UsageError(
                "--service-token-id needs --service-token-secret-file or "
                f"{SERVICE_TOKEN_SECRET_ENV}"
            )
    app_token = None if service_token_id is not None else load_app_token(hostname)
    return EdgeTarget(hostname, edge_url, service_token_id, secret, app_token)


def _parse_listen(url: str) -> tuple[str, int]:
    text = url.split("://", 1)[-1]
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {url!r}", param_hint="--url")
    return host.strip("[]") or "127.0.0.1", int(port)


@click.group()
def access() -> None:
    """Reach applications protected by the edge from a terminal."""


_edge_url_option = click.option(
    "--edge-url", envvar=EDGE_URL_ENV, metavar="URL",
    help=f"Connect to this edge instead of https://HOSTNAME (or ${EDGE_URL_ENV}).")


@access.command()
@click.option("--hostname", required=True, help="The TCP application's hostname.")
@click.option("--url", "listen", metavar="HOST:PORT",
              help="Listen here; without it, relay stdin/stdout (SSH ProxyCommand).")
@_edge_url_option
@click.option("--service-token-id", help="Service token client id.")
@click.option("--service-token-secret-file", type=click.Path(dir_okay=False, path_type=Path),
              help=f"File holding the service token secret (or ${SERVICE_TOKEN_SECRET_ENV}).")
def tcp(hostname: str, listen: str | None, edge_url: str | None,
        service_token_id: str | None, service_token_secret_file: Path | None) -> None:
    """Carry TCP to HOSTNAME through the edge."""
    target = build_target(hostname, edge_url, service_token_id, service_token_secret_file)
    try:
        if listen is None:
            trio.run(relay_stdio, target)
        else:
            host, port = _parse_listen(listen)

            async def serve() -> None:
                async with trio.open_nursery() as nursery:
                    bound = await nursery.start(serve_local_listener, target, host, port)
                    click.echo(f"Listening on {host}:{bound} for {hostname}", err=True)

            trio.run(serve)
    except AccessClientError as error:
        _fail(error)
    except KeyboardInterrupt:
        raise SystemExit(130) from None


@access.command()
@click.argument("url")
@click.option("--no-browser", is_flag=True, help="Only print the URL to open.")
@click.option("--timeout", "timeout_text", default=f"{DEFAULT_LOGIN_TIMEOUT:g}s",
              show_default=True, metavar="DURATION", help='How long to wait, e.g. "5m".')
@_edge_url_option
def login(url: str, no_browser: bool, timeout_text: str, edge_url: str | None) -> None:
    """Sign in to URL in the browser and cache its app token (0600)."""
    try:
        timeout = parse_duration(timeout_text, "--timeout")
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--timeout") from None
    opener = None if no_browser else webbrowser.open
    try:
        saved = trio.run(partial(run_login, url, edge_url=edge_url, give_up_after=timeout,
                                 open_browser=opener, echo=partial(click.echo, err=True)))
    except AccessClientError as error:
        _fail(error)
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    click.echo(f"Saved the token for {hostname_of(url)} in {saved}")


@access.command()
@click.argument("url")
def token(url: str) -> None:
    """Print the cached app token for URL (from ``access login``)."""
    hostname = hostname_of(url)
    cached = load_app_token(hostname)
    if cached is None:
        click.echo(f"Error: no token cached for {hostname}; run: tunnelgate access login {url}",
                   err=True)
        raise SystemExit(1)
    click.echo(cached)


@access.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("url")
@click.argument("curl_args", nargs=-1, type=click.UNPROCESSED)
def curl(url: str, curl_args: tuple[str, ...]) -> None:
    """Run curl against URL with the cached app token in ``cf-access-token``."""
    hostname = hostname_of(url)
    cached = load_app_token(hostname)
    if cached is None:
        click.echo(f"Error: no token cached for {hostname}; run: tunnelgate access login {url}",
                   err=True)
        raise SystemExit(1)
    try:
        done = subprocess.run(curl_arguments(url, curl_args),
                              input=f"cf-access-token: {cached}\n".encode(), check=False)
    except FileNotFoundError:
        click.echo("Error: curl is not installed (apt-get install curl)", err=True)
        raise SystemExit(127) from None
    sys.exit(done.returncode)
