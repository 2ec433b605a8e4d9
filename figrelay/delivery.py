"""What a delivery plugin works with: the delivery it is handed, the outcome it returns, and the
client type it registers. Also the retry rules every HTTP-based target shares (DELIVERY.md), so a
plugin classifies responses the same way the built-in ones do.

Nothing here knows a particular target.
"""

from __future__ import annotations

import email.utils
import ipaddress
import logging
import math
import os
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, ValidationInfo

if TYPE_CHECKING:
    import aiohttp

    from .events import FigEvent
    from .messages import Message

__all__ = [
    "ClientOptions",
    "ClientContext",
    "ClientType",
    "Target",
    "Delivery",
    "Outcome",
    "Delivered",
    "Retry",
    "Failed",
    "RETRYABLE_STATUSES",
    "outcome_for_status",
    "parse_retry_after",
    "redact_url",
    "body_excerpt",
    "read_capped",
    "option_path",
    "check_ca_file",
    "check_https_url",
    "is_loopback_host",
]


class ClientOptions(BaseModel):
    """Base for a client type's options: immutable, and an unknown key is an error.

    A plugin subclasses it and declares its keys as typed fields; figrelay validates a client's
    YAML against it at load time, so ``figrelay check`` reports a bad target before it is used.
    Use ``pydantic.SecretStr`` for credentials so they never appear in a log or an error.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass(frozen=True, slots=True)
class Delivery:
    """One event on its way to one client. ``id`` stays the same across retries and restarts,
    so a receiver can use it to drop duplicates."""

    id: str
    client: str
    event: FigEvent
    body: bytes
    """The event in Fig's exact wire format (after the hook's setting filter)."""
    attempt: int
    """1 on the first try."""
    created_at: float
    """Unix time at which the intake accepted the event."""
    message: Message | None = None
    """For client types with ``renders_messages``: the human message to send (figrelay's default
    rendering with the client's and hook's templates applied). When ``batch`` holds several
    deliveries, it is their digest. None for other client types."""
    batch: tuple[Delivery, ...] = ()
    """When the client coalesces bursts: every delivery this send stands for, oldest first, this
    one included. The outcome applies to all of them. Empty when the delivery goes alone."""
    minimum: int | None = None
    """For MinRunSessions raised by figrelay: the hook's ``min_sessions``."""

    @property
    def route(self) -> str:
        return self.event.route

    @property
    def deliveries(self) -> tuple[Delivery, ...]:
        """The deliveries this send stands for: ``batch``, or just this one."""
        return self.batch or (self,)


@dataclass(frozen=True, slots=True)
class Delivered:
    """The target took the event."""

    detail: str = ""
    status: int | None = None
    """The target's HTTP or SMTP status, for the journal (figrelay reads ``HTTP nnn`` from the
    text when a plugin leaves it out)."""


@dataclass(frozen=True, slots=True)
class Retry:
    """A failure worth trying again (network, timeout, 408/425/429/5xx, a 4xx from SMTP ...).

    ``retry_after`` is the number of seconds the target asked to wait, if it said; figrelay never
    retries sooner, and holds back the client's other deliveries for as long.
    """

    reason: str
    retry_after: float | None = None
    status: int | None = None
    """The target's HTTP or SMTP status, if it answered."""


@dataclass(frozen=True, slots=True)
class Failed:
    """A failure that retrying will not mend (400, 401, 404, a 5xx from SMTP ...): a dead letter."""

    reason: str
    status: int | None = None
    """The target's HTTP or SMTP status, if it answered."""


Outcome = Delivered | Retry | Failed


@runtime_checkable
class Target(Protocol):
    """A configured client, ready to deliver. One instance lives as long as its configuration."""

    async def deliver(self, delivery: Delivery) -> Outcome:
        """Send one delivery and say how it went. May raise; an exception counts as a Retry."""
        ...

    async def aclose(self) -> None:
        """Release what the target holds (connections, timers)."""
        ...


@dataclass(frozen=True, slots=True)
class ClientContext:
    """What figrelay hands a client type when it opens a target."""

    name: str
    """The client's ``name:`` in the configuration."""
    options: Any
    """The validated instance of the client type's ``options`` model."""
    http: aiohttp.ClientSession
    """The process-wide HTTP session: share it, do not close it."""
    logger: logging.Logger
    """A logger for this client (``figrelay.client.<name>``)."""
    state_dir: Path
    """The folder where figrelay keeps its SQLite outbox (``state_dir:``), absolute; unused with ``storage:``."""
    config_dir: Path = Path(".")
    """The folder of the configuration file, absolute: a relative path in an option means a path
    from here (see ``resolve_path``). The default, the current folder, is for a plugin's tests
    that build a context themselves."""

    def resolve_path(self, path: str | os.PathLike[str]) -> Path:
        """A path option as the user meant it: ``~`` expanded, and a relative path taken from the
        configuration file's folder rather than the daemon's working folder."""
        resolved = Path(os.path.expanduser(os.fspath(path)))
        return resolved if resolved.is_absolute() else self.config_dir / resolved


@dataclass(frozen=True, slots=True)
class ClientType:
    """A kind of delivery target that a plugin provides, registered by ``figrelay_client_types``."""

    name: str
    """The value of ``type:`` in a client's YAML, e.g. ``http``."""
    options: type[ClientOptions]
    open: Callable[[ClientContext], Target]
    """Builds a target for one configured client; must not block or do I/O."""
    description: str = ""
    secret_options: tuple[str, ...] = field(default=())
    """Option names whose values are credentials besides SecretStr values (e.g. a webhook URL held
    as a plain str). A SecretStr anywhere in the options counts by itself, also inside a mapping;
    figrelay masks credentials, and nothing else, in every text it writes or stores."""
    renders_messages: bool = False
    """True for targets that send human messages (chat, mail): figrelay then renders
    ``Delivery.message``, and the client and its hooks may set ``title``/``text`` templates."""
    default_min_interval: float = 0.0
    """Seconds between two sends to one client unless it sets ``min_interval`` (pacing, e.g. 1.0
    for Slack's one message per second per channel)."""
    default_coalesce: float = 0.0
    """Seconds within which consecutive events of one hook and setting client are folded into
    one digest send, unless the client sets ``coalesce`` (0: never)."""
    max_batch: int = 0
    """The most deliveries one digest send may carry (0: no limit). A larger burst goes as
    several sends, each within it and paced like any other, so a digest never has to leave
    events out to fit a message's limits."""


# --- shared retry rules -----------------------------------------------------------------------

RETRYABLE_STATUSES: frozenset[int] = frozenset({408, 425, 429}) | frozenset(range(500, 600))
"""The HTTP statuses worth retrying (DELIVERY.md): 408, 425, 429 and every 5xx."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP-date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def option_path(value: str, info: ValidationInfo) -> Path:
    """For a pydantic validator of a path option: the path as the user meant it, ``~`` expanded and
    a relative path taken from the configuration file's folder, which figrelay passes in the
    validation context (``info.context["config_dir"]``; the current folder when a plugin's own
    test validates the options without it). Return it from the validator (as ``str`` if the
    field is one) so that the target opens the same file the check found."""
    context = info.context if isinstance(info.context, Mapping) else {}
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else Path(context.get("config_dir", ".")).resolve() / path


def check_ca_file(value: str, info: ValidationInfo) -> str:
    """For a pydantic validator of a CA bundle option (``ca_file``): the bundle's absolute path
    (found as ``option_path`` finds it), after loading it once to check that it is a readable PEM
    bundle. Raises ValueError saying which file and what is wrong with it."""
    path = option_path(value, info)
    try:
        ssl.create_default_context(cafile=str(path))
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (a relative path is taken from the configuration file's folder)") from None
    except OSError as exc:  # ssl.SSLError included
        raise ValueError(f"{path}: not a readable PEM certificate bundle ({exc.strerror or exc})") from None
    return str(path)


async def read_capped(response: aiohttp.ClientResponse, limit: int = 64 * 1024) -> bytes:
    """At most ``limit`` bytes of a response's body: enough for a reason or an error to read,
    whatever a misbehaving target sends."""
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def body_excerpt(body: bytes | str, limit: int = 200) -> str:
    """The first bytes of a response body, on one line, for an error message."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "…"


def outcome_for_status(status: int, headers: Mapping[str, str], body: bytes | str = b"") -> Outcome:
    """The outcome of an HTTP response by DELIVERY.md's rules: 2xx delivered; 408, 425, 429 and
    5xx retried (honouring Retry-After); anything else, 3xx included, permanent."""
    if 200 <= status < 300:
        return Delivered(f"HTTP {status}", status)
    excerpt = body_excerpt(body)
    reason = f"HTTP {status}" + (f": {excerpt}" if excerpt else "")
    if status in RETRYABLE_STATUSES:
        return Retry(reason, parse_retry_after(headers.get("Retry-After")), status)
    return Failed(reason, status)


def is_loopback_host(host: str | None) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_https_url(url: str, example: str) -> None:
    """For a pydantic validator: an https URL with a host, or http to this machine only (a local
    test server or a sidecar proxy). Raises ValueError with a message that never repeats the URL,
    which may be a credential."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a port that is not a number
    except ValueError:
        raise ValueError(f"is not a valid URL; expected e.g. {example}") from None
    if parts.scheme not in ("http", "https") or not host:
        raise ValueError(f"must be an https:// URL with a host, e.g. {example}")
    if parts.scheme == "http" and not is_loopback_host(host):
        raise ValueError("must use https:// (plain http:// is allowed only for 127.0.0.1, localhost or ::1)")


def redact_url(url: str) -> str:
    """A URL safe to log: scheme, host and port only, the path and query replaced by ``…``.

    Slack webhook paths and Teams ``sig=`` queries are credentials in themselves.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<invalid URL>"
    tail = "/…" if (parts.path.strip("/") or parts.query) else "/"
    return urlunsplit((parts.scheme, host, tail, "", ""))
