"""The edge's configuration: one TOML file read into frozen dataclasses.

A mistake in the file must be found by ``tunnelgate-edge check-config`` (or at start-up), not by
the first visitor, so everything is validated here: types, ranges, durations, listen addresses,
host names and file paths. Every error message starts with the key path of the offending value
(``http.header_timeout: expected a duration like "30s", got "ten"``) and unknown keys are
errors, because a misspelt key silently falling back to a default is how gateways end up open.

Errors::

    EdgeError (edge.errors)
    └── ConfigError      key_path + message; the CLI exits with code 2

The value-level readers (the key-path-aware table, durations, listen addresses, the auth
domain) and ``ConfigError`` itself live in ``edge.config_values``; they are re-exported here.

Relative paths (``edge.state_dir``, TLS files, a ``sqlite:`` store URL) are resolved against the
folder that holds the config file, so a config works the same whatever the working directory
of the process that reads it.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from edge.config_values import (
    ConfigError,
    ConfigTable,
    ListenAddress,
    describe_value,
    parse_auth_domain,
    parse_duration,
    parse_listen_address,
    resolve_path,
)

__all__ = [
    "DEFAULT_LISTEN",
    "SQLITE_FILENAME",
    "AccessConfig",
    "ClusterConfig",
    "ConfigError",
    "EdgeConfig",
    "EdgeSection",
    "HttpConfig",
    "ListenAddress",
    "ListenConfig",
    "StoreConfig",
    "TlsCertificate",
    "TlsConfig",
    "TunnelConfig",
    "load_edge_config",
    "parse_auth_domain",
    "parse_config",
    "parse_duration",
    "parse_listen_address",
]

SQLITE_FILENAME = "tunnelgate.db"

DEFAULT_LISTEN: Mapping[str, str] = {
    "public": "127.0.0.1:8080",
    "public_tls": "",
    "tunnel": "127.0.0.1:7844",
    "admin": "127.0.0.1:7845",
    "ops": "127.0.0.1:7846",
}

_EDGE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


@dataclass(frozen=True)
class EdgeSection:
    id: str = "edge-1"
    state_dir: Path = Path(".")


@dataclass(frozen=True)
class ListenConfig:
    """Each listener as a normalised "HOST:PORT" string; "" means disabled.

    Only ``tunnel`` is mandatory. :meth:`address` gives the parsed form.
    """

    public: str = DEFAULT_LISTEN["public"]
    public_tls: str = DEFAULT_LISTEN["public_tls"]
    tunnel: str = DEFAULT_LISTEN["tunnel"]
    admin: str = DEFAULT_LISTEN["admin"]
    ops: str = DEFAULT_LISTEN["ops"]

    def address(self, name: str) -> ListenAddress | None:
        """The parsed address of listener ``name`` ("public", "tunnel", ...), None if disabled."""
        text: str = getattr(self, name)
        return parse_listen_address(text, key_path=f"listen.{name}") if text else None


@dataclass(frozen=True)
class TunnelConfig:
    """Durations are in seconds; ``public_url`` "" means derive it from the tunnel listener."""

    public_url: str = ""
    heartbeat_interval: float = 5.0
    heartbeat_timeout: float = 15.0


@dataclass(frozen=True)
class HttpConfig:
    """Limits of the public HTTP front; durations in seconds, ``max_body_bytes`` 0 = unlimited."""

    max_header_bytes: int = 32768
    max_headers: int = 100
    header_timeout: float = 10.0
    idle_timeout: float = 60.0
    max_body_bytes: int = 0
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class StoreConfig:
    """``url`` as written; ``sqlite_path`` is where the embedded store lives.

    With a ``postgresql://`` URL the edge shares a PostgreSQL database with other edges; its
    password, if any, comes from ``password_file`` (never from the URL in the config, which is
    not a secret file). ``migrate_on_start`` lets ``serve`` apply pending PostgreSQL migrations
    itself; otherwise ``tunnelgate-edge migrate`` does (SQLite always migrates on open).
    """

    url: str = ""
    sqlite_path: Path | None = None
    password_file: Path | None = None
    migrate_on_start: bool = False

    @property
    def is_postgres(self) -> bool:
        return self.url.startswith(("postgresql://", "postgres://"))


@dataclass(frozen=True)
class ClusterConfig:
    """Several edges on one PostgreSQL store.

    ``listen`` is the internal listener other edges forward requests to ("" = this edge does
    not take forwarded requests); ``advertise_url`` is how they reach it ("" = derived from the
    bound address). ``secret_file`` holds the shared secret that authenticates the hop.
    Durations in seconds: heartbeats every ``heartbeat_interval``, a silent edge's connections
    expire after ``expiry``, and every ``resync_interval`` each edge re-reads the store whatever
    notifications it got.
    """

    listen: str = ""
    advertise_url: str = ""
    secret_file: Path | None = None
    heartbeat_interval: float = 2.0
    expiry: float = 10.0
    resync_interval: float = 30.0


@dataclass(frozen=True)
class TlsCertificate:
    cert_file: Path
    key_file: Path


@dataclass(frozen=True)
class TlsConfig:
    certificates: tuple[TlsCertificate, ...] = ()


@dataclass(frozen=True)
class AccessConfig:
    """``auth_domain`` (``host`` or ``host:port``) "" means Access is not configured yet."""

    auth_domain: str = ""


@dataclass(frozen=True)
class EdgeConfig:
    config_dir: Path
    edge: EdgeSection = EdgeSection()
    listen: ListenConfig = ListenConfig()
    tunnel: TunnelConfig = TunnelConfig()
    http: HttpConfig = HttpConfig()
    store: StoreConfig = StoreConfig()
    tls: TlsConfig = TlsConfig()
    access: AccessConfig = AccessConfig()
    cluster: ClusterConfig = ClusterConfig()

    def store_path(self) -> Path:
        """The SQLite database file of this edge."""
        if self.store.sqlite_path is not None:
            return self.store.sqlite_path
        return self.edge.state_dir / SQLITE_FILENAME

    def tunnel_public_url(self) -> str:
        """The URL connectors dial, as written into credentials and run tokens.

        With an explicit ``tunnel.public_url`` that is it; otherwise it is derived from the
        tunnel listener, which is only right when connectors reach the edge at that address
        (and, with port 0, only after the server substitutes the bound port).
        """
        if self.tunnel.public_url:
            return self.tunnel.public_url
        return f"ws://{self.listen.tunnel}"


def load_edge_config(path: Path) -> EdgeConfig:
    """Read, parse and validate an edge config file."""
    try:
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise ConfigError("", f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        document = tomllib.loads(raw_bytes.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError("", "the file is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("", f"invalid TOML: {exc}") from None
    return parse_config(document, config_dir=path.resolve().parent)


def parse_config(document: Mapping[str, object], *, config_dir: Path) -> EdgeConfig:
    """Validate an already-parsed TOML document; relative paths resolve against config_dir."""
    root = ConfigTable(dict(document), "")
    edge = _parse_edge(root.table("edge"), config_dir)
    listen = _parse_listen(root.table("listen"))
    tunnel = _parse_tunnel(root.table("tunnel"))
    http = _parse_http(root.table("http"))
    store = _parse_store(root.table("store"), config_dir)
    tls = _parse_tls(root.raw("tls"), config_dir)
    access = _parse_access(root.table("access"))
    cluster = _parse_cluster(root.table("cluster"), config_dir)
    root.finish()
    if cluster.listen and not store.is_postgres:
        raise ConfigError(
            "cluster.listen",
            "forwarding between edges needs a shared PostgreSQL store",
            hint='set store.url = "postgresql://USER@HOST:PORT/DB" or cluster.listen = ""',
        )
    if listen.public_tls and not tls.certificates:
        raise ConfigError(
            "listen.public_tls",
            "the HTTPS listener needs at least one [[tls.certificate]]",
            hint='add [[tls.certificate]] with cert_file and key_file, or set public_tls = ""',
        )
    return EdgeConfig(
        config_dir=config_dir,
        edge=edge,
        listen=listen,
        tunnel=tunnel,
        http=http,
        store=store,
        tls=tls,
        access=access,
        cluster=cluster,
    )


def _parse_edge(table: ConfigTable, config_dir: Path) -> EdgeSection:
    edge_id = table.string("id", EdgeSection.id)
    if not _EDGE_ID.fullmatch(edge_id):
        raise ConfigError(
            table.key_path("id"),
            f'"{edge_id}" is not a valid id: use 1-63 letters, digits, "_", "." or "-"',
        )
    state_dir = resolve_path(config_dir, table.string("state_dir", "."))
    table.finish()
    return EdgeSection(id=edge_id, state_dir=state_dir)


def _parse_listen(table: ConfigTable) -> ListenConfig:
    parsed: dict[str, ListenAddress | None] = {}
    for name, default in DEFAULT_LISTEN.items():
        text = table.string(name, default)
        if not text:
            if name == "tunnel":
                raise ConfigError(table.key_path(name), "the tunnel listener cannot be disabled")
            parsed[name] = None
            continue
        parsed[name] = parse_listen_address(text, key_path=table.key_path(name))
    table.finish()
    seen: dict[ListenAddress, str] = {}
    for name, address in parsed.items():
        if address is None or address.port == 0:
            continue
        if address in seen:
            raise ConfigError(
                table.key_path(name), f"{address} is already used by listen.{seen[address]}"
            )
        seen[address] = name
    written = {name: "" if address is None else str(address) for name, address in parsed.items()}
    return ListenConfig(
        public=written["public"],
        public_tls=written["public_tls"],
        tunnel=written["tunnel"],
        admin=written["admin"],
        ops=written["ops"],
    )


def _parse_tunnel(table: ConfigTable) -> TunnelConfig:
    public_url = table.string("public_url", "")
    if public_url:
        scheme, sep, rest = public_url.partition("://")
        host = rest.split("/", 1)[0]
        if not sep or scheme not in {"ws", "wss"} or not host or "?" in rest or "#" in rest:
            raise ConfigError(
                table.key_path("public_url"),
                f'expected a ws:// or wss:// URL such as "wss://edge.example.com:7844", '
                f'got "{public_url}"',
            )
    interval = table.duration("heartbeat_interval", TunnelConfig.heartbeat_interval)
    timeout = table.duration("heartbeat_timeout", TunnelConfig.heartbeat_timeout)
    table.finish()
    if timeout <= interval:
        raise ConfigError(
            table.key_path("heartbeat_timeout"),
            "must be longer than tunnel.heartbeat_interval, or every idle link looks dead",
        )
    return TunnelConfig(
        public_url=public_url, heartbeat_interval=interval, heartbeat_timeout=timeout
    )


def _parse_http(table: ConfigTable) -> HttpConfig:
    defaults = HttpConfig()
    max_header_bytes = table.integer("max_header_bytes", defaults.max_header_bytes, minimum=1024)
    max_headers = table.integer("max_headers", defaults.max_headers, minimum=1)
    header_timeout = table.duration("header_timeout", defaults.header_timeout)
    idle_timeout = table.duration("idle_timeout", defaults.idle_timeout)
    max_body_bytes = table.integer("max_body_bytes", defaults.max_body_bytes, minimum=0)
    proxies: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for index, text in enumerate(table.string_list("trusted_proxies")):
        try:
            proxies.append(ipaddress.ip_network(text.strip(), strict=True))
        except ValueError as exc:
            raise ConfigError(
                f"{table.key_path('trusted_proxies')}[{index}]",
                f'expected a CIDR such as "10.0.0.0/8" or "2001:db8::/32": {exc}',
            ) from None
    table.finish()
    return HttpConfig(
        max_header_bytes=max_header_bytes,
        max_headers=max_headers,
        header_timeout=header_timeout,
        idle_timeout=idle_timeout,
        max_body_bytes=max_body_bytes,
        trusted_proxies=tuple(proxies),
    )


def _parse_store(table: ConfigTable, config_dir: Path) -> StoreConfig:
    url = table.string("url", "")
    password_file = table.string("password_file", "")
    migrate_on_start = table.raw("migrate_on_start")
    table.finish()
    if migrate_on_start is not None and not isinstance(migrate_on_start, bool):
        raise ConfigError(
            table.key_path("migrate_on_start"),
            f"expected true or false, got {describe_value(migrate_on_start)}",
        )
    if url.startswith(("postgresql://", "postgres://")):
        return _postgres_store(table, url, password_file, bool(migrate_on_start), config_dir)
    for key, given in (("password_file", password_file), ("migrate_on_start", migrate_on_start)):
        if given:
            raise ConfigError(table.key_path(key), "only used with a postgresql:// store.url")
    if not url:
        return StoreConfig()
    if url.startswith("sqlite:"):
        location = url.removeprefix("sqlite:").removeprefix("//")
        if not location:
            raise ConfigError(table.key_path("url"), 'expected "sqlite:PATH" with a file path')
        return StoreConfig(url=url, sqlite_path=resolve_path(config_dir, location))
    raise ConfigError(
        table.key_path("url"),
        f'expected "" (embedded SQLite), "sqlite:PATH" or "postgresql://USER@HOST:PORT/DB", '
        f'got "{url}"',
    )


def _postgres_store(
    table: ConfigTable, url: str, password_file: str, migrate_on_start: bool, config_dir: Path
) -> StoreConfig:
    location = url.partition("://")[2]
    credentials, at, rest = location.rpartition("@")
    host = rest.partition("/")[0].partition("?")[0]
    if (at and ":" in credentials) or "password=" in url:
        raise ConfigError(
            table.key_path("url"),
            "a password does not belong in the URL",
            hint="put it in a file named by store.password_file (mode 0600), or in ~/.pgpass",
        )
    if not host and "host=" not in url:
        raise ConfigError(
            table.key_path("url"), f'expected "postgresql://USER@HOST:PORT/DB", got "{url}"'
        )
    path = resolve_path(config_dir, password_file) if password_file else None
    return StoreConfig(url=url, password_file=path, migrate_on_start=migrate_on_start)


def _parse_tls(raw: object | None, config_dir: Path) -> TlsConfig:
    table = ConfigTable({} if raw is None else raw, "tls")
    entries = table.raw("certificate")
    table.finish()
    if entries is None:
        return TlsConfig()
    if not isinstance(entries, list):
        raise ConfigError("tls.certificate", "expected [[tls.certificate]] tables")
    certificates: list[TlsCertificate] = []
    for index, entry in enumerate(entries):
        item = ConfigTable(entry, f"tls.certificate[{index}]")
        files: dict[str, Path] = {}
        for key in ("cert_file", "key_file"):
            text = item.string(key, "")
            if not text:
                raise ConfigError(item.key_path(key), "is required")
            files[key] = resolve_path(config_dir, text)
            if not files[key].is_file():
                raise ConfigError(item.key_path(key), f"no such file: {files[key]}")
        item.finish()
        certificates.append(TlsCertificate(files["cert_file"], files["key_file"]))
    return TlsConfig(tuple(certificates))


def _parse_cluster(table: ConfigTable, config_dir: Path) -> ClusterConfig:
    defaults = ClusterConfig()
    listen = table.string("listen", "")
    if listen:
        listen = str(parse_listen_address(listen, key_path=table.key_path("listen")))
    advertise_url = table.string("advertise_url", "")
    if advertise_url and not advertise_url.startswith("http://"):
        raise ConfigError(
            table.key_path("advertise_url"),
            f'expected "http://HOST:PORT" where other edges reach this one, got "{advertise_url}"',
        )
    secret_file = table.string("secret_file", "")
    heartbeat = table.duration("heartbeat_interval", defaults.heartbeat_interval)
    expiry = table.duration("expiry", defaults.expiry)
    resync = table.duration("resync_interval", defaults.resync_interval)
    table.finish()
    if listen and not secret_file:
        raise ConfigError(
            table.key_path("secret_file"),
            "the internal listener needs the shared secret that authenticates forwarded requests",
            hint="write the same 32+ random bytes to this file on every edge (mode 0600)",
        )
    if expiry < 2 * heartbeat:
        raise ConfigError(
            table.key_path("expiry"),
            "must be at least twice cluster.heartbeat_interval, or one late heartbeat expires "
            "an edge that is alive",
        )
    return ClusterConfig(
        listen=listen,
        advertise_url=advertise_url.rstrip("/"),
        secret_file=resolve_path(config_dir, secret_file) if secret_file else None,
        heartbeat_interval=heartbeat,
        expiry=expiry,
        resync_interval=resync,
    )


def _parse_access(table: ConfigTable) -> AccessConfig:
    auth_domain = table.string("auth_domain", "")
    table.finish()
    if not auth_domain:
        return AccessConfig()
    key_path = table.key_path("auth_domain")
    return AccessConfig(auth_domain=parse_auth_domain(auth_domain, key_path=key_path))
