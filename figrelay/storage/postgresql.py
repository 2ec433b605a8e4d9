"""PostgreSQL as the store that several figrelay replicas share (issue 10): the groundwork.

With ``storage: postgresql://…`` in the configuration, any number of replicas accept and deliver
through one database, so a replica that restarts or a host that is lost loses no Fig event. This
module holds the parts of that back end which do not depend on how the outbox operations are cut:

- ``parse_storage_url``: checks the ``storage:`` URL's shape (for ``figrelay check``) and turns it
  into a ``PostgresTarget``; its password is a ``SecretStr``, in no repr and no error;
- ``connect_with_retry``: connects, and while the database cannot be reached or refuses figrelay,
  keeps trying with capped, jittered backoff, saying once per distinct problem what is wrong and
  how to fix it (a replica that starts before its database must come up by itself);
- ``migrate``: creates and upgrades the schema under a transaction-level advisory lock, so two
  replicas that start at the same moment neither collide nor upgrade twice.

The driver is asyncpg, imported only where a connection is made: ``figrelay check`` validates a URL
without the ``postgresql`` extra installed, and an installation that keeps SQLite never loads it.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import random
import re
import socket
import ssl
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar, overload

from pydantic import SecretStr

from .base import OutboxError

if TYPE_CHECKING:
    import asyncpg

log = logging.getLogger("figrelay.storage.postgresql")

T = TypeVar("T")

# --- the storage: URL ------------------------------------------------------------------------------

SCHEMES = ("postgresql", "postgres")
DEFAULT_PORT = 5432
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_APPLICATION_NAME = "figrelay"
# PostgreSQL cuts longer identifiers to NAMEDATALEN - 1 bytes without an error: a database or role
# named in the URL would then silently be another one.
MAX_IDENTIFIER_BYTES = 63

SSL_MODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_CHOICES: dict[str, tuple[str, ...]] = {
    "sslmode": SSL_MODES,
    "sslnegotiation": ("postgres", "direct"),
    "target_session_attrs": ("any", "read-write", "read-only", "primary", "standby", "prefer-standby"),
    "ssl_min_protocol_version": ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
    "ssl_max_protocol_version": ("TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"),
}
_PATHS = ("sslrootcert", "sslcert", "sslkey", "sslcrl", "passfile")
# The libpq options that name a part of the URL: accepted in the query as libpq accepts them, but
# only once (a database both in the path and as dbname= is a mistake, not a preference).
_PARTS = ("host", "port", "dbname", "user", "password")
SUPPORTED_OPTIONS = tuple(sorted({*_PARTS, *_CHOICES, *_PATHS, "sslpassword", "connect_timeout", "application_name", "options"}))
# libpq options that asyncpg (or figrelay) does not offer, with what to do instead.
_UNSUPPORTED = {
    "hostaddr": "write the address as the host (postgresql://USER@10.0.0.5:5432/DATABASE)",
    "service": "write the service's settings into the URL itself",
    "requiressl": "use sslmode=require",
    "client_encoding": "figrelay always talks UTF-8",
    "replication": "figrelay needs an ordinary connection",
    "gssencmode": "figrelay's driver does not encrypt with GSSAPI; use sslmode",
    "channel_binding": "figrelay's driver does not offer it; use sslmode=verify-full to authenticate the server",
    "load_balance_hosts": "figrelay's driver tries the hosts in order; put a load balancer or virtual IP in front",
}
_SECRET_MIN = 4
"""Secrets shorter than this are not scrubbed from messages: they would match ordinary words.
The parse never puts a password into a message; the scrub is a second line of defence only."""

_HOST_NAME = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_.-]{0,253})?")
_OPTION_NAME = re.compile(r"[a-z][a-z0-9_]{0,40}")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_PERCENT_HINT = "percent-encode it: %2F for '/', %3F for '?', %23 for '#', %40 for '@', %25 for '%'"


class StorageURLError(ValueError):
    """The ``storage:`` URL is not one figrelay can use; ``problems`` says each thing wrong and how
    to fix it (``figrelay check`` reports them with the file and line). No password is in them."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    """Where the shared database is and how to log in, as the ``storage:`` URL says.

    ``hosts`` are host names, IP addresses or absolute unix-socket folders; empty means the
    driver's default, as for libpq (``$PGHOST``, then the usual socket folders, then localhost).
    ``ports`` has one port per host (or one for the default host); empty means ``$PGPORT`` or 5432.
    ``user``, ``database`` and ``password`` left out fall back as in libpq (``$PGUSER`` or the OS
    user; the user's name; ``$PGPASSWORD`` or the passfile). ``options`` are the libpq query
    options the driver takes as they are (sslmode, sslrootcert, target_session_attrs, …)."""

    hosts: tuple[str, ...] = ()
    ports: tuple[int, ...] = ()
    database: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    options: tuple[tuple[str, str], ...] = ()
    ssl_password: SecretStr | None = None
    """sslpassword: the key file's passphrase, a secret like the password."""
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    application_name: str = DEFAULT_APPLICATION_NAME
    server_options: str | None = None
    """libpq's ``options`` (``-c search_path=figrelay``): sent to the server at start-up."""

    def option(self, name: str) -> str | None:
        return dict(self.options).get(name)

    @property
    def sslmode(self) -> str:
        """The SSL mode in force: as given, else libpq's default (``prefer``; meaningless on a socket)."""
        return self.option("sslmode") or "prefer"

    def address(self) -> str:
        """Where, for messages: ``db.example.com:5432``, ``socket /run/postgresql (port 5432)``, or
        several of them; never the user's password."""
        if not self.hosts:
            port = self.ports[0] if self.ports else DEFAULT_PORT
            return f"the local default server (port {port}: $PGHOST, a socket in /run/postgresql, /var/run/postgresql or /tmp, else localhost)"
        ports = self.ports or (DEFAULT_PORT,) * len(self.hosts)
        return ", ".join(_host_text(h, p) for h, p in zip(self.hosts, ports, strict=True))

    def describe(self) -> str:
        """Where and as whom, for messages: ``db.example.com:5432, database figrelay, role figrelay``."""
        database = f"database {self.database!r}" if self.database else "the database named after the role"
        role = f"role {self.user!r}" if self.user else "the default role ($PGUSER, else the OS user)"
        return f"{self.address()}, {database}, {role}"

    def redacted(self) -> str:
        """The URL again, with ``***`` for the password: what may appear in a log or an error."""
        netloc = ""
        if self.user is not None or self.password is not None:
            netloc = urllib.parse.quote(self.user or "", safe="") + (":***" if self.password is not None else "") + "@"
        query: list[tuple[str, str]] = []
        tcp = [(h, p) for h, p in zip(self.hosts, self.ports or (None,) * len(self.hosts), strict=True) if not h.startswith("/")]
        if self.hosts and len(tcp) == len(self.hosts):
            netloc += ",".join((f"[{h}]" if ":" in h else h) + (f":{p}" if p is not None else "") for h, p in tcp)
        else:
            if self.hosts:
                query.append(("host", ",".join(self.hosts)))
            if self.ports:
                query.append(("port", ",".join(str(p) for p in self.ports)))
        query += list(self.options)
        if self.ssl_password is not None:
            query.append(("sslpassword", "***"))
        if self.connect_timeout != DEFAULT_CONNECT_TIMEOUT:
            query.append(("connect_timeout", f"{self.connect_timeout:g}"))
        if self.application_name != DEFAULT_APPLICATION_NAME:
            query.append(("application_name", self.application_name))
        if self.server_options is not None:
            query.append(("options", self.server_options))
        path = "/" + urllib.parse.quote(self.database, safe="") if self.database else "/"
        text = f"postgresql://{netloc}{path}"
        if query:
            text += "?" + "&".join(f"{k}={urllib.parse.quote(v, safe='/,:*')}" for k, v in query)
        return text

    def __str__(self) -> str:
        return self.redacted()

    def secrets(self) -> tuple[str, ...]:
        """The texts that must never reach a log, an error or an answer (for the config's masking)."""
        return tuple(s.get_secret_value() for s in (self.password, self.ssl_password) if s is not None and s.get_secret_value())

    def scrub(self, text: str) -> str:
        """``text`` with every secret of this target replaced by ``***``."""
        return _scrub(text, self.secrets())

    def driver_arguments(self) -> dict[str, Any]:
        """Keyword arguments for ``asyncpg.connect`` / ``create_pool``. The password goes as its own
        argument, never inside a DSN, so no driver message can quote it."""
        ssl_options = [(k, v) for k, v in self.options if k != "target_session_attrs"]
        if self.ssl_password is not None:
            ssl_options.append(("sslpassword", self.ssl_password.get_secret_value()))
        settings = {"application_name": self.application_name}
        if self.server_options is not None:
            settings["options"] = self.server_options
        arguments: dict[str, Any] = {
            # asyncpg reads the SSL files' options only from a DSN's query; this one holds no secret
            # but sslpassword, and asyncpg quotes no DSN in its messages.
            "dsn": "postgresql://?" + urllib.parse.urlencode(ssl_options) if ssl_options else None,
            "host": list(self.hosts) or None,
            "port": list(self.ports) if len(self.ports) > 1 else (self.ports[0] if self.ports else None),
            "user": self.user,
            "database": self.database,
            "password": self.password.get_secret_value() if self.password is not None else None,
            "timeout": self.connect_timeout,
            "server_settings": settings,
            "target_session_attrs": self.option("target_session_attrs"),
        }
        return arguments


def _host_text(host: str, port: int) -> str:
    if host.startswith("/"):
        return f"socket {host} (port {port})"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _scrub(text: str, secrets: Iterable[str]) -> str:
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= _SECRET_MIN:
            text = text.replace(secret, "***")
    return text


def parse_storage_url(text: str) -> PostgresTarget:
    """The ``storage:`` URL as a target: ``postgresql://USER:PASSWORD@HOST:PORT/DATABASE?OPTIONS``
    (or ``postgres://``), libpq's URI form. A unix socket is a folder in ``?host=`` or a
    percent-encoded host (``%2Frun%2Fpostgresql``); several hosts are separated by commas.

    Raises StorageURLError with every problem found. The messages never quote the password:
    where a mistake could have moved part of it elsewhere in the URL (an unencoded ``/``, ``?``,
    ``#`` or ``@``), they name the mistake without quoting the text."""
    problems: list[str] = []
    secrets: list[str] = []
    try:
        target = _parse(text, problems, secrets)
    finally:
        # Scrub whatever the parse found to be secret, however the parse ended.
        problems[:] = [_scrub(p, secrets) for p in problems]
    if problems or target is None:
        raise StorageURLError(problems or ["not a PostgreSQL URL"])
    return target


def _parse(text: str, problems: list[str], secrets: list[str]) -> PostgresTarget | None:
    shape = "write it as postgresql://USER:PASSWORD@HOST:PORT/DATABASE (leave storage: out to keep SQLite)"
    if not isinstance(text, str) or not text.strip():
        problems.append(f"the storage URL is empty: {shape}")
        return None
    text = text.strip()
    scheme, sep, rest = text.partition("://")
    if not sep:
        problems.append(f"not a URL: {shape}")
        return None
    if scheme.lower() not in SCHEMES:
        shown = f"{scheme!r}" if re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]{0,30}", scheme) else "this scheme"
        if scheme.lower() in ("sqlite", "file"):
            problems.append(f"{shown}: SQLite is the default store; leave storage: out to use it (state_dir says where)")
        elif scheme.lower().startswith(("postgresql+", "postgres+")):
            problems.append(f"{shown}: write postgresql:// (figrelay brings its own driver, asyncpg)")
        else:
            problems.append(f"unsupported scheme {shown}: figrelay stores in PostgreSQL (postgresql:// or postgres://), or in SQLite when storage: is left out")
        return None
    if "#" in rest:
        problems.append(f"the URL holds a '#', which would end it there; if it is part of the password or a name, {_PERCENT_HINT}")
        return None

    # libpq's authority ends at the first '/' or '?'. An '@' after that point is most often a
    # password holding one of those characters unencoded, and then what looks like the host, the
    # database or an option may be a piece of it: refuse, and quote none of them. (libpq would take
    # an '@' inside an option's value; here it must be written %40, a small price for never
    # showing a password in an error.)
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, after = rest[:end], rest[end:]
    if "@" in after:
        problems.append(
            f"an '@' comes after the host: if the user name or password holds '/', '?' or '@', or an option's value holds '@', "
            f"{_PERCENT_HINT}"
        )
        return None
    path, _, query = after.partition("?")

    user = password = None
    hostspec = authority
    if "@" in authority:
        # The last '@' ends the user part, so a password with an unencoded '@' still parses.
        userinfo, _, hostspec = authority.rpartition("@")
        raw_user, has_password, raw_password = userinfo.partition(":")
        if has_password:
            secrets.append(raw_password)
            password = _decode(raw_password, "the password", problems, quote=False)
            if password is not None:
                secrets.append(password)
            password = password or None
        user = _decode(raw_user, "the user name", problems) or None

    options, given = _parse_query(query, problems, secrets)

    hosts, ports = _parse_hosts(hostspec, problems)
    if "host" in given:
        if hosts:
            problems.append("the host is given twice, before the path and as ?host=; keep one")
        else:
            hosts = _split_hosts(given["host"], problems)
    if "port" in given:
        if ports:
            problems.append("the port is given twice, after the host and as ?port=; keep one")
        else:
            ports = tuple(p for p in (_port(part, problems) for part in given["port"].split(",")) if p is not None)
    if ports and hosts and len(ports) not in (1, len(hosts)):
        problems.append(f"{len(hosts)} hosts but {len(ports)} ports: give one port for all of them, or one for each host")
    elif ports and len(ports) == 1 and len(hosts) > 1:
        ports = ports * len(hosts)
    if len(ports) > 1 and not hosts:
        problems.append("several ports need as many hosts")

    database = None
    if path not in ("", "/"):
        raw_database = path[1:]
        if "/" in raw_database:
            problems.append(
                f"the path holds a '/' after the database name: a URL names one database, postgresql://HOST/DATABASE; "
                f"if the '/' is part of the name, {_PERCENT_HINT}"
            )
        else:
            database = _decode(raw_database, "the database name", problems) or None
    if "dbname" in given:
        if database is not None:
            problems.append("the database is given twice, as the path and as ?dbname=; keep one")
        else:
            database = given["dbname"] or None
    if "user" in given:
        if user is not None:
            problems.append("the user is given twice, before the host and as ?user=; keep one")
        else:
            user = given["user"] or None
    if "password" in given:
        if password is not None:
            problems.append("the password is given twice, before the host and as ?password=; keep one")
        else:
            password = given["password"] or None
    for what, name in (("database name", database), ("role name", user)):
        if name is not None and len(name.encode()) > MAX_IDENTIFIER_BYTES:
            problems.append(f"the {what} is longer than {MAX_IDENTIFIER_BYTES} bytes, PostgreSQL's limit: it would be cut, and name another one")
        if name is not None and "\x00" in name:
            problems.append(f"the {what} holds a NUL character (%00)")

    timeout = DEFAULT_CONNECT_TIMEOUT
    if "connect_timeout" in given:
        timeout = _connect_timeout(given["connect_timeout"], problems) or timeout
    mode = dict(options).get("sslmode")
    if dict(options).get("sslnegotiation") == "direct" and mode not in ("require", "verify-ca", "verify-full"):
        problems.append("sslnegotiation=direct starts with TLS at once, so it needs sslmode=require, verify-ca or verify-full")
    if problems:
        return None
    return PostgresTarget(
        hosts=hosts,
        ports=ports,
        database=database,
        user=user,
        password=SecretStr(password) if password is not None else None,
        options=options,
        ssl_password=SecretStr(given["sslpassword"]) if given.get("sslpassword") else None,
        connect_timeout=timeout,
        application_name=given.get("application_name") or DEFAULT_APPLICATION_NAME,
        server_options=given.get("options") or None,
    )


def _decode(raw: str, what: str, problems: list[str], *, quote: bool = True) -> str | None:
    """Percent-decode one part of the URL; ``quote=False`` for a secret (its text is never shown)."""
    if _BAD_ESCAPE.search(raw):
        problems.append(f"{what} holds a '%' that does not start a percent-encoded byte (%XX); write a literal '%' as %25")
        return None
    try:
        return urllib.parse.unquote(raw, errors="strict")
    except UnicodeDecodeError:
        shown = f" ({raw!r})" if quote else ""
        problems.append(f"{what}{shown} is not percent-encoded UTF-8")
        return None


def _parse_query(query: str, problems: list[str], secrets: list[str]) -> tuple[tuple[tuple[str, str], ...], dict[str, str]]:
    """(options passed to the driver as they are, every option by name)."""
    given: dict[str, str] = {}
    if not query:
        return (), given
    for number, part in enumerate(query.split("&"), 1):
        if not part:
            continue
        raw_name, has_value, raw_value = part.partition("=")
        if not has_value:
            # Not quoted: a password with an unencoded '&' or '?' ends up here.
            problems.append(
                f"option {number} in the query has no '=': options are NAME=VALUE joined by '&'; "
                f"if a password holds '?', '&' or '#', {_PERCENT_HINT}"
            )
            continue
        name = urllib.parse.unquote(raw_name)
        if not _OPTION_NAME.fullmatch(name):
            problems.append(
                f"option {number} in the query does not start with an option name (such as sslmode=); "
                f"if a password holds '?' or '&', {_PERCENT_HINT}"
            )
            continue
        if name in ("password", "sslpassword"):
            secrets.append(raw_value)
        value = _decode(raw_value, f"the value of {name}=", problems, quote=name not in ("password", "sslpassword"))
        if value is None:
            continue
        if name in ("password", "sslpassword"):
            secrets.append(value)
        if name in given:
            problems.append(f"{name}= is given twice; keep one")
            continue
        given[name] = value
    options: list[tuple[str, str]] = []
    for name, value in given.items():
        if name in _CHOICES:
            if value in _CHOICES[name]:
                options.append((name, value))
            else:
                problems.append(f"{name}={_shown(value)} is not one of {', '.join(_CHOICES[name])}{_closest(value, _CHOICES[name])}")
        elif name in _PATHS:
            if not value:
                problems.append(f"{name}= is empty: give the file's path, or leave the option out")
            else:
                options.append((name, value))
        elif name in _UNSUPPORTED:
            problems.append(f"the libpq option {name}= is not supported: {_UNSUPPORTED[name]}")
        elif name not in SUPPORTED_OPTIONS:
            problems.append(f"unknown option {name}={_closest(name, SUPPORTED_OPTIONS)} (figrelay takes: {', '.join(SUPPORTED_OPTIONS)})")
    return tuple(options), given


def _shown(value: str) -> str:
    return repr(value) if len(value) <= 40 else repr(value[:37] + "...")


def _closest(word: str, choices: Sequence[str]) -> str:
    import difflib

    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not match:
        lower = {c.lower(): c for c in choices}
        match = [lower[word.lower()]] if word.lower() in lower else []
    return f"; did you mean {match[0]!r}?" if match else ""


def _parse_hosts(hostspec: str, problems: list[str]) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """Hosts and ports from ``HOST1:PORT1,HOST2,[::1]:PORT3``; a host without a port gets the
    default one when another has a port (as in libpq), and ``:PORT`` alone is the default host."""
    if not hostspec:
        return (), ()
    specs = hostspec.split(",")
    found: list[tuple[str, int | None]] = []
    for spec in specs:
        if not spec:
            problems.append("an empty host between commas: list hosts as HOST1:PORT1,HOST2:PORT2")
            continue
        host, port_text = spec, ""
        if spec.startswith("["):
            close = spec.find("]")
            if close < 0:
                problems.append(f"the IPv6 address {spec!r} has no closing ']'")
                continue
            host, rest = spec[1:close], spec[close + 1 :]
            if rest and not rest.startswith(":"):
                problems.append(f"after the IPv6 address [{host}] comes {rest!r}: write [ADDRESS]:PORT")
                continue
            if not _is_ip(host, 6):
                problems.append(f"[{host}] is not an IPv6 address")
                continue
            port_text = rest[1:]
        elif spec.count(":") > 1:
            problems.append("an IPv6 address in the host part needs brackets: postgresql://USER@[2001:db8::1]:5432/DATABASE")
            continue
        else:
            host, _, port_text = spec.partition(":")
            decoded = _decode(host, "the host", problems)
            if decoded is None:
                continue
            if decoded and not _valid_host(decoded):
                problems.append(f"the host {_shown(decoded)} is not a host name, an IP address or a socket folder (an absolute path)")
                continue
            if not decoded and len(specs) > 1:
                problems.append("a port without its host in a list of hosts: write HOST:PORT for each")
                continue
            host = decoded
        port = None
        if port_text or spec.endswith(":"):
            port = _port(port_text, problems)
            if port is None:
                continue
        found.append((host, port))
    hosts = tuple(h for h, _ in found if h)
    if not any(p is not None for _, p in found):
        return hosts, ()
    return hosts, tuple(DEFAULT_PORT if p is None else p for _, p in found)


def _split_hosts(value: str, problems: list[str]) -> tuple[str, ...]:
    hosts = []
    for host in value.split(","):
        if not host:
            problems.append("?host= holds an empty host: list hosts as host=HOST1,HOST2 or give a socket folder (host=/run/postgresql)")
        elif not _valid_host(host):
            problems.append(f"?host={_shown(host)} is not a host name, an IP address or a socket folder (an absolute path)")
        else:
            hosts.append(host)
    return tuple(hosts)


def _valid_host(host: str) -> bool:
    if host.startswith("/"):
        return "\x00" not in host
    return bool(_HOST_NAME.fullmatch(host)) or _is_ip(host, 6)


def _is_ip(text: str, version: int) -> bool:
    try:
        return ipaddress.ip_address(text).version == version
    except ValueError:
        return False


def _port(text: str, problems: list[str]) -> int | None:
    if text.isascii() and text.isdigit() and 1 <= int(text) <= 65535:
        return int(text)
    problems.append(f"the port {_shown(text)} is not a number from 1 to 65535")
    return None


def _connect_timeout(text: str, problems: list[str]) -> float | None:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (0 < value < 3600):
        # libpq reads 0 as "wait forever"; a replica waiting forever on one attempt would never retry.
        problems.append(f"connect_timeout={_shown(text)} is not a number of seconds between 0 and 3600 (0, libpq's 'forever', would stop the retries)")
        return None
    return value


# --- connecting, and retrying ----------------------------------------------------------------------


class DriverMissingError(OutboxError):
    """asyncpg is not installed: the ``postgresql`` extra was left out."""


class DatabaseUnavailableError(OutboxError):
    """No connection after the attempts allowed; ``failure`` says why and how to fix it."""

    def __init__(self, failure: ConnectFailure, attempts: int) -> None:
        self.failure = failure
        self.attempts = attempts
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        super().__init__(f"{failure.message} (gave up after {tries})")


def _asyncpg() -> Any:
    try:
        import asyncpg
    except ImportError as exc:
        raise DriverMissingError(
            f"storage: postgresql:// needs the PostgreSQL driver, asyncpg, which is not installed ({exc}): "
            "install figrelay with its postgresql extra (pip install 'figrelay[postgresql]')"
        ) from None
    return asyncpg


class FailureKind(StrEnum):
    """Why a connection failed. All are retried; the kinds an operator must fix say so."""

    UNREACHABLE = "unreachable"
    """Nothing listens there, or the network does not get there (the server may be starting)."""
    HOST_UNKNOWN = "host_unknown"
    TIMEOUT = "timeout"
    STARTING = "starting"
    """The server answers that it is starting, stopping or recovering."""
    BUSY = "busy"
    """The server has no connection slot free."""
    PASSWORD = "password"
    ROLE = "role"
    DATABASE = "database"
    NOT_ALLOWED = "not_allowed"
    """pg_hba.conf has no line for this role, database and address."""
    SSL = "ssl"
    CLIENT_CONFIG = "client_config"
    """A file named in the URL (a certificate, a key) is missing or unreadable."""
    SERVER_ROLE = "server_role"
    """target_session_attrs: no host was the kind asked for (a primary, a standby)."""
    REFUSED = "refused"
    """Any other refusal from the server."""


_OPERATOR_FIXES = frozenset(
    {
        FailureKind.PASSWORD,
        FailureKind.ROLE,
        FailureKind.DATABASE,
        FailureKind.NOT_ALLOWED,
        FailureKind.SSL,
        FailureKind.CLIENT_CONFIG,
        FailureKind.HOST_UNKNOWN,
    }
)


@dataclass(frozen=True, slots=True)
class ConnectFailure:
    """One failed connection attempt, as a person can act on it."""

    kind: FailureKind
    message: str
    """What is wrong, where, and how to fix it; never the password."""

    @property
    def needs_operator(self) -> bool:
        """Whether it will not go away by itself (a wrong password, a missing database): figrelay
        still retries, since someone may be fixing it right now."""
        return self.kind in _OPERATOR_FIXES


@dataclass(frozen=True, slots=True)
class ConnectAttempt:
    """What ``on_attempt`` hears after each attempt (for ``/readyz``, metrics and tests)."""

    number: int
    elapsed: float
    """Seconds since the first attempt began, on the injected clock."""
    failure: ConnectFailure | None
    """None: connected."""
    retry_in: float | None = None
    """Seconds until the next attempt; None when connected or giving up."""
    new: bool = True
    """The first attempt in a row with this failure (logged as a warning; repeats are not)."""


@dataclass(frozen=True, slots=True)
class Backoff:
    """The wait after the n-th failure in a row: ``first`` doubling up to ``cap``, then drawn
    between half and all of that. The draw spreads replicas that lost their database at the same
    moment; the half that is always waited keeps one replica from retrying in a tight loop."""

    first: float = 0.5
    cap: float = 30.0

    def delay(self, failures: int, draw: float) -> float:
        ceiling = min(self.cap, self.first * 2.0 ** min(max(failures - 1, 0), 60))
        return ceiling * (0.5 + 0.5 * min(max(draw, 0.0), 1.0))


REMIND_EVERY = 300.0
"""While the same failure goes on, it is logged again as a warning this often (seconds), so a
long outage is not one line at its start and then silence."""


async def open_connection(target: PostgresTarget) -> asyncpg.Connection:
    """One connection to ``target``; the default for ``connect_with_retry``."""
    return await _asyncpg().connect(**target.driver_arguments())


def pool_opener(*, min_size: int = 1, max_size: int = 10) -> Callable[[PostgresTarget], Awaitable[asyncpg.Pool]]:
    """A ``connect`` for ``connect_with_retry`` that opens a pool; a failed start closes what it opened."""

    async def open_pool(target: PostgresTarget) -> asyncpg.Pool:
        # reset=: asyncpg's default runs a query on every release to undo session state (SET,
        # LISTEN, session advisory locks, cursors); figrelay's pooled connections leave none, and
        # that query cost a round trip per statement
        pool = await _asyncpg().create_pool(min_size=min_size, max_size=max_size, reset=_keep_session, **target.driver_arguments())
        assert pool is not None
        return pool

    return open_pool


async def _keep_session(conn: asyncpg.Connection) -> None:
    """A pooled connection goes back as it is (see ``pool_opener``)."""


@overload
async def connect_with_retry(
    target: PostgresTarget,
    *,
    connect: None = None,
    backoff: Backoff | None = ...,
    sleep: Callable[[float], Awaitable[object]] = ...,
    clock: Callable[[], float] = ...,
    draw: Callable[[], float] = ...,
    on_attempt: Callable[[ConnectAttempt], object] | None = ...,
    max_attempts: int | None = ...,
    remind_every: float = ...,
) -> asyncpg.Connection: ...


@overload
async def connect_with_retry(
    target: PostgresTarget,
    *,
    connect: Callable[[PostgresTarget], Awaitable[T]],
    backoff: Backoff | None = ...,
    sleep: Callable[[float], Awaitable[object]] = ...,
    clock: Callable[[], float] = ...,
    draw: Callable[[], float] = ...,
    on_attempt: Callable[[ConnectAttempt], object] | None = ...,
    max_attempts: int | None = ...,
    remind_every: float = ...,
) -> T: ...


async def connect_with_retry(
    target: PostgresTarget,
    *,
    connect: Callable[[PostgresTarget], Awaitable[Any]] | None = None,
    backoff: Backoff | None = None,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
    draw: Callable[[], float] = random.random,
    on_attempt: Callable[[ConnectAttempt], object] | None = None,
    max_attempts: int | None = None,
    remind_every: float = REMIND_EVERY,
) -> Any:
    """Connect to ``target`` (with ``connect``: ``open_connection`` by default, or ``pool_opener()``),
    trying again after every failure until it succeeds, or until ``max_attempts`` (None: forever,
    as the daemon does; an operator command gives 1) and then DatabaseUnavailableError.

    Every failure is retried, those an operator must fix (a wrong password, a missing database)
    too, since someone may be fixing it now. Each distinct failure is logged once as a warning
    with what to do, again only when it changes or every ``remind_every`` seconds; a success after
    failures is logged too. No message holds the password. ``on_attempt`` hears every attempt.
    ``sleep``, ``clock`` and ``draw`` (jitter in [0, 1)) are for tests; cancelling stops it."""
    opener = connect or open_connection
    backoff = backoff or Backoff()
    asyncpg = _asyncpg()
    # Everything a failed connection raises: OSError covers refused, unreachable, unknown host
    # (socket.gaierror), SSL errors and resets; TimeoutError is connect_timeout running out.
    expected = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)
    started = clock()
    failures = 0
    last: ConnectFailure | None = None
    last_said = started
    number = 0
    while True:
        number += 1
        try:
            result = await opener(target)
        except expected as exc:
            failure = describe_failure(exc, target)
        else:
            elapsed = clock() - started
            if failures:
                log.info("connected to PostgreSQL at %s after %d failed attempts (%.1fs)", target.address(), failures, elapsed)
            if on_attempt is not None:
                on_attempt(ConnectAttempt(number, elapsed, None, None))
            return result
        failures += 1
        now = clock()
        new = failure != last
        giving_up = max_attempts is not None and number >= max_attempts
        delay = None if giving_up else backoff.delay(failures, draw())
        if new or now - last_said >= remind_every:
            if giving_up:
                log.warning("cannot connect to PostgreSQL: %s", failure.message)
            else:
                still = "" if new else f"still, after {now - started:.0f}s: "
                log.warning("cannot connect to PostgreSQL: %s%s; trying again (next in %.1fs)", still, failure.message, delay)
            last_said = now
        else:
            log.debug("cannot connect to PostgreSQL (attempt %d, the same as before): %s", number, failure.kind.value)
        last = failure
        if on_attempt is not None:
            on_attempt(ConnectAttempt(number, now - started, failure, delay, new=new))
        if delay is None:
            raise DatabaseUnavailableError(failure, number)
        await sleep(delay)


def describe_failure(exc: BaseException, target: PostgresTarget) -> ConnectFailure:
    """What a failed connection attempt means for the operator: the kind, and a message that says
    what is wrong at which server and how to fix it, with the password scrubbed out."""
    kind, message = _classify(exc, target)
    return ConnectFailure(kind, target.scrub(message))


def _classify(exc: BaseException, target: PostgresTarget) -> tuple[FailureKind, str]:
    where = target.describe()
    server_said = _server_text(exc)
    sqlstate = getattr(exc, "sqlstate", None)
    role = target.user or "ROLE"
    database = target.database or role
    fix_url = "in storage: (the URL in the configuration)"
    if sqlstate == "28P01":
        # PostgreSQL answers the same for a wrong password and an unknown role, on purpose.
        return FailureKind.PASSWORD, (
            f"{where}: the server refused the password ({server_said}): check the password {fix_url} and the variable it comes "
            f"from, and that the role exists (on the server: ALTER ROLE {role} WITH LOGIN PASSWORD '…', or CREATE ROLE)"
        )
    if sqlstate == "28000":
        lowered = server_said.lower()
        if "does not exist" in lowered and "role" in lowered:
            return FailureKind.ROLE, f"{where}: {server_said}: create it (CREATE ROLE {role} WITH LOGIN PASSWORD '…') or fix the user name {fix_url}"
        if "pg_hba.conf" in lowered:
            if "no encryption" in lowered and target.sslmode in ("disable", "allow", "prefer"):
                return FailureKind.SSL, (
                    f"{where}: the server accepts this role only over SSL ({server_said}): set sslmode=require (or verify-full) {fix_url}"
                )
            return FailureKind.NOT_ALLOWED, (
                f"{where}: the server's pg_hba.conf lets no such connection in ({server_said}): add a line for this role, database "
                f"and address to pg_hba.conf and reload PostgreSQL, or connect as a role it allows"
            )
        if "peer authentication" in lowered or "ident authentication" in lowered:
            return FailureKind.NOT_ALLOWED, (
                f"{where}: {server_said}: the server checks the operating-system user for this connection; run figrelay as the "
                f"OS user of that name, or connect over TCP (a host name) with a password"
            )
        return FailureKind.NOT_ALLOWED, f"{where}: the server refused the login ({server_said}); check the role {fix_url} and pg_hba.conf"
    if sqlstate == "3D000":
        return FailureKind.DATABASE, (
            f"{where}: {server_said}: create it (CREATE DATABASE {database} OWNER {role}) or fix the database name {fix_url}"
        )
    if sqlstate == "57P03":
        return FailureKind.STARTING, f"{where}: the server is not taking connections yet ({server_said}); it is starting, stopping or recovering"
    if sqlstate == "53300" or (sqlstate or "").startswith("53"):
        return FailureKind.BUSY, f"{where}: the server has no connection free ({server_said}); raise its max_connections or lower what the replicas open"
    asyncpg_module = _asyncpg()
    if isinstance(exc, asyncpg_module.exceptions.TargetServerAttributeNotMatched):
        wanted = target.option("target_session_attrs")
        return FailureKind.SERVER_ROLE, f"{where}: no host is a {wanted} server now (target_session_attrs={wanted}): {server_said}; a failover may be under way"
    if isinstance(exc, asyncpg_module.ClientConfigurationError):
        return FailureKind.CLIENT_CONFIG, f"{where}: {server_said}; fix the option {fix_url}"
    if isinstance(exc, asyncpg_module.PostgresError):
        code = f" (SQLSTATE {sqlstate})" if sqlstate else ""
        return FailureKind.REFUSED, f"{where}: the server refused the connection: {server_said}{code}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return FailureKind.SSL, (
            f"{where}: the server's certificate could not be verified ({getattr(exc, 'verify_message', None) or exc}): give the CA that signed it with "
            f"sslrootcert=PATH {fix_url}, or use sslmode=require to encrypt without verifying"
        )
    if isinstance(exc, ssl.SSLError):
        return FailureKind.SSL, f"{where}: the SSL handshake failed ({exc}); check sslmode and the certificate options {fix_url}, and the server's ssl settings"
    if isinstance(exc, socket.gaierror):
        names = ", ".join(h for h in target.hosts if not h.startswith("/")) or "localhost"
        return FailureKind.HOST_UNKNOWN, f"{where}: the host name {names} cannot be resolved ({exc.strerror or exc}): check the host {fix_url} and DNS"
    if isinstance(exc, TimeoutError):
        return FailureKind.TIMEOUT, (
            f"{where}: no answer within connect_timeout={target.connect_timeout:g}s: a firewall may drop the packets, or the server is "
            f"overloaded; check the host and port {fix_url}"
        )
    if isinstance(exc, ConnectionRefusedError):
        return FailureKind.UNREACHABLE, f"{where}: connection refused: is PostgreSQL running and listening there (listen_addresses, port)?"
    if isinstance(exc, FileNotFoundError):
        # Also what the ssl module raises for a certificate or key file that is not there.
        missing = [f"{name}={path}" for name, path in target.options if name in _PATHS and not os.path.exists(path)]
        if missing:
            return FailureKind.CLIENT_CONFIG, f"{where}: no such file: {', '.join(missing)}; fix the path {fix_url}, or put the file there"
        return FailureKind.UNREACHABLE, (
            f"{where}: no PostgreSQL socket there: is the server running, and is that folder in its unix_socket_directories?"
        )
    if isinstance(exc, ConnectionError) and "rejected SSL upgrade" in str(exc):
        return FailureKind.SSL, (
            f"{where}: the server does not offer SSL, and sslmode={target.sslmode} {fix_url} insists on it: turn ssl on in the "
            f"server's postgresql.conf, or on a network you trust use sslmode=prefer"
        )
    if isinstance(exc, OSError):
        reason = exc.strerror or str(exc) or type(exc).__name__
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return FailureKind.UNREACHABLE, f"{where}: {reason}: no route to the server from here; check the host {fix_url} and the network"
        if exc.errno == errno.EACCES:
            return FailureKind.UNREACHABLE, f"{where}: {reason}: figrelay may not open the socket; check the socket folder's permissions"
        return FailureKind.UNREACHABLE, f"{where}: {reason}"
    return FailureKind.REFUSED, f"{where}: {server_said}"


def _server_text(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    detail = getattr(exc, "detail", None)
    return f"{text}: {detail}" if detail else text


# --- the schema ------------------------------------------------------------------------------------

MIGRATION_LOCK_KEY = int.from_bytes(b"figrelay", "big")
"""The advisory lock every replica takes to create or upgrade the schema: "figrelay" in ASCII, as
a bigint, so that ``pg_locks`` shows whose it is (objid 1701601657 with classid 1718183794)."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    summary: str
    sql: str


# Times are seconds since the epoch as double precision, as in the SQLite store, so that the core's
# values pass through unchanged; leases compare with the database's clock (extract(epoch from
# now())), never a replica's, so clock skew between replicas cannot hand out a lease twice.
# Ids and setting-client names sort by code point (COLLATE "C"), as in SQLite: the journal's
# prefix lookups (``figrelay trace 6f0c1d…``) and name walks then use their indexes under any
# database collation.
_V1 = """
CREATE TABLE meta (key text PRIMARY KEY, value text NOT NULL);

CREATE TABLE deliveries (
    id              text COLLATE "C" PRIMARY KEY,
    seq             bigint GENERATED ALWAYS AS IDENTITY,
    client          text NOT NULL,
    route           text NOT NULL,
    body            bytea NOT NULL,
    hook            integer,
    event_id        text COLLATE "C",
    created_at      double precision NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at double precision NOT NULL,
    state           text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'dead')),
    last_error      text,
    dead_at         double precision,
    claimed_by      text,
    claimed_until   double precision,
    txid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    CHECK ((claimed_by IS NULL) = (claimed_until IS NULL))
);
COMMENT ON COLUMN deliveries.txid IS 'the transaction that stored it or made it pending again: a reader of new work
asks for rows of transactions still running at its last read, so a late commit is never skipped';
COMMENT ON COLUMN deliveries.seq IS 'acceptance order within a created_at (SQLite: rowid)';
COMMENT ON COLUMN deliveries.claimed_by IS 'the replica sending it now (its lease), or NULL';
COMMENT ON COLUMN deliveries.claimed_until IS 'epoch seconds, database clock: after this another replica may take it';
-- Few indexes, none on the columns a send changes (claimed_by, claimed_until, attempts,
-- next_attempt_at, last_error), and room left on each page: a claim or a retry is then a
-- heap-only update that touches no index. The table holds only pending work and dead letters.
ALTER TABLE deliveries SET (fillfactor = 70);
CREATE INDEX deliveries_pending_in_order ON deliveries (client, created_at, seq) WHERE state = 'pending';
CREATE INDEX deliveries_pending_by_txid ON deliveries (client, txid) WHERE state = 'pending';

CREATE TABLE sessions (
    client text NOT NULL,
    key    text NOT NULL,
    PRIMARY KEY (client, key)
);

CREATE TABLE client_health (
    client        text PRIMARY KEY,
    state         text NOT NULL,
    failures      integer NOT NULL,
    since         double precision,
    next_probe_at double precision,
    last_error    text
);

CREATE TABLE lanes (
    client       text PRIMARY KEY,
    owner        text NOT NULL,
    lease_until  double precision NOT NULL,
    fence        bigint NOT NULL DEFAULT 1,
    acquired_at  double precision NOT NULL,
    last_sent_at double precision
);
COMMENT ON TABLE lanes IS 'one row per client: the replica that owns its lane (order, pacing, digests) until lease_until';
COMMENT ON COLUMN lanes.fence IS 'raised at every change of owner: a write that names an older fence comes from a replica that lost the lane';
COMMENT ON COLUMN lanes.last_sent_at IS 'the last send to the client, so that a new owner keeps min_interval';

CREATE TABLE replicas (
    name        text PRIMARY KEY,
    started_at  double precision NOT NULL,
    seen_at     double precision NOT NULL,
    version     text NOT NULL,
    config_hash text
);
COMMENT ON TABLE replicas IS 'every running figrelay replica, seen_at renewed with its leases: how many share the work';

CREATE TABLE journal_events (
    event_id       text COLLATE "C" PRIMARY KEY,
    received_at    double precision NOT NULL,
    route          text NOT NULL,
    setting_client text COLLATE "C",
    body           bytea NOT NULL,
    test           boolean NOT NULL DEFAULT false,
    matched        text NOT NULL DEFAULT '[]',
    replica        text
);
COMMENT ON COLUMN journal_events.replica IS 'the replica that accepted it';
CREATE INDEX journal_events_by_time ON journal_events (received_at, event_id);
CREATE INDEX journal_events_by_route ON journal_events (route, received_at);
CREATE INDEX journal_events_by_client ON journal_events (setting_client, received_at);

CREATE TABLE journal_deliveries (
    delivery_id text COLLATE "C" PRIMARY KEY,
    event_id    text COLLATE "C" NOT NULL,
    client      text NOT NULL,
    hook        integer,
    route       text NOT NULL,
    created_at  double precision NOT NULL,
    state       text NOT NULL DEFAULT 'pending',
    attempts    integer NOT NULL DEFAULT 0,
    finished_at double precision,
    last_reason text,
    replay_of   text,
    body        bytea
);
CREATE INDEX journal_deliveries_by_event ON journal_deliveries (event_id);
CREATE INDEX journal_deliveries_by_client ON journal_deliveries (client, created_at);
CREATE INDEX journal_deliveries_by_state ON journal_deliveries (state, created_at);

CREATE TABLE journal_attempts (
    delivery_id text COLLATE "C" NOT NULL,
    attempt     integer NOT NULL,
    started_at  double precision NOT NULL,
    duration    double precision NOT NULL,
    outcome     text NOT NULL,
    status      integer,
    reason      text,
    replica     text,
    PRIMARY KEY (delivery_id, attempt)
);
COMMENT ON COLUMN journal_attempts.replica IS 'the replica that made the attempt';
CREATE INDEX journal_attempts_by_time ON journal_attempts (started_at);
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "the outbox, run sessions, circuits, lanes and the journal", _V1),
)
"""Every schema step in order. A later version appends a step; a step never changes once released."""
SCHEMA_VERSION = MIGRATIONS[-1].version
FIGRELAY_TABLES = frozenset(
    {"meta", "deliveries", "sessions", "client_health", "lanes", "replicas", "journal_events", "journal_deliveries", "journal_attempts"}
)


class SchemaError(OutboxError):
    """The database's schema cannot be used or brought up to date; the message says why and what to do."""


class SchemaTooNewError(SchemaError):
    """A newer figrelay has upgraded the database; this one must not write to it."""


@dataclass(frozen=True, slots=True)
class MigrationResult:
    found: int
    """The schema version before (0: no figrelay schema)."""
    now: int
    applied: tuple[int, ...]
    """The steps this call ran; empty when the schema was up to date (or another replica just upgraded it)."""
    store_id: str


async def migrate(conn: asyncpg.Connection, *, clock: Callable[[], float] = time.time) -> MigrationResult:
    """Create figrelay's schema in the connection's database, or bring it up to SCHEMA_VERSION.

    All of it runs in one transaction behind ``pg_advisory_xact_lock(MIGRATION_LOCK_KEY)``: two
    replicas that start at the same moment take turns, and the second finds the work done. A
    failure leaves the database as it was (PostgreSQL's DDL is transactional). Raises
    SchemaTooNewError for a schema from a newer figrelay, SchemaError when the database holds
    tables figrelay did not make or the role may not create tables."""
    asyncpg = _asyncpg()
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
        where = await conn.fetchrow("SELECT current_database() AS db, current_user AS role, current_schema() AS schema")
        assert where is not None
        database, role, schema = where["db"], where["role"], where["schema"]
        if schema is None:
            raise SchemaError(
                f"database {database!r}: no schema on the search_path exists for figrelay's tables (role {role!r}); "
                f"create one (CREATE SCHEMA figrelay AUTHORIZATION {role}) or fix search_path"
            )
        tables = {r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)}
        found = await _stored_version(conn, tables, database, schema)
        if found > SCHEMA_VERSION:
            raise SchemaTooNewError(
                f"database {database!r} holds figrelay schema version {found}, and this figrelay knows versions up to {SCHEMA_VERSION}: "
                f"a newer figrelay has upgraded it; upgrade this replica to that release (replicas sharing a database must run one "
                f"figrelay version, apart from the minutes of a rolling upgrade)"
            )
        steps = [m for m in MIGRATIONS if m.version > found]
        try:
            for step in steps:
                await conn.execute(step.sql)
        except asyncpg.InsufficientPrivilegeError as exc:
            raise SchemaError(
                f"database {database!r}: role {role!r} may not create figrelay's tables in schema {schema!r} ({exc}): make it the "
                f"database's owner (ALTER DATABASE {database} OWNER TO {role}) or GRANT CREATE ON SCHEMA {schema} TO {role}"
            ) from None
        store_id = await conn.fetchval("SELECT value FROM meta WHERE key = 'store_id'")
        if steps:
            # The same form as the SQLite store's meta, so both read alike in a support case.
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(clock()))
            rows = [("schema_version", str(SCHEMA_VERSION)), ("migrated_at", now)]
            if store_id is None:
                store_id = uuid.uuid4().hex
                rows += [("store_id", store_id), ("store_created_at", now)]
            await conn.executemany(
                "INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = excluded.value", rows
            )
    if steps:
        log.info(
            "PostgreSQL database %r: figrelay schema %s version %d (%s)",
            database, "created at" if found == 0 else f"upgraded from version {found} to", SCHEMA_VERSION, "; ".join(s.summary for s in steps),
        )
    return MigrationResult(found, max(found, SCHEMA_VERSION), tuple(s.version for s in steps), store_id)


async def _stored_version(conn: asyncpg.Connection, tables: set[str], database: str, schema: str) -> int:
    if "meta" not in tables:
        clash = sorted(tables & FIGRELAY_TABLES)
        if clash:
            raise SchemaError(
                f"database {database!r} (schema {schema!r}) holds tables named {', '.join(clash)} but no figrelay meta table: they "
                f"belong to something else; give figrelay a database of its own (CREATE DATABASE figrelay OWNER …)"
            )
        return 0
    try:
        value = await conn.fetchval("SELECT value FROM meta WHERE key = 'schema_version'")
    except _asyncpg().PostgresError as exc:
        raise SchemaError(
            f"database {database!r} (schema {schema!r}) has a table 'meta' that is not figrelay's ({exc}): give figrelay a database of its own"
        ) from None
    if value is None or not str(value).isdigit():
        raise SchemaError(
            f"database {database!r} (schema {schema!r}): figrelay's meta table holds no valid schema_version ({value!r}); the database "
            f"was changed by hand or belongs to something else: restore it from a backup, or give figrelay a new database"
        )
    return int(value)


__all__ = [
    "Backoff",
    "ConnectAttempt",
    "ConnectFailure",
    "DatabaseUnavailableError",
    "DriverMissingError",
    "FailureKind",
    "MIGRATIONS",
    "MIGRATION_LOCK_KEY",
    "Migration",
    "MigrationResult",
    "PostgresTarget",
    "SCHEMA_VERSION",
    "SchemaError",
    "SchemaTooNewError",
    "StorageURLError",
    "connect_with_retry",
    "describe_failure",
    "migrate",
    "open_connection",
    "parse_storage_url",
    "pool_opener",
]
