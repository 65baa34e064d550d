"""The edge's configuration: one TOML file read into frozen dataclasses.

A mistake in the file must be found by ``tunnelgate-edge check-config`` (or at start-up), not by
the first visitor, so everything is validated here: types, ranges, durations, listen addresses,
host names and file paths. Every error message starts with the key path of the offending value
(``http.header_timeout: expected a duration like "30s", got "ten"``) and unknown keys are
errors, because a misspelt key silently falling back to a default is how gateways end up open.

Errors::

    EdgeError (edge.errors)
    └── ConfigError      key_path + message; the CLI exits with code 2

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

from edge.errors import EdgeError
from edge.store import InvalidInput, normalize_hostname

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
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class ConfigError(EdgeError):
    """A config value is missing, malformed or contradicts another one."""

    code = "config_error"
    status = 400

    def __init__(self, key_path: str, message: str, *, hint: str = "") -> None:
        full = f"{key_path}: {message}" if key_path else message
        super().__init__(full, hint=hint)
        self.key_path = key_path


@dataclass(frozen=True)
class ListenAddress:
    """Where one listener binds; port 0 lets the OS choose (tests)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


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


class _Table:
    """One TOML table being read: remembers its key path and which keys were used."""

    def __init__(self, data: object, path: str) -> None:
        if not isinstance(data, dict):
            raise ConfigError(path, f"expected a table, got {_describe(data)}")
        self.data: dict[str, object] = data
        self.path = path
        self.used: set[str] = set()

    def key_path(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def raw(self, key: str) -> object | None:
        self.used.add(key)
        return self.data.get(key)

    def table(self, key: str) -> _Table:
        value = self.raw(key)
        return _Table({} if value is None else value, self.key_path(key))

    def string(self, key: str, default: str) -> str:
        value = self.raw(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise ConfigError(self.key_path(key), f"expected a string, got {_describe(value)}")
        return value

    def integer(self, key: str, default: int, *, minimum: int) -> int:
        value = self.raw(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(self.key_path(key), f"expected an integer, got {_describe(value)}")
        if value < minimum:
            raise ConfigError(self.key_path(key), f"must be at least {minimum}, got {value}")
        return value

    def duration(self, key: str, default: float) -> float:
        value = self.raw(key)
        if value is None:
            return default
        return parse_duration(value, key_path=self.key_path(key))

    def string_list(self, key: str) -> list[str]:
        value = self.raw(key)
        if value is None:
            return []
        if not isinstance(value, list):
            raise ConfigError(self.key_path(key), f"expected a list, got {_describe(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise ConfigError(
                    f"{self.key_path(key)}[{index}]", f"expected a string, got {_describe(item)}"
                )
        return [str(item) for item in value]

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise ConfigError(
                self.key_path(unknown[0]),
                "unknown key",
                hint="check the spelling against the commented edge.toml that init writes",
            )


def _describe(value: object) -> str:
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return f"{type(value).__name__} {value!r}"


def parse_duration(value: object, *, key_path: str = "") -> float:
    """Parse "250ms", "30s", "5m", "1h" or a sum such as "1m30s" into positive seconds."""
    expected = 'expected a duration like "30s", "5m", "1h" or "250ms"'
    if not isinstance(value, str):
        raise ConfigError(key_path, f"{expected}, got {_describe(value)}")
    text = value.strip()
    position = 0
    total = 0.0
    while position < len(text):
        match = _DURATION_PART.match(text, position)
        if match is None:
            raise ConfigError(key_path, f'{expected}, got "{value}"')
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if not text:
        raise ConfigError(key_path, f'{expected}, got "{value}"')
    if total <= 0:
        raise ConfigError(key_path, f'must be longer than zero, got "{value}"')
    return total


def parse_listen_address(value: str, *, key_path: str = "") -> ListenAddress:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6); the host must be written out."""
    expected = 'expected "HOST:PORT" such as "127.0.0.1:8080" or "[::1]:8080"'
    if value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep:
            raise ConfigError(key_path, f'{expected}, got "{value}"')
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ConfigError(key_path, f'"{host}" is not an IPv6 address') from None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep or not host:
            raise ConfigError(key_path, f'{expected}, got "{value}"')
        if ":" in host:
            raise ConfigError(key_path, f'put an IPv6 host in brackets, like "[{host}]:PORT"')
        if not _is_ip(host) and not _is_dns_name(host):
            raise ConfigError(key_path, f'"{host}" is neither an IP address nor a host name')
    if not port_text.isdigit() or int(port_text) > 65535:
        raise ConfigError(key_path, f'port must be a number from 0 to 65535, got "{port_text}"')
    return ListenAddress(host, int(port_text))


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _is_dns_name(text: str) -> bool:
    labels = text.rstrip(".").split(".")
    return len(text) <= 253 and all(_HOST_LABEL.fullmatch(label) for label in labels)


def _resolve(base: Path, value: str) -> Path:
    return (base / Path(value).expanduser()).resolve()


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
    root = _Table(dict(document), "")
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


def _parse_edge(table: _Table, config_dir: Path) -> EdgeSection:
    edge_id = table.string("id", EdgeSection.id)
    if not _EDGE_ID.fullmatch(edge_id):
        raise ConfigError(
            table.key_path("id"),
            f'"{edge_id}" is not a valid id: use 1-63 letters, digits, "_", "." or "-"',
        )
    state_dir = _resolve(config_dir, table.string("state_dir", "."))
    table.finish()
    return EdgeSection(id=edge_id, state_dir=state_dir)


def _parse_listen(table: _Table) -> ListenConfig:
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


def _parse_tunnel(table: _Table) -> TunnelConfig:
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


def _parse_http(table: _Table) -> HttpConfig:
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


def _parse_store(table: _Table, config_dir: Path) -> StoreConfig:
    url = table.string("url", "")
    password_file = table.string("password_file", "")
    migrate_on_start = table.raw("migrate_on_start")
    table.finish()
    if migrate_on_start is not None and not isinstance(migrate_on_start, bool):
        raise ConfigError(
            table.key_path("migrate_on_start"),
            f"expected true or false, got {_describe(migrate_on_start)}",
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
        return StoreConfig(url=url, sqlite_path=_resolve(config_dir, location))
    raise ConfigError(
        table.key_path("url"),
        f'expected "" (embedded SQLite), "sqlite:PATH" or "postgresql://USER@HOST:PORT/DB", '
        f'got "{url}"',
    )


def _postgres_store(
    table: _Table, url: str, password_file: str, migrate_on_start: bool, config_dir: Path
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
    path = _resolve(config_dir, password_file) if password_file else None
    return StoreConfig(url=url, password_file=path, migrate_on_start=migrate_on_start)


def _parse_tls(raw: object | None, config_dir: Path) -> TlsConfig:
    table = _Table({} if raw is None else raw, "tls")
    entries = table.raw("certificate")
    table.finish()
    if entries is None:
        return TlsConfig()
    if not isinstance(entries, list):
        raise ConfigError("tls.certificate", "expected [[tls.certificate]] tables")
    certificates: list[TlsCertificate] = []
    for index, entry in enumerate(entries):
        item = _Table(entry, f"tls.certificate[{index}]")
        files: dict[str, Path] = {}
        for key in ("cert_file", "key_file"):
            text = item.string(key, "")
            if not text:
                raise ConfigError(item.key_path(key), "is required")
            files[key] = _resolve(config_dir, text)
            if not files[key].is_file():
                raise ConfigError(item.key_path(key), f"no such file: {files[key]}")
        item.finish()
        certificates.append(TlsCertificate(files["cert_file"], files["key_file"]))
    return TlsConfig(tuple(certificates))


def parse_auth_domain(value: str, *, key_path: str = "access.auth_domain") -> str:
    """``host`` or ``host:port`` in canonical form (lower case, no trailing dot).

    A port is allowed so that an edge serving plain HTTP on a loopback port (the demo, tests)
    can name its own auth domain, e.g. ``auth.localhost:8080``.
    """
    host, sep, port_text = value.rpartition(":")
    if not sep:
        host, port_text = value, ""
    try:
        normalized = normalize_hostname(host, allow_wildcard=False)
    except InvalidInput as exc:
        raise ConfigError(key_path, exc.message, hint=exc.hint) from None
    if not sep:
        return normalized
    if not port_text.isdigit() or not 0 < int(port_text) < 65536 or port_text.startswith("0"):
        raise ConfigError(key_path, f"invalid port {port_text!r}", hint="write HOST or HOST:PORT")
    return f"{normalized}:{int(port_text)}"


def _parse_cluster(table: _Table, config_dir: Path) -> ClusterConfig:
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
        secret_file=_resolve(config_dir, secret_file) if secret_file else None,
        heartbeat_interval=heartbeat,
        expiry=expiry,
        resync_interval=resync,
    )


def _parse_access(table: _Table) -> AccessConfig:
    auth_domain = table.string("auth_domain", "")
    table.finish()
    if not auth_domain:
        return AccessConfig()
    key_path = table.key_path("auth_domain")
    return AccessConfig(auth_domain=parse_auth_domain(auth_domain, key_path=key_path))
