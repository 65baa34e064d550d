"""``tunnelgate-edge app|policy|idp|service-token|session|keys|audit|apply``: Access
administration through the admin API of a running edge.

Each of these groups and commands takes ``--api URL`` (or ``TUNNELGATE_API``) and
``--api-token-file FILE`` (or ``TUNNELGATE_API_TOKEN``), like the connector's ``tunnelgate``;
the options work on the group (``app --api URL list``) and on each command (``app list --api
URL``). The admin token never travels in argv.

Exit codes: 0 success, 1 the admin API refused or could not be reached, 2 a usage error or an
invalid file (the message starts with the key path, e.g. ``app[0].policy[1].include[0]...``).

``apply FILE.toml`` validates the whole file locally first, resolves relative secret-file paths
against the file's folder, then lets the edge plan and apply it in one transaction (see
:mod:`edge.access.apply` for the rules: apps, IdPs and service tokens missing from the file are
deleted only with ``--prune``).
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from edge.access.apply import parse_document
from edge.admin.client import (
    AdminCliError,
    AdminCommand,
    AdminGroup,
    AdminOptionError,
    admin_client,
    api_options,
)
from edge.store import InvalidInput

__all__ = ["register_access_commands"]

_SECRET_FILE_KEYS = ("client_secret_file", "smtp_password_file")


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _path(*parts: str) -> str:
    return "/v1/" + "/".join(quote(part, safe="") for part in parts)


def _duration_text(seconds: object) -> str:
    from edge.store.access_records import format_duration

    return format_duration(int(seconds)) if isinstance(seconds, int) else str(seconds)


def _rule_text(rule: Mapping[str, object]) -> str:
    return ", ".join(f"{key}={json.dumps(value)}" for key, value in rule.items())


def _policy_lines(policies: Sequence[Mapping[str, Any]]) -> list[str]:
    if not policies:
        return ["  (no policies: every request is denied)"]
    lines = []
    for index, policy in enumerate(policies, start=1):
        lines.append(f"  {index}. {policy['name']} ({policy['action']})")
        for key in ("include", "require", "exclude"):
            rules = policy.get(key) or []
            if rules:
                lines.append(f"       {key}: " + "; ".join(_rule_text(rule) for rule in rules))
    return lines


def _read_toml(file: Path) -> dict[str, Any]:
    try:
        with file.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise AdminOptionError(f"cannot read {file}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AdminOptionError(f"{file}: not valid TOML: {exc}") from None


def _plain(value: object, key_path: str) -> object:
    """The value as JSON can carry it; TOML dates and times have no place in these files."""
    if isinstance(value, Mapping):
        return {
            str(key): _plain(item, f"{key_path}.{key}" if key_path else str(key))
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_plain(item, f"{key_path}[{index}]") for index, item in enumerate(value)]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise AdminOptionError(f"{key_path}: dates and times are not valid here")


def _read_document(file: Path) -> dict[str, Any]:
    try:
        document = _plain(_read_toml(file), "")
    except AdminOptionError as exc:
        if exc.message.startswith(str(file)):
            raise
        raise AdminOptionError(f"{file}: {exc.message}") from None
    if not isinstance(document, dict):  # a TOML file is always a table
        raise AdminOptionError(f"{file}: expected a table")
    return document


def _resolve_secret_files(document: dict[str, Any], base: Path) -> None:
    for idp in document.get("idp") or []:
        if not isinstance(idp, dict):
            continue
        for key in _SECRET_FILE_KEYS:
            value = idp.get(key)
            if isinstance(value, str) and value and not value.startswith("/"):
                idp[key] = str((base / value).resolve())


# -- app -------------------------------------------------------------------------------------


@click.group(cls=AdminGroup)
@api_options
def app() -> None:
    """Manage Access applications (a host, optionally with a path prefix)."""


@app.command("list", cls=AdminCommand)
@api_options
@click.pass_context
def app_list(ctx: click.Context) -> None:
    """List applications."""
    _status, document = admin_client(ctx).request("GET", "/v1/apps")
    apps = document["apps"]
    if not apps:
        click.echo("No applications yet; create one with `tunnelgate-edge app create`.")
        return
    rows = [["NAME", "DOMAIN", "TYPE", "IDPS", "POLICIES", "SESSION"]]
    for entry in apps:
        rows.append(
            [
                entry["name"],
                entry["domain"],
                entry["type"],
                ",".join(entry["idps"]) or "(all)",
                str(len(entry["policies"])),
                _duration_text(entry["session_duration"]),
            ]
        )
    click.echo(_table(rows))


@app.command("show", cls=AdminCommand)
@click.argument("name")
@api_options
@click.pass_context
def app_show(ctx: click.Context, name: str) -> None:
    """Show one application with its policies."""
    _status, entry = admin_client(ctx).request("GET", _path("apps", name))
    for key in (
        "name",
        "domain",
        "type",
        "aud",
        "cookie_name",
        "header_name",
        "email_header_name",
        "allow_websockets",
        "allow_encoded_slash",
    ):
        value = entry[key]
        click.echo(f"{key + ':':22}{json.dumps(value) if isinstance(value, bool) else value}")
    click.echo(f"{'session_duration:':22}{_duration_text(entry['session_duration'])}")
    click.echo(f"{'idps:':22}{', '.join(entry['idps']) or '(every configured IdP)'}")
    click.echo("policies:")
    for line in _policy_lines(entry["policies"]):
        click.echo(line)


@app.command("create", cls=AdminCommand)
@click.argument("name")
@click.option(
    "--domain", required=True, help='Host, optionally with a path: "app.example.com/admin".'
)
@click.option("--idp", "idps", multiple=True, help="An IdP offered at login (repeat; none = all).")
@click.option("--session-duration", default="24h", show_default=True)
@click.option(
    "--type", "app_type", type=click.Choice(["http", "tcp"]), default="http", show_default=True
)
@click.option("--cookie-name", default=None, help="[default: CF_Authorization]")
@click.option("--header-name", default=None, help="[default: Cf-Access-Jwt-Assertion]")
@click.option(
    "--email-header-name", default=None, help="[default: Cf-Access-Authenticated-User-Email]"
)
@click.option("--websockets/--no-websockets", default=True, show_default=True)
@click.option("--allow-encoded-slash", is_flag=True, help="Pass %2F and %5C through in paths.")
@api_options
@click.pass_context
def app_create(
    ctx: click.Context,
    name: str,
    domain: str,
    idps: tuple[str, ...],
    session_duration: str,
    app_type: str,
    cookie_name: str | None,
    header_name: str | None,
    email_header_name: str | None,
    websockets: bool,
    allow_encoded_slash: bool,
) -> None:
    """Create an application; add policies with `policy set` (until then all are denied)."""
    body: dict[str, object] = {
        "name": name,
        "domain": domain,
        "type": app_type,
        "idps": list(idps),
        "session_duration": session_duration,
        "allow_websockets": websockets,
        "allow_encoded_slash": allow_encoded_slash,
    }
    for key, value in (
        ("cookie_name", cookie_name),
        ("header_name", header_name),
        ("email_header_name", email_header_name),
    ):
        if value is not None:
            body[key] = value
    _status, entry = admin_client(ctx).request("POST", "/v1/apps", body)
    click.echo(f"Created application {entry['name']} for {entry['domain']}")
    click.echo(f"AUD tag: {entry['aud']}")
    click.echo(f"Next: tunnelgate-edge policy set {entry['name']} POLICIES.toml")


@app.command("delete", cls=AdminCommand)
@click.argument("name")
@api_options
@click.pass_context
def app_delete(ctx: click.Context, name: str) -> None:
    """Delete an application and its policies."""
    admin_client(ctx).request("DELETE", _path("apps", name))
    click.echo(f"Deleted application {name}")


# -- policy ----------------------------------------------------------------------------------


@click.group(cls=AdminGroup)
@api_options
def policy() -> None:
    """Show and set an application's ordered policies."""


@policy.command("list", cls=AdminCommand)
@click.argument("app_name", metavar="APP")
@api_options
@click.pass_context
def policy_list(ctx: click.Context, app_name: str) -> None:
    """List an application's policies in evaluation order."""
    _status, document = admin_client(ctx).request("GET", _path("apps", app_name, "policies"))
    click.echo(f"{app_name}:")
    for line in _policy_lines(document["policies"]):
        click.echo(line)


@policy.command("set", cls=AdminCommand)
@click.argument("app_name", metavar="APP")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@api_options
@click.pass_context
def policy_set(ctx: click.Context, app_name: str, file: Path) -> None:
    """Replace an application's policies with the [[policy]] tables of FILE (TOML)."""
    from edge.store.access_records import parse_policy_list

    document = _read_document(file)
    unknown = sorted(set(document) - {"policy"})
    if unknown:
        raise AdminOptionError(f"{file}: {unknown[0]}: unknown key", hint="expected [[policy]]")
    policies = document.get("policy", [])
    try:
        parse_policy_list(policies, "policy")
    except InvalidInput as exc:
        raise AdminOptionError(f"{file}: {exc.message}", hint=exc.hint) from None
    _status, stored = admin_client(ctx).request(
        "PUT", _path("apps", app_name, "policies"), {"policies": policies}
    )
    click.echo(f"Set {len(stored['policies'])} policies on {app_name}:")
    for line in _policy_lines(stored["policies"]):
        click.echo(line)


# -- idp -------------------------------------------------------------------------------------


@click.group(cls=AdminGroup)
@api_options
def idp() -> None:
    """Manage identity providers (OpenID Connect, GitHub, one-time PIN by e-mail)."""


@idp.command("list", cls=AdminCommand)
@api_options
@click.pass_context
def idp_list(ctx: click.Context) -> None:
    """List identity providers."""
    _status, document = admin_client(ctx).request("GET", "/v1/idps")
    if not document["idps"]:
        click.echo("No identity providers yet; add one with `tunnelgate-edge idp add`.")
        return
    rows = [["NAME", "TYPE", "DETAIL"]]
    rows += [[entry["name"], entry["type"], _idp_detail(entry)] for entry in document["idps"]]
    click.echo(_table(rows))


def _idp_detail(entry: Mapping[str, Any]) -> str:
    if entry["type"] == "oidc":
        return f"issuer {entry['issuer']}, client {entry['client_id']}"
    if entry["type"] == "github":
        return f"client {entry['client_id']}"
    if entry["delivery"] == "smtp":
        return f"codes by e-mail via {entry['smtp_host']}:{entry['smtp_port']}"
    return "codes written to the edge log (development only)"


@idp.command("add", cls=AdminCommand)
@click.argument("name")
@click.option("--type", "idp_type", type=click.Choice(["oidc", "github", "otp"]), required=True)
@click.option("--issuer", help="oidc: issuer URL (discovery at issuer/.well-known/...).")
@click.option("--client-id", help="oidc, github: the client id registered at the provider.")
@click.option(
    "--client-secret-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="oidc, github: file on the edge host holding the client secret.",
)
@click.option("--groups-claim", help="oidc: ID token claim that lists groups [default: groups].")
@click.option("--scope", "scopes", multiple=True, help="oidc: a scope to ask for (repeat).")
@click.option(
    "--delivery",
    type=click.Choice(["smtp", "log"]),
    help='otp: "smtp", or "log" (development: codes go to the edge log).',
)
@click.option("--smtp-host")
@click.option("--smtp-port", type=int)
@click.option("--smtp-from")
@click.option("--smtp-username")
@click.option("--smtp-password-file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--smtp-starttls/--no-smtp-starttls", default=None)
@api_options
@click.pass_context
def idp_add(
    ctx: click.Context,
    /,
    name: str,
    idp_type: str,
    scopes: tuple[str, ...],
    **settings: object,
) -> None:
    """Add an identity provider. Its redirect URI is https://AUTH_DOMAIN/cdn-cgi/access/callback."""
    body: dict[str, object] = {"name": name, "type": idp_type}
    for key, value in settings.items():
        if value is None:
            continue
        body[key] = str(value.resolve()) if isinstance(value, Path) else value
    if scopes:
        body["scopes"] = list(scopes)
    _status, entry = admin_client(ctx).request("POST", "/v1/idps", body)
    click.echo(f"Added identity provider {entry['name']} ({entry['type']})")


@idp.command("delete", cls=AdminCommand)
@click.argument("name")
@api_options
@click.pass_context
def idp_delete(ctx: click.Context, name: str) -> None:
    """Delete an identity provider that no application lists."""
    admin_client(ctx).request("DELETE", _path("idps", name))
    click.echo(f"Deleted identity provider {name}")


# -- service-token ---------------------------------------------------------------------------


@click.group("service-token", cls=AdminGroup)
@api_options
def service_token() -> None:
    """Manage service tokens (CF-Access-Client-Id / CF-Access-Client-Secret)."""


def _echo_token_secret(entry: Mapping[str, Any]) -> None:
    click.echo(f"Created service token {entry['name']} (expires {entry['expires_at']})")
    click.echo(f"  Client ID:     {entry['client_id']}")
    click.echo(f"  Client secret: {entry['client_secret']}")
    click.echo("The secret is shown only now. Send both headers with every request:")
    click.echo(f"  CF-Access-Client-Id: {entry['client_id']}")
    click.echo("  CF-Access-Client-Secret: <the secret>")


@service_token.command("create", cls=AdminCommand)
@click.argument("name")
@click.option("--duration", default="8760h", show_default=True, help="How long it stays valid.")
@api_options
@click.pass_context
def service_token_create(ctx: click.Context, name: str, duration: str) -> None:
    """Create a service token; its secret is printed once and never again."""
    _status, entry = admin_client(ctx).request(
        "POST", "/v1/service-tokens", {"name": name, "duration": duration}
    )
    _echo_token_secret(entry)


@service_token.command("list", cls=AdminCommand)
@api_options
@click.pass_context
def service_token_list(ctx: click.Context) -> None:
    """List service tokens (never their secrets)."""
    _status, document = admin_client(ctx).request("GET", "/v1/service-tokens")
    tokens = document["service_tokens"]
    if not tokens:
        click.echo("No service tokens.")
        return
    rows = [["NAME", "CLIENT ID", "CREATED", "EXPIRES"]]
    rows += [[t["name"], t["client_id"], t["created_at"], t["expires_at"]] for t in tokens]
    click.echo(_table(rows))


@service_token.command("delete", cls=AdminCommand)
@click.argument("name")
@api_options
@click.pass_context
def service_token_delete(ctx: click.Context, name: str) -> None:
    """Delete a service token; it stops working at once."""
    admin_client(ctx).request("DELETE", _path("service-tokens", name))
    click.echo(f"Deleted service token {name}")


# -- session and keys ------------------------------------------------------------------------


@click.group(cls=AdminGroup)
@api_options
def session() -> None:
    """End sessions."""


@session.command("revoke", cls=AdminCommand)
@click.option("--email", help="End every session of this person, on every application.")
@click.option("--app", "app_name", help="End every session's access to this application.")
@api_options
@click.pass_context
def session_revoke(ctx: click.Context, email: str | None, app_name: str | None) -> None:
    """Revoke sessions; it takes effect on the next request, open streams are closed."""
    if (email is None) == (app_name is None):
        raise click.UsageError("give exactly one of --email or --app")
    body = {"email": email} if email is not None else {"app": app_name}
    _status, answer = admin_client(ctx).request("POST", "/v1/sessions/revoke", body)
    if email is not None:
        click.echo(
            f"Revoked every session of {answer['email']} ({answer['sessions_ended']} "
            "stored session(s) ended); they must log in again"
        )
    else:
        click.echo(f"Revoked every session of application {answer['app']}")


@click.group(cls=AdminGroup)
@api_options
def keys() -> None:
    """Show and rotate the keys that sign Access tokens."""


def _echo_keys(document: Mapping[str, Any]) -> None:
    rows = [["KID", "ALG", "CREATED", "STATUS"]]
    for key in document["keys"]:
        if key["active"]:
            status = "active"
        elif key["published"]:
            status = f"previous, published until {key['not_after']}"
        else:
            status = "retired"
        rows.append([key["kid"], key["algorithm"], key["created_at"], status])
    click.echo(_table(rows))


@keys.command("list", cls=AdminCommand)
@api_options
@click.pass_context
def keys_list(ctx: click.Context) -> None:
    """List signing keys (public metadata only)."""
    _status, document = admin_client(ctx).request("GET", "/v1/keys")
    if not document["keys"]:
        click.echo("No signing keys yet; the edge makes one when it starts.")
        return
    _echo_keys(document)


@keys.command("rotate", cls=AdminCommand)
@click.option(
    "--algorithm",
    type=click.Choice(["RS256", "ES256"]),
    help="Algorithm of the new key [default: that of the current key].",
)
@api_options
@click.pass_context
def keys_rotate(ctx: click.Context, algorithm: str | None) -> None:
    """Make a new active key; the previous one stays published for the overlap (7 days)."""
    body = {"algorithm": algorithm} if algorithm else {}
    _status, document = admin_client(ctx).request("POST", "/v1/keys/rotate", body)
    click.echo(f"Rotated: {document['active']} is the active signing key")
    _echo_keys(document)


# -- audit and apply -------------------------------------------------------------------------


def _event_line(event: Mapping[str, Any]) -> str:
    detail = event["detail"]
    if event["kind"] == "access.decision":
        who = detail.get("email") or f"token:{detail.get('service_token')}"
        policy_name = detail.get("policy") or "-"
        line = (
            f"{event['time']}  {detail['app']}  {who}  {detail['client_ip']}  "
            f"{detail['action']}  {policy_name}  {detail['reason']}"
        )
        if detail.get("count"):
            # Identical decisions counted into one entry (edge.access.audit).
            line += f"  x{detail['count']} until {detail.get('last_time')}"
        return line
    about = event["app"] or event["subject"] or ""
    return f"{event['time']}  {event['kind']}  {about}  {json.dumps(detail, sort_keys=True)}"


@click.command(cls=AdminCommand)
@click.option("--app", "app_name", help="Only entries about this application.")
@click.option("--email", help="Only entries about this person (or service token name).")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@api_options
@click.pass_context
def audit(ctx: click.Context, app_name: str | None, email: str | None, limit: int) -> None:
    """Show the audit log, newest first: access decisions and administrative changes."""
    params = {"limit": str(limit)}
    if app_name:
        params["app"] = app_name
    if email:
        params["email"] = email
    _status, document = admin_client(ctx).request("GET", "/v1/audit", params=params)
    if not document["events"]:
        click.echo("No audit entries match.")
    for event in document["events"]:
        click.echo(_event_line(event))


_CHANGE_MARKS = {"create": "+", "update": "~", "delete": "-"}


@click.command(cls=AdminCommand)
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--dry-run", is_flag=True, help="Show what would change; change nothing.")
@click.option(
    "--prune",
    is_flag=True,
    help="Also delete apps, IdPs and service tokens that FILE does not list.",
)
@api_options
@click.pass_context
def apply(ctx: click.Context, file: Path, dry_run: bool, prune: bool) -> None:
    """Make the edge's Access configuration match FILE (TOML); idempotent."""
    document = _read_document(file)
    _resolve_secret_files(document, file.resolve().parent)
    try:
        parse_document(document)
    except InvalidInput as exc:
        raise AdminOptionError(f"{file}: {exc.message}", hint=exc.hint) from None
    params = {"dry_run": "true" if dry_run else "false", "prune": "true" if prune else "false"}
    try:
        _status, result = admin_client(ctx).request("POST", "/v1/apply", document, params=params)
    except AdminCliError as exc:
        exc.message = f"{file}: {exc.message}"
        raise
    changes = result["changes"]
    if not changes:
        click.echo(f"No changes: the edge already matches {file}")
        return
    for change in changes:
        click.echo(f"{_CHANGE_MARKS[change['action']]} {change['summary']}")
    if dry_run:
        click.echo(f"Dry run: {len(changes)} change(s) planned, nothing was changed")
        return
    click.echo(f"Applied {len(changes)} change(s)")
    for entry in result["service_tokens"]:
        _echo_token_secret(entry)


def register_access_commands(group: click.Group) -> None:
    """Add the Access commands to the ``tunnelgate-edge`` group."""
    for command in (app, policy, idp, service_token, session, keys, audit, apply):
        group.add_command(command)
